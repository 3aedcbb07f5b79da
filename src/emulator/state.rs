//! The emulator's mutable world: items, tokens, statistics, faults, latency.
//!
//! Every lock here is a `std::sync` lock held for a few map operations and never across an
//! `.await`; a poisoned lock is recovered rather than propagated, so one panicking request
//! (there should be none) cannot take the emulator down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::faults::{Fault, FaultKind, FaultQueue};
use super::seed::{AccessType, ItemType, ReadPattern, SecretFormat, Seed, normalize_name};
use crate::secret::SecretString;

/// How many reads the stats log keeps (the oldest are dropped first).
pub const READS_LOG_CAPACITY: usize = 100_000;
/// Distinct unknown paths counted separately before they are lumped together.
const MAX_COUNTED_PATHS: usize = 1_000;
/// The key unknown paths are counted under once [`MAX_COUNTED_PATHS`] is reached.
const OTHER_PATHS: &str = "(other)";
/// Token-table size that triggers dropping long-expired tokens.
const TOKEN_PURGE_THRESHOLD: usize = 100_000;
/// Expired tokens younger than this keep answering "expired" rather than "invalid".
const EXPIRED_TOKEN_MEMORY_MS: u64 = 3_600_000;

/// Counters and the reads log, as returned by `EmulatorHandle::stats` and
/// `GET /__emulator/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// API requests by path (`"/auth"`, `"/get-secret-value"`, …), failures and faults included.
    pub calls: BTreeMap<String, u64>,
    pub total_calls: u64,
    /// Tokens issued by `/auth`.
    pub tokens_issued: u64,
    /// Items served by `/get-secret-value`, oldest first (at most the last 100 000).
    pub reads: Vec<ReadRecord>,
    /// Reads dropped from the front of the log because it was full.
    pub reads_dropped: u64,
    /// Successful `/auth` calls, oldest first (at most the last 100 000): which credential each
    /// issued token came from, so tests can tie every read back to the credential behind it.
    #[serde(default)]
    pub logins: Vec<LoginRecord>,
}

impl Stats {
    /// Requests to `endpoint` (`"/auth"` or `"auth"`).
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.calls
            .get(&endpoint_key(endpoint))
            .copied()
            .unwrap_or(0)
    }
}

/// One item served to one token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReadRecord {
    pub access_id: String,
    /// First 8 hex digits of the SHA-256 of the token (never the token itself).
    pub token_fingerprint: String,
    /// The item's canonical name (leading `/`).
    pub item: String,
    pub version: u32,
}

/// One token issued by `/auth`, and what it was issued for. Only fingerprints, never secrets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoginRecord {
    pub access_id: String,
    pub access_type: String,
    /// Fingerprint of the issued token (as in [`ReadRecord::token_fingerprint`]).
    pub token_fingerprint: String,
    /// Fingerprint of the credential that proved the identity: the access key, the
    /// service-account JWT (k8s: after base64 decoding), the cloud-id.
    pub credential_fingerprint: String,
    /// `sub` of a JWT credential (k8s, jwt, oidc), e.g. `system:serviceaccount:ns:sa`.
    pub subject: Option<String>,
}

/// `"auth"` and `"/auth"` both count as `"/auth"`.
pub(crate) fn endpoint_key(endpoint: &str) -> String {
    if endpoint.starts_with('/') {
        endpoint.to_owned()
    } else {
        format!("/{endpoint}")
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// First 8 hex digits of SHA-256(token).
pub(crate) fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    hex::encode(&digest[..4])
}

pub(crate) struct AuthMethod {
    pub access_id: String,
    pub access_type: AccessType,
    pub access_key: Option<SecretString>,
    pub k8s_auth_config_name: Option<String>,
    pub bound_audience: Option<String>,
    pub gcp_audience: Option<String>,
    pub uid_token: Option<SecretString>,
    pub read: Vec<ReadPattern>,
}

impl AuthMethod {
    pub fn may_read(&self, name: &str) -> bool {
        self.read.iter().any(|pattern| pattern.allows(name))
    }
}

pub(crate) struct Item {
    pub name: String,
    pub item_type: ItemType,
    pub format: SecretFormat,
    pub tags: Vec<String>,
    pub item_id: u64,
    pub display_id: String,
    pub created_ms: u64,
    /// Oldest first: version N is `versions[N - 1]`.
    pub versions: Vec<Version>,
}

impl Item {
    pub fn last_version(&self) -> u32 {
        u32::try_from(self.versions.len()).unwrap_or(u32::MAX)
    }

    pub fn modified_ms(&self) -> u64 {
        self.versions
            .last()
            .map_or(self.created_ms, |version| version.created_ms)
    }
}

pub(crate) struct Version {
    pub value: String,
    pub created_ms: u64,
}

pub(crate) struct Items {
    pub map: BTreeMap<String, Item>,
    next_id: u64,
}

impl Items {
    fn insert_new(
        &mut self,
        name: String,
        item_type: ItemType,
        format: SecretFormat,
        tags: Vec<String>,
        values: Vec<String>,
        now: u64,
    ) {
        self.next_id += 1;
        let digest = hex::encode(Sha256::digest(name.as_bytes()));
        let item = Item {
            display_id: format!("{}-{}", &digest[..12], &digest[12..16]),
            item_id: self.next_id,
            name: name.clone(),
            item_type,
            format,
            tags,
            created_ms: now,
            versions: values
                .into_iter()
                .map(|value| Version {
                    value,
                    created_ms: now,
                })
                .collect(),
        };
        self.map.insert(name, item);
    }
}

pub(crate) struct TokenInfo {
    pub access_id: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
}

#[derive(Default)]
struct StatsInner {
    calls: HashMap<String, u64>,
    total_calls: u64,
    tokens_issued: u64,
    reads: VecDeque<ReadRecord>,
    reads_dropped: u64,
    logins: VecDeque<LoginRecord>,
}

/// State shared by the listener, every connection and every handle.
pub(crate) struct Shared {
    pub account_id: String,
    pub token_ttl_ms: u64,
    pub list_page_size: usize,
    /// Auth methods never change after start.
    pub methods: HashMap<String, AuthMethod>,
    pub items: RwLock<Items>,
    pub tokens: Mutex<HashMap<String, TokenInfo>>,
    stats: Mutex<StatsInner>,
    faults: Mutex<FaultQueue>,
    latency_ms: AtomicU64,
}

impl Shared {
    /// Builds the state from a validated seed.
    pub fn new(seed: &Seed) -> Shared {
        let now = now_ms();
        let methods = seed
            .auth_methods
            .iter()
            .map(|method| {
                let auth = AuthMethod {
                    access_id: method.access_id.clone(),
                    access_type: method.access_type,
                    access_key: method.access_key.clone(),
                    k8s_auth_config_name: method.k8s_auth_config_name.clone(),
                    bound_audience: method.bound_audience.clone(),
                    gcp_audience: method.gcp_audience.clone(),
                    uid_token: method.uid_token.clone(),
                    read: method
                        .read
                        .iter()
                        .filter_map(|pattern| ReadPattern::parse(pattern).ok())
                        .collect(),
                };
                (method.access_id.clone(), auth)
            })
            .collect();
        let mut items = Items {
            map: BTreeMap::new(),
            next_id: 100_000_000,
        };
        for item in &seed.items {
            let Ok(name) = normalize_name(&item.name) else {
                continue;
            };
            items.insert_new(
                name,
                item.item_type,
                item.format,
                item.tags.clone(),
                item.version_values(),
                now,
            );
        }
        // Universal Identity tokens are data credentials from the start.
        let mut tokens = HashMap::new();
        for method in &seed.auth_methods {
            if let Some(uid) = &method.uid_token {
                tokens.insert(
                    uid.expose().to_owned(),
                    TokenInfo {
                        access_id: method.access_id.clone(),
                        issued_ms: now,
                        expires_ms: u64::MAX,
                    },
                );
            }
        }
        Shared {
            account_id: seed.account_id.clone(),
            token_ttl_ms: seed.token_ttl_seconds.saturating_mul(1000),
            list_page_size: seed.list_page_size.max(1),
            methods,
            items: RwLock::new(items),
            tokens: Mutex::new(tokens),
            stats: Mutex::new(StatsInner::default()),
            faults: Mutex::new(FaultQueue::default()),
            latency_ms: AtomicU64::new(0),
        }
    }

    pub fn items(&self) -> RwLockReadGuard<'_, Items> {
        read(&self.items)
    }

    // ---- statistics ----

    pub fn count_call(&self, path: &str) {
        let mut stats = lock(&self.stats);
        stats.total_calls += 1;
        if let Some(count) = stats.calls.get_mut(path) {
            *count += 1;
        } else if stats.calls.len() < MAX_COUNTED_PATHS {
            let key: String = path.chars().take(200).collect();
            *stats.calls.entry(key).or_default() += 1;
        } else {
            *stats.calls.entry(OTHER_PATHS.to_owned()).or_default() += 1;
        }
    }

    pub fn calls(&self, endpoint: &str) -> u64 {
        lock(&self.stats)
            .calls
            .get(&endpoint_key(endpoint))
            .copied()
            .unwrap_or(0)
    }

    pub fn record_reads(&self, reads: Vec<ReadRecord>) {
        let mut stats = lock(&self.stats);
        for record in reads {
            if stats.reads.len() >= READS_LOG_CAPACITY {
                stats.reads.pop_front();
                stats.reads_dropped += 1;
            }
            stats.reads.push_back(record);
        }
    }

    pub fn stats(&self) -> Stats {
        let stats = lock(&self.stats);
        Stats {
            calls: stats
                .calls
                .iter()
                .map(|(path, count)| (path.clone(), *count))
                .collect(),
            total_calls: stats.total_calls,
            tokens_issued: stats.tokens_issued,
            reads: stats.reads.iter().cloned().collect(),
            reads_dropped: stats.reads_dropped,
            logins: stats.logins.iter().cloned().collect(),
        }
    }

    pub fn reset_stats(&self) {
        *lock(&self.stats) = StatsInner::default();
    }

    // ---- latency and faults ----

    pub fn latency_ms(&self) -> u64 {
        self.latency_ms.load(Ordering::Relaxed)
    }

    pub fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    pub fn add_fault(&self, fault: Fault) {
        lock(&self.faults).push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.faults).list()
    }

    pub fn take_fault(&self, path: &str) -> Option<FaultKind> {
        lock(&self.faults).take(path)
    }

    // ---- tokens ----

    /// Issues a fresh `t-` token for `access_id`; returns it with its expiry (unix ms).
    /// `credential` fingerprints what proved the identity; `subject` is a JWT's `sub`.
    pub fn issue_token(
        &self,
        access_id: &str,
        access_type: &str,
        credential: &str,
        subject: Option<String>,
    ) -> (String, u64) {
        let token = format!("t-{}", hex::encode(rand::random::<[u8; 16]>()));
        let now = now_ms();
        let expires_ms = now.saturating_add(self.token_ttl_ms);
        {
            let mut tokens = lock(&self.tokens);
            if tokens.len() >= TOKEN_PURGE_THRESHOLD {
                tokens.retain(|_, info| {
                    info.expires_ms.saturating_add(EXPIRED_TOKEN_MEMORY_MS) > now
                });
            }
            tokens.insert(
                token.clone(),
                TokenInfo {
                    access_id: access_id.to_owned(),
                    issued_ms: now,
                    expires_ms,
                },
            );
        }
        let mut stats = lock(&self.stats);
        stats.tokens_issued += 1;
        if stats.logins.len() >= READS_LOG_CAPACITY {
            stats.logins.pop_front();
        }
        stats.logins.push_back(LoginRecord {
            access_id: access_id.to_owned(),
            access_type: access_type.to_owned(),
            token_fingerprint: fingerprint(&token),
            credential_fingerprint: fingerprint(credential),
            subject,
        });
        drop(stats);
        (token, expires_ms)
    }

    /// Makes every token issued so far expired.
    pub fn expire_tokens(&self) {
        let now = now_ms();
        // `t-` tokens only: Universal Identity tokens are not issued by `/auth`.
        for (token, info) in lock(&self.tokens).iter_mut() {
            if token.starts_with("t-") {
                info.expires_ms = info.expires_ms.min(now.saturating_sub(1));
            }
        }
    }

    // ---- items ----

    /// Adds a version to `name` (a new static text secret if it does not exist). Returns the
    /// new version number, or why the name is unusable.
    pub fn put_secret(&self, name: &str, value: &str) -> Result<u32, &'static str> {
        let name = normalize_name(name)?;
        let now = now_ms();
        let mut items = write(&self.items);
        if let Some(item) = items.map.get_mut(&name) {
            item.versions.push(Version {
                value: value.to_owned(),
                created_ms: now,
            });
            return Ok(item.last_version());
        }
        items.insert_new(
            name,
            ItemType::StaticSecret,
            SecretFormat::Text,
            Vec::new(),
            vec![value.to_owned()],
            now,
        );
        Ok(1)
    }

    /// Removes `name`; returns whether it existed.
    pub fn delete_item(&self, name: &str) -> bool {
        let Ok(name) = normalize_name(name) else {
            return false;
        };
        write(&self.items).map.remove(&name).is_some()
    }
}

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

use super::crypto::{CertChain, CryptoError, Leaf, PkiCa, SshCa};
use super::faults::{Fault, FaultKind, FaultQueue};
use super::modes::Modes;
use super::seed::{
    AccessType, DEFAULT_ITEM_TTL_SECONDS, DEFAULT_MAX_TTL_SECONDS, ItemType, ReadPattern,
    SecretFormat, Seed, SeedItem, normalize_name,
};
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
    /// Item versions served by `/get-secret-value`, `/get-rotated-secret-value` and
    /// `/get-certificate-value`, oldest first (at most the last 100 000).
    pub reads: Vec<ReadRecord>,
    /// Reads dropped from the front of the log because it was full.
    pub reads_dropped: u64,
    /// Successful `/auth` calls, oldest first (at most the last 100 000): which credential each
    /// issued token came from, so tests can tie every read back to the credential behind it.
    #[serde(default)]
    pub logins: Vec<LoginRecord>,
    /// Credentials minted, by item (canonical name): leases of dynamic secrets
    /// (`/get-dynamic-secret-value`), certificates issued by PKI and SSH issuers.
    #[serde(default)]
    pub leases: BTreeMap<String, u64>,
}

impl Stats {
    /// Requests to `endpoint` (`"/auth"` or `"auth"`).
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.calls
            .get(&endpoint_key(endpoint))
            .copied()
            .unwrap_or(0)
    }

    /// Credentials minted from item `name` (`"/demo/db"` or `"demo/db"`).
    pub fn leases_minted(&self, name: &str) -> u64 {
        normalize_name(name)
            .ok()
            .and_then(|name| self.leases.get(&name).copied())
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
    /// The read asked to bypass the Gateway's cache (`"ignore-cache": "true"`).
    #[serde(default)]
    pub ignore_cache: bool,
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
    /// Oldest first: version N is `versions[N - 1]`. Dynamic secrets and issuers have none.
    pub versions: Vec<Version>,
    /// Lease lifetime (dynamic secrets), default certificate lifetime (issuers).
    pub ttl_seconds: u64,
    /// Largest certificate lifetime a request may ask for (issuers).
    pub max_ttl_seconds: u64,
    /// Dynamic secrets: answer `{"value": "<JSON>", "error": ""}`.
    pub wrapped: bool,
    /// SSH issuers: the usernames they sign for (empty: any).
    pub allowed_users: Vec<String>,
    pub authority: Authority,
}

/// The key material behind an item, generated when it is created.
pub(crate) enum Authority {
    None,
    /// `certificate`: the CAs that sign its leaves.
    Certificate(CertChain),
    /// `pki-cert-issuer`.
    Pki(PkiCa),
    /// `ssh-cert-issuer`.
    Ssh(SshCa),
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
    /// The value; for certificate items the leaf PEM followed by the intermediate CA PEM.
    pub value: String,
    pub created_ms: u64,
    /// Certificate items: the leaf's key and validity.
    pub certificate: Option<CertificateVersion>,
}

impl Version {
    fn text(value: String, created_ms: u64) -> Version {
        Version {
            value,
            created_ms,
            certificate: None,
        }
    }

    fn leaf(leaf: Leaf, created_ms: u64) -> Version {
        Version {
            value: leaf.chain_pem,
            created_ms,
            certificate: Some(CertificateVersion {
                key_pem: leaf.key_pem,
                not_before_ms: leaf.not_before_secs.saturating_mul(1000),
                not_after_ms: leaf.not_after_secs.saturating_mul(1000),
            }),
        }
    }
}

pub(crate) struct CertificateVersion {
    /// PKCS#8 PEM of the leaf's key.
    pub key_pem: SecretString,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

/// What an item is, besides its name and values.
pub(crate) struct ItemSpec {
    pub item_type: ItemType,
    pub format: SecretFormat,
    pub tags: Vec<String>,
    pub ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    pub wrapped: bool,
    pub allowed_users: Vec<String>,
    /// Certificate items: CN and DNS SAN of the leaves.
    pub common_name: String,
}

impl ItemSpec {
    fn from_seed(item: &SeedItem) -> ItemSpec {
        ItemSpec {
            item_type: item.item_type,
            format: item.format,
            tags: item.tags.clone(),
            ttl_seconds: item.ttl_seconds(),
            max_ttl_seconds: item.max_ttl_seconds(),
            wrapped: item.wrapped,
            allowed_users: item.allowed_users.clone(),
            common_name: item.common_name(),
        }
    }

    /// A static text secret, as `put_secret` creates.
    fn static_text() -> ItemSpec {
        ItemSpec {
            item_type: ItemType::StaticSecret,
            format: SecretFormat::Text,
            tags: Vec::new(),
            ttl_seconds: DEFAULT_ITEM_TTL_SECONDS,
            max_ttl_seconds: DEFAULT_MAX_TTL_SECONDS,
            wrapped: false,
            allowed_users: Vec::new(),
            common_name: String::new(),
        }
    }
}

fn crypto_message(err: CryptoError) -> String {
    match err {
        CryptoError::Request(message) | CryptoError::Internal(message) => message,
    }
}

pub(crate) struct Items {
    pub map: BTreeMap<String, Item>,
    next_id: u64,
}

impl Items {
    /// Creates an item, with fresh key material for certificates and issuers.
    fn insert_new(
        &mut self,
        name: String,
        spec: ItemSpec,
        values: Vec<String>,
        now: u64,
    ) -> Result<(), String> {
        let now_secs = now / 1000;
        let material = |err: CryptoError| {
            format!(
                "cannot generate the key material of item {name:?}: {}",
                crypto_message(err)
            )
        };
        let (authority, versions) = match spec.item_type {
            ItemType::Certificate => {
                let chain =
                    CertChain::generate(&name, &spec.common_name, spec.ttl_seconds, now_secs)
                        .map_err(material)?;
                let leaf = chain.issue_leaf(now_secs).map_err(material)?;
                (
                    Authority::Certificate(chain),
                    vec![Version::leaf(leaf, now)],
                )
            }
            ItemType::PkiCertIssuer => (
                Authority::Pki(PkiCa::generate(&name, now_secs).map_err(material)?),
                Vec::new(),
            ),
            ItemType::SshCertIssuer => (
                Authority::Ssh(SshCa::generate().map_err(material)?),
                Vec::new(),
            ),
            _ => (
                Authority::None,
                values
                    .into_iter()
                    .map(|value| Version::text(value, now))
                    .collect(),
            ),
        };
        self.next_id += 1;
        let digest = hex::encode(Sha256::digest(name.as_bytes()));
        let item = Item {
            display_id: format!("{}-{}", &digest[..12], &digest[12..16]),
            item_id: self.next_id,
            name: name.clone(),
            item_type: spec.item_type,
            format: spec.format,
            tags: spec.tags,
            created_ms: now,
            versions,
            ttl_seconds: spec.ttl_seconds,
            max_ttl_seconds: spec.max_ttl_seconds,
            wrapped: spec.wrapped,
            allowed_users: spec.allowed_users,
            authority,
        };
        self.map.insert(name, item);
        Ok(())
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
    leases: BTreeMap<String, u64>,
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
    modes: Mutex<Modes>,
    /// Numbers leases and issued certificates (never reset, so ids stay unique).
    mint_sequence: AtomicU64,
}

impl Shared {
    /// Builds the state from a validated seed; fails only if key material cannot be made.
    pub fn new(seed: &Seed) -> Result<Shared, String> {
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
            items.insert_new(name, ItemSpec::from_seed(item), item.version_values(), now)?;
        }
        // Universal Identity tokens are data credentials from the start.
        let mut tokens = HashMap::new();
        for method in &seed.auth_methods {
            if let Some(uid) = &method.uid_token {
                let rotated = now.saturating_sub(method.uid_token_age_seconds.saturating_mul(1000));
                let expires_ms = method.uid_token_ttl_seconds.map_or(u64::MAX, |ttl| {
                    rotated.saturating_add(ttl.saturating_mul(1000))
                });
                tokens.insert(
                    uid.expose().to_owned(),
                    TokenInfo {
                        access_id: method.access_id.clone(),
                        issued_ms: rotated,
                        expires_ms,
                    },
                );
            }
        }
        Ok(Shared {
            account_id: seed.account_id.clone(),
            token_ttl_ms: seed.token_ttl_seconds.saturating_mul(1000),
            list_page_size: seed.list_page_size.max(1),
            methods,
            items: RwLock::new(items),
            tokens: Mutex::new(tokens),
            stats: Mutex::new(StatsInner::default()),
            faults: Mutex::new(FaultQueue::default()),
            latency_ms: AtomicU64::new(0),
            modes: Mutex::new(Modes::default()),
            mint_sequence: AtomicU64::new(1),
        })
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
            leases: stats.leases.clone(),
        }
    }

    /// Counts one credential minted from `item` (a canonical name); returns a number unique
    /// for the emulator's lifetime.
    pub fn record_lease(&self, item: &str) -> u64 {
        let mut stats = lock(&self.stats);
        if let Some(count) = stats.leases.get_mut(item) {
            *count += 1;
        } else {
            stats.leases.insert(item.to_owned(), 1);
        }
        drop(stats);
        self.mint_sequence.fetch_add(1, Ordering::Relaxed)
    }

    pub fn leases_minted(&self, name: &str) -> u64 {
        let Ok(name) = normalize_name(name) else {
            return 0;
        };
        lock(&self.stats).leases.get(&name).copied().unwrap_or(0)
    }

    /// Something of the item `name`'s key material, if it has that kind.
    pub fn authority<T>(
        &self,
        name: &str,
        pick: impl FnOnce(&Authority) -> Option<T>,
    ) -> Option<T> {
        let name = normalize_name(name).ok()?;
        self.items()
            .map
            .get(&name)
            .and_then(|item| pick(&item.authority))
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

    pub fn modes(&self) -> Modes {
        lock(&self.modes).clone()
    }

    pub fn set_modes(&self, modes: Modes) {
        *lock(&self.modes) = modes;
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

    /// Adds a version to `name`, as a rotation would: the value of a static or rotated
    /// secret, a fresh leaf (new key, same CN and CAs; `value` is ignored) of a certificate.
    /// A missing item becomes a new static text secret. Returns the new version number, or
    /// why there is none (an unusable name, an item type without versions).
    pub fn put_secret(&self, name: &str, value: &str) -> Result<u32, String> {
        let name = normalize_name(name).map_err(|why| format!("item name {why}"))?;
        let now = now_ms();
        let mut items = write(&self.items);
        if let Some(item) = items.map.get_mut(&name) {
            let version = match (&item.item_type, &item.authority) {
                (ItemType::StaticSecret | ItemType::RotatedSecret, _) => {
                    Version::text(value.to_owned(), now)
                }
                (ItemType::Certificate, Authority::Certificate(chain)) => {
                    let leaf = chain.issue_leaf(now / 1000).map_err(|err| {
                        format!("cannot renew certificate {name:?}: {}", crypto_message(err))
                    })?;
                    Version::leaf(leaf, now)
                }
                (other, _) => {
                    return Err(format!(
                        "item {name:?} is a {}: it has no versions to add to",
                        other.wire()
                    ));
                }
            };
            item.versions.push(version);
            return Ok(item.last_version());
        }
        items.insert_new(name, ItemSpec::static_text(), vec![value.to_owned()], now)?;
        Ok(1)
    }

    /// Creates `item` as the seed would, replacing any item of that name (of any type).
    pub fn put_item(&self, item: &SeedItem) -> Result<(), String> {
        let seed = Seed {
            items: vec![item.clone()],
            ..Seed::default()
        };
        seed.validate(None).map_err(|e| e.to_string())?;
        let name = normalize_name(&item.name).map_err(|why| format!("item name {why}"))?;
        let mut items = write(&self.items);
        items.map.remove(&name);
        items.insert_new(
            name,
            ItemSpec::from_seed(item),
            item.version_values(),
            now_ms(),
        )
    }

    /// Removes `name`; returns whether it existed.
    pub fn delete_item(&self, name: &str) -> bool {
        let Ok(name) = normalize_name(name) else {
            return false;
        };
        write(&self.items).map.remove(&name).is_some()
    }
}

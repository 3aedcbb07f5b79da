//! Universal Identity tokens: used as they are, never rotated, and watched for their end.
//!
//! Akeyless's Go provider rotates the SPC's `u-` token every 120 s (`/uid-rotate-token`) and
//! keeps the new token in memory only. The init token is read from a Secret that every node and
//! every restart reads again, and a rotation makes the token it replaces unusable, so rotating
//! here would break the other nodes and the next start (README, "Universal Identity tokens").
//! Instead the first use of a token asks `/validate-token` (in the background) when it ends and
//! when it was last rotated; a mount with a token in the last third of its life logs a warning
//! (at most every 10 minutes per token), and the gauge `uid_token_expiry_timestamp_seconds`
//! holds the earliest end among the tokens in use, for an alert well before mounts fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{Identity, IdentityKey, Proof, lock, parse_expiration};
use crate::akeyless::{Client, Deadline};
use crate::secret::SecretString;

/// Tokens watched at most (one per identity); past this, those unused for [`IN_USE`] go,
/// then all.
const MAX_TOKENS: usize = 10_000;
/// A token not used for this long no longer counts for the gauge.
const IN_USE: Duration = Duration::from_secs(3600);
/// How soon a failed `/validate-token` is tried again.
const RECHECK: Duration = Duration::from_secs(300);
/// How often the warning of one token repeats.
const WARN_EVERY: Duration = Duration::from_secs(600);
/// The warning's threshold when the token's life is not known.
const DEFAULT_MARGIN: Duration = Duration::from_secs(600);
/// The bound of one `/validate-token`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// When a token ends, and how long it lives from a rotation (when Akeyless says).
#[derive(Debug, Clone, Copy)]
struct Known {
    expires: SystemTime,
    life: Option<Duration>,
}

struct Watch {
    used_at: Instant,
    known: Option<Known>,
    checked_at: Option<Instant>,
    checking: bool,
    warned_at: Option<Instant>,
}

/// The node's Universal Identity tokens and their ends.
pub(super) struct UidWatch {
    client: Client,
    tokens: Arc<Mutex<HashMap<IdentityKey, Watch>>>,
}

impl UidWatch {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            tokens: Arc::default(),
        }
    }

    /// A mount uses `identity`'s token: learn its end once, warn when it nears.
    pub fn used(&self, identity: &Identity) {
        let Proof::Uid(token) = &identity.proof else {
            return;
        };
        let now = Instant::now();
        let check = {
            let mut tokens = lock(&self.tokens);
            if tokens.len() >= MAX_TOKENS && !tokens.contains_key(&identity.key) {
                tokens.retain(|_, w| now.duration_since(w.used_at) < IN_USE);
                if tokens.len() >= MAX_TOKENS {
                    tokens.clear();
                }
            }
            let watch = tokens.entry(identity.key).or_insert(Watch {
                used_at: now,
                known: None,
                checked_at: None,
                checking: false,
                warned_at: None,
            });
            watch.used_at = now;
            let due = watch.known.is_none()
                && !watch.checking
                && watch
                    .checked_at
                    .is_none_or(|at| now.duration_since(at) >= RECHECK);
            if due {
                watch.checking = true;
            } else {
                warn_if_near(identity, watch, now);
            }
            due
        };
        self.publish();
        if check {
            let client = self.client.clone();
            let tokens = self.tokens.clone();
            let metrics = self.client.metrics().clone();
            let identity = identity.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let known = learn(&client, &identity, &token, Deadline::after(CHECK_TIMEOUT)).await;
                let mut tokens = lock(&tokens);
                if let Some(watch) = tokens.get_mut(&identity.key) {
                    watch.checking = false;
                    watch.checked_at = Some(Instant::now());
                    watch.known = known;
                    warn_if_near(&identity, watch, Instant::now());
                }
                metrics.uid_token_expiry.set(earliest(&tokens));
            });
        }
    }

    /// Why Akeyless may have refused `identity`'s token: it has expired (learnt now if not
    /// known yet). For the message of a refused mount.
    pub async fn expired_note(&self, identity: &Identity, deadline: Deadline) -> Option<String> {
        let Proof::Uid(token) = &identity.proof else {
            return None;
        };
        let known = lock(&self.tokens).get(&identity.key).and_then(|w| w.known);
        let known = match known {
            Some(known) => known,
            None => learn(&self.client, identity, token, deadline).await?,
        };
        (known.expires <= SystemTime::now()).then(|| {
            format!(
                "the Universal Identity token expired at {}; the provider does not rotate it: put a current token in akeylessUIDInitToken (README, \"Universal Identity tokens\")",
                rfc3339(known.expires)
            )
        })
    }

    /// Sets the gauge to the earliest end among the tokens in use.
    fn publish(&self) {
        let value = earliest(&lock(&self.tokens));
        self.client.metrics().uid_token_expiry.set(value);
    }
}

/// One `/validate-token`; `None` when Akeyless does not say (or cannot be asked).
async fn learn(
    client: &Client,
    identity: &Identity,
    token: &SecretString,
    deadline: Deadline,
) -> Option<Known> {
    let validity = match client.validate_token(&identity.base, token, deadline).await {
        Ok(validity) => validity,
        Err(e) => {
            tracing::debug!(access_id = %identity.access_id, error = %e, "cannot learn when the Universal Identity token ends");
            return None;
        }
    };
    let expires = validity.expiration.as_deref().and_then(parse_expiration)?;
    let life = validity
        .last_rotate
        .as_deref()
        .and_then(parse_expiration)
        .and_then(|rotated| expires.duration_since(rotated).ok())
        .filter(|life| !life.is_zero());
    tracing::debug!(
        access_id = %identity.access_id,
        expires = %rfc3339(expires),
        life_s = life.map(|l| l.as_secs()),
        "Universal Identity token"
    );
    Some(Known { expires, life })
}

/// Logs a warning when the token is in the last third of its life (or its last 10 minutes,
/// life unknown), at most every [`WARN_EVERY`].
fn warn_if_near(identity: &Identity, watch: &mut Watch, now: Instant) {
    let Some(known) = watch.known else {
        return;
    };
    let margin = known.life.map_or(DEFAULT_MARGIN, |life| life / 3);
    let left = known
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    if left > margin
        || watch
            .warned_at
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
    {
        return;
    }
    watch.warned_at = Some(now);
    let expires = rfc3339(known.expires);
    if left.is_zero() {
        tracing::warn!(access_id = %identity.access_id, %expires, "the Universal Identity token has expired: mounts with it fail until akeylessUIDInitToken holds a current token (the provider does not rotate it)");
    } else {
        tracing::warn!(access_id = %identity.access_id, %expires, left_s = left.as_secs(), "the Universal Identity token expires soon: put a rotated token in akeylessUIDInitToken before then (the provider does not rotate it)");
    }
}

/// The earliest end among tokens used within [`IN_USE`], in Unix seconds; 0 when none is known.
fn earliest(tokens: &HashMap<IdentityKey, Watch>) -> i64 {
    tokens
        .values()
        .filter(|w| w.used_at.elapsed() < IN_USE)
        .filter_map(|w| w.known)
        .map(|k| {
            k.expires
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        })
        .min()
        .unwrap_or(0)
}

fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

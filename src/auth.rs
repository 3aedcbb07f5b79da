//! Identity and authentication: from a mount's [`AccessConfig`] to an Akeyless token.
//!
//! Tokens are cached per identity — API URL, access type, access id and the credential that
//! proves it — so a pod never uses a token obtained with another pod's or another SPC's
//! credentials, and a rotation poll costs no login. Only a SHA-256 of the identity is kept as
//! the key. One login per identity runs at a time; concurrent mounts of that identity wait for
//! it and share its outcome. The login runs in its own task, so a caller that gives up does not
//! cancel it for the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use url::Url;

use crate::akeyless::{ApiError, ApiToken, AuthRequest, Client, Deadline};
use crate::params::{AccessConfig, AccessType};
use crate::secret::SecretString;

/// Token lifetime policy.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// Assumed lifetime when `/auth` does not say (older gateways send no `expiration`).
    pub default_ttl: Duration,
    /// Refresh this long before expiry (at most a tenth of the token's lifetime).
    pub refresh_before: Duration,
    /// Upper bound of one login, independent of the waiting mounts' deadlines.
    pub login_timeout: Duration,
    /// Identities kept at most; expired ones are dropped first.
    pub max_identities: usize,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(600),
            refresh_before: Duration::from_secs(60),
            login_timeout: Duration::from_secs(30),
            max_identities: 10_000,
        }
    }
}

/// Everything that decides which Akeyless principal a mount acts as.
#[derive(Clone)]
pub struct Identity {
    pub base: Url,
    pub access_type: AccessType,
    pub access_id: String,
    credential: SecretString,
    key: IdentityKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("base", &self.base.as_str())
            .field("access_type", &self.access_type)
            .field("access_id", &self.access_id)
            .finish_non_exhaustive()
    }
}

/// SHA-256 over the identity's parts; the cache never holds the credential itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct IdentityKey([u8; 32]);

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("access type {0} is not supported by this provider version; use access_key")]
    Unsupported(AccessType),
    #[error("{0}")]
    Missing(String),
    #[error("login failed: {0}")]
    Api(#[from] ApiError),
    #[error("the mount's deadline passed while waiting for the login")]
    DeadlineExceeded,
    #[error("the login task failed unexpectedly")]
    Internal,
}

impl Identity {
    /// The identity of a mount that calls `base`.
    pub fn new(base: Url, access: &AccessConfig) -> Result<Self, AuthError> {
        let credential = match access.access_type {
            AccessType::AccessKey => access
                .access_key
                .clone()
                .ok_or_else(|| AuthError::Missing("akeylessAccessKey is missing".to_owned()))?,
            other => return Err(AuthError::Unsupported(other)),
        };
        let mut hash = Sha256::new();
        for part in [
            base.as_str(),
            access.access_type.as_str(),
            access.access_id.as_str(),
            credential.expose(),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        Ok(Self {
            base,
            access_type: access.access_type,
            access_id: access.access_id.clone(),
            credential,
            key: IdentityKey(hash.finalize().into()),
        })
    }

    fn auth_request(&self) -> AuthRequest {
        AuthRequest {
            access_type: self.access_type.as_str().to_owned(),
            access_id: self.access_id.clone(),
            access_key: Some(self.credential.clone()),
        }
    }
}

/// A token and when to stop using it.
#[derive(Debug)]
pub struct CachedToken {
    pub token: ApiToken,
    refresh_at: Instant,
}

impl CachedToken {
    fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

type LoginFuture = Shared<BoxFuture<'static, Result<Arc<CachedToken>, AuthError>>>;

#[derive(Default)]
struct Entry {
    token: Option<Arc<CachedToken>>,
    login: Option<LoginFuture>,
}

/// Logs in to Akeyless and caches tokens per identity.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    options: AuthOptions,
    entries: Mutex<HashMap<IdentityKey, Entry>>,
}

impl Authenticator {
    pub fn new(client: Client, options: AuthOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                options,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A valid token for `identity`: the cached one, or the outcome of one shared login.
    pub async fn token(
        &self,
        identity: &Identity,
        deadline: Deadline,
    ) -> Result<Arc<CachedToken>, AuthError> {
        let login = {
            let mut entries = lock(&self.inner.entries);
            if let Some(token) = entries
                .get(&identity.key)
                .and_then(|e| e.token.as_ref())
                .filter(|t| t.fresh())
            {
                return Ok(token.clone());
            }
            if entries.len() >= self.inner.options.max_identities {
                entries.retain(|_, e| {
                    e.login.is_some() || e.token.as_ref().is_some_and(|t| t.fresh())
                });
            }
            let entry = entries.entry(identity.key).or_default();
            match &entry.login {
                Some(login) => login.clone(),
                None => {
                    let login = self.start_login(identity.clone());
                    entry.login = Some(login.clone());
                    login
                }
            }
        };
        match tokio::time::timeout_at(deadline.instant(), login).await {
            Ok(result) => result,
            Err(_) => Err(AuthError::DeadlineExceeded),
        }
    }

    /// Drops `token` after Akeyless refused it, unless a newer token has replaced it already.
    pub fn invalidate(&self, identity: &Identity, token: &Arc<CachedToken>) {
        let mut entries = lock(&self.inner.entries);
        if let Some(entry) = entries.get_mut(&identity.key)
            && entry.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token))
        {
            entry.token = None;
        }
    }

    /// Number of identities with a cached token or a login under way.
    pub fn cached_identities(&self) -> usize {
        lock(&self.inner.entries).len()
    }

    fn start_login(&self, identity: Identity) -> LoginFuture {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let deadline = Deadline::after(inner.options.login_timeout);
            let started = Instant::now();
            let result = inner
                .client
                .auth(&identity.base, &identity.auth_request(), deadline)
                .await;
            let outcome = result.map_err(AuthError::from).map(|response| {
                let lifetime = lifetime(response.expiration.as_deref(), inner.options.default_ttl);
                let early = inner.options.refresh_before.min(lifetime / 10);
                tracing::debug!(
                    access_id = %identity.access_id,
                    access_type = %identity.access_type,
                    lifetime_s = lifetime.as_secs(),
                    "logged in to Akeyless"
                );
                Arc::new(CachedToken {
                    token: ApiToken::Token(response.token),
                    refresh_at: started + lifetime.saturating_sub(early),
                })
            });
            let mut entries = lock(&inner.entries);
            let entry = entries.entry(identity.key).or_default();
            entry.login = None;
            if let Ok(token) = &outcome {
                entry.token = Some(token.clone());
            }
            outcome
        });
        async move { task.await.unwrap_or(Err(AuthError::Internal)) }
            .boxed()
            .shared()
    }
}

/// How long a token lives: from `expiration` when present and sane, else the default.
fn lifetime(expiration: Option<&str>, default: Duration) -> Duration {
    let Some(expires) = expiration.and_then(parse_expiration) else {
        return default;
    };
    match expires.duration_since(SystemTime::now()) {
        // Clamp against clock skew and absurd answers.
        Ok(left) => left.clamp(Duration::from_secs(1), Duration::from_secs(12 * 3600)),
        Err(_) => Duration::from_secs(1),
    }
}

/// `expiration` is RFC 3339 or Go's `time.Time.String()` (`2026-08-10 14:05:31 +0000 UTC`).
fn parse_expiration(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let parsed = chrono::DateTime::parse_from_rfc3339(text).or_else(|_| {
        // Go appends the zone abbreviation and may append a monotonic clock reading.
        let core: Vec<&str> = text.split_whitespace().take(3).collect();
        chrono::DateTime::parse_from_str(&core.join(" "), "%Y-%m-%d %H:%M:%S%.f %z")
    });
    parsed.ok().map(SystemTime::from)
}

/// A poisoned lock only means another request panicked; the map itself stays consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(id: &str, key: &str) -> AccessConfig {
        AccessConfig {
            access_type: AccessType::AccessKey,
            access_id: id.into(),
            access_key: Some(key.into()),
        }
    }

    #[test]
    fn identities_differ_by_every_part() {
        let a = Url::parse("https://a").unwrap();
        let b = Url::parse("https://b").unwrap();
        let k = |url: &Url, id: &str, key: &str| {
            Identity::new(url.clone(), &access(id, key)).unwrap().key
        };
        assert!(k(&a, "p-1", "x") == k(&a, "p-1", "x"));
        assert!(k(&a, "p-1", "x") != k(&b, "p-1", "x"));
        assert!(k(&a, "p-1", "x") != k(&a, "p-2", "x"));
        assert!(k(&a, "p-1", "x") != k(&a, "p-1", "y"));
        // Length prefixes keep ("p-1", "xy") and ("p-1x", "y") apart.
        assert!(k(&a, "p-1", "xy") != k(&a, "p-1x", "y"));
    }

    #[test]
    fn identity_debug_hides_the_credential() {
        let id =
            Identity::new(Url::parse("https://a").unwrap(), &access("p-1", "hunter2")).unwrap();
        assert!(!format!("{id:?}").contains("hunter2"));
    }

    #[test]
    fn expiration_formats() {
        let go = parse_expiration("2026-08-10 14:05:31 +0000 UTC").unwrap();
        let rfc = parse_expiration("2026-08-10T14:05:31Z").unwrap();
        assert_eq!(go, rfc);
        assert!(parse_expiration("2026-08-10 14:05:31.123456 +0000 UTC m=+0.1").is_some());
        assert!(parse_expiration("tomorrow").is_none());
    }

    #[test]
    fn lifetimes_fall_back_and_clamp() {
        let default = Duration::from_secs(600);
        assert_eq!(lifetime(None, default), default);
        assert_eq!(lifetime(Some("garbage"), default), default);
        assert_eq!(
            lifetime(Some("2000-01-01T00:00:00Z"), default),
            Duration::from_secs(1)
        );
        let soon = chrono::Utc::now() + chrono::Duration::seconds(300);
        let l = lifetime(Some(&soon.to_rfc3339()), default);
        assert!(
            l > Duration::from_secs(290) && l <= Duration::from_secs(300),
            "{l:?}"
        );
    }

    #[test]
    fn other_access_types_are_reported_as_unsupported() {
        let mut cfg = access("p-1", "k");
        cfg.access_type = AccessType::K8s;
        let err = Identity::new(Url::parse("https://a").unwrap(), &cfg).unwrap_err();
        assert!(matches!(err, AuthError::Unsupported(AccessType::K8s)));
    }
}

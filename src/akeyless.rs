//! The Akeyless API client: JSON over POST to SaaS (`https://api.akeyless.io`) or a Gateway.
//!
//! Every call has a timeout and respects the mount's [`Deadline`]. Reads are retried on 5xx,
//! 429 and transport failures with jittered exponential backoff. Issuing calls (dynamic
//! secrets, PKI and SSH certificates) create something on every call, so they are retried only
//! when Akeyless certainly did not act: the connection was never made, or it answered 429 or
//! 503. 401 and 404 are classified for the caller (who may log in again) and never retried
//! here. Error texts from the server are
//! shortened, stripped of control characters and scrubbed of the credentials we sent, because
//! they end up in pod events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use url::Url;

use crate::secret::{SecretBytes, SecretString};
use crate::telemetry::metrics::{BackendStatus, GaugeGuard, Metrics, RejectReason};

/// The point in time by which a mount must have answered.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    pub fn instant(self) -> Instant {
        self.0
    }

    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn is_past(self) -> bool {
        self.remaining().is_zero()
    }
}

/// Tuning of the HTTP client, set once from flags.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Upper bound of one HTTP exchange.
    pub call_timeout: Duration,
    /// Attempts per call for retryable failures (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubled per attempt, with full jitter.
    pub initial_backoff: Duration,
    /// Responses larger than this are refused rather than buffered.
    pub max_response_bytes: usize,
    /// Akeyless calls under way at once, node-wide (a burst after a node restart queues here
    /// instead of hammering Akeyless).
    pub max_concurrent_calls: usize,
    /// Calls allowed to wait for the bound; beyond that a call is refused at once.
    pub max_queued_calls: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_response_bytes: 16 << 20,
            max_concurrent_calls: 32,
            max_queued_calls: 1024,
        }
    }
}

/// How long Akeyless may wait for a dynamic secret's producer (`timeout` of
/// `/get-dynamic-secret-value`, seconds; the server's default is 15): the call's budget covers
/// this wait on top of `--call-timeout`, so a slow producer is not abandoned mid-issue.
pub const PRODUCER_WAIT: Duration = Duration::from_secs(15);

/// What a call does in Akeyless, which decides when it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    /// Reads and logins: sending one twice changes nothing.
    Read,
    /// Creates something (a lease, a certificate) each time; `wait` is what the server may
    /// spend on it beyond an ordinary call.
    Issue { wait: Duration },
}

/// Why an Akeyless call failed, classified by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 401: bad credentials, an expired token, or no permission (Akeyless does not tell which).
    #[error("HTTP 401 from {command}: {message}")]
    Unauthorized { command: String, message: String },
    /// 404: the item does not exist (and the caller may know that).
    #[error("HTTP 404 from {command}: {message}")]
    NotFound { command: String, message: String },
    /// Another 4xx: the request itself is wrong; retrying will not help.
    #[error("HTTP {status} from {command}: {message}")]
    Rejected {
        command: String,
        status: u16,
        message: String,
    },
    /// 5xx, 429 or a transport failure that outlasted the retries.
    #[error("{command} failed after {attempts} attempt(s): {reason}")]
    Unavailable {
        command: String,
        attempts: u32,
        reason: String,
    },
    /// The mount's deadline passed before an answer came.
    #[error("{command} did not answer before the mount's deadline")]
    DeadlineExceeded { command: String },
    /// The node-wide bound of concurrent calls is saturated: the call could not start in time.
    #[error("{command} was not sent: {reason}")]
    Overloaded { command: String, reason: String },
    /// A 200 whose body is not what the API documents.
    #[error("unexpected response from {command}: {reason}")]
    InvalidResponse { command: String, reason: String },
}

/// A credential for data calls: a `t-` token from `/auth` or a Universal Identity `u-` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiToken {
    Token(SecretString),
    UidToken(SecretString),
}

impl ApiToken {
    fn secret(&self) -> &SecretString {
        match self {
            Self::Token(t) | Self::UidToken(t) => t,
        }
    }
}

/// The credentials of one `/auth` call; which fields are set depends on `access-type`
/// (akeyless-api.md §1.3).
#[derive(Debug, Default)]
pub struct AuthRequest {
    pub access_type: String,
    pub access_id: String,
    /// `access_key`.
    pub access_key: Option<SecretString>,
    /// `k8s`: the K8s auth config on the Gateway.
    pub k8s_auth_config_name: Option<String>,
    /// `k8s`: base64 (standard) of the service-account JWT, as the API expects.
    pub k8s_service_account_token: Option<SecretString>,
    /// `jwt` / `oidc`.
    pub jwt: Option<SecretString>,
    /// `aws_iam` / `azure_ad` / `gcp`.
    pub cloud_id: Option<SecretString>,
    /// `gcp`, when not the server's default `akeyless.io`.
    pub gcp_audience: Option<String>,
}

impl AuthRequest {
    /// Every credential in the request, to scrub from error texts.
    fn secrets(&self) -> Vec<&str> {
        [
            &self.access_key,
            &self.k8s_service_account_token,
            &self.jwt,
            &self.cloud_id,
        ]
        .into_iter()
        .flatten()
        .map(SecretString::expose)
        .collect()
    }
}

/// What `/auth` answers; `expiration` only on current API versions.
#[derive(Debug, Deserialize)]
pub struct AuthResponse {
    pub token: SecretString,
    #[serde(default)]
    pub expiration: Option<String>,
}

/// What `/validate-token` says of a token (`ValidateTokenOutput`; `ttl`'s unit is not
/// documented, so it is not read).
#[derive(Debug, Default, Deserialize)]
pub struct TokenValidity {
    #[serde(default)]
    pub is_valid: Option<bool>,
    /// Go's `time.Time.String()` or RFC 3339.
    #[serde(default)]
    pub expiration: Option<String>,
    /// When the token was last rotated (Universal Identity), same formats.
    #[serde(default)]
    pub last_rotate: Option<String>,
}

/// One value to read: an item at its latest or a pinned version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemRef {
    pub name: String,
    pub version: Option<u32>,
}

/// A JSON answer holding secret material: it never prints.
pub struct SecretJson(pub serde_json::Value);

impl std::fmt::Debug for SecretJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretJson([redacted])")
    }
}

/// Which folder `/list-items` lists.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// The folder, e.g. `/app/prod`.
    pub path: String,
    pub filter: Option<String>,
    /// Only items carrying this tag (the server filters); asks for the full view, with tags.
    pub tag: Option<String>,
    /// Items in sub-folders too.
    pub recursive: bool,
    /// `type` filter, e.g. `["static-secret"]`.
    pub types: Vec<&'static str>,
    pub max_pages: usize,
}

/// One item of a `/list-items` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Akeyless's `item_type` (e.g. `STATIC_SECRET`); empty when the server omits it.
    pub item_type: String,
    /// `item_tags` (full view only).
    pub tags: Vec<String>,
}

/// What `/get-pki-certificate` is asked for.
#[derive(Debug)]
pub struct PkiRequest<'a> {
    pub issuer: &'a str,
    /// Base64 of the DER CSR (a public key and names: nothing secret).
    pub csr_base64: &'a str,
    pub common_name: &'a str,
    pub alt_names: &'a [String],
    pub uri_sans: &'a [String],
    pub ttl: Option<std::time::Duration>,
}

/// What `/get-ssh-certificate` is asked for.
#[derive(Debug)]
pub struct SshRequest<'a> {
    pub issuer: &'a str,
    /// `cert-username`: the principal.
    pub username: &'a str,
    /// An OpenSSH public key line.
    pub public_key: &'a str,
    /// Seconds, an integer in the API.
    pub ttl: Option<std::time::Duration>,
}

/// The body of a read of one item at a version (the latest when `None`), past the gateway cache
/// only when it is fresh (`ignore-cache: false`, as for `/get-secret-value`) unless the client
/// says otherwise.
fn versioned_read(
    name_field: &str,
    name: &str,
    version: Option<u32>,
    ignore_cache: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = json_fields([
        (name_field, name.into()),
        ("ignore-cache", ignore_cache_text(ignore_cache).into()),
    ]);
    if let Some(v) = version {
        fields.insert("version".into(), v.into());
    }
    fields
}

/// `ignore-cache` is a string in the API (akeyless-api.md §1.1).
fn ignore_cache_text(ignore: bool) -> &'static str {
    if ignore { "true" } else { "false" }
}

fn json_fields<const N: usize>(
    pairs: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A client for any number of Akeyless URLs, sharing one connection pool.
///
/// A [`Client::variant`] serves one controller store: its own trust roots (its own pool) and
/// cache policy, under the same node-wide bound and metrics.
#[derive(Debug, Clone)]
pub struct Client {
    /// Built on the first call: building it sets up TLS (rustls, aws-lc, the root
    /// certificates), code and data an idle provider need not touch (README, Performance).
    http: Arc<std::sync::OnceLock<Result<reqwest::Client, String>>>,
    options: ClientOptions,
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
    /// Reads ask the Gateway to bypass its cache (a store's `ignoreCache`).
    ignore_cache: bool,
    /// The trust roots that replace the system's; `None`: the system's.
    roots: Option<TrustRoots>,
}

/// CA certificates that replace the system's trust roots for one store's calls (a Gateway
/// with a private CA), as ESO's Akeyless provider does with `caBundle`/`caProvider`.
#[derive(Clone)]
pub struct TrustRoots {
    der: Vec<Vec<u8>>,
    fingerprint: String,
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots")
            .field("certificates", &self.der.len())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl TrustRoots {
    /// Every `CERTIFICATE` block of a PEM bundle; at least one, each a valid X.509 certificate.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        use sha2::{Digest, Sha256};
        let certificates = crate::render::pem::parse_certificates(text)?;
        if certificates.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
        }
        let der: Vec<Vec<u8>> = certificates.iter().map(|c| c.der().to_vec()).collect();
        let mut hash = Sha256::new();
        for cert in &der {
            hash.update((cert.len() as u64).to_be_bytes());
            hash.update(cert);
        }
        Ok(Self {
            der,
            fingerprint: hex::encode(hash.finalize()),
        })
    }

    /// SHA-256 over the certificates (hex): equal bundles, equal fingerprints.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The node-wide bound on concurrent calls, with a bounded queue.
#[derive(Debug)]
struct Limiter {
    permits: Semaphore,
    queued: AtomicUsize,
}

impl Client {
    pub fn new(options: ClientOptions, metrics: Arc<Metrics>) -> Self {
        let limiter = Arc::new(Limiter {
            permits: Semaphore::new(options.max_concurrent_calls.max(1)),
            queued: AtomicUsize::new(0),
        });
        Self {
            http: Arc::default(),
            options,
            limiter,
            metrics,
            ignore_cache: false,
            roots: None,
        }
    }

    /// The HTTP client, built on first use (with this client's trust roots, if any).
    fn http(&self, command: &str) -> Result<&reqwest::Client, ApiError> {
        let built = self.http.get_or_init(|| {
            http_client(&self.options, self.roots.as_ref()).map_err(|e| e.to_string())
        });
        built.as_ref().map_err(|reason| ApiError::Unavailable {
            command: command.to_owned(),
            attempts: 0,
            reason: format!("cannot build the HTTP client: {reason}"),
        })
    }

    /// This client for one store: `roots` instead of the system's trust roots (a connection
    /// pool of its own, so no connection verified under other roots is reused) and reads that
    /// bypass the Gateway's cache when `ignore_cache`. The node-wide bound on concurrent calls
    /// and the metrics stay shared.
    pub fn variant(
        &self,
        roots: Option<&TrustRoots>,
        ignore_cache: bool,
    ) -> Result<Self, reqwest::Error> {
        // Checked now, so that a bad bundle is the store's error, not a failed call's.
        for der in roots.iter().flat_map(|r| &r.der) {
            reqwest::Certificate::from_der(der)?;
        }
        let http = match roots {
            None if self.roots.is_none() => self.http.clone(),
            _ => Arc::default(),
        };
        Ok(Self {
            http,
            options: self.options.clone(),
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            ignore_cache,
            roots: roots.cloned(),
        })
    }

    /// What sets this client's calls apart from the default client's (empty for the default):
    /// the trust roots' fingerprint and the cache policy. Part of an identity's key.
    pub fn profile(&self) -> String {
        let mut profile = String::new();
        if let Some(roots) = &self.roots {
            profile.push_str("roots=");
            profile.push_str(roots.fingerprint());
        }
        if self.ignore_cache {
            profile.push_str(";ignore-cache");
        }
        profile
    }

    /// The metrics this client records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits for a slot under the node-wide bound, but never past the deadline and never in a
    /// queue that is already full: a fast, clear refusal beats a mount that hangs until the
    /// driver gives up.
    async fn slot(
        &self,
        command: &str,
        deadline: Deadline,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        if let Ok(permit) = self.limiter.permits.try_acquire() {
            return Ok(permit);
        }
        let overloaded = |reason: String| ApiError::Overloaded {
            command: command.to_owned(),
            reason,
        };
        let queued = self.limiter.queued.fetch_add(1, Ordering::SeqCst);
        let _dequeue = Dequeue(&self.limiter.queued);
        if queued >= self.options.max_queued_calls {
            self.metrics.reject(RejectReason::QueueFull);
            return Err(overloaded(format!(
                "{queued} Akeyless calls are already waiting for the node-wide limit of {} concurrent calls",
                self.options.max_concurrent_calls
            )));
        }
        let _waiting = GaugeGuard::new(&self.metrics.queued_backend_calls);
        match tokio::time::timeout_at(deadline.instant(), self.limiter.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => {
                self.metrics.reject(RejectReason::QueueTimeout);
                Err(overloaded(format!(
                    "the node-wide limit of {} concurrent Akeyless calls stayed saturated until the mount's deadline",
                    self.options.max_concurrent_calls
                )))
            }
        }
    }

    /// `POST /auth`: exchanges a credential for a temporary token.
    pub async fn auth(
        &self,
        base: &Url,
        request: &AuthRequest,
        deadline: Deadline,
    ) -> Result<AuthResponse, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "access-type")]
            access_type: &'a str,
            #[serde(rename = "access-id")]
            access_id: &'a str,
            #[serde(rename = "access-key", skip_serializing_if = "Option::is_none")]
            access_key: Option<&'a str>,
            #[serde(
                rename = "k8s-auth-config-name",
                skip_serializing_if = "Option::is_none"
            )]
            k8s_auth_config_name: Option<&'a str>,
            #[serde(
                rename = "k8s-service-account-token",
                skip_serializing_if = "Option::is_none"
            )]
            k8s_service_account_token: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            jwt: Option<&'a str>,
            #[serde(rename = "cloud-id", skip_serializing_if = "Option::is_none")]
            cloud_id: Option<&'a str>,
            #[serde(rename = "gcp-audience", skip_serializing_if = "Option::is_none")]
            gcp_audience: Option<&'a str>,
        }
        let body = Body {
            access_type: &request.access_type,
            access_id: &request.access_id,
            access_key: request.access_key.as_ref().map(SecretString::expose),
            k8s_auth_config_name: request.k8s_auth_config_name.as_deref(),
            k8s_service_account_token: request
                .k8s_service_account_token
                .as_ref()
                .map(SecretString::expose),
            jwt: request.jwt.as_ref().map(SecretString::expose),
            cloud_id: request.cloud_id.as_ref().map(SecretString::expose),
            gcp_audience: request.gcp_audience.as_deref(),
        };
        let scrub = request.secrets();
        self.call(base, "auth", &body, &scrub, CallKind::Read, deadline)
            .await
    }

    /// `POST /validate-token`: a token's validity and expiry.
    pub async fn validate_token(
        &self,
        base: &Url,
        token: &SecretString,
        deadline: Deadline,
    ) -> Result<TokenValidity, ApiError> {
        let body = json_fields([("token", token.expose().into())]);
        let scrub = [token.expose()];
        self.call(
            base,
            "validate-token",
            &body,
            &scrub,
            CallKind::Read,
            deadline,
        )
        .await
    }

    /// `POST /get-secret-value`: reads many static secrets at one version in one call.
    ///
    /// Values that are not JSON strings are returned as their JSON text.
    pub async fn get_secret_values(
        &self,
        base: &Url,
        token: &ApiToken,
        names: &[String],
        version: Option<u32>,
        deadline: Deadline,
    ) -> Result<BTreeMap<String, SecretBytes>, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            names: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            version: Option<u32>,
            #[serde(rename = "ignore-cache")]
            ignore_cache: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            token: Option<&'a str>,
            #[serde(rename = "uid-token", skip_serializing_if = "Option::is_none")]
            uid_token: Option<&'a str>,
        }
        let body = Body {
            names,
            version,
            ignore_cache: ignore_cache_text(self.ignore_cache),
            token: match token {
                ApiToken::Token(t) => Some(t.expose()),
                ApiToken::UidToken(_) => None,
            },
            uid_token: match token {
                ApiToken::UidToken(t) => Some(t.expose()),
                ApiToken::Token(_) => None,
            },
        };
        let command = "get-secret-value";
        let scrub = [token.secret().expose()];
        let values = self
            .call(base, command, &body, &scrub, CallKind::Read, deadline)
            .await?;
        secret_values(values, names)
    }

    /// A data command whose body is `fields` plus the token: the responses of these commands
    /// are free-form (akeyless-api.md §1.6–§1.12), so they come back as JSON to be shaped by
    /// the caller.
    async fn data_call(
        &self,
        base: &Url,
        command: &str,
        token: &ApiToken,
        mut fields: serde_json::Map<String, serde_json::Value>,
        kind: CallKind,
        deadline: Deadline,
    ) -> Result<serde_json::Value, ApiError> {
        let (field, secret) = match token {
            ApiToken::Token(t) => ("token", t),
            ApiToken::UidToken(t) => ("uid-token", t),
        };
        fields.insert(field.to_owned(), secret.expose().into());
        self.call(base, command, &fields, &[secret.expose()], kind, deadline)
            .await
    }

    /// `POST /describe-item`: the item's `item_type` (e.g. `STATIC_SECRET`).
    pub async fn describe_item_type(
        &self,
        base: &Url,
        token: &ApiToken,
        name: &str,
        deadline: Deadline,
    ) -> Result<String, ApiError> {
        let fields = json_fields([("name", name.into())]);
        let item = self
            .data_call(
                base,
                "describe-item",
                token,
                fields,
                CallKind::Read,
                deadline,
            )
            .await?;
        item.get("item_type")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ApiError::InvalidResponse {
                command: "describe-item".to_owned(),
                reason: "the item has no item_type".to_owned(),
            })
    }

    /// `POST /list-items` of one folder, every page: each item's name, type and (with a `tag`
    /// query, which asks for the full view) tags. At most `max_pages` calls; more is an error
    /// rather than a partial listing.
    pub async fn list_items(
        &self,
        base: &Url,
        token: &ApiToken,
        query: &ListQuery,
        deadline: Deadline,
    ) -> Result<Vec<Listed>, ApiError> {
        let command = "list-items";
        let mut items = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..query.max_pages.max(1) {
            let mut fields = json_fields([
                ("path", query.path.as_str().into()),
                ("type", serde_json::json!(query.types)),
                ("minimal-view", query.tag.is_none().into()),
                ("auto-pagination", "enabled".into()),
                ("current-folder", (!query.recursive).into()),
            ]);
            if let Some(filter) = &query.filter {
                fields.insert("filter".into(), filter.as_str().into());
            }
            if let Some(tag) = &query.tag {
                fields.insert("tag".into(), tag.as_str().into());
            }
            if let Some(token) = &page {
                fields.insert("pagination-token".into(), token.as_str().into());
            }
            let answer = self
                .data_call(base, command, token, fields, CallKind::Read, deadline)
                .await?;
            let invalid = |reason: &str| ApiError::InvalidResponse {
                command: command.to_owned(),
                reason: reason.to_owned(),
            };
            for item in answer
                .get("items")
                .and_then(serde_json::Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let name = item
                    .get("item_name")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| invalid("an item has no item_name"))?;
                let kind = item
                    .get("item_type")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                let tags = item
                    .get("item_tags")
                    .and_then(serde_json::Value::as_array)
                    .map(|tags| {
                        tags.iter()
                            .filter_map(serde_json::Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                items.push(Listed {
                    name: name.to_owned(),
                    item_type: kind.to_owned(),
                    tags,
                });
            }
            match answer
                .get("next_page")
                .and_then(serde_json::Value::as_str)
                .filter(|p| !p.is_empty())
            {
                Some(next) => page = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
        Err(ApiError::InvalidResponse {
            command: command.to_owned(),
            reason: format!(
                "the folder {} has more than {} pages of items; narrow it with a filter",
                query.path, query.max_pages
            ),
        })
    }

    /// `POST /get-rotated-secret-value`: the `value` object (akeyless-api.md §1.8).
    pub async fn get_rotated_secret_value(
        &self,
        base: &Url,
        token: &ApiToken,
        name: &str,
        version: Option<u32>,
        deadline: Deadline,
    ) -> Result<SecretJson, ApiError> {
        // `names` is one string here, unlike `/get-secret-value`.
        let fields = versioned_read("names", name, version, self.ignore_cache);
        let mut answer = self
            .data_call(
                base,
                "get-rotated-secret-value",
                token,
                fields,
                CallKind::Read,
                deadline,
            )
            .await?;
        match answer.get_mut("value").map(serde_json::Value::take) {
            Some(value @ serde_json::Value::Object(_)) => Ok(SecretJson(value)),
            _ => Err(ApiError::InvalidResponse {
                command: "get-rotated-secret-value".to_owned(),
                reason: "the response has no value object".to_owned(),
            }),
        }
    }

    /// `POST /get-certificate-value`: `certificate_pem` and `private_key_pem`.
    pub async fn get_certificate_value(
        &self,
        base: &Url,
        token: &ApiToken,
        name: &str,
        version: Option<u32>,
        deadline: Deadline,
    ) -> Result<SecretJson, ApiError> {
        let fields = versioned_read("name", name, version, self.ignore_cache);
        let answer = self
            .data_call(
                base,
                "get-certificate-value",
                token,
                fields,
                CallKind::Read,
                deadline,
            )
            .await?;
        if answer
            .get("certificate_pem")
            .and_then(serde_json::Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::InvalidResponse {
                command: "get-certificate-value".to_owned(),
                reason: "the response has no certificate_pem".to_owned(),
            });
        }
        Ok(SecretJson(answer))
    }

    /// `POST /get-dynamic-secret-value`: new credentials (a lease) on every call. Both observed
    /// shapes are accepted: flat credentials, and `{"value": "<JSON>", "error": ""}`.
    pub async fn get_dynamic_secret_value(
        &self,
        base: &Url,
        token: &ApiToken,
        name: &str,
        deadline: Deadline,
    ) -> Result<SecretJson, ApiError> {
        let command = "get-dynamic-secret-value";
        // The producer's wait, in whole seconds, within what is left of the issue's deadline.
        let left = deadline
            .remaining()
            .saturating_sub(self.options.call_timeout);
        let wait = Duration::from_secs(PRODUCER_WAIT.min(left).as_secs().max(1));
        let fields = json_fields([("name", name.into()), ("timeout", wait.as_secs().into())]);
        let answer = self
            .data_call(
                base,
                command,
                token,
                fields,
                CallKind::Issue { wait },
                deadline,
            )
            .await?;
        let invalid = |reason: &str| ApiError::InvalidResponse {
            command: command.to_owned(),
            reason: reason.to_owned(),
        };
        let wrapped = answer.as_object().is_some_and(|o| {
            o.get("value").is_some_and(serde_json::Value::is_string)
                && o.keys().all(|k| k == "value" || k == "error")
        });
        if !wrapped {
            return match answer {
                serde_json::Value::Object(_) => Ok(SecretJson(answer)),
                _ => Err(invalid("the credentials are not a JSON object")),
            };
        }
        if let Some(error) = answer
            .get("error")
            .and_then(serde_json::Value::as_str)
            .filter(|e| !e.trim().is_empty())
        {
            // The producer's own error text (e.g. its target refused): no credential in it.
            return Err(ApiError::Rejected {
                command: command.to_owned(),
                status: 200,
                message: sanitize(error, &[]),
            });
        }
        let text = answer
            .get("value")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(inner @ serde_json::Value::Object(_)) => Ok(SecretJson(inner)),
            _ => Ok(SecretJson(serde_json::json!({ "value": text }))),
        }
    }

    /// `POST /get-pki-certificate` for a CSR made here: `(certificate PEM, issuer PEM)`.
    pub async fn get_pki_certificate(
        &self,
        base: &Url,
        token: &ApiToken,
        request: &PkiRequest<'_>,
        deadline: Deadline,
    ) -> Result<(String, String), ApiError> {
        let command = "get-pki-certificate";
        let mut fields = json_fields([
            ("cert-issuer-name", request.issuer.into()),
            ("csr-data-base64", request.csr_base64.into()),
            ("common-name", request.common_name.into()),
        ]);
        if !request.alt_names.is_empty() {
            fields.insert("alt-names".into(), request.alt_names.join(",").into());
        }
        if !request.uri_sans.is_empty() {
            fields.insert("uri-sans".into(), request.uri_sans.join(",").into());
        }
        if let Some(ttl) = request.ttl {
            // A string of seconds in the v4 API.
            fields.insert("ttl".into(), ttl.as_secs().to_string().into());
        }
        let issue = CallKind::Issue {
            wait: Duration::ZERO,
        };
        let answer = self
            .data_call(base, command, token, fields, issue, deadline)
            .await?;
        let text = |field: &str| {
            answer
                .get(field)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let certificate = text("data");
        if !certificate.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ApiError::InvalidResponse {
                command: command.to_owned(),
                reason: "the response has no PEM certificate in data".to_owned(),
            });
        }
        Ok((certificate, text("parent_cert")))
    }

    /// `POST /get-ssh-certificate`: the signed certificate line.
    pub async fn get_ssh_certificate(
        &self,
        base: &Url,
        token: &ApiToken,
        request: &SshRequest<'_>,
        deadline: Deadline,
    ) -> Result<String, ApiError> {
        let command = "get-ssh-certificate";
        let mut fields = json_fields([
            ("cert-issuer-name", request.issuer.into()),
            ("cert-username", request.username.into()),
            ("public-key-data", request.public_key.into()),
        ]);
        if let Some(ttl) = request.ttl {
            fields.insert("ttl".into(), ttl.as_secs().into());
        }
        let issue = CallKind::Issue {
            wait: Duration::ZERO,
        };
        let answer = self
            .data_call(base, command, token, fields, issue, deadline)
            .await?;
        answer
            .get("data")
            .and_then(serde_json::Value::as_str)
            .map(|d| d.trim().to_owned())
            .filter(|d| d.contains("-cert-v01@openssh.com "))
            .ok_or_else(|| ApiError::InvalidResponse {
                command: command.to_owned(),
                reason: "the response has no OpenSSH certificate in data".to_owned(),
            })
    }

    /// One API command with retries for transient failures: any of them for reads, only those
    /// where Akeyless certainly did not act for issuing calls.
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        base: &Url,
        command: &str,
        body: &B,
        scrub: &[&str],
        kind: CallKind,
        deadline: Deadline,
    ) -> Result<R, ApiError> {
        let url = command_url(base, command);
        if command == "auth" {
            self.metrics.logins.inc();
        }
        let extra = match kind {
            CallKind::Read => Duration::ZERO,
            CallKind::Issue { wait } => wait,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self
                .call_once(&url, command, body, scrub, extra, deadline)
                .await
            {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidResponse {
                        command: command.to_owned(),
                        reason: format!("not the documented JSON ({})", e.classify_text()),
                    });
                }
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retryable {
                    reason,
                    retry_after,
                    unsent,
                }) => (reason, retry_after, unsent),
            };
            let (reason, retry_after, unsent) = failure;
            if kind != CallKind::Read && !unsent {
                // It may have issued: a second call could issue again, and nobody would
                // revoke the first. The driver's next poll issues afresh.
                return Err(ApiError::Unavailable {
                    command: command.to_owned(),
                    attempts: attempt,
                    reason: format!(
                        "{reason} (not sent again: Akeyless may have issued it already; the next mount issues afresh)"
                    ),
                });
            }
            if attempt >= self.options.max_attempts.max(1) {
                return Err(ApiError::Unavailable {
                    command: command.to_owned(),
                    attempts: attempt,
                    reason,
                });
            }
            let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
            if wait >= deadline.remaining() {
                // Waiting would outlast the mount: report the real cause now.
                return Err(ApiError::Unavailable {
                    command: command.to_owned(),
                    attempts: attempt,
                    reason,
                });
            }
            tracing::debug!(command, attempt, wait_ms = wait.as_millis() as u64, %reason, "retrying Akeyless call");
            tokio::time::sleep(wait).await;
        }
    }

    /// Full-jitter exponential backoff: uniform in [0, initial * 2^(attempt-1)].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .options
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(10));
        let millis = cap.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis.max(1)))
    }

    /// One attempt; `extra` is added to the call timeout (a server-side wait the call asked for).
    async fn call_once<B: Serialize>(
        &self,
        url: &str,
        command: &str,
        body: &B,
        scrub: &[&str],
        extra: Duration,
        deadline: Deadline,
    ) -> Result<Vec<u8>, Attempt> {
        if deadline.is_past() {
            return Err(Attempt::Final(ApiError::DeadlineExceeded {
                command: command.to_owned(),
            }));
        }
        let _slot = self.slot(command, deadline).await.map_err(Attempt::Final)?;
        let _inflight = GaugeGuard::new(&self.metrics.inflight_backend_calls);
        let budget = (self.options.call_timeout + extra).min(deadline.remaining());
        if budget.is_zero() {
            return Err(Attempt::Final(ApiError::DeadlineExceeded {
                command: command.to_owned(),
            }));
        }
        let started = Instant::now();
        let record = |status: BackendStatus| {
            self.metrics
                .backend_call(command, status, started.elapsed());
        };
        let http = self.http(command).map_err(Attempt::Final)?;
        let exchange = async {
            let response = http
                .post(url)
                .header(reqwest::header::ACCEPT, "application/json")
                .json(body)
                .send()
                .await
                .map_err(|e| Attempt::Retryable {
                    reason: transport_reason(&e),
                    retry_after: None,
                    // Only a connection never made is certain not to have reached Akeyless.
                    unsent: e.is_connect(),
                })?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let bytes = read_body(response, self.options.max_response_bytes, command).await?;
            Ok::<_, Attempt>((status, retry_after, bytes))
        };
        let (status, retry_after, bytes) = match tokio::time::timeout(budget, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(failure)) => {
                record(BackendStatus::Transport);
                return Err(failure);
            }
            Err(_) if deadline.is_past() => {
                record(BackendStatus::Timeout);
                return Err(Attempt::Final(ApiError::DeadlineExceeded {
                    command: command.to_owned(),
                }));
            }
            Err(_) => {
                record(BackendStatus::Timeout);
                return Err(Attempt::Retryable {
                    reason: format!("no answer within {}ms", budget.as_millis()),
                    retry_after: None,
                    unsent: false,
                });
            }
        };
        record(BackendStatus::from_http(status.as_u16()));
        if status.is_success() {
            return Ok(bytes);
        }
        let message = server_message(&bytes, scrub);
        let command = command.to_owned();
        Err(match status.as_u16() {
            401 => Attempt::Final(ApiError::Unauthorized { command, message }),
            404 => Attempt::Final(ApiError::NotFound { command, message }),
            429 | 500..=599 => Attempt::Retryable {
                reason: format!("HTTP {}: {message}", status.as_u16()),
                retry_after,
                // Rate limited or unavailable: refused before any work.
                unsent: matches!(status.as_u16(), 429 | 503),
            },
            status => Attempt::Final(ApiError::Rejected {
                command,
                status,
                message,
            }),
        })
    }
}

/// The HTTP client: no redirects, the call timeout for connecting, and either the system's
/// trust roots or only `roots`.
fn http_client(
    options: &ClientOptions,
    roots: Option<&TrustRoots>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("akeyless-csi-provider/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.call_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        // Never follow a redirect: it would carry the credential in the body elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .https_only(false);
    if let Some(roots) = roots {
        let certificates = roots
            .der
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build()
}

/// Leaves the queue count when the waiting call ends, however it ends.
struct Dequeue<'a>(&'a AtomicUsize);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decodes a 200 body; the error names the JSON problem, never the body (it may hold values).
pub fn decode_json<R: DeserializeOwned>(command: &str, body: &[u8]) -> Result<R, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidResponse {
        command: command.to_owned(),
        reason: format!("not the documented JSON ({})", e.classify_text()),
    })
}

/// Picks each requested name out of a `/get-secret-value` answer; a value that is not a JSON
/// string is kept as its JSON text. A name the answer leaves out is left out: the caller
/// decides what a missing item means.
pub fn secret_values(
    mut values: serde_json::Map<String, serde_json::Value>,
    names: &[String],
) -> Result<BTreeMap<String, SecretBytes>, ApiError> {
    let mut out = BTreeMap::new();
    for name in names {
        let Some(value) = values.remove(name) else {
            continue;
        };
        let bytes = match value {
            serde_json::Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        out.insert(name.clone(), SecretBytes::new(bytes));
    }
    Ok(out)
}

/// The outcome of one failed attempt.
enum Attempt {
    Final(ApiError),
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
        /// Akeyless certainly did not act on the request (no connection, 429, 503).
        unsent: bool,
    },
}

/// `<base>/<command>`: the base may carry a path (`/api/v2` on Gateways), so no `Url::join`.
fn command_url(base: &Url, command: &str) -> String {
    format!("{}/{command}", base.as_str().trim_end_matches('/'))
}

/// Retry-After in seconds (the HTTP-date form is rare for APIs and ignored), at most a minute.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// Reads a body up to a limit, so a misbehaving server cannot exhaust memory.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    command: &str,
) -> Result<Vec<u8>, Attempt> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(Attempt::Final(too_large(command, limit)));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Attempt::Final(too_large(command, limit)));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Attempt::Retryable {
                    reason: format!("the response broke off ({})", transport_reason(&e)),
                    retry_after: None,
                    unsent: false,
                });
            }
        }
    }
}

fn too_large(command: &str, limit: usize) -> ApiError {
    ApiError::InvalidResponse {
        command: command.to_owned(),
        reason: format!("the response is larger than {limit} bytes"),
    }
}

/// A transport error in words, without the URL (it is named elsewhere) or any body.
pub(crate) fn transport_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response body broke off"
    } else if e.is_request() {
        "the request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = None;
    while let Some(s) = source {
        detail = Some(s.to_string());
        source = s.source();
    }
    match detail {
        Some(d) => format!("{kind}: {}", sanitize(&d, &[])),
        None => kind.to_owned(),
    }
}

/// The `error` field of an error body (or the body's start), made safe for a pod event.
pub fn server_message(body: &[u8], scrub: &[&str]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) if body.is_empty() => return "(empty body)".to_owned(),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    };
    sanitize(&text, scrub)
}

/// At most 300 characters, no control characters, and none of the credentials we sent.
pub(crate) fn sanitize(text: &str, scrub: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in scrub.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    /// Names the JSON problem without quoting the body, which may hold values.
    fn classify_text(&self) -> &'static str {
        use serde_json::error::Category;
        match self.classify() {
            Category::Io => "read error",
            Category::Syntax => "malformed JSON",
            Category::Data => "unexpected JSON shape",
            Category::Eof => "truncated JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_urls_keep_gateway_paths() {
        let gw = Url::parse("https://gw:8000/api/v2").unwrap();
        assert_eq!(command_url(&gw, "auth"), "https://gw:8000/api/v2/auth");
        let saas = Url::parse("https://api.akeyless.io/").unwrap();
        assert_eq!(command_url(&saas, "auth"), "https://api.akeyless.io/auth");
    }

    #[test]
    fn server_messages_are_scrubbed_and_bounded() {
        let body = br#"{"error":"bad key s3cr3t-key\nline two"}"#;
        assert_eq!(
            server_message(body, &["s3cr3t-key"]),
            "bad key [redacted] line two"
        );
        let long = "x".repeat(1000);
        assert!(server_message(long.as_bytes(), &[]).chars().count() <= 301);
        assert_eq!(server_message(b"", &[]), "(empty body)");
    }

    #[test]
    fn store_variants_share_the_bound_and_differ_by_profile() {
        let client = Client::new(ClientOptions::default(), Metrics::new());
        assert_eq!(client.profile(), "");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        let roots = TrustRoots::from_pem(&pem).unwrap();
        assert_eq!(
            TrustRoots::from_pem(&format!("junk\n{pem}"))
                .unwrap()
                .fingerprint(),
            roots.fingerprint(),
            "text around the blocks does not matter"
        );
        assert!(TrustRoots::from_pem("no certificate").is_err());
        assert!(!format!("{roots:?}").contains("BEGIN"));

        let rooted = client.variant(Some(&roots), false).unwrap();
        let uncached = client.variant(None, true).unwrap();
        let both = rooted.variant(Some(&roots), true).unwrap();
        assert_eq!(rooted.profile(), format!("roots={}", roots.fingerprint()));
        assert_eq!(uncached.profile(), ";ignore-cache");
        assert_ne!(both.profile(), rooted.profile());
        assert!(Arc::ptr_eq(&rooted.limiter, &client.limiter));
        assert!(Arc::ptr_eq(&both.metrics, &client.metrics));
        assert_eq!(client.variant(None, false).unwrap().profile(), "");
        assert_eq!(
            versioned_read("name", "/a", None, true)["ignore-cache"],
            "true"
        );
        assert_eq!(
            versioned_read("name", "/a", Some(2), false)["ignore-cache"],
            "false"
        );
    }

    #[test]
    fn backoff_stays_within_its_cap() {
        let client = Client::new(ClientOptions::default(), Metrics::new());
        for attempt in 1..20 {
            assert!(client.backoff(attempt) <= Duration::from_millis(200 * 1024));
        }
    }

    #[tokio::test]
    async fn an_issue_is_retried_only_while_no_connection_was_made() {
        // A port nobody listens on: the request never left, so sending it again is safe.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let base = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let options = ClientOptions {
            initial_backoff: Duration::from_millis(1),
            ..ClientOptions::default()
        };
        let client = Client::new(options, Metrics::new());
        let token = ApiToken::Token("t-x".into());
        let request = SshRequest {
            issuer: "/ssh",
            username: "deploy",
            public_key: "ssh-ed25519 AAAA",
            ttl: None,
        };
        let deadline = Deadline::after(Duration::from_secs(10));
        match client
            .get_ssh_certificate(&base, &token, &request, deadline)
            .await
        {
            Err(ApiError::Unavailable { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_output_of_requests_hides_credentials() {
        let req = AuthRequest {
            access_type: "access_key".into(),
            access_id: "p-1".into(),
            access_key: Some("hunter2".into()),
            jwt: Some("eyJ.secret-jwt".into()),
            ..AuthRequest::default()
        };
        assert!(!format!("{req:?}").contains("secret-jwt"));
        assert_eq!(req.secrets(), ["hunter2", "eyJ.secret-jwt"]);
        assert!(!format!("{req:?}").contains("hunter2"));
        let token = ApiToken::Token("t-abc".into());
        assert!(!format!("{token:?}").contains("t-abc"));
    }
}

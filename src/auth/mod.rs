//! Identity and authentication: from a mount's [`AccessConfig`] to an Akeyless token.
//!
//! Each mount acts as its own pod: the identity is proved by what the pod brings — its
//! service-account token for the audience the SPC names (`k8s`, `jwt`/`oidc`, and the
//! workload identities of `azure_ad`, `aws_iam`, `gcp`), or the credential in its
//! nodePublishSecretRef (`access_key`, `universal_identity`). The provider's own credentials
//! (`AKEYLESS_*`) and the node's cloud identity are used only when the SPC brings none, the
//! admin enabled them, and the URL is on the admin's allow-list ([`settings`]), because an SPC
//! is editable by pod authors and chooses the URL.
//!
//! Tokens are cached per identity — API URL, access type, access id and the credential that
//! proves it — so a pod never uses a token obtained with another pod's or another SPC's
//! credentials, and a rotation poll costs no login. Only a SHA-256 of the identity is kept as
//! the key. One login per identity runs at a time; concurrent mounts of that identity wait for
//! it and share its outcome. The login runs in its own task, so a caller that gives up does not
//! cancel it for the others, and any exchange it needs first (Entra ID, STS, metadata servers)
//! runs inside it: once per login, never per mount.

mod aws;
mod azure;
mod exchange;
pub mod flags;
mod gcp;
mod kube;
mod resolve;
pub mod settings;
mod uid;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use url::Url;

use crate::akeyless::{ApiError, ApiToken, AuthRequest, Client, Deadline};
use crate::params::{AccessConfig, AccessType, MountConfig, PodInfo};
use crate::secret::SecretString;

pub use aws::{
    IRSA_AUDIENCE as AWS_IRSA_AUDIENCE, POD_IDENTITY_AUDIENCE as AWS_POD_IDENTITY_AUDIENCE,
};
pub use azure::WORKLOAD_IDENTITY_AUDIENCE as AZURE_WORKLOAD_IDENTITY_AUDIENCE;
pub use exchange::ExchangeError;
pub use kube::AccountToken;
pub use resolve::{DEFAULT_AUDIENCE, is_saas};
pub use settings::{AuthSettings, Endpoints, ProviderCredentials};

/// Token lifetime policy and the admin's identity settings.
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
    /// Who may use the provider's and the node's credentials, and the cloud endpoints.
    pub settings: AuthSettings,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(600),
            refresh_before: Duration::from_secs(60),
            login_timeout: Duration::from_secs(30),
            max_identities: 10_000,
            settings: AuthSettings::default(),
        }
    }
}

/// Everything that decides which Akeyless principal a mount acts as, and how it is reached.
#[derive(Clone)]
pub struct Identity {
    pub base: Url,
    pub access_type: AccessType,
    pub access_id: String,
    proof: Proof,
    /// A controller store's own client (trust roots, cache policy); `None`: the shared one.
    client: Option<Client>,
    key: IdentityKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("base", &self.base.as_str())
            .field("access_type", &self.access_type)
            .field("access_id", &self.access_id)
            .field("proof", &self.proof.kind())
            .field("client", &self.client.as_ref().map(Client::profile))
            .finish_non_exhaustive()
    }
}

/// The same principal, proved and reached the same way: what the token cache keys by.
impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Identity {}

/// Something an identity relies on from outside its SecretProviderClass (for `check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The pod's service-account token for this audience, which the driver sends when the
    /// audience is in the CSIDriver's `tokenRequests` (or the provider asks, `--token-request`).
    PodToken(String),
    /// The node's own cloud identity (`--node-identity`).
    NodeIdentity,
    /// A parameter the SPC leaves to the provider's flag: `(parameter, flag)`.
    ProviderDefault(&'static str, &'static str),
}

/// Stands in for a provider default in [`offline_identity`], to tell when one is used.
const OFFLINE_DEFAULT: &str = "provider-default";

impl Identity {
    /// What proves the identity, for people: "access key", "aws irsa", ...
    pub fn proof_kind(&self) -> &'static str {
        self.proof.kind()
    }

    /// Whether a token is had with `/auth` (a Universal Identity token is used as it is).
    pub fn logs_in(&self) -> bool {
        !matches!(self.proof, Proof::Uid(_))
    }

    /// What the identity relies on beyond the SecretProviderClass.
    pub fn needs(&self) -> Vec<Need> {
        let mut needs = match self.proof.pod_token() {
            (Some(token), _) => vec![Need::PodToken(token.audience().to_owned())],
            (None, true) => vec![Need::NodeIdentity],
            (None, false) => Vec::new(),
        };
        match &self.proof {
            Proof::K8s { config_name, .. } if config_name == OFFLINE_DEFAULT => {
                needs.push(Need::ProviderDefault(
                    crate::params::keys::K8S_AUTH_CONFIG_NAME,
                    "--default-k8s-auth-config-name (AKEYLESS_K8S_AUTH_CONFIG_NAME)",
                ));
            }
            Proof::Azure(p) if p.tenant_id() == Some(OFFLINE_DEFAULT) => {
                needs.push(Need::ProviderDefault(
                    crate::params::keys::AZURE_TENANT_ID,
                    "--azure-tenant-id (AZURE_TENANT_ID)",
                ));
            }
            _ => {}
        }
        needs
    }
}

/// The identity a mount of `config` calling `base` would have if the driver sent the pod's
/// service-account token for every audience its access type can use, and the admin allowed the
/// node's identity and the provider's non-secret defaults: what `check` reports, with
/// [`Identity::needs`] saying which of these it relies on. The provider's own credentials are
/// not assumed. No network call happens here.
pub fn offline_identity(base: Url, config: &MountConfig) -> Result<Identity, AuthError> {
    let access = &config.access;
    let mut audiences = vec![
        resolve::DEFAULT_AUDIENCE,
        azure::WORKLOAD_IDENTITY_AUDIENCE,
        aws::IRSA_AUDIENCE,
        aws::POD_IDENTITY_AUDIENCE,
    ];
    audiences.extend(access.token_audience.as_deref());
    audiences.extend(gcp::token_audience(access));
    let mut config = config.clone();
    for audience in audiences {
        config.pod.tokens.insert(
            audience.to_owned(),
            crate::params::PodToken {
                token: SecretString::new("offline"),
                expiration: None,
            },
        );
    }
    let settings = AuthSettings {
        default_url: base.clone(),
        node_identity: true,
        azure_tenant_id: Some(OFFLINE_DEFAULT.to_owned()),
        provider: ProviderCredentials {
            k8s_auth_config_name: Some(OFFLINE_DEFAULT.to_owned()),
            ..ProviderCredentials::default()
        },
        ..AuthSettings::default()
    };
    resolve::identity(&settings, base, &config.access, &config.pod)
}

/// What proves an identity, before any exchange. Never printed.
#[derive(Clone)]
enum Proof {
    AccessKey(SecretString),
    K8s {
        config_name: String,
        token: PodJwt,
    },
    Jwt(PodJwt),
    /// A Universal Identity `u-` token: the data credential itself, no login.
    Uid(SecretString),
    Azure(azure::Proof),
    Aws(aws::Proof),
    Gcp(gcp::Proof),
}

impl Proof {
    /// A name for logs and `Debug`.
    fn kind(&self) -> &'static str {
        match self {
            Self::AccessKey(_) => "access key",
            Self::K8s { .. } => "pod service-account token (k8s)",
            Self::Jwt(_) => "pod service-account token (jwt)",
            Self::Uid(_) => "universal identity token",
            Self::Azure(p) => p.kind(),
            Self::Aws(p) => p.kind(),
            Self::Gcp(p) => p.kind(),
        }
    }

    /// The pod token it uses, if any; `None` with `node` true: the node's own identity.
    fn pod_token(&self) -> (Option<&PodJwt>, bool) {
        match self {
            Self::AccessKey(_) | Self::Uid(_) => (None, false),
            Self::K8s { token, .. } | Self::Jwt(token) => (Some(token), false),
            Self::Azure(p) => p.pod_token(),
            Self::Aws(p) => p.pod_token(),
            Self::Gcp(p) => p.pod_token(),
        }
    }

    /// The parts that tell identities apart; hashed into the key, never kept.
    fn key_parts(&self) -> Vec<&str> {
        let mut parts = vec![self.kind()];
        match self {
            Self::AccessKey(s) | Self::Uid(s) => parts.push(s.expose()),
            Self::Jwt(token) => parts.extend(token.key_parts()),
            Self::K8s { config_name, token } => {
                parts.push(config_name);
                parts.extend(token.key_parts());
            }
            Self::Azure(p) => parts.extend(p.key_parts()),
            Self::Aws(p) => parts.extend(p.key_parts()),
            Self::Gcp(p) => parts.extend(p.key_parts()),
        }
        parts
    }
}

/// The pod's service-account token: as the driver sent it, or to be requested for the pod
/// (`--token-request`) inside the login.
#[derive(Clone)]
enum PodJwt {
    /// The token and its audience.
    Sent(SecretString, String),
    Requested(Box<kube::BoundToken>),
}

impl PodJwt {
    /// A sent token is its own identity (the kubelet rotates it: a new token, a new identity);
    /// a requested one is the pod's, by uid.
    fn key_parts(&self) -> Vec<&str> {
        match self {
            Self::Sent(token, _) => vec!["sent", token.expose()],
            Self::Requested(b) => vec![
                "requested",
                &b.namespace,
                &b.service_account,
                &b.pod_name,
                &b.pod_uid,
                &b.audience,
            ],
        }
    }

    fn audience(&self) -> &str {
        match self {
            Self::Sent(_, audience) => audience,
            Self::Requested(bound) => &bound.audience,
        }
    }

    async fn get(&self, login: &LoginCtx<'_>) -> Result<SecretString, AuthError> {
        match self {
            Self::Sent(token, _) => Ok(token.clone()),
            Self::Requested(bound) => login.kube.token(bound, login.deadline).await,
        }
    }
}

/// A setting the SPC gave, or one to read from the pod's ServiceAccount annotation
/// (`--token-request`) inside the login.
#[derive(Clone)]
enum Setting {
    Given(String),
    Annotation {
        namespace: String,
        service_account: String,
        annotation: &'static str,
        parameter: &'static str,
    },
}

impl Setting {
    fn key_part(&self) -> &str {
        match self {
            Self::Given(value) => value,
            Self::Annotation { annotation, .. } => annotation,
        }
    }

    async fn get(&self, login: &LoginCtx<'_>) -> Result<String, AuthError> {
        let (namespace, service_account, annotation, parameter) = match self {
            Self::Given(value) => return Ok(value.clone()),
            Self::Annotation {
                namespace,
                service_account,
                annotation,
                parameter,
            } => (namespace, service_account, *annotation, *parameter),
        };
        let annotations = login
            .kube
            .annotations(namespace, service_account, login.deadline)
            .await?;
        annotations
            .get(annotation)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                AuthError::Missing(format!(
                    "{parameter}: missing, and the pod's service account {namespace}/{service_account} \
                     has no {annotation} annotation; set one of them"
                ))
            })
    }
}

/// What a login may use for its exchanges.
struct LoginCtx<'a> {
    http: &'a exchange::Http,
    settings: &'a AuthSettings,
    kube: &'a kube::Kube,
    deadline: Deadline,
}

/// SHA-256 over the identity's parts; the cache never holds the credential itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct IdentityKey([u8; 32]);

/// Why no token could be had. Messages name the parameter or flag to fix, never a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// A parameter the access type needs is missing or unusable.
    #[error("{0}")]
    Missing(String),
    /// The provider's or the node's own credentials were asked for where the admin does not
    /// allow them.
    #[error("{0}")]
    NotAllowed(String),
    /// The cluster is not set up for this access type (a missing token audience, k8s auth
    /// without a Gateway).
    #[error("{0}")]
    Precondition(String),
    /// Exchanging the pod's or node's identity at a cloud endpoint failed.
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
    #[error("login failed: {0}")]
    Api(#[from] ApiError),
    #[error("the mount's deadline passed while waiting for the login")]
    DeadlineExceeded,
    #[error("the login task failed unexpectedly")]
    Internal,
}

impl Identity {
    fn new(base: Url, access_type: AccessType, access_id: String, proof: Proof) -> Self {
        let mut identity = Self {
            base,
            access_type,
            access_id,
            proof,
            client: None,
            key: IdentityKey([0; 32]),
        };
        identity.key = identity.compute_key();
        identity
    }

    fn compute_key(&self) -> IdentityKey {
        let mut hash = Sha256::new();
        let profile = self
            .client
            .as_ref()
            .map(Client::profile)
            .unwrap_or_default();
        let mut parts = vec![
            self.base.as_str(),
            self.access_type.as_str(),
            self.access_id.as_str(),
            profile.as_str(),
        ];
        parts.extend(self.proof.key_parts());
        for part in parts {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        IdentityKey(hash.finalize().into())
    }

    /// This identity reached through `client` (a store's own trust roots or cache policy,
    /// [`Client::variant`]): its logins and reads go through that client, and it is another
    /// identity for the token cache, so neither tokens nor shared reads cross between clients.
    pub fn through(mut self, client: Client) -> Self {
        self.client = Some(client);
        self.key = self.compute_key();
        self
    }

    /// The client this identity's calls go through: its own, else `default`.
    pub fn client<'a>(&'a self, default: &'a Client) -> &'a Client {
        self.client.as_ref().unwrap_or(default)
    }

    /// The API URL and the client profile: the scope of answers that are not secret but must
    /// not cross between trust roots (item types).
    pub fn endpoint(&self) -> String {
        match &self.client {
            Some(client) => format!("{}\n{}", self.base, client.profile()),
            None => self.base.to_string(),
        }
    }

    /// The `/auth` request, after any exchange the proof needs (inside the login task).
    async fn auth_request(&self, login: &LoginCtx<'_>) -> Result<AuthRequest, AuthError> {
        let mut request = AuthRequest {
            access_type: self.access_type.as_str().to_owned(),
            access_id: self.access_id.clone(),
            ..AuthRequest::default()
        };
        match &self.proof {
            Proof::AccessKey(key) => request.access_key = Some(key.clone()),
            Proof::K8s { config_name, token } => {
                use base64::Engine as _;
                let token = token.get(login).await?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(token.expose());
                request.k8s_auth_config_name = Some(config_name.clone());
                request.k8s_service_account_token = Some(SecretString::new(encoded));
            }
            Proof::Jwt(token) => request.jwt = Some(token.get(login).await?),
            Proof::Uid(_) => return Err(AuthError::Internal),
            Proof::Azure(p) => request.cloud_id = Some(p.cloud_id(login).await?),
            Proof::Aws(p) => request.cloud_id = Some(p.cloud_id(login).await?),
            Proof::Gcp(p) => {
                request.cloud_id = Some(p.cloud_id(login).await?);
                request.gcp_audience = Some(p.audience().to_owned());
            }
        }
        Ok(request)
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
    /// For the cloud exchanges (Entra ID, STS, metadata servers); never for Akeyless.
    http: exchange::Http,
    /// For TokenRequest and ServiceAccount annotations, with `--token-request` only.
    kube: kube::Kube,
    options: AuthOptions,
    entries: Mutex<HashMap<IdentityKey, Entry>>,
    /// Universal Identity tokens and when they end.
    uid: uid::UidWatch,
}

impl Authenticator {
    pub fn new(client: Client, options: AuthOptions) -> Self {
        let http = exchange::Http::new(options.login_timeout.min(Duration::from_secs(10)));
        let kube = kube::Kube::new(options.settings.kube_api_url.clone());
        Self {
            inner: Arc::new(Inner {
                uid: uid::UidWatch::new(client.clone()),
                client,
                http,
                kube,
                options,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The identity a mount acts as when it calls `base`: what proves it, under the admin's
    /// rules for provider and node credentials. No network call happens here.
    pub fn identity(&self, base: Url, config: &MountConfig) -> Result<Identity, AuthError> {
        self.identity_for(base, &config.access, &config.pod)
    }

    /// The identity described by `access` for a caller that acts as `pod` (a mount's pod, or
    /// the controller acting for a store), under the same rules.
    pub fn identity_for(
        &self,
        base: Url,
        access: &AccessConfig,
        pod: &PodInfo,
    ) -> Result<Identity, AuthError> {
        resolve::identity(&self.inner.options.settings, base, access, pod)
    }

    /// The admin's identity settings (who may receive the provider's own credentials).
    pub fn settings(&self) -> &AuthSettings {
        &self.inner.options.settings
    }

    /// Kubernetes API calls go through `client` (the controller's own) rather than a client
    /// built from `--kube-api-url` or the environment. No effect once one is in use.
    pub fn use_kube_client(&self, client: ::kube::Client) {
        self.inner.kube.use_client(client);
    }

    /// A token of a ServiceAccount (bound to no pod) for the controller acting for a store:
    /// reused until about 80% of its life, so the identity it proves keeps its key and its
    /// Akeyless token. Needs `create serviceaccounts/token`.
    pub async fn account_token(
        &self,
        request: &AccountToken,
        deadline: Deadline,
    ) -> Result<SecretString, AuthError> {
        self.inner.kube.account_token(request, deadline).await
    }

    /// The annotations of a ServiceAccount (workload-identity settings). Needs
    /// `get serviceaccounts`.
    pub async fn account_annotations(
        &self,
        namespace: &str,
        service_account: &str,
        deadline: Deadline,
    ) -> Result<std::collections::BTreeMap<String, String>, AuthError> {
        self.inner
            .kube
            .annotations(namespace, service_account, deadline)
            .await
    }

    /// A valid token for `identity`: the cached one, or the outcome of one shared login.
    pub async fn token(
        &self,
        identity: &Identity,
        deadline: Deadline,
    ) -> Result<Arc<CachedToken>, AuthError> {
        if let Proof::Uid(token) = &identity.proof {
            // The `u-` token is the data credential itself (akeyless-api.md §1.3): no login,
            // and no rotation ([`uid`]): its end is watched instead.
            self.inner.uid.used(identity);
            return Ok(Arc::new(CachedToken {
                token: ApiToken::UidToken(token.clone()),
                refresh_at: Instant::now() + self.inner.options.default_ttl,
            }));
        }
        let login = {
            let mut entries = lock(&self.inner.entries);
            if let Some(token) = entries
                .get(&identity.key)
                .and_then(|e| e.token.as_ref())
                .filter(|t| t.fresh())
            {
                self.inner
                    .client
                    .metrics()
                    .cache_hit(crate::telemetry::metrics::CacheKind::Token);
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

    /// Why Akeyless may have refused `identity`: its Universal Identity token has expired.
    pub async fn expired_note(&self, identity: &Identity, deadline: Deadline) -> Option<String> {
        self.inner.uid.expired_note(identity, deadline).await
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
            let login = LoginCtx {
                http: &inner.http,
                settings: &inner.options.settings,
                kube: &inner.kube,
                deadline,
            };
            let result = match identity.auth_request(&login).await {
                Ok(request) => identity
                    .client(&inner.client)
                    .auth(&identity.base, &request, deadline)
                    .await
                    .map_err(AuthError::from),
                Err(e) => Err(e),
            };
            let outcome = result.map(|response| {
                let lifetime = lifetime(response.expiration.as_deref(), inner.options.default_ttl);
                let early = inner.options.refresh_before.min(lifetime / 10);
                tracing::debug!(
                    access_id = %identity.access_id,
                    access_type = %identity.access_type,
                    proof = identity.proof.kind(),
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
    use crate::params::{self, keys};
    use crate::proto::v1alpha1::MountRequest;

    const POD_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2ln";

    /// A parsed mount: SPC parameters, pod tokens by audience, nodePublishSecretRef data.
    fn mount(
        params: &[(&str, &str)],
        tokens: &[(&str, &str)],
        secrets: &[(&str, &str)],
    ) -> MountConfig {
        let mut attributes: std::collections::BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.insert(keys::OBJECTS.into(), "- secretPath: /a".into());
        attributes.insert(keys::POD_UID.into(), "uid-1".into());
        if !tokens.is_empty() {
            let map: std::collections::BTreeMap<&str, serde_json::Value> = tokens
                .iter()
                .map(|(aud, tok)| (*aud, serde_json::json!({ "token": tok })))
                .collect();
            attributes.insert(keys::SA_TOKENS.into(), serde_json::to_string(&map).unwrap());
        }
        let secrets: std::collections::BTreeMap<&str, &str> = secrets.iter().copied().collect();
        params::parse(&MountRequest {
            attributes: serde_json::to_string(&attributes).unwrap(),
            secrets: serde_json::to_string(&secrets).unwrap(),
            target_path: String::new(),
            permission: "420".into(),
            current_object_version: vec![],
        })
        .unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn resolve(
        settings: &AuthSettings,
        base: &str,
        config: &MountConfig,
    ) -> Result<Identity, AuthError> {
        resolve::identity(settings, url(base), &config.access, &config.pod)
    }

    fn key_mount(id: &str, key: &str) -> MountConfig {
        mount(&[(keys::ACCESS_ID, id)], &[], &[(keys::ACCESS_KEY, key)])
    }

    #[test]
    fn identities_differ_by_every_part() {
        let s = AuthSettings::default();
        let k =
            |base: &str, id: &str, key: &str| resolve(&s, base, &key_mount(id, key)).unwrap().key;
        let (a, b) = ("https://a", "https://b");
        assert!(k(a, "p-1", "x") == k(a, "p-1", "x"));
        assert!(k(a, "p-1", "x") != k(b, "p-1", "x"));
        assert!(k(a, "p-1", "x") != k(a, "p-2", "x"));
        assert!(k(a, "p-1", "x") != k(a, "p-1", "y"));
        // Length prefixes keep ("p-1", "xy") and ("p-1x", "y") apart.
        assert!(k(a, "p-1", "xy") != k(a, "p-1x", "y"));
    }

    #[test]
    fn identity_debug_hides_the_credential() {
        let id = resolve(
            &AuthSettings::default(),
            "https://a",
            &key_mount("p-1", "hunter2"),
        )
        .unwrap();
        let text = format!("{id:?}");
        assert!(
            !text.contains("hunter2") && text.contains("access key"),
            "{text}"
        );
    }

    fn k8s(audience: Option<&str>, tokens: &[(&str, &str)]) -> MountConfig {
        let mut params = vec![
            (keys::ACCESS_ID, "p-k8s"),
            (keys::ACCESS_TYPE, "k8s"),
            (keys::K8S_AUTH_CONFIG_NAME, "cluster-a"),
        ];
        if let Some(a) = audience {
            params.push((keys::TOKEN_AUDIENCE, a));
        }
        mount(&params, tokens, &[])
    }

    #[test]
    fn k8s_uses_the_pod_token_of_its_audience_and_each_token_is_an_identity() {
        let s = AuthSettings::default();
        let gw = "https://gw:8000/api/v2";
        let id = resolve(
            &s,
            gw,
            &k8s(None, &[("vault", "other"), ("akeyless", POD_TOKEN)]),
        )
        .unwrap();
        assert!(
            matches!(&id.proof, Proof::K8s { token: PodJwt::Sent(token, _), config_name } if token.expose() == POD_TOKEN && config_name == "cluster-a")
        );
        let custom = resolve(&s, gw, &k8s(Some("aud-x"), &[("aud-x", POD_TOKEN)])).unwrap();
        assert!(
            matches!(&custom.proof, Proof::K8s { token: PodJwt::Sent(token, _), .. } if token.expose() == POD_TOKEN)
        );
        // Set but empty: the kube-apiserver's own audience.
        assert!(resolve(&s, gw, &k8s(Some(""), &[("", POD_TOKEN)])).is_ok());

        let other = resolve(&s, gw, &k8s(None, &[("akeyless", "another-pod")])).unwrap();
        assert!(
            id.key != other.key,
            "another pod's token is another identity"
        );
        let jwt = mount(
            &[(keys::ACCESS_ID, "p-k8s"), (keys::ACCESS_TYPE, "jwt")],
            &[("akeyless", POD_TOKEN)],
            &[],
        );
        assert!(
            id.key != resolve(&s, gw, &jwt).unwrap().key,
            "the type is part of it"
        );
    }

    #[test]
    fn a_missing_audience_tells_the_admin_what_to_add() {
        let err = resolve(
            &AuthSettings::default(),
            "https://gw:8000/api/v2",
            &k8s(None, &[("vault", POD_TOKEN)]),
        )
        .unwrap_err();
        let AuthError::Precondition(msg) = &err else {
            panic!("{err:?}")
        };
        for needle in [
            "audience \"akeyless\"",
            "tokenRequests",
            "CSIDriver",
            "it sent only \"vault\"",
            "akeylessTokenAudience",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        assert!(!msg.contains(POD_TOKEN));
        let err = resolve(
            &AuthSettings::default(),
            "https://gw:8000/api/v2",
            &k8s(None, &[]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the CSIDriver has no tokenRequests"),
            "{err}"
        );
    }

    #[test]
    fn k8s_needs_a_gateway_and_a_config_name() {
        let s = AuthSettings::default();
        let err = resolve(
            &s,
            "https://api.akeyless.io",
            &k8s(None, &[("akeyless", POD_TOKEN)]),
        )
        .unwrap_err();
        assert!(
            matches!(&err, AuthError::Precondition(m) if m.contains("Gateway")),
            "{err:?}"
        );
        let no_name = mount(
            &[(keys::ACCESS_ID, "p-k8s"), (keys::ACCESS_TYPE, "k8s")],
            &[("akeyless", POD_TOKEN)],
            &[],
        );
        let err = resolve(&s, "https://gw", &no_name).unwrap_err();
        assert!(
            matches!(&err, AuthError::Missing(m) if m.contains("akeylessK8sAuthConfigName")),
            "{err:?}"
        );
        let with_default = AuthSettings {
            provider: ProviderCredentials {
                k8s_auth_config_name: Some("from-env".into()),
                ..Default::default()
            },
            ..AuthSettings::default()
        };
        let id = resolve(&with_default, "https://gw", &no_name).unwrap();
        assert!(matches!(&id.proof, Proof::K8s { config_name, .. } if config_name == "from-env"));
    }

    fn provider_settings() -> AuthSettings {
        AuthSettings {
            default_url: url("https://api.akeyless.io"),
            allowed_urls: vec![url("https://gw.corp:8000/api/v2")],
            provider: ProviderCredentials {
                access_id: Some("p-provider".into()),
                access_key: Some("provider-key-hunter2".into()),
                uid_token: Some("u-provider".into()),
                ..Default::default()
            },
            ..AuthSettings::default()
        }
    }

    #[test]
    fn the_provider_identity_goes_only_to_allowed_urls() {
        let s = provider_settings();
        let spc = mount(&[], &[], &[]);
        for allowed in ["https://api.akeyless.io", "https://gw.corp:8000/api/v2/"] {
            let id = resolve(&s, allowed, &spc).unwrap();
            assert_eq!(id.access_id, "p-provider");
            assert!(
                matches!(&id.proof, Proof::AccessKey(k) if k.expose() == "provider-key-hunter2")
            );
        }
        let err = resolve(&s, "https://evil.example", &spc).unwrap_err();
        let AuthError::NotAllowed(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("--allowed-gateway-url") && msg.contains("https://evil.example"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"));
        let uid = mount(&[(keys::ACCESS_TYPE, "universal_identity")], &[], &[]);
        assert!(matches!(
            resolve(&s, "https://evil.example", &uid),
            Err(AuthError::NotAllowed(_))
        ));
        assert!(matches!(
            resolve(&s, "https://api.akeyless.io", &uid).unwrap().proof,
            Proof::Uid(_)
        ));

        // An SPC with its own access id never gets the provider's key.
        let own = mount(
            &[(keys::ACCESS_ID, "p-own")],
            &[],
            &[(keys::ACCESS_KEY, "own-key")],
        );
        let id = resolve(&s, "https://evil.example", &own).unwrap();
        assert!(matches!(&id.proof, Proof::AccessKey(k) if k.expose() == "own-key"));
        // And without a provider identity, a missing access id is a parameter problem.
        let err = resolve(&AuthSettings::default(), "https://api.akeyless.io", &spc).unwrap_err();
        assert!(
            matches!(&err, AuthError::Missing(m) if m.contains("akeylessAccessID")),
            "{err:?}"
        );
    }

    #[test]
    fn with_token_request_a_missing_audience_is_requested_for_the_pod() {
        let s = AuthSettings {
            token_request: true,
            ..AuthSettings::default()
        };
        let with_pod = |uid: &str| {
            let mut config = k8s(None, &[("vault", POD_TOKEN)]);
            config.pod.namespace = "shop".into();
            config.pod.name = "web-1".into();
            config.pod.service_account = "web".into();
            config.pod.uid = uid.into();
            config
        };
        let id = resolve(&s, "https://gw", &with_pod("uid-1")).unwrap();
        let Proof::K8s {
            token: PodJwt::Requested(bound),
            ..
        } = &id.proof
        else {
            panic!("not requested: {id:?}")
        };
        assert_eq!(
            (
                bound.namespace.as_str(),
                bound.service_account.as_str(),
                bound.pod_name.as_str(),
                bound.pod_uid.as_str(),
                bound.audience.as_str()
            ),
            ("shop", "web", "web-1", "uid-1", "akeyless")
        );
        let other_pod = resolve(&s, "https://gw", &with_pod("uid-2")).unwrap();
        assert!(id.key != other_pod.key, "each pod is its own identity");
        // A token the driver sent is still preferred.
        let mut sent = with_pod("uid-1");
        sent.pod.tokens = k8s(None, &[("akeyless", POD_TOKEN)]).pod.tokens;
        assert!(matches!(
            resolve(&s, "https://gw", &sent).unwrap().proof,
            Proof::K8s {
                token: PodJwt::Sent(..),
                ..
            }
        ));
        // Without the pod's name the kubelet did not vouch for a pod: no request.
        assert!(matches!(
            resolve(&s, "https://gw", &k8s(None, &[])),
            Err(AuthError::Precondition(_))
        ));
    }

    #[test]
    fn node_identity_needs_the_flag_and_an_allowed_url() {
        let azure = mount(
            &[(keys::ACCESS_ID, "p-az"), (keys::ACCESS_TYPE, "azure_ad")],
            &[],
            &[],
        );
        let err = resolve(&AuthSettings::default(), "https://api.akeyless.io", &azure).unwrap_err();
        let AuthError::Precondition(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("--node-identity") && msg.contains("api://AzureADTokenExchange"),
            "{msg}"
        );
        let enabled = AuthSettings {
            node_identity: true,
            ..provider_settings()
        };
        assert!(matches!(
            resolve(&enabled, "https://api.akeyless.io", &azure)
                .unwrap()
                .proof,
            Proof::Azure(azure::Proof::Node { .. })
        ));
        assert!(matches!(
            resolve(&enabled, "https://evil.example", &azure),
            Err(AuthError::NotAllowed(_))
        ));
        for t in ["aws_iam", "gcp"] {
            let spc = mount(
                &[(keys::ACCESS_ID, "p-c"), (keys::ACCESS_TYPE, t)],
                &[],
                &[],
            );
            assert!(
                matches!(
                    resolve(&AuthSettings::default(), "https://api.akeyless.io", &spc),
                    Err(AuthError::Precondition(_))
                ),
                "{t}"
            );
            assert!(
                matches!(
                    resolve(&enabled, "https://evil.example", &spc),
                    Err(AuthError::NotAllowed(_))
                ),
                "{t}"
            );
            assert!(
                resolve(&enabled, "https://api.akeyless.io", &spc).is_ok(),
                "{t}"
            );
        }
    }

    #[test]
    fn workload_identities_use_the_pod_token() {
        let s = AuthSettings::default();
        let saas = "https://api.akeyless.io";
        let azure = mount(
            &[
                (keys::ACCESS_ID, "p-az"),
                (keys::ACCESS_TYPE, "azure_ad"),
                (keys::AZURE_CLIENT_ID, "c1"),
                (keys::AZURE_TENANT_ID, "t1"),
            ],
            &[(azure::WORKLOAD_IDENTITY_AUDIENCE, POD_TOKEN)],
            &[],
        );
        assert!(matches!(
            resolve(&s, saas, &azure).unwrap().proof,
            Proof::Azure(azure::Proof::Workload { .. })
        ));
        let no_client = mount(
            &[(keys::ACCESS_ID, "p-az"), (keys::ACCESS_TYPE, "azure_ad")],
            &[(azure::WORKLOAD_IDENTITY_AUDIENCE, POD_TOKEN)],
            &[],
        );
        assert!(
            matches!(resolve(&s, saas, &no_client), Err(AuthError::Missing(m)) if m.contains("akeylessAzureClientID"))
        );

        let pod_identity = mount(
            &[(keys::ACCESS_ID, "p-aws"), (keys::ACCESS_TYPE, "aws_iam")],
            &[(aws::POD_IDENTITY_AUDIENCE, POD_TOKEN)],
            &[],
        );
        assert!(matches!(
            resolve(&s, saas, &pod_identity).unwrap().proof,
            Proof::Aws(aws::Proof::PodIdentity { .. })
        ));
        let irsa = mount(
            &[
                (keys::ACCESS_ID, "p-aws"),
                (keys::ACCESS_TYPE, "aws_iam"),
                (keys::AWS_ROLE_ARN, "arn:aws:iam::1:role/r"),
            ],
            &[(aws::IRSA_AUDIENCE, POD_TOKEN)],
            &[],
        );
        assert!(matches!(
            resolve(&s, saas, &irsa).unwrap().proof,
            Proof::Aws(aws::Proof::WebIdentity { .. })
        ));

        let gcp = mount(
            &[
                (keys::ACCESS_ID, "p-gcp"),
                (keys::ACCESS_TYPE, "gcp"),
                (
                    keys::GCP_WORKLOAD_IDENTITY_AUDIENCE,
                    "identitynamespace:proj.svc.id.goog:https://container.googleapis.com/v1/projects/proj/locations/l/clusters/c",
                ),
                (
                    keys::GCP_SERVICE_ACCOUNT,
                    "app@proj.iam.gserviceaccount.com",
                ),
            ],
            &[("proj.svc.id.goog", POD_TOKEN)],
            &[],
        );
        let id = resolve(&s, saas, &gcp).unwrap();
        assert!(
            matches!(&id.proof, Proof::Gcp(p @ gcp::Proof::Workload { .. }) if p.audience() == "akeyless.io")
        );
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
}

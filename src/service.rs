//! The gRPC service `v1alpha1.CSIDriverProvider`: where a mount is orchestrated.
//!
//! `Mount` = [`params::parse`] → [`auth::Identity`] → token from the [`auth::Authenticator`] →
//! [`crate::fetch::Fetcher::fetch`] (batched, shared, leases reused) → [`render::render`]
//! (→ [`crate::sync`] when the SPC mirrors values into Kubernetes Secrets).
//! Every failure becomes a [`MountError`], mapped explicitly to a gRPC code, whose message names
//! the SecretProviderClass, the objects and the fix — and never a value, key or token.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use url::Url;

use crate::akeyless::{ApiError, Client, Deadline, ItemRef};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::fetch::{Extra, FetchError, FetchOptions, Fetched, Fetcher, LeaseScope, Want};
use crate::params::{self, MountConfig, ParamsError};
use crate::proto::v1alpha1::csi_driver_provider_server::CsiDriverProvider;
use crate::proto::v1alpha1::{MountRequest, MountResponse, VersionRequest, VersionResponse};
use crate::render::{self, RenderError, VersionKey};
use crate::telemetry::metrics::{GaugeGuard, Metrics};

/// What `Version` answers: the API the driver speaks, and who we are.
pub const API_VERSION: &str = "v1alpha1";
pub const RUNTIME_NAME: &str = "akeyless-csi-provider";

/// Service-wide settings, fixed at start-up.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    /// The API URL for SPCs that set no `akeylessGatewayURL`.
    pub default_url: Url,
    /// The longest a mount may take when the caller sets a longer deadline or none (drivers
    /// up to v1.5 call rotation mounts without one).
    pub mount_timeout: Duration,
    /// How long a read's result may answer identical reads of the same identity (0 = off).
    /// Rotation polls then cost no Akeyless call, at the price of seeing a change (or a
    /// revoked permission) up to this much later.
    pub result_cache_ttl: Duration,
    /// `--sync-secrets`: mirroring into Kubernetes Secrets ([`crate::sync`]); `None` = off.
    pub secret_sync: Option<crate::sync::SecretSync>,
}

/// The provider: shared by every request, cheap to clone.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    options: ProviderOptions,
    fetcher: Fetcher,
    auth: Authenticator,
    version_key: VersionKey,
    metrics: Arc<Metrics>,
}

impl Provider {
    pub fn new(
        options: ProviderOptions,
        client: Client,
        auth: Authenticator,
        version_key: VersionKey,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                fetcher: Fetcher::new(
                    client,
                    FetchOptions {
                        mount_timeout: options.mount_timeout,
                        result_cache_ttl: options.result_cache_ttl,
                        batch_window: None,
                    },
                    metrics.clone(),
                ),
                options,
                auth,
                version_key,
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The authenticator, e.g. to inspect its cache in tests.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// One mount, from request to response, without the gRPC wrapping. `audit` receives what
    /// is known about the mount for its audit event.
    pub async fn handle_mount(
        &self,
        request: &MountRequest,
        deadline: Deadline,
        audit: &mut Audit,
    ) -> Result<MountResponse, MountError> {
        let config = match params::parse(request) {
            Ok(config) => config,
            Err(e) => {
                audit.pod = params::pod_hint(&request.attributes);
                return Err(e.into());
            }
        };
        audit.describe(&config);
        let response = self
            .mount_config(&config, deadline)
            .await
            .map_err(|e| e.within(Context::of(&config)))?;
        audit.versions = response
            .object_version
            .iter()
            .map(|v| format!("{}={}", v.id, v.version))
            .collect::<Vec<_>>()
            .join(",");
        Ok(response)
    }

    async fn mount_config(
        &self,
        config: &MountConfig,
        deadline: Deadline,
    ) -> Result<MountResponse, MountError> {
        let base = config
            .gateway
            .clone()
            .unwrap_or_else(|| self.inner.options.default_url.clone());
        let identity = (self.inner.auth)
            .identity(base, config)
            .map_err(|e| MountError::from_auth(e, config))?;
        // The Secrets' items join the files' batched reads; the mapping comes from the SPC object.
        let sync =
            crate::sync::prepare(self.inner.options.secret_sync.as_ref(), config, deadline).await?;
        let extra = secret_reads(
            sync.as_ref().map(crate::sync::Plan::mapping),
            &config.objects,
        );
        let want = Want {
            objects: &config.objects,
            extra: &extra,
            scope: LeaseScope::volume(&config.pod.uid, &config.target_path),
        };
        let fetched = self.fetch(&identity, config, &want, deadline).await?;
        let rendered = render::render(&config.objects, &fetched, &self.inner.version_key)?;
        if let Some(plan) = &sync {
            plan.apply(&fetched.statics(), deadline).await?;
        }
        Ok(MountResponse {
            object_version: rendered.versions,
            error: None,
            files: rendered.files,
        })
    }

    /// Fetches everything the mount needs. A refused token is replaced once; a second refusal
    /// is final.
    async fn fetch(
        &self,
        identity: &Identity,
        config: &MountConfig,
        want: &Want<'_>,
        deadline: Deadline,
    ) -> Result<Fetched, MountError> {
        let mut retried = false;
        loop {
            let token = self
                .inner
                .auth
                .token(identity, deadline)
                .await
                .map_err(|e| MountError::from_auth(e, config))?;
            match self
                .inner
                .fetcher
                .fetch(identity, &token, want, deadline)
                .await
            {
                Ok(fetched) => return Ok(fetched),
                Err(e) if e.is_unauthorized() && !retried => {
                    // The token may have expired early or been revoked: log in again once.
                    tracing::debug!(access_id = %identity.access_id, "token refused; logging in again");
                    self.inner.auth.invalidate(identity, &token);
                    retried = true;
                }
                Err(e) => {
                    if e.is_unauthorized()
                        && let Some(note) = self.inner.auth.expired_note(identity, deadline).await
                    {
                        return Err(MountError::LoginRejected(format!(
                            "Akeyless refused access id {}: {note}",
                            identity.access_id
                        )));
                    }
                    return Err(MountError::from_fetch(e, identity));
                }
            }
        }
    }

    /// The mount's deadline: the caller's `grpc-timeout` less a safety margin, so we answer
    /// with our own clear error before the driver gives up, and never longer than our bound.
    fn deadline(&self, metadata: &tonic::metadata::MetadataMap) -> Deadline {
        let bound = self.inner.options.mount_timeout;
        let budget = match metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            Some(caller) => {
                let margin = (caller / 10).min(Duration::from_secs(2));
                caller.saturating_sub(margin).min(bound)
            }
            None => bound,
        };
        Deadline::at(Instant::now() + budget)
    }
}

#[tonic::async_trait]
impl CsiDriverProvider for Provider {
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: API_VERSION.to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        let started = Instant::now();
        let metrics = &self.inner.metrics;
        let _inflight = GaugeGuard::new(&metrics.inflight_mounts);
        let deadline = self.deadline(request.metadata());
        let request = request.into_inner();
        let mut audit = Audit::default();
        let outcome = contained(self.handle_mount(&request, deadline, &mut audit)).await;
        let elapsed = started.elapsed();
        let code = outcome
            .as_ref()
            .err()
            .map_or(tonic::Code::Ok, MountError::code);
        metrics.mount_finished(code, elapsed);
        audit.emit(&outcome, elapsed);
        outcome.map(Response::new).map_err(|e| e.to_status())
    }
}

/// What a mount reads for its Kubernetes Secrets besides its files: the mapping's items (static:
/// an SPC's Secrets read static items), those read only for `deletionPolicy: Delete` targets
/// optional, and a required file's item required for the Secrets too.
pub fn secret_reads(
    mapping: Option<&crate::sync::mapping::Mapping>,
    objects: &[params::ObjectSpec],
) -> Vec<Extra> {
    let Some(mapping) = mapping else {
        return Vec::new();
    };
    let mut optional = mapping.optional_items();
    for object in objects.iter().filter(|o| !o.optional) {
        optional.remove(&ItemRef {
            name: object.secret_path.clone(),
            version: object.version,
        });
    }
    mapping
        .items()
        .into_iter()
        .map(|item| Extra {
            optional: optional.contains(&item),
            item,
            kind: Some(params::ItemKind::Static),
        })
        .collect()
}

/// Runs a mount so that a panic anywhere in it fails this request only, never the connection
/// or the daemon.
async fn contained<T>(
    mount: impl std::future::Future<Output = Result<T, MountError>>,
) -> Result<T, MountError> {
    AssertUnwindSafe(mount)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(MountError::Internal(
                "the mount failed unexpectedly (a bug); it has been logged".to_owned(),
            ))
        })
}

/// The audit record of one mount: who asked for what, and what they got — never a value, key
/// or token. Emitted as one structured event with target `audit`.
#[derive(Debug, Default)]
pub struct Audit {
    pod: params::PodHint,
    spc: String,
    objects: String,
    versions: String,
}

impl Audit {
    fn describe(&mut self, config: &MountConfig) {
        self.pod = params::PodHint {
            namespace: config.pod.namespace.clone(),
            name: config.pod.name.clone(),
            uid: config.pod.uid.clone(),
            service_account: config.pod.service_account.clone(),
        };
        self.spc = config.spc_label();
        self.objects = config
            .objects
            .iter()
            .map(|o| o.secret_path.as_str())
            .collect::<Vec<_>>()
            .join(",");
    }

    fn emit<T>(&self, outcome: &Result<T, MountError>, elapsed: Duration) {
        // Whole microseconds: `0.53`, not `0.5302250000000001`.
        let latency_ms = elapsed.as_micros() as f64 / 1000.0;
        match outcome {
            Ok(_) => tracing::info!(
                target: "audit",
                pod_namespace = %self.pod.namespace,
                pod_name = %self.pod.name,
                pod_uid = %self.pod.uid,
                service_account = %self.pod.service_account,
                spc = %self.spc,
                objects = %self.objects,
                versions = %self.versions,
                outcome = "success",
                latency_ms,
                "mount"
            ),
            Err(error) => tracing::warn!(
                target: "audit",
                pod_namespace = %self.pod.namespace,
                pod_name = %self.pod.name,
                pod_uid = %self.pod.uid,
                service_account = %self.pod.service_account,
                spc = %self.spc,
                objects = %self.objects,
                outcome = ?error.code(),
                error = %error,
                latency_ms,
                "mount"
            ),
        }
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Which mount an error belongs to, for its message.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `SecretProviderClass ns/name (pod ns/pod)`, or what is known of it.
    text: Option<String>,
}

impl Context {
    fn of(config: &MountConfig) -> Self {
        let spc = config.spc_label();
        let text = match (&config.spc_name, config.pod_label()) {
            (Some(_), Some(pod)) => Some(format!("SecretProviderClass {spc} (pod {pod})")),
            (Some(_), None) => Some(format!("SecretProviderClass {spc}")),
            (None, Some(_)) => Some(spc),
            (None, None) => None,
        };
        Self { text }
    }
}

/// Why a mount failed; each variant has one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    InvalidParameters(#[from] ParamsError),
    #[error("{0}")]
    LoginRejected(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Render(#[from] RenderError),
    #[error("{0}")]
    Internal(String),
    #[error("secret sync: {0}")]
    Sync(#[from] crate::sync::SyncError),
    #[error("{context}: {source}")]
    Within {
        context: String,
        #[source]
        source: Box<MountError>,
    },
}

impl MountError {
    /// The gRPC code the driver (and `akeyless-csi-provider mount`) will see.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidParameters(_) => Code::InvalidArgument,
            Self::LoginRejected(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Overloaded(_) => Code::ResourceExhausted,
            Self::Rejected(_) | Self::Render(_) => Code::FailedPrecondition,
            Self::Internal(_) => Code::Internal,
            Self::Sync(e) => e.code(),
            Self::Within { source, .. } => source.code(),
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    fn within(self, context: Context) -> Self {
        match context.text {
            Some(context) => Self::Within {
                context,
                source: Box::new(self),
            },
            None => self,
        }
    }

    fn from_auth(error: AuthError, config: &MountConfig) -> Self {
        let access = &config.access;
        let access_type = access.effective_type();
        let who = if access.access_id.is_empty() {
            "the provider's default identity (AKEYLESS_ACCESS_ID)".to_owned()
        } else {
            format!("access id {} ({access_type})", access.access_id)
        };
        // What to check when Akeyless refuses the credential, per access type.
        use params::AccessType;
        let check = match access_type {
            AccessType::AccessKey => {
                "check akeylessAccessID and the access key (akeylessAccessKey in the nodePublishSecretRef Secret)"
            }
            AccessType::K8s => {
                "check akeylessAccessID, akeylessK8sAuthConfigName and that the auth method accepts this pod's service account and token audience"
            }
            AccessType::Jwt | AccessType::Oidc => {
                "check akeylessAccessID and that the auth method accepts this pod's service-account token (issuer, audience, bound claims)"
            }
            AccessType::UniversalIdentity => {
                "check akeylessAccessID and the Universal Identity token (akeylessUIDInitToken)"
            }
            AccessType::AzureAd | AccessType::AwsIam | AccessType::Gcp => {
                "check akeylessAccessID and that the auth method's bound cloud identities include this pod's"
            }
        };
        match error {
            AuthError::Missing(what) => Self::InvalidParameters(ParamsError {
                problems: vec![what],
            }),
            AuthError::NotAllowed(why) => Self::PermissionDenied(why),
            AuthError::Precondition(why) => Self::Rejected(why),
            AuthError::Exchange(e) if e.rejected => Self::LoginRejected(format!(
                "the {} refused the identity of {who}: {}",
                e.service, e.reason
            )),
            AuthError::Exchange(e) => Self::Unavailable(format!(
                "cannot obtain the identity of {who} from the {}: {}",
                e.service, e.reason
            )),
            AuthError::DeadlineExceeded => Self::DeadlineExceeded(format!(
                "the login of {who} did not finish before the mount's deadline; check that the Akeyless URL is reachable from the node"
            )),
            AuthError::Internal => {
                Self::Internal(format!("the login of {who} failed unexpectedly"))
            }
            AuthError::Api(api) => match api {
                ApiError::Unauthorized { message, .. } => Self::LoginRejected(format!(
                    "Akeyless rejected the login of {who}: {check} [{message}]"
                )),
                ApiError::DeadlineExceeded { .. } => Self::DeadlineExceeded(format!(
                    "the login of {who} did not finish before the mount's deadline"
                )),
                ApiError::Unavailable { .. } | ApiError::InvalidResponse { .. } => {
                    Self::Unavailable(format!("cannot log in {who}: {api}"))
                }
                ApiError::Overloaded { .. } => Self::Overloaded(format!(
                    "the login of {who} was not started: {api}; the driver will retry"
                )),
                ApiError::NotFound { .. } | ApiError::Rejected { .. } => {
                    Self::LoginRejected(format!(
                        "Akeyless refused the login of {who}; {check}, and that akeylessGatewayURL points at the API (e.g. https://api.akeyless.io or https://<gateway>:8000/api/v2): {api}"
                    ))
                }
            },
        }
    }

    fn from_fetch(error: FetchError, identity: &Identity) -> Self {
        let (error, names) = match error {
            FetchError::Api { source, items } => (source, items),
            FetchError::Item { .. } => return Self::Rejected(error.to_string()),
            FetchError::Missing { .. } => return Self::NotFound(error.to_string()),
        };
        let items = names.join(", ");
        match error {
            ApiError::Unauthorized { message, .. } => Self::PermissionDenied(format!(
                "Akeyless denied access id {} reading {items}: grant its role read access to these items, \
                 or check the paths (Akeyless answers 401 for items the caller may not see) [{message}]",
                identity.access_id
            )),
            ApiError::NotFound { message, .. } => {
                // Name the missing item when the server's message does (longest match wins, so
                // `/a/bc` is not mistaken for `/a/b`).
                let missing = names
                    .iter()
                    .filter(|n| message.contains(n.as_str()))
                    .max_by_key(|n| n.len())
                    .map(|n| format!("item {n} does not exist"))
                    .unwrap_or_else(|| format!("one of the items {items} does not exist"));
                Self::NotFound(format!(
                    "{missing}: check secretPath in objects [{message}]"
                ))
            }
            ApiError::DeadlineExceeded { .. } => Self::DeadlineExceeded(format!(
                "reading {items} did not finish before the mount's deadline"
            )),
            ApiError::Unavailable { .. } | ApiError::InvalidResponse { .. } => Self::Unavailable(
                format!("cannot read {items} from {}: {error}", identity.base),
            ),
            ApiError::Overloaded { .. } => Self::Overloaded(format!(
                "reading {items} was not started: {error}; the driver will retry"
            )),
            ApiError::Rejected { .. } => {
                Self::Rejected(format!("Akeyless refused reading {items}: {error}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_mount_fails_with_internal_only() {
        let outcome: Result<(), MountError> = contained(async {
            let items: Vec<u8> = Vec::new();
            // An out-of-bounds index: the kind of bug a panic barrier exists for.
            let _ = items[usize::from(items.is_empty())];
            Ok(())
        })
        .await;
        let error = outcome.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Internal);
        // The runtime and this task carry on.
        assert!(contained(async { Ok::<_, MountError>(7) }).await.is_ok());
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_grpc_timeout("1999m"),
            Some(Duration::from_millis(1999))
        );
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_grpc_timeout("99999999H").map(|d| d.as_secs()),
            Some(99_999_999 * 3600)
        );
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    /// Drivers up to v1.5 send no `secretProviderClass` on rotation calls: say whose it is.
    #[test]
    fn an_spc_the_driver_did_not_name_is_named_by_its_pod() {
        let config = |spc: Option<&str>| {
            let mut attributes = serde_json::json!({
                "objects": "- secretPath: /a",
                "csi.storage.k8s.io/pod.name": "web-1",
                "csi.storage.k8s.io/pod.namespace": "shop",
            });
            if let Some(spc) = spc {
                attributes["secretProviderClass"] = spc.into();
            }
            params::parse(&MountRequest {
                attributes: attributes.to_string(),
                secrets: "null".into(),
                target_path: String::new(),
                permission: "420".into(),
                current_object_version: vec![],
            })
            .unwrap()
        };
        let error = || MountError::NotFound("item /a does not exist".into());
        let named = config(Some("web"));
        assert_eq!(named.spc_label(), "shop/web");
        assert_eq!(
            error().within(Context::of(&named)).to_string(),
            "SecretProviderClass shop/web (pod shop/web-1): item /a does not exist"
        );
        let rotation = config(None);
        assert_eq!(
            rotation.spc_label(),
            "the SecretProviderClass of pod shop/web-1",
            "what the audit event's spc says"
        );
        assert_eq!(
            error().within(Context::of(&rotation)).to_string(),
            "the SecretProviderClass of pod shop/web-1: item /a does not exist"
        );
    }

    #[test]
    fn errors_keep_their_code_inside_their_context() {
        let inner = MountError::NotFound("item /a does not exist".into());
        let e = inner.within(Context {
            text: Some("SecretProviderClass shop/web (pod shop/web-1)".into()),
        });
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(
            e.to_string(),
            "SecretProviderClass shop/web (pod shop/web-1): item /a does not exist"
        );
    }
}

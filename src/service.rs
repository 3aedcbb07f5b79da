//! The gRPC service `v1alpha1.CSIDriverProvider`: where a mount is orchestrated.
//!
//! `Mount` = [`params::parse`] → [`auth::Identity`] → token from the [`auth::Authenticator`] →
//! one batched [`akeyless::Client::get_secret_values`] per pinned version → [`render::render`].
//! Every failure becomes a [`MountError`], mapped explicitly to a gRPC code, whose message names
//! the SecretProviderClass, the objects and the fix — and never a value, key or token.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::try_join_all;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use url::Url;

use crate::akeyless::{ApiError, Client, Deadline, ItemRef};
use crate::auth::{AuthError, Authenticator, CachedToken, Identity};
use crate::params::{self, MountConfig, ParamsError};
use crate::proto::v1alpha1::csi_driver_provider_server::CsiDriverProvider;
use crate::proto::v1alpha1::{MountRequest, MountResponse, VersionRequest, VersionResponse};
use crate::render::{self, RenderError, Values, VersionKey};

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
}

/// The provider: shared by every request, cheap to clone.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    options: ProviderOptions,
    client: Client,
    auth: Authenticator,
    version_key: VersionKey,
}

impl Provider {
    pub fn new(
        options: ProviderOptions,
        client: Client,
        auth: Authenticator,
        version_key: VersionKey,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                client,
                auth,
                version_key,
            }),
        }
    }

    /// The authenticator, e.g. to inspect its cache in tests.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// One mount, from request to response, without the gRPC wrapping.
    pub async fn handle_mount(
        &self,
        request: &MountRequest,
        deadline: Deadline,
    ) -> Result<MountResponse, MountError> {
        let started = Instant::now();
        let config = params::parse(request)?;
        let response = self
            .mount_config(&config, deadline)
            .await
            .map_err(|e| e.within(Context::of(&config)))?;
        tracing::info!(
            pod.namespace = %config.pod.namespace,
            pod.name = %config.pod.name,
            pod.uid = %config.pod.uid,
            spc = config.spc_name.as_deref().unwrap_or(""),
            objects = response.object_version.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "mount succeeded"
        );
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
        let identity =
            Identity::new(base, &config.access).map_err(|e| MountError::from_auth(e, config))?;
        let values = self.fetch(&identity, config, deadline).await?;
        let rendered = render::render(&config.objects, &values, &self.inner.version_key)?;
        Ok(MountResponse {
            object_version: rendered.versions,
            error: None,
            files: rendered.files,
        })
    }

    /// Reads every object's value: one call per distinct pinned version (usually one call),
    /// each item once. A refused token is replaced once; a second refusal is final.
    async fn fetch(
        &self,
        identity: &Identity,
        config: &MountConfig,
        deadline: Deadline,
    ) -> Result<Values, MountError> {
        let mut batches: BTreeMap<Option<u32>, BTreeSet<String>> = BTreeMap::new();
        for object in &config.objects {
            batches
                .entry(object.version)
                .or_default()
                .insert(object.secret_path.clone());
        }
        let mut retried = false;
        loop {
            let token = self
                .inner
                .auth
                .token(identity, deadline)
                .await
                .map_err(|e| MountError::from_auth(e, config))?;
            match self
                .fetch_batches(identity, &token, &batches, deadline)
                .await
            {
                Ok(values) => return Ok(values),
                Err(ApiError::Unauthorized { .. }) if !retried => {
                    // The token may have expired early or been revoked: log in again once.
                    tracing::debug!(access_id = %identity.access_id, "token refused; logging in again");
                    self.inner.auth.invalidate(identity, &token);
                    retried = true;
                }
                Err(e) => {
                    let names: Vec<&str> = batches.values().flatten().map(String::as_str).collect();
                    return Err(MountError::from_fetch(e, &names, identity));
                }
            }
        }
    }

    async fn fetch_batches(
        &self,
        identity: &Identity,
        token: &CachedToken,
        batches: &BTreeMap<Option<u32>, BTreeSet<String>>,
        deadline: Deadline,
    ) -> Result<Values, ApiError> {
        let calls = batches.iter().map(|(version, names)| async move {
            let names: Vec<String> = names.iter().cloned().collect();
            let values = self
                .inner
                .client
                .get_secret_values(&identity.base, &token.token, &names, *version, deadline)
                .await?;
            Ok::<_, ApiError>(values.into_iter().map(move |(name, value)| {
                (
                    ItemRef {
                        name,
                        version: *version,
                    },
                    value,
                )
            }))
        });
        Ok(try_join_all(calls).await?.into_iter().flatten().collect())
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
        let deadline = self.deadline(request.metadata());
        let request = request.into_inner();
        // A panic anywhere in the mount fails this request only, never the connection or the
        // daemon.
        let outcome = AssertUnwindSafe(self.handle_mount(&request, deadline))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(MountError::Internal("the mount panicked".to_owned())));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                let status = error.to_status();
                tracing::warn!(code = ?status.code(), elapsed_ms, error = %status.message(), "mount failed");
                Err(status)
            }
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
    spc: Option<String>,
    pod: Option<String>,
}

impl Context {
    fn of(config: &MountConfig) -> Self {
        let ns = &config.pod.namespace;
        let qualify = |name: &str| {
            if ns.is_empty() {
                name.to_owned()
            } else {
                format!("{ns}/{name}")
            }
        };
        Self {
            spc: config.spc_name.as_deref().map(qualify),
            pod: (!config.pod.name.is_empty()).then(|| qualify(&config.pod.name)),
        }
    }
}

/// Why a mount failed; each variant has one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    InvalidParameters(#[from] ParamsError),
    #[error("{0}")]
    Unsupported(String),
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
    Rejected(String),
    #[error("{0}")]
    Render(#[from] RenderError),
    #[error("{0}")]
    Internal(String),
    #[error("SecretProviderClass {spc}: {source}")]
    Within {
        spc: String,
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
            Self::Unsupported(_) => Code::Unimplemented,
            Self::LoginRejected(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Rejected(_) | Self::Render(_) => Code::FailedPrecondition,
            Self::Internal(_) => Code::Internal,
            Self::Within { source, .. } => source.code(),
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    fn within(self, context: Context) -> Self {
        let spc = match (context.spc, context.pod) {
            (Some(spc), Some(pod)) => format!("{spc} (pod {pod})"),
            (Some(spc), None) => spc,
            (None, Some(pod)) => format!("of pod {pod}"),
            (None, None) => return self,
        };
        Self::Within {
            spc,
            source: Box::new(self),
        }
    }

    fn from_auth(error: AuthError, config: &MountConfig) -> Self {
        let who = format!(
            "access id {} ({})",
            config.access.access_id, config.access.access_type
        );
        match error {
            AuthError::Unsupported(t) => Self::Unsupported(format!(
                "akeylessAccessType {t} is not supported by this provider version yet; use access_key"
            )),
            AuthError::Missing(what) => Self::InvalidParameters(ParamsError {
                problems: vec![what],
            }),
            AuthError::DeadlineExceeded => Self::DeadlineExceeded(format!(
                "the login of {who} did not finish before the mount's deadline; check that the Akeyless URL is reachable from the node"
            )),
            AuthError::Internal => {
                Self::Internal(format!("the login of {who} failed unexpectedly"))
            }
            AuthError::Api(api) => match api {
                ApiError::Unauthorized { message, .. } => Self::LoginRejected(format!(
                    "Akeyless rejected the login of {who}: check akeylessAccessID and the access key \
                     (akeylessAccessKey in the nodePublishSecretRef Secret) [{message}]"
                )),
                ApiError::DeadlineExceeded { .. } => Self::DeadlineExceeded(format!(
                    "the login of {who} did not finish before the mount's deadline"
                )),
                ApiError::Unavailable { .. } | ApiError::InvalidResponse { .. } => {
                    Self::Unavailable(format!("cannot log in {who}: {api}"))
                }
                ApiError::NotFound { .. } | ApiError::Rejected { .. } => {
                    Self::LoginRejected(format!(
                        "Akeyless refused the login of {who}; check akeylessGatewayURL points at the API (e.g. https://api.akeyless.io or https://<gateway>:8000/api/v2): {api}"
                    ))
                }
            },
        }
    }

    fn from_fetch(error: ApiError, names: &[&str], identity: &Identity) -> Self {
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
                    .filter(|n| message.contains(**n))
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
            ApiError::Rejected { .. } => {
                Self::Rejected(format!("Akeyless refused reading {items}: {error}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn errors_keep_their_code_inside_their_context() {
        let inner = MountError::NotFound("item /a does not exist".into());
        let e = inner.within(Context {
            spc: Some("shop/web".into()),
            pod: Some("shop/web-1".into()),
        });
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(
            e.to_string(),
            "SecretProviderClass shop/web (pod shop/web-1): item /a does not exist"
        );
    }
}

//! Mirroring mounted values into Kubernetes Secrets, with ExternalSecret-style mappings.
//!
//! An SPC opts in with the `secretSync` parameter (a YAML list of `{target, data, dataFrom}`,
//! [`mapping`]); the admin enables the feature with `--sync-secrets`. During a mount:
//!
//! 1. [`prepare`] reads the mapping from the SecretProviderClass object in the API server — never
//!    from the mount's attributes, which a pod author can override — and refuses a mount whose
//!    attributes differ from it; the object is read at most once per `--spc-cache-ttl` per node,
//!    and old drivers' rotation calls, which do not name it, find it through their pod volume
//!    ([`spc`]);
//! 2. the service fetches [`Plan::items`] in the same batched Akeyless reads as the files;
//! 3. [`Plan::apply`] builds each Secret ([`crate::template`]) and writes it only when it changed
//!    ([`write`]), in the pod's namespace only.

pub mod mapping;
pub mod shape;
mod spc;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use tokio::sync::OnceCell;
use url::Url;

use crate::akeyless::{Deadline, ItemRef};
use crate::params::MountConfig;
use crate::render::Values;
use crate::secret::SecretBytes;
use mapping::{FailurePolicy, Mapping};

/// The SPC parameter holding the mapping.
pub const SECRET_SYNC: &str = "secretSync";
/// The SPC parameter choosing whether a failed sync fails the mount (`Fail`) or warns (`Warn`).
pub const FAILURE_POLICY: &str = "secretSyncFailurePolicy";
/// Request attributes compared with the SPC object: every key starting with this.
pub const PARAMETER_PREFIX: &str = "secretSync";
/// The flag that enables the feature.
pub const FLAG: &str = "--sync-secrets (AKEYLESS_CSI_SYNC_SECRETS=true)";

/// The feature, enabled by the admin: the Kubernetes API client, built on first use, and the
/// node's SecretProviderClass reads.
#[derive(Clone)]
pub struct SecretSync {
    api_url: Option<Url>,
    client: Arc<OnceCell<kube::Client>>,
    spcs: Arc<spc::SpcSource>,
}

impl std::fmt::Debug for SecretSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSync")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// Why a sync failed (or was refused); each variant has one gRPC code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error(
        "the SecretProviderClass sets {SECRET_SYNC}, but mirroring into Kubernetes Secrets is off on this provider; the admin enables it with {FLAG} and grants its RBAC (README, \"Mirroring into Kubernetes Secrets\"), or remove {SECRET_SYNC}"
    )]
    Disabled,
    #[error(
        "the volume attributes change {0}: the mapping is read only from the SecretProviderClass object, and a pod may not override it; remove {0} from the pod's volumeAttributes"
    )]
    Injected(String),
    #[error("{0}")]
    Invalid(#[from] mapping::MappingError),
    #[error(
        "SecretProviderClass {0} was not found in the API server (the mapping is read from there); check that it exists in the pod's namespace"
    )]
    SpcMissing(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the sync did not finish before the mount's deadline")]
    DeadlineExceeded,
}

impl SyncError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Disabled | Self::SpcMissing(_) | Self::Refused(_) => Code::FailedPrecondition,
            Self::Injected(_) | Self::Forbidden(_) => Code::PermissionDenied,
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
        }
    }
}

impl SecretSync {
    /// `api_url`: `--kube-api-url`, else the in-cluster configuration; `spc_cache_ttl`: how
    /// long one read of a SecretProviderClass answers for it (`--spc-cache-ttl`).
    pub fn new(api_url: Option<Url>, spc_cache_ttl: Duration) -> Self {
        Self {
            api_url,
            client: Arc::new(OnceCell::new()),
            spcs: Arc::new(spc::SpcSource::new(spc_cache_ttl)),
        }
    }

    async fn client(&self) -> Result<kube::Client, SyncError> {
        let fail = |why: String| SyncError::Unavailable(format!("Kubernetes API: {why}"));
        self.client
            .get_or_try_init(|| async {
                let config = match &self.api_url {
                    Some(url) => kube::Config::new(
                        url.as_str()
                            .parse()
                            .map_err(|_| fail(format!("{url} is not a usable URL")))?,
                    ),
                    None => kube::Config::infer()
                        .await
                        .map_err(|e| fail(format!("no client configuration: {e}")))?,
                };
                kube::Client::try_from(config).map_err(|e| fail(format!("no client: {e}")))
            })
            .await
            .cloned()
    }
}

/// The mapping of one mount, ready to apply.
pub struct Plan {
    client: kube::Client,
    namespace: String,
    spc: String,
    spc_uid: String,
    mapping: Mapping,
}

/// Reads the mapping of this mount, if it has one. `None`: nothing to sync.
///
/// Drivers up to v1.5 omit `secretProviderClass` on rotation calls: the SPC is the one the pod
/// volume named before, or that the driver's SecretProviderClassPodStatus of this pod and
/// target path names. When neither says, the sync is skipped (debug log) and the files are
/// served. A mapping is never taken from the attributes alone.
pub async fn prepare(
    sync: Option<&SecretSync>,
    config: &MountConfig,
    deadline: Deadline,
) -> Result<Option<Plan>, SyncError> {
    let attributes = &config.sync_attributes;
    if attributes.is_empty() {
        return Ok(None);
    }
    let Some(sync) = sync else {
        return Err(SyncError::Disabled);
    };
    let namespace = config.pod.namespace.as_str();
    if namespace.is_empty() {
        return Err(SyncError::Refused(
            "the driver sent no pod namespace, so no Secret can be written; enable podInfoOnMount on the CSIDriver".into(),
        ));
    }
    let client = sync.client().await?;
    let Some(spc) = sync.spcs.name_of(&client, config, deadline).await? else {
        tracing::debug!(
            "no secretProviderClass attribute (a driver up to v1.5 rotating) and no SecretProviderClassPodStatus of this pod volume: secret sync skipped"
        );
        return Ok(None);
    };
    let spc = spc.as_str();
    let (mut object, cached) = sync
        .spcs
        .get(&client, namespace, spc, false, deadline)
        .await?;
    if cached && injected(attributes, &object).is_some() {
        // The SPC may have changed since it was read: compare with a fresh read before refusing.
        (object, _) = sync
            .spcs
            .get(&client, namespace, spc, true, deadline)
            .await?;
    }
    if let Some(key) = injected(attributes, &object) {
        return Err(SyncError::Injected(key));
    }
    let Some(text) = object.parameters.get(SECRET_SYNC) else {
        return Ok(None);
    };
    let failure = object.parameters.get(FAILURE_POLICY).map(String::as_str);
    let mapping = mapping::parse(text, failure, namespace)?;
    Ok(Some(Plan {
        client,
        namespace: namespace.to_owned(),
        spc: spc.to_owned(),
        spc_uid: object.uid.clone(),
        mapping,
    }))
}

/// The first `secretSync*` key whose value the driver sent differs from the SPC object's:
/// what the driver merged from the SPC must be exactly what the SPC says.
fn injected(attributes: &BTreeMap<String, String>, object: &spc::SpcObject) -> Option<String> {
    let mut keys: BTreeSet<&String> = attributes.keys().collect();
    keys.extend(
        object
            .parameters
            .keys()
            .filter(|k| k.starts_with(PARAMETER_PREFIX)),
    );
    keys.into_iter()
        .find(|key| attributes.get(*key) != object.parameters.get(*key))
        .cloned()
}

async fn within<T>(deadline: Deadline, call: impl Future<Output = T>) -> Result<T, SyncError> {
    tokio::time::timeout_at(deadline.instant(), call)
        .await
        .map_err(|_| SyncError::DeadlineExceeded)
}

impl Plan {
    /// The mapping being applied.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Writes every target Secret that changed. Under `secretSyncFailurePolicy: Warn` a failure
    /// is logged (without values) and the mount goes on.
    pub async fn apply(&self, values: &Values, deadline: Deadline) -> Result<(), SyncError> {
        let outcome = within(deadline, self.apply_all(values))
            .await
            .and_then(|r| r);
        match outcome {
            Err(error) if self.mapping.on_failure == FailurePolicy::Warn => {
                tracing::warn!(
                    spc = %self.spc,
                    namespace = %self.namespace,
                    error = %error,
                    "secret sync failed; the files are served ({FAILURE_POLICY}: Warn)"
                );
                Ok(())
            }
            other => other,
        }
    }

    async fn apply_all(&self, values: &Values) -> Result<(), SyncError> {
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &self.namespace);
        for target in self.mapping.written() {
            let shaped = shape::shape(target, values)
                .map_err(|why| SyncError::Refused(format!("Secret {}: {why}", target.name)))?;
            let desired = write::Desired {
                target,
                namespace: &self.namespace,
                manager: write::Manager::Spc {
                    name: &self.spc,
                    uid: &self.spc_uid,
                },
                shaped,
            };
            let outcome = write::apply(&api, &desired).await?;
            tracing::info!(
                spc = %self.spc,
                namespace = %self.namespace,
                secret = %target.name,
                outcome = outcome.as_str(),
                "secret sync"
            );
        }
        Ok(())
    }
}

/// The mount's static values as a [`shape::Source`]: an item missing from them was read as
/// optional (see [`Plan::optional_items`]) and is gone.
impl shape::Source for Values {
    fn value(&self, key: &str, version: Option<u32>) -> Result<Option<SecretBytes>, String> {
        Ok(self
            .get(&ItemRef {
                name: key.to_owned(),
                version,
            })
            .cloned())
    }

    fn found(&self, _find: &mapping::Find) -> Result<Vec<(String, SecretBytes)>, String> {
        // The mapping parser refuses `find` in secretSync.
        Err("find is not supported in secretSync".to_owned())
    }
}

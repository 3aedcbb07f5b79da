//! Stores: which `SecretStore`/`ClusterSecretStore` are ours, the Akeyless identity each one
//! stands for, and their `Ready` condition.
//!
//! A store is ours when it has `spec.provider.akeyless` and its `spec.controller` is our class
//! (or empty, unless `--skip-unclassed`); anything else is ignored without a word, as ESO
//! ignores stores of another class. Its credentials are read from the Kubernetes objects it
//! names and turned into an [`Identity`] by the CSI path's [`crate::auth`], so tokens are cached
//! per identity (one login per store identity per token lifetime) and never shared between
//! identities. A resolved store is kept for a short while, so the ExternalSecrets due in one
//! refresh round read its Secrets once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use super::eso::{self, Problems, StoreKind, StoreRef};
use super::{ControllerOptions, Ctx};
use crate::akeyless::{Client, Deadline};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::params::{AccessConfig, AccessType, PodInfo, parse_gateway_url};
use crate::secret::SecretString;
use crate::telemetry::metrics::{ReconcileKind, ReconcileOutcome};

/// How long a resolved store answers for later ExternalSecrets before its Secrets are read
/// again (a rotated credential takes effect within this).
const RESOLVED_TTL: Duration = Duration::from_secs(30);

/// What an ExternalSecret reads a store as.
#[derive(Clone)]
pub struct StoreAccess {
    /// For messages: `SecretStore shop/akeyless` or `ClusterSecretStore akeyless`.
    pub store: String,
    pub identity: Identity,
    /// `ignoreCache`: reads bypass the Gateway's cache.
    pub ignore_cache: bool,
}

/// Why a store cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Not ours: another provider or controller class. The ExternalSecret is left alone.
    #[error("{0} is not served by this controller")]
    NotOurs(String),
    #[error("{store} was not found; create it, or fix spec.secretStoreRef (name and kind)")]
    NotFound { store: String },
    /// The store's spec is wrong (ESO's `InvalidStoreConfiguration`/`InvalidProviderConfig`).
    #[error("{store} is invalid: {problems}")]
    Invalid { store: String, problems: String },
    /// A ClusterSecretStore whose conditions exclude the ExternalSecret's namespace.
    #[error(
        "{store} may not be used from namespace {namespace}: its spec.conditions do not select it; ask its owner to add the namespace, or use a store of your namespace"
    )]
    NotAllowed { store: String, namespace: String },
    /// A referenced Kubernetes object is missing or unreadable.
    #[error("{store}: {problem}")]
    Reference { store: String, problem: String },
    /// The identity cannot be formed (a missing parameter, a refused URL).
    #[error("{store}: {problem}")]
    Auth { store: String, problem: String },
    /// The Kubernetes API failed (retried).
    #[error("{store}: {problem}")]
    Unavailable { store: String, problem: String },
}

impl StoreError {
    /// Whether retrying later may help without a change to the objects.
    pub fn transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

type Resolved = HashMap<(StoreRef, String), (Instant, u64, Result<StoreAccess, StoreError>)>;

/// The stores: their reflectors, and identities resolved recently.
pub struct Stores {
    client: kube::Client,
    kinds: eso::Kinds,
    options: ControllerOptions,
    auth: Authenticator,
    #[allow(dead_code)]
    akeyless: Client,
    readers: Mutex<Option<(Store<DynamicObject>, Store<DynamicObject>)>>,
    resolved: Mutex<Resolved>,
}

impl Stores {
    pub fn new(
        client: kube::Client,
        kinds: eso::Kinds,
        options: ControllerOptions,
        auth: Authenticator,
        akeyless: Client,
    ) -> Self {
        Self {
            client,
            kinds,
            options,
            auth,
            akeyless,
            readers: Mutex::default(),
            resolved: Mutex::default(),
        }
    }

    fn readers(&self) -> Option<(Store<DynamicObject>, Store<DynamicObject>)> {
        super::lock(&self.readers).clone()
    }

    /// The store an ExternalSecret in `namespace` names, from the reflectors.
    async fn object(
        &self,
        store: &StoreRef,
        namespace: &str,
    ) -> Result<Arc<DynamicObject>, StoreError> {
        let described = describe(store, namespace);
        let Some((namespaced, cluster)) = self.readers() else {
            return Err(StoreError::Unavailable {
                store: described,
                problem: "the store watches have not started yet".to_owned(),
            });
        };
        let (reader, key) = match store.kind {
            StoreKind::SecretStore => (
                namespaced,
                ObjectRef::new_with(&store.name, self.kinds.secret_store.clone()).within(namespace),
            ),
            StoreKind::ClusterSecretStore => {
                if !self.options.cluster_stores {
                    return Err(StoreError::NotOurs(described));
                }
                (
                    cluster,
                    ObjectRef::new_with(&store.name, self.kinds.cluster_secret_store.clone()),
                )
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), reader.wait_until_ready())
            .await
            .is_err()
        {
            return Err(StoreError::Unavailable {
                store: described,
                problem: "the store watch has not synced yet".to_owned(),
            });
        }
        reader
            .get(&key)
            .ok_or(StoreError::NotFound { store: described })
    }

    /// What an ExternalSecret in `namespace` reads `store` as: resolved once per store version
    /// for a short while.
    pub async fn access(
        &self,
        store: &StoreRef,
        namespace: &str,
    ) -> Result<StoreAccess, StoreError> {
        let object = self.object(store, namespace).await?;
        let version = generation_of(&object);
        let key = (store.clone(), namespace.to_owned());
        if let Some((at, seen, result)) = super::lock(&self.resolved).get(&key)
            && *seen == version
            && at.elapsed() < RESOLVED_TTL
        {
            return result.clone();
        }
        let result = self.resolve(store.kind, &object, Some(namespace)).await;
        let mut resolved = super::lock(&self.resolved);
        if resolved.len() > 10_000 {
            resolved.retain(|_, (at, _, _)| at.elapsed() < RESOLVED_TTL);
        }
        if !matches!(&result, Err(e) if e.transient()) {
            resolved.insert(key, (Instant::now(), version, result.clone()));
        }
        result
    }

    /// Reads the store's spec and the objects it names into an identity, for an ExternalSecret
    /// in namespace `user` (`None`: validating the store itself).
    async fn resolve(
        &self,
        kind: StoreKind,
        object: &DynamicObject,
        user: Option<&str>,
    ) -> Result<StoreAccess, StoreError> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let own_namespace = object.metadata.namespace.clone().unwrap_or_default();
        let described = match kind {
            StoreKind::SecretStore => format!("SecretStore {own_namespace}/{name}"),
            StoreKind::ClusterSecretStore => format!("ClusterSecretStore {name}"),
        };
        let spec = match parse(kind, &own_namespace, eso::spec(object), &self.options) {
            Ok(Some(spec)) => spec,
            Ok(None) => return Err(StoreError::NotOurs(described)),
            Err(problems) => {
                return Err(StoreError::Invalid {
                    store: described,
                    problems: problems.to_string(),
                });
            }
        };
        if let Some(user) = user
            && kind == StoreKind::ClusterSecretStore
            && !self
                .namespace_allowed(&spec.conditions, user)
                .await
                .map_err(|problem| StoreError::Unavailable {
                    store: described.clone(),
                    problem,
                })?
        {
            return Err(StoreError::NotAllowed {
                store: described,
                namespace: user.to_owned(),
            });
        }
        // Where referenced objects live: the store's namespace, or (cluster stores) the one
        // each reference names.
        let refs_namespace = match kind {
            StoreKind::SecretStore => Some(own_namespace.as_str()),
            StoreKind::ClusterSecretStore => None,
        };
        let (access, pod) = self
            .credentials(&spec.auth, refs_namespace, &described)
            .await?;
        let identity = self
            .auth
            .identity_for(spec.url.clone(), &access, &pod)
            .map_err(|e| StoreError::Auth {
                store: described.clone(),
                problem: auth_problem(e),
            })?;
        Ok(StoreAccess {
            store: described,
            identity,
            ignore_cache: spec.ignore_cache,
        })
    }

    /// The access parameters and the "pod" (tokens) an auth block stands for.
    async fn credentials(
        &self,
        auth: &Auth,
        refs_namespace: Option<&str>,
        store: &str,
    ) -> Result<(AccessConfig, PodInfo), StoreError> {
        let mut access = AccessConfig::default();
        let mut pod = PodInfo::default();
        match auth {
            Auth::SecretRef {
                access_id,
                access_type,
                access_type_param,
            } => {
                access.access_id = self
                    .secret_key(access_id, refs_namespace, store)
                    .await?
                    .expose()
                    .trim()
                    .to_owned();
                let type_text = self
                    .secret_key(access_type, refs_namespace, store)
                    .await?
                    .expose()
                    .trim()
                    .to_owned();
                let param = match access_type_param {
                    Some(r) => Some(self.secret_key(r, refs_namespace, store).await?),
                    None => None,
                };
                let access_type = AccessType::parse(&type_text)
                    .filter(|t| {
                        matches!(
                            t,
                            AccessType::AccessKey
                                | AccessType::K8s
                                | AccessType::AzureAd
                                | AccessType::AwsIam
                                | AccessType::Gcp
                        )
                    })
                    .ok_or_else(|| StoreError::Reference {
                        store: store.to_owned(),
                        problem: format!(
                            "authSecretRef.secretRef.accessType: {type_text:?} is not one of aws_iam, gcp, azure_ad, api_key, access_key, k8s"
                        ),
                    })?;
                access.access_type = Some(access_type);
                let param = param
                    .map(|p| p.expose().trim().to_owned())
                    .filter(|p| !p.is_empty());
                match access_type {
                    AccessType::AccessKey => {
                        access.access_key = param.map(SecretString::new);
                    }
                    AccessType::K8s => access.k8s_auth_config_name = param,
                    AccessType::AzureAd => access.azure_object_id = param,
                    AccessType::Gcp => access.gcp_audience = param,
                    _ => {}
                }
            }
            Auth::Kubernetes {
                access_id,
                config_name,
                token,
            } => {
                access.access_id = access_id.clone();
                access.access_type = Some(AccessType::K8s);
                access.k8s_auth_config_name = Some(config_name.clone());
                let jwt = match token {
                    KubeToken::Secret(selector) => {
                        self.secret_key(selector, refs_namespace, store).await?
                    }
                    KubeToken::ServiceAccount { .. } | KubeToken::Own => {
                        return Err(StoreError::Reference {
                            store: store.to_owned(),
                            problem: "authSecretRef.kubernetesAuth: a token for a ServiceAccount (serviceAccountRef) or the controller's own token is not supported yet; use kubernetesAuth.secretRef".to_owned(),
                        });
                    }
                };
                pod.tokens.insert(
                    crate::auth::DEFAULT_AUDIENCE.to_owned(),
                    crate::params::PodToken {
                        token: SecretString::new(jwt.expose().trim()),
                        expiration: None,
                    },
                );
            }
        }
        Ok((access, pod))
    }

    /// One key of a Secret a store names.
    async fn secret_key(
        &self,
        selector: &SecretKeySelector,
        refs_namespace: Option<&str>,
        store: &str,
    ) -> Result<SecretString, StoreError> {
        let namespace = refs_namespace
            .or(selector.namespace.as_deref())
            .unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api.get_opt(&selector.name).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => StoreError::Reference {
                store: store.to_owned(),
                problem: format!(
                    "the controller may not read Secret {namespace}/{} (HTTP 403); grant it get on secrets",
                    selector.name
                ),
            },
            other => StoreError::Unavailable {
                store: store.to_owned(),
                problem: format!("reading Secret {namespace}/{}: {other}", selector.name),
            },
        })?;
        let Some(secret) = secret else {
            return Err(StoreError::Reference {
                store: store.to_owned(),
                problem: format!(
                    "Secret {namespace}/{} (named by {}) does not exist",
                    selector.name, selector.field
                ),
            });
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&selector.key))
            .map(|v| v.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&selector.key))
                    .map(|v| v.clone().into_bytes())
            })
            .ok_or_else(|| StoreError::Reference {
                store: store.to_owned(),
                problem: format!(
                    "Secret {namespace}/{} has no key {:?} (named by {})",
                    selector.name, selector.key, selector.field
                ),
            })?;
        let text = String::from_utf8(value).map_err(|_| StoreError::Reference {
            store: store.to_owned(),
            problem: format!(
                "key {:?} of Secret {namespace}/{} is not UTF-8 text",
                selector.key, selector.name
            ),
        })?;
        Ok(SecretString::new(text))
    }

    /// Whether a ClusterSecretStore's `conditions` let `namespace` use it (none: everyone).
    async fn namespace_allowed(
        &self,
        conditions: &[Condition],
        namespace: &str,
    ) -> Result<bool, String> {
        if conditions.is_empty() {
            return Ok(true);
        }
        let mut labels: Option<BTreeMap<String, String>> = None;
        for condition in conditions {
            if condition.namespaces.iter().any(|n| n == namespace)
                || condition.regexes.iter().any(|re| re.is_match(namespace))
            {
                return Ok(true);
            }
            if let Some(selector) = &condition.selector {
                if labels.is_none() {
                    let api: Api<Namespace> = Api::all(self.client.clone());
                    let ns = api
                        .get_opt(namespace)
                        .await
                        .map_err(|e| format!("reading Namespace {namespace}: {e}"))?;
                    labels = Some(ns.and_then(|n| n.metadata.labels).unwrap_or_default());
                }
                if selector.matches(labels.as_ref().unwrap_or(&BTreeMap::new())) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

fn describe(store: &StoreRef, namespace: &str) -> String {
    match store.kind {
        StoreKind::SecretStore => format!("SecretStore {namespace}/{}", store.name),
        StoreKind::ClusterSecretStore => format!("ClusterSecretStore {}", store.name),
    }
}

fn generation_of(object: &DynamicObject) -> u64 {
    // The resource version changes with every write, the generation only with the spec:
    // status updates must not force a new resolution.
    object.metadata.generation.unwrap_or_default() as u64
}

/// An auth error in words, without any credential.
fn auth_problem(error: AuthError) -> String {
    error.to_string()
}

// ---- The store spec ----

/// A store's Akeyless provider, parsed.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    pub url: Url,
    pub ignore_cache: bool,
    pub auth: Auth,
    /// ClusterSecretStore `conditions`: who may use it.
    pub conditions: Vec<Condition>,
}

/// A key of a Secret a store names.
#[derive(Debug, Clone)]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
    /// Required for a ClusterSecretStore; must be empty or the store's own for a SecretStore.
    pub namespace: Option<String>,
    /// The field that names it, for messages.
    pub field: String,
}

/// Where the JWT of `kubernetesAuth` comes from.
#[derive(Debug, Clone)]
pub enum KubeToken {
    /// A token requested for this ServiceAccount (TokenRequest).
    ServiceAccount {
        name: String,
        namespace: Option<String>,
        audiences: Vec<String>,
    },
    /// A JWT stored in a Secret (key `token` by default).
    Secret(SecretKeySelector),
    /// The controller's own ServiceAccount token.
    Own,
}

/// `authSecretRef`.
#[derive(Debug, Clone)]
pub enum Auth {
    SecretRef {
        access_id: SecretKeySelector,
        access_type: SecretKeySelector,
        access_type_param: Option<SecretKeySelector>,
    },
    Kubernetes {
        access_id: String,
        config_name: String,
        token: KubeToken,
    },
}

/// One ClusterSecretStore condition: namespaces that may use it.
#[derive(Debug, Clone)]
pub struct Condition {
    pub namespaces: Vec<String>,
    pub regexes: Vec<regex::Regex>,
    pub selector: Option<LabelSelector>,
}

/// A label selector (`matchLabels` and `matchExpressions`).
#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(key, op, values)| {
                let value = labels.get(key);
                match op.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawStoreSpec {
    #[serde(default)]
    controller: Option<String>,
    #[serde(default)]
    provider: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCondition {
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    namespace_regexes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<RawExpression>,
}

#[derive(Deserialize)]
struct RawExpression {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAkeyless {
    #[serde(default, rename = "akeylessGWApiURL")]
    url: Option<String>,
    #[serde(default)]
    ignore_cache: Option<bool>,
    #[serde(default, rename = "authSecretRef")]
    auth: Option<RawAuth>,
    #[serde(default)]
    ca_bundle: Option<String>,
    #[serde(default)]
    ca_provider: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAuth {
    #[serde(default)]
    secret_ref: Option<RawSecretRef>,
    #[serde(default)]
    kubernetes_auth: Option<RawKubernetesAuth>,
    #[serde(default)]
    service_account_ref: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSecretRef {
    #[serde(default, rename = "accessID")]
    access_id: Option<RawSelectorRef>,
    #[serde(default)]
    access_type: Option<RawSelectorRef>,
    #[serde(default)]
    access_type_param: Option<RawSelectorRef>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawSelectorRef {
    #[serde(default)]
    name: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKubernetesAuth {
    #[serde(default, rename = "accessID")]
    access_id: String,
    #[serde(default)]
    k8s_conf_name: String,
    #[serde(default)]
    service_account_ref: Option<RawServiceAccountRef>,
    #[serde(default)]
    secret_ref: Option<RawSelectorRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceAccountRef {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
}

/// Parses the spec of a store in `namespace` (empty for a ClusterSecretStore): `Ok(None)` when
/// it is not ours (another provider or class).
pub fn parse(
    kind: StoreKind,
    namespace: &str,
    spec: &Value,
    options: &ControllerOptions,
) -> Result<Option<StoreSpec>, Problems> {
    let mut problems = Problems::default();
    let raw: RawStoreSpec = serde_json::from_value(spec.clone()).unwrap_or_default();
    let Some(akeyless) = raw.provider.as_ref().and_then(|p| p.get("akeyless")) else {
        return Ok(None);
    };
    match raw.controller.as_deref().map(str::trim) {
        None | Some("") if options.skip_unclassed => return Ok(None),
        None | Some("") => {}
        Some(class) if class == options.class => {}
        Some(_) => return Ok(None),
    }
    let cluster = kind == StoreKind::ClusterSecretStore;
    let raw: RawAkeyless = match serde_json::from_value(akeyless.clone()) {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(format!("spec.provider.akeyless: {}", eso::shape_error(&e)));
            return Err(problems);
        }
    };
    let url = match raw.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        None => options.default_url.clone(),
        Some(text) => match parse_gateway_url(text) {
            Ok(url) => url,
            Err(why) => {
                problems.push(format!("spec.provider.akeyless.akeylessGWApiURL: {why}"));
                options.default_url.clone()
            }
        },
    };
    if raw.ca_bundle.is_some() || raw.ca_provider.is_some() {
        problems.push(
            "spec.provider.akeyless.caBundle/caProvider: custom CA bundles are not supported yet",
        );
    }
    let selector = |field: &str,
                    raw: &Option<RawSelectorRef>,
                    default_key: Option<&str>,
                    problems: &mut Problems| {
        let raw = raw.clone()?;
        let key = if raw.key.trim().is_empty() {
            default_key.map(str::to_owned).unwrap_or_default()
        } else {
            raw.key.trim().to_owned()
        };
        if raw.name.trim().is_empty() {
            problems.push(format!("{field}.name is missing"));
        }
        if key.is_empty() {
            problems.push(format!("{field}.key is missing"));
        }
        match (cluster, raw.namespace.as_deref().map(str::trim).filter(|n| !n.is_empty())) {
            (true, None) => problems.push(format!(
                "{field}.namespace is missing: a ClusterSecretStore must name the namespace of each Secret it reads"
            )),
            (false, Some(ns)) if ns != namespace => problems.push(format!(
                "{field}.namespace {ns:?}: a SecretStore reads Secrets of its own namespace {namespace:?} only; remove it"
            )),
            _ => {}
        }
        Some(SecretKeySelector {
            name: raw.name.trim().to_owned(),
            key,
            namespace: raw.namespace.filter(|n| !n.trim().is_empty()),
            field: field.to_owned(),
        })
    };
    let auth = match raw.auth {
        None => {
            problems.push(
                "spec.provider.akeyless.authSecretRef is missing; set secretRef or kubernetesAuth",
            );
            None
        }
        Some(RawAuth {
            kubernetes_auth: Some(k),
            ..
        }) => {
            let base = "spec.provider.akeyless.authSecretRef.kubernetesAuth";
            if k.access_id.trim().is_empty() {
                problems.push(format!("{base}.accessID is missing"));
            }
            if k.k8s_conf_name.trim().is_empty() {
                problems.push(format!("{base}.k8sConfName is missing"));
            }
            let token = match (k.service_account_ref, &k.secret_ref) {
                (Some(sa), _) => {
                    if cluster && sa.namespace.as_deref().is_none_or(|n| n.trim().is_empty()) {
                        problems.push(format!(
                            "{base}.serviceAccountRef.namespace is missing: a ClusterSecretStore must name it"
                        ));
                    }
                    KubeToken::ServiceAccount {
                        name: sa.name,
                        namespace: sa.namespace,
                        audiences: sa.audiences,
                    }
                }
                (None, Some(_)) => selector(
                    &format!("{base}.secretRef"),
                    &k.secret_ref,
                    Some("token"),
                    &mut problems,
                )
                .map(KubeToken::Secret)
                .unwrap_or(KubeToken::Own),
                (None, None) => KubeToken::Own,
            };
            Some(Auth::Kubernetes {
                access_id: k.access_id.trim().to_owned(),
                config_name: k.k8s_conf_name.trim().to_owned(),
                token,
            })
        }
        Some(RawAuth {
            secret_ref: Some(s),
            service_account_ref,
            ..
        }) => {
            if service_account_ref.is_some() {
                problems.push("spec.provider.akeyless.authSecretRef.serviceAccountRef (azure_ad workload identity) is not supported yet");
            }
            let base = "spec.provider.akeyless.authSecretRef.secretRef";
            let access_id = selector(
                &format!("{base}.accessID"),
                &s.access_id,
                None,
                &mut problems,
            );
            let access_type = selector(
                &format!("{base}.accessType"),
                &s.access_type,
                None,
                &mut problems,
            );
            let access_type_param = selector(
                &format!("{base}.accessTypeParam"),
                &s.access_type_param,
                None,
                &mut problems,
            );
            match (access_id, access_type) {
                (Some(access_id), Some(access_type)) => Some(Auth::SecretRef {
                    access_id,
                    access_type,
                    access_type_param,
                }),
                _ => {
                    problems.push(format!("{base} needs accessID and accessType"));
                    None
                }
            }
        }
        Some(_) => {
            problems.push("spec.provider.akeyless.authSecretRef needs secretRef or kubernetesAuth");
            None
        }
    };
    let mut conditions = Vec::new();
    for (i, c) in raw_conditions(spec).into_iter().enumerate() {
        if !cluster {
            problems.push("spec.conditions applies to ClusterSecretStores only");
            break;
        }
        let mut regexes = Vec::new();
        for (j, text) in c.namespace_regexes.iter().enumerate() {
            match regex::Regex::new(text) {
                Ok(re) => regexes.push(re),
                Err(e) => problems.push(format!(
                    "spec.conditions[{i}].namespaceRegexes[{j}] is not a valid regular expression: {e}"
                )),
            }
        }
        conditions.push(Condition {
            namespaces: c.namespaces,
            regexes,
            selector: c.namespace_selector.map(|s| LabelSelector {
                match_labels: s.match_labels,
                expressions: s
                    .match_expressions
                    .into_iter()
                    .map(|e| (e.key, e.operator, e.values))
                    .collect(),
            }),
        });
    }
    match auth {
        Some(auth) if problems.is_empty() => Ok(Some(StoreSpec {
            url,
            ignore_cache: raw.ignore_cache.unwrap_or(false),
            auth,
            conditions,
        })),
        _ => Err(problems),
    }
}

fn raw_conditions(spec: &Value) -> Vec<RawCondition> {
    spec.get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

// ---- Reconciling stores: their Ready condition ----

/// Runs the SecretStore and ClusterSecretStore controllers until `stop`.
pub async fn run(ctx: Arc<Ctx>, stop: Shared<BoxFuture<'static, ()>>) {
    let namespaced = super::controller(&ctx, &ctx.kinds.secret_store, true);
    let cluster = super::controller(&ctx, &ctx.kinds.cluster_secret_store, false);
    *super::lock(&ctx.stores.readers) = Some((namespaced.store(), cluster.store()));
    let run_one = |controller: kube::runtime::Controller<DynamicObject>, kind: StoreKind| {
        let ctx = ctx.clone();
        let stop = stop.clone();
        async move {
            let stream = controller.graceful_shutdown_on(stop).run(
                move |object, ctx| reconcile(object, ctx, kind),
                |_, _: &StoreReconcileError, _| Action::requeue(Duration::from_secs(30)),
                ctx,
            );
            super::drive(kind.kind().as_str(), stream).await;
        }
    };
    if ctx.options.cluster_stores {
        futures::join!(
            run_one(namespaced, StoreKind::SecretStore),
            run_one(cluster, StoreKind::ClusterSecretStore)
        );
    } else {
        run_one(namespaced, StoreKind::SecretStore).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StoreReconcileError(String);

/// Validates one store by resolving its identity and logging in, and writes `Ready`.
async fn reconcile(
    object: Arc<DynamicObject>,
    ctx: Arc<Ctx>,
    kind: StoreKind,
) -> Result<Action, StoreReconcileError> {
    let revalidate = Action::requeue(ctx.options.store_revalidate);
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let spec = match parse(kind, &namespace, eso::spec(&object), &ctx.options) {
        Ok(None) => {
            ctx.metrics
                .reconciled(ReconcileKind::Store, ReconcileOutcome::Skipped);
            return Ok(Action::await_change());
        }
        Ok(Some(spec)) => Ok(spec),
        Err(problems) => Err(problems),
    };
    let (status, reason, message, action) = match spec {
        Err(problems) => (
            false,
            "InvalidProviderConfig",
            format!("invalid store: {problems}"),
            Action::await_change(),
        ),
        Ok(_) => match ctx.stores.resolve(kind, &object, None).await {
            Err(e) => {
                let transient = e.transient();
                (
                    false,
                    if transient {
                        "ValidationUnknown"
                    } else {
                        "InvalidStoreConfiguration"
                    },
                    e.to_string(),
                    if transient {
                        Action::requeue(Duration::from_secs(30))
                    } else {
                        revalidate
                    },
                )
            }
            Ok(access) => {
                let deadline = Deadline::after(ctx.options.refresh_timeout);
                match ctx.auth.token(&access.identity, deadline).await {
                    Ok(_) => (true, "Valid", "store validated".to_owned(), revalidate),
                    Err(e) => (
                        false,
                        "ValidationFailed",
                        format!("{}: the login failed: {}", access.store, auth_problem(e)),
                        Action::requeue(Duration::from_secs(30)),
                    ),
                }
            }
        },
    };
    let resource = match kind {
        StoreKind::SecretStore => &ctx.kinds.secret_store,
        StoreKind::ClusterSecretStore => &ctx.kinds.cluster_secret_store,
    };
    write_ready(&ctx, resource, &object, status, reason, &message)
        .await
        .map_err(StoreReconcileError)?;
    ctx.metrics.reconciled(
        ReconcileKind::Store,
        if status {
            ReconcileOutcome::Synced
        } else {
            ReconcileOutcome::Error
        },
    );
    Ok(action)
}

/// Writes a `Ready` condition (only when it changed).
pub(super) async fn write_ready(
    ctx: &Ctx,
    resource: &kube::api::ApiResource,
    object: &DynamicObject,
    status: bool,
    reason: &str,
    message: &str,
) -> Result<(), String> {
    let current = object
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))));
    let status_text = if status { "True" } else { "False" };
    if let Some(c) = current
        && c.get("status") == Some(&json!(status_text))
        && c.get("reason") == Some(&json!(reason))
        && c.get("message") == Some(&json!(message))
    {
        return Ok(());
    }
    let patch = json!({
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": status_text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }],
            "capabilities": "ReadOnly",
        }
    });
    let name = object.metadata.name.clone().unwrap_or_default();
    let api = match &object.metadata.namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, resource),
        None => Api::<DynamicObject>::all_with(ctx.client.clone(), resource),
    };
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("writing the status of {} {name}: {e}", resource.kind))?;
    ctx.metrics.status_writes.inc();
    Ok(())
}

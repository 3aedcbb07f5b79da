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
//!
//! Every form of ESO's `authSecretRef` is read: `secretRef` (access id, type and parameter
//! from Secrets), `kubernetesAuth` (a JWT requested for `serviceAccountRef`, stored in
//! `secretRef`, or the controller's own), and `serviceAccountRef` for `azure_ad` workload
//! identity. A store's author chooses its URL, so what is not the store's own credential — the
//! controller's ServiceAccount token and cloud identity, a token minted for an audience other
//! than Akeyless's, an Azure access token — goes only to `--akeyless-url` and the URLs of
//! `--allowed-gateway-url`, and is refused before it is read or minted otherwise.
//!
//! `caBundle`/`caProvider` replace the system's trust roots for the store's calls (as ESO
//! does), and `ignoreCache` makes its reads ask past the Gateway's cache: both give the store a
//! client of its own ([`Client::variant`]), which is part of its identity, so neither tokens
//! nor shared reads cross between stores that differ in them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use super::eso::{self, Problems, StoreKind, StoreRef};
use super::{ControllerOptions, Ctx, own};
use crate::akeyless::{Client, Deadline, TrustRoots};
use crate::auth::{
    AWS_IRSA_AUDIENCE, AWS_POD_IDENTITY_AUDIENCE, AZURE_WORKLOAD_IDENTITY_AUDIENCE, AccountToken,
    AuthError, Authenticator, DEFAULT_AUDIENCE, Identity, is_saas,
};
use crate::params::{AccessConfig, AccessType, PodInfo, parse_gateway_url};
use crate::secret::SecretString;
use crate::telemetry::metrics::{ReconcileKind, ReconcileOutcome};

/// How long a resolved store answers for later ExternalSecrets before its Secrets are read
/// again (a rotated credential takes effect within this).
const RESOLVED_TTL: Duration = Duration::from_secs(30);
/// Store clients (distinct trust roots and cache policies) kept at most.
const MAX_CLIENTS: usize = 1_000;
/// The annotations of an AKS workload identity's ServiceAccount.
const AZURE_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
const AZURE_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

/// What an ExternalSecret reads a store as.
#[derive(Clone)]
pub struct StoreAccess {
    /// For messages: `SecretStore shop/akeyless` or `ClusterSecretStore akeyless`.
    pub store: String,
    /// Who it logs in as, and through which client (trust roots, `ignoreCache`).
    pub identity: Identity,
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
    /// The identity depends on the ExternalSecret that uses the store: the store itself cannot
    /// be validated by a login (it is, by each ExternalSecret's).
    #[error("{store}: {reason}")]
    Deferred { store: String, reason: String },
}

impl StoreError {
    /// Whether retrying later may help without a change to the objects.
    pub fn transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

type Resolved = HashMap<(StoreRef, String), (Instant, u64, StoreAccess)>;

/// The stores: their reflectors, and identities resolved recently.
pub struct Stores {
    client: kube::Client,
    kinds: eso::Kinds,
    options: ControllerOptions,
    auth: Authenticator,
    /// The shared client, and the clients of stores with their own roots or cache policy.
    akeyless: Client,
    clients: Mutex<HashMap<(Option<String>, bool), Client>>,
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
            clients: Mutex::default(),
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

    /// Whether `store`, as named by an ExternalSecret in `namespace`, is another controller's
    /// (another provider or class, or a ClusterSecretStore while they are not served): such an
    /// ExternalSecret is ESO's, left alone whatever fields it uses. A store that cannot be looked
    /// up (missing, watches not synced) is not known to be another's.
    pub async fn foreign(&self, store: &StoreRef, namespace: &str) -> bool {
        match self.object(store, namespace).await {
            Ok(object) => claimed(eso::spec(&object), &self.options).is_none(),
            Err(StoreError::NotOurs(_)) => true,
            Err(_) => false,
        }
    }

    /// What an ExternalSecret in `namespace` reads `store` as: resolved once per store version
    /// for a short while (failures are not kept).
    pub async fn access(
        &self,
        store: &StoreRef,
        namespace: &str,
    ) -> Result<StoreAccess, StoreError> {
        let object = self.object(store, namespace).await?;
        let version = generation_of(&object);
        let key = (store.clone(), namespace.to_owned());
        if let Some((at, seen, access)) = super::lock(&self.resolved).get(&key)
            && *seen == version
            && at.elapsed() < RESOLVED_TTL
        {
            return Ok(access.clone());
        }
        let access = self.resolve(store.kind, &object, Some(namespace)).await?;
        let mut resolved = super::lock(&self.resolved);
        if resolved.len() > 10_000 {
            resolved.retain(|_, (at, _, _)| at.elapsed() < RESOLVED_TTL);
        }
        // Only successes are kept: a store fixed by its user (a Secret created, a key corrected)
        // works at the next attempt.
        resolved.insert(key, (Instant::now(), version, access.clone()));
        Ok(access)
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
        let scope = Scope {
            store: &described,
            // Where referenced objects live: the store's namespace, or (cluster stores) the
            // one each reference names.
            namespace: match kind {
                StoreKind::SecretStore => Some(own_namespace.as_str()),
                StoreKind::ClusterSecretStore => None,
            },
            user,
            url: &spec.url,
            allowed: self.auth.settings().allows(&spec.url),
            deadline: Deadline::after(self.options.refresh_timeout),
        };
        let roots = match &spec.ca {
            None => None,
            Some(CaSource::Bundle(roots)) => Some(roots.clone()),
            Some(CaSource::Provider(selector)) => {
                let pem = self.key_text(selector, &scope).await?;
                Some(TrustRoots::from_pem(pem.expose()).map_err(|why| {
                    scope.reference(format!(
                        "{} {why}; put the PEM CA certificate(s) there",
                        describe_key(selector, &scope)
                    ))
                })?)
            }
        };
        let (access, pod) = self.credentials(&spec.auth, &scope).await?;
        let identity = self
            .auth
            .identity_for(spec.url.clone(), &access, &pod)
            .map_err(|e| StoreError::Auth {
                store: described.clone(),
                problem: auth_problem(e),
            })?;
        let identity = match self.client_for(roots.as_ref(), spec.ignore_cache) {
            Ok(Some(client)) => identity.through(client),
            Ok(None) => identity,
            Err(why) => {
                return Err(StoreError::Invalid {
                    store: described,
                    problems: format!("spec.provider.akeyless.caBundle/caProvider: {why}"),
                });
            }
        };
        Ok(StoreAccess {
            store: described,
            identity,
        })
    }

    /// The client of a store with its own trust roots or cache policy: one per distinct
    /// combination (one connection pool per set of roots); `None` for the shared client.
    fn client_for(
        &self,
        roots: Option<&TrustRoots>,
        ignore_cache: bool,
    ) -> Result<Option<Client>, String> {
        if roots.is_none() && !ignore_cache {
            return Ok(None);
        }
        let key = (roots.map(|r| r.fingerprint().to_owned()), ignore_cache);
        let mut clients = super::lock(&self.clients);
        if let Some(client) = clients.get(&key) {
            return Ok(Some(client.clone()));
        }
        let client = self
            .akeyless
            .variant(roots, ignore_cache)
            .map_err(|e| format!("cannot build a client with these roots: {e}"))?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(Some(client))
    }

    /// The access parameters and the tokens ("pod") an auth block stands for.
    async fn credentials(
        &self,
        auth: &Auth,
        scope: &Scope<'_>,
    ) -> Result<(AccessConfig, PodInfo), StoreError> {
        let mut access = AccessConfig::default();
        let mut pod = PodInfo::default();
        match auth {
            Auth::SecretRef(secret_ref) => {
                let SecretRefAuth {
                    access_id,
                    access_type,
                    access_type_param,
                    service_account,
                } = secret_ref.as_ref();
                access.access_id = self.key_text(access_id, scope).await?.expose().to_owned();
                if access.access_id.is_empty() {
                    return Err(scope.reference(format!(
                        "{} is empty: put the Access ID of the Akeyless auth method (p-...) there",
                        describe_key(access_id, scope)
                    )));
                }
                let type_text = self.key_text(access_type, scope).await?.expose().to_owned();
                let param = match access_type_param {
                    Some(r) => Some(self.key_text(r, scope).await?),
                    None => None,
                }
                .filter(|p| !p.expose().is_empty());
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
                    .ok_or_else(|| {
                        scope.reference(format!(
                            "{}: {} is not one of aws_iam, gcp, azure_ad, api_key, access_key, k8s",
                            describe_key(access_type, scope),
                            shown_type(&type_text)
                        ))
                    })?;
                access.access_type = Some(access_type);
                let param_field = "authSecretRef.secretRef.accessTypeParam";
                match access_type {
                    AccessType::AccessKey => {
                        access.access_key = Some(param.ok_or_else(|| {
                            scope.reference(format!(
                                "{param_field} must hold the access key for access type {type_text}"
                            ))
                        })?);
                    }
                    AccessType::K8s => {
                        let config = param.ok_or_else(|| {
                            scope.reference(format!(
                                "{param_field} must name the Kubernetes auth config on the Gateway for access type k8s"
                            ))
                        })?;
                        scope.check_gateway()?;
                        access.k8s_auth_config_name = Some(config.expose().to_owned());
                        let jwt = self.own_token(scope)?;
                        insert_token(&mut pod, DEFAULT_AUDIENCE, jwt);
                    }
                    AccessType::AzureAd => match service_account {
                        Some(sa) => {
                            self.azure_workload(sa, param, scope, &mut access, &mut pod)
                                .await?
                        }
                        None => self.own_azure(param, scope, &mut access, &mut pod)?,
                    },
                    AccessType::AwsIam => self.own_aws(scope, &mut access, &mut pod)?,
                    AccessType::Gcp => {
                        scope.guard(
                            "the controller's own GCP identity (its metadata server)",
                            "use a store of a credential of its own (api_key, or kubernetesAuth)",
                        )?;
                        access.gcp_audience = param.map(|p| p.expose().to_owned());
                    }
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
                scope.check_gateway()?;
                let jwt = match token {
                    KubeToken::Secret(selector) => self.key_text(selector, scope).await?,
                    KubeToken::ServiceAccount(sa) => {
                        let namespace = scope.account_namespace(sa)?;
                        let audiences = if sa.audiences.is_empty() {
                            vec![DEFAULT_AUDIENCE.to_owned()]
                        } else {
                            sa.audiences.clone()
                        };
                        if audiences.iter().any(|a| a != DEFAULT_AUDIENCE) {
                            scope.guard(
                                &format!(
                                    "a token of ServiceAccount {namespace}/{} for audiences {audiences:?} (a credential for systems other than Akeyless)",
                                    sa.name
                                ),
                                &format!(
                                    "remove {}.audiences (the controller then asks for {DEFAULT_AUDIENCE:?}; bind the Akeyless K8s auth method to that audience)",
                                    sa.field
                                ),
                            )?;
                        }
                        self.account_token(&namespace, sa, audiences, scope).await?
                    }
                    KubeToken::Own => self.own_token(scope)?,
                };
                insert_token(&mut pod, DEFAULT_AUDIENCE, jwt);
            }
        }
        Ok((access, pod))
    }

    /// The controller's own ServiceAccount token, towards an allowed URL only.
    fn own_token(&self, scope: &Scope<'_>) -> Result<SecretString, StoreError> {
        scope.guard(
            "the controller's own ServiceAccount token",
            "name a token of the store's own: kubernetesAuth.serviceAccountRef or kubernetesAuth.secretRef",
        )?;
        own::read_token(
            &self.options.own.token_file,
            "the controller's own ServiceAccount token",
        )
        .map_err(|why| {
            scope.reference(format!(
                "{why}; mount it (automountServiceAccountToken), or use kubernetesAuth.serviceAccountRef or secretRef"
            ))
        })
    }

    /// `azure_ad` with `serviceAccountRef`: AKS workload identity of that ServiceAccount (its
    /// client and tenant ids from its annotations, its token for the federation audience).
    async fn azure_workload(
        &self,
        sa: &ServiceAccountRef,
        param: Option<SecretString>,
        scope: &Scope<'_>,
        access: &mut AccessConfig,
        pod: &mut PodInfo,
    ) -> Result<(), StoreError> {
        let namespace = scope.account_namespace(sa)?;
        scope.guard(
            &format!(
                "an Azure access token of ServiceAccount {namespace}/{}'s workload identity",
                sa.name
            ),
            "point akeylessGWApiURL at an allowed URL",
        )?;
        let annotations = self
            .auth
            .account_annotations(&namespace, &sa.name, scope.deadline)
            .await
            .map_err(|e| scope.auth_error(e))?;
        let annotation = |key: &str| {
            annotations
                .get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let client_id = annotation(AZURE_CLIENT_ID_ANNOTATION)
            .or_else(|| param.map(|p| p.expose().to_owned()))
            .ok_or_else(|| {
                scope.reference(format!(
                    "ServiceAccount {namespace}/{} has no {AZURE_CLIENT_ID_ANNOTATION} annotation and authSecretRef.secretRef.accessTypeParam is empty: annotate it with the client id of its managed identity",
                    sa.name
                ))
            })?;
        let tenant_id = annotation(AZURE_TENANT_ID_ANNOTATION)
            .or_else(|| self.auth.settings().azure_tenant_id.clone())
            .ok_or_else(|| {
                scope.reference(format!(
                    "ServiceAccount {namespace}/{} has no {AZURE_TENANT_ID_ANNOTATION} annotation: annotate it with the Entra tenant id (or the admin sets --azure-tenant-id)",
                    sa.name
                ))
            })?;
        let mut audiences = sa.audiences.clone();
        if !audiences
            .iter()
            .any(|a| a == AZURE_WORKLOAD_IDENTITY_AUDIENCE)
        {
            audiences.push(AZURE_WORKLOAD_IDENTITY_AUDIENCE.to_owned());
        }
        let jwt = self.account_token(&namespace, sa, audiences, scope).await?;
        access.azure_client_id = Some(client_id);
        access.azure_tenant_id = Some(tenant_id);
        insert_token(pod, AZURE_WORKLOAD_IDENTITY_AUDIENCE, jwt);
        Ok(())
    }

    /// `azure_ad` without `serviceAccountRef`: the controller's own workload identity, else
    /// its managed identity (IMDS) with the object id of `accessTypeParam`.
    fn own_azure(
        &self,
        param: Option<SecretString>,
        scope: &Scope<'_>,
        access: &mut AccessConfig,
        pod: &mut PodInfo,
    ) -> Result<(), StoreError> {
        scope.guard(
            "the controller's own Azure identity",
            "set authSecretRef.serviceAccountRef to a ServiceAccount with a workload identity",
        )?;
        match &self.options.own.azure {
            Some(workload) => {
                let jwt = own::read_token(
                    &workload.token_file,
                    "the controller's Azure federated token (AZURE_FEDERATED_TOKEN_FILE)",
                )
                .map_err(|why| scope.reference(why))?;
                access.azure_client_id = Some(workload.client_id.clone());
                access.azure_tenant_id = Some(workload.tenant_id.clone());
                insert_token(pod, AZURE_WORKLOAD_IDENTITY_AUDIENCE, jwt);
            }
            None => access.azure_object_id = param.map(|p| p.expose().to_owned()),
        }
        Ok(())
    }

    /// `aws_iam`: the controller's own IRSA or EKS Pod Identity, else its node's credentials.
    fn own_aws(
        &self,
        scope: &Scope<'_>,
        access: &mut AccessConfig,
        pod: &mut PodInfo,
    ) -> Result<(), StoreError> {
        scope.guard(
            "the controller's own AWS identity",
            "use a store of a credential of its own (api_key, or kubernetesAuth)",
        )?;
        let read = |path: &std::path::Path, what: &str| {
            own::read_token(path, what).map_err(|why| scope.reference(why))
        };
        match &self.options.own.aws {
            Some(own::AwsWorkload::Irsa {
                role_arn,
                token_file,
            }) => {
                let jwt = read(
                    token_file,
                    "the controller's IRSA token (AWS_WEB_IDENTITY_TOKEN_FILE)",
                )?;
                access.aws_role_arn = Some(role_arn.clone());
                // The session name in CloudTrail: akeyless-csi-controller.
                pod.uid = "controller".to_owned();
                insert_token(pod, AWS_IRSA_AUDIENCE, jwt);
            }
            Some(own::AwsWorkload::PodIdentity { token_file }) => {
                let jwt = read(
                    token_file,
                    "the controller's EKS Pod Identity token (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
                )?;
                insert_token(pod, AWS_POD_IDENTITY_AUDIENCE, jwt);
            }
            None => {}
        }
        Ok(())
    }

    /// A token of `sa` for `audiences`, reused while young (see [`crate::auth`]).
    async fn account_token(
        &self,
        namespace: &str,
        sa: &ServiceAccountRef,
        audiences: Vec<String>,
        scope: &Scope<'_>,
    ) -> Result<SecretString, StoreError> {
        let request = AccountToken {
            namespace: namespace.to_owned(),
            service_account: sa.name.clone(),
            audiences,
        };
        self.auth
            .account_token(&request, scope.deadline)
            .await
            .map_err(|e| scope.auth_error(e))
    }

    /// One key of a Secret or ConfigMap a store names, as trimmed UTF-8 text.
    async fn key_text(
        &self,
        selector: &KeySelector,
        scope: &Scope<'_>,
    ) -> Result<SecretString, StoreError> {
        let namespace = scope.namespace_of(selector.namespace.as_deref());
        let (kind, name) = (selector.kind.as_str(), &selector.name);
        let fail = |e: kube::Error| {
            match e {
            kube::Error::Api(s) if s.code == 403 => scope.reference(format!(
                "the controller may not read {kind} {namespace}/{name} (HTTP 403); grant it get on {}s",
                kind.to_ascii_lowercase()
            )),
            other => StoreError::Unavailable {
                store: scope.store.to_owned(),
                problem: format!("reading {kind} {namespace}/{name}: {other}"),
            },
        }
        };
        let value = match selector.kind {
            RefKind::Secret => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                api.get_opt(name).await.map_err(fail)?.map(|secret| {
                    let data = secret.data.unwrap_or_default();
                    let strings = secret.string_data.unwrap_or_default();
                    data.get(&selector.key)
                        .map(|v| v.0.clone())
                        .or_else(|| strings.get(&selector.key).map(|v| v.clone().into_bytes()))
                })
            }
            RefKind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                api.get_opt(name).await.map_err(fail)?.map(|map| {
                    let data = map.data.unwrap_or_default();
                    let binary = map.binary_data.unwrap_or_default();
                    data.get(&selector.key)
                        .map(|v| v.clone().into_bytes())
                        .or_else(|| binary.get(&selector.key).map(|v| v.0.clone()))
                })
            }
        };
        let Some(value) = value else {
            return Err(scope.reference(format!(
                "{kind} {namespace}/{name} (named by {}) does not exist",
                selector.field
            )));
        };
        let value = value.ok_or_else(|| {
            scope.reference(format!(
                "{kind} {namespace}/{name} has no key {:?} (named by {})",
                selector.key, selector.field
            ))
        })?;
        let text = String::from_utf8(value).map_err(|_| {
            scope.reference(format!(
                "key {:?} of {kind} {namespace}/{name} is not UTF-8 text",
                selector.key
            ))
        })?;
        Ok(SecretString::new(text.trim()))
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

/// What one resolution needs to know: whose store, where its references live, for whom.
struct Scope<'a> {
    /// For messages: `SecretStore shop/akeyless`.
    store: &'a str,
    /// The store's namespace (a SecretStore's references); `None`: each names its own.
    namespace: Option<&'a str>,
    /// The namespace of the ExternalSecret it resolves for; `None`: validating the store.
    user: Option<&'a str>,
    url: &'a Url,
    /// Whether `url` may receive the controller's own credentials.
    allowed: bool,
    deadline: Deadline,
}

impl Scope<'_> {
    /// Where a reference's object lives.
    fn namespace_of<'b>(&'b self, given: Option<&'b str>) -> &'b str {
        self.namespace.or(given).unwrap_or_default()
    }

    /// A referenced object or value is missing or unusable (`InvalidStoreConfiguration`).
    fn reference(&self, problem: String) -> StoreError {
        StoreError::Reference {
            store: self.store.to_owned(),
            problem,
        }
    }

    /// `what` is the controller's own or reaches beyond Akeyless: only allowed URLs get it.
    fn guard(&self, what: &str, fix: &str) -> Result<(), StoreError> {
        if self.allowed {
            return Ok(());
        }
        Err(StoreError::Auth {
            store: self.store.to_owned(),
            problem: format!(
                "refusing to send {what} to {}: a store's author chooses spec.provider.akeyless.akeylessGWApiURL, so only the controller's --akeyless-url and the URLs of its --allowed-gateway-url (AKEYLESS_CSI_ALLOWED_GATEWAY_URLS) may receive it; {fix}, or ask the admin to allow the URL",
                self.url
            ),
        })
    }

    /// Kubernetes auth is validated by a Gateway (TokenReview), never by SaaS.
    fn check_gateway(&self) -> Result<(), StoreError> {
        if !is_saas(self.url) {
            return Ok(());
        }
        Err(StoreError::Auth {
            store: self.store.to_owned(),
            problem: format!(
                "Kubernetes auth is validated by your Akeyless Gateway, not by {}: set spec.provider.akeyless.akeylessGWApiURL to the Gateway's API (https://<gateway>:8000/api/v2, or :8081)",
                self.url
            ),
        })
    }

    /// The namespace of a ServiceAccount a store names: the SecretStore's own, the one the
    /// reference names, else (a ClusterSecretStore's `azure_ad`, as ESO) the ExternalSecret's.
    fn account_namespace(&self, sa: &ServiceAccountRef) -> Result<String, StoreError> {
        match (self.namespace, sa.namespace.as_deref(), self.user) {
            (Some(ns), _, _) | (None, Some(ns), _) | (None, None, Some(ns)) => Ok(ns.to_owned()),
            (None, None, None) => Err(StoreError::Deferred {
                store: self.store.to_owned(),
                reason: format!(
                    "{}.namespace is unset, so the ServiceAccount is the one of each ExternalSecret's namespace",
                    sa.field
                ),
            }),
        }
    }

    /// A Kubernetes call of the auth stage failed: unavailable (retried) or refused.
    fn auth_error(&self, error: AuthError) -> StoreError {
        match error {
            AuthError::Exchange(e) if !e.rejected => StoreError::Unavailable {
                store: self.store.to_owned(),
                problem: e.to_string(),
            },
            AuthError::DeadlineExceeded | AuthError::Internal => StoreError::Unavailable {
                store: self.store.to_owned(),
                problem: error.to_string(),
            },
            other => self.reference(auth_problem(other)),
        }
    }
}

/// `Secret shop/creds key "accessId" (named by ...)`, for messages.
fn describe_key(selector: &KeySelector, scope: &Scope<'_>) -> String {
    format!(
        "{} {}/{} key {:?} (named by {})",
        selector.kind.as_str(),
        scope.namespace_of(selector.namespace.as_deref()),
        selector.name,
        selector.key,
        selector.field
    )
}

/// An access type from a Secret, quoted only when it looks like one: keys mixed up in the
/// Secret must not put a credential into a status.
fn shown_type(text: &str) -> String {
    if text.len() <= 24
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        format!("{text:?}")
    } else {
        format!(
            "the value (of {} characters, not shown)",
            text.chars().count()
        )
    }
}

/// A JWT for the auth stage, under the audience it looks it up by.
fn insert_token(pod: &mut PodInfo, audience: &str, token: SecretString) {
    pod.tokens.insert(
        audience.to_owned(),
        crate::params::PodToken {
            token,
            expiration: None,
        },
    );
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
    /// `caBundle` or `caProvider`: the roots its Akeyless calls trust instead of the system's.
    pub ca: Option<CaSource>,
    /// ClusterSecretStore `conditions`: who may use it.
    pub conditions: Vec<Condition>,
}

/// Where a store's CA certificates come from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// `caBundle`, parsed.
    Bundle(TrustRoots),
    /// `caProvider`: a key of a Secret or ConfigMap.
    Provider(KeySelector),
}

/// A ServiceAccount a store names (`serviceAccountRef`).
#[derive(Debug, Clone)]
pub struct ServiceAccountRef {
    pub name: String,
    /// Required for a ClusterSecretStore's `kubernetesAuth`; for its `azure_ad` workload
    /// identity, the ExternalSecret's namespace when unset (as ESO); must be empty or the
    /// store's own for a SecretStore.
    pub namespace: Option<String>,
    pub audiences: Vec<String>,
    /// The field that names it, for messages.
    pub field: String,
}

/// A key of a Secret (or, for `caProvider`, a ConfigMap) a store names.
#[derive(Debug, Clone)]
pub struct KeySelector {
    pub kind: RefKind,
    pub name: String,
    pub key: String,
    /// Required for a ClusterSecretStore; must be empty or the store's own for a SecretStore.
    pub namespace: Option<String>,
    /// The field that names it, for messages.
    pub field: String,
}

/// A key of a Secret a store names.
pub type SecretKeySelector = KeySelector;

/// The kind of object a [`KeySelector`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Secret,
    ConfigMap,
}

impl RefKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
        }
    }
}

/// Where the JWT of `kubernetesAuth` comes from.
#[derive(Debug, Clone)]
pub enum KubeToken {
    /// A token requested for this ServiceAccount (TokenRequest).
    ServiceAccount(ServiceAccountRef),
    /// A JWT stored in a Secret (key `token` by default).
    Secret(SecretKeySelector),
    /// The controller's own ServiceAccount token.
    Own,
}

/// `authSecretRef`.
#[derive(Debug, Clone)]
pub enum Auth {
    SecretRef(Box<SecretRefAuth>),
    Kubernetes {
        access_id: String,
        config_name: String,
        token: KubeToken,
    },
}

/// `authSecretRef.secretRef` (and `serviceAccountRef`, which goes with it).
#[derive(Debug, Clone)]
pub struct SecretRefAuth {
    pub access_id: SecretKeySelector,
    pub access_type: SecretKeySelector,
    pub access_type_param: Option<SecretKeySelector>,
    /// `authSecretRef.serviceAccountRef`: AKS workload identity for `azure_ad` (ignored for
    /// other access types, as by ESO).
    pub service_account: Option<ServiceAccountRef>,
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
    ca_provider: Option<RawCaProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaProvider {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAuth {
    #[serde(default)]
    secret_ref: Option<RawSecretRef>,
    #[serde(default)]
    kubernetes_auth: Option<RawKubernetesAuth>,
    #[serde(default)]
    service_account_ref: Option<RawServiceAccountRef>,
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
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
}

/// The `akeyless` block of a store spec that is ours: an Akeyless provider, and our class (or
/// none, unless `--skip-unclassed`); `None` for another provider's or controller's store.
fn claimed(spec: &Value, options: &ControllerOptions) -> Option<Value> {
    let raw: RawStoreSpec = serde_json::from_value(spec.clone()).unwrap_or_default();
    let akeyless = raw.provider.as_ref().and_then(|p| p.get("akeyless"))?;
    match raw.controller.as_deref().map(str::trim) {
        None | Some("") if options.skip_unclassed => None,
        None | Some("") => Some(akeyless.clone()),
        Some(class) if class == options.class => Some(akeyless.clone()),
        Some(_) => None,
    }
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
    let Some(akeyless) = claimed(spec, options) else {
        return Ok(None);
    };
    let cluster = kind == StoreKind::ClusterSecretStore;
    let raw: RawAkeyless = match serde_json::from_value(akeyless) {
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
    let home = Home { cluster, namespace };
    let reference_namespace =
        |field: &str, raw: Option<String>, what: &str, problems: &mut Problems| {
            home.reference_namespace(field, raw, what, problems)
        };
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
        Some(SecretKeySelector {
            kind: RefKind::Secret,
            name: raw.name.trim().to_owned(),
            key,
            namespace: reference_namespace(field, raw.namespace, "Secret", problems),
            field: field.to_owned(),
        })
    };
    let ca = ca_source(
        raw.ca_bundle.as_deref(),
        raw.ca_provider,
        &mut problems,
        &home,
    );
    // A ServiceAccount reference; `namespace_required`: a ClusterSecretStore must name it.
    let service_account = |field: &str,
                           raw: RawServiceAccountRef,
                           namespace_required: bool,
                           problems: &mut Problems| {
        if raw.name.trim().is_empty() {
            problems.push(format!("{field}.name is missing"));
        }
        if raw.audiences.iter().any(|a| a.trim().is_empty()) {
            problems.push(format!("{field}.audiences: an audience is empty"));
        }
        let given = raw
            .namespace
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        let namespace = if cluster && !namespace_required {
            given
        } else {
            reference_namespace(field, given, "ServiceAccount", problems)
        };
        ServiceAccountRef {
            name: raw.name.trim().to_owned(),
            namespace,
            audiences: raw
                .audiences
                .into_iter()
                .map(|a| a.trim().to_owned())
                .collect(),
            field: field.to_owned(),
        }
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
                (Some(sa), _) => KubeToken::ServiceAccount(service_account(
                    &format!("{base}.serviceAccountRef"),
                    sa,
                    true,
                    &mut problems,
                )),
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
            let service_account = service_account_ref.map(|sa| {
                service_account(
                    "spec.provider.akeyless.authSecretRef.serviceAccountRef",
                    sa,
                    false,
                    &mut problems,
                )
            });
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
                (Some(access_id), Some(access_type)) => {
                    Some(Auth::SecretRef(Box::new(SecretRefAuth {
                        access_id,
                        access_type,
                        access_type_param,
                        service_account,
                    })))
                }
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
    for (i, c) in raw_conditions(spec, &mut problems).into_iter().enumerate() {
        if !cluster {
            problems.push("spec.conditions applies to ClusterSecretStores only");
            break;
        }
        let mut regexes = Vec::new();
        for (j, e) in c
            .namespace_selector
            .iter()
            .flat_map(|s| &s.match_expressions)
            .enumerate()
        {
            if !matches!(
                e.operator.as_str(),
                "In" | "NotIn" | "Exists" | "DoesNotExist"
            ) {
                problems.push(format!(
                    "spec.conditions[{i}].namespaceSelector.matchExpressions[{j}].operator {:?} is not In, NotIn, Exists or DoesNotExist",
                    e.operator
                ));
            }
        }
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
            ca,
            conditions,
        })),
        _ => Err(problems),
    }
}

/// Where a store lives, which decides where the objects it references may live.
struct Home<'a> {
    cluster: bool,
    /// A SecretStore's namespace.
    namespace: &'a str,
}

impl Home<'_> {
    /// The namespace a reference names: a ClusterSecretStore must name one, a SecretStore may
    /// name only its own.
    fn reference_namespace(
        &self,
        field: &str,
        raw: Option<String>,
        what: &str,
        problems: &mut Problems,
    ) -> Option<String> {
        let namespace = self.namespace;
        let given = raw.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        match (self.cluster, given.as_deref()) {
            (true, None) => problems.push(format!(
                "{field}.namespace is missing: a ClusterSecretStore must name the namespace of each {what} it reads"
            )),
            (false, Some(ns)) if ns != namespace => problems.push(format!(
                "{field}.namespace {ns:?}: a SecretStore reads {what}s of its own namespace {namespace:?} only; remove it"
            )),
            _ => {}
        }
        given
    }
}

/// `caBundle` (base64 of PEM in YAML; a bundle encoded twice, or PEM as is, is accepted too,
/// as ESO does) wins over `caProvider`, as with ESO.
fn ca_source(
    bundle: Option<&str>,
    provider: Option<RawCaProvider>,
    problems: &mut Problems,
    home: &Home<'_>,
) -> Option<CaSource> {
    if let Some(bundle) = bundle.map(str::trim).filter(|b| !b.is_empty()) {
        return match TrustRoots::from_pem(&ca_bundle_text(bundle)) {
            Ok(roots) => Some(CaSource::Bundle(roots)),
            Err(why) => {
                problems.push(format!(
                    "spec.provider.akeyless.caBundle {why}; set it to the base64 of the PEM certificate(s) of the CA that signed the Gateway's certificate"
                ));
                None
            }
        };
    }
    let raw = provider?;
    let field = "spec.provider.akeyless.caProvider";
    let kind = match raw.kind.trim() {
        "Secret" => RefKind::Secret,
        "ConfigMap" => RefKind::ConfigMap,
        other => {
            problems.push(format!("{field}.type {other:?} is not Secret or ConfigMap"));
            RefKind::Secret
        }
    };
    if raw.name.trim().is_empty() {
        problems.push(format!("{field}.name is missing"));
    }
    if raw.key.trim().is_empty() {
        problems.push(format!(
            "{field}.key is missing; name the key that holds the PEM CA certificate(s)"
        ));
    }
    let namespace = home.reference_namespace(field, raw.namespace, kind.as_str(), problems);
    Some(CaSource::Provider(KeySelector {
        kind,
        name: raw.name.trim().to_owned(),
        key: raw.key.trim().to_owned(),
        namespace,
        field: field.to_owned(),
    }))
}

/// The PEM text of a `caBundle`: base64 of PEM (the API's `[]byte`), base64 of that again,
/// or PEM as is.
fn ca_bundle_text(bundle: &str) -> String {
    use base64::Engine as _;
    let decode = |text: &str| {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    };
    if bundle.contains("-----BEGIN") {
        return bundle.to_owned();
    }
    match decode(bundle) {
        Some(text) if text.contains("-----BEGIN") => text,
        Some(text) => decode(&text).unwrap_or(text),
        None => bundle.to_owned(),
    }
}

/// A ClusterSecretStore's `conditions`; conditions that cannot be read are a problem, never
/// none (which would open the store to every namespace).
fn raw_conditions(spec: &Value, problems: &mut Problems) -> Vec<RawCondition> {
    match spec.get("conditions").filter(|c| !c.is_null()) {
        None => Vec::new(),
        Some(c) => serde_json::from_value(c.clone()).unwrap_or_else(|e| {
            problems.push(format!("spec.conditions: {}", eso::shape_error(&e)));
            Vec::new()
        }),
    }
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

/// ESO's reasons of a store's `Ready` condition.
const VALID: &str = "Valid";
const INVALID_STORE_CONFIGURATION: &str = "InvalidStoreConfiguration";
const INVALID_PROVIDER_CONFIG: &str = "InvalidProviderConfig";
const VALIDATION_FAILED: &str = "ValidationFailed";
const VALIDATION_UNKNOWN: &str = "ValidationUnknown";

/// What a store's validation found: its `Ready` condition, and when to look again.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    ready: bool,
    reason: &'static str,
    message: String,
    retry: Retry,
}

#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// Only a change of the store can help.
    OnChange,
    /// Something was unavailable: soon.
    Soon,
    /// At the next periodic validation (a referenced object or Akeyless may change unseen).
    Revalidate,
}

impl Verdict {
    /// A store whose identity could not be formed. `ValidationUnknown` is `Ready=True` where
    /// nothing is known to be wrong (as ESO writes it: the identity depends on each
    /// ExternalSecret), `Ready=False` where something needed was unavailable.
    fn unresolved(error: &StoreError) -> Self {
        let (ready, reason, retry) = match error {
            StoreError::Invalid { .. } => (false, INVALID_PROVIDER_CONFIG, Retry::OnChange),
            StoreError::Unavailable { .. } => (false, VALIDATION_UNKNOWN, Retry::Soon),
            StoreError::Deferred { .. } => (true, VALIDATION_UNKNOWN, Retry::Revalidate),
            StoreError::NotOurs(_)
            | StoreError::NotFound { .. }
            | StoreError::NotAllowed { .. }
            | StoreError::Reference { .. }
            | StoreError::Auth { .. } => (false, INVALID_STORE_CONFIGURATION, Retry::Revalidate),
        };
        let message = match error {
            StoreError::Unavailable { .. } => {
                format!("could not determine validation status: {error}")
            }
            StoreError::Deferred { .. } => {
                format!("{error}; each ExternalSecret that uses it validates it by its login")
            }
            _ => error.to_string(),
        };
        Self {
            ready,
            reason,
            message,
            retry,
        }
    }

    /// A store whose login failed: refused (`ValidationFailed`), unusable as configured
    /// (`InvalidStoreConfiguration`), or not known (`ValidationUnknown`).
    fn login_failed(store: &str, error: AuthError) -> Self {
        use crate::akeyless::ApiError;
        let (ready, reason, retry) = match &error {
            AuthError::Api(ApiError::Unauthorized { .. })
            | AuthError::Api(ApiError::NotFound { .. })
            | AuthError::Api(ApiError::Rejected { .. }) => {
                (false, VALIDATION_FAILED, Retry::Revalidate)
            }
            AuthError::Exchange(e) if e.rejected => (false, VALIDATION_FAILED, Retry::Revalidate),
            AuthError::Missing(_) | AuthError::NotAllowed(_) | AuthError::Precondition(_) => {
                (false, INVALID_STORE_CONFIGURATION, Retry::Revalidate)
            }
            AuthError::Api(_)
            | AuthError::Exchange(_)
            | AuthError::DeadlineExceeded
            | AuthError::Internal => (false, VALIDATION_UNKNOWN, Retry::Soon),
        };
        let message = if reason == VALIDATION_UNKNOWN {
            format!(
                "{store}: could not determine validation status: the login did not complete: {}",
                auth_problem(error)
            )
        } else {
            format!("{store}: the login failed: {}", auth_problem(error))
        };
        Self {
            ready,
            reason,
            message,
            retry,
        }
    }
}

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
    let verdict = match spec {
        Err(problems) => Verdict {
            ready: false,
            reason: INVALID_PROVIDER_CONFIG,
            message: format!("invalid store: {problems}"),
            retry: Retry::OnChange,
        },
        Ok(_) => match ctx.stores.resolve(kind, &object, None).await {
            Err(e) => Verdict::unresolved(&e),
            Ok(access) => {
                let deadline = Deadline::after(ctx.options.refresh_timeout);
                match ctx.auth.token(&access.identity, deadline).await {
                    Ok(_) => Verdict {
                        ready: true,
                        reason: VALID,
                        message: "store validated".to_owned(),
                        retry: Retry::Revalidate,
                    },
                    Err(e) => Verdict::login_failed(&access.store, e),
                }
            }
        },
    };
    let (status, reason, message) = (verdict.ready, verdict.reason, verdict.message);
    let action = match verdict.retry {
        Retry::OnChange => Action::await_change(),
        Retry::Soon => Action::requeue(Duration::from_secs(30)),
        Retry::Revalidate => revalidate,
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

#[cfg(test)]
mod tests;

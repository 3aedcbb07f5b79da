//! From a mount's parameters to the [`Identity`] it acts as, under the admin's rules.
//!
//! Sync and network-free: it only picks what proves the identity. The rules:
//! - an SPC with an access id brings its own credential (nodePublishSecretRef or pod token);
//! - an SPC without one gets the provider's identity (`AKEYLESS_*`), whose secret parts (access
//!   key, uid token) go only to allowed URLs;
//! - pod tokens are chosen by audience; a missing one is a clear error naming `tokenRequests`;
//! - the node's cloud identity stands in for a missing pod identity only with `--node-identity`
//!   and only towards allowed URLs.

use url::Url;

use super::kube::BoundToken;
use super::settings::AuthSettings;
use super::{AuthError, Identity, PodJwt, Proof, Setting, aws, azure, gcp};
use crate::params::{AccessConfig, AccessType, MountConfig, PodInfo, keys};

/// The audience of the pod token for `k8s`, `jwt` and `oidc` when the SPC names none.
pub const DEFAULT_AUDIENCE: &str = "akeyless";

/// What resolution needs to know about one mount.
pub(super) struct Ctx<'a> {
    pub settings: &'a AuthSettings,
    pub base: &'a Url,
    pub access: &'a AccessConfig,
    pub pod: &'a PodInfo,
    pub access_type: AccessType,
}

impl Ctx<'_> {
    /// The pod's token for `audience` as the driver sent it, if it did.
    pub fn sent_token(&self, audience: &str) -> Option<PodJwt> {
        self.pod
            .tokens
            .get(audience)
            .map(|t| PodJwt::Sent(t.token.clone(), audience.to_owned()))
    }

    /// The pod's token for `audience`: sent by the driver, else (with `--token-request`, for a
    /// pod the kubelet named) to be requested for the pod.
    pub fn pod_token(&self, audience: &str) -> Option<PodJwt> {
        self.sent_token(audience).or_else(|| {
            let pod = self.pod;
            let known = [&pod.namespace, &pod.service_account, &pod.name, &pod.uid]
                .iter()
                .all(|part| !part.is_empty());
            (self.settings.token_request && known).then(|| {
                PodJwt::Requested(Box::new(BoundToken {
                    namespace: pod.namespace.clone(),
                    service_account: pod.service_account.clone(),
                    pod_name: pod.name.clone(),
                    pod_uid: pod.uid.clone(),
                    audience: audience.to_owned(),
                }))
            })
        })
    }

    /// The pod's token for the SPC's audience (or `default`), or the actionable error.
    pub fn required_pod_token(&self, default: &str) -> Result<PodJwt, AuthError> {
        let audience = self.audience(default);
        self.pod_token(audience)
            .ok_or_else(|| AuthError::Precondition(self.missing_audience(audience, "")))
    }

    /// `given` (an SPC parameter), else the pod's ServiceAccount annotation (`--token-request`).
    pub fn setting(
        &self,
        given: &Option<String>,
        annotation: &'static str,
        parameter: &'static str,
    ) -> Option<Setting> {
        if let Some(value) = given {
            return Some(Setting::Given(value.clone()));
        }
        let pod = self.pod;
        (self.settings.token_request
            && !pod.namespace.is_empty()
            && !pod.service_account.is_empty())
        .then(|| Setting::Annotation {
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            annotation,
            parameter,
        })
    }

    /// `akeylessTokenAudience`, else `default`.
    pub fn audience<'s>(&'s self, default: &'s str) -> &'s str {
        self.access.token_audience.as_deref().unwrap_or(default)
    }

    /// The message for a token the driver did not send: what the admin adds where.
    pub fn missing_audience(&self, audience: &str, alternative: &str) -> String {
        let sent: Vec<String> = self.pod.tokens.keys().map(|a| format!("{a:?}")).collect();
        let sent = if sent.is_empty() {
            "none: the CSIDriver has no tokenRequests".to_owned()
        } else {
            format!("only {}", sent.join(", "))
        };
        let shown = if audience.is_empty() {
            "\"\" (the kube-apiserver's)".to_owned()
        } else {
            format!("{audience:?}")
        };
        format!(
            "akeylessAccessType {}: the driver sent no service-account token of the pod for audience \
             {shown} (it sent {sent}). Ask the cluster admin to add {{audience: {shown}}} to \
             spec.tokenRequests of the CSIDriver secrets-store.csi.k8s.io (Helm chart of the driver: \
             --set tokenRequests[0].audience={audience}){alternative}, or set {} to an audience it \
             already requests{}",
            self.access_type,
            keys::TOKEN_AUDIENCE,
            if self.settings.token_request {
                ""
            } else {
                " (or the admin lets the provider request it: --token-request)"
            }
        )
    }

    /// The provider's own `what` may be sent to this mount's URL only if the admin allows it.
    pub fn provider_credential_allowed(&self, what: &str) -> Result<(), AuthError> {
        if self.settings.allows(self.base) {
            return Ok(());
        }
        Err(AuthError::NotAllowed(format!(
            "refusing to send {what} to {}: the SecretProviderClass chose that URL and it is not \
             --akeyless-url or in the admin's --allowed-gateway-url list \
             (AKEYLESS_CSI_ALLOWED_GATEWAY_URLS). Give the SecretProviderClass its own \
             credentials, or ask the admin to allow the URL",
            self.base
        )))
    }

    /// The node's cloud identity, if the admin enabled it and the URL is allowed; `missing`
    /// says what the pod lacks.
    pub fn node_identity(&self, what: &str, missing: &str) -> Result<(), AuthError> {
        if !self.settings.node_identity {
            return Err(AuthError::Precondition(format!(
                "{missing}; the node's identity ({what}) is disabled (the admin can enable it with \
                 --node-identity, AKEYLESS_CSI_NODE_IDENTITY=true)"
            )));
        }
        self.provider_credential_allowed(&format!("the node's identity ({what})"))
    }
}

/// The identity of a mount that calls `base`.
pub(super) fn identity(
    settings: &AuthSettings,
    base: Url,
    config: &MountConfig,
) -> Result<Identity, AuthError> {
    let access = &config.access;
    let provider = &settings.provider;
    // No access id in the SPC: the provider's own identity, as with the Go provider's env.
    let from_provider = access.access_id.is_empty();
    let access_id = if from_provider {
        provider.access_id.clone().ok_or_else(|| {
            AuthError::Missing(format!(
                "{}: missing; set it to the Access ID of the Akeyless auth method (p-...) \
                 (the provider has no default access id, AKEYLESS_ACCESS_ID)",
                keys::ACCESS_ID
            ))
        })?
    } else {
        access.access_id.clone()
    };
    let access_type = access
        .access_type
        .or(if from_provider {
            provider.access_type
        } else {
            None
        })
        .unwrap_or(AccessType::AccessKey);
    let ctx = Ctx {
        settings,
        base: &base,
        access,
        pod: &config.pod,
        access_type,
    };

    let proof = match access_type {
        AccessType::AccessKey => match (&access.access_key, &provider.access_key) {
            (Some(key), _) => Proof::AccessKey(key.clone()),
            (None, Some(key)) if from_provider => {
                ctx.provider_credential_allowed("the provider's access key (AKEYLESS_ACCESS_KEY)")?;
                Proof::AccessKey(key.clone())
            }
            _ => {
                return Err(AuthError::Missing(format!(
                    "{}: missing; put the access key under key {} of the Secret named in the \
                     volume's nodePublishSecretRef",
                    keys::ACCESS_KEY,
                    keys::ACCESS_KEY
                )));
            }
        },
        AccessType::UniversalIdentity => match (&access.uid_token, &provider.uid_token) {
            (Some(token), _) => Proof::Uid(token.clone()),
            (None, Some(token)) if from_provider => {
                ctx.provider_credential_allowed(
                    "the provider's Universal Identity token (AKEYLESS_UID_INIT_TOKEN)",
                )?;
                Proof::Uid(token.clone())
            }
            _ => {
                return Err(AuthError::Missing(format!(
                    "{}: missing; put the Universal Identity token (u-...) under key {} of the \
                     Secret named in the volume's nodePublishSecretRef",
                    keys::UID_TOKEN,
                    keys::UID_TOKEN
                )));
            }
        },
        AccessType::K8s => {
            let config_name = access
                .k8s_auth_config_name
                .clone()
                .or_else(|| provider.k8s_auth_config_name.clone())
                .ok_or_else(|| {
                    AuthError::Missing(format!(
                        "{}: missing; set it to the name of the Kubernetes auth config on your \
                         Akeyless Gateway",
                        keys::K8S_AUTH_CONFIG_NAME
                    ))
                })?;
            if is_saas(&base) {
                return Err(AuthError::Precondition(format!(
                    "akeylessAccessType k8s: Kubernetes auth is validated by your Akeyless Gateway, \
                     not by {base}; set {} to the Gateway's API, e.g. https://<gateway>:8000/api/v2",
                    keys::GATEWAY_URL
                )));
            }
            let token = ctx.required_pod_token(DEFAULT_AUDIENCE)?;
            Proof::K8s { config_name, token }
        }
        AccessType::Jwt | AccessType::Oidc => Proof::Jwt(ctx.required_pod_token(DEFAULT_AUDIENCE)?),
        AccessType::AzureAd => Proof::Azure(azure::proof(&ctx)?),
        AccessType::AwsIam => Proof::Aws(aws::proof(&ctx)?),
        AccessType::Gcp => Proof::Gcp(gcp::proof(&ctx)?),
    };
    Ok(Identity::new(base, access_type, access_id, proof))
}

/// Akeyless SaaS (`api.akeyless.io`, `api.eu.akeyless.io`, ...), which cannot validate a
/// cluster's service-account tokens.
fn is_saas(url: &Url) -> bool {
    url.host_str().is_some_and(|h| {
        let h = h.to_ascii_lowercase();
        h == "akeyless.io" || h.ends_with(".akeyless.io")
    })
}

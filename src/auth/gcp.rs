//! `gcp`: the `cloud-id` is base64 of a Google-signed ID token for the Akeyless audience
//! (`akeylessGCPAudience`, default `akeyless.io`; akeyless-api.md §1.3). For the pod it comes
//! through GKE workload identity: its service-account token is exchanged at Google STS for a
//! federated access token, which impersonates the Google service account bound to it
//! (`generateIdToken`). When the admin enables it, the node's metadata server issues it instead.

use base64::Engine as _;
use serde_json::json;
use url::Url;

use super::exchange::json_field;
use super::resolve::Ctx;
use super::settings::endpoint;
use super::{AuthError, LoginCtx, PodJwt, Setting};
use crate::params::{AccessConfig, keys};
use crate::secret::SecretString;

/// The server's default `gcp-audience`.
pub const DEFAULT_GCP_AUDIENCE: &str = "akeyless.io";

#[derive(Clone)]
pub(super) enum Proof {
    Workload {
        token: PodJwt,
        sts_audience: String,
        service_account: Setting,
        audience: String,
    },
    Node {
        audience: String,
    },
}

pub(super) fn proof(ctx: &Ctx<'_>) -> Result<Proof, AuthError> {
    let audience = ctx
        .access
        .gcp_audience
        .clone()
        .or_else(|| ctx.settings.provider.gcp_audience.clone())
        .unwrap_or_else(|| DEFAULT_GCP_AUDIENCE.to_owned());
    if let Some(sts_audience) = &ctx.access.gcp_workload_identity_audience {
        let token_audience = token_audience(ctx.access).ok_or_else(|| {
            AuthError::Missing(format!(
                "{}: missing; name the audience of the pod's token that {} accepts",
                keys::TOKEN_AUDIENCE,
                keys::GCP_WORKLOAD_IDENTITY_AUDIENCE
            ))
        })?;
        let token = ctx
            .pod_token(token_audience)
            .ok_or_else(|| AuthError::Precondition(ctx.missing_audience(token_audience, "")))?;
        let service_account = ctx
            .setting(
                &ctx.access.gcp_service_account,
                "iam.gke.io/gcp-service-account",
                keys::GCP_SERVICE_ACCOUNT,
            )
            .ok_or_else(|| {
                AuthError::Missing(format!(
                    "{}: missing; set it to the Google service account the pod's Kubernetes \
                     service account may impersonate (its iam.gke.io/gcp-service-account annotation)",
                    keys::GCP_SERVICE_ACCOUNT
                ))
            })?;
        if let Setting::Given(email) = &service_account {
            check_service_account(email)?;
        }
        return Ok(Proof::Workload {
            token,
            sts_audience: sts_audience.clone(),
            service_account,
            audience,
        });
    }
    let missing = format!(
        "akeylessAccessType gcp: the pod's workload identity is not configured (set {} and {})",
        keys::GCP_WORKLOAD_IDENTITY_AUDIENCE,
        keys::GCP_SERVICE_ACCOUNT
    );
    ctx.node_identity("the node's GCP metadata server", &missing)?;
    Ok(Proof::Node { audience })
}

/// The audience of the pod's token for a workload identity pool: `akeylessTokenAudience`, else
/// the pool itself, which GKE's form `identitynamespace:<project>.svc.id.goog:<cluster URL>`
/// names; other pools need it spelled out.
pub(super) fn token_audience(access: &AccessConfig) -> Option<&str> {
    let sts_audience = access.gcp_workload_identity_audience.as_deref()?;
    let pool = sts_audience
        .strip_prefix("identitynamespace:")
        .and_then(|rest| rest.split(':').next())
        .filter(|p| !p.is_empty());
    access.token_audience.as_deref().or(pool)
}

fn check_service_account(email: &str) -> Result<(), AuthError> {
    if email.contains('@') && !email.contains('/') && !email.contains(char::is_whitespace) {
        return Ok(());
    }
    Err(AuthError::Missing(format!(
        "{}: {email:?} is not a service account email",
        keys::GCP_SERVICE_ACCOUNT
    )))
}

impl Proof {
    /// The pod token it uses; `None` and `true`: the node's identity.
    pub fn pod_token(&self) -> (Option<&PodJwt>, bool) {
        match self {
            Self::Workload { token, .. } => (Some(token), false),
            Self::Node { .. } => (None, true),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Workload { .. } => "gcp workload identity",
            Self::Node { .. } => "gcp node metadata identity",
        }
    }

    pub fn key_parts(&self) -> Vec<&str> {
        match self {
            Self::Workload {
                token,
                sts_audience,
                service_account,
                audience,
            } => {
                let mut parts = vec![sts_audience.as_str(), service_account.key_part(), audience];
                parts.extend(token.key_parts());
                parts
            }
            Self::Node { audience } => vec![audience],
        }
    }

    pub fn audience(&self) -> &str {
        match self {
            Self::Workload { audience, .. } | Self::Node { audience } => audience,
        }
    }

    pub async fn cloud_id(&self, login: &LoginCtx<'_>) -> Result<SecretString, AuthError> {
        let (http, endpoints, deadline) = (login.http, &login.settings.endpoints, login.deadline);
        let id_token = match self {
            Self::Workload {
                token,
                sts_audience,
                service_account,
                audience,
            } => {
                const STS: &str = "Google STS token exchange";
                let service_account = service_account.get(login).await?;
                check_service_account(&service_account)?;
                let token = token.get(login).await?;
                let url = endpoint(&endpoints.gcp_sts, "v1/token");
                let request = json!({
                    "audience": sts_audience,
                    "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
                    "scope": "https://www.googleapis.com/auth/cloud-platform",
                    "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
                    "subjectToken": token.expose(),
                });
                let build = || http.client().post(&url).json(&request);
                let body = http.send(STS, build, &[token.expose()], deadline).await?;
                let access = SecretString::new(json_field(STS, &body, "/access_token")?);

                const IAM: &str = "Google IAM credentials generateIdToken";
                let url = endpoint(
                    &endpoints.gcp_iam_credentials,
                    &format!("v1/projects/-/serviceAccounts/{service_account}:generateIdToken"),
                );
                let request = json!({ "audience": audience, "includeEmail": true });
                let build = || {
                    http.client()
                        .post(&url)
                        .bearer_auth(access.expose())
                        .json(&request)
                };
                let body = http.send(IAM, build, &[access.expose()], deadline).await?;
                SecretString::new(json_field(IAM, &body, "/token")?)
            }
            Self::Node { audience } => {
                const SERVICE: &str = "GCP metadata server";
                let mut url = Url::parse(&endpoint(
                    &endpoints.gcp_metadata,
                    "computeMetadata/v1/instance/service-accounts/default/identity",
                ))
                .map_err(|_| AuthError::Internal)?;
                url.query_pairs_mut()
                    .append_pair("audience", audience)
                    .append_pair("format", "full");
                let build = || {
                    http.client()
                        .get(url.clone())
                        .header("Metadata-Flavor", "Google")
                };
                let body = http.send(SERVICE, build, &[], deadline).await?;
                SecretString::new(String::from_utf8_lossy(&body).trim().to_owned())
            }
        };
        Ok(SecretString::new(
            base64::engine::general_purpose::STANDARD.encode(id_token.expose()),
        ))
    }
}

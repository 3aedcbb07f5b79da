//! `azure_ad`: the `cloud-id` is base64 of an Entra ID access token for Azure Resource Manager
//! (akeyless-api.md §1.3), obtained for the pod through AKS workload identity — its
//! service-account token for `api://AzureADTokenExchange` is the client assertion of a
//! client-credentials grant — or, when the admin enables it, from the node's managed identity
//! (IMDS).

use base64::Engine as _;
use url::Url;

use super::exchange::json_field;
use super::resolve::Ctx;
use super::settings::endpoint;
use super::{AuthError, LoginCtx, PodJwt, Setting};
use crate::params::keys;
use crate::secret::SecretString;

/// The audience AKS workload identity federates.
pub const WORKLOAD_IDENTITY_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The resource whose token Akeyless validates.
const RESOURCE: &str = "https://management.azure.com/";

#[derive(Clone)]
pub(super) enum Proof {
    Workload {
        token: PodJwt,
        client_id: Setting,
        tenant_id: Setting,
    },
    Node {
        object_id: Option<String>,
    },
}

pub(super) fn proof(ctx: &Ctx<'_>) -> Result<Proof, AuthError> {
    let audience = ctx.audience(WORKLOAD_IDENTITY_AUDIENCE);
    if let Some(token) = ctx.pod_token(audience) {
        let client_id = ctx
            .setting(
                &ctx.access.azure_client_id,
                "azure.workload.identity/client-id",
                keys::AZURE_CLIENT_ID,
            )
            .ok_or_else(|| {
                AuthError::Missing(format!(
                    "{}: missing; set it to the client id of the pod's workload identity (the \
                     azure.workload.identity/client-id annotation of its service account)",
                    keys::AZURE_CLIENT_ID
                ))
            })?;
        let tenant = ctx
            .access
            .azure_tenant_id
            .clone()
            .or_else(|| ctx.settings.azure_tenant_id.clone());
        let tenant_id = ctx
            .setting(
                &tenant,
                "azure.workload.identity/tenant-id",
                keys::AZURE_TENANT_ID,
            )
            .ok_or_else(|| {
                AuthError::Missing(format!(
                    "{}: missing; set it to the Entra tenant id of the workload identity (or the \
                     admin sets --azure-tenant-id)",
                    keys::AZURE_TENANT_ID
                ))
            })?;
        for (name, setting) in [
            (keys::AZURE_CLIENT_ID, &client_id),
            (keys::AZURE_TENANT_ID, &tenant_id),
        ] {
            if let Setting::Given(value) = setting {
                check_id(name, value)?;
            }
        }
        return Ok(Proof::Workload {
            token,
            client_id,
            tenant_id,
        });
    }
    let missing = ctx.missing_audience(
        audience,
        " and give the pod's service account a workload identity",
    );
    ctx.node_identity("the node's managed identity (IMDS)", &missing)?;
    Ok(Proof::Node {
        object_id: ctx
            .access
            .azure_object_id
            .clone()
            .or_else(|| ctx.settings.provider.azure_object_id.clone()),
    })
}

/// Entra ids are GUIDs (tenants may be a domain name): nothing that could change the URL.
fn check_id(name: &str, value: &str) -> Result<(), AuthError> {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Ok(());
    }
    Err(AuthError::Missing(format!(
        "{name}: {value:?} is not an Entra id (a GUID)"
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

    /// The tenant of a workload identity, when known before the login.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Self::Workload {
                tenant_id: Setting::Given(tenant),
                ..
            } => Some(tenant),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Workload { .. } => "azure workload identity",
            Self::Node { .. } => "azure node managed identity",
        }
    }

    pub fn key_parts(&self) -> Vec<&str> {
        match self {
            Self::Workload {
                token,
                client_id,
                tenant_id,
            } => {
                let mut parts = vec![client_id.key_part(), tenant_id.key_part()];
                parts.extend(token.key_parts());
                parts
            }
            Self::Node { object_id } => vec![object_id.as_deref().unwrap_or("")],
        }
    }

    /// Exchanges the proof for an ARM access token and encodes it as the `cloud-id`.
    pub async fn cloud_id(&self, login: &LoginCtx<'_>) -> Result<SecretString, AuthError> {
        let (http, endpoints, deadline) = (login.http, &login.settings.endpoints, login.deadline);
        let body = match self {
            Self::Workload {
                token,
                client_id,
                tenant_id,
            } => {
                const SERVICE: &str = "Entra ID token endpoint";
                let client_id = client_id.get(login).await?;
                let tenant_id = tenant_id.get(login).await?;
                check_id(keys::AZURE_CLIENT_ID, &client_id)?;
                check_id(keys::AZURE_TENANT_ID, &tenant_id)?;
                let token = token.get(login).await?;
                let url = endpoint(
                    &endpoints.azure_authority,
                    &format!("{tenant_id}/oauth2/v2.0/token"),
                );
                let form = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credentials")
                    .append_pair("client_id", &client_id)
                    .append_pair("scope", &format!("{RESOURCE}.default"))
                    .append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", token.expose())
                    .finish();
                let build = || {
                    http.client()
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(form.clone())
                };
                let body = http
                    .send(SERVICE, build, &[token.expose()], deadline)
                    .await?;
                SecretString::new(json_field(SERVICE, &body, "/access_token")?)
            }
            Self::Node { object_id } => {
                const SERVICE: &str = "Azure instance metadata service";
                let mut url = Url::parse(&endpoint(
                    &endpoints.azure_imds,
                    "metadata/identity/oauth2/token",
                ))
                .map_err(|_| AuthError::Internal)?;
                url.query_pairs_mut()
                    .append_pair("api-version", "2018-02-01")
                    .append_pair("resource", RESOURCE);
                if let Some(id) = object_id {
                    url.query_pairs_mut().append_pair("object_id", id);
                }
                let build = || http.client().get(url.clone()).header("Metadata", "true");
                let body = http.send(SERVICE, build, &[], deadline).await?;
                SecretString::new(json_field(SERVICE, &body, "/access_token")?)
            }
        };
        Ok(SecretString::new(
            base64::engine::general_purpose::STANDARD.encode(body.expose()),
        ))
    }
}

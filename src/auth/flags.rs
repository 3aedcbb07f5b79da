//! The `serve` flags of identity: flattened into [`crate::cli::ServeArgs`], turned into
//! [`AuthSettings`] once at start-up.

use clap::Args;
use url::Url;

use super::settings::{AuthSettings, AwsCredentials, Endpoints, ProviderCredentials};
use crate::params::{AccessType, parse_gateway_url};
use crate::secret::SecretString;

#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Further Akeyless URLs (besides --akeyless-url) that may receive this process's own
    /// credentials: the provider's (AKEYLESS_ACCESS_KEY, AKEYLESS_UID_INIT_TOKEN) and the node's
    /// identity; the controller's ServiceAccount token and cloud identity. Repeat the flag or
    /// separate with commas.
    #[arg(long = "allowed-gateway-url", env = "AKEYLESS_CSI_ALLOWED_GATEWAY_URLS", value_delimiter = ',', value_parser = parse_url)]
    pub allowed_gateway_urls: Vec<Url>,
    /// Let the node's cloud identity (Azure managed identity, AWS node credentials, GCP
    /// metadata) stand in for a pod that has no workload identity. Off: every pod proves itself.
    #[arg(long, env = "AKEYLESS_CSI_NODE_IDENTITY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub node_identity: bool,

    /// When the driver sent no token for an audience, request one bound to the pod (TokenRequest),
    /// and read missing workload-identity settings from the pod's ServiceAccount annotations.
    /// Needs RBAC: create serviceaccounts/token, get serviceaccounts.
    #[arg(long, env = "AKEYLESS_CSI_TOKEN_REQUEST", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub token_request: bool,
    /// Kubernetes API server for --token-request (default: in-cluster configuration).
    #[arg(long, env = "AKEYLESS_CSI_KUBE_API_URL", value_parser = parse_url)]
    pub kube_api_url: Option<Url>,

    /// Access ID for SecretProviderClasses that set no akeylessAccessID (the provider's own).
    #[arg(long, env = "AKEYLESS_ACCESS_ID")]
    pub default_access_id: Option<String>,
    /// Access type that goes with --default-access-id.
    #[arg(long, env = "AKEYLESS_ACCESS_TYPE", value_parser = parse_access_type)]
    pub default_access_type: Option<AccessType>,
    /// Access key of the provider's own identity (prefer the environment variable).
    #[arg(long, env = "AKEYLESS_ACCESS_KEY", hide_env_values = true)]
    pub default_access_key: Option<String>,
    /// Universal Identity token (u-...) of the provider's own identity (prefer the variable).
    #[arg(long, env = "AKEYLESS_UID_INIT_TOKEN", hide_env_values = true)]
    pub default_uid_token: Option<String>,
    /// K8s auth config name for k8s SecretProviderClasses that set none.
    #[arg(long, env = "AKEYLESS_K8S_AUTH_CONFIG_NAME")]
    pub default_k8s_auth_config_name: Option<String>,
    /// Managed identity object id for node identity on Azure when the SPC (or store) sets none.
    #[arg(long, env = "AKEYLESS_AZURE_OBJECT_ID")]
    pub default_azure_object_id: Option<String>,
    /// gcp-audience for gcp SecretProviderClasses (and stores) that set none (Akeyless's
    /// default: akeyless.io).
    #[arg(long, env = "AKEYLESS_GCP_AUDIENCE")]
    pub default_gcp_audience: Option<String>,
    /// Entra tenant id of workload identities when the SPC sets no akeylessAzureTenantID (or a
    /// store's ServiceAccount has no azure.workload.identity/tenant-id annotation).
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,

    /// Entra ID authority host (sovereign clouds, tests).
    #[arg(long, env = "AZURE_AUTHORITY_HOST", default_value = "https://login.microsoftonline.com/", value_parser = parse_url)]
    pub azure_authority_host: Url,
    /// Azure instance metadata service (node identity).
    #[arg(long, env = "AKEYLESS_CSI_AZURE_IMDS_URL", default_value = "http://169.254.169.254", value_parser = parse_url)]
    pub azure_imds_url: Url,
    /// AWS STS endpoint for IRSA's AssumeRoleWithWebIdentity (e.g. a regional or FIPS one).
    #[arg(long, env = "AKEYLESS_CSI_AWS_STS_URL", default_value = "https://sts.amazonaws.com", value_parser = parse_url)]
    pub aws_sts_url: Url,
    /// EKS Pod Identity agent's credentials URL.
    #[arg(long, env = "AKEYLESS_CSI_EKS_POD_IDENTITY_URL", default_value = "http://169.254.170.23/v1/credentials", value_parser = parse_url)]
    pub eks_pod_identity_url: Url,
    /// AWS instance metadata service (node identity, IMDSv2).
    #[arg(long, env = "AKEYLESS_CSI_AWS_IMDS_URL", default_value = "http://169.254.169.254", value_parser = parse_url)]
    pub aws_imds_url: Url,
    /// Google STS (workload identity token exchange).
    #[arg(long, env = "AKEYLESS_CSI_GCP_STS_URL", default_value = "https://sts.googleapis.com", value_parser = parse_url)]
    pub gcp_sts_url: Url,
    /// Google IAM credentials API (generateIdToken).
    #[arg(long, env = "AKEYLESS_CSI_GCP_IAM_CREDENTIALS_URL", default_value = "https://iamcredentials.googleapis.com", value_parser = parse_url)]
    pub gcp_iam_credentials_url: Url,
    /// GCE/GKE metadata server (node identity).
    #[arg(long, env = "AKEYLESS_CSI_GCP_METADATA_URL", default_value = "http://metadata.google.internal", value_parser = parse_url)]
    pub gcp_metadata_url: Url,
}

impl IdentityArgs {
    /// The settings, with `default_url` (`--akeyless-url`) always allowed.
    pub fn settings(&self, default_url: &Url) -> AuthSettings {
        let secret = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(SecretString::new)
        };
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        AuthSettings {
            default_url: default_url.clone(),
            allowed_urls: self.allowed_gateway_urls.clone(),
            node_identity: self.node_identity,
            provider: ProviderCredentials {
                access_id: text(&self.default_access_id),
                access_type: self.default_access_type,
                access_key: secret(&self.default_access_key),
                uid_token: secret(&self.default_uid_token),
                k8s_auth_config_name: text(&self.default_k8s_auth_config_name),
                azure_object_id: text(&self.default_azure_object_id),
                gcp_audience: text(&self.default_gcp_audience),
            },
            aws_node_credentials: aws_environment(),
            azure_tenant_id: text(&self.azure_tenant_id),
            token_request: self.token_request,
            kube_api_url: self.kube_api_url.clone(),
            endpoints: Endpoints {
                azure_authority: self.azure_authority_host.clone(),
                azure_imds: self.azure_imds_url.clone(),
                aws_sts: self.aws_sts_url.clone(),
                eks_pod_identity: self.eks_pod_identity_url.clone(),
                aws_imds: self.aws_imds_url.clone(),
                gcp_sts: self.gcp_sts_url.clone(),
                gcp_iam_credentials: self.gcp_iam_credentials_url.clone(),
                gcp_metadata: self.gcp_metadata_url.clone(),
            },
        }
    }
}

/// The node's AWS credentials from the provider's own environment, if it has any.
fn aws_environment() -> Option<AwsCredentials> {
    let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    Some(AwsCredentials {
        access_key_id: var("AWS_ACCESS_KEY_ID")?,
        secret_access_key: SecretString::new(var("AWS_SECRET_ACCESS_KEY")?),
        session_token: var("AWS_SESSION_TOKEN").map(SecretString::new),
    })
}

fn parse_url(text: &str) -> Result<Url, String> {
    parse_gateway_url(text)
}

fn parse_access_type(text: &str) -> Result<AccessType, String> {
    AccessType::parse(text).ok_or_else(|| {
        format!(
            "{text:?} is not an access type; use one of {}",
            AccessType::names()
        )
    })
}

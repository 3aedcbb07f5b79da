//! The admin's identity settings: the provider's own credentials, whether the node's cloud
//! identity may be used, which URLs may receive either, and the cloud endpoints.
//!
//! An SPC is editable by pod authors and names the URL its credentials go to; the Go provider
//! sent the provider's and the node's credentials to any such URL (akeyless-api.md §2). Here
//! they go only to the default `--akeyless-url` and the URLs of `--allowed-gateway-url`.

use url::Url;

use crate::params::AccessType;
use crate::secret::SecretString;

/// Provider-wide identity settings, fixed at start-up from flags and environment.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `--akeyless-url`: always allowed to receive the provider's credentials.
    pub default_url: Url,
    /// `--allowed-gateway-url`: further URLs allowed to receive them.
    pub allowed_urls: Vec<Url>,
    /// `--node-identity`: the node's cloud identity (Azure IMDS, AWS node credentials, GCP
    /// metadata) may stand in for a pod that brings none.
    pub node_identity: bool,
    /// The `AKEYLESS_*` fallbacks, for SPCs that name no access id.
    pub provider: ProviderCredentials,
    /// The node's own AWS credentials from the provider's environment (`AWS_ACCESS_KEY_ID`,
    /// ...); without them node identity on AWS asks the instance metadata service.
    pub aws_node_credentials: Option<AwsCredentials>,
    /// `--azure-tenant-id` (`AZURE_TENANT_ID`): the Entra tenant of workload identities.
    pub azure_tenant_id: Option<String>,
    /// `--token-request`: the provider may request pod-bound tokens for audiences the driver
    /// did not send, and read workload-identity annotations of pods' ServiceAccounts.
    pub token_request: bool,
    /// `--kube-api-url`: the API server for that; inferred (in cluster) when unset.
    pub kube_api_url: Option<Url>,
    pub endpoints: Endpoints,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            default_url: constant_url("https://api.akeyless.io"),
            allowed_urls: Vec::new(),
            node_identity: false,
            provider: ProviderCredentials::default(),
            aws_node_credentials: None,
            azure_tenant_id: None,
            token_request: false,
            kube_api_url: None,
            endpoints: Endpoints::default(),
        }
    }
}

impl AuthSettings {
    /// Whether `url` may receive the provider's or the node's credentials.
    pub fn allows(&self, url: &Url) -> bool {
        same_api(url, &self.default_url) || self.allowed_urls.iter().any(|a| same_api(url, a))
    }
}

/// The provider's own identity (the Go provider's `AKEYLESS_*` environment variables).
#[derive(Debug, Clone, Default)]
pub struct ProviderCredentials {
    pub access_id: Option<String>,
    pub access_type: Option<AccessType>,
    pub access_key: Option<SecretString>,
    pub uid_token: Option<SecretString>,
    /// Non-secret defaults, used whenever an SPC does not set its own.
    pub k8s_auth_config_name: Option<String>,
    pub azure_object_id: Option<String>,
    pub gcp_audience: Option<String>,
}

/// AWS credentials (the secret parts redact themselves).
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

/// Outbound cloud endpoints; the defaults are the real public ones, tests use local fakes.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Entra ID authority host (`AZURE_AUTHORITY_HOST`).
    pub azure_authority: Url,
    /// Azure instance metadata service.
    pub azure_imds: Url,
    /// AWS STS, for `AssumeRoleWithWebIdentity` (IRSA).
    pub aws_sts: Url,
    /// The EKS Pod Identity agent's credentials URL.
    pub eks_pod_identity: Url,
    /// AWS instance metadata service (IMDSv2).
    pub aws_imds: Url,
    /// Google STS (token exchange).
    pub gcp_sts: Url,
    /// Google IAM credentials (`generateIdToken`).
    pub gcp_iam_credentials: Url,
    /// GCE/GKE metadata server.
    pub gcp_metadata: Url,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            azure_authority: constant_url("https://login.microsoftonline.com/"),
            azure_imds: constant_url("http://169.254.169.254"),
            aws_sts: constant_url("https://sts.amazonaws.com"),
            eks_pod_identity: constant_url("http://169.254.170.23/v1/credentials"),
            aws_imds: constant_url("http://169.254.169.254"),
            gcp_sts: constant_url("https://sts.googleapis.com"),
            gcp_iam_credentials: constant_url("https://iamcredentials.googleapis.com"),
            gcp_metadata: constant_url("http://metadata.google.internal"),
        }
    }
}

/// A URL written in this file; the unit tests parse every one.
fn constant_url(text: &str) -> Url {
    Url::parse(text).unwrap_or_else(|_| unreachable!("constant URL {text} parses"))
}

/// Two API base URLs are the same when scheme, host, port and path (less trailing `/`) are.
fn same_api(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

/// `<base>/<path>`, keeping any path of the base (no `Url::join` surprises).
pub(crate) fn endpoint(base: &Url, path: &str) -> String {
    format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn defaults_are_the_public_endpoints() {
        let e = Endpoints::default();
        assert_eq!(
            e.azure_authority.host_str(),
            Some("login.microsoftonline.com")
        );
        assert_eq!(e.aws_sts.as_str(), "https://sts.amazonaws.com/");
        assert_eq!(e.gcp_metadata.host_str(), Some("metadata.google.internal"));
        assert_eq!(
            endpoint(&e.eks_pod_identity, ""),
            "http://169.254.170.23/v1/credentials/"
        );
    }

    #[test]
    fn the_default_url_and_the_allow_list_are_allowed_and_nothing_else() {
        let settings = AuthSettings {
            default_url: url("https://api.akeyless.io"),
            allowed_urls: vec![url("https://gw.corp:8000/api/v2/")],
            ..AuthSettings::default()
        };
        assert!(settings.allows(&url("https://API.akeyless.io/")));
        assert!(settings.allows(&url("https://gw.corp:8000/api/v2")));
        assert!(settings.allows(&url("https://gw.corp:8000/api/v2/")));
        assert!(
            !settings.allows(&url("http://gw.corp:8000/api/v2")),
            "scheme"
        );
        assert!(
            !settings.allows(&url("https://gw.corp:8001/api/v2")),
            "port"
        );
        assert!(!settings.allows(&url("https://gw.corp:8000/")), "path");
        assert!(!settings.allows(&url("https://evil.example/api/v2")));
        assert!(!settings.allows(&url("https://api.akeyless.io.evil.example")));
    }
}

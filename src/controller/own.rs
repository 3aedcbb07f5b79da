//! The controller's own credentials: its ServiceAccount token and its cloud identity, which
//! ESO uses for stores that bring no credential of their own (`kubernetesAuth` without a
//! reference, `secretRef` with `k8s`, `aws_iam`, `gcp`, `azure_ad` without
//! `serviceAccountRef`).
//!
//! They are the controller's, not the store author's: like the CSI path's provider
//! credentials, they are sent only to `--akeyless-url` or a URL of `--allowed-gateway-url`
//! (the store checks that before anything is read). Token files are read on every use, so a
//! token the kubelet rotated is picked up (a new token is a new identity: one login per
//! rotation).

use std::path::{Path, PathBuf};

use crate::secret::SecretString;

/// Where Kubernetes projects a pod's ServiceAccount token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The controller's own identities, fixed at start-up (from its environment).
#[derive(Debug, Clone)]
pub struct OwnIdentity {
    /// Its projected ServiceAccount token (`--service-account-token-file`).
    pub token_file: PathBuf,
    /// AKS workload identity of the controller's pod (the webhook's environment).
    pub azure: Option<AzureWorkload>,
    /// IRSA or EKS Pod Identity of the controller's pod.
    pub aws: Option<AwsWorkload>,
}

impl Default for OwnIdentity {
    fn default() -> Self {
        Self {
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            azure: None,
            aws: None,
        }
    }
}

/// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, as the workload-identity
/// webhook sets them.
#[derive(Debug, Clone)]
pub struct AzureWorkload {
    pub token_file: PathBuf,
    pub client_id: String,
    pub tenant_id: String,
}

/// The controller pod's AWS workload identity.
#[derive(Debug, Clone)]
pub enum AwsWorkload {
    /// IRSA: `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`.
    Irsa {
        role_arn: String,
        token_file: PathBuf,
    },
    /// EKS Pod Identity: `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (the agent's URL is
    /// `--eks-pod-identity-url`).
    PodIdentity { token_file: PathBuf },
}

impl OwnIdentity {
    /// The identities the environment describes; `token_file` is the ServiceAccount token.
    pub fn from_env(token_file: PathBuf) -> Self {
        Self::from_vars(token_file, |name| std::env::var(name).ok())
    }

    /// As [`OwnIdentity::from_env`], with `var` for the environment.
    pub fn from_vars(token_file: PathBuf, var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let azure = match (
            var("AZURE_FEDERATED_TOKEN_FILE"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_TENANT_ID"),
        ) {
            (Some(file), Some(client_id), Some(tenant_id)) => Some(AzureWorkload {
                token_file: file.into(),
                client_id,
                tenant_id,
            }),
            _ => None,
        };
        let aws = match (
            var("AWS_ROLE_ARN"),
            var("AWS_WEB_IDENTITY_TOKEN_FILE"),
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        ) {
            (Some(role_arn), Some(file), _) => Some(AwsWorkload::Irsa {
                role_arn,
                token_file: file.into(),
            }),
            (_, _, Some(file)) => Some(AwsWorkload::PodIdentity {
                token_file: file.into(),
            }),
            _ => None,
        };
        Self {
            token_file,
            azure,
            aws,
        }
    }
}

/// A token file's content, trimmed; the error names the file and what to fix, never content.
pub fn read_token(path: &Path, what: &str) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{what} cannot be read from {}: {}",
            path.display(),
            e.kind()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{what} at {} is empty", path.display()));
    }
    Ok(SecretString::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_workload_identities() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let none = OwnIdentity::from_vars("/t".into(), env(&[]));
        assert!(none.azure.is_none() && none.aws.is_none());
        let azure = OwnIdentity::from_vars(
            "/t".into(),
            env(&[
                ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/azure/token"),
                ("AZURE_CLIENT_ID", "c1"),
                ("AZURE_TENANT_ID", "t1"),
            ]),
        );
        assert!(matches!(&azure.azure, Some(a) if a.client_id == "c1" && a.tenant_id == "t1"));
        // Half a workload identity is none.
        let half = OwnIdentity::from_vars("/t".into(), env(&[("AZURE_CLIENT_ID", "c1")]));
        assert!(half.azure.is_none());
        let irsa = OwnIdentity::from_vars(
            "/t".into(),
            env(&[
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/aws/token"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/p"),
            ]),
        );
        assert!(
            matches!(&irsa.aws, Some(AwsWorkload::Irsa { role_arn, .. }) if role_arn == "arn:aws:iam::1:role/r")
        );
        let pod_identity = OwnIdentity::from_vars(
            "/t".into(),
            env(&[("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/p")]),
        );
        assert!(matches!(
            &pod_identity.aws,
            Some(AwsWorkload::PodIdentity { .. })
        ));
    }

    #[test]
    fn token_files_are_read_fresh_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let err = read_token(&path, "the controller's token").unwrap_err();
        assert!(err.contains("token") && err.contains("not found"), "{err}");
        std::fs::write(&path, "eyJ.first.sig\n").unwrap();
        assert_eq!(read_token(&path, "t").unwrap().expose(), "eyJ.first.sig");
        std::fs::write(&path, "eyJ.second.sig").unwrap();
        assert_eq!(read_token(&path, "t").unwrap().expose(), "eyJ.second.sig");
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token(&path, "t").unwrap_err().contains("empty"));
    }
}

//! The Kubernetes API, used only when the admin enables `--token-request`: a pod-bound
//! service-account token for an audience the driver did not send (TokenRequest, bound to the
//! pod so it dies with it), and the workload-identity annotations of the pod's ServiceAccount
//! when the SPC does not name the cloud identity itself.
//!
//! Both happen inside the login task, once per login. The client is built on first use (in
//! cluster: the provider's own service account, which needs `create serviceaccounts/token` and
//! `get serviceaccounts`), so a provider that never needs it never touches the API.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;
use url::Url;

use super::AuthError;
use super::exchange::ExchangeError;
use crate::akeyless::Deadline;
use crate::akeyless::sanitize;
use crate::secret::SecretString;

/// Lifetime asked for requested tokens: the API's minimum, enough for one login.
const EXPIRATION_SECONDS: i64 = 600;

/// A token to request for a pod: everything the kubelet told us about it.
#[derive(Debug, Clone)]
pub(super) struct BoundToken {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub audience: String,
}

/// The provider's Kubernetes API client, built lazily.
pub(super) struct Kube {
    /// `--kube-api-url`: an explicit API server (tests, out-of-cluster); else inferred.
    api_url: Option<Url>,
    client: OnceCell<kube::Client>,
}

impl Kube {
    pub fn new(api_url: Option<Url>) -> Self {
        Self {
            api_url,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<kube::Client, ExchangeError> {
        let fail = |reason: String| ExchangeError {
            service: "Kubernetes API",
            rejected: false,
            reason,
        };
        self.client
            .get_or_try_init(|| async {
                let config = match &self.api_url {
                    Some(url) => {
                        let uri = url
                            .as_str()
                            .parse()
                            .map_err(|_| fail(format!("{url} is not a usable URL")))?;
                        kube::Config::new(uri)
                    }
                    None => kube::Config::infer()
                        .await
                        .map_err(|e| fail(format!("no client configuration: {e}")))?,
                };
                kube::Client::try_from(config)
                    .map_err(|e| fail(format!("cannot build the client: {e}")))
            })
            .await
            .cloned()
    }

    /// A fresh token of the pod's service account for `audience`, bound to the pod.
    pub async fn token(
        &self,
        bound: &BoundToken,
        deadline: Deadline,
    ) -> Result<SecretString, AuthError> {
        const SERVICE: &str = "Kubernetes TokenRequest";
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, &bound.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![bound.audience.clone()],
                expiration_seconds: Some(EXPIRATION_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(bound.pod_name.clone()),
                    uid: Some(bound.pod_uid.clone()),
                }),
            },
            ..TokenRequest::default()
        };
        let params = PostParams::default();
        let call = api.create_token_request(&bound.service_account, &params, &request);
        let response = tokio::time::timeout_at(deadline.instant(), call)
            .await
            .map_err(|_| AuthError::DeadlineExceeded)?
            .map_err(|e| api_error(SERVICE, e))?;
        response
            .status
            .map(|s| SecretString::new(s.token))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::Exchange(ExchangeError {
                    service: SERVICE,
                    rejected: false,
                    reason: "the answer has no status.token".to_owned(),
                })
            })
    }

    /// The annotations of the pod's ServiceAccount.
    pub async fn annotations(
        &self,
        namespace: &str,
        service_account: &str,
        deadline: Deadline,
    ) -> Result<BTreeMap<String, String>, AuthError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let account = tokio::time::timeout_at(deadline.instant(), api.get(service_account))
            .await
            .map_err(|_| AuthError::DeadlineExceeded)?
            .map_err(|e| api_error("Kubernetes API (get ServiceAccount)", e))?;
        Ok(account.metadata.annotations.unwrap_or_default())
    }
}

/// A kube error in words: the API server's own message for API errors (4xx = refused).
fn api_error(service: &'static str, error: kube::Error) -> AuthError {
    let (rejected, reason) = match &error {
        kube::Error::Api(status) => (
            (400..500).contains(&status.code),
            format!("HTTP {}: {}", status.code, sanitize(&status.message, &[])),
        ),
        other => (false, sanitize(&other.to_string(), &[])),
    };
    AuthError::Exchange(ExchangeError {
        service,
        rejected,
        reason,
    })
}

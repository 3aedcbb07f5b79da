//! The Kubernetes API, used only when the admin enables `--token-request`: a pod-bound
//! service-account token for an audience the driver did not send (TokenRequest, bound to the
//! pod so it dies with it), and the workload-identity annotations of the pod's ServiceAccount
//! when the SPC does not name the cloud identity itself.
//!
//! Both happen inside the login task, once per login. The client is built on first use (in
//! cluster: the provider's own service account, which needs `create serviceaccounts/token` and
//! `get serviceaccounts`), so a provider that never needs it never touches the API.
//!
//! The controller also asks here for tokens of the ServiceAccounts its stores name (ESO's
//! `serviceAccountRef`), bound to no pod. Those are reused until about 80% of their life: the
//! identity they prove is keyed by the token itself, so a fresh token per refresh would mean a
//! login per refresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use url::Url;

use super::AuthError;
use super::exchange::ExchangeError;
use crate::akeyless::Deadline;
use crate::akeyless::sanitize;
use crate::secret::SecretString;

/// Lifetime asked for requested tokens: the API's minimum, enough for one login.
const EXPIRATION_SECONDS: i64 = 600;
/// Lifetime asked for ServiceAccount tokens (not bound to a pod): reused until 80% of it.
const ACCOUNT_EXPIRATION_SECONDS: i64 = 3600;
/// Requested ServiceAccount tokens kept at most; expired ones are dropped first.
const MAX_ACCOUNT_TOKENS: usize = 10_000;

/// A token to request for a pod: everything the kubelet told us about it.
#[derive(Debug, Clone)]
pub(super) struct BoundToken {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub audience: String,
}

/// A token for a ServiceAccount itself (bound to no pod), for `audiences` (empty: the API
/// server's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountToken {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
}

/// A requested ServiceAccount token and when to stop handing it out.
type Cached = Option<(SecretString, Instant)>;

/// The provider's Kubernetes API client, built lazily.
pub(super) struct Kube {
    /// `--kube-api-url`: an explicit API server (tests, out-of-cluster); else inferred.
    api_url: Option<Url>,
    client: OnceCell<kube::Client>,
    /// ServiceAccount tokens by request; one TokenRequest at a time per request.
    accounts: Mutex<HashMap<AccountToken, Arc<tokio::sync::Mutex<Cached>>>>,
}

impl Kube {
    pub fn new(api_url: Option<Url>) -> Self {
        Self {
            api_url,
            client: OnceCell::new(),
            accounts: Mutex::default(),
        }
    }

    /// Uses `client` (the controller's own) instead of building one; no-op once one is built.
    pub fn use_client(&self, client: kube::Client) {
        let _ = self.client.set(client);
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

    /// A token of the ServiceAccount for `request.audiences`: the one requested earlier while
    /// it is younger than 80% of its life, else a new one. Concurrent callers of one request
    /// share one TokenRequest.
    pub async fn account_token(
        &self,
        request: &AccountToken,
        deadline: Deadline,
    ) -> Result<SecretString, AuthError> {
        let slot = {
            let mut accounts = super::lock(&self.accounts);
            if accounts.len() >= MAX_ACCOUNT_TOKENS {
                let now = Instant::now();
                accounts.retain(|_, slot| {
                    slot.try_lock()
                        .map_or(true, |c| c.as_ref().is_some_and(|(_, until)| *until > now))
                });
            }
            accounts.entry(request.clone()).or_default().clone()
        };
        let mut cached = tokio::time::timeout_at(deadline.instant(), slot.lock())
            .await
            .map_err(|_| AuthError::DeadlineExceeded)?;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        const SERVICE: &str = "Kubernetes TokenRequest";
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, &request.namespace);
        let token_request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: request.audiences.clone(),
                expiration_seconds: Some(ACCOUNT_EXPIRATION_SECONDS),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let requested = Instant::now();
        let params = PostParams::default();
        let call = api.create_token_request(&request.service_account, &params, &token_request);
        let status = tokio::time::timeout_at(deadline.instant(), call)
            .await
            .map_err(|_| AuthError::DeadlineExceeded)?
            .map_err(|e| api_error(SERVICE, e))?
            .status
            .filter(|s| !s.token.is_empty())
            .ok_or_else(|| {
                AuthError::Exchange(ExchangeError {
                    service: SERVICE,
                    rejected: false,
                    reason: "the answer has no status.token".to_owned(),
                })
            })?;
        let life = account_token_life(status.expiration_timestamp.0.as_second());
        let token = SecretString::new(status.token);
        *cached = Some((token.clone(), requested + life.mul_f64(0.8)));
        Ok(token)
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

/// How long a requested ServiceAccount token lives: until its `expirationTimestamp` (Unix
/// seconds), at most what was asked for (a clock skew cannot stretch it).
fn account_token_life(expires: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Duration::from_secs(
        expires
            .saturating_sub(now)
            .clamp(0, ACCOUNT_EXPIRATION_SECONDS) as u64,
    )
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

//! A small fake Kubernetes API server on 127.0.0.1, speaking real HTTP and JSON, for the
//! provider's `--token-request` fallback: `POST .../serviceaccounts/{sa}/token` (TokenRequest)
//! and `GET .../serviceaccounts/{sa}` (for workload-identity annotations). Deliberately
//! minimal; it checks what the real API server would (a TokenRequest bound to a pod).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::cloud::pod_token;

/// One TokenRequest the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
    pub audience: String,
    /// The token handed out (the same `pod_token` the tests compute).
    pub token: String,
}

#[derive(Default)]
struct Inner {
    issued: Vec<Issued>,
    gets: u64,
    /// (namespace, service account) → annotations.
    annotations: BTreeMap<(String, String), BTreeMap<String, String>>,
}

#[derive(Clone)]
pub struct FakeKube {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeKube {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                post(token_request),
            )
            .route(
                "/api/v1/namespaces/{ns}/serviceaccounts/{sa}",
                get(service_account),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn annotate(&self, namespace: &str, service_account: &str, key: &str, value: &str) {
        self.lock()
            .annotations
            .entry((namespace.to_owned(), service_account.to_owned()))
            .or_default()
            .insert(key.to_owned(), value.to_owned());
    }

    pub fn issued(&self) -> Vec<Issued> {
        self.lock().issued.clone()
    }

    pub fn service_account_gets(&self) -> u64 {
        self.lock().gets
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

async fn token_request(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((ns, sa)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if sa == "forbidden" {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "serviceaccounts \"{sa}\" is forbidden: User \"system:serviceaccount:kube-system:akeyless-csi-provider\" cannot create resource \"serviceaccounts/token\" in the namespace \"{ns}\""
            ),
        );
    }
    let spec = &body["spec"];
    let bound = &spec["boundObjectRef"];
    let audiences: Vec<&str> = spec["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if body["kind"] != "TokenRequest"
        || audiences.len() != 1
        || bound["kind"] != "Pod"
        || bound["apiVersion"] != "v1"
        || !bound["name"].is_string()
        || !bound["uid"].is_string()
        || spec["expirationSeconds"].as_i64().is_none_or(|s| s < 600)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid TokenRequest",
        );
    }
    let pod = bound["name"].as_str().unwrap_or_default().to_owned();
    let token = pod_token(&ns, &sa, &pod, audiences[0]);
    inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .issued
        .push(Issued {
            namespace: ns.clone(),
            service_account: sa.clone(),
            pod,
            pod_uid: bound["uid"].as_str().unwrap_or_default().to_owned(),
            audience: audiences[0].to_owned(),
            token: token.clone(),
        });
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": sa, "namespace": ns},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"},
        })),
    )
        .into_response()
}

async fn service_account(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((ns, sa)): Path<(String, String)>,
) -> Response {
    let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
    inner.gets += 1;
    let annotations = inner
        .annotations
        .get(&(ns.clone(), sa.clone()))
        .cloned()
        .unwrap_or_default();
    axum::Json(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": sa, "namespace": ns, "uid": "sa-uid", "annotations": annotations},
    }))
    .into_response()
}

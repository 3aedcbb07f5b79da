//! An in-process fake Kubernetes API server, speaking real HTTP and JSON on 127.0.0.1: what the
//! provider's kube-rs client calls, with the API server's own rules. It exists for the faults a
//! real server cannot be made to produce on cue — a write conflict on the next update, a 403 on
//! one verb, a TokenRequest refused — and for counting calls; Kubernetes' own behaviour is tested
//! against the real control plane (`control_plane`).
//!
//! Covered: `GET` of a namespaced `secrets-store.csi.x-k8s.io/v1` SecretProviderClass; `LIST`
//! (paged by `limit`/`continue`) of SecretProviderClassPodStatus objects; Secrets
//! `GET` (404 when absent), `POST` (409 AlreadyExists), `PUT` (resourceVersion required, 409 on
//! a stale one, 422 on a type change — Secret types are immutable), with `fieldManager`
//! recorded in `managedFields`; `uid`, `resourceVersion` and `ownerReferences` kept as the API
//! server keeps them; the type validation of `kubernetes.io/basic-auth`, `kubernetes.io/tls`
//! and `kubernetes.io/dockerconfigjson`; 403 with the API server's message for denied verbs.
//! ServiceAccounts: `POST .../serviceaccounts/{sa}/token` (TokenRequest, for `--token-request`:
//! checked as the real API server would, a token bound to a pod, answered with the `pod_token`
//! the tests compute; the ServiceAccount `forbidden` is refused with 403) and `GET
//! .../serviceaccounts/{sa}` (for workload-identity annotations).
//! Not covered: PATCH / server-side apply, watches, other lists, garbage collection, admission.
//!
//! For the `controller`, which needs all of those, [`FaultProxy`] puts the same kind of faults
//! (conflicts, 403s, 503s, dropped watches) in front of the real control plane instead.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::cloud::pod_token;

/// One write the fake accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub verb: &'static str,
    pub namespace: String,
    pub name: String,
    pub field_manager: Option<String>,
}

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
    spcs: BTreeMap<(String, String), Value>,
    secrets: BTreeMap<(String, String), Value>,
    next_version: u64,
    writes: Vec<Write>,
    spc_gets: u64,
    /// SecretProviderClassPodStatus objects by namespace, and the list calls made.
    spcps: BTreeMap<String, Vec<Value>>,
    spcps_lists: u64,
    /// (verb, resource) pairs answered with 403.
    denied: BTreeSet<(String, String)>,
    /// PUTs still to be answered as if another writer had just changed the Secret.
    conflicts: usize,
    conflicts_served: usize,
    issued: Vec<Issued>,
    service_account_gets: u64,
    /// (namespace, service account) → annotations.
    annotations: BTreeMap<(String, String), BTreeMap<String, String>>,
}

#[derive(Clone)]
pub struct FakeK8s {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

type Shared = State<Arc<Mutex<Inner>>>;

impl FakeK8s {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            next_version: 100,
            ..Inner::default()
        }));
        let app = Router::new()
            .route(
                "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/{ns}/secretproviderclasses/{name}",
                get(get_spc),
            )
            .route(
                "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/{ns}/secretproviderclasspodstatuses",
                get(list_spcps),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                axum::routing::post(create_secret),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_secret).put(replace_secret),
            )
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

    /// Stores a SecretProviderClass with these parameters; returns its uid.
    pub fn put_spc(&self, namespace: &str, name: &str, parameters: &[(&str, &str)]) -> String {
        let uid = format!("spc-uid-{namespace}-{name}");
        let params: BTreeMap<&str, &str> = parameters.iter().copied().collect();
        self.lock().spcs.insert(
            (namespace.to_owned(), name.to_owned()),
            json!({
                "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                "kind": "SecretProviderClass",
                "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1"},
                "spec": {"provider": "akeyless", "parameters": params},
            }),
        );
        uid
    }

    /// Stores a Secret as a user would have created it (string values).
    pub fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        secret_type: &str,
        annotations: &[(&str, &str)],
        data: &[(&str, &str)],
    ) {
        let mut inner = self.lock();
        inner.next_version += 1;
        let version = inner.next_version.to_string();
        let data: BTreeMap<&str, String> =
            data.iter().map(|(k, v)| (*k, STANDARD.encode(v))).collect();
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        inner.secrets.insert(
            (namespace.to_owned(), name.to_owned()),
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": secret_type, "data": data,
                "metadata": {"name": name, "namespace": namespace, "uid": format!("user-{name}"),
                             "resourceVersion": version, "annotations": annotations},
            }),
        );
    }

    /// The Secret as stored.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The Secret's data, decoded.
    pub fn data(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        self.secret(namespace, name)
            .map(|secret| decoded_data(&secret))
            .unwrap_or_default()
    }

    pub fn secret_names(&self) -> Vec<(String, String)> {
        self.lock().secrets.keys().cloned().collect()
    }

    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    pub fn spc_gets(&self) -> u64 {
        self.lock().spc_gets
    }

    /// Stores the SecretProviderClassPodStatus the driver writes after a pod volume's first
    /// mount: named `<pod>-<namespace>-<spc>`, owned by the Pod, labelled with the node.
    pub fn put_spcps(
        &self,
        namespace: &str,
        pod: &str,
        pod_uid: &str,
        target_path: &str,
        spc: &str,
    ) {
        let name = format!("{pod}-{namespace}-{spc}");
        let object = json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {
                "name": name, "namespace": namespace, "uid": format!("spcps-{name}"),
                "resourceVersion": "1",
                "labels": {"internal.secrets-store.csi.k8s.io/node-name": "node-1"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid}],
            },
            "status": {
                "podName": pod, "secretProviderClassName": spc, "mounted": true,
                "targetPath": target_path, "objects": [],
            },
        });
        let mut inner = self.lock();
        let list = inner.spcps.entry(namespace.to_owned()).or_default();
        list.retain(|o| o["metadata"]["name"] != name.as_str());
        list.push(object);
    }

    /// LIST calls of SecretProviderClassPodStatus (each page counts).
    pub fn spcps_lists(&self) -> u64 {
        self.lock().spcps_lists
    }

    /// Answers `verb` on `resource` (e.g. "create", "secrets") with 403 from now on.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.lock()
            .denied
            .insert((verb.to_owned(), resource.to_owned()));
    }

    /// The next `n` PUTs find the Secret changed by someone else (409).
    pub fn conflict_next_updates(&self, n: usize) {
        self.lock().conflicts = n;
    }

    pub fn conflicts_served(&self) -> usize {
        self.lock().conflicts_served
    }

    /// Annotates a ServiceAccount (e.g. with a workload-identity client id).
    pub fn annotate(&self, namespace: &str, service_account: &str, key: &str, value: &str) {
        self.lock()
            .annotations
            .entry((namespace.to_owned(), service_account.to_owned()))
            .or_default()
            .insert(key.to_owned(), value.to_owned());
    }

    /// The TokenRequests answered so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.lock().issued.clone()
    }

    pub fn service_account_gets(&self) -> u64 {
        self.lock().service_account_gets
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A Secret's `data` (as JSON, base64 values), decoded to text.
pub fn decoded_data(secret: &Value) -> BTreeMap<String, String> {
    secret["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let bytes = STANDARD.decode(v.as_str().unwrap_or_default()).unwrap();
                    (k.clone(), String::from_utf8(bytes).unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn lock(inner: &Arc<Mutex<Inner>>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn forbidden(
    inner: &Inner,
    verb: &str,
    resource: &str,
    group: &str,
    ns: &str,
    name: &str,
) -> Option<Response> {
    inner
        .denied
        .contains(&(verb.to_owned(), resource.to_owned()))
        .then(|| {
            let qualified = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            };
            status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{qualified} \"{name}\" is forbidden: User \"system:serviceaccount:kube-system:akeyless-csi-provider\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{ns}\""
                ),
            )
        })
}

fn not_found(resource: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
    )
}

async fn get_spc(State(inner): Shared, Path((ns, name)): Path<(String, String)>) -> Response {
    let mut inner = lock(&inner);
    inner.spc_gets += 1;
    if let Some(r) = forbidden(
        &inner,
        "get",
        "secretproviderclasses",
        "secrets-store.csi.x-k8s.io",
        &ns,
        &name,
    ) {
        return r;
    }
    match inner.spcs.get(&(ns, name.clone())) {
        Some(spc) => axum::Json(spc.clone()).into_response(),
        None => not_found("secretproviderclasses.secrets-store.csi.x-k8s.io", &name),
    }
}

/// A page of a namespace's SecretProviderClassPodStatus objects (`limit`, `continue` as the API
/// server pages: the continue token is opaque to the client).
async fn list_spcps(
    State(inner): Shared,
    Path(ns): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let mut inner = lock(&inner);
    inner.spcps_lists += 1;
    if let Some(r) = forbidden(
        &inner,
        "list",
        "secretproviderclasspodstatuses",
        "secrets-store.csi.x-k8s.io",
        &ns,
        "",
    ) {
        return r;
    }
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let all = inner.spcps.get(&ns).cloned().unwrap_or_default();
    let start: usize = query
        .get("continue")
        .and_then(|c| c.strip_prefix("page-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(all.len());
    let items = all.get(start.min(end)..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": "1"});
    if end < all.len() {
        metadata["continue"] = json!(format!("page-{end}"));
    }
    axum::Json(json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatusList",
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

async fn get_secret(State(inner): Shared, Path((ns, name)): Path<(String, String)>) -> Response {
    let inner = lock(&inner);
    if let Some(r) = forbidden(&inner, "get", "secrets", "", &ns, &name) {
        return r;
    }
    match inner.secrets.get(&(ns, name.clone())) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => not_found("secrets", &name),
    }
}

/// What the API server's Secret validation refuses (the type-specific rules).
fn invalid(secret: &Value) -> Option<String> {
    let name = secret["metadata"]["name"].as_str().unwrap_or_default();
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    let missing = |key: &str| format!("Secret \"{name}\" is invalid: data[{key}]: Required value");
    match secret["type"].as_str().unwrap_or("Opaque") {
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            Some(missing("username"))
        }
        "kubernetes.io/tls" if !data.contains_key("tls.crt") => Some(missing("tls.crt")),
        "kubernetes.io/tls" if !data.contains_key("tls.key") => Some(missing("tls.key")),
        "kubernetes.io/dockerconfigjson" => {
            let Some(raw) = data.get(".dockerconfigjson") else {
                return Some(missing(".dockerconfigjson"));
            };
            let bytes = STANDARD
                .decode(raw.as_str().unwrap_or_default())
                .unwrap_or_default();
            serde_json::from_slice::<Value>(&bytes).err().map(|_| {
                format!("Secret \"{name}\" is invalid: data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": invalid character")
            })
        }
        _ => None,
    }
}

fn stamp(inner: &mut Inner, secret: &mut Value, manager: Option<&str>, operation: &str) {
    inner.next_version += 1;
    secret["metadata"]["resourceVersion"] = json!(inner.next_version.to_string());
    if let Some(manager) = manager {
        let fields = secret["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut fields: Vec<Value> = fields
            .into_iter()
            .filter(|f| f["manager"] != manager)
            .collect();
        fields.push(json!({"manager": manager, "operation": operation, "apiVersion": "v1"}));
        secret["metadata"]["managedFields"] = json!(fields);
    }
}

async fn create_secret(
    State(inner): Shared,
    Path(ns): Path<String>,
    RawQuery(query): RawQuery,
    axum::Json(mut secret): axum::Json<Value>,
) -> Response {
    let mut inner = lock(&inner);
    let name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(r) = forbidden(&inner, "create", "secrets", "", &ns, &name) {
        return r;
    }
    if secret["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| n != ns)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    if inner.secrets.contains_key(&(ns.clone(), name.clone())) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("secrets \"{name}\" already exists"),
        );
    }
    if let Some(why) = invalid(&secret) {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &why);
    }
    secret["metadata"]["namespace"] = json!(ns);
    secret["metadata"]["uid"] = json!(format!("uid-{ns}-{name}"));
    secret["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    if secret["type"].is_null() {
        secret["type"] = json!("Opaque");
    }
    let manager = field_manager(query.as_deref());
    stamp(&mut inner, &mut secret, manager.as_deref(), "Update");
    inner.writes.push(Write {
        verb: "create",
        namespace: ns.clone(),
        name: name.clone(),
        field_manager: manager,
    });
    inner.secrets.insert((ns, name), secret.clone());
    (StatusCode::CREATED, axum::Json(secret)).into_response()
}

async fn replace_secret(
    State(inner): Shared,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    axum::Json(mut secret): axum::Json<Value>,
) -> Response {
    let mut inner = lock(&inner);
    if let Some(r) = forbidden(&inner, "update", "secrets", "", &ns, &name) {
        return r;
    }
    let Some(current) = inner.secrets.get(&(ns.clone(), name.clone())).cloned() else {
        return not_found("secrets", &name);
    };
    if inner.conflicts > 0 {
        // Another writer got there first.
        inner.conflicts -= 1;
        inner.conflicts_served += 1;
        let mut changed = current.clone();
        stamp(&mut inner, &mut changed, Some("someone-else"), "Update");
        inner.secrets.insert((ns.clone(), name.clone()), changed);
    }
    let current = inner.secrets[&(ns.clone(), name.clone())].clone();
    let Some(sent) = secret["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned)
    else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "Secret \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
            ),
        );
    };
    if current["metadata"]["resourceVersion"].as_str() != Some(sent.as_str()) {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on secrets \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    if secret["type"].is_null() {
        secret["type"] = json!("Opaque");
    }
    if secret["type"] != current["type"] {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "Secret \"{name}\" is invalid: type: Invalid value: {}: field is immutable",
                secret["type"]
            ),
        );
    }
    if let Some(why) = invalid(&secret) {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &why);
    }
    // What the server owns stays the server's.
    for key in ["uid", "creationTimestamp", "namespace", "name"] {
        secret["metadata"][key] = current["metadata"][key].clone();
    }
    secret["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
    let manager = field_manager(query.as_deref());
    stamp(&mut inner, &mut secret, manager.as_deref(), "Update");
    inner.writes.push(Write {
        verb: "update",
        namespace: ns.clone(),
        name: name.clone(),
        field_manager: manager,
    });
    inner.secrets.insert((ns, name), secret.clone());
    axum::Json(secret).into_response()
}

/// The `fieldManager` parameter of a request's query string.
pub fn field_manager(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "fieldManager")
        .map(|(_, v)| v.into_owned())
}

async fn token_request(
    State(inner): Shared,
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
    lock(&inner).issued.push(Issued {
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

async fn service_account(State(inner): Shared, Path((ns, sa)): Path<(String, String)>) -> Response {
    let mut inner = lock(&inner);
    inner.service_account_gets += 1;
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

// ---- A fault proxy in front of the real API server ---------------------------------------------

/// The real API server (`control_plane`) behind a plain-HTTP proxy on 127.0.0.1 that injects,
/// on cue, the faults a real server cannot be made to produce: a write conflict on the next
/// writes of a resource, a 403 on one verb of one resource, a 503 on one, and watches dropped
/// mid-stream. Everything else is passed through as it is, with the caller's own credentials,
/// so the API server's rules, watches and audit log stay real.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyFaults {
    /// (verb, resource) → how many more requests get 409 Conflict.
    conflicts: BTreeMap<(String, String), usize>,
    /// (verb, resource) → the status every such request gets until healed.
    refused: BTreeMap<(String, String), u16>,
    /// Faults served, by (verb, resource, status).
    served: BTreeMap<(String, String, u16), usize>,
    /// resource → how long each chunk (event) of a watch on it is held before it is passed on.
    watch_delays: BTreeMap<String, std::time::Duration>,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    faults: Mutex<ProxyFaults>,
    /// Bumped to end every watch in flight.
    drops: tokio::sync::watch::Sender<u64>,
}

impl FaultProxy {
    /// A proxy to the API server at `upstream` (`https://…`), trusting `ca_pem`.
    pub async fn start(upstream: &str, ca_pem: &str) -> Self {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http,
            faults: Mutex::default(),
            drops: tokio::sync::watch::channel(0).0,
        });
        let app = Router::new().fallback(proxy).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// A kubeconfig for this proxy with the token of `kubeconfig` (the same user, reaching the
    /// API server through the proxy), written beside it.
    pub fn kubeconfig(&self, kubeconfig: &std::path::Path) -> std::path::PathBuf {
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
        let mut config = original.clone();
        config["clusters"][0]["cluster"] = json!({"server": format!("http://{}", self.addr)});
        let path = kubeconfig.with_extension("proxied.kubeconfig");
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    /// The next `n` requests `verb` (get, list, watch, create, update, patch, delete) on
    /// `resource` (`secrets`, `externalsecrets/status`, ...) answer 409 Conflict, as if another
    /// writer had just changed the object.
    pub fn conflict_next(&self, verb: &str, resource: &str, n: usize) {
        self.faults()
            .conflicts
            .insert((verb.to_owned(), resource.to_owned()), n);
    }

    /// Every request `verb` on `resource` answers `status` (403, 503, ...) until healed.
    pub fn refuse(&self, verb: &str, resource: &str, status: u16) {
        self.faults()
            .refused
            .insert((verb.to_owned(), resource.to_owned()), status);
    }

    /// Watches on `resource` started from now on pass each event on `delay` after it came
    /// (later ones queue behind it): a controller then sees its own writes late, as under a
    /// loaded API server.
    pub fn delay_watch_events(&self, resource: &str, delay: std::time::Duration) {
        self.faults()
            .watch_delays
            .insert(resource.to_owned(), delay);
    }

    /// Removes every fault still pending.
    pub fn heal(&self) {
        let mut faults = self.faults();
        faults.conflicts.clear();
        faults.refused.clear();
        faults.watch_delays.clear();
    }

    /// Ends every watch in flight, mid-stream.
    pub fn drop_watches(&self) {
        self.state.drops.send_modify(|n| *n += 1);
    }

    /// Faults served so far on `verb` `resource` with `status`.
    pub fn served(&self, verb: &str, resource: &str, status: u16) -> usize {
        self.faults()
            .served
            .get(&(verb.to_owned(), resource.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, ProxyFaults> {
        self.state.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The verb and resource (with its subresource) of a Kubernetes API request.
fn classify(method: &axum::http::Method, path: &str, query: Option<&str>) -> (String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[][..],
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        _ => (String::new(), false),
    };
    let watch = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = match *method {
        axum::http::Method::GET if watch => "watch",
        axum::http::Method::GET if named => "get",
        axum::http::Method::GET => "list",
        axum::http::Method::POST => "create",
        axum::http::Method::PUT => "update",
        axum::http::Method::PATCH => "patch",
        axum::http::Method::DELETE => "delete",
        _ => "other",
    };
    (verb.to_owned(), resource)
}

async fn proxy(State(state): State<Arc<ProxyState>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let (verb, resource) = classify(&parts.method, &path, query.as_deref());
    let delay = {
        let mut faults = state.faults.lock().unwrap_or_else(|p| p.into_inner());
        let key = (verb.clone(), resource.clone());
        let fault = if let Some(n) = faults.conflicts.get_mut(&key).filter(|n| **n > 0) {
            *n -= 1;
            Some(409)
        } else {
            faults.refused.get(&key).copied()
        };
        if let Some(code) = fault {
            *faults
                .served
                .entry((verb.clone(), resource.clone(), code))
                .or_default() += 1;
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let (reason, message) = match code {
                StatusCode::CONFLICT => (
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {resource}: the object has been modified; please apply your changes to the latest version and try again"
                    ),
                ),
                StatusCode::FORBIDDEN => (
                    "Forbidden",
                    format!(
                        "{resource} is forbidden: User cannot {verb} resource \"{resource}\" (injected by the test proxy)"
                    ),
                ),
                _ => (
                    "ServiceUnavailable",
                    "injected by the test proxy".to_owned(),
                ),
            };
            return status(code, reason, &message);
        }
        (verb == "watch")
            .then(|| faults.watch_delays.get(&resource).copied())
            .flatten()
    };
    let url = match &query {
        Some(q) => format!("{}{path}?{q}", state.upstream),
        None => format!("{}{path}", state.upstream),
    };
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body"),
    };
    let mut upstream = state.http.request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(e) => {
            return status(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                &format!("the test proxy cannot reach the API server: {e}"),
            );
        }
    };
    let mut builder = axum::http::Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if name != axum::http::header::CONTENT_LENGTH
            && name != axum::http::header::TRANSFER_ENCODING
            && name != axum::http::header::CONNECTION
        {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
    }
    // The body is streamed (watches never end by themselves); a drop ends it with an error,
    // which cuts the connection mid-stream.
    let drops = state.drops.subscribe();
    let stream = futures::stream::unfold(Some((response, drops)), move |held| async move {
        let (mut response, mut drops) = held?;
        tokio::select! {
            chunk = response.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok(bytes), Some((response, drops))))
                }
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            },
            _ = drops.changed() => {
                Some((Err(std::io::Error::other("watch dropped by the test proxy")), None))
            }
        }
    });
    builder
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY, "InternalError", "bad response"))
}

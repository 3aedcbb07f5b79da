//! Fake cloud identity endpoints on 127.0.0.1 for the identity tests: Entra ID's token
//! endpoint and Azure IMDS, AWS STS (`AssumeRoleWithWebIdentity`), the EKS Pod Identity agent
//! and IMDSv2, Google STS, IAM credentials (`generateIdToken`) and the GCE metadata server.
//!
//! Each checks what the real one needs (a JWT-shaped assertion, the metadata headers, a bearer
//! token) and answers in the real format with tokens derived from the caller's credential, so
//! a test can tell which pod a cloud identity came from. Calls are counted per route.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// First 8 hex digits of SHA-256, as the emulator fingerprints credentials and tokens.
pub fn fingerprint(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

/// An unsigned JWT-shaped token with `claims`.
pub fn jwt(claims: Value) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.ZmFrZS1zaWduYXR1cmU",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&claims)
    )
}

/// A pod's service-account token for `audience`, unique per (pod, audience).
pub fn pod_token(namespace: &str, service_account: &str, pod: &str, audience: &str) -> String {
    jwt(json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "aud": [audience],
        "exp": 4_102_444_800u64,
        "kubernetes.io": {"namespace": namespace, "pod": {"name": pod}, "serviceaccount": {"name": service_account}},
    }))
}

/// The claims of a JWT-shaped token.
pub fn claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn is_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && claims(token).is_some()
}

/// The AWS access key id the fakes hand out for a credential: `ASIA` + its fingerprint.
pub fn aws_key_id(credential: &str) -> String {
    format!("ASIA{}", fingerprint(credential).to_uppercase())
}

#[derive(Default)]
struct Calls(Mutex<BTreeMap<String, u64>>);

impl Calls {
    fn count(&self, route: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_owned())
            .or_default() += 1;
    }
}

/// A running fake; dropped with the test's runtime.
#[derive(Clone)]
pub struct FakeCloud {
    pub addr: SocketAddr,
    calls: Arc<Calls>,
}

impl FakeCloud {
    pub async fn start() -> Self {
        let calls = Arc::new(Calls::default());
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
            .route("/metadata/identity/oauth2/token", get(azure_imds))
            .route("/", post(aws_sts))
            .route("/v1/credentials", get(eks_pod_identity))
            .route("/latest/api/token", put(imds_session))
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(imds_roles),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/{role}",
                get(imds_credentials),
            )
            .route("/v1/token", post(gcp_sts))
            .route(
                "/v1/projects/-/serviceAccounts/{target}",
                post(gcp_id_token),
            )
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/identity",
                get(gcp_metadata),
            )
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, calls }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls of a route: `entra`, `azure-imds`, `aws-sts`, `eks-pod-identity`, `aws-imds`,
    /// `gcp-sts`, `gcp-iam`, `gcp-metadata`.
    pub fn calls(&self, route: &str) -> u64 {
        self.calls
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// The `serve` flags that point every cloud endpoint here.
    pub fn provider_args(&self) -> Vec<String> {
        let url = self.url();
        [
            "--azure-authority-host",
            "--azure-imds-url",
            "--aws-sts-url",
            "--aws-imds-url",
            "--gcp-sts-url",
            "--gcp-iam-credentials-url",
            "--gcp-metadata-url",
        ]
        .iter()
        .flat_map(|flag| [flag.to_string(), url.clone()])
        .chain([
            "--eks-pod-identity-url".to_owned(),
            format!("{url}/v1/credentials"),
        ])
        .collect()
    }
}

fn form(body: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    form(uri.query().unwrap_or_default())
}

fn oauth_error(status: StatusCode, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": "invalid_request", "error_description": description})),
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn entra_token(
    State(calls): State<Arc<Calls>>,
    Path(tenant): Path<String>,
    body: String,
) -> Response {
    calls.count("entra");
    let form = form(&body);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        || field("scope") != "https://management.azure.com/.default"
    {
        return oauth_error(StatusCode::BAD_REQUEST, "AADSTS900144: malformed request");
    }
    let assertion = field("client_assertion");
    if !is_jwt(assertion) {
        return oauth_error(StatusCode::BAD_REQUEST, "AADSTS50027: invalid JWT");
    }
    if field("client_id") == "unknown-client" {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "AADSTS70021: No matching federated identity record found for presented assertion.",
        );
    }
    let sub = claims(assertion)
        .and_then(|c| c["sub"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let token = jwt(json!({
        "aud": "https://management.azure.com/",
        "tid": tenant,
        "appid": field("client_id"),
        "sub": format!("wi:{sub}:{}", fingerprint(assertion)),
    }));
    axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}))
        .into_response()
}

async fn azure_imds(State(calls): State<Arc<Calls>>, headers: HeaderMap, uri: Uri) -> Response {
    calls.count("azure-imds");
    let q = query(&uri);
    if header(&headers, "metadata") != "true"
        || q.get("resource").map(String::as_str) != Some("https://management.azure.com/")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "Required metadata header not specified",
        );
    }
    let token =
        jwt(json!({"aud": "https://management.azure.com/", "sub": "node-managed-identity"}));
    axum::Json(json!({"access_token": token, "expires_in": "86399", "token_type": "Bearer"}))
        .into_response()
}

async fn aws_sts(State(calls): State<Arc<Calls>>, body: String) -> Response {
    calls.count("aws-sts");
    let form = form(&body);
    let token = form
        .get("WebIdentityToken")
        .map(String::as_str)
        .unwrap_or_default();
    if form.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity")
        || !form
            .get("RoleArn")
            .is_some_and(|a| a.starts_with("arn:aws:iam::"))
        || !is_jwt(token)
    {
        return (
            StatusCode::BAD_REQUEST,
            "<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>",
        )
            .into_response();
    }
    let xml = format!(
        "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
         <AccessKeyId>{}</AccessKeyId><SecretAccessKey>irsa-secret</SecretAccessKey>\
         <SessionToken>irsa-session</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
         </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
        aws_key_id(token)
    );
    ([("content-type", "text/xml")], xml).into_response()
}

fn aws_json(key_id: &str) -> Response {
    axum::Json(json!({
        "AccessKeyId": key_id,
        "SecretAccessKey": "fake-secret-key",
        "Token": "fake-session-token",
        "Expiration": "2099-01-01T00:00:00Z",
    }))
    .into_response()
}

async fn eks_pod_identity(State(calls): State<Arc<Calls>>, headers: HeaderMap) -> Response {
    calls.count("eks-pod-identity");
    let token = header(&headers, "authorization");
    if !is_jwt(token) {
        return (StatusCode::UNAUTHORIZED, "invalid token").into_response();
    }
    aws_json(&aws_key_id(token))
}

async fn imds_session(State(calls): State<Arc<Calls>>, headers: HeaderMap) -> Response {
    calls.count("aws-imds");
    if header(&headers, "x-aws-ec2-metadata-token-ttl-seconds").is_empty() {
        return (StatusCode::BAD_REQUEST, "").into_response();
    }
    "imds-session-token".into_response()
}

async fn imds_roles(State(calls): State<Arc<Calls>>, headers: HeaderMap) -> Response {
    calls.count("aws-imds");
    if header(&headers, "x-aws-ec2-metadata-token") != "imds-session-token" {
        return (StatusCode::UNAUTHORIZED, "").into_response();
    }
    "node-role\n".into_response()
}

async fn imds_credentials(
    State(calls): State<Arc<Calls>>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    calls.count("aws-imds");
    if header(&headers, "x-aws-ec2-metadata-token") != "imds-session-token" || role != "node-role" {
        return (StatusCode::UNAUTHORIZED, "").into_response();
    }
    aws_json("ASIANODE")
}

async fn gcp_sts(
    State(calls): State<Arc<Calls>>,
    axum::Json(request): axum::Json<Value>,
) -> Response {
    calls.count("gcp-sts");
    let subject = request["subjectToken"].as_str().unwrap_or_default();
    if request["grantType"] != "urn:ietf:params:oauth:grant-type:token-exchange"
        || request["subjectTokenType"] != "urn:ietf:params:oauth:token-type:jwt"
        || !request["audience"]
            .as_str()
            .is_some_and(|a| a.starts_with("identitynamespace:"))
        || !is_jwt(subject)
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid token exchange request");
    }
    axum::Json(json!({
        "access_token": format!("ya29.federated-{}", fingerprint(subject)),
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
    .into_response()
}

async fn gcp_id_token(
    State(calls): State<Arc<Calls>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<Value>,
) -> Response {
    calls.count("gcp-iam");
    let Some(account) = target.strip_suffix(":generateIdToken") else {
        return (StatusCode::NOT_FOUND, "").into_response();
    };
    let Some(federated) = header(&headers, "authorization").strip_prefix("Bearer ya29.federated-")
    else {
        return oauth_error(StatusCode::UNAUTHORIZED, "missing federated token");
    };
    let token = jwt(json!({
        "aud": request["audience"],
        "email": account,
        "sub": format!("gsa:{account}:{federated}"),
    }));
    axum::Json(json!({"token": token})).into_response()
}

async fn gcp_metadata(State(calls): State<Arc<Calls>>, headers: HeaderMap, uri: Uri) -> Response {
    calls.count("gcp-metadata");
    let q = query(&uri);
    if header(&headers, "metadata-flavor") != "Google"
        || q.get("format").map(String::as_str) != Some("full")
    {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header",
        )
            .into_response();
    }
    jwt(json!({
        "aud": q.get("audience").cloned().unwrap_or_default(),
        "email": "node@project.iam.gserviceaccount.com",
        "sub": "node-default-sa",
    }))
    .into_response()
}

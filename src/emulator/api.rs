//! The Akeyless commands the emulator answers, with the real service's wire names, status
//! codes and `{"error": "…"}` bodies (see `akeyless-api.md` §1 and §5).
//!
//! Everything here is synchronous: a command takes the request body and returns a status and
//! a JSON body; the server around it adds latency, faults and framing.

use std::borrow::Cow;
use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::modes::Answer;
use super::seed::{AccessType, ItemType};
use super::state::{AuthMethod, Item, ReadRecord, Shared, fingerprint, lock, now_ms};
use super::values;

/// `access-type` values the real `/auth` accepts (`api_key` is a client-side alias only).
const SERVER_ACCESS_TYPES: &[&str] = &[
    "access_key",
    "password",
    "saml",
    "ldap",
    "k8s",
    "azure_ad",
    "oidc",
    "aws_iam",
    "universal_identity",
    "jwt",
    "gcp",
    "cert",
    "oci",
    "kerberos",
];

/// Echoed request values are clipped to this many characters.
const ECHO_LIMIT: usize = 256;

/// A finished API answer.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub(super) fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
        }
    }
}

/// A failed command: its status and the text of `{"error": …}`.
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 `invalid request body: …`.
    pub(super) fn invalid_body(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {detail}"),
        )
    }

    pub(super) fn missing(parameter: &str) -> ApiError {
        ApiError::invalid_body(format_args!("Missing required parameter - {parameter}"))
    }

    /// The service's layered message: `<prefix> Status 404 Not Found, Error: NotFound. Message: …`.
    fn service(prefix: &str, status: StatusCode, code: &str, message: &str) -> ApiError {
        let reason = status.canonical_reason().unwrap_or("");
        ApiError::new(
            status,
            format!(
                "{prefix} Status {} {reason}, Error: {code}. Message: {message}",
                status.as_u16()
            ),
        )
    }

    fn unauthorized(prefix: &str, message: &str) -> ApiError {
        ApiError::service(
            prefix,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedAccess",
            message,
        )
    }

    pub fn into_reply(self) -> Reply {
        Reply {
            status: self.status,
            body: json!({ "error": self.message }),
        }
    }
}

/// The body of a status fault, shaped like the service's own errors.
pub(crate) fn fault_error(status: StatusCode) -> Value {
    let reason = status.canonical_reason().unwrap_or("Error");
    let message = match status.as_u16() {
        429 => "rate limit exceeded, please retry later".to_owned(),
        500..=599 => "the service is temporarily unavailable, please retry later".to_owned(),
        _ => reason.to_lowercase(),
    };
    json!({ "error": format!("Status {} {reason}, Error: {reason}. Message: {message}", status.as_u16()) })
}

/// Runs one API command. `path` is the request path (`/auth`, …).
pub(crate) fn dispatch(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Reply {
    let command = path.strip_prefix('/').unwrap_or(path);
    type Command = fn(&Shared, &Value) -> Result<Value, ApiError>;
    let run: Command = match command {
        "auth" => auth,
        "get-secret-value" => get_secret_value,
        "describe-item" => describe_item,
        "list-items" => list_items,
        "validate-token" => validate_token,
        "get-dynamic-secret-value" => values::get_dynamic_secret_value,
        "get-rotated-secret-value" => values::get_rotated_secret_value,
        "get-certificate-value" => values::get_certificate_value,
        "get-pki-certificate" => values::get_pki_certificate,
        "get-ssh-certificate" => values::get_ssh_certificate,
        _ => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown command {:?}", clip(command)),
            )
            .into_reply();
        }
    };
    if method != Method::POST {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed: the API accepts POST {path} only"),
        )
        .into_reply();
    }
    match parse_object(body).and_then(|request| run(shared, &request)) {
        Ok(body) => Reply::ok(body),
        Err(err) => err.into_reply(),
    }
}

/// The body as a JSON object; an empty body counts as `{}`.
fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value = serde_json::from_slice(body).map_err(ApiError::invalid_body)?;
    if !value.is_object() {
        return Err(ApiError::invalid_body("expected a JSON object"));
    }
    Ok(value)
}

/// The typed view of a request (unknown fields, `json` included, are ignored).
pub(super) fn fields<T: DeserializeOwned>(request: &Value) -> Result<T, ApiError> {
    T::deserialize(request).map_err(ApiError::invalid_body)
}

pub(super) fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((at, _)) => Cow::Owned(format!("{}…", &text[..at])),
        None => Cow::Borrowed(text),
    }
}

/// `demo/x` and `/demo/x` name the same item.
pub(super) fn canonical(name: &str) -> Cow<'_, str> {
    if name.starts_with('/') {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("/{name}"))
    }
}

// ---- time formats ----

/// `2026-08-10 14:05:31 +0000 UTC` (Go's `time.Time.String()`), as in `/auth` `expiration`.
pub(crate) fn go_time(unix_ms: u64) -> String {
    let (date, time) = civil(unix_ms);
    format!("{date} {time} +0000 UTC")
}

/// `2026-08-10T14:05:31Z`, as in item dates.
pub(crate) fn rfc3339(unix_ms: u64) -> String {
    let (date, time) = civil(unix_ms);
    format!("{date}T{time}Z")
}

fn civil(unix_ms: u64) -> (String, String) {
    let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX / 2);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

// ---- credentials ----

#[derive(Deserialize)]
struct Credential {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "uid-token")]
    uid_token: Option<String>,
}

/// Who is calling: the auth method behind the request's token.
pub(super) struct Caller<'a> {
    method: &'a AuthMethod,
    pub fingerprint: String,
}

impl Caller<'_> {
    pub fn access_id(&self) -> &str {
        &self.method.access_id
    }

    pub fn may_read(&self, name: &str) -> bool {
        self.method.may_read(name)
    }
}

/// Resolves `token` / `uid-token` to the caller, or a 401 with `prefix`.
pub(super) fn caller<'a>(
    shared: &'a Shared,
    request: &Value,
    prefix: &str,
) -> Result<Caller<'a>, ApiError> {
    let credential: Credential = fields(request)?;
    let token = [credential.token, credential.uid_token]
        .into_iter()
        .flatten()
        .find(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                prefix,
                "missing authentication token: send 'token' or 'uid-token'",
            )
        })?;
    let access_id = {
        let tokens = lock(&shared.tokens);
        let info = tokens
            .get(&token)
            .ok_or_else(|| ApiError::unauthorized(prefix, "invalid authentication token"))?;
        if info.expires_ms <= now_ms() {
            return Err(ApiError::unauthorized(
                prefix,
                "authentication token is expired",
            ));
        }
        info.access_id.clone()
    };
    let method = shared
        .methods
        .get(&access_id)
        .ok_or_else(|| ApiError::unauthorized(prefix, "invalid authentication token"))?;
    Ok(Caller {
        method,
        fingerprint: fingerprint(&token),
    })
}

/// `account id: acc-…, access id: p-….` — the context the service puts in item errors.
fn context(shared: &Shared, caller: &Caller<'_>) -> String {
    format!(
        "account id: {}, access id: {}.",
        shared.account_id,
        caller.access_id()
    )
}

pub(super) fn item_unauthorized(shared: &Shared, caller: &Caller<'_>, prefix: &str) -> ApiError {
    let message = format!(
        "{} unauthorized access for access id {}",
        context(shared, caller),
        caller.access_id()
    );
    ApiError::unauthorized(prefix, &message)
}

pub(super) fn item_not_found(
    shared: &Shared,
    caller: &Caller<'_>,
    prefix: &str,
    what: &str,
) -> ApiError {
    let message = format!(
        "{} failed to obtain item {}",
        context(shared, caller),
        clip(what)
    );
    ApiError::service(prefix, StatusCode::NOT_FOUND, "NotFound", &message)
}

// ---- /auth ----

#[derive(Deserialize)]
struct AuthRequest {
    #[serde(default, rename = "access-type")]
    access_type: Option<String>,
    #[serde(default, rename = "access-id")]
    access_id: Option<String>,
    #[serde(default, rename = "access-key")]
    access_key: Option<String>,
    #[serde(default, rename = "k8s-auth-config-name")]
    k8s_auth_config_name: Option<String>,
    #[serde(default, rename = "k8s-service-account-token")]
    k8s_service_account_token: Option<String>,
    #[serde(default)]
    jwt: Option<String>,
    #[serde(default, rename = "cloud-id")]
    cloud_id: Option<String>,
    #[serde(default, rename = "gcp-audience")]
    gcp_audience: Option<String>,
    #[serde(default, rename = "uid-token")]
    uid_token: Option<String>,
    /// The SDK v4.1.0 spelling.
    #[serde(default, rename = "uid_token")]
    uid_token_v4: Option<String>,
}

fn auth(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to authenticate:";
    let request: AuthRequest = fields(request)?;
    let access_type = request
        .access_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .unwrap_or("access_key");
    if !SERVER_ACCESS_TYPES.contains(&access_type) {
        return Err(ApiError::invalid_body(format_args!(
            "invalid access-type {:?}, valid values: {}",
            clip(access_type),
            SERVER_ACCESS_TYPES.join(", ")
        )));
    }
    let access_id = request
        .access_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::missing("access-id"))?;
    let denied = |why: &str| {
        ApiError::unauthorized(
            PREFIX,
            &format!("access denied for access id {}: {why}", clip(access_id)),
        )
    };
    let method = shared
        .methods
        .get(access_id)
        .ok_or_else(|| denied("invalid credentials"))?;
    if method.access_type.wire() != access_type {
        return Err(denied("invalid credentials"));
    }
    let (credential, subject) = check_credential(method, &request, &denied)?;
    let (token, expires_ms) =
        shared.issue_token(&method.access_id, access_type, &credential, subject);
    Ok(json!({
        "token": token,
        "expiration": go_time(expires_ms),
        "creds": {
            "token": token,
            "expiry": expires_ms / 1000,
            "access_id": method.access_id,
            "auth_creds": "",
            "uam_creds": "",
            "kfm_creds": "",
            "required_mfa": "",
        },
    }))
}

/// Checks the credential of `request` for `method`'s access type, as far as its format and the
/// seeded bindings go (signatures are not verified). Returns the credential, to fingerprint,
/// and the subject it names.
fn check_credential(
    method: &AuthMethod,
    request: &AuthRequest,
    denied: &dyn Fn(&str) -> ApiError,
) -> Result<(String, Option<String>), ApiError> {
    let required = |value: &Option<String>, name: &str| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::missing(name))
    };
    match method.access_type {
        AccessType::AccessKey => {
            // As the service: a missing key is just invalid credentials.
            match (&method.access_key, request.access_key.as_deref()) {
                (Some(expected), Some(given))
                    if !given.is_empty() && expected.expose() == given =>
                {
                    Ok((given.to_owned(), None))
                }
                _ => Err(denied("invalid credentials")),
            }
        }
        AccessType::K8s => {
            let name = required(&request.k8s_auth_config_name, "k8s-auth-config-name")?;
            if method.k8s_auth_config_name.as_deref() != Some(name.as_str()) {
                return Err(denied(&format!(
                    "k8s auth config {:?} not found",
                    clip(&name)
                )));
            }
            let encoded = required(
                &request.k8s_service_account_token,
                "k8s-service-account-token",
            )?;
            let jwt = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::invalid_body(
                        "k8s-service-account-token must be the base64 encoding of the service account JWT",
                    )
                })?;
            let subject = check_jwt(&jwt, "k8s-service-account-token", method, denied)?;
            Ok((jwt, subject))
        }
        AccessType::Jwt | AccessType::Oidc => {
            let jwt = required(&request.jwt, "jwt")?;
            let subject = check_jwt(&jwt, "jwt", method, denied)?;
            Ok((jwt, subject))
        }
        AccessType::AzureAd => {
            let cloud_id = required(&request.cloud_id, "cloud-id")?;
            let token = decode_cloud_id(&cloud_id)?;
            let claims = jwt_claims(&token).ok_or_else(|| {
                ApiError::invalid_body(
                    "cloud-id must be base64 of an Azure AD access token (a JWT)",
                )
            })?;
            Ok((cloud_id, claim(&claims, "sub")))
        }
        AccessType::Gcp => {
            let cloud_id = required(&request.cloud_id, "cloud-id")?;
            let token = decode_cloud_id(&cloud_id)?;
            let claims = jwt_claims(&token).ok_or_else(|| {
                ApiError::invalid_body("cloud-id must be base64 of a Google ID token (a JWT)")
            })?;
            let sent = request
                .gcp_audience
                .as_deref()
                .filter(|a| !a.is_empty())
                .unwrap_or("akeyless.io");
            let expected = method.gcp_audience.as_deref().unwrap_or("akeyless.io");
            if sent != expected || !audience_contains(&claims, expected) {
                return Err(denied("the ID token is not for the auth method's audience"));
            }
            Ok((
                cloud_id,
                claim(&claims, "email").or_else(|| claim(&claims, "sub")),
            ))
        }
        AccessType::AwsIam => {
            let cloud_id = required(&request.cloud_id, "cloud-id")?;
            let subject = check_aws_cloud_id(&cloud_id)?;
            Ok((cloud_id, Some(subject)))
        }
        AccessType::UniversalIdentity => {
            let given = required(&request.uid_token, "uid-token")
                .or_else(|_| required(&request.uid_token_v4, "uid-token"))?;
            if !given.starts_with("u-") {
                return Err(ApiError::invalid_body("uid-token must be a u- token"));
            }
            match &method.uid_token {
                Some(expected) if expected.expose() == given => Ok((given, None)),
                _ => Err(denied("invalid credentials")),
            }
        }
        AccessType::Cert => Err(ApiError::invalid_body(
            "access-type cert is not implemented by the emulator",
        )),
    }
}

/// A JWT-shaped token with the method's bound audience; returns its `sub`.
fn check_jwt(
    jwt: &str,
    field: &str,
    method: &AuthMethod,
    denied: &dyn Fn(&str) -> ApiError,
) -> Result<Option<String>, ApiError> {
    let claims = jwt_claims(jwt).ok_or_else(|| {
        ApiError::invalid_body(format_args!(
            "{field} is not a JWT (header.payload.signature)"
        ))
    })?;
    if let Some(audience) = &method.bound_audience
        && !audience_contains(&claims, audience)
    {
        return Err(denied(&format!(
            "the token's audience is not {:?}",
            clip(audience)
        )));
    }
    Ok(claim(&claims, "sub"))
}

/// The claims of a JWT-shaped token: three base64url parts, a JSON header with `alg` and a
/// JSON object payload. The signature is not checked.
pub(crate) fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.trim().split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || signature.is_empty() {
        return None;
    }
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
    let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
    header.get("alg")?.as_str()?;
    decode(signature)?;
    match serde_json::from_slice(&decode(payload)?).ok()? {
        Value::Object(claims) => Some(claims),
        _ => None,
    }
}

fn claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name)?.as_str().map(str::to_owned)
}

/// `aud` is a string or a list of strings.
fn audience_contains(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

fn decode_cloud_id(cloud_id: &str) -> Result<String, ApiError> {
    STANDARD
        .decode(cloud_id.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::invalid_body("cloud-id is not base64"))
}

/// The aws_iam `cloud-id`: base64 JSON of a signed, unsent `sts:GetCallerIdentity` request
/// (akeyless-api.md §1.3). Returns the signing access key id.
fn check_aws_cloud_id(cloud_id: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid_body(format_args!("invalid aws_iam cloud-id: {why}"));
    let document: Value = serde_json::from_str(&decode_cloud_id(cloud_id)?)
        .map_err(|_| bad("not base64 of a JSON object"))?;
    let field = |name: &str| -> Result<String, ApiError> {
        let encoded = document
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{name} is missing")))?;
        decode_cloud_id(encoded).map_err(|_| bad(&format!("{name} is not base64")))
    };
    if document.get("sts_request_method").and_then(Value::as_str) != Some("POST") {
        return Err(bad("sts_request_method must be POST"));
    }
    if field("sts_request_url")?.trim_end_matches('/') != "https://sts.amazonaws.com" {
        return Err(bad("sts_request_url must be https://sts.amazonaws.com/"));
    }
    if !field("sts_request_body")?.contains("Action=GetCallerIdentity") {
        return Err(bad("sts_request_body must be a GetCallerIdentity request"));
    }
    let headers: Map<String, Value> = serde_json::from_str(&field("sts_request_headers")?)
        .map_err(|_| bad("sts_request_headers is not a JSON object"))?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.get(0))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    header("X-Amz-Date").ok_or_else(|| bad("the request has no X-Amz-Date header"))?;
    let authorization = header("Authorization").unwrap_or_default();
    let credential = authorization
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| bad("the request is not SigV4-signed"))?;
    if !authorization.contains("/us-east-1/sts/aws4_request")
        || !authorization.contains("Signature=")
    {
        return Err(bad("the request is not signed for sts in us-east-1"));
    }
    Ok(credential.to_owned())
}

// ---- /validate-token ----

#[derive(Deserialize)]
struct ValidateTokenRequest {
    #[serde(default)]
    token: Option<String>,
}

fn validate_token(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    let request: ValidateTokenRequest = fields(request)?;
    let token = request
        .token
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::missing("token"))?;
    let tokens = lock(&shared.tokens);
    let info = tokens.get(&token).ok_or_else(|| {
        ApiError::unauthorized("failed to validate token:", "invalid authentication token")
    })?;
    let now = now_ms();
    let valid = info.expires_ms > now;
    Ok(json!({
        "is_valid": valid,
        "expiration": go_time(info.expires_ms),
        "ttl": info.expires_ms.saturating_sub(now) / 1000,
        "last_rotate": go_time(info.issued_ms),
        "reason": if valid { "" } else { "token is expired" },
    }))
}

// ---- /get-secret-value ----

#[derive(Deserialize)]
struct GetSecretValueRequest {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default, rename = "ignore-cache")]
    ignore_cache: Option<String>,
    #[serde(default, rename = "accessibility")]
    _accessibility: Option<String>,
}

fn get_secret_value(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to get secret value:";
    let parsed: GetSecretValueRequest = fields(request)?;
    let names = parsed
        .names
        .filter(|names| !names.is_empty())
        .ok_or_else(|| ApiError::missing("names"))?;
    let version = parsed.version.unwrap_or(0);
    if version < 0 {
        return Err(ApiError::invalid_body(
            "a negative version (last N versions) is not supported by the emulator",
        ));
    }
    let caller = caller(shared, request, PREFIX)?;
    let modes = shared.modes();
    let mut values = Map::new();
    let mut reads = Vec::with_capacity(names.len());
    {
        let items = shared.items();
        for sent in &names {
            let name = canonical(sent);
            if !caller.may_read(&name) {
                return Err(item_unauthorized(shared, &caller, PREFIX));
            }
            let Some(item) = items.map.get(name.as_ref()) else {
                match modes.missing_name {
                    Answer::Omitted => continue,
                    _ => return Err(item_not_found(shared, &caller, PREFIX, &name)),
                }
            };
            if item.item_type != ItemType::StaticSecret {
                match modes.not_static {
                    Answer::Omitted => continue,
                    Answer::NotFound => {
                        return Err(item_not_found(shared, &caller, PREFIX, &name));
                    }
                    Answer::Rejected => {
                        return Err(ApiError::invalid_body(format_args!(
                            "item {} is not a static secret (item type {})",
                            clip(&name),
                            item.item_type.api_name()
                        )));
                    }
                }
            }
            let number = if version == 0 {
                item.last_version()
            } else {
                u32::try_from(version).unwrap_or(u32::MAX)
            };
            let found = number
                .checked_sub(1)
                .and_then(|index| item.versions.get(usize::try_from(index).ok()?))
                .ok_or_else(|| {
                    item_not_found(
                        shared,
                        &caller,
                        PREFIX,
                        &format!("{name} version {version}"),
                    )
                })?;
            values.insert(sent.clone(), Value::String(found.value.clone()));
            reads.push(ReadRecord {
                access_id: caller.access_id().to_owned(),
                token_fingerprint: caller.fingerprint.clone(),
                item: name.into_owned(),
                version: number,
                ignore_cache: super::values::asks_past_cache(&parsed.ignore_cache),
            });
        }
    }
    shared.record_reads(reads);
    Ok(Value::Object(values))
}

// ---- /describe-item ----

#[derive(Deserialize)]
struct DescribeItemRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "show-versions")]
    show_versions: Option<bool>,
}

fn describe_item(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to obtain item description: Desc: Failed to get item.";
    let parsed: DescribeItemRequest = fields(request)?;
    let name = parsed
        .name
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::missing("name"))?;
    let caller = caller(shared, request, PREFIX)?;
    let name = canonical(&name);
    if !caller.may_read(&name) {
        return Err(item_unauthorized(shared, &caller, PREFIX));
    }
    let items = shared.items();
    let item = items
        .map
        .get(name.as_ref())
        .ok_or_else(|| item_not_found(shared, &caller, PREFIX, &name))?;
    Ok(item_json(
        shared,
        item,
        parsed.show_versions.unwrap_or(false),
        false,
    ))
}

/// An `Item` object as `/describe-item` and `/list-items` return it.
fn item_json(shared: &Shared, item: &Item, show_versions: bool, minimal: bool) -> Value {
    let sub_type = match (item.item_type, item.format) {
        (ItemType::StaticSecret, super::seed::SecretFormat::Password) => "password",
        (ItemType::StaticSecret, _) => "generic",
        _ => "",
    };
    let mut body = json!({
        "item_name": item.name,
        "item_id": item.item_id,
        "display_id": item.display_id,
        "item_type": item.item_type.api_name(),
        "item_sub_type": sub_type,
        "last_version": item.last_version(),
        "is_enabled": true,
    });
    if minimal {
        return body;
    }
    let modified = rfc3339(item.modified_ms());
    let general_info = match item.item_type {
        ItemType::StaticSecret => json!({
            "static_secret_info": { "format": item.format.wire(), "max_versions": 10 }
        }),
        ItemType::DynamicSecret => json!({
            "dynamic_secret_producer_details": {
                "producer_status": "ProducerConnected",
                "producer_type": "custom",
                "user_ttl": format!("{}m", values::ttl_minutes(item.ttl_seconds)),
            }
        }),
        ItemType::RotatedSecret => json!({
            "rotated_secret_details": {
                "rotator_status": "RotationSucceeded",
                "rotator_type": "custom",
            }
        }),
        ItemType::Certificate => match item.versions.last() {
            Some(version) => json!({
                "certificate_chain_info": values::certificate_chain_info(item, version)
            }),
            None => json!({}),
        },
        _ => json!({}),
    };
    let extra = json!({
        "item_metadata": "",
        "item_tags": item.tags,
        "item_size": 0,
        "item_state": "Enabled",
        "with_customer_fragment": false,
        "protection_key_name": format!("{}__account-def-secrets-key__", shared.account_id),
        "creation_date": rfc3339(item.created_ms),
        "modification_date": modified,
        "access_date": modified,
        "item_general_info": general_info,
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
        if show_versions {
            let versions: Vec<Value> = item
                .versions
                .iter()
                .enumerate()
                .rev()
                .map(|(index, version)| {
                    let mut entry = json!({
                        "version": index + 1,
                        "item_version_state": "Enabled",
                        "creation_date": rfc3339(version.created_ms),
                        "modification_date": rfc3339(version.created_ms),
                    });
                    if let Some(info) = values::certificate_version_info(version) {
                        entry["certificate_version_info"] = info;
                    }
                    entry
                })
                .collect();
            body.insert("item_versions".into(), Value::Array(versions));
        }
    }
    body
}

// ---- /list-items ----

#[derive(Deserialize)]
struct ListItemsRequest {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default, rename = "type")]
    types: Option<Vec<String>>,
    #[serde(default, rename = "minimal-view")]
    minimal_view: Option<bool>,
    #[serde(default, rename = "auto-pagination")]
    auto_pagination: Option<String>,
    #[serde(default, rename = "pagination-token")]
    pagination_token: Option<String>,
    #[serde(default, rename = "current-folder")]
    current_folder: Option<bool>,
    #[serde(default, rename = "modified-after")]
    modified_after: Option<i64>,
}

fn list_items(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to list items:";
    let parsed: ListItemsRequest = fields(request)?;
    let paginate = match parsed.auto_pagination.as_deref().unwrap_or("enabled") {
        "enabled" | "" => false,
        "disabled" => true,
        other => {
            return Err(ApiError::invalid_body(format_args!(
                "invalid auto-pagination {:?}, valid values: enabled, disabled",
                clip(other)
            )));
        }
    };
    let offset = match parsed
        .pagination_token
        .as_deref()
        .filter(|token| !token.is_empty())
    {
        None => 0,
        Some(token) => decode_page_token(token)
            .ok_or_else(|| ApiError::invalid_body("invalid pagination-token"))?,
    };
    let caller = caller(shared, request, PREFIX)?;

    // "/demo", "/demo/", "demo" all mean the folder "/demo/"; "" and "/" the root.
    let folder = match parsed
        .path
        .as_deref()
        .map(|path| path.trim_end_matches('/'))
    {
        None | Some("") => "/".to_owned(),
        Some(path) => format!("{}/", canonical(path)),
    };
    let current_folder = parsed.current_folder.unwrap_or(false);
    let types: Vec<String> = parsed.types.unwrap_or_default();
    let modified_after_ms = parsed
        .modified_after
        .map(|secs| u64::try_from(secs).unwrap_or(0).saturating_mul(1000));

    let items = shared.items();
    let mut listed = Vec::new();
    let mut folders = BTreeSet::new();
    for item in items.map.values() {
        let Some(rest) = item.name.strip_prefix(folder.as_str()) else {
            continue;
        };
        if !caller.may_read(&item.name) {
            continue;
        }
        if let Some(slash) = rest.find('/') {
            folders.insert(format!("{folder}{}", &rest[..slash]));
            if current_folder {
                continue;
            }
        }
        if parsed
            .filter
            .as_deref()
            .is_some_and(|filter| !item.name.contains(filter))
            || parsed
                .tag
                .as_deref()
                .is_some_and(|tag| !tag.is_empty() && !item.tags.iter().any(|t| t == tag))
            || (!types.is_empty() && !types.iter().any(|t| t == item.item_type.wire()))
            || modified_after_ms.is_some_and(|after| item.modified_ms() <= after)
        {
            continue;
        }
        listed.push(item);
    }
    let page_size = if paginate || offset > 0 || shared.modes().always_paginate {
        shared.list_page_size
    } else {
        usize::MAX
    };
    let end = offset.saturating_add(page_size).min(listed.len());
    let page = listed.get(offset.min(end)..end).unwrap_or_default();
    let next_page = if end < listed.len() {
        encode_page_token(end)
    } else {
        String::new()
    };
    let minimal = parsed.minimal_view.unwrap_or(false);
    Ok(json!({
        "items": page.iter().map(|item| item_json(shared, item, false, minimal)).collect::<Vec<_>>(),
        "folders": folders.into_iter().collect::<Vec<_>>(),
        "has_next": !next_page.is_empty(),
        "next_page": next_page,
    }))
}

fn encode_page_token(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("emulator-page:{offset}"))
}

fn decode_page_token(token: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("emulator-page:")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats() {
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(rfc3339(1_786_370_731_000), "2026-08-10T14:05:31Z");
        assert_eq!(go_time(951_782_400_000), "2000-02-29 00:00:00 +0000 UTC");
        assert!(rfc3339(u64::MAX).len() > 10);
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(decode_page_token(&encode_page_token(1234)), Some(1234));
        assert_eq!(decode_page_token("garbage!"), None);
    }
}

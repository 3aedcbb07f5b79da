//! The commands that serve the items other than static secrets (`akeyless-api.md` §1.7–§1.11):
//! dynamic secrets (a new lease on every call), rotated secrets, certificate items, and
//! certificates issued by PKI and SSH issuers.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::StatusCode;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use rcgen::ExtendedKeyUsagePurpose;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{
    ApiError, Caller, caller, canonical, clip, fields, item_not_found, item_unauthorized, rfc3339,
};
use super::crypto::{CryptoError, PkiRequest, SshRequest};
use super::seed::ItemType;
use super::state::{Authority, Item, Items, ReadRecord, Shared, Version, now_ms};

/// Length of the passwords of dynamic-secret leases.
const LEASE_PASSWORD_LEN: usize = 24;
/// `cert_item_id` of issued certificates starts above this.
const ISSUED_ITEM_ID_BASE: u64 = 200_000_000;

/// `ttl_in_minutes` of a lease: the seconds rounded up, at least 1.
pub(crate) fn ttl_minutes(ttl_seconds: u64) -> u64 {
    ttl_seconds.div_ceil(60).max(1)
}

/// The item `name` (canonical), if the caller may read it (else 401, whether or not it
/// exists), it exists (else 404) and it is a `want` (else 400).
fn find<'i>(
    shared: &Shared,
    items: &'i Items,
    caller: &Caller<'_>,
    prefix: &str,
    name: &str,
    want: ItemType,
) -> Result<&'i Item, ApiError> {
    if !caller.may_read(name) {
        return Err(item_unauthorized(shared, caller, prefix));
    }
    let item = items
        .map
        .get(name)
        .ok_or_else(|| item_not_found(shared, caller, prefix, name))?;
    if item.item_type != want {
        let kind = match want {
            ItemType::StaticSecret => "a static secret",
            ItemType::DynamicSecret => "a dynamic secret",
            ItemType::RotatedSecret => "a rotated secret",
            ItemType::Certificate => "a certificate",
            ItemType::PkiCertIssuer => "a PKI certificate issuer",
            ItemType::SshCertIssuer => "an SSH certificate issuer",
        };
        return Err(ApiError::invalid_body(format_args!(
            "item {} is not {kind} (item type {})",
            clip(name),
            item.item_type.api_name()
        )));
    }
    Ok(item)
}

/// Version `version` of `item` (0 = the latest) with its number, or a 404.
fn pick_version<'i>(
    shared: &Shared,
    caller: &Caller<'_>,
    prefix: &str,
    item: &'i Item,
    version: i64,
) -> Result<(u32, &'i Version), ApiError> {
    let number = if version == 0 {
        item.last_version()
    } else {
        u32::try_from(version).unwrap_or(u32::MAX)
    };
    number
        .checked_sub(1)
        .and_then(|index| item.versions.get(usize::try_from(index).ok()?))
        .map(|found| (number, found))
        .ok_or_else(|| {
            item_not_found(
                shared,
                caller,
                prefix,
                &format!("{} version {version}", item.name),
            )
        })
}

fn non_negative_version(version: Option<i64>) -> Result<i64, ApiError> {
    let version = version.unwrap_or(0);
    if version < 0 {
        return Err(ApiError::invalid_body(
            "a negative version (last N versions) is not supported by the emulator",
        ));
    }
    Ok(version)
}

fn required(value: Option<String>, parameter: &str) -> Result<String, ApiError> {
    value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| ApiError::missing(parameter))
}

fn read_record(
    caller: &Caller<'_>,
    item: &str,
    version: u32,
    ignore_cache: &Option<String>,
) -> ReadRecord {
    ReadRecord {
        access_id: caller.access_id().to_owned(),
        token_fingerprint: caller.fingerprint.clone(),
        item: item.to_owned(),
        version,
        ignore_cache: asks_past_cache(ignore_cache),
    }
}

/// `ignore-cache` is the string `"true"` or `"false"` (akeyless-api.md §1.1).
pub(crate) fn asks_past_cache(ignore_cache: &Option<String>) -> bool {
    ignore_cache.as_deref().map(str::trim) == Some("true")
}

fn crypto_error(prefix: &str, err: CryptoError) -> ApiError {
    match err {
        CryptoError::Request(message) => ApiError::invalid_body(message),
        CryptoError::Internal(message) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{prefix} {message}"),
        ),
    }
}

// ---- /get-dynamic-secret-value ----

#[derive(Deserialize)]
struct GetDynamicSecretValueRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "args")]
    _args: Option<Vec<String>>,
    #[serde(default, rename = "timeout")]
    _timeout: Option<i64>,
    #[serde(default, rename = "target")]
    _target: Option<String>,
    #[serde(default, rename = "host")]
    _host: Option<String>,
    #[serde(default, rename = "dbname")]
    _dbname: Option<String>,
}

pub(crate) fn get_dynamic_secret_value(
    shared: &Shared,
    request: &Value,
) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to get dynamic secret value:";
    let parsed: GetDynamicSecretValueRequest = fields(request)?;
    let name = required(parsed.name, "name")?;
    let caller = caller(shared, request, PREFIX)?;
    let name = canonical(&name);
    let (item_id, ttl_seconds, wrapped) = {
        let items = shared.items();
        let item = find(
            shared,
            &items,
            &caller,
            PREFIX,
            &name,
            ItemType::DynamicSecret,
        )?;
        (item.item_id, item.ttl_seconds, item.wrapped)
    };
    let lease = shared.record_lease(&name);
    let password: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(LEASE_PASSWORD_LEN)
        .map(char::from)
        .collect();
    let credentials = json!({
        "id": format!("tmp-{item_id}-{lease}"),
        "user": format!("tmp.{lease}.{}", hex::encode(rand::random::<[u8; 4]>())),
        "password": password,
        "ttl_in_minutes": ttl_minutes(ttl_seconds).to_string(),
    });
    Ok(if wrapped {
        json!({ "value": credentials.to_string(), "error": "" })
    } else {
        credentials
    })
}

// ---- /get-rotated-secret-value ----

#[derive(Deserialize)]
struct GetRotatedSecretValueRequest {
    /// One name, as a string (unlike `/get-secret-value`).
    #[serde(default)]
    names: Option<String>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default, rename = "ignore-cache")]
    ignore_cache: Option<String>,
    #[serde(default, rename = "host")]
    _host: Option<String>,
}

pub(crate) fn get_rotated_secret_value(
    shared: &Shared,
    request: &Value,
) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to get rotated secret value:";
    let parsed: GetRotatedSecretValueRequest = fields(request)?;
    let ignore_cache = parsed.ignore_cache;
    let name = required(parsed.names, "names")?;
    let version = non_negative_version(parsed.version)?;
    let caller = caller(shared, request, PREFIX)?;
    let name = canonical(&name);
    let (number, text) = {
        let items = shared.items();
        let item = find(
            shared,
            &items,
            &caller,
            PREFIX,
            &name,
            ItemType::RotatedSecret,
        )?;
        let (number, found) = pick_version(shared, &caller, PREFIX, item, version)?;
        (number, found.value.clone())
    };
    shared.record_reads(vec![read_record(&caller, &name, number, &ignore_cache)]);
    let value = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "payload": text }),
    };
    Ok(json!({ "value": value }))
}

// ---- /get-certificate-value ----

#[derive(Deserialize)]
struct GetCertificateValueRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default, rename = "ignore-cache")]
    ignore_cache: Option<String>,
}

pub(crate) fn get_certificate_value(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to get certificate value:";
    let parsed: GetCertificateValueRequest = fields(request)?;
    let ignore_cache = parsed.ignore_cache;
    let name = required(parsed.name, "name")?;
    let version = non_negative_version(parsed.version)?;
    let caller = caller(shared, request, PREFIX)?;
    let name = canonical(&name);
    let (number, body) = {
        let items = shared.items();
        let item = find(
            shared,
            &items,
            &caller,
            PREFIX,
            &name,
            ItemType::Certificate,
        )?;
        let (number, found) = pick_version(shared, &caller, PREFIX, item, version)?;
        let key = found
            .certificate
            .as_ref()
            .map(|certificate| certificate.key_pem.expose())
            .unwrap_or_default();
        (
            number,
            json!({ "certificate_pem": found.value, "private_key_pem": key }),
        )
    };
    shared.record_reads(vec![read_record(&caller, &name, number, &ignore_cache)]);
    Ok(body)
}

/// `item_general_info.certificate_chain_info` of a certificate item, for its `version`.
pub(crate) fn certificate_chain_info(item: &Item, version: &Version) -> Value {
    let common_name = match &item.authority {
        Authority::Certificate(chain) => chain.common_name(),
        _ => "",
    };
    let mut info = json!({
        "certificate_pem": version.value,
        "certificate_format": "pem",
        "certificate_has_private_key": version.certificate.is_some(),
        "common_name": common_name,
    });
    if let (Some(extra), Value::Object(info)) = (certificate_version_info(version), &mut info) {
        info.insert("certificate_status".into(), extra["status"].clone());
        info.insert("not_before".into(), extra["not_before"].clone());
        info.insert("expiration_date".into(), extra["not_after"].clone());
    }
    info
}

/// `certificate_version_info` of an `item_versions` entry (certificate items only).
pub(crate) fn certificate_version_info(version: &Version) -> Option<Value> {
    let certificate = version.certificate.as_ref()?;
    let status = if certificate.not_after_ms > now_ms() {
        "Valid"
    } else {
        "Expired"
    };
    Some(json!({
        "not_before": rfc3339(certificate.not_before_ms),
        "not_after": rfc3339(certificate.not_after_ms),
        "status": status,
    }))
}

// ---- /get-pki-certificate ----

#[derive(Deserialize)]
struct GetPkiCertificateRequest {
    #[serde(default, rename = "cert-issuer-name")]
    cert_issuer_name: Option<String>,
    #[serde(default, rename = "csr-data-base64")]
    csr_data_base64: Option<String>,
    #[serde(default, rename = "key-data-base64")]
    key_data_base64: Option<String>,
    #[serde(default, rename = "common-name")]
    common_name: Option<String>,
    #[serde(default, rename = "alt-names")]
    alt_names: Option<String>,
    #[serde(default, rename = "uri-sans")]
    uri_sans: Option<String>,
    /// A string of seconds (SDK v4.1.0) or a number (older SDKs).
    #[serde(default)]
    ttl: Option<Value>,
    #[serde(default, rename = "extended-key-usage")]
    extended_key_usage: Option<String>,
    #[serde(default, rename = "extra-extensions")]
    _extra_extensions: Option<Value>,
}

/// `ttl` as seconds; `None` when absent, empty or 0 (the issuer's default).
fn pki_ttl(ttl: Option<&Value>) -> Result<Option<u64>, ApiError> {
    let bad = || ApiError::invalid_body("ttl must be a whole number of seconds");
    let seconds = match ttl {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(None),
        Some(Value::String(text)) => text.trim().parse::<u64>().map_err(|_| bad())?,
        Some(Value::Number(number)) => number.as_u64().ok_or_else(bad)?,
        Some(_) => return Err(bad()),
    };
    Ok((seconds > 0).then_some(seconds))
}

/// A comma-separated list, trimmed, without empty entries.
fn comma_list(text: Option<&str>) -> Vec<&str> {
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect()
}

fn extended_key_usages(
    text: Option<&str>,
) -> Result<Option<Vec<ExtendedKeyUsagePurpose>>, ApiError> {
    let mut usages = Vec::new();
    for entry in comma_list(text) {
        let usage = match entry.to_ascii_lowercase().as_str() {
            "serverauth" => ExtendedKeyUsagePurpose::ServerAuth,
            "clientauth" => ExtendedKeyUsagePurpose::ClientAuth,
            // Marks the extension critical on the real service; the emulator ignores it.
            "critical" => continue,
            _ => {
                return Err(ApiError::invalid_body(format_args!(
                    "invalid extended-key-usage {:?}, valid values: clientauth, serverauth, critical",
                    clip(entry)
                )));
            }
        };
        if !usages.contains(&usage) {
            usages.push(usage);
        }
    }
    Ok((!usages.is_empty()).then_some(usages))
}

fn decode_base64(text: &str, parameter: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD
        .decode(&compact)
        .or_else(|_| STANDARD_NO_PAD.decode(&compact))
        .map_err(|_| ApiError::invalid_body(format_args!("{parameter} is not base64")))
}

pub(crate) fn get_pki_certificate(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to get pki certificate:";
    let parsed: GetPkiCertificateRequest = fields(request)?;
    let issuer = required(parsed.cert_issuer_name, "cert-issuer-name")?;
    let requested_ttl = pki_ttl(parsed.ttl.as_ref())?;
    let usages = extended_key_usages(parsed.extended_key_usage.as_deref())?;
    let csr = match (&parsed.csr_data_base64, &parsed.key_data_base64) {
        (Some(csr), _) if !csr.trim().is_empty() => decode_base64(csr, "csr-data-base64")?,
        (_, Some(key)) if !key.trim().is_empty() => {
            return Err(ApiError::invalid_body(
                "key-data-base64 without csr-data-base64 is not supported by the emulator; \
                 send a CSR (csr-data-base64)",
            ));
        }
        _ => {
            return Err(ApiError::invalid_body(
                "a CSR or key is required: send csr-data-base64 (base64 of a PKCS#10 CSR, DER \
                 or PEM); certificates are issued for keys generated by the client",
            ));
        }
    };
    let caller = caller(shared, request, PREFIX)?;
    let issuer = canonical(&issuer);
    let issued = {
        let items = shared.items();
        let item = find(
            shared,
            &items,
            &caller,
            PREFIX,
            &issuer,
            ItemType::PkiCertIssuer,
        )?;
        let Authority::Pki(ca) = &item.authority else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{PREFIX} issuer {} has no CA", clip(&issuer)),
            ));
        };
        if let Some(ttl) = requested_ttl
            && ttl > item.max_ttl_seconds
        {
            return Err(ApiError::invalid_body(format_args!(
                "requested ttl {ttl}s exceeds the issuer's max ttl ({}s)",
                item.max_ttl_seconds
            )));
        }
        let pki_request = PkiRequest {
            csr: &csr,
            common_name: parsed.common_name.as_deref(),
            alt_names: comma_list(parsed.alt_names.as_deref()),
            uri_sans: comma_list(parsed.uri_sans.as_deref()),
            extended_key_usage: usages,
            ttl_secs: requested_ttl.unwrap_or(item.ttl_seconds),
            now: now_ms() / 1000,
        };
        let issued = ca
            .issue(&pki_request)
            .map_err(|err| crypto_error(PREFIX, err))?;
        (issued, ca.ca_pem().to_owned())
    };
    let (issued, ca_pem) = issued;
    let sequence = shared.record_lease(&issuer);
    let display = hex::encode(rand::random::<[u8; 8]>());
    Ok(json!({
        "data": issued.pem,
        "parent_cert": ca_pem,
        "reading_token": "",
        "path": format!("{issuer}/{}", issued.serial_hex),
        "cert_display_id": format!("{}-{}", &display[..12], &display[12..]),
        "cert_item_id": ISSUED_ITEM_ID_BASE + sequence,
    }))
}

// ---- /get-ssh-certificate ----

#[derive(Deserialize)]
struct GetSshCertificateRequest {
    #[serde(default, rename = "cert-issuer-name")]
    cert_issuer_name: Option<String>,
    #[serde(default, rename = "cert-username")]
    cert_username: Option<String>,
    #[serde(default, rename = "public-key-data")]
    public_key_data: Option<String>,
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default, rename = "legacy-signing-alg-name")]
    _legacy_signing_alg_name: Option<bool>,
}

pub(crate) fn get_ssh_certificate(shared: &Shared, request: &Value) -> Result<Value, ApiError> {
    const PREFIX: &str = "failed to get ssh certificate:";
    let parsed: GetSshCertificateRequest = fields(request)?;
    let issuer = required(parsed.cert_issuer_name, "cert-issuer-name")?;
    let username = required(parsed.cert_username, "cert-username")?;
    let requested_ttl = match parsed.ttl {
        None | Some(0) => None,
        Some(ttl) => Some(
            u64::try_from(ttl)
                .map_err(|_| ApiError::invalid_body("ttl must be a positive number of seconds"))?,
        ),
    };
    let public_key = parsed
        .public_key_data
        .filter(|key| !key.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid_body(
                "public-key-data is required: the OpenSSH public key to certify, such as \
                 'ssh-ed25519 AAAA… comment'",
            )
        })?;
    let caller = caller(shared, request, PREFIX)?;
    let issuer = canonical(&issuer);
    let certificate = {
        let items = shared.items();
        let item = find(
            shared,
            &items,
            &caller,
            PREFIX,
            &issuer,
            ItemType::SshCertIssuer,
        )?;
        let Authority::Ssh(ca) = &item.authority else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{PREFIX} issuer {} has no CA", clip(&issuer)),
            ));
        };
        if !item.allowed_users.is_empty() && !item.allowed_users.contains(&username) {
            return Err(ApiError::invalid_body(format_args!(
                "cert-username {:?} is not an allowed user of SSH issuer {}",
                clip(&username),
                clip(&issuer)
            )));
        }
        let ttl_secs = requested_ttl
            .unwrap_or(item.ttl_seconds)
            .min(item.max_ttl_seconds);
        let key_id = format!("{}:{username}", caller.access_id());
        let (line, _serial) = ca
            .sign_user(&SshRequest {
                public_key: &public_key,
                username: &username,
                key_id: &key_id,
                ttl_secs,
                now: now_ms() / 1000,
            })
            .map_err(|err| crypto_error(PREFIX, err))?;
        line
    };
    shared.record_lease(&issuer);
    Ok(json!({ "data": certificate, "path": issuer }))
}

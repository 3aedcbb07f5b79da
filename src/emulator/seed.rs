//! The emulator's initial contents: auth methods and items, read from YAML.
//!
//! The format is documented, with comments, in `examples/demo-seed.yaml`. Parsing is strict
//! (unknown keys are errors) and every error names the line of the YAML it is about, so that a
//! typo in a test fixture fails loudly instead of producing an emulator that silently differs.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::EmulatorError;
use crate::secret::SecretString;

const DEMO_SEED: &str = include_str!("../../examples/demo-seed.yaml");

/// Lifetime of issued `t-` tokens when the seed does not say (15 minutes).
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 900;
/// Page size of `/list-items` when the client disables auto-pagination (the real service's 1000).
pub const DEFAULT_LIST_PAGE_SIZE: usize = 1000;
/// Account id named in error messages.
pub const DEFAULT_ACCOUNT_ID: &str = "acc-emulator0001";
/// Upper bound for `token_ttl_seconds` (ten years), so expiry arithmetic cannot overflow.
const MAX_TOKEN_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Upper bound for item `ttl_seconds` and `max_ttl_seconds` (ten years).
pub(crate) const MAX_ITEM_TTL_SECONDS: u64 = MAX_TOKEN_TTL_SECONDS;
/// `ttl_seconds` of dynamic secrets and issuers when the seed does not say (an hour).
pub const DEFAULT_ITEM_TTL_SECONDS: u64 = 3600;
/// `ttl_seconds` (leaf validity) of certificate items when the seed does not say (a year).
pub const DEFAULT_CERTIFICATE_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// `max_ttl_seconds` of issuers when the seed does not say (a day).
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 24 * 3600;

/// Everything the emulator starts with.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Lifetime of the `t-` tokens `/auth` issues.
    #[serde(default = "default_ttl")]
    pub token_ttl_seconds: u64,
    /// Account id (`acc-…`) quoted in error messages.
    #[serde(default = "default_account_id")]
    pub account_id: String,
    /// Page size of `/list-items` with `auto-pagination: "disabled"`.
    #[serde(default = "default_page_size")]
    pub list_page_size: usize,
    #[serde(default)]
    pub auth_methods: Vec<SeedAuthMethod>,
    #[serde(default)]
    pub items: Vec<SeedItem>,
}

/// An auth method: an identity that `/auth` turns into tokens, and what it may read.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAuthMethod {
    /// `p-` followed by letters and digits.
    pub access_id: String,
    #[serde(default)]
    pub access_type: AccessType,
    /// The credential `/auth` checks for `access_key` methods.
    #[serde(default)]
    pub access_key: Option<SecretString>,
    /// `k8s`: the K8s auth config name `/auth` must receive.
    #[serde(default)]
    pub k8s_auth_config_name: Option<String>,
    /// `k8s`, `jwt`, `oidc`: an `aud` the service-account token must carry (any when unset).
    #[serde(default)]
    pub bound_audience: Option<String>,
    /// `gcp`: the `gcp-audience` the ID token must be for (default `akeyless.io`).
    #[serde(default)]
    pub gcp_audience: Option<String>,
    /// `universal_identity`: the `u-` token this method accepts, as `uid-token` on data calls.
    #[serde(default)]
    pub uid_token: Option<SecretString>,
    /// `universal_identity`: the token's life from its last rotation (none: it never expires).
    #[serde(default)]
    pub uid_token_ttl_seconds: Option<u64>,
    /// `universal_identity`: how long ago the token was last rotated when the emulator starts.
    #[serde(default)]
    pub uid_token_age_seconds: u64,
    /// Items this identity may read, describe and list: exact names, prefixes ending in `/*`,
    /// or `*` for everything.
    #[serde(default)]
    pub read: Vec<String>,
}

/// `access-type` of an auth method, as sent to `/auth`. `cert` can be seeded but `/auth`
/// answers it with a clear error; every other type checks its credential's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessType {
    #[default]
    AccessKey,
    K8s,
    Jwt,
    Oidc,
    AzureAd,
    AwsIam,
    Gcp,
    UniversalIdentity,
    Cert,
}

impl AccessType {
    /// The wire value of `access-type`.
    pub fn wire(self) -> &'static str {
        match self {
            Self::AccessKey => "access_key",
            Self::K8s => "k8s",
            Self::Jwt => "jwt",
            Self::Oidc => "oidc",
            Self::AzureAd => "azure_ad",
            Self::AwsIam => "aws_iam",
            Self::Gcp => "gcp",
            Self::UniversalIdentity => "universal_identity",
            Self::Cert => "cert",
        }
    }
}

/// Item type; each serves its values through its own command (`/get-secret-value`,
/// `/get-dynamic-secret-value`, `/get-rotated-secret-value`, `/get-certificate-value`,
/// `/get-pki-certificate`, `/get-ssh-certificate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemType {
    #[default]
    StaticSecret,
    DynamicSecret,
    RotatedSecret,
    Certificate,
    PkiCertIssuer,
    SshCertIssuer,
}

impl ItemType {
    /// `item_type` in `/describe-item` and `/list-items` responses.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::StaticSecret => "STATIC_SECRET",
            Self::DynamicSecret => "DYNAMIC_SECRET",
            Self::RotatedSecret => "ROTATED_SECRET",
            Self::Certificate => "CERTIFICATE",
            Self::PkiCertIssuer => "PKI_CERT_ISSUER",
            Self::SshCertIssuer => "SSH_CERT_ISSUER",
        }
    }

    /// The name used by the seed and by the `type` filter of `/list-items`.
    pub fn wire(self) -> &'static str {
        match self {
            Self::StaticSecret => "static-secret",
            Self::DynamicSecret => "dynamic-secret",
            Self::RotatedSecret => "rotated-secret",
            Self::Certificate => "certificate",
            Self::PkiCertIssuer => "pki-cert-issuer",
            Self::SshCertIssuer => "ssh-cert-issuer",
        }
    }
}

/// `static_secret_info.format` of a static secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretFormat {
    #[default]
    Text,
    Json,
    KeyValue,
    Password,
}

impl SecretFormat {
    pub fn wire(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
            Self::KeyValue => "key-value",
            Self::Password => "password",
        }
    }
}

/// One item of the seed.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedItem {
    /// Full path; a missing leading `/` is added.
    pub name: String,
    #[serde(rename = "type", default)]
    pub item_type: ItemType,
    #[serde(default)]
    pub format: SecretFormat,
    /// The value of a single-version item.
    #[serde(default)]
    pub value: Option<String>,
    /// All versions, oldest first (version 1 first).
    #[serde(default)]
    pub versions: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// dynamic-secret: lifetime of each lease (`ttl_in_minutes`); pki-cert-issuer,
    /// ssh-cert-issuer: default certificate lifetime; certificate: validity of the generated
    /// leaf. Defaults: [`DEFAULT_ITEM_TTL_SECONDS`], certificates
    /// [`DEFAULT_CERTIFICATE_TTL_SECONDS`].
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// pki-cert-issuer, ssh-cert-issuer: the largest `ttl` a request may ask for (default
    /// [`DEFAULT_MAX_TTL_SECONDS`]).
    #[serde(default)]
    pub max_ttl_seconds: Option<u64>,
    /// dynamic-secret: answer in the wrapper Dapr observed, `{"value": "<JSON>", "error": ""}`.
    #[serde(default)]
    pub wrapped: bool,
    /// certificate: CN and DNS SAN of the generated leaf (default: the last path element).
    #[serde(default)]
    pub common_name: Option<String>,
    /// ssh-cert-issuer: the `cert-username`s it signs for (empty: any).
    #[serde(default)]
    pub allowed_users: Vec<String>,
}

impl SeedItem {
    /// `ttl_seconds`, or the default of the item's type.
    pub(crate) fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds.unwrap_or(match self.item_type {
            ItemType::Certificate => DEFAULT_CERTIFICATE_TTL_SECONDS,
            _ => DEFAULT_ITEM_TTL_SECONDS,
        })
    }

    /// `max_ttl_seconds`, or its default.
    pub(crate) fn max_ttl_seconds(&self) -> u64 {
        self.max_ttl_seconds.unwrap_or(DEFAULT_MAX_TTL_SECONDS)
    }

    /// The CN of a certificate item's leaf: `common_name`, else the last path element.
    pub(crate) fn common_name(&self) -> String {
        match &self.common_name {
            Some(name) => name.clone(),
            None => self.name.rsplit('/').next().unwrap_or_default().to_owned(),
        }
    }

    /// The versions of this item, oldest first.
    pub(crate) fn version_values(&self) -> Vec<String> {
        match (&self.value, &self.versions) {
            (_, Some(versions)) => versions.clone(),
            (Some(value), None) => vec![value.clone()],
            (None, None) => Vec::new(),
        }
    }
}

fn default_ttl() -> u64 {
    DEFAULT_TOKEN_TTL_SECONDS
}

fn default_account_id() -> String {
    DEFAULT_ACCOUNT_ID.to_owned()
}

fn default_page_size() -> usize {
    DEFAULT_LIST_PAGE_SIZE
}

impl Default for Seed {
    fn default() -> Self {
        Self {
            token_ttl_seconds: DEFAULT_TOKEN_TTL_SECONDS,
            account_id: default_account_id(),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            auth_methods: Vec::new(),
            items: Vec::new(),
        }
    }
}

// Values and access keys are secret-shaped even when fake: never print them.
impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seed")
            .field("token_ttl_seconds", &self.token_ttl_seconds)
            .field("account_id", &self.account_id)
            .field("list_page_size", &self.list_page_size)
            .field("auth_methods", &self.auth_methods)
            .field("items", &self.items)
            .finish()
    }
}

impl fmt::Debug for SeedAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedAuthMethod")
            .field("access_id", &self.access_id)
            .field("access_type", &self.access_type)
            .field("access_key", &self.access_key)
            .field("k8s_auth_config_name", &self.k8s_auth_config_name)
            .field("bound_audience", &self.bound_audience)
            .field("gcp_audience", &self.gcp_audience)
            .field("uid_token", &self.uid_token)
            .field("uid_token_ttl_seconds", &self.uid_token_ttl_seconds)
            .field("uid_token_age_seconds", &self.uid_token_age_seconds)
            .field("read", &self.read)
            .finish()
    }
}

impl fmt::Debug for SeedItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedItem")
            .field("name", &self.name)
            .field("item_type", &self.item_type)
            .field("format", &self.format)
            .field("versions", &self.version_values().len())
            .field("tags", &self.tags)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("max_ttl_seconds", &self.max_ttl_seconds)
            .field("wrapped", &self.wrapped)
            .field("common_name", &self.common_name)
            .field("allowed_users", &self.allowed_users)
            .finish()
    }
}

impl Seed {
    /// Parses and validates a seed. Errors name the YAML line they are about.
    pub fn from_yaml(text: &str) -> Result<Seed, EmulatorError> {
        let seed: Seed = serde_norway::from_str(text).map_err(|err| {
            let line = err.location().map(|location| location.line());
            let mut message = err.to_string();
            // serde_norway appends " at line L column C"; the line is reported separately.
            if line.is_some()
                && let Some(at) = message.rfind(" at line ")
            {
                message.truncate(at);
            }
            EmulatorError::Seed { line, message }
        })?;
        seed.validate(Some(text))?;
        Ok(seed)
    }

    /// The seed of the `demo` command (`examples/demo-seed.yaml`).
    pub fn demo() -> Seed {
        // The file is part of the crate and covered by a unit test; an invalid file is a bug.
        Seed::from_yaml(DEMO_SEED).unwrap_or_else(|err| {
            panic!("examples/demo-seed.yaml is invalid: {err}");
        })
    }

    /// Checks what serde cannot: identifiers, duplicates, versions. `text` is the YAML the seed
    /// came from (to find line numbers), if any.
    pub(crate) fn validate(&self, text: Option<&str>) -> Result<(), EmulatorError> {
        let fail = |key: &str, value: &str, nth: usize, message: String| EmulatorError::Seed {
            line: text.and_then(|text| line_of(text, key, value, nth)),
            message,
        };
        if self.token_ttl_seconds == 0 || self.token_ttl_seconds > MAX_TOKEN_TTL_SECONDS {
            return Err(fail(
                "token_ttl_seconds",
                "",
                0,
                format!("token_ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}"),
            ));
        }
        if self.list_page_size == 0 {
            return Err(fail(
                "list_page_size",
                "",
                0,
                "list_page_size must be at least 1".into(),
            ));
        }
        if !is_prefixed_alnum(&self.account_id, "acc-") {
            return Err(fail(
                "account_id",
                "",
                0,
                format!(
                    "account_id {:?} must be 'acc-' followed by letters and digits",
                    self.account_id
                ),
            ));
        }

        let mut access_ids = HashSet::new();
        for method in &self.auth_methods {
            let id = method.access_id.as_str();
            let nth = access_ids
                .iter()
                .filter(|seen: &&&str| **seen == id)
                .count();
            let fail = |message: String| fail("access_id", id, nth, message);
            if !is_prefixed_alnum(id, "p-") {
                return Err(fail(format!(
                    "access_id {id:?} must be 'p-' followed by letters and digits"
                )));
            }
            if !access_ids.insert(id) {
                return Err(fail(format!("access_id {id:?} is defined twice")));
            }
            if method.access_type == AccessType::AccessKey
                && method.access_key.as_ref().is_none_or(|key| key.is_empty())
            {
                return Err(fail(format!(
                    "auth method {id:?} has access_type access_key but no access_key"
                )));
            }
            if method.access_type == AccessType::UniversalIdentity
                && !method
                    .uid_token
                    .as_ref()
                    .is_some_and(|token| token.expose().starts_with("u-"))
            {
                return Err(fail(format!(
                    "auth method {id:?} has access_type universal_identity but no uid_token (u-...)"
                )));
            }
            for pattern in &method.read {
                if let Err(why) = ReadPattern::parse(pattern) {
                    return Err(fail(format!(
                        "auth method {id:?}: read pattern {pattern:?} {why}"
                    )));
                }
            }
        }

        let mut names = HashSet::new();
        let mut raw_names: Vec<&str> = Vec::new();
        for item in &self.items {
            let raw = item.name.as_str();
            let nth = raw_names.iter().filter(|seen| **seen == raw).count();
            raw_names.push(raw);
            let fail = |message: String| fail("name", raw, nth, message);
            let name =
                normalize_name(raw).map_err(|why| fail(format!("item name {raw:?} {why}")))?;
            if !names.insert(name.clone()) {
                return Err(fail(format!("item {name:?} is defined twice")));
            }
            if item.value.is_some() && item.versions.is_some() {
                return Err(fail(format!(
                    "item {name:?} has both value and versions; use one"
                )));
            }
            if item.versions.as_ref().is_some_and(Vec::is_empty) {
                return Err(fail(format!("item {name:?} has an empty versions list")));
            }
            if let Some(why) = check_item_fields(item) {
                return Err(fail(format!("item {name:?}: {why}")));
            }
            match item.item_type {
                ItemType::StaticSecret | ItemType::RotatedSecret => {
                    if item.value.is_none() && item.versions.is_none() {
                        let kind = match item.item_type {
                            ItemType::StaticSecret => "static secret",
                            _ => "rotated secret",
                        };
                        return Err(fail(format!("{kind} {name:?} needs a value or versions")));
                    }
                }
                other => {
                    if item.value.is_some() || item.versions.is_some() {
                        return Err(fail(format!(
                            "item {name:?}: a {} has no stored value; remove value and versions",
                            other.wire()
                        )));
                    }
                }
            }
            if item.item_type != ItemType::StaticSecret && item.format != SecretFormat::Text {
                return Err(fail(format!(
                    "item {name:?}: format applies to static secrets only"
                )));
            }
            for (index, value) in item.version_values().iter().enumerate() {
                if let Err(why) = check_format(item.format, value) {
                    return Err(fail(format!(
                        "item {name:?} version {}: {why} (format {})",
                        index + 1,
                        item.format.wire()
                    )));
                }
            }
            if let Some(tag) = item.tags.iter().find(|tag| tag.trim().is_empty()) {
                return Err(fail(format!("item {name:?} has an empty tag {tag:?}")));
            }
        }
        Ok(())
    }
}

/// Whether the type-specific fields of `item` make sense for its type.
fn check_item_fields(item: &SeedItem) -> Option<String> {
    use ItemType::{Certificate, DynamicSecret, PkiCertIssuer, SshCertIssuer};
    let kind = item.item_type;
    let misplaced = |field: &str, types: &str| {
        Some(format!(
            "{field} does not apply to a {} (only to {types})",
            kind.wire()
        ))
    };
    let ttl_types = [DynamicSecret, Certificate, PkiCertIssuer, SshCertIssuer];
    let issuer = matches!(kind, PkiCertIssuer | SshCertIssuer);
    if item.ttl_seconds.is_some() && !ttl_types.contains(&kind) {
        return misplaced(
            "ttl_seconds",
            "dynamic-secret, certificate, pki-cert-issuer, ssh-cert-issuer",
        );
    }
    if item.max_ttl_seconds.is_some() && !issuer {
        return misplaced("max_ttl_seconds", "pki-cert-issuer, ssh-cert-issuer");
    }
    if item.wrapped && kind != DynamicSecret {
        return misplaced("wrapped", "dynamic-secret");
    }
    if item.common_name.is_some() && kind != Certificate {
        return misplaced("common_name", "certificate");
    }
    if !item.allowed_users.is_empty() && kind != SshCertIssuer {
        return misplaced("allowed_users", "ssh-cert-issuer");
    }
    let in_range = |ttl: u64| (1..=MAX_ITEM_TTL_SECONDS).contains(&ttl);
    if !in_range(item.ttl_seconds()) {
        return Some(format!(
            "ttl_seconds must be between 1 and {MAX_ITEM_TTL_SECONDS}"
        ));
    }
    if !in_range(item.max_ttl_seconds()) {
        return Some(format!(
            "max_ttl_seconds must be between 1 and {MAX_ITEM_TTL_SECONDS}"
        ));
    }
    if issuer && item.ttl_seconds() > item.max_ttl_seconds() {
        return Some(format!(
            "ttl_seconds {} exceeds max_ttl_seconds {}",
            item.ttl_seconds(),
            item.max_ttl_seconds()
        ));
    }
    if kind == Certificate {
        let cn = item.common_name();
        if cn.is_empty()
            || cn.len() > 64
            || !cn
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*'))
        {
            return Some(format!(
                "common name {cn:?} must be 1 to 64 letters, digits, '.', '-', '_' or '*' \
                 (it is also the DNS SAN); set common_name"
            ));
        }
    }
    if let Some(user) = item
        .allowed_users
        .iter()
        .find(|user| user.trim().is_empty() || user.chars().any(char::is_control))
    {
        return Some(format!("allowed_users has an unusable entry {user:?}"));
    }
    None
}

fn check_format(format: SecretFormat, value: &str) -> Result<(), &'static str> {
    match format {
        SecretFormat::Text | SecretFormat::Password => Ok(()),
        SecretFormat::Json => serde_json::from_str::<serde_json::Value>(value)
            .map(drop)
            .map_err(|_| "value is not valid JSON"),
        SecretFormat::KeyValue => {
            serde_json::from_str::<std::collections::BTreeMap<String, String>>(value)
                .map(drop)
                .map_err(|_| "value is not a JSON object of strings")
        }
    }
}

fn is_prefixed_alnum(value: &str, prefix: &str) -> bool {
    value
        .strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The canonical form of an item name: a leading `/`, no trailing `/`. Akeyless treats
/// `demo/x` and `/demo/x` as the same item.
pub(crate) fn normalize_name(name: &str) -> Result<String, &'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed == "/" {
        return Err("is empty");
    }
    if trimmed != name {
        return Err("has leading or trailing whitespace");
    }
    if name.ends_with('/') {
        return Err("ends with '/'");
    }
    if name.contains("//") {
        return Err("contains an empty path segment");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/{name}")
    })
}

/// One entry of an auth method's `read` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadPattern {
    All,
    Exact(String),
    /// Everything under this folder; kept with its trailing `/`.
    Prefix(String),
}

impl ReadPattern {
    pub(crate) fn parse(pattern: &str) -> Result<ReadPattern, &'static str> {
        if pattern == "*" || pattern == "/*" {
            return Ok(ReadPattern::All);
        }
        if let Some(folder) = pattern.strip_suffix("/*") {
            if folder.contains('*') {
                return Err("may contain '*' only as a final '/*'");
            }
            let folder = normalize_name(folder)?;
            return Ok(ReadPattern::Prefix(format!("{folder}/")));
        }
        if pattern.contains('*') {
            return Err("may contain '*' only as a final '/*'");
        }
        normalize_name(pattern).map(ReadPattern::Exact)
    }

    pub(crate) fn allows(&self, name: &str) -> bool {
        match self {
            ReadPattern::All => true,
            ReadPattern::Exact(exact) => exact == name,
            ReadPattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// The 1-based line of the `nth` (0-based) line that holds `key:` followed by `value`
/// (quoted or not). With an empty `value`, the first line holding `key:`.
fn line_of(text: &str, key: &str, value: &str, nth: usize) -> Option<usize> {
    let mut seen = 0;
    for (index, line) in text.lines().enumerate() {
        let content = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(rest) = content
            .strip_prefix(key)
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
        else {
            continue;
        };
        let rest = rest.split(" #").next().unwrap_or("").trim();
        let unquoted = rest.trim_matches(|c| c == '"' || c == '\'');
        if value.is_empty() || unquoted == value {
            if seen == nth {
                return Some(index + 1);
            }
            seen += 1;
        }
    }
    None
}

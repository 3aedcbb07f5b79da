//! The `objects` parameter: which items a volume holds and how each becomes files.
//!
//! One entry reads an item (its type declared or asked of Akeyless once), a folder of items, or
//! several items rendered through a template; certificates can be split into cert, key and
//! chain files. Everything is checked here, before any call, and every problem is listed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::template::Template;

/// Limits of the driver's file writer (csi-driver.md §3): longer paths fail the whole write.
const MAX_PATH_BYTES: usize = 4096;
const MAX_ELEMENT_BYTES: usize = 255;

/// One entry of `objects`: which item to read and how to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// The Akeyless item name, e.g. `/prod/db/password`; the folder for [`Shape::Folder`]; may
    /// be empty for a [`Shape::Template`] that only reads its `keys`.
    pub secret_path: String,
    /// Relative, clean path of the file in the volume (the directory of a folder's files, which
    /// may be empty). Also names the object in its id.
    pub file_name: String,
    /// A pinned item version; `None` reads the latest.
    pub version: Option<u32>,
    /// A key or path inside a JSON value (see [`crate::render`]).
    pub property: Option<String>,
    pub encoding: Encoding,
    /// Permission bits of the file(s).
    pub mode: u32,
    /// The declared item type; `None` asks Akeyless (`/describe-item`, cached).
    pub kind: Option<ItemKind>,
    /// A missing item (404) is skipped, not fatal.
    pub optional: bool,
    pub shape: Shape,
}

impl ObjectSpec {
    /// The object's id in `object_version`: the Go provider's `<fileName>:<secretPath>`, unique
    /// because file names are, and stable for users migrating from it.
    pub fn id(&self) -> String {
        if self.secret_path.is_empty() {
            // A template over `keys` only.
            return format!("{}:template", self.file_name);
        }
        format!("{}:{}", self.file_name, self.secret_path)
    }

    /// The files this object writes that are known before any fetch (a folder's are not).
    pub fn planned_files(&self) -> Vec<&str> {
        match &self.shape {
            Shape::Single | Shape::Template(_) => vec![self.file_name.as_str()],
            Shape::PemFiles(files) => {
                let mut out: Vec<&str> = [&files.cert, &files.key, &files.chain]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                if files.bundle {
                    out.push(self.file_name.as_str());
                }
                out
            }
            Shape::Folder(_) => Vec::new(),
        }
    }
}

/// The Akeyless item types a volume can read, with what issuing ones need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// `/get-secret-value`, batched: text, JSON, key/value and password formats.
    Static,
    /// `/get-dynamic-secret-value`: a lease per pod volume, reused until near its end.
    Dynamic(LeaseSpec),
    /// `/get-rotated-secret-value`: the `value` object.
    Rotated,
    /// `/get-certificate-value`: a stored certificate and its key.
    Certificate,
    /// `/get-pki-certificate`: a certificate issued for a key made here.
    Pki(PkiSpec),
    /// `/get-ssh-certificate`: the object's public key, signed.
    Ssh(SshSpec),
}

impl ItemKind {
    /// The names `type:` accepts: ours, then Akeyless's `item_type` names.
    pub const NAMES: &'static str = "static, dynamic, rotated, certificate, pki, ssh";

    /// The kind named by an `item_type` (`/describe-item`, `/list-items`) or a `type:` value;
    /// issuers get default parameters.
    pub fn parse(text: &str) -> Option<Self> {
        Some(
            match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "static" | "static-secret" => Self::Static,
                "dynamic" | "dynamic-secret" => Self::Dynamic(LeaseSpec::default()),
                "rotated" | "rotated-secret" => Self::Rotated,
                "certificate" => Self::Certificate,
                "pki" | "pki-cert-issuer" => Self::Pki(PkiSpec::default()),
                "ssh" | "ssh-cert-issuer" => Self::Ssh(SshSpec::default()),
                _ => return None,
            },
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic(_) => "dynamic",
            Self::Rotated => "rotated",
            Self::Certificate => "certificate",
            Self::Pki(_) => "pki",
            Self::Ssh(_) => "ssh",
        }
    }

    /// Issued per pod volume and reused until shortly before it ends.
    pub fn is_lease(&self) -> bool {
        matches!(self, Self::Dynamic(_) | Self::Pki(_) | Self::Ssh(_))
    }

    /// Gives a certificate, a key and a chain.
    pub fn is_certificate(&self) -> bool {
        matches!(self, Self::Certificate | Self::Pki(_))
    }
}

/// How long a dynamic secret's lease lives when Akeyless does not say (`ttl:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LeaseSpec {
    pub ttl: Option<Duration>,
}

/// What a PKI certificate is issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PkiSpec {
    pub common_name: String,
    pub alt_names: Vec<String>,
    pub uri_sans: Vec<String>,
    /// Requested lifetime; `None` = the issuer's default.
    pub ttl: Option<Duration>,
    pub key_type: KeyType,
}

/// The key made on the node for a PKI certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    #[default]
    EcP256,
    EcP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    const ALL: [(&'static str, KeyType); 6] = [
        ("ec-p256", KeyType::EcP256),
        ("ec-p384", KeyType::EcP384),
        ("ed25519", KeyType::Ed25519),
        ("rsa-2048", KeyType::Rsa2048),
        ("rsa-3072", KeyType::Rsa3072),
        ("rsa-4096", KeyType::Rsa4096),
    ];

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        Self::ALL.iter().find(|(n, _)| *n == text).map(|(_, k)| *k)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("ec-p256", |(n, _)| n)
    }

    fn names() -> String {
        Self::ALL.map(|(n, _)| n).join(", ")
    }
}

/// What an SSH certificate is issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SshSpec {
    /// `cert-username`: the principal.
    pub username: String,
    /// The OpenSSH public key line to sign (public keys are not secret).
    pub public_key: String,
    pub ttl: Option<Duration>,
}

/// How an object's value becomes files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One file, `fileName`: the value (a certificate as one PEM bundle).
    Single,
    /// A certificate as separate files.
    PemFiles(PemFiles),
    /// One file per item of a folder, under `fileName`.
    Folder(Folder),
    /// Several values rendered into `fileName`.
    Template(TemplateSpec),
}

/// `certFile`, `keyFile`, `chainFile`; the bundle too when `fileName` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub chain: Option<String>,
    pub bundle: bool,
}

/// `secretPath: /a/b/*` (items directly in `/a/b`), `/a/b/**` (and below), or `path` with
/// optional `filter` (part of the name) and `recursive`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Folder {
    pub filter: Option<String>,
    pub recursive: bool,
}

/// `template` with its data: `keys` (name → item), or the top-level keys of `secretPath`'s
/// JSON value when there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub template: Arc<Template>,
    pub keys: BTreeMap<String, KeyRef>,
}

/// One item a template reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub secret_path: String,
    pub version: Option<u32>,
    pub property: Option<String>,
    pub kind: Option<ItemKind>,
}

/// How a fetched value is decoded before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Written as it is stored.
    #[default]
    Utf8,
    /// Stored base64-encoded; the file gets the decoded bytes.
    Base64,
    /// Stored hex-encoded; the file gets the decoded bytes.
    Hex,
}

impl Encoding {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "utf-8" | "utf8" => Some(Self::Utf8),
            "base64" => Some(Self::Base64),
            "hex" => Some(Self::Hex),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Utf8 => "utf-8",
            Self::Base64 => "base64",
            Self::Hex => "hex",
        })
    }
}

/// One `objects` entry as written. Unknown fields are refused so that a typo
/// (`filename`, `secretpath`) is reported instead of silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    secret_path: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    version: Option<ScalarText>,
    #[serde(default)]
    property: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    file_permission: Option<ScalarText>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    optional: Option<bool>,
    #[serde(default)]
    cert_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    #[serde(default)]
    chain_file: Option<String>,
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    alt_names: Option<Names>,
    #[serde(default)]
    uri_sans: Option<Names>,
    #[serde(default)]
    ttl: Option<ScalarText>,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    recursive: Option<bool>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    keys: Option<BTreeMap<String, RawKeyRef>>,
    /// Accepted for Go-provider SPCs, which never used it (it is not `type`).
    #[serde(default)]
    #[allow(dead_code)]
    secret_type: Option<serde_norway::Value>,
    /// Accepted for Go-provider SPCs, which never used it.
    #[serde(default)]
    #[allow(dead_code)]
    secret_args: Option<serde_norway::Value>,
}

/// A template key: an item name, or `{secretPath, property, version, type}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawKeyRef {
    Name(String),
    Full(RawKeyFields),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKeyFields {
    #[serde(default)]
    secret_path: Option<String>,
    #[serde(default)]
    property: Option<String>,
    #[serde(default)]
    version: Option<ScalarText>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// A list of names, as a YAML list or one comma-separated string.
#[derive(Debug)]
struct Names(Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let split = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::String(s) => Ok(Self(split(&s))),
            serde_norway::Value::Sequence(items) => items
                .into_iter()
                .map(|item| match item {
                    serde_norway::Value::String(s) => Ok(s.trim().to_owned()),
                    _ => Err(serde::de::Error::custom("expected a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self),
            _ => Err(serde::de::Error::custom(
                "expected a list of names or a comma-separated string",
            )),
        }
    }
}

/// A YAML scalar read as text, so `version: 3` and `version: "3"` (or an unquoted
/// `filePermission: 0644`) all work.
#[derive(Debug)]
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::String(s) => Ok(Self(s)),
            serde_norway::Value::Number(n) => Ok(Self(n.to_string())),
            _ => Err(serde::de::Error::custom("expected a number or a string")),
        }
    }
}

/// The Azure provider's form: `array:` holding YAML strings, each one object.
#[derive(Debug, Deserialize)]
struct ArrayForm {
    array: Vec<String>,
}

/// Parsed `objects` by their text: every pod volume of an SPC sends the same YAML about once a
/// minute, and parsing it was the largest CPU cost of a mount. Objects hold no secret material.
type ObjectsCache = HashMap<(String, u32), (Vec<ObjectSpec>, Vec<String>)>;

/// Distinct `objects` texts kept; the cache starts over when full.
const OBJECTS_CACHE_ENTRIES: usize = 512;

pub(super) fn parse_objects_cached(
    text: &str,
    default_mode: u32,
    problems: &mut Vec<String>,
) -> Vec<ObjectSpec> {
    static CACHE: OnceLock<Mutex<ObjectsCache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (text.to_owned(), default_mode);
    let lock = || {
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some((objects, found)) = lock().get(&key) {
        problems.extend(found.iter().cloned());
        return objects.clone();
    }
    let mut found = Vec::new();
    let objects = parse_objects(text, default_mode, &mut found);
    problems.extend(found.iter().cloned());
    let mut cache = lock();
    if cache.len() >= OBJECTS_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, (objects.clone(), found));
    objects
}

fn parse_objects(text: &str, default_mode: u32, problems: &mut Vec<String>) -> Vec<ObjectSpec> {
    // Entry by entry, so that a typo in one entry does not hide the problems of the others.
    let raw: Vec<Option<RawObject>> = match serde_norway::from_str::<Vec<serde_norway::Value>>(text)
    {
        Ok(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let label = entry_label(i, &entry);
                serde_norway::from_value::<RawObject>(entry)
                    .map_err(|e| problems.push(format!("{label}: {e}")))
                    .ok()
            })
            .collect(),
        Err(list_err) => match serde_norway::from_str::<ArrayForm>(text) {
            Ok(form) => form
                .array
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    serde_norway::from_str::<RawObject>(entry)
                        .map_err(|e| {
                            problems.push(format!("objects: array[{i}]: {}", yaml_error(&e)))
                        })
                        .ok()
                })
                .collect(),
            Err(_) => {
                problems.push(format!(
                    "objects: not a YAML list of {{secretPath, fileName}}: {}",
                    yaml_error(&list_err)
                ));
                return Vec::new();
            }
        },
    };
    if raw.is_empty() {
        problems.push("objects: the list is empty; name at least one item to mount".to_owned());
    }

    let mut objects = Vec::with_capacity(raw.len());
    for (i, obj) in raw.into_iter().enumerate() {
        let Some(obj) = obj else { continue };
        if let Some(spec) = validate_object(i, obj, default_mode, problems) {
            objects.push(spec);
        }
    }
    check_file_name_clashes(&objects, problems);
    check_kinds_agree(&objects, problems);
    objects
}

/// Reads problems into `problems` with the object's label.
struct Checker<'a> {
    label: String,
    problems: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, text: impl fmt::Display) {
        self.problems.push(format!("{}: {text}", self.label));
    }

    fn version(&mut self, raw: Option<ScalarText>) -> Option<u32> {
        raw.and_then(|ScalarText(v)| match v.trim().parse::<u32>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(format_args!(
                    "version {v:?} is not a positive item version (omit it for the latest)"
                ));
                None
            }
        })
    }

    fn property(&mut self, raw: Option<String>) -> Option<String> {
        match raw.map(|p| p.trim().to_owned()) {
            Some(p) if p.is_empty() => {
                self.problem("property is empty; remove it or name a key");
                None
            }
            other => other,
        }
    }

    fn kind(&mut self, raw: Option<&str>) -> Option<ItemKind> {
        let raw = raw.map(str::trim).filter(|t| !t.is_empty())?;
        let kind = ItemKind::parse(raw);
        if kind.is_none() {
            self.problem(format_args!(
                "type {raw:?} is not one of {}",
                ItemKind::NAMES
            ));
        }
        kind
    }

    fn file(&mut self, field: &str, raw: Option<&str>) -> Option<String> {
        let name = raw.map(str::trim).filter(|n| !n.is_empty())?;
        if let Err(why) = check_file_name(name) {
            self.problem(format_args!("{field} {name:?} {why}"));
        }
        Some(name.to_owned())
    }

    fn duration(&mut self, raw: Option<ScalarText>) -> Option<Duration> {
        let ScalarText(text) = raw?;
        let text = text.trim();
        let parsed = match text.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => humantime::parse_duration(text).ok(),
        };
        match parsed {
            Some(d)
                if d >= Duration::from_secs(1) && d <= Duration::from_secs(10 * 365 * 86400) =>
            {
                Some(Duration::from_secs(d.as_secs()))
            }
            _ => {
                self.problem(format_args!(
                    "ttl {text:?} is not a duration between 1s and 10 years (e.g. \"3600\", \"90m\", \"24h\")"
                ));
                None
            }
        }
    }

    /// Refuses fields that make no sense for this object.
    fn refuse(&mut self, present: bool, field: &str, why: &str) {
        if present {
            self.problem(format_args!("{field} {why}"));
        }
    }
}

fn validate_object(
    i: usize,
    mut obj: RawObject,
    default_mode: u32,
    problems: &mut Vec<String>,
) -> Option<ObjectSpec> {
    let before = problems.len();
    let raw_path = obj
        .secret_path
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    let folder_path = obj.path.as_deref().map(str::trim).filter(|p| !p.is_empty());
    let mut check = Checker {
        label: label(i, folder_path.unwrap_or(raw_path)),
        problems,
    };

    let kind = check.kind(obj.kind.as_deref());
    let version = check.version(obj.version);
    let property = check.property(obj.property);
    let optional = obj.optional.unwrap_or(false);
    let encoding = match obj.encoding.as_deref() {
        None => Encoding::Utf8,
        Some(e) => Encoding::parse(e).unwrap_or_else(|| {
            check.problem(format_args!(
                "encoding {e:?} is not one of utf-8, base64, hex"
            ));
            Encoding::Utf8
        }),
    };
    let mode = match obj.file_permission {
        None => default_mode,
        Some(ScalarText(p)) => parse_octal_mode(&p).unwrap_or_else(|| {
            check.problem(format_args!(
                "filePermission {p:?} is not an octal mode between 0000 and 0777 (e.g. \"0440\")"
            ));
            default_mode
        }),
    };
    let ttl = check.duration(obj.ttl);

    // A folder: `secretPath: /a/*` or `/a/**`, or `path` (+ `filter`, `recursive`).
    let glob = raw_path
        .strip_suffix("/**")
        .map(|p| (p, true))
        .or_else(|| raw_path.strip_suffix("/*").map(|p| (p, false)));
    let folder = match (folder_path, glob) {
        (Some(_), _) if !raw_path.is_empty() => {
            check.problem("set either path (a folder) or secretPath, not both");
            None
        }
        (Some(path), _) => Some((
            path.trim_end_matches('/').to_owned(),
            obj.recursive.unwrap_or(false),
        )),
        (None, Some((path, recursive))) => {
            check.refuse(obj.recursive.is_some(), "recursive", "is set by the pattern: use /* for the folder's own items, /** for everything below it");
            Some((path.to_owned(), recursive))
        }
        (None, None) => {
            check.refuse(
                obj.recursive.is_some(),
                "recursive",
                "applies to folders only (path, or a secretPath ending in /* or /**)",
            );
            check.refuse(
                obj.filter.is_some(),
                "filter",
                "applies to folders only (path, or a secretPath ending in /* or /**)",
            );
            None
        }
    };
    if raw_path.contains('*') && glob.is_none() {
        check.problem("secretPath may hold '*' only as a final /* (the folder's items) or /** (everything below it)");
    }

    let is_template = obj.template.is_some();
    let split = obj.cert_file.is_some() || obj.key_file.is_some() || obj.chain_file.is_some();
    let explicit_file = obj
        .file_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);

    let issuing = [
        ("commonName", obj.common_name.is_some()),
        ("altNames", obj.alt_names.is_some()),
        ("uriSans", obj.uri_sans.is_some()),
        ("keyType", obj.key_type.is_some()),
    ];
    let ssh_fields = [
        ("username", obj.username.is_some()),
        ("publicKey", obj.public_key.is_some()),
    ];
    let is_pki = matches!(kind, Some(ItemKind::Pki(_)));
    let is_ssh = matches!(kind, Some(ItemKind::Ssh(_)));
    for (field, present) in issuing {
        check.refuse(present && !is_pki, field, "applies to type: pki only");
    }
    for (field, present) in ssh_fields {
        check.refuse(present && !is_ssh, field, "applies to type: ssh only");
    }
    check.refuse(
        ttl.is_some()
            && !matches!(
                kind,
                Some(ItemKind::Dynamic(_) | ItemKind::Pki(_) | ItemKind::Ssh(_))
            ),
        "ttl",
        "applies to type: dynamic, pki or ssh only",
    );

    let kind = kind.map(|kind| match kind {
        ItemKind::Dynamic(_) => ItemKind::Dynamic(LeaseSpec { ttl }),
        ItemKind::Pki(_) => {
            let common_name = obj
                .common_name
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            if common_name.is_empty() {
                check.problem("type: pki needs commonName (the certificate's subject)");
            }
            let key_type = match obj.key_type.as_deref() {
                None => KeyType::default(),
                Some(text) => KeyType::parse(text).unwrap_or_else(|| {
                    check.problem(format_args!(
                        "keyType {text:?} is not one of {}",
                        KeyType::names()
                    ));
                    KeyType::default()
                }),
            };
            ItemKind::Pki(PkiSpec {
                common_name,
                alt_names: names(obj.alt_names.take()),
                uri_sans: names(obj.uri_sans.take()),
                ttl,
                key_type,
            })
        }
        ItemKind::Ssh(_) => {
            let username = obj
                .username
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            if username.is_empty() {
                check.problem("type: ssh needs username (the certificate's principal)");
            }
            let public_key = obj
                .public_key
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            if let Err(why) = check_ssh_public_key(&public_key) {
                check.problem(format_args!("publicKey {why}"));
            }
            ItemKind::Ssh(SshSpec {
                username,
                public_key,
                ttl,
            })
        }
        other => other,
    });
    if let Some(kind) = &kind
        && kind.is_lease()
    {
        check.refuse(
            version.is_some(),
            "version",
            "does not apply: every issue is new",
        );
    }

    // The shape, and the file it writes.
    let shape;
    let mut file_name;
    if let Some((path, recursive)) = &folder {
        check.refuse(is_template, "template", "cannot be combined with a folder");
        check.refuse(
            split,
            "certFile/keyFile/chainFile",
            "cannot be combined with a folder",
        );
        check.refuse(
            version.is_some(),
            "version",
            "cannot be pinned for a folder's items",
        );
        check.refuse(
            kind.as_ref().is_some_and(|k| *k != ItemKind::Static),
            "type",
            "of a folder must be static (a folder mounts its static secrets)",
        );
        if path.is_empty() || !path.starts_with('/') {
            check.problem("the folder must be a full path such as /app/prod");
        }
        file_name = explicit_file.clone().unwrap_or_default();
        if !file_name.is_empty() {
            let _ = check.file("fileName", Some(&file_name));
        }
        shape = Shape::Folder(Folder {
            filter: obj
                .filter
                .as_deref()
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
            recursive: *recursive,
        });
        return (check.problems.len() == before).then(|| ObjectSpec {
            secret_path: path.clone(),
            file_name,
            version: None,
            property,
            encoding,
            mode,
            kind: Some(ItemKind::Static),
            optional,
            shape,
        });
    }

    if raw_path.is_empty() && !(is_template && obj.keys.as_ref().is_some_and(|k| !k.is_empty())) {
        check.problem("secretPath is missing; set the full Akeyless item name");
    }
    // Without a fileName the item's last path element names the file.
    let default_name = || {
        raw_path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    file_name = explicit_file.clone().unwrap_or_else(default_name);

    if let Some(text) = obj.template {
        check.refuse(
            split,
            "certFile/keyFile/chainFile",
            "cannot be combined with a template",
        );
        check.refuse(
            encoding != Encoding::Utf8,
            "encoding",
            "cannot be combined with a template (use b64dec in the template)",
        );
        check.refuse(
            kind.as_ref().is_some_and(ItemKind::is_lease) && obj.keys.is_none(),
            "type",
            "of a template's secretPath cannot be an issuer",
        );
        if explicit_file.is_none() && raw_path.is_empty() {
            check.problem("a template needs fileName");
        }
        let template = match Template::parse(&text) {
            Ok(t) => Some(t),
            Err(why) => {
                check.problem(format_args!("template: {why}"));
                None
            }
        };
        let mut keys = BTreeMap::new();
        for (name, raw) in obj.keys.unwrap_or_default() {
            if name.trim().is_empty() {
                check.problem("keys: a key name is empty");
                continue;
            }
            let fields = match raw {
                RawKeyRef::Name(path) => RawKeyFields {
                    secret_path: Some(path),
                    property: None,
                    version: None,
                    kind: None,
                },
                RawKeyRef::Full(fields) => fields,
            };
            let path = fields
                .secret_path
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            if path.is_empty() || path.contains('*') {
                check.problem(format_args!("keys.{name}: secretPath must name one item"));
            }
            let key_kind = check.kind(fields.kind.as_deref());
            if key_kind
                .as_ref()
                .is_some_and(|k| matches!(k, ItemKind::Pki(_) | ItemKind::Ssh(_)))
            {
                check.problem(format_args!(
                    "keys.{name}: a template cannot read an issuer (pki, ssh)"
                ));
            }
            let key = KeyRef {
                secret_path: path,
                version: check.version(fields.version),
                property: check.property(fields.property),
                kind: key_kind,
            };
            keys.insert(name, key);
        }
        if let Some(template) = template {
            shape = Shape::Template(TemplateSpec {
                template: Arc::new(template),
                keys,
            });
        } else {
            shape = Shape::Single;
        }
        let _ = check.file("fileName", Some(&file_name));
    } else if split {
        if !kind.as_ref().is_some_and(ItemKind::is_certificate) {
            check.problem("certFile, keyFile and chainFile need type: certificate or type: pki");
        }
        check.refuse(
            property.is_some(),
            "property",
            "cannot be combined with certFile/keyFile/chainFile",
        );
        check.refuse(
            encoding != Encoding::Utf8,
            "encoding",
            "cannot be combined with certFile/keyFile/chainFile",
        );
        let files = PemFiles {
            cert: check.file("certFile", obj.cert_file.as_deref()),
            key: check.file("keyFile", obj.key_file.as_deref()),
            chain: check.file("chainFile", obj.chain_file.as_deref()),
            bundle: explicit_file.is_some(),
        };
        if !files.bundle {
            file_name = [&files.cert, &files.key, &files.chain]
                .into_iter()
                .flatten()
                .next()
                .cloned()
                .unwrap_or_default();
        } else {
            let _ = check.file("fileName", Some(&file_name));
        }
        shape = Shape::PemFiles(files);
    } else {
        check.refuse(obj.keys.is_some(), "keys", "apply to a template only");
        let _ = check.file("fileName", Some(&file_name));
        if file_name.is_empty() {
            check.problem("fileName is empty; set fileName");
        }
        shape = Shape::Single;
    }
    if matches!(kind, Some(ItemKind::Ssh(_))) {
        check.refuse(
            encoding != Encoding::Utf8 || property.is_some(),
            "property/encoding",
            "do not apply to an SSH certificate",
        );
    }

    (check.problems.len() == before).then(|| ObjectSpec {
        secret_path: raw_path.to_owned(),
        file_name,
        version,
        property,
        encoding,
        mode,
        kind,
        optional,
        shape,
    })
}

/// How problems name an entry: `objects[2] (/path)`.
fn label(i: usize, shown: &str) -> String {
    if shown.is_empty() {
        format!("objects[{i}]")
    } else {
        format!("objects[{i}] ({shown})")
    }
}

/// [`label`] of an entry that did not parse, by its `path` or `secretPath` if it has one.
fn entry_label(i: usize, entry: &serde_norway::Value) -> String {
    let text = |key: &str| entry.get(key).and_then(serde_norway::Value::as_str);
    let shown = text("path")
        .filter(|p| !p.trim().is_empty())
        .or_else(|| text("secretPath"))
        .unwrap_or_default();
    label(i, shown.trim())
}

fn names(raw: Option<Names>) -> Vec<String> {
    raw.map(|n| n.0).unwrap_or_default()
}

/// `<type> <base64 blob> [comment]`, the blob starting with the same type: the form
/// `/get-ssh-certificate` takes, checked here so a pasted private key or a typo is caught before
/// any call.
fn check_ssh_public_key(line: &str) -> Result<(), String> {
    if line.contains("PRIVATE KEY") {
        return Err("holds a private key; give the public key line (id_*.pub)".to_owned());
    }
    let mut fields = line.split_whitespace();
    let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
        return Err(
            "is not an OpenSSH public key line (\"ssh-ed25519 AAAA... comment\")".to_owned(),
        );
    };
    let bytes = STANDARD
        .decode(blob)
        .map_err(|_| "is not an OpenSSH public key line: its key is not base64".to_owned())?;
    let inner = bytes
        .get(..4)
        .and_then(|len| {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            bytes.get(4..4usize.checked_add(len)?)
        })
        .ok_or_else(|| "is not an OpenSSH public key line: its key is truncated".to_owned())?;
    if inner != kind.as_bytes() {
        return Err(format!("says {kind:?} but holds a key of another type"));
    }
    Ok(())
}

/// One item name may be read as one type only, so that a lease or a read is shared.
fn check_kinds_agree(objects: &[ObjectSpec], problems: &mut Vec<String>) {
    let mut declared: BTreeMap<&str, &'static str> = BTreeMap::new();
    for object in objects {
        let mut refs: Vec<(&str, Option<&ItemKind>)> = Vec::new();
        if !matches!(object.shape, Shape::Folder(_)) && !object.secret_path.is_empty() {
            refs.push((&object.secret_path, object.kind.as_ref()));
        }
        if let Shape::Template(t) = &object.shape {
            refs.extend(
                t.keys
                    .values()
                    .map(|k| (k.secret_path.as_str(), k.kind.as_ref())),
            );
        }
        for (path, kind) in refs {
            let Some(kind) = kind else { continue };
            let family = match kind {
                ItemKind::Pki(_) | ItemKind::Ssh(_) => continue,
                other => other.name(),
            };
            if let Some(before) = declared.insert(path, family)
                && before != family
            {
                problems.push(format!(
                    "objects: {path} is declared both type: {before} and type: {family}; an item has one type"
                ));
            }
        }
    }
}

/// `"0644"`, `"644"` or `"0o644"`.
fn parse_octal_mode(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

/// The driver's own path rules (csi-driver.md §3), so a bad name fails here with a clear
/// message instead of as an opaque `FileWriteError` in the driver.
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty; set fileName".to_owned());
    }
    if name.starts_with('/') {
        return Err("is absolute; use a relative path".to_owned());
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(format!("is longer than {MAX_PATH_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err("contains a NUL byte".to_owned());
    }
    if name.ends_with('/') || name.contains("//") {
        return Err("is not a clean path (no trailing or doubled '/')".to_owned());
    }
    for (i, element) in name.split('/').enumerate() {
        if element == "." || element == ".." {
            return Err(format!("contains a {element:?} element"));
        }
        if i == 0 && element.starts_with("..") {
            return Err("starts with \"..\", which the driver reserves".to_owned());
        }
        if element.len() > MAX_ELEMENT_BYTES {
            return Err(format!(
                "has an element longer than {MAX_ELEMENT_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// Two objects may not write the same file, nor a file where another needs a directory.
fn check_file_name_clashes(objects: &[ObjectSpec], problems: &mut Vec<String>) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for obj in objects {
        for file in obj.planned_files() {
            if let Some(other) = seen.insert(file, &obj.secret_path) {
                problems.push(format!(
                    "objects: fileName {file:?} is used by both {other} and {}; give each object its own fileName",
                    obj.secret_path
                ));
            }
        }
    }
    let names: BTreeSet<&str> = seen.keys().copied().collect();
    for name in &names {
        if let Some(prefix) = file_prefix_clash(name, |p| names.contains(p)) {
            problems.push(format!(
                "objects: fileName {prefix:?} is a file but {name:?} needs it to be a directory"
            ));
        }
    }
}

/// The first directory of `name` that `is_file` says is a file.
pub(crate) fn file_prefix_clash(name: &str, is_file: impl Fn(&str) -> bool) -> Option<&str> {
    name.match_indices('/')
        .map(|(at, _)| &name[..at])
        .find(|prefix| is_file(prefix))
}

fn yaml_error(e: &serde_norway::Error) -> String {
    // serde_norway's message already carries "at line L column C" when it knows it; make
    // sure the line is there for errors that only have a location.
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("line") => format!("{msg} (line {})", loc.line()),
        _ => msg,
    }
}

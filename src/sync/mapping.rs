//! ExternalSecret-style mappings, parsed and validated once: the `secretSync` parameter of an
//! SPC ([`parse`]) and the spec of an ESO `ExternalSecret` served by the controller
//! ([`external_secret`]) are the same vocabulary and share one parser.
//!
//! Every problem is reported at once, naming the entry and the fix, as `params` does for
//! `objects`. Unknown fields are refused so a typo is not silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::Deserialize;

use crate::akeyless::ItemRef;
use crate::template::Template;

/// What the SPC asks to mirror, and what a failed sync does to the mount.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub targets: Vec<Target>,
    pub on_failure: FailurePolicy,
}

/// `secretSyncFailurePolicy`: whether a failed sync fails the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Files and Secret never disagree silently (default).
    #[default]
    Fail,
    /// The files are served; the failure is logged as a warning.
    Warn,
}

/// ExternalSecret's `target.creationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreationPolicy {
    Owner,
    Merge,
    Orphan,
    None,
}

/// ExternalSecret's `target.deletionPolicy`: what happens to keys whose source is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the Secret as it is (ESO's default).
    Retain,
    /// Drop keys whose source is gone; with no data left, delete an Owner Secret.
    Delete,
    /// Drop keys whose source is gone, keep the Secret.
    Merge,
}

/// ExternalSecret's `template.mergePolicy`: whether fetched keys stay beside templated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergePolicy {
    /// ESO's default: with `template.data`, only the templated keys are written.
    Replace,
    /// Fetched keys and templated keys (templates win on a clash).
    Merge,
}

/// How a fetched value is decoded (ExternalSecret's `decodingStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    None,
    Base64,
    Base64Url,
    /// Standard base64, else URL-safe base64, else the value as it is.
    Auto,
}

/// How keys taken from Akeyless (JSON keys, item names) become Secret keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Any character but `[-._a-zA-Z0-9]` (and letters and digits of other scripts) becomes `_`.
    Default,
    /// Such a character becomes `_U<hex>_`.
    Unicode,
}

/// Whether a value with a NUL byte is refused (`Fail`) or written (`Ignore`, ESO's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullBytes {
    Ignore,
    Fail,
}

/// An Akeyless item, optionally a property inside its JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub key: String,
    pub property: Option<String>,
    pub version: Option<u32>,
    pub decoding: Decoding,
    pub conversion: Conversion,
    pub null_bytes: NullBytes,
}

/// One `data` entry.
#[derive(Debug, Clone)]
pub struct DataRef {
    pub secret_key: String,
    pub remote: RemoteRef,
}

/// `dataFrom[].find`: the items Akeyless lists under `path` that match the name and carry any of
/// the tags (their values; ESO's Akeyless provider lists once per tag).
#[derive(Debug, Clone)]
pub struct Find {
    /// The folder to list (`/` when unset), always with a leading `/`.
    pub path: String,
    pub name: Option<Regex>,
    pub tags: BTreeMap<String, String>,
    pub conversion: Conversion,
    pub decoding: Decoding,
    pub null_bytes: NullBytes,
}

/// `dataFrom[].rewrite[].regexp`: renames keys.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub source: Regex,
    pub target: String,
}

/// One `dataFrom` entry.
#[derive(Debug, Clone)]
pub enum DataFrom {
    /// Every key of a JSON value (or of the object at `property`).
    Extract {
        remote: RemoteRef,
        rewrite: Vec<Rewrite>,
    },
    /// Every item Akeyless lists that matches.
    Find { find: Find, rewrite: Vec<Rewrite> },
}

impl DataFrom {
    /// The item read, for an `extract`.
    pub fn remote(&self) -> Option<&RemoteRef> {
        match self {
            Self::Extract { remote, .. } => Some(remote),
            Self::Find { .. } => None,
        }
    }
}

/// One Secret to write.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub creation: CreationPolicy,
    pub deletion: DeletionPolicy,
    /// `template.type`; `None` keeps `Opaque` (or, under Merge, the existing type).
    pub secret_type: Option<String>,
    /// `template.metadata` (values may be templates, rendered over the data).
    pub labels: BTreeMap<String, Template>,
    pub annotations: BTreeMap<String, Template>,
    pub templates: BTreeMap<String, Template>,
    /// Whether the entry has a `template` at all (ESO copies the ExternalSecret's own labels
    /// and annotations to a Secret without one).
    pub has_template: bool,
    pub merge_policy: MergePolicy,
    /// `target.immutable`: the Secret is created immutable and never updated.
    pub immutable: bool,
    pub data_from: Vec<DataFrom>,
    pub data: Vec<DataRef>,
}

impl Target {
    /// Every item (and pinned version) the Secret reads directly (not `find`'s listings).
    pub fn remote_refs(&self) -> impl Iterator<Item = &RemoteRef> {
        self.data_from
            .iter()
            .filter_map(DataFrom::remote)
            .chain(self.data.iter().map(|d| &d.remote))
    }

    /// The `find` entries.
    pub fn finds(&self) -> impl Iterator<Item = &Find> {
        self.data_from.iter().filter_map(|d| match d {
            DataFrom::Find { find, .. } => Some(find),
            DataFrom::Extract { .. } => None,
        })
    }
}

impl Mapping {
    /// The items (and pinned versions) the Secrets read directly, to join the mount's batched
    /// reads.
    pub fn items(&self) -> Vec<ItemRef> {
        let items: BTreeSet<(&str, Option<u32>)> = self
            .written()
            .flat_map(Target::remote_refs)
            .map(|remote| (remote.key.as_str(), remote.version))
            .collect();
        items
            .into_iter()
            .map(|(name, version)| ItemRef {
                name: name.to_owned(),
                version,
            })
            .collect()
    }

    /// Items read only for `deletionPolicy: Delete` targets: when Akeyless no longer has one,
    /// its keys leave those Secrets instead of failing the mount (ExternalSecret's semantics).
    pub fn optional_items(&self) -> BTreeSet<ItemRef> {
        let reads = |t: &Target| {
            t.remote_refs()
                .map(|r| ItemRef {
                    name: r.key.clone(),
                    version: r.version,
                })
                .collect::<Vec<_>>()
        };
        let required: BTreeSet<ItemRef> = self
            .written()
            .filter(|t| t.deletion != DeletionPolicy::Delete)
            .flat_map(reads)
            .collect();
        self.written()
            .filter(|t| t.deletion == DeletionPolicy::Delete)
            .flat_map(reads)
            .filter(|item| !required.contains(item))
            .collect()
    }

    /// The targets written (creationPolicy None only reads).
    pub fn written(&self) -> impl Iterator<Item = &Target> {
        self.targets
            .iter()
            .filter(|t| t.creation != CreationPolicy::None)
    }
}

/// Invalid mapping: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid secretSync: {}", .0.join("; "))]
pub struct MappingError(pub Vec<String>);

/// Our own annotations; a template may not set them.
pub const RESERVED_PREFIX: &str = "akeyless-csi-provider/";

/// Where a mapping comes from: what it may say differs a little.
#[derive(Clone, Copy)]
enum Dialect<'a> {
    /// An SPC's `secretSync`, for a pod in this namespace.
    SecretSync { namespace: &'a str },
    /// An ESO ExternalSecret of this name.
    ExternalSecret { name: &'a str },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    target: RawTarget,
    #[serde(default)]
    data: Vec<RawData>,
    #[serde(default)]
    data_from: Vec<RawDataFrom>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTarget {
    #[serde(default)]
    name: String,
    /// Accepted only to refuse anything but the pod's namespace with a clear message.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    creation_policy: Option<String>,
    #[serde(default)]
    deletion_policy: Option<String>,
    #[serde(default)]
    template: Option<RawTemplate>,
    #[serde(default)]
    immutable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTemplate {
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    /// ESO's `engineVersion`: only `v2` (its default, and the syntax implemented) is accepted.
    #[serde(default)]
    engine_version: Option<String>,
    #[serde(default)]
    merge_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawData {
    #[serde(default)]
    secret_key: String,
    remote_ref: RawRemoteRef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataFrom {
    #[serde(default)]
    extract: Option<RawRemoteRef>,
    #[serde(default)]
    find: Option<RawFind>,
    #[serde(default)]
    rewrite: Vec<RawRewrite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRemoteRef {
    #[serde(default)]
    key: String,
    #[serde(default)]
    property: Option<String>,
    #[serde(default)]
    version: Option<serde_norway::Value>,
    #[serde(default)]
    decoding_strategy: Option<String>,
    #[serde(default)]
    conversion_strategy: Option<String>,
    #[serde(default)]
    null_byte_policy: Option<String>,
    #[serde(default)]
    metadata_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFind {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    name: Option<RawFindName>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    conversion_strategy: Option<String>,
    #[serde(default)]
    decoding_strategy: Option<String>,
    #[serde(default)]
    null_byte_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFindName {
    #[serde(default)]
    regexp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    #[serde(default)]
    regexp: Option<RawRegexp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegexp {
    #[serde(default)]
    source: String,
    #[serde(default)]
    target: String,
}

/// Parses the `secretSync` YAML list and `secretSyncFailurePolicy` for a pod in `namespace`.
pub fn parse(
    text: &str,
    failure_policy: Option<&str>,
    namespace: &str,
) -> Result<Mapping, MappingError> {
    let mut problems = Vec::new();
    let on_failure = match failure_policy.map(str::trim) {
        None | Some("") => FailurePolicy::Fail,
        Some(p) if p.eq_ignore_ascii_case("fail") => FailurePolicy::Fail,
        Some(p) if p.eq_ignore_ascii_case("warn") => FailurePolicy::Warn,
        Some(p) => {
            problems.push(format!(
                "secretSyncFailurePolicy: {p:?} is not Fail or Warn"
            ));
            FailurePolicy::Fail
        }
    };
    let raw: Vec<serde_norway::Value> = match serde_norway::from_str(text) {
        Ok(list) => list,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            // The YAML error text may quote the input; only its kind and place are kept.
            let kind = e.to_string();
            let kind = kind.split(" at line").next().unwrap_or_default();
            problems.push(format!(
                "secretSync: not a YAML list of {{target, data, dataFrom}}{at}: {kind}"
            ));
            return Err(MappingError(problems));
        }
    };
    if raw.is_empty() {
        problems.push("secretSync: the list is empty; remove the parameter or add a target".into());
    }
    let mut names = BTreeSet::new();
    let mut targets = Vec::new();
    let dialect = Dialect::SecretSync { namespace };
    for (i, entry) in raw.into_iter().enumerate() {
        // Entry by entry, so that a typo in one entry does not hide the problems of the others.
        let name = entry
            .get("target")
            .and_then(|t| t.get("name"))
            .and_then(serde_norway::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let entry = match serde_norway::from_value::<RawEntry>(entry) {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(format!("secretSync[{i}] ({name}): {e}"));
                continue;
            }
        };
        let t = &entry.target;
        let label = format!("secretSync[{i}] ({})", t.name);
        if is_dns_subdomain(&t.name) && !names.insert(t.name.clone()) {
            problems.push(format!(
                "{label}: target.name appears twice; merge the entries"
            ));
        }
        if let Some(target) = validate(&label, entry, dialect, &mut problems) {
            targets.push(target);
        }
    }
    if problems.is_empty() {
        Ok(Mapping {
            targets,
            on_failure,
        })
    } else {
        Err(MappingError(problems))
    }
}

/// Parses the mapping of an ESO ExternalSecret named `name` from its `spec` (its other fields,
/// `secretStoreRef`, `refreshInterval`..., are read by the controller and skipped here). The
/// problems name the fields as `spec.<path>`.
pub fn external_secret(name: &str, spec: &serde_json::Value) -> Result<Target, MappingError> {
    let mut problems = Vec::new();
    let field = |key: &str| spec.get(key).filter(|v| !v.is_null()).cloned();
    let mut raw = RawEntry {
        target: RawTarget::default(),
        data: Vec::new(),
        data_from: Vec::new(),
    };
    // Each part separately, so that one wrong type does not hide the others' problems.
    if let Some(value) = field("target") {
        match serde_json::from_value(value) {
            Ok(t) => raw.target = t,
            Err(e) => problems.push(format!("spec.target: {}", json_problem(&e))),
        }
    }
    if let Some(value) = field("data") {
        match serde_json::from_value(value) {
            Ok(d) => raw.data = d,
            Err(e) => problems.push(format!("spec.data: {}", json_problem(&e))),
        }
    }
    if let Some(value) = field("dataFrom") {
        match serde_json::from_value(value) {
            Ok(d) => raw.data_from = d,
            Err(e) => problems.push(format!("spec.dataFrom: {}", json_problem(&e))),
        }
    }
    if !problems.is_empty() {
        return Err(MappingError(problems));
    }
    let target = validate("spec", raw, Dialect::ExternalSecret { name }, &mut problems);
    match target {
        Some(target) if problems.is_empty() => Ok(target),
        _ => Err(MappingError(problems)),
    }
}

/// A serde error in words, without the input it may quote.
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if let Some(field) = text
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        return format!("unknown field {field:?}");
    }
    match text.find("expected") {
        Some(at) if text.contains("invalid type") => {
            format!("a field has the wrong type ({})", &text[at..])
        }
        _ => text.split(" at line").next().unwrap_or_default().to_owned(),
    }
}

fn validate(
    label: &str,
    entry: RawEntry,
    dialect: Dialect<'_>,
    problems: &mut Vec<String>,
) -> Option<Target> {
    let before = problems.len();
    let eso = matches!(dialect, Dialect::ExternalSecret { .. });
    let t = entry.target;
    // Fields as the user wrote them: `spec.target.name` in an ExternalSecret, `secretSync[i]
    // (name): target.name` in an SPC's entry.
    let f = |field: &str| {
        if eso {
            format!("{label}.{field}")
        } else {
            format!("{label}: {field}")
        }
    };
    let name = match dialect {
        Dialect::ExternalSecret { name } if t.name.trim().is_empty() => name.to_owned(),
        _ => t.name.trim().to_owned(),
    };
    if !is_dns_subdomain(&name) {
        problems.push(format!(
            "{} must be a Secret name (lowercase letters, digits, '-' and '.', at most 253)",
            f("target.name")
        ));
    }
    match (dialect, t.namespace.as_deref()) {
        (Dialect::SecretSync { namespace }, Some(ns)) if ns != namespace => {
            problems.push(format!(
                "{} {ns:?} is refused: Secrets are written only in the pod's namespace {namespace:?}; remove target.namespace",
                f("target.namespace")
            ));
        }
        (Dialect::ExternalSecret { .. }, Some(_)) => {
            problems.push(format!(
                "{} is not a field of ExternalSecret (the Secret is written in the ExternalSecret's namespace)",
                f("target.namespace")
            ));
        }
        _ => {}
    }
    let creation = match t.creation_policy.as_deref().map(str::trim) {
        None | Some("") | Some("Owner") => CreationPolicy::Owner,
        Some("Merge") => CreationPolicy::Merge,
        Some("Orphan") => CreationPolicy::Orphan,
        Some("None") => CreationPolicy::None,
        Some(p) => {
            problems.push(format!(
                "{} {p:?} is not Owner, Merge, Orphan or None",
                f("target.creationPolicy")
            ));
            CreationPolicy::Owner
        }
    };
    let deletion = match t.deletion_policy.as_deref().map(str::trim) {
        None | Some("") | Some("Retain") => DeletionPolicy::Retain,
        Some("Delete") => DeletionPolicy::Delete,
        Some("Merge") if eso => DeletionPolicy::Merge,
        Some(p) => {
            problems.push(format!(
                "{} {p:?} is not {}",
                f("target.deletionPolicy"),
                if eso {
                    "Retain, Delete or Merge"
                } else {
                    "Retain or Delete"
                }
            ));
            DeletionPolicy::Retain
        }
    };
    if eso && deletion == DeletionPolicy::Delete && creation != CreationPolicy::Owner {
        // ESO's rule: only a Secret the ExternalSecret owns may be deleted.
        problems.push(format!(
            "{} Delete needs creationPolicy Owner (only a Secret the ExternalSecret owns may be deleted); use Merge or Retain",
            f("target.deletionPolicy")
        ));
    }
    let immutable = match (dialect, t.immutable) {
        (_, None | Some(false)) => false,
        (Dialect::ExternalSecret { .. }, Some(true)) => true,
        (Dialect::SecretSync { .. }, Some(true)) => {
            problems.push(format!(
                "{} is refused: immutable Secrets cannot follow rotation; remove it (the controller supports it for ExternalSecrets)",
                f("target.immutable")
            ));
            false
        }
    };
    let has_template = t.template.is_some();
    let template = t.template.unwrap_or(RawTemplate {
        secret_type: None,
        metadata: None,
        data: BTreeMap::new(),
        engine_version: None,
        merge_policy: None,
    });
    if let Some(v) = template.engine_version.as_deref().filter(|v| *v != "v2") {
        problems.push(format!(
            "{} {v:?} is not supported; use v2 (or omit it)",
            f("target.template.engineVersion")
        ));
    }
    let merge_policy = match template.merge_policy.as_deref().map(str::trim) {
        // An SPC's secretSync has always merged (documented); ESO replaces by default.
        None | Some("") if eso => MergePolicy::Replace,
        None | Some("") => MergePolicy::Merge,
        Some("Replace") => MergePolicy::Replace,
        Some("Merge") => MergePolicy::Merge,
        Some(p) => {
            problems.push(format!(
                "{} {p:?} is not Replace or Merge",
                f("target.template.mergePolicy")
            ));
            MergePolicy::Replace
        }
    };
    let secret_type = template
        .secret_type
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    // The token controller fills these with credentials: writing one is not a mirror.
    if let Some(ty) = secret_type.as_deref().filter(|t| {
        matches!(
            *t,
            "kubernetes.io/service-account-token" | "bootstrap.kubernetes.io/token"
        )
    }) {
        problems.push(format!(
            "{} {ty} is refused: Kubernetes fills such Secrets with credentials; use Opaque",
            f("target.template.type")
        ));
    }
    let metadata = template.metadata.unwrap_or(RawMetadata {
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    });
    let mut metadata_templates = |what: &str, map: BTreeMap<String, String>| {
        let mut parsed = BTreeMap::new();
        for (key, text) in map {
            if key.starts_with(RESERVED_PREFIX) {
                problems.push(format!(
                    "{} key {key:?} is reserved for the provider's own markers",
                    f(&format!("target.template.metadata.{what}"))
                ));
                continue;
            }
            match Template::parse(&text) {
                Ok(t) => {
                    parsed.insert(key, t);
                }
                Err(why) => problems.push(format!(
                    "{}: {why}",
                    f(&format!("target.template.metadata.{what}[{key}]"))
                )),
            }
        }
        parsed
    };
    let labels = metadata_templates("labels", metadata.labels);
    let annotations = metadata_templates("annotations", metadata.annotations);
    let mut templates = BTreeMap::new();
    for (key, text) in &template.data {
        check_key(&f("target.template.data"), "key", key, problems);
        match Template::parse(text) {
            Ok(t) => {
                templates.insert(key.clone(), t);
            }
            Err(why) => problems.push(format!(
                "{}: {why}",
                f(&format!("target.template.data[{key}]"))
            )),
        }
    }
    let mut data_from = Vec::new();
    for (j, d) in entry.data_from.into_iter().enumerate() {
        let here = f(&format!("dataFrom[{j}]"));
        if !eso && (d.find.is_some() || !d.rewrite.is_empty()) {
            problems.push(format!(
                "{here}: find and rewrite are not supported in secretSync (they are for ExternalSecrets served by the controller); use extract or data"
            ));
            continue;
        }
        let rewrite = rewrites(&here, d.rewrite, problems);
        match (d.extract, d.find) {
            (Some(extract), None) => {
                if let Some(remote) = remote_ref(&format!("{here}.extract"), extract, problems) {
                    data_from.push(DataFrom::Extract { remote, rewrite });
                }
            }
            (None, Some(find)) => {
                if let Some(find) = find_ref(&format!("{here}.find"), find, problems) {
                    data_from.push(DataFrom::Find { find, rewrite });
                }
            }
            (Some(_), Some(_)) => problems.push(format!(
                "{here}: has both extract and find; split them into two dataFrom entries"
            )),
            (None, None) => problems.push(format!(
                "{here}: needs extract{}",
                if eso { " or find" } else { "" }
            )),
        }
    }
    let mut data = Vec::new();
    for (j, d) in entry.data.into_iter().enumerate() {
        let here = f(&format!("data[{j}]"));
        check_key(&here, "secretKey", &d.secret_key, problems);
        if let Some(remote) = remote_ref(&format!("{here}.remoteRef"), d.remote_ref, problems) {
            data.push(DataRef {
                secret_key: d.secret_key,
                remote,
            });
        }
    }
    if !eso
        && data.is_empty()
        && data_from.is_empty()
        && templates.is_empty()
        && problems.len() == before
    {
        problems.push(format!(
            "{label}: nothing to write; add data, dataFrom or template.data"
        ));
    }
    (problems.len() == before).then_some(Target {
        name,
        creation,
        deletion,
        secret_type,
        labels,
        annotations,
        templates,
        has_template,
        merge_policy,
        immutable,
        data_from,
        data,
    })
}

fn strategy<T: Copy>(
    at: &str,
    field: &str,
    value: Option<&str>,
    default: T,
    choices: &[(&str, T)],
    problems: &mut Vec<String>,
) -> T {
    match value.map(str::trim) {
        None | Some("") => default,
        Some(v) => match choices.iter().find(|(name, _)| *name == v) {
            Some((_, choice)) => *choice,
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                problems.push(format!("{at}: {field} {v:?} is not {}", names.join(", ")));
                default
            }
        },
    }
}

const DECODINGS: &[(&str, Decoding)] = &[
    ("None", Decoding::None),
    ("Base64", Decoding::Base64),
    ("Base64URL", Decoding::Base64Url),
    ("Auto", Decoding::Auto),
];
const CONVERSIONS: &[(&str, Conversion)] = &[
    ("Default", Conversion::Default),
    ("Unicode", Conversion::Unicode),
];
const NULL_BYTES: &[(&str, NullBytes)] =
    &[("Ignore", NullBytes::Ignore), ("Fail", NullBytes::Fail)];

fn remote_ref(at: &str, raw: RawRemoteRef, problems: &mut Vec<String>) -> Option<RemoteRef> {
    let before = problems.len();
    let key = raw.key.trim().to_owned();
    if key.is_empty() {
        problems.push(format!("{at}: key is missing; set the Akeyless item name"));
    }
    let version = match raw.version {
        None => None,
        Some(v) => {
            let text = match &v {
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::String(s) => s.trim().to_owned(),
                _ => String::new(),
            };
            match text.parse::<u32>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => {
                    problems.push(format!("{at}: version is not a positive item version"));
                    None
                }
            }
        }
    };
    let decoding = strategy(
        at,
        "decodingStrategy",
        raw.decoding_strategy.as_deref(),
        Decoding::None,
        DECODINGS,
        problems,
    );
    let conversion = strategy(
        at,
        "conversionStrategy",
        raw.conversion_strategy.as_deref(),
        Conversion::Default,
        CONVERSIONS,
        problems,
    );
    let null_bytes = strategy(
        at,
        "nullBytePolicy",
        raw.null_byte_policy.as_deref(),
        NullBytes::Ignore,
        NULL_BYTES,
        problems,
    );
    match raw.metadata_policy.as_deref().map(str::trim) {
        None | Some("") | Some("None") => {}
        Some("Fetch") => problems.push(format!(
            "{at}: metadataPolicy Fetch (item tags and metadata as values) is not supported; remove it"
        )),
        Some(p) => problems.push(format!("{at}: metadataPolicy {p:?} is not None or Fetch")),
    }
    let property = raw
        .property
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    (problems.len() == before).then_some(RemoteRef {
        key,
        property,
        version,
        decoding,
        conversion,
        null_bytes,
    })
}

fn find_ref(at: &str, raw: RawFind, problems: &mut Vec<String>) -> Option<Find> {
    let before = problems.len();
    let path = raw
        .path
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let name = match raw.name.map(|n| n.regexp) {
        None => None,
        Some(text) if text.trim().is_empty() => {
            problems.push(format!(
                "{at}: name.regexp is empty; remove name or give a pattern"
            ));
            None
        }
        Some(text) => match Regex::new(&text) {
            Ok(re) => Some(re),
            Err(e) => {
                problems.push(format!(
                    "{at}: name.regexp is not a valid regular expression: {e}"
                ));
                None
            }
        },
    };
    if name.is_none() && raw.tags.is_empty() && problems.len() == before {
        problems.push(format!(
            "{at}: needs name.regexp or tags (listing a whole folder unfiltered is refused)"
        ));
    }
    let conversion = strategy(
        at,
        "conversionStrategy",
        raw.conversion_strategy.as_deref(),
        Conversion::Default,
        CONVERSIONS,
        problems,
    );
    let decoding = strategy(
        at,
        "decodingStrategy",
        raw.decoding_strategy.as_deref(),
        Decoding::None,
        DECODINGS,
        problems,
    );
    let null_bytes = strategy(
        at,
        "nullBytePolicy",
        raw.null_byte_policy.as_deref(),
        NullBytes::Ignore,
        NULL_BYTES,
        problems,
    );
    (problems.len() == before).then_some(Find {
        path,
        name,
        tags: raw.tags,
        conversion,
        decoding,
        null_bytes,
    })
}

fn rewrites(at: &str, raw: Vec<RawRewrite>, problems: &mut Vec<String>) -> Vec<Rewrite> {
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let here = format!("{at}.rewrite[{i}]");
        let Some(re) = r.regexp else {
            problems.push(format!("{here}: needs regexp {{source, target}}"));
            continue;
        };
        match Regex::new(&re.source) {
            Ok(source) if !re.source.is_empty() => out.push(Rewrite {
                source,
                target: re.target,
            }),
            Ok(_) => problems.push(format!("{here}.regexp.source is empty")),
            Err(e) => problems.push(format!(
                "{here}.regexp.source is not a valid regular expression: {e}"
            )),
        }
    }
    out
}

/// A Secret data key: `[-._a-zA-Z0-9]+`, at most 253 (what Kubernetes accepts).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn check_key(at: &str, what: &str, key: &str, problems: &mut Vec<String>) {
    if !valid_key(key) {
        problems.push(format!(
            "{at}: {what} {key:?} is not a valid Secret key (letters, digits, '-', '.', '_')"
        ));
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
- target:
    name: db-credentials
    creationPolicy: Owner
    deletionPolicy: Retain
    template:
      type: kubernetes.io/basic-auth
      metadata: {labels: {app: api}, annotations: {team: payments}}
      data: {url: "postgres://{{ .username }}:{{ .password }}@db:5432/app"}
  data:
    - secretKey: username
      remoteRef: {key: /prod/db, property: username}
    - secretKey: password
      remoteRef: {key: /prod/db, property: password, version: 3}
  dataFrom:
    - extract: {key: /prod/app-config}
"#;

    #[test]
    fn the_issue_example_parses() {
        let m = parse(ISSUE_EXAMPLE, None, "shop").unwrap();
        assert_eq!(m.on_failure, FailurePolicy::Fail);
        let t = &m.targets[0];
        assert_eq!(t.name, "db-credentials");
        assert_eq!(t.creation, CreationPolicy::Owner);
        assert_eq!(t.deletion, DeletionPolicy::Retain);
        assert_eq!(t.secret_type.as_deref(), Some("kubernetes.io/basic-auth"));
        let render = |t: &Template| t.render(&BTreeMap::new()).unwrap().expose().to_vec();
        assert_eq!(render(&t.labels["app"]), b"api");
        assert_eq!(render(&t.annotations["team"]), b"payments");
        assert!(t.templates.contains_key("url"));
        assert_eq!(t.data[1].remote.version, Some(3));
        assert_eq!(t.data[1].remote.property.as_deref(), Some("password"));
        assert_eq!(t.data_from[0].remote().unwrap().key, "/prod/app-config");
    }

    #[test]
    fn the_example_spc_parses() {
        #[derive(Deserialize)]
        struct Spc {
            spec: Spec,
        }
        #[derive(Deserialize)]
        struct Spec {
            parameters: BTreeMap<String, String>,
        }
        let spc: Spc =
            serde_norway::from_str(include_str!("../../examples/secret-sync-spc.yaml")).unwrap();
        let p = &spc.spec.parameters;
        let m = parse(
            &p["secretSync"],
            p.get("secretSyncFailurePolicy").map(String::as_str),
            "payments",
        )
        .unwrap();
        assert_eq!(m.targets.len(), 3);
        assert_eq!(m.targets[2].creation, CreationPolicy::Merge);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
- target: {name: Bad_Name, creationPolicy: Sometimes, deletionPolicy: Never, namespace: kube-system}
  data:
    - secretKey: "a/b"
      remoteRef: {key: "", version: x, decodingStrategy: Rot13}
- target: {name: ok, template: {data: {x: "{{ .a | nope }}"}, metadata: {annotations: {"akeyless-csi-provider/managed-by": x}}}}
- target: {name: sa, template: {type: kubernetes.io/service-account-token, engineVersion: v1}}
  dataFrom: [{extract: {key: /x}}]
"#;
        let e = parse(text, Some("sometimes"), "shop")
            .unwrap_err()
            .to_string();
        for expected in [
            "secretSyncFailurePolicy",
            "target.name must be a Secret name",
            "creationPolicy \"Sometimes\"",
            "deletionPolicy \"Never\"",
            "target.namespace \"kube-system\" is refused",
            "secretKey \"a/b\"",
            "key is missing",
            "version is not a positive",
            "decodingStrategy \"Rot13\"",
            "unknown function \"nope\"",
            "reserved",
            "service-account-token is refused",
            "engineVersion \"v1\"",
        ] {
            assert!(e.contains(expected), "{expected} missing from {e}");
        }
    }

    #[test]
    fn the_pods_namespace_may_be_named_and_unknown_fields_are_refused() {
        let ok = "- target: {name: a, namespace: shop}\n  dataFrom: [{extract: {key: /x}}]\n";
        assert!(parse(ok, Some("Warn"), "shop").is_ok());
        let typo = "- target: {name: a}\n  dataFrom: [{extract: {key: /x}}]\n  datum: []\n";
        assert!(
            parse(typo, None, "shop")
                .unwrap_err()
                .to_string()
                .contains("datum")
        );
        let find = "- target: {name: a}\n  dataFrom: [{find: {path: /x}}]\n";
        assert!(parse(find, None, "shop").is_err());
    }
}

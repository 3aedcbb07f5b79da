//! The `secretSync` parameter: ExternalSecret-style mappings, parsed and validated once.
//!
//! Every problem is reported at once, naming the entry and the fix, as `params` does for
//! `objects`. Unknown fields are refused so a typo is not silently ignored.

use std::collections::{BTreeMap, BTreeSet};

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

/// ExternalSecret's `target.deletionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionPolicy {
    Retain,
    Delete,
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

/// An Akeyless item, optionally a property inside its JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub key: String,
    pub property: Option<String>,
    pub version: Option<u32>,
    pub decoding: Decoding,
}

/// One `data` entry.
#[derive(Debug, Clone)]
pub struct DataRef {
    pub secret_key: String,
    pub remote: RemoteRef,
}

/// One Secret to write.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub creation: CreationPolicy,
    pub deletion: DeletionPolicy,
    /// `template.type`; `None` keeps `Opaque` (or, under Merge, the existing type).
    pub secret_type: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub templates: BTreeMap<String, Template>,
    pub data_from: Vec<RemoteRef>,
    pub data: Vec<DataRef>,
}

impl Mapping {
    /// The items (and pinned versions) the Secrets need, to join the mount's batched reads.
    pub fn items(&self) -> Vec<ItemRef> {
        let mut items = BTreeSet::new();
        for target in self.written() {
            for remote in target
                .data_from
                .iter()
                .chain(target.data.iter().map(|d| &d.remote))
            {
                items.insert((remote.key.clone(), remote.version));
            }
        }
        items
            .into_iter()
            .map(|(name, version)| ItemRef { name, version })
            .collect()
    }

    /// Items read only for `deletionPolicy: Delete` targets: when Akeyless no longer has one,
    /// its keys leave those Secrets instead of failing the mount (ExternalSecret's semantics).
    pub fn optional_items(&self) -> BTreeSet<ItemRef> {
        let reads = |t: &Target| {
            t.data_from
                .iter()
                .chain(t.data.iter().map(|d| &d.remote))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    target: RawTarget,
    #[serde(default)]
    data: Vec<RawData>,
    #[serde(default)]
    data_from: Vec<RawDataFrom>,
}

#[derive(Deserialize)]
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    /// ESO's `engineVersion`: only `v2` (its default, and the syntax implemented) is accepted.
    #[serde(default, rename = "engineVersion")]
    engine_version: Option<String>,
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
    extract: RawRemoteRef,
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
        if let Some(target) = validate(i, entry, namespace, &mut names, &mut problems) {
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

fn validate(
    i: usize,
    entry: RawEntry,
    namespace: &str,
    names: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Option<Target> {
    let before = problems.len();
    let t = entry.target;
    let label = format!("secretSync[{i}] ({})", t.name);
    if !is_dns_subdomain(&t.name) {
        problems.push(format!(
            "{label}: target.name must be a Secret name (lowercase letters, digits, '-' and '.', at most 253)"
        ));
    } else if !names.insert(t.name.clone()) {
        problems.push(format!(
            "{label}: target.name appears twice; merge the entries"
        ));
    }
    if let Some(ns) = t.namespace.as_deref().filter(|ns| *ns != namespace) {
        problems.push(format!(
            "{label}: target.namespace {ns:?} is refused: Secrets are written only in the pod's namespace {namespace:?}; remove target.namespace"
        ));
    }
    let creation = match t.creation_policy.as_deref().map(str::trim) {
        None | Some("") | Some("Owner") => CreationPolicy::Owner,
        Some("Merge") => CreationPolicy::Merge,
        Some("Orphan") => CreationPolicy::Orphan,
        Some("None") => CreationPolicy::None,
        Some(p) => {
            problems.push(format!(
                "{label}: creationPolicy {p:?} is not Owner, Merge, Orphan or None"
            ));
            CreationPolicy::Owner
        }
    };
    let deletion = match t.deletion_policy.as_deref().map(str::trim) {
        None | Some("") | Some("Retain") => DeletionPolicy::Retain,
        Some("Delete") => DeletionPolicy::Delete,
        Some(p) => {
            problems.push(format!(
                "{label}: deletionPolicy {p:?} is not Retain or Delete"
            ));
            DeletionPolicy::Retain
        }
    };
    let template = t.template.unwrap_or(RawTemplate {
        secret_type: None,
        metadata: None,
        data: BTreeMap::new(),
        engine_version: None,
    });
    if let Some(v) = template.engine_version.as_deref().filter(|v| *v != "v2") {
        problems.push(format!(
            "{label}: template.engineVersion {v:?} is not supported; use v2 (or omit it)"
        ));
    }
    let secret_type = template
        .secret_type
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    // The token controller fills these with credentials: writing one is not a mirror.
    if let Some(t) = secret_type.as_deref().filter(|t| {
        matches!(
            *t,
            "kubernetes.io/service-account-token" | "bootstrap.kubernetes.io/token"
        )
    }) {
        problems.push(format!(
            "{label}: template.type {t} is refused: Kubernetes fills such Secrets with credentials; use Opaque"
        ));
    }
    let metadata = template.metadata.unwrap_or(RawMetadata {
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    });
    for key in metadata.labels.keys().chain(metadata.annotations.keys()) {
        if key.starts_with(RESERVED_PREFIX) {
            problems.push(format!(
                "{label}: template.metadata key {key:?} is reserved for the provider's own markers"
            ));
        }
    }
    let mut templates = BTreeMap::new();
    for (key, text) in &template.data {
        check_key(&label, "template.data key", key, problems);
        match Template::parse(text) {
            Ok(t) => {
                templates.insert(key.clone(), t);
            }
            Err(why) => problems.push(format!("{label}: template.data[{key}]: {why}")),
        }
    }
    let data_from = entry
        .data_from
        .into_iter()
        .enumerate()
        .filter_map(|(j, d)| {
            remote_ref(
                &format!("{label}: dataFrom[{j}].extract"),
                d.extract,
                problems,
            )
        })
        .collect::<Vec<_>>();
    let mut data = Vec::new();
    for (j, d) in entry.data.into_iter().enumerate() {
        let at = format!("{label}: data[{j}]");
        check_key(&at, "secretKey", &d.secret_key, problems);
        if let Some(remote) = remote_ref(&format!("{at}.remoteRef"), d.remote_ref, problems) {
            data.push(DataRef {
                secret_key: d.secret_key,
                remote,
            });
        }
    }
    if data.is_empty() && data_from.is_empty() && templates.is_empty() && problems.len() == before {
        problems.push(format!(
            "{label}: nothing to write; add data, dataFrom or template.data"
        ));
    }
    (problems.len() == before).then_some(Target {
        name: t.name,
        creation,
        deletion,
        secret_type,
        labels: metadata.labels,
        annotations: metadata.annotations,
        templates,
        data_from,
        data,
    })
}

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
    let decoding = match raw.decoding_strategy.as_deref().map(str::trim) {
        None | Some("") | Some("None") => Decoding::None,
        Some("Base64") => Decoding::Base64,
        Some("Base64URL") => Decoding::Base64Url,
        Some("Auto") => Decoding::Auto,
        Some(d) => {
            problems.push(format!(
                "{at}: decodingStrategy {d:?} is not None, Base64, Base64URL or Auto"
            ));
            Decoding::None
        }
    };
    let property = raw
        .property
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    (problems.len() == before).then_some(RemoteRef {
        key,
        property,
        version,
        decoding,
    })
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
        assert_eq!(t.labels["app"], "api");
        assert_eq!(t.annotations["team"], "payments");
        assert!(t.templates.contains_key("url"));
        assert_eq!(t.data[1].remote.version, Some(3));
        assert_eq!(t.data[1].remote.property.as_deref(), Some("password"));
        assert_eq!(t.data_from[0].key, "/prod/app-config");
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

//! The External Secrets Operator's objects, as the controller reads them.
//!
//! ESO's CRDs are not ours: a cluster serves `external-secrets.io` `v1` (and often still
//! `v1beta1`, whose fields we read are the same), so objects are watched as
//! [`DynamicObject`]s of the version the cluster serves ([`Kinds::discover`]) and their specs are
//! parsed here, once per change, into typed values. Parsing reports every problem at once and
//! names each field: a field ESO knows but we do not implement is refused by name (never a
//! silent partial Secret), and so is a field ESO does not know.
//!
//! Also here: ESO's two hashes, so that Secrets and statuses written by ESO and by us agree
//! byte for byte and a Secret moves between the two without a write ([`data_hash`],
//! [`resource_version`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::discovery::Discovery;
use serde::Deserialize;
use serde_json::Value;
use sha3::{Digest, Sha3_224};

/// ESO's API group.
pub const GROUP: &str = "external-secrets.io";
/// The versions we read, preferred first.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Labels and annotations ESO puts on the Secrets it manages; we put the same.
pub const LABEL_MANAGED: &str = "reconcile.external-secrets.io/managed";
pub const LABEL_CREATED_BY: &str = "reconcile.external-secrets.io/created-by";
pub const ANNOTATION_DATA_HASH: &str = "reconcile.external-secrets.io/data-hash";

/// The three kinds, at the version the cluster serves.
#[derive(Debug, Clone)]
pub struct Kinds {
    pub secret_store: ApiResource,
    pub cluster_secret_store: ApiResource,
    pub external_secret: ApiResource,
}

/// The kinds we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    SecretStore,
    ClusterSecretStore,
    ExternalSecret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretStore => "SecretStore",
            Self::ClusterSecretStore => "ClusterSecretStore",
            Self::ExternalSecret => "ExternalSecret",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::SecretStore => "secretstores",
            Self::ClusterSecretStore => "clustersecretstores",
            Self::ExternalSecret => "externalsecrets",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the kinds cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "the cluster serves no {GROUP} {kind} at version v1 or v1beta1: install ESO's CRDs (README, \"Sync without a pod\"): {detail}"
    )]
    Missing { kind: Kind, detail: String },
    #[error("cannot discover the {GROUP} API group: {0}")]
    Api(String),
}

impl Kinds {
    /// The kinds at a given version (tests, and clusters known to serve it).
    pub fn at(version: &str) -> Self {
        let resource = |kind: Kind| {
            let gvk = GroupVersionKind::gvk(GROUP, version, kind.as_str());
            ApiResource::from_gvk_with_plural(&gvk, kind.plural())
        };
        Self {
            secret_store: resource(Kind::SecretStore),
            cluster_secret_store: resource(Kind::ClusterSecretStore),
            external_secret: resource(Kind::ExternalSecret),
        }
    }

    /// Asks the API server which versions it serves: `v1` where it can, else `v1beta1`,
    /// chosen per kind.
    pub async fn discover(client: &kube::Client) -> Result<Self, DiscoveryError> {
        let discovery = Discovery::new(client.clone())
            .filter(&[GROUP])
            .run()
            .await
            .map_err(|e| DiscoveryError::Api(e.to_string()))?;
        let served: Vec<(String, String)> = discovery
            .groups()
            .flat_map(|group| {
                group
                    .versions()
                    .flat_map(|version| {
                        group
                            .versioned_resources(version)
                            .into_iter()
                            .map(|(resource, _)| (resource.version.clone(), resource.kind))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let pick = |kind: Kind| {
            VERSIONS
                .iter()
                .find(|v| served.iter().any(|(sv, k)| sv == *v && k == kind.as_str()))
                .map(|v| {
                    let gvk = GroupVersionKind::gvk(GROUP, v, kind.as_str());
                    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
                })
                .ok_or_else(|| DiscoveryError::Missing {
                    kind,
                    detail: if served.is_empty() {
                        "the group is not served".to_owned()
                    } else {
                        format!(
                            "served: {}",
                            served
                                .iter()
                                .map(|(v, k)| format!("{k}/{v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                })
        };
        Ok(Self {
            secret_store: pick(Kind::SecretStore)?,
            cluster_secret_store: pick(Kind::ClusterSecretStore)?,
            external_secret: pick(Kind::ExternalSecret)?,
        })
    }
}

/// Problems found in one object, each naming its field; shown in its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn unsupported(&mut self, path: &str, why: &str) {
        self.push(format!(
            "{path} is not supported by akeyless-csi-provider ({why}); remove it, or let ESO serve this object"
        ));
    }

    fn unknown(&mut self, path: &str, kind: Kind) {
        self.push(format!(
            "{path} is not a field of {kind} (check its spelling)"
        ));
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// What we know about a field: read, refused by name, or a map/list of known shapes.
enum Field {
    /// Read by us (its value is checked by the typed parser).
    Read,
    /// An ESO field we do not implement, with why or what to use instead.
    Unsupported(&'static str),
    /// An object with known fields.
    Object(&'static [(&'static str, Field)]),
    /// A list of objects with known fields.
    List(&'static [(&'static str, Field)]),
}

/// Walks `value` against `fields`, reporting every unknown or unsupported field with its path,
/// and removes them from `value`, so the parsers that read it next report only what is wrong
/// with the fields we read (every problem in one round, none twice).
fn check_fields(
    value: &mut Value,
    fields: &'static [(&'static str, Field)],
    path: &str,
    kind: Kind,
    problems: &mut Problems,
) {
    let Value::Object(map) = value else { return };
    map.retain(|name, child| {
        let at = format!("{path}.{name}");
        match fields.iter().find(|(n, _)| n == name) {
            None => {
                problems.unknown(&at, kind);
                false
            }
            Some((_, Field::Read)) => true,
            Some((_, Field::Unsupported(why))) => {
                if !child.is_null() {
                    problems.unsupported(&at, why);
                }
                false
            }
            Some((_, Field::Object(inner))) => {
                check_fields(child, inner, &at, kind, problems);
                true
            }
            Some((_, Field::List(inner))) => {
                if let Value::Array(items) = child {
                    for (i, item) in items.iter_mut().enumerate() {
                        check_fields(item, inner, &format!("{at}[{i}]"), kind, problems);
                    }
                }
                true
            }
        }
    });
}

const REMOTE_REF: &[(&str, Field)] = &[
    ("key", Field::Read),
    ("property", Field::Read),
    ("version", Field::Read),
    ("decodingStrategy", Field::Read),
    ("conversionStrategy", Field::Read),
    ("nullBytePolicy", Field::Read),
    (
        "metadataPolicy",
        Field::Read, // `None` only; `Fetch` is refused by the typed parser.
    ),
];

const FIND: &[(&str, Field)] = &[
    ("path", Field::Read),
    ("name", Field::Object(&[("regexp", Field::Read)])),
    ("tags", Field::Read),
    ("conversionStrategy", Field::Read),
    ("decodingStrategy", Field::Read),
    ("nullBytePolicy", Field::Read),
];

const REWRITE: &[(&str, Field)] = &[
    (
        "regexp",
        Field::Object(&[("source", Field::Read), ("target", Field::Read)]),
    ),
    (
        "transform",
        Field::Unsupported("key rewriting by template; use rewrite.regexp"),
    ),
    (
        "merge",
        Field::Unsupported("merging JSON values into one key; use template.data"),
    ),
];

const EXTERNAL_SECRET_SPEC: &[(&str, Field)] = &[
    (
        "secretStoreRef",
        Field::Object(&[("name", Field::Read), ("kind", Field::Read)]),
    ),
    (
        "target",
        Field::Object(&[
            ("name", Field::Read),
            ("creationPolicy", Field::Read),
            ("deletionPolicy", Field::Read),
            ("immutable", Field::Read),
            (
                "manifest",
                Field::Unsupported("targets other than Secrets (ConfigMaps, custom resources)"),
            ),
            (
                "template",
                Field::Object(&[
                    ("type", Field::Read),
                    ("engineVersion", Field::Read),
                    ("mergePolicy", Field::Read),
                    ("data", Field::Read),
                    (
                        "metadata",
                        Field::Object(&[
                            ("labels", Field::Read),
                            ("annotations", Field::Read),
                            (
                                "finalizers",
                                Field::Unsupported("finalizers on the target Secret"),
                            ),
                        ]),
                    ),
                    (
                        "templateFrom",
                        Field::Unsupported(
                            "templates read from ConfigMaps or Secrets; put them in template.data",
                        ),
                    ),
                ]),
            ),
        ]),
    ),
    ("refreshPolicy", Field::Read),
    ("refreshInterval", Field::Read),
    (
        "syncWindows",
        Field::Unsupported("refresh windows by cron schedule"),
    ),
    (
        "data",
        Field::List(&[
            ("secretKey", Field::Read),
            ("remoteRef", Field::Object(REMOTE_REF)),
            (
                "sourceRef",
                Field::Unsupported(
                    "another store or a generator per entry; use one ExternalSecret per store",
                ),
            ),
        ]),
    ),
    (
        "dataFrom",
        Field::List(&[
            ("extract", Field::Object(REMOTE_REF)),
            ("find", Field::Object(FIND)),
            ("rewrite", Field::List(REWRITE)),
            (
                "sourceRef",
                Field::Unsupported(
                    "another store or a generator per entry; use one ExternalSecret per store",
                ),
            ),
        ]),
    ),
];

/// An ExternalSecret's `spec.secretStoreRef`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreRef {
    pub kind: StoreKind,
    pub name: String,
}

/// Which kind of store an ExternalSecret names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreKind {
    SecretStore,
    ClusterSecretStore,
}

impl StoreKind {
    pub fn kind(self) -> Kind {
        match self {
            Self::SecretStore => Kind::SecretStore,
            Self::ClusterSecretStore => Kind::ClusterSecretStore,
        }
    }
}

impl std::fmt::Display for StoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.kind(), self.name)
    }
}

/// ESO's `refreshPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// Every `refreshInterval` (and on every change of the ExternalSecret).
    Periodic,
    /// Once, when the Secret is first synced.
    CreatedOnce,
    /// Only when the ExternalSecret changes.
    OnChange,
}

/// ESO's CRD default for `refreshInterval`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// An ExternalSecret's spec, parsed: everything but the mapping, which [`crate::sync::mapping`]
/// parses from the same spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalSecretSpec {
    pub store: StoreRef,
    pub refresh_policy: RefreshPolicy,
    /// `None`: `0`, sync once.
    pub refresh_interval: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    secret_store_ref: RawStoreRef,
    #[serde(default)]
    refresh_policy: Option<String>,
    #[serde(default)]
    refresh_interval: Option<Value>,
}

#[derive(Deserialize, Default)]
struct RawStoreRef {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: Option<String>,
}

/// The store an ExternalSecret's spec names, read leniently, before (and whatever) the rest of
/// the spec says: `None` when it names none that could be a store.
pub fn store_ref(spec: &Value) -> Option<StoreRef> {
    let text = |field: &str| {
        spec.pointer(&format!("/secretStoreRef/{field}"))
            .and_then(Value::as_str)
            .map(str::trim)
    };
    let name = text("name").filter(|n| !n.is_empty())?;
    let kind = match text("kind") {
        None | Some("") | Some("SecretStore") => StoreKind::SecretStore,
        Some("ClusterSecretStore") => StoreKind::ClusterSecretStore,
        Some(_) => return None,
    };
    Some(StoreRef {
        kind,
        name: name.to_owned(),
    })
}

/// Parses an ExternalSecret's spec (not its mapping): every problem at once.
pub fn external_secret_spec(spec: &Value) -> Result<ExternalSecretSpec, Problems> {
    external_secret_parts(spec).0
}

/// An ExternalSecret named `name`: its spec and its mapping (the target Secret), parsed with
/// every problem of both reported at once.
pub fn external_secret(
    name: &str,
    spec: &Value,
) -> Result<(ExternalSecretSpec, crate::sync::mapping::Target), Problems> {
    let (parsed, cleaned) = external_secret_parts(spec);
    let target = crate::sync::mapping::external_secret(name, &cleaned);
    match (parsed, target) {
        (Ok(spec), Ok(target)) => Ok((spec, target)),
        (parsed, target) => {
            let mut problems = parsed.err().unwrap_or_default();
            if let Err(e) = target {
                problems.0.extend(e.0);
            }
            Err(problems)
        }
    }
}

/// The spec's own fields, and the spec without the fields reported as unknown or unsupported.
fn external_secret_parts(spec: &Value) -> (Result<ExternalSecretSpec, Problems>, Value) {
    let mut cleaned = spec.clone();
    let mut problems = Problems::default();
    check_fields(
        &mut cleaned,
        EXTERNAL_SECRET_SPEC,
        "spec",
        Kind::ExternalSecret,
        &mut problems,
    );
    (own_fields(&cleaned, problems), cleaned)
}

fn own_fields(spec: &Value, mut problems: Problems) -> Result<ExternalSecretSpec, Problems> {
    let raw: RawSpec = match serde_json::from_value(spec.clone()) {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(format!("spec: {}", shape_error(&e)));
            return Err(problems);
        }
    };
    let name = raw.secret_store_ref.name.trim().to_owned();
    if name.is_empty() {
        problems.push("spec.secretStoreRef.name is missing; name the SecretStore or ClusterSecretStore to read from");
    }
    let kind = match raw.secret_store_ref.kind.as_deref().map(str::trim) {
        None | Some("") | Some("SecretStore") => StoreKind::SecretStore,
        Some("ClusterSecretStore") => StoreKind::ClusterSecretStore,
        Some(other) => {
            problems.push(format!(
                "spec.secretStoreRef.kind {other:?} is not SecretStore or ClusterSecretStore"
            ));
            StoreKind::SecretStore
        }
    };
    let refresh_policy = match raw.refresh_policy.as_deref().map(str::trim) {
        None | Some("") | Some("Periodic") => RefreshPolicy::Periodic,
        Some("CreatedOnce") => RefreshPolicy::CreatedOnce,
        Some("OnChange") => RefreshPolicy::OnChange,
        Some(other) => {
            problems.push(format!(
                "spec.refreshPolicy {other:?} is not Periodic, CreatedOnce or OnChange"
            ));
            RefreshPolicy::Periodic
        }
    };
    let refresh_interval = match &raw.refresh_interval {
        None | Some(Value::Null) => Some(DEFAULT_REFRESH),
        Some(Value::String(text)) => match go_duration(text) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(why) => {
                problems.push(format!("spec.refreshInterval {text:?}: {why}"));
                Some(DEFAULT_REFRESH)
            }
        },
        Some(_) => {
            problems
                .push("spec.refreshInterval must be a duration string such as \"1h\" or \"15m\"");
            Some(DEFAULT_REFRESH)
        }
    };
    if problems.is_empty() {
        Ok(ExternalSecretSpec {
            store: StoreRef { kind, name },
            refresh_policy,
            refresh_interval,
        })
    } else {
        Err(problems)
    }
}

/// A serde error without the input it quotes (it could be a value).
pub fn shape_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json's messages are "invalid type: string \"...\", expected ..." at worst: keep the
    // expectation, drop the quoted input.
    match (text.find("invalid type"), text.find("expected")) {
        (Some(_), Some(at)) => format!("a field has the wrong type ({})", &text[at..]),
        _ => text.split(" at line").next().unwrap_or_default().to_owned(),
    }
}

/// Parses a Go `time.Duration` string (`1h0m0s`, `15m`, `90s`, `1.5h`, `0`), as ESO's CRDs hold
/// `refreshInterval`.
pub fn go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if text.starts_with('-') {
        return Err("a negative duration".to_owned());
    }
    let mut total = 0f64;
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?} has a number without a unit (ns, us, ms, s, m, h)"))?;
        let number: f64 = rest[..number_end]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 1h30m"))?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("unknown unit {unit:?} (use ns, us, ms, s, m, h)")),
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err("longer than ten years".to_owned());
    }
    Ok(Duration::from_secs_f64(total))
}

/// ESO's `ObjectHash`: SHA3-224 over Go's `%+v` formatting, hex.
fn object_hash(text: &str) -> String {
    hex::encode(Sha3_224::digest(text.as_bytes()))
}

/// The `reconcile.external-secrets.io/created-by` label of an Owner Secret: ESO's
/// `ObjectHash("<namespace>/<name>")` of its ExternalSecret.
pub fn owner_hash(namespace: &str, name: &str) -> String {
    object_hash(&format!("{namespace}/{name}"))
}

/// The `reconcile.external-secrets.io/data-hash` of a Secret's data: ESO's
/// `ObjectHash(secret.Data)`, i.e. Go's `%+v` of a `map[string][]byte` (keys sorted, bytes in
/// decimal).
pub fn data_hash<'a, V: AsRef<[u8]> + 'a>(
    data: impl IntoIterator<Item = (&'a String, V)>,
) -> String {
    let mut entries: Vec<(&String, V)> = data.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = String::from("map[");
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(key);
        text.push_str(":[");
        for (j, byte) in value.as_ref().iter().enumerate() {
            if j > 0 {
                text.push(' ');
            }
            let _ = write!(text, "{byte}");
        }
        text.push(']');
    }
    text.push(']');
    object_hash(&text)
}

/// ESO's `syncedResourceVersion` of an object: `<generation>-<hash of labels and annotations>`,
/// so a change of either (such as the force-sync annotation) asks for a refresh.
pub fn resource_version(
    generation: Option<i64>,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> String {
    let map = |m: Option<&BTreeMap<String, String>>| {
        let mut text = String::from("map[");
        for (i, (k, v)) in m.into_iter().flatten().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            let _ = write!(text, "{k}:{v}");
        }
        text.push(']');
        text
    };
    let meta = format!(
        "{{annotations:{} labels:{}}}",
        map(annotations),
        map(labels)
    );
    format!("{}-{}", generation.unwrap_or(0), object_hash(&meta))
}

/// The `spec` of a dynamic object (`Null` when it has none).
pub fn spec(object: &DynamicObject) -> &Value {
    object.data.get("spec").unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(go_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(go_duration("10").is_err());
        assert!(go_duration("1d").is_err());
        assert!(go_duration("-1h").is_err());
        assert!(go_duration("").is_err());
        assert!(go_duration("99999999999h").is_err());
    }

    #[test]
    fn hashes_match_eso() {
        // Go's `%+v` of these values, as ESO hashes them.
        let empty: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        assert_eq!(
            data_hash(empty.iter()),
            object_hash("map[]"),
            "an empty map prints as map[]"
        );
        let data: BTreeMap<String, Vec<u8>> = [
            ("b".to_owned(), b"hi".to_vec()),
            ("a".to_owned(), vec![0, 255]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            data_hash(data.iter()),
            object_hash("map[a:[0 255] b:[104 105]]")
        );
        let labels: BTreeMap<String, String> = [("app".to_owned(), "x".to_owned())].into();
        let rv = resource_version(Some(3), Some(&labels), None);
        assert_eq!(
            rv,
            format!("3-{}", object_hash("{annotations:map[] labels:map[app:x]}"))
        );
    }

    #[test]
    fn the_docs_external_secret_parses() {
        let spec = json!({
            "refreshInterval": "1h0m0s",
            "secretStoreRef": {"kind": "SecretStore", "name": "akeyless-secret-store"},
            "target": {"name": "database-credentials", "creationPolicy": "Owner"},
            "data": [
                {"secretKey": "username", "remoteRef": {"key": "db-username"}},
                {"secretKey": "password", "remoteRef": {"key": "db-password"}}
            ]
        });
        let parsed = external_secret_spec(&spec).unwrap();
        assert_eq!(parsed.store.name, "akeyless-secret-store");
        assert_eq!(parsed.store.kind, StoreKind::SecretStore);
        assert_eq!(parsed.refresh_interval, Some(Duration::from_secs(3600)));
        assert_eq!(parsed.refresh_policy, RefreshPolicy::Periodic);
    }

    #[test]
    fn unsupported_and_unknown_fields_are_named() {
        let spec = json!({
            "secretStoreRef": {"name": "s", "kind": "Vault"},
            "refreshInterval": "0",
            "refreshPolicy": "Sometimes",
            "syncWindows": {"kind": "allow", "windows": []},
            "target": {"manifest": {"apiVersion": "v1", "kind": "ConfigMap"},
                       "template": {"templateFrom": [{"literal": "x"}], "metadata": {"finalizers": ["f"]}}},
            "data": [{"secretKey": "a", "remoteRef": {"key": "/a"}, "sourceRef": {"storeRef": {"name": "o"}}}],
            "dataFrom": [{"rewrite": [{"transform": {"template": "x"}}]}],
            "dataForm": []
        });
        let problems = external_secret_spec(&spec).unwrap_err().to_string();
        for expected in [
            "spec.secretStoreRef.kind \"Vault\"",
            "spec.refreshPolicy \"Sometimes\"",
            "spec.syncWindows is not supported",
            "spec.target.manifest is not supported",
            "spec.target.template.templateFrom is not supported",
            "spec.target.template.metadata.finalizers is not supported",
            "spec.data[0].sourceRef is not supported",
            "spec.dataFrom[0].rewrite[0].transform is not supported",
            "spec.dataForm is not a field of ExternalSecret",
        ] {
            assert!(
                problems.contains(expected),
                "{expected} missing from {problems}"
            );
        }
    }

    #[test]
    fn field_and_mapping_problems_come_in_one_round_and_once() {
        let spec = json!({
            "secretStoreRef": {"name": "s"},
            "target": {"manifest": {"kind": "ConfigMap"}, "creationPolicy": "Sometimes"},
            "data": [{"secretKey": "a b", "remoteRef": {"key": "/a", "metadataPolicy": "Fetch"}}]
        });
        let problems = external_secret("es", &spec).unwrap_err().0;
        let text = problems.join("\n");
        for expected in [
            "spec.target.manifest is not supported",
            "creationPolicy \"Sometimes\"",
            "secretKey \"a b\"",
            "metadataPolicy Fetch",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
        assert_eq!(
            problems.iter().filter(|p| p.contains("manifest")).count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn the_store_is_read_whatever_the_rest_of_the_spec_says() {
        let spec = json!({
            "secretStoreRef": {"name": " vault ", "kind": "ClusterSecretStore"},
            "syncWindows": {"kind": "allow"},
            "dataForm": []
        });
        assert_eq!(
            store_ref(&spec),
            Some(StoreRef {
                kind: StoreKind::ClusterSecretStore,
                name: "vault".into()
            })
        );
        let default_kind = json!({"secretStoreRef": {"name": "s"}});
        assert_eq!(
            store_ref(&default_kind).unwrap().kind,
            StoreKind::SecretStore
        );
        for none in [
            json!({}),
            json!({"secretStoreRef": {"name": ""}}),
            json!({"secretStoreRef": {"name": "s", "kind": "Vault"}}),
            json!({"secretStoreRef": {"name": 3}}),
        ] {
            assert_eq!(store_ref(&none), None, "{none}");
        }
    }

    #[test]
    fn refresh_interval_zero_is_once() {
        let spec = json!({"secretStoreRef": {"name": "s"}, "refreshInterval": "0s"});
        assert_eq!(external_secret_spec(&spec).unwrap().refresh_interval, None);
    }
}

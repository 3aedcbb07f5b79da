//! Shaping fetched values into one Kubernetes Secret's content, as ExternalSecret does it:
//! `dataFrom` entries in order (each rewritten or key-converted), then `data` overriding them,
//! then the template. Shared by an SPC's `secretSync` and the controller's ExternalSecrets.
//!
//! Errors name the entry and the item, never a value.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::value::RawValue;

use super::mapping::{
    Conversion, DataFrom, Decoding, DeletionPolicy, Find, MergePolicy, NullBytes, RemoteRef,
    Rewrite, Target,
};
use crate::secret::SecretBytes;

/// Where a Secret's values come from: the mount's or the refresh's fetched items.
pub trait Source {
    /// The value of `key` at `version`; `Ok(None)` when Akeyless does not have the item and
    /// the caller read it as one that may be gone.
    fn value(&self, key: &str, version: Option<u32>) -> Result<Option<SecretBytes>, String>;

    /// The items a `find` matched, by item name, with their values.
    fn found(&self, find: &Find) -> Result<Vec<(String, SecretBytes)>, String>;
}

/// One Secret's content.
#[derive(Debug, Default)]
pub struct Shaped {
    pub data: BTreeMap<String, SecretBytes>,
    /// Rendered `template.metadata`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Sources that no longer exist and whose keys were therefore left out (only under a
    /// deletion policy other than Retain).
    pub gone: Vec<String>,
    /// How many keys the sources gave before any template: none means Akeyless had nothing
    /// for this Secret (ESO then applies the deletion policy to the whole Secret).
    pub provider_keys: usize,
}

/// Builds the content of `target` from `source`.
pub fn shape(target: &Target, source: &dyn Source) -> Result<Shaped, String> {
    let mut shaped = Shaped::default();
    let mut fetched: BTreeMap<String, SecretBytes> = BTreeMap::new();
    // Under a deletion policy other than Retain, a source Akeyless no longer has drops its keys
    // (ESO's semantics); under Retain it is an error.
    let value_of = |remote: &RemoteRef,
                    gone: &mut Vec<String>|
     -> Result<Option<SecretBytes>, String> {
        match source.value(&remote.key, remote.version)? {
            Some(value) => Ok(Some(value)),
            None if target.deletion != DeletionPolicy::Retain => {
                gone.push(remote.key.clone());
                Ok(None)
            }
            None => Err(format!(
                "item {} does not exist: check the key, or set deletionPolicy Delete or Merge to drop its keys when it is gone",
                remote.key
            )),
        }
    };
    for (i, from) in target.data_from.iter().enumerate() {
        let (map, rewrite, conversion, decoding, nulls) = match from {
            DataFrom::Extract { remote, rewrite } => {
                let Some(value) = value_of(remote, &mut shaped.gone)? else {
                    continue;
                };
                let value = match &remote.property {
                    None => value,
                    Some(path) => crate::render::select_property(value.expose(), path)
                        .map_err(|why| format!("dataFrom[{i}].extract: {why} of {}", remote.key))?,
                };
                let map = json_object(value.expose()).ok_or_else(|| {
                    format!(
                        "dataFrom[{i}].extract ({}): the value{} is not a JSON object; use data with a secretKey instead",
                        remote.key,
                        remote
                            .property
                            .as_deref()
                            .map(|p| format!(" at property {p:?}"))
                            .unwrap_or_default()
                    )
                })?;
                (
                    map,
                    rewrite,
                    remote.conversion,
                    remote.decoding,
                    remote.null_bytes,
                )
            }
            DataFrom::Find { find, rewrite } => {
                let map = source
                    .found(find)
                    .map_err(|why| format!("dataFrom[{i}].find: {why}"))?
                    .into_iter()
                    .collect();
                (
                    map,
                    rewrite,
                    find.conversion,
                    find.decoding,
                    find.null_bytes,
                )
            }
        };
        let map = if rewrite.is_empty() {
            map.into_iter()
                .map(|(k, v)| (convert(&k, conversion), v))
                .collect()
        } else {
            rewrite_keys(rewrite, map)
        };
        for (key, value) in map {
            if key.is_empty() {
                continue;
            }
            if !super::mapping::valid_key(&key) {
                return Err(format!(
                    "dataFrom[{i}]: key {key:?} is not a valid Secret key (letters, digits, '-', '.', '_', at most 253); add a rewrite"
                ));
            }
            let value =
                decode(value, decoding).map_err(|why| format!("dataFrom[{i}] key {key}: {why}"))?;
            check_nulls(&value, nulls, &key)?;
            fetched.insert(key, value);
        }
    }
    for entry in &target.data {
        let Some(value) = value_of(&entry.remote, &mut shaped.gone)? else {
            continue;
        };
        let remote = &entry.remote;
        let value = match &remote.property {
            None => value,
            Some(path) => crate::render::select_property(value.expose(), path)
                .map_err(|why| format!("data {}: {why} of {}", entry.secret_key, remote.key))?,
        };
        let value = decode(value, remote.decoding)
            .map_err(|why| format!("data {}: {why} ({})", entry.secret_key, remote.key))?;
        check_nulls(&value, remote.null_bytes, &entry.secret_key)?;
        fetched.insert(entry.secret_key.clone(), value);
    }
    shaped.provider_keys = fetched.len();
    // ESO: with template.data and mergePolicy Replace, only the templated keys are written.
    if target.templates.is_empty() || target.merge_policy == MergePolicy::Merge {
        shaped.data = fetched.clone();
    }
    for (key, template) in &target.templates {
        let value = template
            .render(&fetched)
            .map_err(|why| format!("template.data[{key}]: {why}"))?;
        shaped.data.insert(key.clone(), value);
    }
    for (map, out, what) in [
        (&target.labels, &mut shaped.labels, "labels"),
        (&target.annotations, &mut shaped.annotations, "annotations"),
    ] {
        for (key, template) in map {
            let value = template
                .render(&fetched)
                .map_err(|why| format!("template.metadata.{what}[{key}]: {why}"))?;
            let value = String::from_utf8(value.expose().to_vec())
                .map_err(|_| format!("template.metadata.{what}[{key}]: not UTF-8 text"))?;
            out.insert(key.clone(), value);
        }
    }
    Ok(shaped)
}

/// A JSON object's keys and values: strings as they are, anything else as its JSON text
/// exactly as written (ESO keeps the raw text).
fn json_object(value: &[u8]) -> Option<BTreeMap<String, SecretBytes>> {
    let map: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(value).ok()?;
    Some(
        map.into_iter()
            .map(|(k, raw)| {
                let bytes = match serde_json::from_str::<String>(raw.get()) {
                    Ok(s) => s.into_bytes(),
                    Err(_) => raw.get().as_bytes().to_vec(),
                };
                (k, SecretBytes::new(bytes))
            })
            .collect(),
    )
}

/// ESO's key conversion: letters, digits, `-`, `.` and `_` stay; anything else becomes `_`
/// (`Default`) or `_U<hex>_` (`Unicode`). Letters of other scripts become `_` too, since
/// Kubernetes accepts only ASCII keys.
pub fn convert(key: &str, conversion: Conversion) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
            out.push(c);
        } else {
            match conversion {
                Conversion::Default => out.push('_'),
                Conversion::Unicode => out.push_str(&format!("_U{:04x}_", c as u32)),
            }
        }
    }
    out
}

/// Applies `rewrite` operations in order to every key.
fn rewrite_keys(
    rewrite: &[Rewrite],
    map: BTreeMap<String, SecretBytes>,
) -> BTreeMap<String, SecretBytes> {
    rewrite.iter().fold(map, |map, op| {
        map.into_iter()
            .map(|(k, v)| {
                (
                    op.source.replace_all(&k, op.target.as_str()).into_owned(),
                    v,
                )
            })
            .collect()
    })
}

/// Decodes a value as `decoding` says; `Auto` falls back to the value as it is.
fn decode(value: SecretBytes, decoding: Decoding) -> Result<SecretBytes, String> {
    let text = || String::from_utf8_lossy(value.expose()).trim().to_owned();
    let decoded = match decoding {
        Decoding::None => return Ok(value),
        Decoding::Base64 => STANDARD
            .decode(text())
            .map_err(|_| "decodingStrategy Base64: the value is not base64".to_owned())?,
        Decoding::Base64Url => URL_SAFE.decode(text()).map_err(|_| {
            "decodingStrategy Base64URL: the value is not URL-safe base64".to_owned()
        })?,
        Decoding::Auto => match STANDARD.decode(text()).or_else(|_| URL_SAFE.decode(text())) {
            Ok(bytes) => bytes,
            Err(_) => return Ok(value),
        },
    };
    Ok(SecretBytes::new(decoded))
}

fn check_nulls(value: &SecretBytes, policy: NullBytes, key: &str) -> Result<(), String> {
    if policy == NullBytes::Fail && value.expose().contains(&0) {
        return Err(format!(
            "the value for key {key} contains NUL bytes (nullBytePolicy Fail); store it base64-encoded and use decodingStrategy Base64, or remove nullBytePolicy"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::mapping;

    /// Values by item name; `find` matches items whose name starts with the path.
    struct Items(BTreeMap<(String, Option<u32>), &'static str>);

    impl Source for Items {
        fn value(&self, key: &str, version: Option<u32>) -> Result<Option<SecretBytes>, String> {
            Ok(self
                .0
                .get(&(key.to_owned(), version))
                .map(|v| SecretBytes::new(v.as_bytes().to_vec())))
        }

        fn found(&self, find: &Find) -> Result<Vec<(String, SecretBytes)>, String> {
            Ok(self
                .0
                .iter()
                .filter(|((name, _), _)| name.starts_with(&find.path))
                .filter(|((name, _), _)| find.name.as_ref().is_none_or(|re| re.is_match(name)))
                .map(|((name, _), v)| (name.clone(), SecretBytes::new(v.as_bytes().to_vec())))
                .collect())
        }
    }

    fn items(list: &[(&str, Option<u32>, &'static str)]) -> Items {
        Items(
            list.iter()
                .map(|(n, v, value)| ((n.to_string(), *v), *value))
                .collect(),
        )
    }

    fn text(data: &BTreeMap<String, SecretBytes>, key: &str) -> String {
        String::from_utf8(data[key].expose().to_vec()).unwrap()
    }

    fn es(spec: serde_json::Value) -> Target {
        mapping::external_secret("es", &spec).unwrap()
    }

    #[test]
    fn data_from_then_data_then_templates() {
        let m = mapping::parse(
            r#"
- target:
    name: app
    template: {data: {url: "{{ .user }}@{{ .host }}"}}
  dataFrom:
    - extract: {key: /cfg}
  data:
    - secretKey: user
      remoteRef: {key: /db, property: username, version: 2}
    - secretKey: blob
      remoteRef: {key: /b64, decodingStrategy: Base64}
"#,
            None,
            "ns",
        )
        .unwrap();
        let v = items(&[
            ("/cfg", None, r#"{"user":"cfg-user","host":"db","a b":1}"#),
            ("/db", Some(2), r#"{"username":"app"}"#),
            ("/b64", None, "aGk="),
        ]);
        let data = shape(&m.targets[0], &v).unwrap().data;
        assert_eq!(text(&data, "user"), "app", "data overrides dataFrom");
        assert_eq!(text(&data, "host"), "db");
        assert_eq!(text(&data, "a_b"), "1", "keys are converted");
        assert_eq!(text(&data, "blob"), "hi");
        assert_eq!(
            text(&data, "url"),
            "app@db",
            "templates see the merged data"
        );
    }

    #[test]
    fn errors_never_show_values() {
        let m = mapping::parse(
            "- target: {name: a}\n  data:\n    - secretKey: x\n      remoteRef: {key: /db, property: nope}\n",
            None,
            "ns",
        )
        .unwrap();
        let e = shape(
            &m.targets[0],
            &items(&[("/db", None, r#"{"pw":"SECRETMARK"}"#)]),
        )
        .unwrap_err();
        assert!(e.contains("\"nope\" is not in the value of /db") && !e.contains("SECRETMARK"));
    }

    #[test]
    fn eso_replaces_fetched_keys_with_templates_unless_merge() {
        let spec = |policy: &str| {
            serde_json::json!({
                "target": {"template": {"mergePolicy": policy, "data": {"dsn": "{{ .u }}:{{ .p }}"},
                            "metadata": {"labels": {"user": "{{ .u }}"}}}},
                "data": [{"secretKey": "u", "remoteRef": {"key": "/u"}},
                         {"secretKey": "p", "remoteRef": {"key": "/p"}}]
            })
        };
        let v = items(&[("/u", None, "app"), ("/p", None, "pw")]);
        let replaced = shape(&es(spec("Replace")), &v).unwrap();
        assert_eq!(replaced.data.keys().collect::<Vec<_>>(), ["dsn"]);
        assert_eq!(text(&replaced.data, "dsn"), "app:pw");
        assert_eq!(replaced.labels["user"], "app");
        let merged = shape(&es(spec("Merge")), &v).unwrap();
        assert_eq!(merged.data.keys().collect::<Vec<_>>(), ["dsn", "p", "u"]);
    }

    #[test]
    fn extract_property_find_rewrite_and_raw_json() {
        let target = es(serde_json::json!({
            "dataFrom": [
                {"extract": {"key": "/cfg", "property": "db"}},
                {"extract": {"key": "/raw"}},
                {"find": {"path": "/team", "name": {"regexp": "db"}},
                 "rewrite": [{"regexp": {"source": "^/team/(.*)$", "target": "team-$1"}}]},
                {"find": {"path": "/app", "tags": {"env": "prod"}}}
            ]
        }));
        let v = items(&[
            (
                "/cfg",
                None,
                r#"{"db": {"username": "u", "port": 5432}, "apiKey": "k"}"#,
            ),
            ("/raw", None, r#"{"opts": {"a": [1, 2]}, "n": 1.50}"#),
            ("/team/db-pass", None, "p1"),
            ("/team/web", None, "nope"),
            ("/app/token", None, "t"),
        ]);
        let data = shape(&target, &v).unwrap().data;
        assert_eq!(text(&data, "username"), "u");
        assert_eq!(text(&data, "port"), "5432");
        assert!(!data.contains_key("apiKey"), "only the property's keys");
        assert_eq!(
            text(&data, "opts"),
            r#"{"a": [1, 2]}"#,
            "raw JSON text kept"
        );
        assert_eq!(text(&data, "n"), "1.50", "numbers as written");
        assert_eq!(text(&data, "team-db-pass"), "p1");
        assert!(!data.contains_key("team-web"));
        assert_eq!(text(&data, "_app_token"), "t", "item names converted");
    }

    #[test]
    fn gone_items_drop_keys_only_under_delete_or_merge() {
        let spec = |policy: &str| {
            serde_json::json!({
                "target": {"deletionPolicy": policy},
                "data": [{"secretKey": "a", "remoteRef": {"key": "/a"}},
                         {"secretKey": "b", "remoteRef": {"key": "/gone"}}]
            })
        };
        let v = items(&[("/a", None, "1")]);
        let shaped = shape(&es(spec("Merge")), &v).unwrap();
        assert_eq!(shaped.data.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(shaped.gone, ["/gone"]);
        let e = shape(&es(spec("Retain")), &v).unwrap_err();
        assert!(e.contains("item /gone does not exist"), "{e}");
    }

    #[test]
    fn decoding_and_null_bytes() {
        let target = es(serde_json::json!({
            "data": [{"secretKey": "a", "remoteRef": {"key": "/a", "decodingStrategy": "Base64", "nullBytePolicy": "Fail"}}]
        }));
        assert!(shape(&target, &items(&[("/a", None, "aGk=")])).is_ok());
        let e = shape(&target, &items(&[("/a", None, "AGk=")])).unwrap_err();
        assert!(e.contains("NUL bytes"), "{e}");
        let e = shape(&target, &items(&[("/a", None, "not base64!")])).unwrap_err();
        assert!(
            e.contains("not base64") && !e.contains("not base64!"),
            "{e}"
        );
        assert_eq!(convert("a/b c", Conversion::Unicode), "a_U002f_b_U0020_c");
    }
}

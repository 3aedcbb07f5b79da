//! Rendering: fetched values become the files and object versions of a `MountResponse`.
//!
//! Versions are an HMAC of the object's configuration and rendered content under a key that
//! stays on the node (or is shared by the admin): equal content gives equal versions across
//! calls and restarts, any change gives a new one, and a reader of the world-viewable
//! SecretProviderClassPodStatus learns nothing about the value (a plain hash would let anyone
//! test guesses of a weak secret).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::akeyless::ItemRef;
pub mod pem;

use crate::fetch::{Fetched, Lookup};
use crate::params::{Encoding, ItemKind, ObjectSpec, Shape};
use crate::proto::v1alpha1::{File, ObjectVersion};
use crate::secret::SecretBytes;
use pem::Bundle;

/// The values of one mount, by item and version.
pub type Values = HashMap<ItemRef, SecretBytes>;

/// The files and versions of one mount.
#[derive(Debug, Default)]
pub struct Rendered {
    pub files: Vec<File>,
    pub versions: Vec<ObjectVersion>,
}

/// Why an object's value could not be shaped into its file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("object {file_name} ({secret_path}): {problem}")]
pub struct RenderError {
    pub file_name: String,
    pub secret_path: String,
    pub problem: String,
}

/// The HMAC key of object versions.
#[derive(Clone)]
pub struct VersionKey([u8; 32]);

impl fmt::Debug for VersionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VersionKey([redacted])")
    }
}

/// Why the version key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum VersionKeyError {
    #[error("cannot read or create the version key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the version key {origin} is not 32 or more bytes of base64; delete the file to generate a new one, or set a valid key"
    )]
    Invalid { origin: String },
}

impl VersionKey {
    /// A random key, for tests and the demo.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A key given as base64 text (e.g. from a Kubernetes Secret shared by all nodes).
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, VersionKeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .ok()
            .filter(|b| b.len() >= 32)
            .ok_or_else(|| VersionKeyError::Invalid {
                origin: origin.to_owned(),
            })?;
        // Longer keys are folded down so every byte counts.
        let mut mac = Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC accepts any key length");
        mac.update(b"akeyless-csi-provider/version-key");
        Ok(Self(mac.finalize().into_bytes().into()))
    }

    /// Reads the key file, creating it (owner-only, random) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, VersionKeyError> {
        let io = |source| VersionKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let fresh = STANDARD.encode(rand::random::<[u8; 32]>());
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(fresh.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Self::from_base64(&fresh, "generated")
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut text = String::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(4096).read_to_string(&mut text))
                    .map_err(io)?;
                Self::from_base64(&text, &format!("file {}", path.display()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The content-derived version of one file of `object` (`id` names the file's item).
    fn version(&self, id: &str, object: &ObjectSpec, content: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(b"akeyless-csi-provider/object-version/v1");
        let pinned = object.version.map(|v| v.to_string()).unwrap_or_default();
        let encoding = object.encoding.to_string();
        for part in [
            id.as_bytes(),
            pinned.as_bytes(),
            object.property.as_deref().unwrap_or_default().as_bytes(),
            encoding.as_bytes(),
            content,
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let digest = mac.finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&digest[..16])
    }
}

/// The object version of an optional object whose item does not exist: when it appears, the
/// version changes and the driver's rotation notices.
pub const ABSENT: &str = "absent";

/// Shapes every object's value into its files; any failure fails the whole mount.
pub fn render(
    objects: &[ObjectSpec],
    fetched: &Fetched,
    key: &VersionKey,
) -> Result<Rendered, RenderError> {
    let mut rendered = Rendered::default();
    // Files named by the SPC come first; folders' files must fit around them.
    let has_folder = objects.iter().any(|o| matches!(o.shape, Shape::Folder(_)));
    let mut taken: BTreeSet<String> = objects
        .iter()
        .filter(|_| has_folder)
        .flat_map(|o| o.planned_files())
        .map(str::to_owned)
        .collect();
    for object in objects {
        let fail = |problem: String| RenderError {
            file_name: object.file_name.clone(),
            secret_path: object.secret_path.clone(),
            problem,
        };
        let mut out = Out {
            rendered: &mut rendered,
            object,
            key,
        };
        match &object.shape {
            Shape::Folder(_) => {
                let Some(names) = fetched.folder(object) else {
                    out.absent(&object.id());
                    continue;
                };
                for name in names {
                    let file = folder_file(object, name, &mut taken).map_err(&fail)?;
                    let value = match fetched.lookup(name, None, Some(&ItemKind::Static)) {
                        Lookup::Found(item) => item.value.clone(),
                        // Deleted between the listing and the read: not in the folder now.
                        Lookup::Absent => continue,
                        Lookup::Missing => {
                            return Err(fail(format!("{name} was not fetched (a bug)")));
                        }
                    };
                    let content =
                        shape_value(value, object).map_err(|p| fail(format!("{name}: {p}")))?;
                    out.file(&format!("{file}:{name}"), &file, content, None);
                }
            }
            Shape::Template(spec) => {
                let mut data = BTreeMap::new();
                let mut absent = false;
                if spec.keys.is_empty() {
                    match fetched.lookup(&object.secret_path, object.version, object.kind.as_ref())
                    {
                        Lookup::Found(item) => {
                            let value =
                                select(&item.value, object.property.as_deref()).map_err(&fail)?;
                            data = top_level_keys(&value).map_err(&fail)?;
                        }
                        Lookup::Absent => absent = true,
                        Lookup::Missing => return Err(fail("no value was fetched".to_owned())),
                    }
                } else {
                    for (name, r) in &spec.keys {
                        match fetched.lookup(&r.secret_path, r.version, r.kind.as_ref()) {
                            Lookup::Found(item) => {
                                let value =
                                    select(&item.value, r.property.as_deref()).map_err(|p| {
                                        fail(format!("keys.{name} ({}): {p}", r.secret_path))
                                    })?;
                                data.insert(name.clone(), value);
                            }
                            Lookup::Absent => absent = true,
                            Lookup::Missing => {
                                return Err(fail(format!(
                                    "keys.{name} ({}) was not fetched",
                                    r.secret_path
                                )));
                            }
                        }
                    }
                }
                if absent {
                    out.absent(&object.id());
                    continue;
                }
                let content = spec
                    .template
                    .render(&data)
                    .map_err(|why| fail(format!("template: {why}")))?;
                out.file(&object.id(), &object.file_name, content, None);
            }
            Shape::Single | Shape::PemFiles(_) => {
                let item =
                    match fetched.lookup(&object.secret_path, object.version, object.kind.as_ref())
                    {
                        Lookup::Found(item) => item,
                        Lookup::Absent => {
                            out.absent(&object.id());
                            continue;
                        }
                        Lookup::Missing => return Err(fail("no value was fetched".to_owned())),
                    };
                // Certificates of objects that declare their type are PEM; undeclared ones keep
                // the Go provider's JSON (`certificate_pem`, `private_key_pem`).
                let as_pem = object.kind.as_ref().is_some_and(ItemKind::is_certificate)
                    && object.property.is_none();
                if let (true, Some(cert)) = (as_pem, &item.cert) {
                    let bundle =
                        Bundle::assemble(&cert.certificates, cert.key.as_ref()).map_err(&fail)?;
                    let version = format!("serial-{}", bundle.leaf.serial);
                    out.certificate(&bundle, &version).map_err(&fail)?;
                    continue;
                }
                let content = shape_value(item.value.clone(), object).map_err(&fail)?;
                out.file(
                    &object.id(),
                    &object.file_name,
                    content,
                    item.version.clone(),
                );
            }
        }
    }
    Ok(rendered)
}

/// Writes an object's files and versions.
struct Out<'a> {
    rendered: &'a mut Rendered,
    object: &'a ObjectSpec,
    key: &'a VersionKey,
}

impl Out<'_> {
    fn file(&mut self, id: &str, path: &str, content: SecretBytes, version: Option<String>) {
        let version =
            version.unwrap_or_else(|| self.key.version(id, self.object, content.expose()));
        self.rendered.versions.push(ObjectVersion {
            id: id.to_owned(),
            version,
        });
        self.rendered.files.push(File {
            path: path.to_owned(),
            mode: self.object.mode as i32,
            contents: content.into_inner(),
        });
    }

    fn absent(&mut self, id: &str) {
        self.rendered.versions.push(ObjectVersion {
            id: id.to_owned(),
            version: ABSENT.to_owned(),
        });
    }

    /// One PEM bundle, or the files the object names; one version (the serial) for all.
    fn certificate(&mut self, bundle: &Bundle, version: &str) -> Result<(), String> {
        let object = self.object;
        let mut files: Vec<(&str, SecretBytes)> = Vec::new();
        match &object.shape {
            Shape::PemFiles(split) => {
                if let Some(path) = &split.cert {
                    files.push((path, SecretBytes::new(bundle.leaf_pem().into_bytes())));
                }
                if let Some(path) = &split.key {
                    let key = bundle.key.as_ref().ok_or_else(|| {
                        "keyFile is set but the certificate has no private key in Akeyless"
                            .to_owned()
                    })?;
                    let mut text = key.expose().trim_end().to_owned();
                    text.push('\n');
                    files.push((path, SecretBytes::new(text.into_bytes())));
                }
                if let Some(path) = &split.chain {
                    files.push((path, SecretBytes::new(bundle.chain_pem().into_bytes())));
                }
                if split.bundle {
                    files.push((
                        &object.file_name,
                        SecretBytes::new(bundle.bundle_pem().expose().as_bytes().to_vec()),
                    ));
                }
            }
            _ => files.push((
                &object.file_name,
                SecretBytes::new(bundle.bundle_pem().expose().as_bytes().to_vec()),
            )),
        }
        self.rendered.versions.push(ObjectVersion {
            id: object.id(),
            version: version.to_owned(),
        });
        for (path, content) in files {
            self.rendered.files.push(File {
                path: path.to_owned(),
                mode: object.mode as i32,
                contents: content.into_inner(),
            });
        }
        Ok(())
    }
}

/// `property`, then `encoding`.
fn shape_value(value: SecretBytes, object: &ObjectSpec) -> Result<SecretBytes, String> {
    let selected = match &object.property {
        None => value,
        Some(path) => select_property(value.expose(), path)?,
    };
    decode(selected, object.encoding)
}

fn select(value: &SecretBytes, property: Option<&str>) -> Result<SecretBytes, String> {
    match property {
        None => Ok(value.clone()),
        Some(path) => select_property(value.expose(), path),
    }
}

/// A JSON object's top-level keys: strings as they are, anything else as JSON.
fn top_level_keys(value: &SecretBytes) -> Result<BTreeMap<String, SecretBytes>, String> {
    let json: serde_json::Value = serde_json::from_slice(value.expose())
        .map_err(|_| "the template reads the value's keys, but the value is not JSON".to_owned())?;
    let serde_json::Value::Object(map) = json else {
        return Err(
            "the template reads the value's keys, but the value is not a JSON object".to_owned(),
        );
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                serde_json::Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k, SecretBytes::new(bytes))
        })
        .collect())
}

/// A folder item's file: its path below the folder, each element made safe, under the
/// object's `fileName`; a name that would clash with another file gets a short suffix from the
/// item's full name, so every item keeps its own file whatever the names are.
fn folder_file(
    object: &ObjectSpec,
    item: &str,
    taken: &mut BTreeSet<String>,
) -> Result<String, String> {
    let folder = object.secret_path.trim_end_matches('/');
    let relative = item
        .strip_prefix(folder)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("{item} is not inside the folder"))?;
    let mut elements: Vec<String> = relative
        .split('/')
        .filter(|e| !e.is_empty())
        .map(safe_element)
        .collect();
    if elements.is_empty() {
        return Err(format!("{item} has no name inside the folder"));
    }
    if !object.file_name.is_empty() {
        elements.insert(0, object.file_name.clone());
    }
    if elements[0].starts_with("..") {
        elements[0].replace_range(..1, "_");
    }
    let plain = elements.join("/");
    let clashes = |name: &str, taken: &BTreeSet<String>| {
        taken.contains(name)
            || crate::params::file_prefix_clash(name, |p| taken.contains(p)).is_some()
            || taken
                .range(format!("{name}/")..)
                .next()
                .is_some_and(|t| t.starts_with(&format!("{name}/")))
    };
    let mut name = plain.clone();
    if clashes(&name, taken) {
        let digest = Sha256::digest(item.as_bytes());
        name = format!("{plain}~{}", hex::encode(&digest[..4]));
        if clashes(&name, taken) {
            return Err(format!(
                "{item} cannot be given a file name that no other file uses"
            ));
        }
    }
    crate::params::check_file_name(&name)
        .map_err(|why| format!("the file name {name:?} for {item} {why}"))?;
    taken.insert(name.clone());
    Ok(name)
}

/// A path element the driver accepts and a shell does not trip on: letters, digits and
/// `._-+=@,`; anything else becomes `_`; too long is cut and suffixed with a hash.
fn safe_element(element: &str) -> String {
    let mut out: String = element
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+=@,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out == "." || out == ".." {
        out = out.replace('.', "_");
    }
    if out.len() > 200 {
        let digest = Sha256::digest(element.as_bytes());
        out.truncate(200);
        out.push('~');
        out.push_str(&hex::encode(&digest[..4]));
    }
    out
}

/// Picks `path` out of a JSON value: first as one literal key (so keys containing dots work),
/// then as a dotted path whose segments are object keys or array indices (`a.b`, `a[0].b`,
/// `a.0.b`; `\.` escapes a dot). Strings are written raw, anything else as JSON.
pub(crate) fn select_property(value: &[u8], path: &str) -> Result<SecretBytes, String> {
    let json: serde_json::Value = serde_json::from_slice(value)
        .map_err(|_| format!("property {path:?} was requested but the value is not JSON"))?;
    let found = match json.get(path) {
        Some(v) => Some(v),
        None => walk(&json, &split_path(path)),
    };
    match found {
        Some(serde_json::Value::String(s)) => Ok(SecretBytes::new(s.as_bytes().to_vec())),
        Some(other) => Ok(SecretBytes::new(other.to_string().into_bytes())),
        None => Err(format!("property {path:?} is not in the value")),
    }
}

fn split_path(path: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                current.push('.');
                chars.next();
            }
            '.' => segments.push(std::mem::take(&mut current)),
            '[' => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                }
                let index: String = chars.by_ref().take_while(|c| *c != ']').collect();
                segments.push(index);
                if chars.peek() == Some(&'.') {
                    chars.next();
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() || segments.is_empty() {
        segments.push(current);
    }
    segments
}

fn walk<'a>(
    mut value: &'a serde_json::Value,
    segments: &[String],
) -> Option<&'a serde_json::Value> {
    for segment in segments {
        value = match value {
            serde_json::Value::Object(map) => map.get(segment)?,
            serde_json::Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

fn decode(value: SecretBytes, encoding: Encoding) -> Result<SecretBytes, String> {
    // Stored encodings are often wrapped over several lines.
    let compact = || {
        SecretBytes::new(
            value
                .expose()
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect::<Vec<u8>>(),
        )
    };
    let decoded = match encoding {
        Encoding::Utf8 => return Ok(value),
        Encoding::Base64 => {
            let compact = compact();
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(compact.expose()).ok())
                .ok_or_else(|| "encoding is base64 but the value is not valid base64".to_owned())?
        }
        Encoding::Hex => hex::decode(compact().expose())
            .map_err(|_| "encoding is hex but the value is not valid hex".to_owned())?,
    };
    Ok(SecretBytes::new(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str, file: &str) -> ObjectSpec {
        ObjectSpec {
            secret_path: path.into(),
            file_name: file.into(),
            version: None,
            property: None,
            encoding: Encoding::Utf8,
            mode: 0o644,
            kind: None,
            optional: false,
            shape: Shape::Single,
        }
    }

    fn values(pairs: &[(&str, &str)]) -> Fetched {
        let values: Values = pairs
            .iter()
            .map(|(n, v)| {
                (
                    ItemRef {
                        name: (*n).into(),
                        version: None,
                    },
                    SecretBytes::new(v.as_bytes().to_vec()),
                )
            })
            .collect();
        Fetched::from_static_values(values)
    }

    #[test]
    fn folder_files_are_safe_and_never_collide() {
        let mut folder = object("/app", "cfg");
        folder.shape = Shape::Folder(crate::params::Folder {
            filter: None,
            recursive: true,
        });
        folder.kind = Some(ItemKind::Static);
        // A fixed file already uses cfg/a_b; the folder has /app/a b and /app/a?b too.
        let fixed = object("/other", "cfg/a_b");
        let names = ["/app/a b", "/app/a?b", "/app/..", "/app/sub/x", "/app/sub"];
        let mut pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "v")).collect();
        pairs.push(("/other", "o"));
        let mut fetched = values(&pairs);
        fetched.insert_folder(&folder, names.iter().map(|n| n.to_string()).collect());
        let out = render(&[fixed, folder], &fetched, &VersionKey::random()).unwrap();
        let files: Vec<&str> = out.files.iter().map(|f| f.path.as_str()).collect();
        let unique: BTreeSet<&str> = files.iter().copied().collect();
        assert_eq!(
            unique.len(),
            files.len(),
            "no two files share a name: {files:?}"
        );
        assert_eq!(files.len(), 6);
        for f in &files {
            crate::params::check_file_name(f).unwrap();
            assert!(
                crate::params::file_prefix_clash(f, |p| unique.contains(p)).is_none(),
                "{f} is under another file"
            );
        }
        assert!(files.contains(&"cfg/sub/x"));
        assert!(files.iter().any(|f| f.starts_with("cfg/a_b~")));
        assert!(out.versions.iter().any(|v| v.id.ends_with(":/app/a?b")));
    }

    #[test]
    fn templates_render_keys_of_several_items() {
        let mut o = object("", "app.env");
        o.shape = Shape::Template(crate::params::TemplateSpec {
            template: std::sync::Arc::new(
                crate::template::Template::parse("USER={{ .user }}\nPASS={{ .pass | quote }}\n")
                    .unwrap(),
            ),
            keys: [("user", "/db", Some("user")), ("pass", "/pw", None)]
                .into_iter()
                .map(|(k, path, property)| {
                    (
                        k.to_owned(),
                        crate::params::KeyRef {
                            secret_path: path.into(),
                            version: None,
                            property: property.map(str::to_owned),
                            kind: None,
                        },
                    )
                })
                .collect(),
        });
        let fetched = values(&[("/db", r#"{"user":"app"}"#), ("/pw", "s3cret")]);
        let out = render(&[o], &fetched, &VersionKey::random()).unwrap();
        assert_eq!(out.files[0].contents, b"USER=app\nPASS=\"s3cret\"\n");
    }

    #[test]
    fn files_modes_and_versions() {
        let key = VersionKey::random();
        let mut o2 = object("/b", "dir/b");
        o2.mode = 0o400;
        let objs = [object("/a", "a"), o2];
        let out = render(&objs, &values(&[("/a", "one"), ("/b", "two")]), &key).unwrap();
        assert_eq!(out.files[1].path, "dir/b");
        assert_eq!(out.files[1].mode, 0o400);
        assert_eq!(out.files[0].contents, b"one");
        assert_eq!(out.versions[0].id, "a:/a");

        let again = render(&objs, &values(&[("/a", "one"), ("/b", "two")]), &key).unwrap();
        assert_eq!(
            out.versions, again.versions,
            "stable while content is unchanged"
        );
        let changed = render(&objs, &values(&[("/a", "ONE"), ("/b", "two")]), &key).unwrap();
        assert_ne!(out.versions[0], changed.versions[0]);
        assert_eq!(out.versions[1], changed.versions[1]);

        let other_key = render(
            &objs,
            &values(&[("/a", "one"), ("/b", "two")]),
            &VersionKey::random(),
        )
        .unwrap();
        assert_ne!(
            out.versions[0], other_key.versions[0],
            "keyed, not a plain hash"
        );
        assert!(!out.versions[0].version.contains("one"));
    }

    #[test]
    fn properties() {
        let doc = br#"{"db":{"user":"app","ports":[5432,5433],"tls":{"on":true}},"a.b":"dotted","list":[{"k":"v"}]}"#;
        let get = |p: &str| {
            select_property(doc, p).map(|b| String::from_utf8(b.expose().to_vec()).unwrap())
        };
        assert_eq!(get("db.user").unwrap(), "app");
        assert_eq!(get("db.ports[1]").unwrap(), "5433");
        assert_eq!(get("db.ports.0").unwrap(), "5432");
        assert_eq!(get("db.tls").unwrap(), r#"{"on":true}"#);
        assert_eq!(get("a.b").unwrap(), "dotted");
        assert_eq!(get(r"a\.b").unwrap(), "dotted");
        assert_eq!(get("list[0].k").unwrap(), "v");
        assert!(
            get("db.password")
                .unwrap_err()
                .contains("\"db.password\" is not in the value")
        );
        assert!(
            select_property(b"plain text", "x")
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn encodings() {
        let b64 = decode(SecretBytes::new(b"aGVs\nbG8=".to_vec()), Encoding::Base64).unwrap();
        assert_eq!(b64.expose(), b"hello");
        let hex = decode(SecretBytes::new(b"68656c6c6f".to_vec()), Encoding::Hex).unwrap();
        assert_eq!(hex.expose(), b"hello");
        assert!(decode(SecretBytes::new(b"%%%".to_vec()), Encoding::Base64).is_err());
    }

    #[test]
    fn a_missing_property_names_the_object() {
        let mut o = object("/cfg", "cfg");
        o.property = Some("nope".into());
        let err = render(&[o], &values(&[("/cfg", "{}")]), &VersionKey::random()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "object cfg (/cfg): property \"nope\" is not in the value"
        );
    }

    #[test]
    fn key_files_are_created_once_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let k1 = VersionKey::load_or_create(&path).unwrap();
        let k2 = VersionKey::load_or_create(&path).unwrap();
        assert_eq!(k1.0, k2.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "short").unwrap();
        assert!(VersionKey::load_or_create(&path).is_err());
    }
}

//! Rendering: fetched values become the files and object versions of a `MountResponse`.
//!
//! Versions are an HMAC of the object's configuration and rendered content under a key that
//! stays on the node (or is shared by the admin): equal content gives equal versions across
//! calls and restarts, any change gives a new one, and a reader of the world-viewable
//! SecretProviderClassPodStatus learns nothing about the value (a plain hash would let anyone
//! test guesses of a weak secret).

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::akeyless::ItemRef;
use crate::params::{Encoding, ObjectSpec};
use crate::proto::v1alpha1::{File, ObjectVersion};
use crate::secret::SecretBytes;

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

    fn version(&self, object: &ObjectSpec, content: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(b"akeyless-csi-provider/object-version/v1");
        let pinned = object.version.map(|v| v.to_string()).unwrap_or_default();
        let encoding = object.encoding.to_string();
        for part in [
            object.id().as_bytes(),
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

/// Shapes every object's value into its file; any failure fails the whole mount.
pub fn render(
    objects: &[ObjectSpec],
    values: &Values,
    key: &VersionKey,
) -> Result<Rendered, RenderError> {
    let mut rendered = Rendered::default();
    for object in objects {
        let fail = |problem: String| RenderError {
            file_name: object.file_name.clone(),
            secret_path: object.secret_path.clone(),
            problem,
        };
        let item = ItemRef {
            name: object.secret_path.clone(),
            version: object.version,
        };
        let value = values
            .get(&item)
            .ok_or_else(|| fail("no value was fetched".to_owned()))?;
        let selected = match &object.property {
            None => value.clone(),
            Some(path) => select_property(value.expose(), path).map_err(fail)?,
        };
        let content = decode(selected, object.encoding).map_err(fail)?;
        rendered.versions.push(ObjectVersion {
            id: object.id(),
            version: key.version(object, content.expose()),
        });
        rendered.files.push(File {
            path: object.file_name.clone(),
            mode: object.mode as i32,
            contents: content.into_inner(),
        });
    }
    Ok(rendered)
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
        }
    }

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs
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
            .collect()
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

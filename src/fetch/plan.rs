//! What a mount reads before any answer is known: which item types are asked, which folders are
//! listed, and how reads of known types are grouped into calls. [`super::Fetcher::fetch`] works
//! from these functions, and `check --plan` prints what they decide, so the two never disagree.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Ref, Unit, Want, references};
use crate::params::{ItemKind, ObjectSpec, Shape};

/// The items some non-optional object needs: missing ones fail the mount.
pub(super) fn required<'a>(refs: &[Ref<'a>]) -> HashSet<&'a str> {
    refs.iter()
        .filter(|r| !r.optional)
        .map(|r| r.name)
        .collect()
}

/// The first reads of a mount.
pub(super) struct FirstReads<'a> {
    /// Items no object declares a type for: `/describe-item` unless the type is remembered.
    pub describe: BTreeSet<&'a str>,
    /// Items read without `type:` whose type another object of the mount declares.
    pub declared_elsewhere: Vec<(&'a str, ItemKind)>,
    /// Folder objects: `/list-items`.
    pub folders: Vec<&'a ObjectSpec>,
}

pub(super) fn first_reads<'a>(refs: &[Ref<'a>], want: &'a Want<'a>) -> FirstReads<'a> {
    // An issuer declared elsewhere says nothing about how this object wants the item read.
    let declared: HashMap<&str, &ItemKind> = refs
        .iter()
        .filter_map(|r| Some((r.name, r.declared.filter(|k| !k.is_lease())?)))
        .collect();
    let mut declared_elsewhere = Vec::new();
    let describe = refs
        .iter()
        .filter(|r| r.declared.is_none())
        .map(|r| r.name)
        .filter(|name| match declared.get(name) {
            Some(kind) => {
                declared_elsewhere.push((*name, (*kind).clone()));
                false
            }
            None => true,
        })
        .collect();
    FirstReads {
        describe,
        declared_elsewhere,
        folders: want
            .objects
            .iter()
            .filter(|o| matches!(o.shape, Shape::Folder(_)))
            .collect(),
    }
}

/// Adds the units `refs` read, each `true` when only optional objects want it; `kind_of` gives
/// the type a reference is read as (`None`: not known, nothing to add).
pub(super) fn add_units<'a>(
    units: &mut HashMap<Unit, bool>,
    refs: &[Ref<'a>],
    required: &HashSet<&str>,
    kind_of: impl Fn(&Ref<'a>) -> Option<ItemKind>,
) {
    for r in refs {
        let Some(kind) = kind_of(r) else { continue };
        let optional = !required.contains(r.name);
        units
            .entry(Unit {
                name: r.name.to_owned(),
                version: r.version,
                kind,
            })
            .and_modify(|o| *o &= optional)
            .or_insert(optional);
    }
}

/// Static units batched: one `/get-secret-value` per pinned version.
pub(super) type Batches = BTreeMap<Option<u32>, BTreeSet<String>>;

/// Static units into one batch per pinned version; every other unit is a call of its own.
pub(super) fn group(units: &HashMap<Unit, bool>) -> (Batches, Vec<(&Unit, bool)>) {
    let mut batches = Batches::new();
    let mut singles = Vec::new();
    for (unit, optional) in units {
        if unit.kind == ItemKind::Static {
            batches
                .entry(unit.version)
                .or_default()
                .insert(unit.name.clone());
        } else {
            singles.push((unit, *optional));
        }
    }
    (batches, singles)
}

/// The Akeyless command that reads (or issues) an item of `kind`.
pub fn command(kind: &ItemKind) -> &'static str {
    match kind {
        ItemKind::Static => "get-secret-value",
        ItemKind::Dynamic(_) => "get-dynamic-secret-value",
        ItemKind::Rotated => "get-rotated-secret-value",
        ItemKind::Certificate => "get-certificate-value",
        ItemKind::Pki(_) => "get-pki-certificate",
        ItemKind::Ssh(_) => "get-ssh-certificate",
    }
}

/// [`Call::command`] of reads that depend on what `/describe-item` answers.
pub const BY_TYPE: &str = "by-type";

/// One Akeyless call of a first mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Call {
    /// The command, e.g. `get-secret-value`.
    pub command: &'static str,
    /// The items (or the folder) it is about.
    pub items: Vec<String>,
    /// A pinned version; `None` is the latest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Why it happens, for people.
    pub why: String,
}

/// The calls of a mount on a fresh provider (no type remembered, no lease to reuse), in order:
/// descriptions and listings first, then the reads. Items whose type only Akeyless knows are
/// read after their `/describe-item`, by the command their type needs (static ones join the
/// batch of their version), so they appear as one read "by type".
pub fn calls(want: &Want<'_>) -> Vec<Call> {
    let refs = references(want);
    let required = required(&refs);
    let first = first_reads(&refs, want);
    let mut calls: Vec<Call> = first
        .describe
        .iter()
        .map(|name| Call {
            command: "describe-item",
            items: vec![(*name).to_owned()],
            version: None,
            why: "no object declares its type".to_owned(),
        })
        .collect();
    for folder in &first.folders {
        let Shape::Folder(f) = &folder.shape else {
            continue;
        };
        let mut why = if f.recursive {
            "the folder and its subfolders".to_owned()
        } else {
            "the folder's own items".to_owned()
        };
        if let Some(filter) = &f.filter {
            why.push_str(&format!(", names containing {filter:?}"));
        }
        calls.push(Call {
            command: "list-items",
            items: vec![folder.secret_path.clone()],
            version: None,
            why: format!("{why}; then its static secrets join the latest-version batch"),
        });
    }
    let elsewhere: HashMap<&str, &ItemKind> = first
        .declared_elsewhere
        .iter()
        .map(|(name, kind)| (*name, kind))
        .collect();
    let mut units = HashMap::new();
    add_units(&mut units, &refs, &required, |r| {
        r.declared
            .or_else(|| elsewhere.get(r.name).copied())
            .cloned()
    });
    let (batches, singles) = group(&units);
    for (version, names) in batches {
        calls.push(Call {
            command: command(&ItemKind::Static),
            items: names.into_iter().collect(),
            version,
            why: "static secrets, in one batch".to_owned(),
        });
    }
    let mut singles: Vec<Call> = singles
        .into_iter()
        .map(|(unit, _)| Call {
            command: command(&unit.kind),
            items: vec![unit.name.clone()],
            version: unit.version,
            why: if unit.kind.is_lease() {
                "issued once per pod volume, reused on rotation polls".to_owned()
            } else {
                format!("a {} item", unit.kind.name())
            },
        })
        .collect();
    // Items of types only Akeyless knows: read after their description, grouped by version.
    let mut typed_later: BTreeMap<Option<u32>, BTreeSet<&str>> = BTreeMap::new();
    for r in refs.iter().filter(|r| first.describe.contains(r.name)) {
        typed_later.entry(r.version).or_default().insert(r.name);
    }
    for (version, names) in typed_later {
        singles.push(Call {
            command: BY_TYPE,
            items: names.into_iter().map(str::to_owned).collect(),
            version,
            why: "once /describe-item answers, as their types need: static secrets in one batch, other types one call each".to_owned(),
        });
    }
    singles.sort_by(|a, b| (a.command, a.version, &a.items).cmp(&(b.command, b.version, &b.items)));
    calls.extend(singles);
    calls
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::akeyless::ItemRef;
    use crate::params::{Encoding, Folder, LeaseSpec};

    fn object(path: &str, file: &str, version: Option<u32>, kind: Option<ItemKind>) -> ObjectSpec {
        ObjectSpec {
            secret_path: path.to_owned(),
            file_name: file.to_owned(),
            version,
            property: None,
            encoding: Encoding::Utf8,
            mode: 0o644,
            kind,
            optional: false,
            shape: Shape::Single,
        }
    }

    #[test]
    fn a_first_mount_describes_lists_and_batches() {
        let mut folder = object("/f", "f", None, Some(ItemKind::Static));
        folder.shape = Shape::Folder(Folder {
            filter: None,
            recursive: true,
        });
        let objects = vec![
            object("/a", "a", None, None),
            object("/b", "b", None, Some(ItemKind::Static)),
            object("/b", "b1", Some(1), Some(ItemKind::Static)),
            object("/c", "c", None, Some(ItemKind::Rotated)),
            object("/c", "c2", None, None),
            object(
                "/d",
                "d",
                None,
                Some(ItemKind::Dynamic(LeaseSpec::default())),
            ),
            folder,
        ];
        let extra = vec![ItemRef {
            name: "/s".to_owned(),
            version: None,
        }];
        let want = Want {
            objects: &objects,
            extra: &extra,
            optional_extra: &BTreeSet::new(),
            scope: None,
        };
        let calls = calls(&want);
        let shown: Vec<(&str, Vec<&str>, Option<u32>)> = calls
            .iter()
            .map(|c| {
                (
                    c.command,
                    c.items.iter().map(String::as_str).collect(),
                    c.version,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("describe-item", vec!["/a"], None),
                ("list-items", vec!["/f"], None),
                ("get-secret-value", vec!["/b", "/s"], None),
                ("get-secret-value", vec!["/b"], Some(1)),
                ("by-type", vec!["/a"], None),
                ("get-dynamic-secret-value", vec!["/d"], None),
                ("get-rotated-secret-value", vec!["/c"], None),
            ],
            "/c2 has no type but /c declares rotated: no describe"
        );
    }
}

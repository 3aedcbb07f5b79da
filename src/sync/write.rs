//! Writing one Secret: read it, decide, and create or update it only when it changed.
//!
//! Writes are `create` and `update` with the field manager `akeyless-csi-provider`; an update
//! carries the `resourceVersion` it was computed from, so a concurrent writer makes it fail
//! with 409 and it is recomputed from a fresh read (a few times, then reported). Content is
//! compared with what the API server has, so an unchanged rotation poll makes no write.
//!
//! Who may be written: a Secret carrying our annotation `akeyless-csi-provider/managed-by`
//! with this SPC's name (Owner, Orphan), or, under Merge, one that opted in with
//! `akeyless-csi-provider/merge-from: <spc>`. Anything else is refused, naming the fix.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};

use super::SyncError;
use super::mapping::{CreationPolicy, DeletionPolicy, Target};
use crate::secret::SecretBytes;

/// Our field manager in `managedFields`.
pub const FIELD_MANAGER: &str = "akeyless-csi-provider";
/// Names the SPC that manages a Secret it created (Owner, Orphan).
pub const MANAGED_BY: &str = "akeyless-csi-provider/managed-by";
/// Set by a user on an existing Secret to let an SPC merge keys into it.
pub const MERGE_FROM: &str = "akeyless-csi-provider/merge-from";
/// The keys we wrote last time (comma-separated names), for `deletionPolicy: Delete`.
pub const SYNCED_KEYS: &str = "akeyless-csi-provider/synced-keys";

const SPC_API_VERSION: &str = "secrets-store.csi.x-k8s.io/v1";
const SPC_KIND: &str = "SecretProviderClass";
/// Attempts when a concurrent writer changed the Secret between our read and our write.
const ATTEMPTS: usize = 4;

/// What one target should look like.
pub struct Desired<'a> {
    pub target: &'a Target,
    pub namespace: &'a str,
    pub spc: &'a str,
    pub spc_uid: &'a str,
    pub data: BTreeMap<String, SecretBytes>,
}

/// What a sync did to one Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        }
    }
}

/// Creates or updates the target Secret, retrying on write conflicts.
pub async fn apply(api: &Api<Secret>, desired: &Desired<'_>) -> Result<Outcome, SyncError> {
    let name = &desired.target.name;
    let ns = desired.namespace;
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    for _ in 0..ATTEMPTS {
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(e, "get", "secrets", ns))?;
        match existing {
            None => {
                if desired.target.creation == CreationPolicy::Merge {
                    return Err(SyncError::Refused(format!(
                        "Secret {ns}/{name} does not exist, and creationPolicy Merge only adds keys to an existing Secret; create it with the annotation {MERGE_FROM}: {}, or use creationPolicy Owner",
                        desired.spc
                    )));
                }
                let secret = next(&Secret::default(), desired);
                match api.create(&params, &secret).await {
                    Ok(_) => return Ok(Outcome::Created),
                    // Someone created it meanwhile: read it and decide again.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(api_error(e, "create", "secrets", ns)),
                }
            }
            Some(current) => {
                check_writable(&current, desired)?;
                let secret = next(&current, desired);
                if same(&current, &secret) {
                    return Ok(Outcome::Unchanged);
                }
                match api.replace(name, &params, &secret).await {
                    Ok(_) => return Ok(Outcome::Updated),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        tracing::debug!(secret = %name, namespace = %ns, "write conflict; reading again");
                        continue;
                    }
                    Err(e) => return Err(api_error(e, "update", "secrets", ns)),
                }
            }
        }
    }
    Err(SyncError::Unavailable(format!(
        "Secret {ns}/{name} kept changing while it was written ({ATTEMPTS} conflicts in a row); another writer is updating it; the driver will retry"
    )))
}

/// Refuses Secrets we do not manage and type changes Kubernetes forbids.
fn check_writable(current: &Secret, desired: &Desired<'_>) -> Result<(), SyncError> {
    let ns = desired.namespace;
    let name = &desired.target.name;
    let spc = desired.spc;
    let annotations = current.metadata.annotations.clone().unwrap_or_default();
    match desired.target.creation {
        CreationPolicy::Merge => {
            if annotations.get(MERGE_FROM).map(String::as_str) != Some(spc) {
                return Err(SyncError::Refused(format!(
                    "Secret {ns}/{name} has not opted in to receive keys from SecretProviderClass {spc}; annotate it with {MERGE_FROM}: {spc} to allow creationPolicy Merge"
                )));
            }
        }
        _ => {
            if annotations.get(MANAGED_BY).map(String::as_str) != Some(spc) {
                return Err(SyncError::Refused(format!(
                    "Secret {ns}/{name} exists and is not managed by SecretProviderClass {spc}, so it is not overwritten; choose another target.name, delete the Secret if it is stale, or use creationPolicy Merge and annotate it with {MERGE_FROM}: {spc}"
                )));
            }
        }
    }
    let have = current.type_.as_deref().unwrap_or("Opaque");
    if let Some(want) = desired.target.secret_type.as_deref()
        && want != have
    {
        return Err(SyncError::Refused(format!(
            "Secret {ns}/{name} has type {have}, and Kubernetes does not allow changing it to {want}; delete the Secret so it is created again, or keep template.type {have}"
        )));
    }
    Ok(())
}

/// The Secret as it should be, computed from the current one.
fn next(current: &Secret, desired: &Desired<'_>) -> Secret {
    let target = desired.target;
    let mut secret = current.clone();
    let meta = &mut secret.metadata;
    if meta.name.is_none() {
        *meta = ObjectMeta {
            name: Some(target.name.clone()),
            namespace: Some(desired.namespace.to_owned()),
            ..ObjectMeta::default()
        };
    }
    let mut annotations = meta.annotations.take().unwrap_or_default();
    let previous: BTreeSet<String> = annotations
        .get(SYNCED_KEYS)
        .map(|keys| {
            keys.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if target.creation != CreationPolicy::Merge {
        annotations.insert(MANAGED_BY.to_owned(), desired.spc.to_owned());
        annotations.extend(target.annotations.clone());
        let mut labels = meta.labels.take().unwrap_or_default();
        labels.extend(target.labels.clone());
        meta.labels = (!labels.is_empty()).then_some(labels);
        // Owner: a reference to the SPC, so the Secret outlives pods and goes with the SPC.
        let mut owners = meta.owner_references.take().unwrap_or_default();
        owners.retain(|o| {
            !(o.kind == SPC_KIND && o.api_version == SPC_API_VERSION && o.name == desired.spc)
        });
        if target.creation == CreationPolicy::Owner {
            owners.push(OwnerReference {
                api_version: SPC_API_VERSION.to_owned(),
                kind: SPC_KIND.to_owned(),
                name: desired.spc.to_owned(),
                uid: desired.spc_uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: None,
            });
        }
        meta.owner_references = (!owners.is_empty()).then_some(owners);
        secret.type_ = Some(
            target
                .secret_type
                .clone()
                .unwrap_or_else(|| current.type_.clone().unwrap_or_else(|| "Opaque".to_owned())),
        );
    }
    let keys: Vec<&str> = desired.data.keys().map(String::as_str).collect();
    annotations.insert(SYNCED_KEYS.to_owned(), keys.join(","));
    secret.metadata.annotations = Some(annotations);

    let mut data = secret.data.take().unwrap_or_default();
    if target.deletion == DeletionPolicy::Delete {
        // Keys we wrote before whose source no longer produces them.
        for gone in previous.iter().filter(|k| !desired.data.contains_key(*k)) {
            data.remove(gone);
        }
    }
    for (key, value) in &desired.data {
        data.insert(key.clone(), ByteString(value.expose().to_vec()));
    }
    secret.data = Some(data);
    secret.string_data = None;
    secret
}

/// Whether a write would change anything the API server stores.
fn same(current: &Secret, next: &Secret) -> bool {
    let (a, b) = (&current.metadata, &next.metadata);
    current.data.clone().unwrap_or_default() == next.data.clone().unwrap_or_default()
        && current.type_.as_deref().unwrap_or("Opaque") == next.type_.as_deref().unwrap_or("Opaque")
        && a.labels.clone().unwrap_or_default() == b.labels.clone().unwrap_or_default()
        && a.annotations.clone().unwrap_or_default() == b.annotations.clone().unwrap_or_default()
        && a.owner_references.clone().unwrap_or_default()
            == b.owner_references.clone().unwrap_or_default()
}

/// A Kubernetes API error in words; 403 names the missing permission and where to grant it.
pub(super) fn api_error(
    error: kube::Error,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> SyncError {
    match error {
        kube::Error::Api(status) if status.code == 403 => SyncError::Forbidden(format!(
            "the provider's service account may not {verb} {resource} in namespace {namespace} (HTTP 403); mirroring into Kubernetes Secrets needs get on secretproviderclasses.secrets-store.csi.x-k8s.io, get and list on secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io, and get, create, update on secrets: grant the RBAC in README \"Mirroring into Kubernetes Secrets\" [{}]",
            clip(&status.message)
        )),
        kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
            SyncError::Refused(format!(
                "Kubernetes refused to {verb} the Secret (HTTP {}): {}",
                status.code,
                clip(&status.message)
            ))
        }
        kube::Error::Api(status) => SyncError::Unavailable(format!(
            "Kubernetes API: {verb} {resource} in {namespace} failed (HTTP {}): {}",
            status.code,
            clip(&status.message)
        )),
        other => SyncError::Unavailable(format!(
            "Kubernetes API: {verb} {resource} in {namespace} failed: {}",
            clip(&other.to_string())
        )),
    }
}

/// The API server's message, bounded, without any quoted `Invalid value` (which could hold
/// data).
fn clip(message: &str) -> String {
    let cut = message
        .find("Invalid value:")
        .map_or(message, |i| &message[..i + 14]);
    cut.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::mapping;

    fn target(yaml: &str) -> Target {
        mapping::parse(yaml, None, "ns").unwrap().targets.remove(0)
    }

    fn desired<'a>(t: &'a Target, pairs: &[(&str, &str)]) -> Desired<'a> {
        Desired {
            target: t,
            namespace: "ns",
            spc: "spc",
            spc_uid: "uid-1",
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretBytes::new(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn owner_sets_reference_markers_and_a_second_pass_changes_nothing() {
        let t = target(
            "- target: {name: s, template: {type: kubernetes.io/basic-auth, metadata: {labels: {app: x}}}}\n  dataFrom: [{extract: {key: /a}}]\n",
        );
        let d = desired(&t, &[("username", "u"), ("password", "p")]);
        let first = next(&Secret::default(), &d);
        let owners = first.metadata.owner_references.clone().unwrap();
        assert_eq!(owners[0].kind, "SecretProviderClass");
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(first.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert_eq!(
            first.metadata.annotations.as_ref().unwrap()[MANAGED_BY],
            "spc"
        );
        assert_eq!(
            first.metadata.annotations.as_ref().unwrap()[SYNCED_KEYS],
            "password,username"
        );
        assert!(same(&first, &next(&first, &d)));
    }

    #[test]
    fn delete_drops_keys_no_longer_produced_and_retain_keeps_them() {
        for (policy, kept) in [("Delete", false), ("Retain", true)] {
            let t = target(&format!(
                "- target: {{name: s, creationPolicy: Orphan, deletionPolicy: {policy}}}\n  dataFrom: [{{extract: {{key: /a}}}}]\n"
            ));
            let before = next(&Secret::default(), &desired(&t, &[("a", "1"), ("b", "2")]));
            assert!(
                before.metadata.owner_references.is_none(),
                "Orphan: no owner"
            );
            let after = next(&before, &desired(&t, &[("a", "1")]));
            assert_eq!(after.data.unwrap().contains_key("b"), kept, "{policy}");
        }
    }

    #[test]
    fn unmanaged_secrets_and_type_changes_are_refused() {
        let t = target(
            "- target: {name: s, template: {type: kubernetes.io/tls}}\n  dataFrom: [{extract: {key: /a}}]\n",
        );
        let d = desired(&t, &[]);
        let e = check_writable(&Secret::default(), &d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not managed by SecretProviderClass spc"), "{e}");
        let mut managed = next(&Secret::default(), &d);
        managed.type_ = Some("Opaque".into());
        let e = check_writable(&managed, &d).unwrap_err().to_string();
        assert!(e.contains("does not allow changing it"), "{e}");
        assert_eq!(
            clip("x: Invalid value: \"SECRET\": bad"),
            "x: Invalid value:"
        );
    }
}

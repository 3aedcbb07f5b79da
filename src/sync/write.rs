//! Writing one Secret: read it, decide, and create or update it only when it changed.
//!
//! Shared by an SPC's `secretSync` and the controller's ExternalSecrets; who manages the
//! Secret ([`Manager`]) decides its markers and who may be overwritten:
//!
//! - an SPC: our annotation `akeyless-csi-provider/managed-by: <spc>` (Owner, Orphan), or, under
//!   Merge, a Secret that opted in with `akeyless-csi-provider/merge-from: <spc>`; the field
//!   manager `akeyless-csi-provider`;
//! - an ExternalSecret: ESO's own markers (the label `reconcile.external-secrets.io/managed`,
//!   the `data-hash` annotation, the `created-by` label and an owner reference under Owner) and
//!   ESO's field manager `externalsecrets.external-secrets.io/<name>`, so a Secret moves
//!   between ESO and this controller without a write. An existing Secret without ESO's managed
//!   label, or owned by another ExternalSecret, is never overwritten under Owner or Orphan.
//!
//! An update carries the `resourceVersion` it was computed from, so a concurrent writer makes it
//! fail with 409 and it is recomputed from a fresh read (a few times, then reported). Content is
//! compared with what the API server has, so an unchanged refresh makes no write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};

use super::SyncError;
use super::mapping::{CreationPolicy, DeletionPolicy, Target};
use super::shape::Shaped;
use crate::controller::eso;

/// Our field manager in `managedFields` (SPC mirroring).
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

/// Who manages the Secret.
#[derive(Debug, Clone, Copy)]
pub enum Manager<'a> {
    /// An SPC's `secretSync`.
    Spc { name: &'a str, uid: &'a str },
    /// An ESO ExternalSecret served by the controller.
    ExternalSecret {
        name: &'a str,
        uid: &'a str,
        /// `external-secrets.io/<version>` as the cluster serves it.
        api_version: &'a str,
        /// The ExternalSecret's own labels and annotations, which ESO copies to a Secret
        /// whose target has no template.
        labels: &'a BTreeMap<String, String>,
        annotations: &'a BTreeMap<String, String>,
    },
}

impl Manager<'_> {
    /// The field manager of our writes.
    pub fn field_manager(&self) -> String {
        match self {
            Self::Spc { .. } => FIELD_MANAGER.to_owned(),
            Self::ExternalSecret { name, .. } => eso_field_manager(name),
        }
    }

    /// For messages: "SecretProviderClass x" or "ExternalSecret x".
    pub fn describe(&self) -> String {
        match self {
            Self::Spc { name, .. } => format!("SecretProviderClass {name}"),
            Self::ExternalSecret { name, .. } => format!("ExternalSecret {name}"),
        }
    }
}

/// ESO's field manager for an ExternalSecret (its hashed form when too long).
pub fn eso_field_manager(name: &str) -> String {
    let plain = format!("externalsecrets.external-secrets.io/{name}");
    if plain.len() <= 63 {
        plain
    } else {
        use sha3::Digest;
        format!(
            "externalsecrets.external-secrets.io/sha3/{}",
            hex::encode(sha3::Sha3_224::digest(name.as_bytes()))
        )
    }
}

/// What one target should look like.
pub struct Desired<'a> {
    pub target: &'a Target,
    pub namespace: &'a str,
    pub manager: Manager<'a>,
    pub shaped: Shaped,
}

/// What a sync did to one Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// `deletionPolicy: Delete` and Akeyless has nothing left for it (ExternalSecrets).
    Deleted,
    /// `creationPolicy: Merge` and the Secret does not exist (ExternalSecrets: reported, retried
    /// at the next refresh).
    Missing,
    /// `deletionPolicy: Retain` and Akeyless has nothing for it: left as it is.
    Retained,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
            Self::Missing => "missing",
            Self::Retained => "retained",
        }
    }
}

/// Creates, updates or deletes the target Secret, retrying on write conflicts.
pub async fn apply(api: &Api<Secret>, desired: &Desired<'_>) -> Result<Outcome, SyncError> {
    let name = &desired.target.name;
    let ns = desired.namespace;
    let params = PostParams {
        dry_run: false,
        field_manager: Some(desired.manager.field_manager()),
    };
    let eso = matches!(desired.manager, Manager::ExternalSecret { .. });
    let rbac = desired.manager.rbac();
    // ESO: when Akeyless has no data at all for the Secret, the deletion policy decides.
    let empty = eso && desired.shaped.provider_keys == 0;
    for _ in 0..ATTEMPTS {
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(e, "get", "secrets", ns, rbac))?;
        if empty {
            match desired.target.deletion {
                DeletionPolicy::Retain => return Ok(Outcome::Retained),
                DeletionPolicy::Delete => {
                    let Some(current) = existing else {
                        return Ok(Outcome::Deleted);
                    };
                    check_writable(&current, desired)?;
                    let precondition = DeleteParams {
                        preconditions: Some(kube::api::Preconditions {
                            uid: current.metadata.uid.clone(),
                            resource_version: current.metadata.resource_version.clone(),
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(name, &precondition).await {
                        Ok(_) => return Ok(Outcome::Deleted),
                        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::Deleted),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(api_error(e, "delete", "secrets", ns, rbac)),
                    }
                }
                DeletionPolicy::Merge => {}
            }
        }
        match existing {
            None => {
                if desired.target.creation == CreationPolicy::Merge {
                    if eso {
                        return Ok(Outcome::Missing);
                    }
                    let spc = desired.manager.describe();
                    return Err(SyncError::Refused(format!(
                        "Secret {ns}/{name} does not exist, and creationPolicy Merge only adds keys to an existing Secret; create it with the annotation {MERGE_FROM}: {}, or use creationPolicy Owner",
                        spc.trim_start_matches("SecretProviderClass ")
                    )));
                }
                let secret = next(&Secret::default(), desired);
                match api.create(&params, &secret).await {
                    Ok(_) => return Ok(Outcome::Created),
                    // Someone created it meanwhile: read it and decide again.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(api_error(e, "create", "secrets", ns, rbac)),
                }
            }
            Some(current) => {
                check_writable(&current, desired)?;
                let secret = next(&current, desired);
                if same(&current, &secret) {
                    return Ok(Outcome::Unchanged);
                }
                if current.immutable == Some(true) && !same_data(&current, &secret) {
                    return Err(SyncError::Refused(format!(
                        "Secret {ns}/{name} is immutable and its content changed in Akeyless; delete the Secret so it is created again with the new content"
                    )));
                }
                match api.replace(name, &params, &secret).await {
                    Ok(_) => return Ok(Outcome::Updated),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        tracing::debug!(secret = %name, namespace = %ns, "write conflict; reading again");
                        continue;
                    }
                    Err(e) => return Err(api_error(e, "update", "secrets", ns, rbac)),
                }
            }
        }
    }
    Err(SyncError::Unavailable(format!(
        "Secret {ns}/{name} kept changing while it was written ({ATTEMPTS} conflicts in a row); another writer is updating it; the next sync retries"
    )))
}

/// Refuses Secrets we do not manage and type changes Kubernetes forbids.
fn check_writable(current: &Secret, desired: &Desired<'_>) -> Result<(), SyncError> {
    let ns = desired.namespace;
    let name = &desired.target.name;
    let annotations = current.metadata.annotations.clone().unwrap_or_default();
    match desired.manager {
        Manager::Spc { name: spc, .. } => match desired.target.creation {
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
        },
        Manager::ExternalSecret { name: es, .. } => {
            if let Some(owner) = controller_of(current)
                .filter(|o| o.kind == eso::Kind::ExternalSecret.as_str() && o.name != es)
            {
                return Err(SyncError::Refused(format!(
                    "Secret {ns}/{name} is owned by ExternalSecret {}; two ExternalSecrets cannot write one Secret: choose another target.name",
                    owner.name
                )));
            }
            let managed = current
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(eso::LABEL_MANAGED))
                .is_some_and(|v| v == "true");
            if !managed && desired.target.creation != CreationPolicy::Merge {
                return Err(SyncError::Refused(format!(
                    "Secret {ns}/{name} exists and is not managed by an ExternalSecret (no label {}=true), so it is not overwritten; choose another target.name, delete the Secret if it is stale, or use creationPolicy Merge to add keys to it",
                    eso::LABEL_MANAGED
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

/// The owner reference with `controller: true`, if any.
fn controller_of(secret: &Secret) -> Option<&OwnerReference> {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// The Secret as it should be, computed from the current one.
fn next(current: &Secret, desired: &Desired<'_>) -> Secret {
    let mut secret = current.clone();
    if secret.metadata.name.is_none() {
        secret.metadata = ObjectMeta {
            name: Some(desired.target.name.clone()),
            namespace: Some(desired.namespace.to_owned()),
            ..ObjectMeta::default()
        };
    }
    match desired.manager {
        Manager::Spc { name, uid } => next_for_spc(&mut secret, current, desired, name, uid),
        Manager::ExternalSecret {
            name,
            uid,
            api_version,
            labels,
            annotations,
        } => next_for_external_secret(
            &mut secret,
            desired,
            EsOwner {
                name,
                uid,
                api_version,
                labels,
                annotations,
            },
        ),
    }
    secret.string_data = None;
    secret
}

fn next_for_spc(
    secret: &mut Secret,
    current: &Secret,
    desired: &Desired<'_>,
    spc: &str,
    uid: &str,
) {
    let target = desired.target;
    let meta = &mut secret.metadata;
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
        annotations.insert(MANAGED_BY.to_owned(), spc.to_owned());
        annotations.extend(desired.shaped.annotations.clone());
        let mut labels = meta.labels.take().unwrap_or_default();
        labels.extend(desired.shaped.labels.clone());
        meta.labels = (!labels.is_empty()).then_some(labels);
        // Owner: a reference to the SPC, so the Secret outlives pods and goes with the SPC.
        let mut owners = meta.owner_references.take().unwrap_or_default();
        owners
            .retain(|o| !(o.kind == SPC_KIND && o.api_version == SPC_API_VERSION && o.name == spc));
        if target.creation == CreationPolicy::Owner {
            owners.push(OwnerReference {
                api_version: SPC_API_VERSION.to_owned(),
                kind: SPC_KIND.to_owned(),
                name: spc.to_owned(),
                uid: uid.to_owned(),
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
    let keys: Vec<&str> = desired.shaped.data.keys().map(String::as_str).collect();
    annotations.insert(SYNCED_KEYS.to_owned(), keys.join(","));
    secret.metadata.annotations = Some(annotations);

    let mut data = secret.data.take().unwrap_or_default();
    if target.deletion == DeletionPolicy::Delete {
        // Keys we wrote before whose source no longer produces them.
        for gone in previous
            .iter()
            .filter(|k| !desired.shaped.data.contains_key(*k))
        {
            data.remove(gone);
        }
    }
    for (key, value) in &desired.shaped.data {
        data.insert(key.clone(), ByteString(value.expose().to_vec()));
    }
    secret.data = Some(data);
}

/// The ExternalSecret that manages a Secret.
struct EsOwner<'a> {
    name: &'a str,
    uid: &'a str,
    api_version: &'a str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
}

/// ESO's mutation of a Secret, step for step (`externalsecret_controller.go`): drop the keys,
/// labels and annotations this ExternalSecret set before (its field manager's entries in
/// `managedFields`), apply the content, set ownership and the managed label, then the
/// data-hash of the result.
fn next_for_external_secret(secret: &mut Secret, desired: &Desired<'_>, es: EsOwner<'_>) {
    let target = desired.target;
    let field_manager = eso_field_manager(es.name);
    let exists = secret.metadata.uid.is_some();
    let meta = &mut secret.metadata;
    let mut labels = meta.labels.take().unwrap_or_default();
    let mut annotations = meta.annotations.take().unwrap_or_default();
    let mut data = secret.data.take().unwrap_or_default();
    if target.immutable {
        secret.immutable = Some(true);
    }
    // An immutable Secret that exists keeps its content; only ownership is maintained.
    if !exists || !target.immutable {
        let managed = managed_fields(&meta.managed_fields, &field_manager);
        for key in &managed.data {
            data.remove(key);
        }
        for key in &managed.labels {
            labels.remove(key);
        }
        for key in &managed.annotations {
            annotations.remove(key);
        }
        if target.has_template {
            labels.extend(desired.shaped.labels.clone());
            annotations.extend(desired.shaped.annotations.clone());
        } else {
            labels.extend(es.labels.clone());
            annotations.extend(es.annotations.clone());
        }
        if target.creation != CreationPolicy::Merge {
            data.clear();
        }
        if let Some(secret_type) = &target.secret_type {
            secret.type_ = Some(secret_type.clone());
        }
        for (key, value) in &desired.shaped.data {
            data.insert(key.clone(), ByteString(value.expose().to_vec()));
        }
    }
    // Ownership: Owner sets this ExternalSecret as the controller; other policies drop it.
    let mut owners = meta.owner_references.take().unwrap_or_default();
    owners.retain(|o| !(o.kind == eso::Kind::ExternalSecret.as_str() && o.name == es.name));
    let namespace = desired.namespace;
    if target.creation == CreationPolicy::Owner {
        owners.push(OwnerReference {
            api_version: es.api_version.to_owned(),
            kind: eso::Kind::ExternalSecret.as_str().to_owned(),
            name: es.name.to_owned(),
            uid: es.uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
        labels.insert(
            eso::LABEL_CREATED_BY.to_owned(),
            eso::owner_hash(namespace, es.name),
        );
    } else {
        labels.remove(eso::LABEL_CREATED_BY);
    }
    meta.owner_references = (!owners.is_empty()).then_some(owners);
    labels.insert(eso::LABEL_MANAGED.to_owned(), "true".to_owned());
    annotations.insert(
        eso::ANNOTATION_DATA_HASH.to_owned(),
        eso::data_hash(data.iter().map(|(k, v)| (k, v.0.as_slice()))),
    );
    meta.labels = Some(labels);
    meta.annotations = Some(annotations);
    if secret.type_.is_none() {
        secret.type_ = Some("Opaque".to_owned());
    }
    secret.data = Some(data);
}

/// The data keys, labels and annotations a field manager set, from `managedFields`.
#[derive(Debug, Default)]
struct Managed {
    data: BTreeSet<String>,
    labels: BTreeSet<String>,
    annotations: BTreeSet<String>,
}

fn managed_fields(
    entries: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>>,
    manager: &str,
) -> Managed {
    let mut managed = Managed::default();
    let keys = |fields: &serde_json::Value, path: &[&str]| -> Vec<String> {
        let mut node = fields;
        for part in path {
            match node.get(part) {
                Some(n) => node = n,
                None => return Vec::new(),
            }
        }
        node.as_object()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix("f:"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for entry in entries.iter().flatten() {
        if entry.manager.as_deref() != Some(manager) {
            continue;
        }
        let Some(fields) = &entry.fields_v1 else {
            continue;
        };
        let fields = &fields.0;
        managed.data.extend(keys(fields, &["f:data"]));
        managed
            .labels
            .extend(keys(fields, &["f:metadata", "f:labels"]));
        managed
            .annotations
            .extend(keys(fields, &["f:metadata", "f:annotations"]));
    }
    managed
}

/// Whether a write would change anything the API server stores.
fn same(current: &Secret, next: &Secret) -> bool {
    let (a, b) = (&current.metadata, &next.metadata);
    same_data(current, next)
        && current.type_.as_deref().unwrap_or("Opaque") == next.type_.as_deref().unwrap_or("Opaque")
        && current.immutable.unwrap_or(false) == next.immutable.unwrap_or(false)
        && a.labels.clone().unwrap_or_default() == b.labels.clone().unwrap_or_default()
        && a.annotations.clone().unwrap_or_default() == b.annotations.clone().unwrap_or_default()
        && a.owner_references.clone().unwrap_or_default()
            == b.owner_references.clone().unwrap_or_default()
}

fn same_data(current: &Secret, next: &Secret) -> bool {
    current.data.clone().unwrap_or_default() == next.data.clone().unwrap_or_default()
}

/// What to grant when the API server answers 403, by who writes.
pub const SPC_RBAC: &str = "mirroring into Kubernetes Secrets needs get on secretproviderclasses.secrets-store.csi.x-k8s.io, get and list on secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io, and get, create, update on secrets: grant the RBAC in README \"Mirroring into Kubernetes Secrets\"";
pub const CONTROLLER_RBAC: &str = "the controller needs get, list, watch, create, update, delete on secrets, and update on externalsecrets/finalizers to set an Owner Secret's owner reference: grant the RBAC of deploy/overlays/controller (README, \"Sync without a pod\")";

impl Manager<'_> {
    fn rbac(&self) -> &'static str {
        match self {
            Self::Spc { .. } => SPC_RBAC,
            Self::ExternalSecret { .. } => CONTROLLER_RBAC,
        }
    }
}

/// A Kubernetes API error in words; 403 names the missing permission and, `rbac`, where to
/// grant it.
pub(crate) fn api_error(
    error: kube::Error,
    verb: &str,
    resource: &str,
    namespace: &str,
    rbac: &str,
) -> SyncError {
    match error {
        kube::Error::Api(status) if status.code == 403 => SyncError::Forbidden(format!(
            "the provider's service account may not {verb} {resource} in namespace {namespace} (HTTP 403); {rbac} [{}]",
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
    use crate::secret::SecretBytes;
    use crate::sync::mapping;

    fn target(yaml: &str) -> Target {
        mapping::parse(yaml, None, "ns").unwrap().targets.remove(0)
    }

    fn desired<'a>(t: &'a Target, pairs: &[(&str, &str)]) -> Desired<'a> {
        let shaped = Shaped {
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretBytes::new(v.as_bytes().to_vec())))
                .collect(),
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), text(&v.render(&BTreeMap::new()).unwrap())))
                .collect(),
            annotations: BTreeMap::new(),
            gone: Vec::new(),
            provider_keys: pairs.len(),
        };
        Desired {
            target: t,
            namespace: "ns",
            manager: Manager::Spc {
                name: "spc",
                uid: "uid-1",
            },
            shaped,
        }
    }

    fn text(value: &SecretBytes) -> String {
        String::from_utf8(value.expose().to_vec()).unwrap()
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

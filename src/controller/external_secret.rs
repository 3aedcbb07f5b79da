//! ExternalSecrets: when one is due, read its items, shape its Secret, write it only when it
//! changed, and report — status as ESO writes it, and Events.
//!
//! A refresh is all or nothing: a failed login, read or shaping writes nothing, and the status
//! says which item or field failed and what to fix, never a value. Failures are retried with
//! exponential backoff and jitter per object; an invalid spec waits for a change.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::Ctx;
use super::eso::{self, ExternalSecretSpec, RefreshPolicy, StoreKind};
use super::store::{StoreAccess, StoreError};
use crate::akeyless::{Deadline, ItemRef};
use crate::auth::AuthError;
use crate::fetch::{Extra, FetchError, Fetched, Lookup, Want};
use crate::params::ItemKind;
use crate::secret::SecretBytes;
use crate::sync::mapping::{CreationPolicy, DeletionPolicy, Find, Target};
use crate::sync::shape::{self, Source};
use crate::sync::write::{self, Manager, Outcome};
use crate::telemetry::metrics::{ReconcileKind, ReconcileOutcome, WriteOutcome};

/// ESO's condition reasons.
const SYNCED: &str = "SecretSynced";
const SYNC_ERROR: &str = "SecretSyncedError";
const DELETED: &str = "SecretDeleted";
const MISSING: &str = "SecretMissing";

/// Where a watched Secret's cached copy keeps the hash of its data, which is dropped: set in
/// this process's memory only, never sent to the API server.
pub const OBSERVED_HASH: &str = "akeyless-csi-provider.internal/observed-data-hash";

/// Reduces a watched Secret to what refreshes are decided on: its data becomes its hash (no
/// value is kept in memory), its managed fields go.
fn keep_hash_only(secret: &mut Secret) {
    let data = secret.data.take().unwrap_or_default();
    let hash = eso::data_hash(data.iter().map(|(k, v)| (k, v.0.as_slice())));
    secret.string_data = None;
    secret.metadata.managed_fields = None;
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(OBSERVED_HASH.to_owned(), hash);
}

/// The observed hash of a Secret's data: from its cached copy, else computed.
fn observed_hash(secret: &Secret) -> String {
    if let Some(hash) = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OBSERVED_HASH))
    {
        return hash.clone();
    }
    let data = secret.data.clone().unwrap_or_default();
    eso::data_hash(data.iter().map(|(k, v)| (k, v.0.as_slice())))
}

/// Why a reconcile failed; retried with backoff (the status already says why).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Failed(String),
    #[error("the reconcile failed unexpectedly (a bug); it has been logged")]
    Panicked,
}

/// Runs the ExternalSecret controller until `stop`.
pub async fn run(
    ctx: Arc<Ctx>,
    secrets_writer: Writer<Secret>,
    stop: Shared<BoxFuture<'static, ()>>,
) {
    let secrets = match &ctx.options.namespace {
        Some(ns) => Api::<Secret>::namespaced(ctx.client.clone(), ns),
        None => Api::<Secret>::all(ctx.client.clone()),
    };
    let managed = watcher::Config::default()
        .labels(&format!("{}=true", eso::LABEL_MANAGED))
        .any_semantic();
    // One watch of the managed Secrets: it fills `ctx.secrets` and wakes their owners when one
    // changes or goes.
    let managed_secrets = watcher::watcher(secrets, managed)
        .default_backoff()
        .modify(keep_hash_only)
        .reflect(secrets_writer)
        .touched_objects();
    let controller =
        super::controller(&ctx, &ctx.kinds.external_secret, true).owns_stream(managed_secrets);
    let externals = controller.store();
    let on_store = |kind: StoreKind| {
        let externals = externals.clone();
        move |store: DynamicObject| users_of(&externals, kind, &store)
    };
    let mut controller = controller.watches_with(
        super::api(&ctx, &ctx.kinds.secret_store, true),
        ctx.kinds.secret_store.clone(),
        super::watcher_config(),
        on_store(StoreKind::SecretStore),
    );
    if ctx.options.cluster_stores {
        controller = controller.watches_with(
            super::api(&ctx, &ctx.kinds.cluster_secret_store, false),
            ctx.kinds.cluster_secret_store.clone(),
            super::watcher_config(),
            on_store(StoreKind::ClusterSecretStore),
        );
    }
    let stream = controller.graceful_shutdown_on(stop).run(
        |object, ctx| async move {
            AssertUnwindSafe(reconcile(object, ctx))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("an ExternalSecret reconcile panicked; it is retried");
                    Err(ReconcileError::Panicked)
                })
        },
        |object, _error, ctx| {
            let key = ObjectRef::from_obj_with(object.as_ref(), ctx.kinds.external_secret.clone());
            Action::requeue(ctx.backoff(key))
        },
        ctx.clone(),
    );
    super::drive("ExternalSecret", stream).await;
}

/// The ExternalSecrets that use a store, to reconcile when it changes.
fn users_of(
    externals: &Store<DynamicObject>,
    kind: StoreKind,
    store: &DynamicObject,
) -> Vec<ObjectRef<DynamicObject>> {
    let name = store.metadata.name.as_deref().unwrap_or_default();
    let namespace = store.metadata.namespace.as_deref();
    externals
        .state()
        .iter()
        .filter(|es| {
            let named =
                eso::store_ref(eso::spec(es)).is_some_and(|r| r.kind == kind && r.name == name);
            let same_namespace = kind == StoreKind::ClusterSecretStore
                || es.metadata.namespace.as_deref() == namespace;
            named && same_namespace
        })
        .map(|es| ObjectRef::from_obj_with(es.as_ref(), es_resource(es)))
        .collect()
}

fn es_resource(es: &DynamicObject) -> kube::api::ApiResource {
    let types = es.types.clone().unwrap_or_default();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or((eso::GROUP, "v1"));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, eso::Kind::ExternalSecret.as_str());
    kube::api::ApiResource::from_gvk_with_plural(&gvk, "externalsecrets")
}

/// One ExternalSecret, as a reconcile sees it.
struct Es<'a> {
    object: &'a DynamicObject,
    name: String,
    namespace: String,
}

impl Es<'_> {
    fn label(&self) -> String {
        format!("ExternalSecret {}/{}", self.namespace, self.name)
    }
}

/// What a reconcile ends with, for the status.
struct Report {
    ready: bool,
    reason: &'static str,
    message: String,
    /// Set on a refresh: refreshTime, syncedResourceVersion and binding are updated.
    refreshed: Option<String>,
}

async fn reconcile(object: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let es = Es {
        object: &object,
        name: object.metadata.name.clone().unwrap_or_default(),
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
    };
    let key = ObjectRef::from_obj_with(object.as_ref(), ctx.kinds.external_secret.clone());
    // Whose it is comes first: an ExternalSecret of another controller's store (ESO's) is left
    // alone, even when it uses fields this controller does not implement.
    if let Some(store) = eso::store_ref(eso::spec(&object))
        && ctx.stores.foreign(&store, &es.namespace).await
    {
        ctx.metrics
            .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Skipped);
        return Ok(Action::await_change());
    }
    // The spec: every problem at once, naming the field.
    let parsed = eso::external_secret(&es.name, eso::spec(&object));
    let (spec, target) = match parsed {
        Ok(parsed) => parsed,
        Err(problems) => {
            let message = format!("invalid {}: {problems}", es.label());
            finish(
                &ctx,
                &es,
                Report {
                    ready: false,
                    reason: SYNC_ERROR,
                    message: message.clone(),
                    refreshed: None,
                },
                Some(&message),
            )
            .await?;
            ctx.metrics
                .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Invalid);
            return Ok(Action::await_change());
        }
    };
    let access = match ctx.stores.access(&spec.store, &es.namespace).await {
        Ok(access) => access,
        Err(StoreError::NotOurs(_)) => {
            ctx.metrics
                .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Skipped);
            return Ok(Action::await_change());
        }
        // Beside ESO (`--skip-unclassed`), an ExternalSecret whose store does not exist may be
        // ESO's: its status is left to ESO. The store's creation wakes it again.
        Err(StoreError::NotFound { .. }) if ctx.options.skip_unclassed => {
            tracing::debug!(
                externalsecret = %format!("{}/{}", es.namespace, es.name),
                "its store does not exist; left alone (--skip-unclassed)"
            );
            ctx.metrics
                .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Skipped);
            return Ok(Action::await_change());
        }
        Err(e) => {
            let message = format!("{}: {e}", es.label());
            finish(
                &ctx,
                &es,
                Report {
                    ready: false,
                    reason: SYNC_ERROR,
                    message: message.clone(),
                    refreshed: None,
                },
                Some(&message),
            )
            .await?;
            ctx.metrics
                .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Error);
            return Err(ReconcileError::Failed(message));
        }
    };
    // The watched copy when the Secret is managed; else (not created yet, not managed, or the
    // watch not yet listed) a read.
    let cached = ctx
        .secrets
        .get(&ObjectRef::new(&target.name).within(&es.namespace))
        .map(|s| Secret::clone(&s));
    let current = match cached {
        Some(secret) => Some(secret),
        None => Api::<Secret>::namespaced(ctx.client.clone(), &es.namespace)
            .get_opt(&target.name)
            .await
            .map_err(|e| {
                ReconcileError::Failed(format!(
                    "{}: reading Secret {}: {e}",
                    es.label(),
                    target.name
                ))
            })?,
    };
    let last = last_sync(&ctx, &key, &object);
    if !due(&object, &last, &spec, &target, current.as_ref()) {
        ctx.metrics
            .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Skipped);
        ctx.succeeded(&key);
        return Ok(next_action(&last, &spec));
    }
    match refresh(&ctx, &es, &target, &access).await {
        Ok((outcome, gone)) => {
            let (reason, message) = match outcome {
                Outcome::Deleted => (
                    DELETED,
                    "secret deleted: Akeyless has no data for it (deletionPolicy Delete)"
                        .to_owned(),
                ),
                Outcome::Missing => (
                    MISSING,
                    format!(
                        "Secret {} does not exist; creationPolicy Merge does not create it",
                        target.name
                    ),
                ),
                Outcome::Retained => (
                    SYNCED,
                    "secret retained: Akeyless has no data for it (deletionPolicy Retain)"
                        .to_owned(),
                ),
                _ if !gone.is_empty() => (
                    SYNCED,
                    format!(
                        "secret synced; gone from Akeyless, so their keys were dropped: {}",
                        gone.join(", ")
                    ),
                ),
                _ => (SYNCED, "secret synced".to_owned()),
            };
            let event = match outcome {
                Outcome::Created => Some(("Created", "Created Secret")),
                Outcome::Updated => Some(("Updated", "Updated Secret")),
                Outcome::Deleted => Some(("Deleted", "Deleted Secret")),
                _ => None,
            };
            if let Some((reason, note)) = event {
                publish(
                    &ctx,
                    &es,
                    EventType::Normal,
                    reason,
                    format!("{note} {}", target.name),
                )
                .await;
            }
            ctx.metrics.secret_written(match outcome {
                Outcome::Created => WriteOutcome::Created,
                Outcome::Updated => WriteOutcome::Updated,
                Outcome::Deleted => WriteOutcome::Deleted,
                _ => WriteOutcome::Unchanged,
            });
            let written = finish(
                &ctx,
                &es,
                Report {
                    ready: true,
                    reason,
                    message,
                    refreshed: Some(target.name.clone()),
                },
                None,
            )
            .await?;
            ctx.metrics
                .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Synced);
            ctx.succeeded(&key);
            let last = match written {
                Some(at) => remember(&ctx, key, &object, at),
                None => last,
            };
            Ok(next_action(&last, &spec))
        }
        Err(failure) => {
            ctx.metrics.secret_written(WriteOutcome::Failed);
            let message = format!("{}: {}", es.label(), failure.message);
            finish(
                &ctx,
                &es,
                Report {
                    ready: false,
                    reason: SYNC_ERROR,
                    message: message.clone(),
                    refreshed: None,
                },
                Some(&message),
            )
            .await?;
            ctx.metrics
                .reconciled(ReconcileKind::ExternalSecret, ReconcileOutcome::Error);
            // Retried with backoff even when the message asks for a fix: the fix is made
            // outside the ExternalSecret (an item in Akeyless, a Secret in the way), and no
            // watch would bring it back.
            Err(ReconcileError::Failed(message))
        }
    }
}

/// A failed refresh: what to show.
struct Failure {
    message: String,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Reads, shapes and writes the Secret.
async fn refresh(
    ctx: &Ctx,
    es: &Es<'_>,
    target: &Target,
    access: &StoreAccess,
) -> Result<(Outcome, Vec<String>), Failure> {
    let deadline = Deadline::after(ctx.options.refresh_timeout);
    let values = fetch(ctx, target, access, deadline).await?;
    let shaped = shape::shape(target, &values)
        .map_err(|why| Failure::new(format!("Secret {}: {why}", target.name)))?;
    let gone = shaped.gone.clone();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &es.namespace);
    let labels = es.object.metadata.labels.clone().unwrap_or_default();
    let annotations = es.object.metadata.annotations.clone().unwrap_or_default();
    let api_version = ctx.kinds.external_secret.api_version.clone();
    let desired = write::Desired {
        target,
        namespace: &es.namespace,
        manager: Manager::ExternalSecret {
            name: &es.name,
            uid: es.object.metadata.uid.as_deref().unwrap_or_default(),
            api_version: &api_version,
            labels: &labels,
            annotations: &annotations,
        },
        shaped,
    };
    if target.creation == CreationPolicy::None {
        return Ok((Outcome::Unchanged, gone));
    }
    let outcome = tokio::time::timeout_at(deadline.instant(), write::apply(&api, &desired))
        .await
        .map_err(|_| Failure::new("writing the Secret did not finish in time"))?
        .map_err(|e| Failure::new(e.to_string()))?;
    if target.creation == CreationPolicy::Owner {
        delete_renamed(ctx, es, target).await;
    }
    Ok((outcome, gone))
}

/// Owner Secrets this ExternalSecret created under an earlier `target.name` (ESO deletes them),
/// found among the watched managed Secrets (no list per refresh).
async fn delete_renamed(ctx: &Ctx, es: &Es<'_>, target: &Target) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &es.namespace);
    let creator = eso::owner_hash(&es.namespace, &es.name);
    let uid = es.object.metadata.uid.as_deref();
    let renamed: Vec<Arc<Secret>> = ctx
        .secrets
        .state()
        .into_iter()
        .filter(|old| {
            let meta = &old.metadata;
            meta.namespace.as_deref() == Some(es.namespace.as_str())
                && meta.name.as_deref() != Some(target.name.as_str())
                && meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(eso::LABEL_CREATED_BY))
                    .is_some_and(|c| *c == creator)
                && meta
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
        })
        .collect();
    for old in renamed {
        let name = old.metadata.name.clone().unwrap_or_default();
        // Only the Secret watched: not one created again meanwhile under that name.
        let precondition = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: old.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if api.delete(&name, &precondition).await.is_ok() {
            publish(
                ctx,
                es,
                EventType::Normal,
                "Deleted",
                format!("Deleted Secret {name}, no longer the target"),
            )
            .await;
        }
    }
}

/// The items one `find` listed: names and types.
type Listing = Vec<(String, Option<ItemKind>)>;

/// The values one refresh reads: every item the target names (types asked of Akeyless and
/// remembered), and the items each `find` lists.
struct Values {
    fetched: Fetched,
    found: Vec<(String, Listing)>,
}

impl Source for Values {
    fn value(&self, key: &str, version: Option<u32>) -> Result<Option<SecretBytes>, String> {
        match self.fetched.lookup(key, version, None) {
            Lookup::Found(item) => {
                let kind = self
                    .fetched
                    .kind_of(key, None)
                    .cloned()
                    .unwrap_or(ItemKind::Static);
                Ok(Some(eso_value(&kind, &item.value)))
            }
            Lookup::Absent => Ok(None),
            Lookup::Missing => Err(format!("item {key} was not read (a bug)")),
        }
    }

    fn found(&self, find: &Find) -> Result<Vec<(String, SecretBytes)>, String> {
        let (_, names) = self
            .found
            .iter()
            .find(|(path, _)| *path == find_key(find))
            .ok_or_else(|| "the listing was not read (a bug)".to_owned())?;
        let mut out = Vec::new();
        for (name, kind) in names {
            match self.fetched.lookup(name, None, kind.as_ref()) {
                Lookup::Found(item) => {
                    let kind = kind.clone().unwrap_or(ItemKind::Static);
                    out.push((name.clone(), eso_value(&kind, &item.value)));
                }
                // Deleted between the listing and the read: not found any more.
                Lookup::Absent => {}
                Lookup::Missing => return Err(format!("item {name} was not read (a bug)")),
            }
        }
        Ok(out)
    }
}

/// The value as ESO's Akeyless provider gives it: static values as stored; rotated secrets'
/// `payload`, else `target_value`, else the value object, as compact JSON; dynamic secrets and
/// certificates as compact JSON.
fn eso_value(kind: &ItemKind, value: &SecretBytes) -> SecretBytes {
    let json = || serde_json::from_slice::<Value>(value.expose()).ok();
    let compact = |v: &Value| SecretBytes::new(serde_json::to_vec(v).unwrap_or_default());
    match kind {
        ItemKind::Static => value.clone(),
        ItemKind::Rotated => match json() {
            Some(v) => match (v.get("payload"), v.get("target_value")) {
                (Some(Value::String(p)), _) => SecretBytes::new(p.as_bytes().to_vec()),
                (Some(p), _) => SecretBytes::new(p.to_string().into_bytes()),
                (None, Some(t)) => compact(t),
                (None, None) => compact(&v),
            },
            None => value.clone(),
        },
        _ => json().map(|v| compact(&v)).unwrap_or_else(|| value.clone()),
    }
}

/// A `find`'s identity among the listings of one refresh.
fn find_key(find: &Find) -> String {
    format!(
        "{}\n{}\n{:?}",
        find.path,
        find.name.as_ref().map(|r| r.as_str()).unwrap_or_default(),
        find.tags
    )
}

/// Logs in (once per identity and token lifetime) and reads everything the target needs.
async fn fetch(
    ctx: &Ctx,
    target: &Target,
    access: &StoreAccess,
    deadline: Deadline,
) -> Result<Values, Failure> {
    let identity = &access.identity;
    let mut relogged = false;
    loop {
        let token = ctx
            .auth
            .token(identity, deadline)
            .await
            .map_err(|e| auth_failure(access, e))?;
        // The listings of `find` first: their items join the one batched read.
        let mut found = Vec::new();
        let mut extra: Vec<Extra> = Vec::new();
        let mut listing_failed = None;
        'finds: for find in target.finds() {
            // ESO's Akeyless provider: by name, one listing filtered by the name (the tags are
            // then not used); else one listing per tag value, and every item any of them listed.
            let tags: Vec<Option<&str>> = if find.tags.is_empty() || find.name.is_some() {
                vec![None]
            } else {
                find.tags.values().map(|t| Some(t.as_str())).collect()
            };
            let mut names: Listing = Vec::new();
            for tag in tags {
                match ctx
                    .fetcher
                    .find(identity, &token, &find.path, tag, deadline)
                    .await
                {
                    Ok(items) => names.extend(
                        items
                            .into_iter()
                            .filter(|item| {
                                find.name.as_ref().is_none_or(|re| re.is_match(&item.name))
                            })
                            .map(|item| (item.name, item.kind)),
                    ),
                    Err(e) => {
                        listing_failed = Some(e);
                        break 'finds;
                    }
                }
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            names.dedup_by(|a, b| a.0 == b.0);
            for (name, kind) in &names {
                extra.push(Extra {
                    item: ItemRef {
                        name: name.clone(),
                        version: None,
                    },
                    kind: kind.clone(),
                    optional: true,
                });
            }
            found.push((find_key(find), names));
        }
        if let Some(e) = listing_failed {
            if e.is_unauthorized() && !relogged {
                ctx.auth.invalidate(identity, &token);
                relogged = true;
                continue;
            }
            return Err(fetch_failure(access, e));
        }
        let optional = target.deletion != DeletionPolicy::Retain;
        let mut seen = BTreeSet::new();
        for remote in target.remote_refs() {
            if seen.insert((remote.key.clone(), remote.version)) {
                extra.push(Extra {
                    item: ItemRef {
                        name: remote.key.clone(),
                        version: remote.version,
                    },
                    kind: None,
                    optional,
                });
            }
        }
        // Dynamic secrets are issued anew at every refresh, as ESO does (once per refresh, not
        // per key): reused until 2/3 of their life, credentials could end before the next one.
        let want = Want {
            objects: &[],
            extra: &extra,
            scope: None,
        };
        match ctx.fetcher.fetch(identity, &token, &want, deadline).await {
            Ok(fetched) => return Ok(Values { fetched, found }),
            Err(e) if e.is_unauthorized() && !relogged => {
                ctx.auth.invalidate(identity, &token);
                relogged = true;
            }
            Err(e) => return Err(fetch_failure(access, e)),
        }
    }
}

fn auth_failure(access: &StoreAccess, error: AuthError) -> Failure {
    Failure::new(format!(
        "{}: cannot log in to Akeyless as access id {} ({}): {error}",
        access.store, access.identity.access_id, access.identity.access_type
    ))
}

fn fetch_failure(access: &StoreAccess, error: FetchError) -> Failure {
    use crate::akeyless::ApiError;
    let message = match &error {
        FetchError::Missing { .. } => format!("{error}: check remoteRef.key"),
        FetchError::Item { .. } => error.to_string(),
        FetchError::Api { source, items } => {
            let items = items.join(", ");
            match source {
                ApiError::Unauthorized { .. } => format!(
                    "Akeyless denied access id {} reading {items}: grant its role read access to these items, or check the keys (Akeyless answers 401 for items the caller may not see)",
                    access.identity.access_id
                ),
                ApiError::NotFound { .. } => {
                    format!("{items}: an item does not exist: check remoteRef.key ({source})")
                }
                _ => format!("reading {items} from {}: {source}", access.identity.base),
            }
        }
    };
    Failure::new(format!("{}: {message}", access.store))
}

/// An ExternalSecret's last refresh: ESO's `status.syncedResourceVersion` and
/// `status.refreshTime`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct LastSync {
    /// The ExternalSecret's uid: an object deleted and created again starts afresh.
    uid: String,
    version: String,
    at: Option<chrono::DateTime<chrono::FixedOffset>>,
}

impl LastSync {
    /// As the object's status records it.
    fn of(object: &DynamicObject) -> Self {
        let status = object.data.get("status");
        let text = |field: &str| {
            status
                .and_then(|s| s.get(field))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        Self {
            uid: object.metadata.uid.clone().unwrap_or_default(),
            version: text("syncedResourceVersion").to_owned(),
            at: chrono::DateTime::parse_from_rfc3339(text("refreshTime")).ok(),
        }
    }

    /// Whether this refresh, written by this process, is newer than what the object's status
    /// (`recorded`) shows: the object predates the write.
    fn predates(&self, recorded: &LastSync) -> bool {
        self.uid == recorded.uid && self != recorded && self.at >= recorded.at
    }
}

/// Refreshes remembered at most this long for a watch to bring their status.
const REMEMBERED: Duration = Duration::from_secs(600);

/// The last refresh of the ExternalSecret: as its status records it, or as this process wrote
/// it when the object at hand predates that write. A reconcile started by a watch event of the
/// refresh's own writes (its Secret's) can run before the status just written reaches the
/// cache, and would refresh again: every Akeyless read, status write and Secret read twice.
fn last_sync(ctx: &Ctx, key: &ObjectRef<DynamicObject>, object: &DynamicObject) -> LastSync {
    let recorded = LastSync::of(object);
    let mut written = super::lock(&ctx.written);
    match written.get(key) {
        Some(mine) if mine.predates(&recorded) => mine.clone(),
        // The watch has brought it (or the object is another of the same name).
        Some(_) => {
            written.remove(key);
            recorded
        }
        None => recorded,
    }
}

/// Remembers the refresh just written (`refreshTime` `at`) until the watch brings it.
fn remember(
    ctx: &Ctx,
    key: ObjectRef<DynamicObject>,
    object: &DynamicObject,
    at: chrono::DateTime<chrono::FixedOffset>,
) -> LastSync {
    let last = LastSync {
        uid: object.metadata.uid.clone().unwrap_or_default(),
        version: resource_version(object),
        at: Some(at),
    };
    let mut written = super::lock(&ctx.written);
    if written.len() >= 10_000 {
        // Those of ExternalSecrets deleted before their watch event came.
        let now = chrono::Utc::now();
        written.retain(|_, w| {
            w.at.and_then(|at| now.signed_duration_since(at).to_std().ok())
                .is_some_and(|age| age < REMEMBERED)
        });
    }
    written.insert(key, last.clone());
    last
}

/// Whether the ExternalSecret must be refreshed now (ESO's `shouldRefresh` and
/// `isSecretValid`), given its last refresh.
fn due(
    object: &DynamicObject,
    last: &LastSync,
    spec: &ExternalSecretSpec,
    target: &Target,
    secret: Option<&Secret>,
) -> bool {
    let synced = last.version.as_str();
    let refreshed = last.at;
    let current = resource_version(object);
    let changed = synced != current;
    let never = synced.is_empty() || refreshed.is_none();
    let should = match spec.refresh_policy {
        RefreshPolicy::CreatedOnce => never,
        RefreshPolicy::OnChange => never || changed,
        RefreshPolicy::Periodic => match (spec.refresh_interval, refreshed) {
            (None, _) => never,
            (Some(_), _) if changed || never => true,
            (Some(interval), Some(at)) => {
                let elapsed = chrono::Utc::now().signed_duration_since(at);
                elapsed.to_std().map_or(true, |e| e >= interval)
            }
            (Some(_), None) => true,
        },
    };
    should || !valid(target, secret)
}

/// ESO's `isSecretValid`: the target exists with the managed label and a data-hash that
/// matches its data (always valid under Orphan; Merge and None are not checked here either).
fn valid(target: &Target, secret: Option<&Secret>) -> bool {
    if matches!(
        target.creation,
        CreationPolicy::Orphan | CreationPolicy::None
    ) {
        return true;
    }
    let Some(secret) = secret else { return false };
    let labels = secret.metadata.labels.as_ref();
    let annotations = secret.metadata.annotations.as_ref();
    let managed = labels
        .and_then(|l| l.get(eso::LABEL_MANAGED))
        .is_some_and(|v| v == "true");
    let hash = annotations.and_then(|a| a.get(eso::ANNOTATION_DATA_HASH));
    managed && hash.is_some_and(|h| *h == observed_hash(secret))
}

/// ESO's `syncedResourceVersion` of this object.
fn resource_version(object: &DynamicObject) -> String {
    eso::resource_version(
        object.metadata.generation,
        object.metadata.labels.as_ref(),
        object.metadata.annotations.as_ref(),
    )
}

/// When to look again after a successful reconcile, given the last refresh.
fn next_action(last: &LastSync, spec: &ExternalSecretSpec) -> Action {
    match (spec.refresh_policy, spec.refresh_interval) {
        (RefreshPolicy::Periodic, Some(interval)) => {
            let left = last
                .at
                .and_then(|at| chrono::Utc::now().signed_duration_since(at).to_std().ok())
                .map_or(interval, |elapsed| interval.saturating_sub(elapsed));
            // The status just written may not be in this object yet: never requeue at once.
            Action::requeue(left.max(Duration::from_secs(1)))
        }
        _ => Action::await_change(),
    }
}

/// Writes the status (when it changed) and, on failure, a Warning event; returns the
/// `refreshTime` written, if a refresh was.
async fn finish(
    ctx: &Ctx,
    es: &Es<'_>,
    report: Report,
    warning: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, ReconcileError> {
    if let Some(message) = warning {
        publish(
            ctx,
            es,
            EventType::Warning,
            "UpdateFailed",
            message.to_owned(),
        )
        .await;
    }
    let status = es.object.data.get("status").cloned().unwrap_or(Value::Null);
    let condition = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
        .cloned();
    let status_text = if report.ready { "True" } else { "False" };
    let unchanged_condition = condition.as_ref().is_some_and(|c| {
        c.get("status") == Some(&json!(status_text))
            && c.get("reason") == Some(&json!(report.reason))
            && c.get("message") == Some(&json!(report.message))
    });
    if unchanged_condition && report.refreshed.is_none() {
        return Ok(None);
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let transition = match &condition {
        Some(c) if c.get("status") == Some(&json!(status_text)) => c
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(now)),
        _ => json!(now),
    };
    let mut patch = json!({
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": status_text,
                "reason": report.reason,
                "message": report.message,
                "lastTransitionTime": transition,
            }],
        }
    });
    if let Some(target) = &report.refreshed {
        patch["status"]["refreshTime"] = json!(now);
        patch["status"]["syncedResourceVersion"] = json!(resource_version(es.object));
        patch["status"]["binding"] = json!({"name": target});
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &es.namespace,
        &ctx.kinds.external_secret,
    );
    match api
        .patch_status(&es.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            ctx.metrics.status_writes.inc();
            Ok(report
                .refreshed
                .and_then(|_| chrono::DateTime::parse_from_rfc3339(&now).ok()))
        }
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(ReconcileError::Failed(format!(
            "{}: writing its status: {e}",
            es.label()
        ))),
    }
}

/// Publishes an Event on the ExternalSecret; a failure is only logged.
async fn publish(ctx: &Ctx, es: &Es<'_>, type_: EventType, reason: &str, note: String) {
    let reference = es.object.object_ref(&ctx.kinds.external_secret);
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1024).collect()),
        action: "Sync".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, "could not publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::eso::StoreRef;
    use crate::sync::mapping;

    #[test]
    fn rotated_values_take_eso_shapes() {
        let v = |text: &str| SecretBytes::new(text.as_bytes().to_vec());
        let text = |b: SecretBytes| String::from_utf8(b.expose().to_vec()).unwrap();
        assert_eq!(
            text(eso_value(&ItemKind::Rotated, &v(r#"{"payload": "p"}"#))),
            "p"
        );
        assert_eq!(
            text(eso_value(
                &ItemKind::Rotated,
                &v(r#"{"target_value": {"b": 1, "a": 2}}"#)
            )),
            r#"{"a":2,"b":1}"#
        );
        assert_eq!(
            text(eso_value(
                &ItemKind::Rotated,
                &v("{\n  \"username\": \"u\",\n  \"password\": \"p\"\n}")
            )),
            r#"{"password":"p","username":"u"}"#
        );
        assert_eq!(text(eso_value(&ItemKind::Static, &v("raw {"))), "raw {");
    }

    fn es_object(status: Value, generation: i64) -> DynamicObject {
        let mut object = DynamicObject::new(
            "es",
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                eso::GROUP,
                "v1",
                "ExternalSecret",
            )),
        );
        object.metadata.generation = Some(generation);
        object.data = json!({"status": status});
        object
    }

    #[test]
    fn a_watched_secret_keeps_its_hash_not_its_values() {
        let owner = mapping::external_secret("es", &json!({})).unwrap();
        let data = [("k".to_owned(), b"v-ESOMARK".to_vec())];
        let hash = eso::data_hash(data.iter().map(|(k, v)| (k, v.as_slice())));
        let mut secret = Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone())))
                    .collect(),
            ),
            ..Secret::default()
        };
        secret.metadata.labels = Some([(eso::LABEL_MANAGED.to_owned(), "true".to_owned())].into());
        secret.metadata.annotations =
            Some([(eso::ANNOTATION_DATA_HASH.to_owned(), hash.clone())].into());
        assert!(valid(&owner, Some(&secret)), "read from the API server");
        let mut cached = secret.clone();
        keep_hash_only(&mut cached);
        assert!(cached.data.is_none(), "no value kept");
        assert!(
            valid(&owner, Some(&cached)),
            "the same verdict from the cache"
        );
        // Someone edited the data: the watched copy's hash no longer matches the annotation.
        secret.data = Some([("k".to_owned(), k8s_openapi::ByteString(b"edited".to_vec()))].into());
        keep_hash_only(&mut secret);
        assert!(!valid(&owner, Some(&secret)), "drift is seen");
    }

    #[test]
    fn a_refresh_just_written_holds_until_the_status_shows_it() {
        let at = |t: &str| Some(chrono::DateTime::parse_from_rfc3339(t).unwrap());
        let sync = |uid: &str, version: &str, t: &str| LastSync {
            uid: uid.into(),
            version: version.into(),
            at: at(t),
        };
        let mine = sync("u1", "1-a", "2026-01-01T00:01:00Z");
        let never = LastSync {
            uid: "u1".into(),
            ..LastSync::default()
        };
        assert!(
            mine.predates(&never),
            "the first sync's status not seen yet"
        );
        assert!(
            mine.predates(&sync("u1", "1-a", "2026-01-01T00:00:00Z")),
            "the previous refresh's status"
        );
        assert!(
            mine.predates(&sync("u1", "0-z", "2026-01-01T00:01:00Z")),
            "an older version in the same second"
        );
        assert!(!mine.predates(&mine.clone()), "the watch brought it");
        assert!(
            !mine.predates(&sync("u1", "1-a", "2026-01-01T00:02:00Z")),
            "a later refresh"
        );
        assert!(
            !mine.predates(&sync("u2", "", "2026-01-01T00:00:00Z")),
            "another object of the same name"
        );
        // A stale object with the remembered refresh is not due; without it, it would be.
        let spec = ExternalSecretSpec {
            store: StoreRef {
                kind: StoreKind::SecretStore,
                name: "s".into(),
            },
            refresh_policy: RefreshPolicy::Periodic,
            refresh_interval: Some(Duration::from_secs(3600)),
        };
        let target =
            mapping::external_secret("es", &json!({"target": {"creationPolicy": "Orphan"}}))
                .unwrap();
        let stale = es_object(Value::Null, 1);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let written = LastSync {
            uid: String::new(),
            version: resource_version(&stale),
            at: at(&now),
        };
        assert!(due(&stale, &LastSync::of(&stale), &spec, &target, None));
        assert!(!due(&stale, &written, &spec, &target, None));
    }

    #[test]
    fn refresh_is_due_as_eso_decides() {
        let spec = |policy, interval| ExternalSecretSpec {
            store: StoreRef {
                kind: StoreKind::SecretStore,
                name: "s".into(),
            },
            refresh_policy: policy,
            refresh_interval: interval,
        };
        let target =
            mapping::external_secret("es", &json!({"target": {"creationPolicy": "Orphan"}}))
                .unwrap();
        let fresh = es_object(Value::Null, 1);
        let rv = resource_version(&fresh);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let synced = es_object(json!({"syncedResourceVersion": rv, "refreshTime": now}), 1);
        let hour = Some(Duration::from_secs(3600));
        assert!(
            due(
                &fresh,
                &LastSync::of(&fresh),
                &spec(RefreshPolicy::Periodic, hour),
                &target,
                None
            ),
            "never synced"
        );
        assert!(
            !due(
                &synced,
                &LastSync::of(&synced),
                &spec(RefreshPolicy::Periodic, hour),
                &target,
                None
            ),
            "synced now"
        );
        assert!(
            !due(
                &synced,
                &LastSync::of(&synced),
                &spec(RefreshPolicy::Periodic, None),
                &target,
                None
            ),
            "0: once"
        );
        assert!(!due(
            &synced,
            &LastSync::of(&synced),
            &spec(RefreshPolicy::CreatedOnce, hour),
            &target,
            None
        ));
        let changed = es_object(json!({"syncedResourceVersion": rv, "refreshTime": now}), 2);
        assert!(
            due(
                &changed,
                &LastSync::of(&changed),
                &spec(RefreshPolicy::OnChange, hour),
                &target,
                None
            ),
            "spec changed"
        );
        assert!(!due(
            &changed,
            &LastSync::of(&changed),
            &spec(RefreshPolicy::CreatedOnce, hour),
            &target,
            None
        ));
        let old = es_object(
            json!({"syncedResourceVersion": rv, "refreshTime": "2020-01-01T00:00:00Z"}),
            1,
        );
        assert!(
            due(
                &old,
                &LastSync::of(&old),
                &spec(RefreshPolicy::Periodic, hour),
                &target,
                None
            ),
            "interval passed"
        );
        let owner = mapping::external_secret("es", &json!({})).unwrap();
        assert!(
            due(
                &synced,
                &LastSync::of(&synced),
                &spec(RefreshPolicy::Periodic, hour),
                &owner,
                None
            ),
            "Owner Secret missing"
        );
    }
}

//! The `controller` command: serves the External Secrets Operator's own objects for Akeyless —
//! `SecretStore`/`ClusterSecretStore` with an `akeyless` provider, and the `ExternalSecret`s that
//! use them — so Kubernetes Secrets stay current with no pod mounting anything.
//!
//! It is the second entry beside [`crate::server`]/[`crate::service`], on the same stages:
//!
//! 1. [`leader`] holds a `coordination.k8s.io` Lease: only the leader reconciles and writes;
//!    a standby takes over when the leader's Lease runs out;
//! 2. [`eso`] discovers the version the cluster serves and parses the objects (the mapping
//!    itself with [`crate::sync::mapping`], the same parser as an SPC's `secretSync`);
//! 3. [`store`] turns a store into an Akeyless [`crate::auth::Identity`] (the CSI path's auth
//!    and token cache: one login per store identity per token lifetime) and reports the store's
//!    `Ready` condition, validated by a login;
//! 4. [`external_secret`] decides when an ExternalSecret is due, reads its items through the
//!    [`crate::fetch`] stage (batched, shared; dynamic secrets issued once per refresh), shapes
//!    the Secret with [`crate::sync::shape`] and writes it with [`crate::sync::write`], under
//!    ESO's markers, then its status and Events.
//!
//! kube-rs's runtime drives it: watches and reflectors, one `Controller` per kind with a work
//! queue and requeues, and owned Secrets watched by metadata only, filtered by ESO's managed
//! label. A panic in one reconcile fails that reconcile only.

pub mod eso;
pub mod external_secret;
pub mod leader;
pub mod own;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rand::Rng;
use url::Url;

use crate::akeyless::Client;
use crate::auth::Authenticator;
use crate::fetch::Fetcher;
use crate::server::health::Health;
use crate::telemetry::metrics::Metrics;

/// The controller class a store is ours by (`spec.controller`), like ESO's `--controller-class`.
pub const DEFAULT_CLASS: &str = "akeyless-csi-provider";
/// Our name in Events and the Lease.
pub const COMPONENT: &str = "akeyless-csi-provider-controller";

/// Settings fixed at start-up, from the `controller` flags.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Stores whose `spec.controller` equals this are ours.
    pub class: String,
    /// Leave stores without `spec.controller` to others (to run beside ESO).
    pub skip_unclassed: bool,
    /// Serve ClusterSecretStores too.
    pub cluster_stores: bool,
    /// Watch one namespace only (`None`: all).
    pub namespace: Option<String>,
    /// The Akeyless URL of stores that set no `akeylessGWApiURL` (ESO's default: SaaS).
    pub default_url: Url,
    /// Reconciles under way at once, per kind.
    pub concurrency: u16,
    /// Budget of one refresh (logins, reads, the write).
    pub refresh_timeout: Duration,
    /// How often a store is validated again by a login, besides on every change.
    pub store_revalidate: Duration,
    /// First backoff after a failed reconcile; doubled per failure, with jitter, up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Leader election; `None` runs without (a single replica, tests).
    pub leader: Option<leader::LeaderOptions>,
    /// The controller's own ServiceAccount token and cloud identity, for stores that bring no
    /// credential (towards allowed URLs only).
    pub own: own::OwnIdentity,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(String),
    #[error(transparent)]
    Discovery(#[from] eso::DiscoveryError),
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
}

/// Everything a reconcile needs; shared by the controllers.
pub struct Ctx {
    pub client: kube::Client,
    pub kinds: eso::Kinds,
    pub options: ControllerOptions,
    pub stores: store::Stores,
    pub auth: Authenticator,
    pub fetcher: Fetcher,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The Secrets under ESO's managed label, as last watched, with their data replaced by its
    /// hash ([`external_secret::OBSERVED_HASH`]): what refreshes are decided on, without a read
    /// per ExternalSecret and without holding values.
    pub secrets: Store<Secret>,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
    /// ExternalSecrets' refreshes this process wrote, until the watch brings their status.
    written: Mutex<HashMap<ObjectRef<DynamicObject>, external_secret::LastSync>>,
}

impl Ctx {
    /// The requeue after a failure of `object`: exponential per object, with full jitter;
    /// logged (at debug) with the object's failure count, so the backoff can be followed.
    fn backoff(&self, object: ObjectRef<DynamicObject>) -> Duration {
        let (kind, namespace, name) = (
            object.dyntype.kind.clone(),
            object.namespace.clone().unwrap_or_default(),
            object.name.clone(),
        );
        let n = {
            let mut failures = lock(&self.failures);
            let n = failures.entry(object).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let ceiling = self
            .options
            .min_backoff
            .saturating_mul(1u32 << n.min(16).saturating_sub(1))
            .min(self.options.max_backoff);
        let floor = self.options.min_backoff.min(ceiling);
        let jittered =
            rand::rng().random_range(floor.as_millis() as u64..=ceiling.as_millis() as u64);
        tracing::debug!(%kind, %namespace, %name, failures = n, retry_in_ms = jittered, "backing off");
        Duration::from_millis(jittered)
    }

    /// A success resets the backoff of `object`.
    fn succeeded(&self, object: &ObjectRef<DynamicObject>) {
        lock(&self.failures).remove(object);
    }
}

/// The shared stages and endpoints the controller runs on.
pub struct Parts {
    pub client: kube::Client,
    pub akeyless: Client,
    pub auth: Authenticator,
    pub fetcher: Fetcher,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Runs the controller until `shutdown` resolves, or fails at once when leadership is lost (the
/// process exits, to be restarted as a standby).
pub async fn run(
    parts: Parts,
    options: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let Parts {
        client,
        akeyless,
        auth,
        fetcher,
        metrics,
        health,
    } = parts;
    // TokenRequests and ServiceAccount reads for stores go through the controller's client.
    auth.use_kube_client(client.clone());
    let kinds = eso::Kinds::discover(&client).await?;
    tracing::info!(
        version = %kinds.external_secret.version,
        class = %options.class,
        "serving ESO's {} objects",
        eso::GROUP
    );
    tracing::debug!(
        namespace = options.namespace.as_deref().unwrap_or("(all)"),
        skip_unclassed = options.skip_unclassed,
        cluster_stores = options.cluster_stores,
        concurrency = options.concurrency,
        refresh_timeout_ms = options.refresh_timeout.as_millis() as u64,
        "controller settings"
    );
    let shutdown: Shared<BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let leading = match &options.leader {
        None => None,
        Some(leader) => {
            // Standing by is healthy and ready: the probes must not restart a standby.
            health.set_serving(true);
            let lease = leader::Lease::acquire(client.clone(), leader, shutdown.clone()).await?;
            match lease {
                Some(lease) => Some(lease),
                None => return Ok(()), // shut down while standing by
            }
        }
    };
    metrics.leader.set(1);
    let (secrets, secrets_writer) = reflector::store();
    let ctx = Arc::new(Ctx {
        secrets,
        stores: store::Stores::new(
            client.clone(),
            kinds.clone(),
            options.clone(),
            auth.clone(),
            akeyless,
        ),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: COMPONENT.to_owned(),
                instance: options.leader.as_ref().map(|l| l.identity.clone()),
            },
        ),
        client,
        kinds,
        options,
        auth,
        fetcher,
        metrics: metrics.clone(),
        failures: Mutex::default(),
        written: Mutex::default(),
    });
    // A shutdown stops the controllers gracefully (in-flight reconciles finish, then the Lease
    // is released); a lost Lease drops them at once, in-flight reconciles included.
    health.set_serving(true);
    let work = async {
        let stores = store::run(ctx.clone(), shutdown.clone());
        let external_secrets = external_secret::run(ctx.clone(), secrets_writer, shutdown.clone());
        futures::join!(stores, external_secrets);
    };
    let led = match leading {
        Some(lease) => lease.lead(work).await,
        None => {
            work.await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    Ok(led?)
}

/// The namespace this process runs in: `POD_NAMESPACE`, else the service account's namespace
/// file (in a pod), else none.
pub fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
}

/// Watches of a dynamic kind, in one namespace or all.
fn api(ctx: &Ctx, resource: &kube::api::ApiResource, namespaced: bool) -> Api<DynamicObject> {
    match (&ctx.options.namespace, namespaced) {
        (Some(ns), true) => Api::namespaced_with(ctx.client.clone(), ns, resource),
        _ => Api::all_with(ctx.client.clone(), resource),
    }
}

/// Drives a controller's stream, logging what it reports; returns when the stream ends.
async fn drive<S, E>(what: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<(ObjectRef<DynamicObject>, Action), E>>,
    E: std::fmt::Display,
{
    stream
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(controller = what, error = %e, "reconcile failed");
            }
        })
        .await;
}

/// The watcher settings of every controller.
fn watcher_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

fn controller_config(ctx: &Ctx) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .concurrency(ctx.options.concurrency)
        .debounce(Duration::from_millis(200))
}

/// Builds a controller over a dynamic kind. Its cache keeps the objects without their
/// `managedFields`, which nothing here reads and which can be most of an object's size.
fn controller(
    ctx: &Ctx,
    resource: &kube::api::ApiResource,
    namespaced: bool,
) -> Controller<DynamicObject> {
    let writer = reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    let objects = watcher::watcher(api(ctx, resource, namespaced), watcher_config())
        .default_backoff()
        .modify(|object: &mut DynamicObject| object.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream_with(objects, reader, resource.clone())
        .with_config(controller_config(ctx))
}

/// A poisoned lock only means another reconcile panicked; the map itself stays consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

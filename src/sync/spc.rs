//! Which SecretProviderClass a mount belongs to, and what it says, read from the API server at
//! most once per object per `--spc-cache-ttl` on this node.
//!
//! Every synced mount needs its SPC object (the mapping is never taken from the attributes). A
//! node with a hundred synced volumes polled every two minutes would otherwise GET an SPC fifty
//! times a minute, on top of the driver's own load. So reads go through a short cache keyed by
//! namespace and name — one namespace's SPC never answers for another's — and concurrent mounts
//! of one SPC share one read.
//!
//! Drivers up to v1.5 send rotation calls without `secretProviderClass`. The SPC of such a call
//! is the one its pod volume (pod uid + target path) named on its first mount, which always
//! names it; after a provider restart, the driver's own `SecretProviderClassPodStatus` of that
//! pod and target path says it (listed per namespace, through the same cache).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use tokio::time::Instant;

use super::{SyncError, within, write};
use crate::akeyless::Deadline;
use crate::params::MountConfig;

const GROUP: &str = "secrets-store.csi.x-k8s.io";
/// Entries a cache keeps at most; past this, expired ones go, then all.
const MAX_ENTRIES: usize = 10_000;
/// Pod volumes whose SPC is remembered at most.
const MAX_VOLUMES: usize = 50_000;
/// SecretProviderClassPodStatus objects per page, and pages per namespace.
const PAGE: u32 = 500;
const MAX_PAGES: usize = 50;
/// The longest one API-server read may take, whichever mount waits for it.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The SecretProviderClass as the API server has it.
#[derive(Debug)]
pub(super) struct SpcObject {
    pub uid: String,
    pub parameters: BTreeMap<String, String>,
}

/// What a SecretProviderClassPodStatus says about one pod volume.
#[derive(Debug, Clone)]
struct PodStatus {
    pod_name: String,
    /// The uids of the Pods that own it (the driver sets one).
    owner_uids: Vec<String>,
    target_path: String,
    spc: String,
}

/// The SPC reads of the node: cached objects, pod-volume memory and status listings.
pub(super) struct SpcSource {
    spcs: Cache<(String, String), Arc<SpcObject>>,
    statuses: Cache<String, Arc<Vec<PodStatus>>>,
    /// `pod uid \n target path` → (namespace, SPC name), from mounts that named their SPC.
    volumes: Mutex<HashMap<String, (String, String)>>,
}

impl SpcSource {
    pub fn new(ttl: Duration) -> Self {
        Self {
            spcs: Cache::new(ttl),
            statuses: Cache::new(ttl),
            volumes: Mutex::default(),
        }
    }

    /// The SPC this mount belongs to: as the call names it (remembered for its pod volume), or
    /// as its pod volume named it before. `None`: not known (the sync is skipped).
    pub async fn name_of(
        &self,
        client: &kube::Client,
        config: &MountConfig,
        deadline: Deadline,
    ) -> Result<Option<String>, SyncError> {
        let pod = &config.pod;
        let volume = (!pod.uid.is_empty()).then(|| format!("{}\n{}", pod.uid, config.target_path));
        if let Some(name) = &config.spc_name {
            if let Some(volume) = volume {
                let mut volumes = lock(&self.volumes);
                if volumes.len() >= MAX_VOLUMES && !volumes.contains_key(&volume) {
                    volumes.clear();
                }
                volumes.insert(volume, (pod.namespace.clone(), name.clone()));
            }
            return Ok(Some(name.clone()));
        }
        let Some(volume) = volume else {
            return Ok(None);
        };
        let remembered = lock(&self.volumes).get(&volume).cloned();
        if let Some((namespace, name)) = remembered
            && namespace == pod.namespace
        {
            return Ok(Some(name));
        }
        if pod.name.is_empty() || config.target_path.is_empty() {
            return Ok(None);
        }
        let namespace = pod.namespace.clone();
        let (statuses, _) = {
            let client = client.clone();
            let namespace = namespace.clone();
            self.statuses
                .get(
                    namespace.clone(),
                    move || list_statuses(client, namespace).boxed(),
                    deadline,
                )
                .await?
        };
        let found: Vec<&PodStatus> = statuses
            .iter()
            .filter(|s| belongs(s, &pod.name, &pod.uid, &config.target_path))
            .collect();
        match found.as_slice() {
            [status] => {
                let name = status.spc.clone();
                let mut volumes = lock(&self.volumes);
                if volumes.len() >= MAX_VOLUMES {
                    volumes.clear();
                }
                volumes.insert(volume, (namespace, name.clone()));
                Ok(Some(name))
            }
            [] => Ok(None),
            _ => {
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    "several SecretProviderClassPodStatus objects name this pod volume; secret sync skipped"
                );
                Ok(None)
            }
        }
    }

    /// The SPC object `namespace/name`, read at most once per TTL (`fresh`: read again now),
    /// and whether it came from the cache.
    pub async fn get(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        fresh: bool,
        deadline: Deadline,
    ) -> Result<(Arc<SpcObject>, bool), SyncError> {
        let key = (namespace.to_owned(), name.to_owned());
        if fresh {
            self.spcs.forget(&key);
        }
        let client = client.clone();
        let (ns, spc) = key.clone();
        self.spcs
            .get(key, move || get_spc(client, ns, spc).boxed(), deadline)
            .await
    }
}

/// Whether a status is this pod volume's: the same pod (name, and uid by its owner or its
/// target path) and the same target path. Never another pod's.
fn belongs(status: &PodStatus, pod_name: &str, pod_uid: &str, target_path: &str) -> bool {
    let uid_matches = if status.owner_uids.is_empty() {
        target_path
            .split(['/', '\\'])
            .any(|segment| segment == pod_uid)
    } else {
        status.owner_uids.iter().any(|uid| uid == pod_uid)
    };
    !pod_uid.is_empty()
        && status.pod_name == pod_name
        && status.target_path == target_path
        && uid_matches
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk(GROUP, "v1", kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

async fn get_spc(
    client: kube::Client,
    namespace: String,
    name: String,
) -> Result<Arc<SpcObject>, SyncError> {
    let resource = resource("SecretProviderClass", "secretproviderclasses");
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let object = match api.get_opt(&name).await {
        Ok(Some(object)) => object,
        Ok(None) => return Err(SyncError::SpcMissing(format!("{namespace}/{name}"))),
        Err(e) => {
            return Err(write::api_error(
                e,
                "get",
                "secretproviderclasses.secrets-store.csi.x-k8s.io",
                &namespace,
                write::SPC_RBAC,
            ));
        }
    };
    let parameters = object
        .data
        .pointer("/spec/parameters")
        .and_then(|p| p.as_object())
        .map(|p| {
            p.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Arc::new(SpcObject {
        uid: object.metadata.uid.unwrap_or_default(),
        parameters,
    }))
}

/// Every SecretProviderClassPodStatus of a namespace, as the facts the lookup needs.
async fn list_statuses(
    client: kube::Client,
    namespace: String,
) -> Result<Arc<Vec<PodStatus>>, SyncError> {
    let resource = resource(
        "SecretProviderClassPodStatus",
        "secretproviderclasspodstatuses",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let mut statuses = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    for _ in 0..MAX_PAGES {
        let page = api.list(&params).await.map_err(|e| {
            write::api_error(
                e,
                "list",
                "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
                &namespace,
                write::SPC_RBAC,
            )
        })?;
        for object in page.items {
            let text = |field: &str| {
                object
                    .data
                    .pointer(&format!("/status/{field}"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let owner_uids = object
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == "Pod")
                .map(|o| o.uid.clone())
                .collect();
            statuses.push(PodStatus {
                pod_name: text("podName"),
                owner_uids,
                target_path: text("targetPath"),
                spc: text("secretProviderClassName"),
            });
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => params = params.continue_token(&next),
            None => return Ok(Arc::new(statuses)),
        }
    }
    Err(SyncError::Unavailable(format!(
        "Kubernetes API: namespace {namespace} has more than {} SecretProviderClassPodStatus objects to search",
        PAGE as usize * MAX_PAGES
    )))
}

type Flight<V> = Shared<BoxFuture<'static, Result<V, SyncError>>>;

struct CacheState<K, V> {
    ready: HashMap<K, (Instant, Result<V, SyncError>)>,
    inflight: HashMap<K, Flight<V>>,
}

/// A read-through cache with a TTL in which concurrent misses of one key share one read (run
/// in its own task, so a mount that gives up does not cancel it for the others). Only values
/// are kept: a missing object or permission may be fixed at any moment, and the next mount
/// should see the fix.
struct Cache<K, V> {
    ttl: Duration,
    state: Arc<Mutex<CacheState<K, V>>>,
}

impl<K, V> Cache<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Arc::new(Mutex::new(CacheState {
                ready: HashMap::new(),
                inflight: HashMap::new(),
            })),
        }
    }

    /// The value of `key` and whether it was kept from an earlier read.
    async fn get(
        &self,
        key: K,
        load: impl FnOnce() -> BoxFuture<'static, Result<V, SyncError>>,
        deadline: Deadline,
    ) -> Result<(V, bool), SyncError> {
        let flight = {
            let mut state = lock(&self.state);
            if let Some((at, outcome)) = state.ready.get(&key)
                && at.elapsed() < self.ttl
            {
                return outcome.clone().map(|v| (v, true));
            }
            match state.inflight.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = self.start(key.clone(), load());
                    state.inflight.insert(key, flight.clone());
                    flight
                }
            }
        };
        within(deadline, flight).await?.map(|v| (v, false))
    }

    /// Drops what is kept for `key`; the next `get` reads it.
    fn forget(&self, key: &K) {
        lock(&self.state).ready.remove(key);
    }

    fn start(&self, key: K, load: BoxFuture<'static, Result<V, SyncError>>) -> Flight<V> {
        let state = self.state.clone();
        let ttl = self.ttl;
        let task = tokio::spawn(async move {
            let outcome = tokio::time::timeout(READ_TIMEOUT, load)
                .await
                .unwrap_or_else(|_| {
                    Err(SyncError::Unavailable(
                        "Kubernetes API: no answer within 30 s".to_owned(),
                    ))
                });
            let mut state = lock(&state);
            state.inflight.remove(&key);
            if outcome.is_ok() && !ttl.is_zero() {
                if state.ready.len() >= MAX_ENTRIES {
                    state.ready.retain(|_, (at, _)| at.elapsed() < ttl);
                }
                if state.ready.len() >= MAX_ENTRIES {
                    state.ready.clear();
                }
                state.ready.insert(key, (Instant::now(), outcome.clone()));
            }
            outcome
        });
        async move {
            task.await.unwrap_or_else(|_| {
                Err(SyncError::Unavailable(
                    "Kubernetes API: the read failed unexpectedly".to_owned(),
                ))
            })
        }
        .boxed()
        .shared()
    }
}

/// A poisoned lock only means another request panicked; the maps stay consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn status(pod: &str, owners: &[&str], path: &str) -> PodStatus {
        PodStatus {
            pod_name: pod.into(),
            owner_uids: owners.iter().map(|s| s.to_string()).collect(),
            target_path: path.into(),
            spc: "spc".into(),
        }
    }

    #[test]
    fn a_status_answers_only_for_its_own_pod_volume() {
        let path = "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/v/mount";
        let s = status("web-1", &["uid-1"], path);
        assert!(belongs(&s, "web-1", "uid-1", path));
        assert!(!belongs(&s, "web-1", "uid-2", path), "another uid");
        assert!(!belongs(&s, "web-2", "uid-1", path), "another pod name");
        assert!(
            !belongs(&s, "web-1", "uid-1", "/other/mount"),
            "another volume"
        );
        assert!(!belongs(&s, "web-1", "", path), "no uid");
        // Without an owner, the uid must be a segment of the target path.
        let s = status("web-1", &[], path);
        assert!(belongs(&s, "web-1", "uid-1", path));
        assert!(!belongs(&s, "web-1", "uid", path));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_read_and_hits_read_nothing() {
        let cache: Arc<Cache<String, u32>> = Arc::new(Cache::new(Duration::from_secs(30)));
        let reads = Arc::new(AtomicUsize::new(0));
        let deadline = Deadline::after(Duration::from_secs(10));
        let load = |reads: Arc<AtomicUsize>| {
            move || {
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(reads.fetch_add(1, Ordering::SeqCst) as u32)
                }
                .boxed()
            }
        };
        let gets = (0..50).map(|_| cache.get("a".into(), load(reads.clone()), deadline));
        for got in futures::future::join_all(gets).await {
            assert_eq!(got.unwrap(), (0, false));
        }
        let again = cache.get("a".into(), load(reads.clone()), deadline).await;
        assert_eq!(again.unwrap(), (0, true));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Another key is another read; a forgotten one is read again.
        let b = cache.get("b".into(), load(reads.clone()), deadline).await;
        assert_eq!(b.unwrap(), (1, false));
        cache.forget(&"a".to_owned());
        let a = cache.get("a".into(), load(reads.clone()), deadline).await;
        assert_eq!(a.unwrap(), (2, false));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_kept_and_values_expire() {
        let cache: Cache<String, u32> = Cache::new(Duration::from_secs(30));
        let deadline = || Deadline::after(Duration::from_secs(10));
        let fail = || async { Err(SyncError::Forbidden("no get".into())) }.boxed();
        assert!(cache.get("a".into(), fail, deadline()).await.is_err());
        let ok = |n| move || async move { Ok(n) }.boxed();
        assert_eq!(cache.get("a".into(), ok(1), deadline()).await.unwrap().0, 1);
        let missing = || async { Err(SyncError::SpcMissing("ns/a".into())) }.boxed();
        assert_eq!(
            cache.get("a".into(), missing, deadline()).await.unwrap().0,
            1
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(cache.get("a".into(), ok(2), deadline()).await.unwrap().0, 2);
    }
}

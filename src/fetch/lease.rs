//! Leases: dynamic secrets and issued certificates, reused per pod volume.
//!
//! The driver re-mounts every volume about once a minute. Minting new database credentials or a
//! new certificate on each poll floods the target system (Vault's provider mints 50 AWS keys per
//! poll for 50 replicas), so what was issued for a pod volume is kept and given again until two
//! thirds of its life has passed. A different pod, a different volume or a different identity
//! never shares it. Concurrent mounts of the same volume share one issue, and when a renewal
//! fails the still-valid lease keeps serving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use super::{FetchError, Item, Unit};
use crate::akeyless::{ApiError, Deadline};
use crate::auth::Identity;
use crate::telemetry::metrics::{CacheKind, Metrics};

/// Leases kept at most; past this many, ended ones are dropped on every new issue.
const MAX_LEASES: usize = 20_000;
const PRUNE_LEASES: usize = 256;
/// The longest a lease is kept, whatever its issuer says.
const MAX_LIFE: Duration = Duration::from_secs(366 * 24 * 3600);
/// A lease this close to its end is not served even when its renewal failed.
const END_MARGIN: Duration = Duration::from_secs(30);

/// Whose lease it is: one identity, on one pod volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseScope {
    identity: String,
    volume: String,
}

impl LeaseScope {
    /// The pod volume: the pod's UID and the volume's target path. Without a UID (a caller that
    /// is not the driver) nothing is reused.
    pub fn volume(pod_uid: &str, target_path: &str) -> Option<Self> {
        (!pod_uid.is_empty()).then(|| Self {
            identity: String::new(),
            volume: format!("{pod_uid}\n{target_path}"),
        })
    }

    /// This volume's leases of one identity.
    pub fn for_identity(&self, identity: &Identity) -> Self {
        Self {
            identity: format!(
                "{}\n{}\n{}",
                identity.base, identity.access_type, identity.access_id
            ),
            volume: self.volume.clone(),
        }
    }
}

/// What an issue gave: the item, how long it lives, and when to renew it (both from now).
pub struct Issued {
    pub item: Arc<Item>,
    pub lifetime: Duration,
    pub renew_after: Duration,
}

impl Issued {
    /// Renewed after two thirds of `lifetime`.
    pub fn new(item: Item, lifetime: Duration) -> Self {
        let lifetime = lifetime.min(MAX_LIFE);
        Self {
            item: Arc::new(item),
            lifetime,
            renew_after: lifetime / 3 * 2,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct LeaseKey {
    scope: LeaseScope,
    unit: Unit,
}

struct Lease {
    item: Arc<Item>,
    renew_at: Instant,
    ends_at: Instant,
}

type IssueFuture = Shared<BoxFuture<'static, Result<Arc<Item>, FetchError>>>;

#[derive(Default)]
struct State {
    ready: HashMap<LeaseKey, Lease>,
    inflight: HashMap<LeaseKey, IssueFuture>,
}

/// The node's leases.
pub struct Leases {
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
}

impl Leases {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Arc::default(),
            metrics,
        }
    }

    /// The lease of `unit` for `scope`: kept, joined, or issued by `issue` (in its own task, so
    /// that a mount giving up does not waste an issue others wait for).
    pub async fn get(
        &self,
        scope: Option<LeaseScope>,
        unit: &Unit,
        issue: impl FnOnce() -> BoxFuture<'static, Result<Issued, FetchError>>,
        deadline: Deadline,
    ) -> Result<Arc<Item>, FetchError> {
        let timeout = || FetchError::Api {
            source: ApiError::DeadlineExceeded {
                command: format!("issuing {}", unit.kind.name()),
            },
            items: vec![unit.name.clone()],
        };
        let Some(scope) = scope else {
            let issued = tokio::time::timeout_at(deadline.instant(), tokio::spawn(issue()))
                .await
                .map_err(|_| timeout())?
                .map_err(|_| panicked(unit))??;
            return Ok(issued.item);
        };
        let key = LeaseKey {
            scope,
            unit: unit.clone(),
        };
        let flight = {
            let mut state = lock(&self.state);
            let now = Instant::now();
            if let Some(lease) = state.ready.get(&key)
                && now < lease.renew_at
            {
                self.metrics.cache_hit(CacheKind::Lease);
                return Ok(lease.item.clone());
            }
            if let Some(flight) = state.inflight.get(&key) {
                self.metrics.dedup_joins.inc();
                flight.clone()
            } else {
                let flight = self.start(key.clone(), issue);
                state.inflight.insert(key.clone(), flight.clone());
                flight
            }
        };
        let outcome = tokio::time::timeout_at(deadline.instant(), flight)
            .await
            .unwrap_or_else(|_| Err(timeout()));
        match outcome {
            Ok(item) => Ok(item),
            Err(error) => {
                // A renewal that failed: the current lease still serves while it lasts.
                let state = lock(&self.state);
                match state.ready.get(&key) {
                    Some(lease) if Instant::now() + END_MARGIN < lease.ends_at => {
                        tracing::warn!(item = %unit.name, %error, "renewing a lease failed; serving the current one until it ends");
                        Ok(lease.item.clone())
                    }
                    _ => Err(error),
                }
            }
        }
    }

    fn start(
        &self,
        key: LeaseKey,
        issue: impl FnOnce() -> BoxFuture<'static, Result<Issued, FetchError>>,
    ) -> IssueFuture {
        let state = self.state.clone();
        let unit = key.unit.clone();
        let task = tokio::spawn({
            let future = issue();
            async move {
                let result = future.await;
                let mut state = lock(&state);
                state.inflight.remove(&key);
                let issued = result?;
                // Leases of pods that are gone end by themselves: drop them as new ones come.
                let now = Instant::now();
                if state.ready.len() >= PRUNE_LEASES {
                    state.ready.retain(|_, lease| now < lease.ends_at);
                }
                if state.ready.len() >= MAX_LEASES {
                    state.ready.clear();
                }
                // An answer may claim any life (an SSH certificate may be valid "forever"):
                // kept at most a year, and never an overflowing instant.
                let life = issued.lifetime.min(MAX_LIFE);
                let at = |after: Duration| now.checked_add(after).unwrap_or(now);
                state.ready.insert(
                    key,
                    Lease {
                        item: issued.item.clone(),
                        renew_at: at(issued.renew_after.min(life)),
                        ends_at: at(life),
                    },
                );
                Ok(issued.item)
            }
        });
        async move { task.await.unwrap_or_else(|_| Err(panicked(&unit))) }
            .boxed()
            .shared()
    }

    /// Leases held, for tests and metrics.
    pub fn len(&self) -> usize {
        lock(&self.state).ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn panicked(unit: &Unit) -> FetchError {
    FetchError::Item {
        item: unit.name.clone(),
        problem: "issuing failed unexpectedly (a bug); it has been logged".to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::params::ItemKind;
    use crate::secret::SecretBytes;

    fn unit() -> Unit {
        Unit {
            name: "/dyn".into(),
            version: None,
            kind: ItemKind::Dynamic(Default::default()),
        }
    }

    fn issuer(
        count: &Arc<AtomicU64>,
        lifetime: Duration,
        fail: bool,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Issued, FetchError>> + use<> {
        let count = count.clone();
        move || {
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst);
                if fail {
                    return Err(FetchError::Item {
                        item: "/dyn".into(),
                        problem: "producer down".into(),
                    });
                }
                let item = Item {
                    value: SecretBytes::new(format!("lease-{n}").into_bytes()),
                    version: None,
                    cert: None,
                };
                Ok(Issued::new(item, lifetime))
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_reused_renewed_and_outlive_a_failed_renewal() {
        let leases = Leases::new(Metrics::new());
        let count = Arc::new(AtomicU64::new(0));
        let scope = LeaseScope::volume("pod-1", "/vol");
        let deadline = || Deadline::after(Duration::from_secs(10));
        let hour = Duration::from_secs(3600);
        let unit = unit();
        let get = |fail| leases.get(scope.clone(), &unit, issuer(&count, hour, fail), deadline());

        let first = get(false).await.unwrap();
        assert_eq!(
            get(false).await.unwrap().value.expose(),
            first.value.expose()
        );
        assert_eq!(count.load(Ordering::SeqCst), 1, "reused");

        // Past two thirds of its life: renewed; a failed renewal serves the current lease.
        tokio::time::advance(hour * 2 / 3 + Duration::from_secs(1)).await;
        assert_eq!(
            get(true).await.unwrap().value.expose(),
            first.value.expose()
        );
        let renewed = get(false).await.unwrap();
        assert_ne!(renewed.value.expose(), first.value.expose());

        // Another volume has its own; no volume (not the driver) is never reused.
        let other = leases
            .get(
                LeaseScope::volume("pod-2", "/vol"),
                &unit,
                issuer(&count, hour, false),
                deadline(),
            )
            .await
            .unwrap();
        assert_ne!(other.value.expose(), renewed.value.expose());
        assert!(LeaseScope::volume("", "/vol").is_none());

        // A lease that claims to last forever neither panics nor is kept past a year.
        let forever = Duration::from_secs(u64::MAX);
        let scope = LeaseScope::volume("pod-3", "/vol");
        leases
            .get(
                scope.clone(),
                &unit,
                issuer(&count, forever, false),
                deadline(),
            )
            .await
            .unwrap();
        let before = count.load(Ordering::SeqCst);
        tokio::time::advance(MAX_LIFE).await;
        leases
            .get(scope, &unit, issuer(&count, forever, false), deadline())
            .await
            .unwrap();
        assert_eq!(count.load(Ordering::SeqCst), before + 1);
    }
}

//! Leader election on a `coordination.k8s.io` Lease, with `kube-lease-manager`: replicas wait
//! for the Lease, the holder renews it `grace` before its claim ends, and a standby takes it
//! over once the holder has not renewed it for the Lease's duration. Only the holder
//! reconciles, so only one replica writes.
//!
//! The crate alone is not enough to stop writing in time: it retries failed renewals with a
//! backoff and never reports an API error as a loss, and a renewal that hangs holds it up, so a
//! holder cut off from the API server would be told "leader" long after a standby took over.
//! Hence a fence: the client the crate uses records every Lease the API server returns to it
//! (no extra call), and this replica leads only while that record names it holder and the claim
//! (`renewTime` + `leaseDurationSeconds`; `renewTime` is this replica's own clock) has not run
//! out, less a margin. When either ends, [`Lease::lead`] drops the work at once — in-flight
//! reconciles included — and returns [`LeaderError::Lost`]; the process exits and is restarted,
//! to stand by again with clean state.
//!
//! Each replica applies the Lease under its own field manager: the crate's server-side apply
//! relies on the API server's field conflicts to refuse a second replica taking a free Lease at
//! the same moment, which one shared manager would defeat.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::coordination::v1::Lease as LeaseObject;
use kube::client::Body;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use sha2::Digest;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where and as whom to hold the Lease.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    pub namespace: String,
    pub name: String,
    /// This replica: its pod name.
    pub identity: String,
    /// How long a holder's claim lasts without renewal (whole seconds, at least 2): a standby
    /// takes over this long after the holder's last renewal (plus at most about a second).
    pub duration: Duration,
    /// How long before the end of its claim the holder renews it (whole seconds, at least 1,
    /// less than `duration`); also the clock skew between nodes the election tolerates.
    pub grace: Duration,
}

impl LeaderOptions {
    /// The Lease's timing in whole seconds, as the Lease stores it.
    fn seconds(&self) -> Result<(u64, u64), LeaderError> {
        let (duration, grace) = (self.duration.as_secs(), self.grace.as_secs());
        if duration < 2 || grace < 1 || grace >= duration {
            return Err(LeaderError::Timing {
                duration: self.duration,
                grace: self.grace,
            });
        }
        Ok((duration, grace))
    }
}

/// How long before the end of its claim the holder stops writing if no renewal was confirmed:
/// less than `grace`, so that a renewal made on time (at `grace`) is never cut short.
fn margin(grace: Duration) -> Duration {
    (grace / 2).min(Duration::from_secs(1))
}

/// Field managers are at most 128 characters; a pod name fits, a longer identity is hashed so
/// that managers stay distinct.
fn field_manager(identity: &str) -> String {
    let manager = format!("{}-{identity}", super::COMPONENT);
    if manager.len() <= 128 {
        return manager;
    }
    let digest = sha2::Sha256::digest(identity.as_bytes());
    format!("{}-{}", super::COMPONENT, hex::encode(&digest[..16]))
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "cannot use the Lease {namespace}/{name} for leader election: {reason}; the controller needs get, create and patch on leases.coordination.k8s.io in {namespace} (or --leader-election=false with one replica)"
    )]
    Lease {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "invalid leader election timing --lease-duration {duration:?} --lease-grace {grace:?}: a Lease counts whole seconds; the duration must be at least 2s, the grace at least 1s and shorter than the duration"
    )]
    Timing { duration: Duration, grace: Duration },
    #[error(
        "lost the leader Lease {namespace}/{name}: {why}; stopped writing at once and exiting, to stand by again after the restart"
    )]
    Lost {
        namespace: String,
        name: String,
        why: Lost,
    },
}

/// Why this replica stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The API server names another holder (`None`: no holder at all).
    Taken { by: Option<String> },
    /// No renewal was confirmed before the claim ran out (less the margin).
    Unconfirmed,
    /// The lease manager's task ended.
    Stopped,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Taken { by: Some(by) } => write!(f, "{by} holds it now"),
            Lost::Taken { by: None } => f.write_str("it has no holder any more"),
            Lost::Unconfirmed => f.write_str(
                "the API server confirmed no renewal before the claim ran out (the Kubernetes API is unreachable or failing)",
            ),
            Lost::Stopped => f.write_str("the lease manager stopped"),
        }
    }
}

/// What the API server last said about the Lease: its holder and when that holder's claim ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Claim {
    holder: Option<String>,
    until: Option<SystemTime>,
}

impl Claim {
    fn of(lease: &LeaseObject) -> Self {
        let spec = lease.spec.as_ref();
        let until = spec.and_then(|s| {
            let renewed = SystemTime::from(s.renew_time.as_ref()?.0);
            let seconds = u64::try_from(s.lease_duration_seconds?).ok()?;
            renewed.checked_add(Duration::from_secs(seconds))
        });
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            until,
        }
    }

    /// Until when `identity` may write under this claim: `None` if it is not the holder.
    fn fence(&self, identity: &str, margin: Duration) -> Option<SystemTime> {
        if self.holder.as_deref() != Some(identity) {
            return None;
        }
        self.until?.checked_sub(margin)
    }
}

/// `client`, recording in `claims` every Lease `name` the API server returns through it.
fn observed(client: kube::Client, name: String, claims: watch::Sender<Claim>) -> kube::Client {
    let namespace = client.default_namespace().to_owned();
    let claims = Arc::new(claims);
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let (client, claims, name) = (client.clone(), claims.clone(), name.clone());
        async move {
            let response = client.send(request).await?;
            if !response.status().is_success() {
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let bytes = body.collect_bytes().await?;
            if let Ok(lease) = serde_json::from_slice::<LeaseObject>(&bytes)
                && lease.metadata.name.as_deref() == Some(name.as_str())
            {
                claims.send_replace(Claim::of(&lease));
            }
            Ok::<_, kube::Error>(http::Response::from_parts(parts, Body::from(bytes)))
        }
    });
    kube::Client::new(service, namespace)
}

/// The Lease: held once [`Lease::acquire`] returns it.
pub struct Lease {
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
    margin: Duration,
    /// The crate's view: true while it believes this replica holds the Lease.
    held: watch::Receiver<bool>,
    /// The API server's view, from the responses to the crate's calls.
    claims: watch::Receiver<Claim>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Lease {
    /// Waits until this replica holds the Lease; `None` if `shutdown` came first.
    pub async fn acquire(
        client: kube::Client,
        options: &LeaderOptions,
        shutdown: Shared<BoxFuture<'static, ()>>,
    ) -> Result<Option<Self>, LeaderError> {
        let (duration, grace) = options.seconds()?;
        let (sender, claims) = watch::channel(Claim::default());
        let client = observed(client, options.name.clone(), sender);
        let manager = LeaseManagerBuilder::new(client, &options.name)
            .with_namespace(&options.namespace)
            .with_identity(&options.identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager(field_manager(&options.identity))
            .build()
            .await
            .map_err(|e| LeaderError::Lease {
                namespace: options.namespace.clone(),
                name: options.name.clone(),
                reason: e.to_string(),
            })?;
        let (held, task) = manager.watch().await;
        let mut lease = Self {
            namespace: options.namespace.clone(),
            name: options.name.clone(),
            identity: options.identity.clone(),
            duration: Duration::from_secs(duration),
            margin: margin(Duration::from_secs(grace)),
            held,
            claims,
            task,
        };
        tracing::info!(
            lease = %format!("{}/{}", lease.namespace, lease.name),
            identity = %lease.identity,
            "standing by for the leader Lease"
        );
        tokio::select! {
            held = lease.until_held() => held?,
            _ = shutdown => {
                lease.release().await;
                return Ok(None);
            }
        }
        tracing::info!(identity = %lease.identity, "holding the leader Lease");
        Ok(Some(lease))
    }

    /// Until the crate says this replica holds the Lease and the API server's record agrees.
    async fn until_held(&mut self) -> Result<(), LeaderError> {
        loop {
            let held = *self.held.borrow_and_update();
            let fence = self
                .claims
                .borrow_and_update()
                .fence(&self.identity, self.margin);
            if held && fence.is_some_and(|f| f > SystemTime::now()) {
                return Ok(());
            }
            // Either channel closes only when the lease manager's task has ended.
            let stopped = tokio::select! {
                changed = self.held.changed() => changed.is_err(),
                changed = self.claims.changed() => changed.is_err(),
            };
            if stopped {
                let reason = match (&mut self.task).await {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the lease manager stopped".to_owned(),
                };
                return Err(LeaderError::Lease {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    reason,
                });
            }
        }
    }

    /// Resolves as soon as this replica may no longer write: another holder, no renewal
    /// confirmed before the claim's end (less the margin), or the lease manager gone.
    pub fn lost(&self) -> impl Future<Output = Lost> + Send + 'static {
        let (mut held, mut claims) = (self.held.clone(), self.claims.clone());
        let (identity, margin) = (self.identity.clone(), self.margin);
        async move {
            loop {
                let leading = *held.borrow_and_update();
                let claim = claims.borrow_and_update().clone();
                let fence = claim.fence(&identity, margin);
                let Some(fence) = fence.filter(|_| leading) else {
                    let by = claim.holder.filter(|h| *h != identity);
                    return Lost::Taken { by };
                };
                let left = fence.duration_since(SystemTime::now()).unwrap_or_default();
                if left.is_zero() {
                    return Lost::Unconfirmed;
                }
                tokio::select! {
                    changed = held.changed() => if changed.is_err() { return Lost::Stopped },
                    changed = claims.changed() => if changed.is_err() { return Lost::Stopped },
                    _ = tokio::time::sleep(left) => {}
                }
            }
        }
    }

    /// Runs `work` while this replica holds the Lease. When `work` ends (a shutdown), releases
    /// the Lease so that a standby takes it as soon as it next looks; when the Lease is lost,
    /// drops `work` at once, leaves the Lease alone and returns [`LeaderError::Lost`].
    pub async fn lead<T>(self, work: impl Future<Output = T>) -> Result<T, LeaderError> {
        let lost = self.lost();
        tokio::select! {
            biased;
            why = lost => {
                self.task.abort();
                tracing::error!(error = %why, "lost the leader Lease; stopping at once");
                Err(LeaderError::Lost {
                    namespace: self.namespace,
                    name: self.name,
                    why,
                })
            }
            output = work => {
                self.release().await;
                Ok(output)
            }
        }
    }

    /// Gives the Lease up (if held), waiting for that no longer than a claim lasts: past that,
    /// a standby takes over anyway.
    async fn release(self) {
        let Self {
            held,
            task,
            duration,
            ..
        } = self;
        drop(held);
        match tokio::time::timeout(duration, task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "could not release the leader Lease; a standby takes over when it runs out")
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(
                    "could not release the leader Lease in time; a standby takes over when it runs out"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The election against an in-memory Lease API (GET, POST, PATCH as a JSON merge, which is
    //! what the crate's patches amount to on a Lease) whose faults tests switch on: failing or
    //! hanging, as an unreachable API server does. Server-side apply conflicts and the hand-over
    //! between processes are Kubernetes behaviour: the end-to-end tests check them on the real
    //! control plane.

    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::FutureExt;
    use serde_json::{Value, json};

    use super::*;

    const NAMESPACE: &str = "ctl";
    const NAME: &str = "akeyless-csi-provider-controller";

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Up,
        /// Every call answers 503, as an API server that is down behind its load balancer.
        Failing,
        /// Every call hangs, as a partitioned network does.
        Hanging,
    }

    struct Fake {
        lease: Mutex<Option<Value>>,
        mode: Mutex<Mode>,
        version: Mutex<u64>,
    }

    fn status(code: u16, reason: &str) -> http::Response<Body> {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code,
        });
        http::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn ok(code: u16, value: &Value) -> http::Response<Body> {
        http::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(value).unwrap()))
            .unwrap()
    }

    /// RFC 7386: objects merge, `null` removes, anything else replaces.
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    impl Fake {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                lease: Mutex::new(None),
                mode: Mutex::new(Mode::Up),
                version: Mutex::new(1),
            })
        }

        fn set_mode(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn lease(&self) -> Option<LeaseObject> {
            let lease = self.lease.lock().unwrap().clone()?;
            Some(serde_json::from_value(lease).unwrap())
        }

        /// Another replica takes the Lease (as if ours had run out).
        fn take(&self, holder: &str) {
            let now = k8s_openapi::jiff::Timestamp::now();
            let mut lease = self.lease.lock().unwrap();
            let spec = json!({"spec": {
                "holderIdentity": holder,
                "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
                "leaseDurationSeconds": 60,
            }});
            merge(lease.as_mut().unwrap(), &spec);
        }

        fn client(self: &Arc<Self>) -> kube::Client {
            let fake = self.clone();
            let service = tower::service_fn(move |request: http::Request<Body>| {
                let fake = fake.clone();
                async move { Ok::<_, Infallible>(fake.serve(request).await) }
            });
            kube::Client::new(service, NAMESPACE)
        }

        async fn serve(&self, request: http::Request<Body>) -> http::Response<Body> {
            let mode = *self.mode.lock().unwrap();
            match mode {
                Mode::Up => {}
                Mode::Failing => return status(503, "ServiceUnavailable"),
                Mode::Hanging => futures::future::pending().await,
            }
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap();
            let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
            let path = parts.uri.path();
            let mut lease = self.lease.lock().unwrap();
            let mut version = self.version.lock().unwrap();
            if path == collection && parts.method == http::Method::POST {
                if lease.is_some() {
                    return status(409, "AlreadyExists");
                }
                let mut created: Value = serde_json::from_slice(&body).unwrap();
                created["metadata"]["namespace"] = json!(NAMESPACE);
                created["metadata"]["resourceVersion"] = json!(version.to_string());
                *lease = Some(created.clone());
                return ok(201, &created);
            }
            if path != format!("{collection}/{NAME}") {
                return status(404, "NotFound");
            }
            let Some(current) = lease.as_mut() else {
                return status(404, "NotFound");
            };
            match parts.method {
                http::Method::GET => ok(200, current),
                http::Method::PATCH => {
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    merge(current, &patch);
                    *version += 1;
                    current["metadata"]["resourceVersion"] = json!(version.to_string());
                    ok(200, current)
                }
                _ => status(405, "MethodNotAllowed"),
            }
        }
    }

    fn options(identity: &str, duration: u64, grace: u64) -> LeaderOptions {
        LeaderOptions {
            namespace: NAMESPACE.to_owned(),
            name: NAME.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(duration),
            grace: Duration::from_secs(grace),
        }
    }

    fn never() -> Shared<BoxFuture<'static, ()>> {
        futures::future::pending().boxed().shared()
    }

    /// Guards a test against hanging; not a timing assertion.
    async fn eventually<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(120), future)
            .await
            .unwrap_or_else(|_| panic!("{what} never happened"))
    }

    async fn held(fake: &Arc<Fake>, identity: &str, duration: u64, grace: u64) -> Lease {
        let options = options(identity, duration, grace);
        eventually(
            "acquiring the Lease",
            Lease::acquire(fake.client(), &options, never()),
        )
        .await
        .expect("acquire")
        .expect("held")
    }

    /// Sets a flag when dropped: proves the work was dropped, not left running.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn timing_is_whole_seconds_with_the_grace_inside_the_duration() {
        assert_eq!(options("a", 10, 3).seconds().unwrap(), (10, 3));
        assert_eq!(options("a", 2, 1).seconds().unwrap(), (2, 1));
        for (duration, grace) in [(10, 10), (10, 12), (1, 0), (10, 0), (0, 0)] {
            let error = options("a", duration, grace).seconds().unwrap_err();
            assert!(
                matches!(error, LeaderError::Timing { .. }),
                "{duration}/{grace}"
            );
        }
        // Sub-second parts do not count: 1.5s is 1s, too short for a duration.
        let mut o = options("a", 10, 3);
        o.duration = Duration::from_millis(1500);
        let message = o.seconds().unwrap_err().to_string();
        assert!(
            message.contains("--lease-duration 1.5s") && message.contains("whole seconds"),
            "{message}"
        );
    }

    #[test]
    fn the_margin_is_inside_the_grace() {
        assert_eq!(margin(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(500));
        for grace in 1..30 {
            let grace = Duration::from_secs(grace);
            assert!(margin(grace) < grace && !margin(grace).is_zero());
        }
    }

    #[test]
    fn every_replica_applies_under_its_own_field_manager() {
        let a = field_manager("ctl-7d9f8b6c5d-abcde");
        let b = field_manager("ctl-7d9f8b6c5d-fghij");
        assert_ne!(a, b);
        assert_eq!(a, "akeyless-csi-provider-controller-ctl-7d9f8b6c5d-abcde");
        // Identities too long for a field manager (128 characters) stay distinct.
        let long = |tail: &str| format!("{}{tail}", "x".repeat(200));
        let (c, d) = (field_manager(&long("1")), field_manager(&long("2")));
        assert!(c.len() <= 128 && d.len() <= 128);
        assert_ne!(c, d);
    }

    #[test]
    fn a_claim_fences_only_its_holder_until_its_end_less_the_margin() {
        let renewed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let lease: LeaseObject = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NAME},
            "spec": {
                "holderIdentity": "a",
                "renewTime": "2023-11-14T22:13:20.000000Z",
                "leaseDurationSeconds": 10,
            },
        }))
        .unwrap();
        let claim = Claim::of(&lease);
        assert_eq!(claim.holder.as_deref(), Some("a"));
        assert_eq!(claim.until, Some(renewed + Duration::from_secs(10)));
        let margin = Duration::from_secs(1);
        assert_eq!(
            claim.fence("a", margin),
            Some(renewed + Duration::from_secs(9))
        );
        assert_eq!(claim.fence("b", margin), None);
        // A released Lease (no holder) or one without a renewal fences nobody.
        for spec in [
            json!({}),
            json!({"holderIdentity": "a"}),
            json!({"holderIdentity": "a", "renewTime": "2023-11-14T22:13:20.000000Z"}),
            json!({"holderIdentity": "a", "leaseDurationSeconds": -1,
                   "renewTime": "2023-11-14T22:13:20.000000Z"}),
        ] {
            let lease: LeaseObject = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NAME}, "spec": spec,
            }))
            .unwrap();
            assert_eq!(Claim::of(&lease).fence("a", margin), None, "{spec}");
        }
    }

    #[tokio::test]
    async fn the_holder_leads_and_releases_the_lease_when_its_work_ends() {
        let fake = Fake::new();
        let lease = held(&fake, "a", 10, 3).await;
        let spec = fake.lease().unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(10));
        assert_eq!(lease.lead(async { 42 }).await.unwrap(), 42);
        let spec = fake.lease().unwrap().spec.unwrap_or_default();
        assert_eq!(spec.holder_identity, None, "released");
    }

    #[tokio::test]
    async fn a_standby_waits_while_another_replica_holds_the_lease() {
        let fake = Fake::new();
        let leader = held(&fake, "a", 10, 3).await;
        let shutdown = futures::future::ready(()).boxed().shared();
        let standby = Lease::acquire(fake.client(), &options("b", 10, 3), shutdown).await;
        assert!(matches!(standby, Ok(None)), "shut down while standing by");
        let spec = fake.lease().unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"), "left alone");
        drop(leader);
    }

    #[tokio::test]
    async fn a_standby_takes_over_when_the_holder_dies() {
        let fake = Fake::new();
        let leader = held(&fake, "a", 3, 2).await;
        let standby = tokio::spawn({
            let fake = fake.clone();
            async move { held(&fake, "b", 3, 2).await }
        });
        // Dies: no more renewals, no release.
        leader.task.abort();
        drop(leader);
        let standby = eventually("the take-over", standby).await.unwrap();
        let spec = fake.lease().unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(2), "a, then b");
        assert_eq!(standby.lead(async {}).await.ok(), Some(()));
    }

    /// The crate keeps reporting "leader" through an outage; the fence stops the work anyway
    /// (its deadline, before the claim's end, is checked above).
    async fn an_outage_stops_the_holder(mode: Mode) {
        let fake = Fake::new();
        let lease = held(&fake, "a", 3, 2).await;
        let crate_view = lease.held.clone();
        let dropped = Arc::new(AtomicBool::new(false));
        let work = {
            let guard = Dropped(dropped.clone());
            async move {
                let _guard = guard;
                futures::future::pending::<()>().await
            }
        };
        fake.set_mode(mode);
        let outcome = eventually("stopping on an outage", lease.lead(work)).await;
        match outcome {
            Err(LeaderError::Lost {
                why: Lost::Unconfirmed,
                ..
            }) => {}
            Err(other) => panic!("{other}"),
            Ok(()) => panic!("the work cannot end"),
        }
        assert!(dropped.load(Ordering::SeqCst), "the work was dropped");
        assert!(*crate_view.borrow(), "the crate alone still says leader");
    }

    #[tokio::test]
    async fn an_api_server_that_fails_stops_the_holder() {
        an_outage_stops_the_holder(Mode::Failing).await;
    }

    #[tokio::test]
    async fn an_api_server_that_hangs_stops_the_holder() {
        an_outage_stops_the_holder(Mode::Hanging).await;
    }

    #[tokio::test]
    async fn a_holder_whose_lease_was_taken_stops_at_its_next_renewal() {
        let fake = Fake::new();
        let lease = held(&fake, "a", 3, 2).await;
        fake.take("b");
        let outcome = eventually("noticing the new holder", lease.lost()).await;
        assert_eq!(
            outcome,
            Lost::Taken {
                by: Some("b".into())
            }
        );
        let spec = fake.lease().unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"), "left alone");
    }
}

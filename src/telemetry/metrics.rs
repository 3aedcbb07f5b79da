//! Prometheus metrics of the provider, served on `/metrics`.
//!
//! Labels are bounded enums and status classes only — never an object name, a pod name or an
//! error string — so the series count stays small on a node running hundreds of pods.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a mount ended: `ok`, or the gRPC code of its error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabels {
    pub outcome: Outcome,
    pub code: Code,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
}

/// gRPC codes as label values (a closed set).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum Code {
    Ok,
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Unimplemented,
    Internal,
    Other,
}

impl From<tonic::Code> for Code {
    fn from(code: tonic::Code) -> Self {
        use tonic::Code as C;
        match code {
            C::Ok => Self::Ok,
            C::InvalidArgument => Self::InvalidArgument,
            C::Unauthenticated => Self::Unauthenticated,
            C::PermissionDenied => Self::PermissionDenied,
            C::NotFound => Self::NotFound,
            C::FailedPrecondition => Self::FailedPrecondition,
            C::ResourceExhausted => Self::ResourceExhausted,
            C::Unavailable => Self::Unavailable,
            C::DeadlineExceeded => Self::DeadlineExceeded,
            C::Unimplemented => Self::Unimplemented,
            C::Internal => Self::Internal,
            _ => Self::Other,
        }
    }
}

/// Label values as written in the exposition (the derive would use the Rust names).
macro_rules! label_values {
    ($($ty:ty { $($variant:ident => $text:literal),* $(,)? })*) => {$(
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}

label_values! {
    Outcome { Success => "success", Error => "error" }
    Code {
        Ok => "OK", InvalidArgument => "InvalidArgument", Unauthenticated => "Unauthenticated",
        PermissionDenied => "PermissionDenied", NotFound => "NotFound",
        FailedPrecondition => "FailedPrecondition", ResourceExhausted => "ResourceExhausted",
        Unavailable => "Unavailable", DeadlineExceeded => "DeadlineExceeded",
        Unimplemented => "Unimplemented", Internal => "Internal", Other => "Other",
    }
    BackendStatus {
        Success => "2xx", Unauthorized => "401", NotFound => "404", TooManyRequests => "429",
        ClientError => "4xx", ServerError => "5xx", Timeout => "timeout", Transport => "transport",
    }
    CacheKind { Token => "token", Result => "result", ItemType => "item_type", Lease => "lease" }
    RejectReason { PeerUid => "peer_uid", QueueFull => "queue_full", QueueTimeout => "queue_timeout" }
    ReconcileKind { ExternalSecret => "external_secret", Store => "store" }
    ReconcileOutcome { Synced => "synced", Skipped => "skipped", Invalid => "invalid", Error => "error" }
    WriteOutcome { Created => "created", Updated => "updated", Unchanged => "unchanged", Deleted => "deleted", Failed => "failed" }
}

/// The controller: one reconcile of an object of a kind, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: ReconcileKind,
    pub outcome: ReconcileOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileKind {
    ExternalSecret,
    Store,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Fetched and written (or found unchanged).
    Synced,
    /// Not due, or not ours.
    Skipped,
    /// The object is wrong; it waits for a change.
    Invalid,
    /// Failed; retried with backoff.
    Error,
}

/// The controller: what happened to a target Secret.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub outcome: WriteOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
    Failed,
}

/// One Akeyless call's endpoint and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The API command (a fixed set in this crate, e.g. `auth`, `get-secret-value`).
    pub endpoint: String,
    pub status: BackendStatus,
}

/// HTTP status classes that matter for operations, plus failures without a status.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BackendStatus {
    Success,
    Unauthorized,
    NotFound,
    TooManyRequests,
    ClientError,
    ServerError,
    Timeout,
    Transport,
}

impl BackendStatus {
    pub fn from_http(status: u16) -> Self {
        match status {
            200..=299 => Self::Success,
            401 => Self::Unauthorized,
            404 => Self::NotFound,
            429 => Self::TooManyRequests,
            500..=599 => Self::ServerError,
            _ => Self::ClientError,
        }
    }
}

/// Which cache answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: CacheKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CacheKind {
    /// An Akeyless token reused instead of a login.
    Token,
    /// A value read served from the optional short result cache.
    Result,
    /// An item's type known without a `/describe-item`.
    ItemType,
    /// A dynamic secret's lease or an issued certificate reused for the same pod volume.
    Lease,
}

/// Why a connection or call was turned away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: RejectReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// A unix-socket peer whose uid is not allowed.
    PeerUid,
    /// The node-wide queue of backend calls was full.
    QueueFull,
    /// A backend call could not start before its mount's deadline.
    QueueTimeout,
}

/// All metrics, shared by every request.
#[derive(Debug)]
pub struct Metrics {
    pub mounts: Family<MountLabels, Counter>,
    pub mount_duration: Family<MountLabels, Histogram>,
    pub backend_calls: Family<BackendLabels, Counter>,
    pub backend_duration: Family<BackendLabels, Histogram>,
    pub logins: Counter,
    pub cache_hits: Family<CacheLabels, Counter>,
    pub inflight_mounts: Gauge,
    pub inflight_backend_calls: Gauge,
    pub queued_backend_calls: Gauge,
    pub dedup_joins: Counter,
    pub rejected: Family<RejectLabels, Counter>,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub secret_writes: Family<WriteLabels, Counter>,
    pub status_writes: Counter,
    pub leader: Gauge,
    /// The earliest end (Unix seconds) of the Universal Identity tokens in use; 0: none known.
    pub uid_token_expiry: Gauge,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("akeyless_csi");
        let mounts = Family::<MountLabels, Counter>::default();
        let mount_duration = Family::<MountLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let backend_calls = Family::<BackendLabels, Counter>::default();
        let backend_duration = Family::<BackendLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let logins = Counter::default();
        let cache_hits = Family::<CacheLabels, Counter>::default();
        let inflight_mounts = Gauge::default();
        let inflight_backend_calls = Gauge::default();
        let queued_backend_calls = Gauge::default();
        let dedup_joins = Counter::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let secret_writes = Family::<WriteLabels, Counter>::default();
        let status_writes = Counter::default();
        let leader = Gauge::default();
        let uid_token_expiry = Gauge::default();

        registry.register(
            "mounts",
            "Mount requests by outcome and gRPC code",
            mounts.clone(),
        );
        registry.register(
            "mount_duration_seconds",
            "Mount latency by outcome and gRPC code",
            mount_duration.clone(),
        );
        registry.register(
            "backend_calls",
            "Akeyless API calls (each HTTP attempt) by endpoint and status class",
            backend_calls.clone(),
        );
        registry.register(
            "backend_call_duration_seconds",
            "Akeyless API call latency by endpoint and status class",
            backend_duration.clone(),
        );
        registry.register(
            "logins",
            "Logins to Akeyless (/auth calls started)",
            logins.clone(),
        );
        registry.register(
            "cache_hits",
            "Requests answered from a cache instead of Akeyless",
            cache_hits.clone(),
        );
        registry.register(
            "inflight_mounts",
            "Mounts being served",
            inflight_mounts.clone(),
        );
        registry.register(
            "inflight_backend_calls",
            "Akeyless calls under way (bounded node-wide)",
            inflight_backend_calls.clone(),
        );
        registry.register(
            "queued_backend_calls",
            "Akeyless calls waiting for the node-wide bound",
            queued_backend_calls.clone(),
        );
        registry.register(
            "dedup_joins",
            "Reads that joined an identical read already under way",
            dedup_joins.clone(),
        );
        registry.register(
            "rejected",
            "Connections or calls turned away, by reason",
            rejected.clone(),
        );
        registry.register(
            "controller_reconciles",
            "Controller reconciles by kind and outcome",
            reconciles.clone(),
        );
        registry.register(
            "controller_secret_writes",
            "What controller reconciles did to target Secrets",
            secret_writes.clone(),
        );
        registry.register(
            "controller_status_writes",
            "Status updates written by the controller",
            status_writes.clone(),
        );
        registry.register(
            "controller_leader",
            "1 while this controller replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "uid_token_expiry_timestamp_seconds",
            "Earliest expiry (Unix time) of the Universal Identity tokens used in the last hour; 0 when none is known",
            uid_token_expiry.clone(),
        );
        Arc::new(Self {
            mounts,
            mount_duration,
            backend_calls,
            backend_duration,
            logins,
            cache_hits,
            inflight_mounts,
            inflight_backend_calls,
            queued_backend_calls,
            dedup_joins,
            rejected,
            reconciles,
            secret_writes,
            status_writes,
            leader,
            uid_token_expiry,
            registry,
        })
    }

    pub fn mount_finished(&self, code: tonic::Code, elapsed: Duration) {
        let labels = MountLabels {
            outcome: if code == tonic::Code::Ok {
                Outcome::Success
            } else {
                Outcome::Error
            },
            code: code.into(),
        };
        self.mounts.get_or_create(&labels).inc();
        self.mount_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn backend_call(&self, endpoint: &str, status: BackendStatus, elapsed: Duration) {
        let labels = BackendLabels {
            endpoint: endpoint.to_owned(),
            status,
        };
        self.backend_calls.get_or_create(&labels).inc();
        self.backend_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn cache_hit(&self, cache: CacheKind) {
        self.cache_hits.get_or_create(&CacheLabels { cache }).inc();
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    pub fn reconciled(&self, kind: ReconcileKind, outcome: ReconcileOutcome) {
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, outcome })
            .inc();
    }

    pub fn secret_written(&self, outcome: WriteOutcome) {
        self.secret_writes
            .get_or_create(&WriteLabels { outcome })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Decrements a gauge when dropped, so early returns and panics keep it right.
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_bounded_labels() {
        let m = Metrics::new();
        m.mount_finished(tonic::Code::NotFound, Duration::from_millis(3));
        m.backend_call(
            "get-secret-value",
            BackendStatus::from_http(503),
            Duration::from_millis(2),
        );
        m.cache_hit(CacheKind::Token);
        {
            let _g = GaugeGuard::new(&m.inflight_mounts);
            assert_eq!(m.inflight_mounts.get(), 1);
        }
        assert_eq!(m.inflight_mounts.get(), 0);
        let text = m.encode();
        assert!(
            text.contains(r#"akeyless_csi_mounts_total{outcome="error",code="NotFound"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"endpoint="get-secret-value",status="5xx""#),
            "{text}"
        );
        assert!(
            text.contains(r#"akeyless_csi_cache_hits_total{cache="token"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}

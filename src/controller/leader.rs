//! Leader election on a `coordination.k8s.io` Lease, with `kube-lease-manager`: replicas wait
//! for the Lease, the holder renews it, and a standby takes it over once the holder stops
//! renewing for the Lease's duration. Only the holder reconciles, so only one replica writes.
//!
//! A holder that loses the Lease (its renewals failed past the duration, e.g. an API outage or a
//! long pause) stops reconciling at once; the process then exits and is restarted, to stand by
//! again with clean state.

use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Where and as whom to hold the Lease.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    pub namespace: String,
    pub name: String,
    /// This replica: its pod name.
    pub identity: String,
    /// How long a holder's claim lasts without renewal: a standby takes over this long after
    /// the holder's last renewal (plus at most one poll).
    pub duration: Duration,
    /// How long before the end of its claim the holder renews it.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "cannot use the Lease {namespace}/{name} for leader election: {reason}; the controller needs get, create, update, patch on leases.coordination.k8s.io in its namespace (or --leader-election=false with one replica)"
    )]
    Lease {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// The Lease, held.
pub struct Lease {
    receiver: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Lease {
    /// Waits until this replica holds the Lease; `None` if `shutdown` came first.
    pub async fn acquire(
        client: kube::Client,
        options: &LeaderOptions,
        shutdown: Shared<BoxFuture<'static, ()>>,
    ) -> Result<Option<Self>, LeaderError> {
        let error = |e: LeaseManagerError| LeaderError::Lease {
            namespace: options.namespace.clone(),
            name: options.name.clone(),
            reason: e.to_string(),
        };
        let manager = LeaseManagerBuilder::new(client, &options.name)
            .with_namespace(&options.namespace)
            .with_identity(&options.identity)
            .with_duration(options.duration.as_secs().max(2))
            .with_grace(options.grace.as_secs().max(1))
            .with_field_manager(super::COMPONENT)
            .build()
            .await
            .map_err(error)?;
        let (mut receiver, task) = manager.watch().await;
        tracing::info!(
            lease = %format!("{}/{}", options.namespace, options.name),
            identity = %options.identity,
            "standing by for the leader Lease"
        );
        let held = async {
            while !*receiver.borrow_and_update() {
                if receiver.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::select! {
            held = held => {
                if !held {
                    let outcome = task.await;
                    let reason = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the lease manager stopped".to_owned(),
                    };
                    return Err(LeaderError::Lease {
                        namespace: options.namespace.clone(),
                        name: options.name.clone(),
                        reason,
                    });
                }
            }
            _ = shutdown => {
                drop(receiver);
                let _ = task.await;
                return Ok(None);
            }
        }
        tracing::info!(identity = %options.identity, "holding the leader Lease");
        Ok(Some(Self { receiver, task }))
    }

    /// Resolves when the Lease is lost (or its manager stops).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.receiver.clone();
        async move {
            while *receiver.borrow_and_update() {
                if receiver.changed().await.is_err() {
                    return;
                }
            }
        }
        .boxed()
    }

    /// Releases the Lease, so a standby takes over at once instead of after its duration.
    pub async fn release(self) {
        drop(self.receiver);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the leader Lease; a standby takes over when it runs out")
            }
            Err(_) => {}
        }
    }
}

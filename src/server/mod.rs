//! The provider's gRPC server on the driver's unix socket.
//!
//! The socket is the only access control the driver's interface has (anyone who can connect
//! may ask for any pod's secrets), so it is owner-only from the moment it exists: it is bound
//! inside a private directory, restricted, then renamed into place. A stale socket left by a
//! crash is removed (the driver would otherwise hang on it until its deadline), but only if it
//! is a socket nobody answers on. On shutdown the server stops accepting, drains in-flight
//! mounts within a grace period and removes its socket.

pub mod authority;
pub mod health;

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use futures::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

use crate::proto::v1alpha1::csi_driver_provider_server::CsiDriverProviderServer;
use crate::service::Provider;
use crate::telemetry::metrics::{Metrics, RejectReason};
use authority::AuthorityFix;
use health::Health;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("another process is serving on {path}; stop it or choose another --socket")]
    InUse { path: PathBuf },
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A bound, owner-only socket and the file it lives at.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of our socket file, so shutdown never removes a successor's socket.
    identity: (u64, u64),
    /// The uid that owns the socket: this process's, always allowed to connect.
    owner_uid: u32,
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds `path` with mode 0600, replacing a stale socket.
pub fn bind(path: &Path) -> Result<BoundSocket, ServerError> {
    let err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    remove_stale(path)?;

    // Bind where nobody else can reach, restrict, then move into place atomically.
    let private = dir.join(format!(".akeyless-csi.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(err)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        Ok::<_, io::Error>(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = UnixListener::from_std(bound.map_err(err)?).map_err(err)?;
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
        owner_uid: meta.uid(),
    })
}

fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse {
            path: path.to_owned(),
        });
    }
    tracing::info!(path = %path.display(), "removing a stale socket");
    std::fs::remove_file(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight mounts may finish after the shutdown signal.
    pub grace: Duration,
    /// A backstop per request; the service sets tighter deadlines of its own.
    pub request_timeout: Duration,
    /// Unix uids allowed to connect (the driver runs as root); the socket owner is added.
    pub allowed_peer_uids: Vec<u32>,
}

/// Serves the provider on `socket` until `shutdown` resolves, then reports not-ready, stops
/// accepting, drains for at most `grace` and removes the socket.
pub async fn serve(
    socket: BoundSocket,
    provider: Provider,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
    health: Option<Arc<Health>>,
) -> Result<(), ServerError> {
    let BoundSocket {
        listener,
        path,
        identity,
        owner_uid,
    } = socket;
    let mut allowed = options.allowed_peer_uids.clone();
    allowed.push(owner_uid);
    let metrics = provider.metrics().clone();
    let incoming = UnixListenerStream::new(listener).filter_map(move |accepted| {
        let admitted = match accepted {
            Ok(stream) => admit(stream, &allowed, &metrics).map(|s| Ok(AuthorityFix::new(s))),
            Err(e) => Some(Err(e)),
        };
        std::future::ready(admitted)
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .timeout(options.request_timeout)
        .add_service(CsiDriverProviderServer::new(provider))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tracing::info!(socket = %path.display(), "serving the CSI provider API");
    if let Some(health) = &health {
        health.set_serving(true);
    }

    let grace = options.grace;
    let result = tokio::select! {
        result = &mut server => result.map_err(ServerError::from),
        () = shutdown => {
            // Not-ready first, so probes and load balancers stop counting on us.
            if let Some(health) = &health {
                health.set_serving(false);
            }
            tracing::info!(grace_s = grace.as_secs(), "shutting down: no new connections, draining in-flight mounts");
            let _ = stop_tx.send(());
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result.map_err(ServerError::from),
                Err(_) => {
                    tracing::warn!("in-flight mounts did not finish within the grace period; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    if let Some(health) = &health {
        health.set_serving(false);
    }
    remove_own_socket(&path, identity);
    result
}

/// Admits a connection only from an allowed unix user: the socket mode keeps others out of
/// the file, this keeps them out even where a mode is loosened or a directory is shared.
fn admit(stream: UnixStream, allowed: &[u32], metrics: &Metrics) -> Option<UnixStream> {
    match stream.peer_cred() {
        Ok(cred) if allowed.contains(&cred.uid()) => Some(stream),
        Ok(cred) => {
            metrics.reject(RejectReason::PeerUid);
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "refused a connection from a user that is not allowed (see --allowed-peer-uid)"
            );
            None
        }
        Err(e) => {
            metrics.reject(RejectReason::PeerUid);
            tracing::warn!(error = %e, "refused a connection whose peer credentials cannot be read");
            None
        }
    }
}

fn remove_own_socket(path: &Path, identity: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == identity => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
            }
        }
        _ => {}
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("received SIGTERM"),
                _ = int.recv() => tracing::info!("received SIGINT"),
            }
        }
        _ => {
            tracing::warn!("cannot listen for signals; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_are_owner_only_and_stale_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("akeyless.sock");
        let first = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second server must not steal a live socket.
        assert!(matches!(bind(&path), Err(ServerError::InUse { .. })));
        drop(first);
        // Now nobody answers: the stale socket is replaced.
        let second = bind(&path).unwrap();
        remove_own_socket(second.path(), second.identity);
        assert!(!path.exists());
        // No private staging directories are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("akeyless.sock");
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(bind(&path), Err(ServerError::NotASocket { .. })));
        assert!(path.exists());
    }
}

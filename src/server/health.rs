//! HTTP endpoints for the kubelet's probes and Prometheus: `/healthz`, `/readyz`, `/metrics`.
//!
//! Readiness is real: the socket must be serving and answer a `Version` call made through it,
//! the same path the driver takes — a provider whose socket is gone or wedged is not ready, and
//! neither is one that is shutting down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::metrics::Metrics;

/// How long the readiness probe's own `Version` call may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints report on.
#[derive(Debug)]
pub struct Health {
    serving: AtomicBool,
    socket: PathBuf,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(socket: PathBuf, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            serving: AtomicBool::new(false),
            socket,
            metrics,
        })
    }

    /// Set when the gRPC server starts serving; cleared as soon as shutdown begins.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Ready when serving and a `Version` call through the socket answers.
    pub async fn ready(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::SeqCst) {
            return Err("not serving (starting or shutting down)".to_owned());
        }
        crate::mount_cli::version(&self.socket, PROBE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Binds `addr` and serves the endpoints in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP endpoints stopped");
        }
    });
    tracing::info!(addr = %local, "serving /healthz, /readyz and /metrics");
    Ok(local)
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

//! An Akeyless-compatible API server on loopback, for the `demo` command, end-to-end tests and
//! benchmarks: a stand-in for `api.akeyless.io` or a Gateway's V2 API.
//!
//! It answers these commands with the real service's wire names, status codes and
//! `{"error": "…"}` bodies (`akeyless-api.md` §1, §5), from a [`Seed`] of auth methods and
//! items:
//!
//! | Command | Answers |
//! |---|---|
//! | `POST /auth` | a `t-` token for an auth method's credential |
//! | `POST /validate-token` | a token's validity and expiry |
//! | `POST /get-secret-value` | values of static secrets, by version |
//! | `POST /describe-item` | an item's metadata (and `item_versions`) |
//! | `POST /list-items` | items by folder, filter, tag, type; paginated |
//! | `POST /get-dynamic-secret-value` | new credentials (a lease) of a dynamic secret, each call |
//! | `POST /get-rotated-secret-value` | `{"value": {...}}` of a rotated secret, by version |
//! | `POST /get-certificate-value` | a certificate item's chain and key (generated at start) |
//! | `POST /get-pki-certificate` | a certificate for a CSR, signed by a PKI issuer's CA |
//! | `POST /get-ssh-certificate` | an OpenSSH user certificate, signed by an SSH issuer's CA |
//!
//! Every call is counted by path in [`Stats`], and [`Fault`]s apply to any command. Tests steer
//! it through an [`EmulatorHandle`] (rotation, deletion, token expiry, latency, faults; the
//! generated CAs and lease counts) or, when it runs as a separate process (`emulator`
//! subcommand), through a small control API on the same listener, which is not counted as API
//! traffic:
//!
//! | Request | Effect |
//! |---|---|
//! | `GET /__emulator/stats` | [`Stats`] as JSON |
//! | `POST /__emulator/reset` | clears the statistics |
//! | `POST /__emulator/latency` `{"ms": N}` | delay before every API response |
//! | `GET`/`POST`/`DELETE /__emulator/faults` | list / add (a [`Fault`] as JSON) / clear faults |
//! | `POST /__emulator/secrets` `{"name", "value"}` | new version of a static or rotated secret (or a fresh leaf of a certificate) |
//! | `DELETE /__emulator/secrets` `{"name"}` | deletes an item |
//! | `POST /__emulator/expire-tokens` | every issued token becomes expired |
//! | `GET`/`POST /__emulator/modes` | the [`Modes`]: answers the API definition leaves open, a slow producer |
//!
//! The server is hyper's HTTP/1.1 on tokio; state sits behind `std` locks that are never held
//! across an `.await`, and no input makes it panic. [`start_tls`] serves HTTPS instead, with a
//! certificate for `127.0.0.1` from a CA of its own ([`EmulatorHandle::ca_pem`]): a Gateway
//! behind a private CA.

mod api;
mod crypto;
mod faults;
mod modes;
mod seed;
mod state;
mod values;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub use faults::{Fault, FaultKind};
pub use modes::{Answer, Modes};
pub use seed::{AccessType, ItemType, SecretFormat, Seed, SeedAuthMethod, SeedItem};
pub use state::{LoginRecord, READS_LOG_CAPACITY, ReadRecord, Stats};

use state::{Authority, Shared, lock};

/// Largest request body accepted (API and control).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How long shutdown waits for in-flight requests before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Size of the pieces a `SlowBody` fault dribbles.
const SLOW_BODY_CHUNK: usize = 16;
const CONTROL_PREFIX: &str = "/__emulator";

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("invalid emulator seed{}: {message}", line.map(|line| format!(" (line {line})")).unwrap_or_default())]
    Seed {
        line: Option<usize>,
        message: String,
    },
    #[error("emulator cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the emulator on `listen` (use port 0 for a free port) and returns at once.
pub async fn start(listen: SocketAddr, seed: Seed) -> Result<EmulatorHandle, EmulatorError> {
    start_with(listen, seed, None).await
}

/// As [`start`], serving HTTPS: a certificate for `127.0.0.1` issued by a CA generated now,
/// whose certificate [`EmulatorHandle::ca_pem`] gives (no system root trusts it).
pub async fn start_tls(listen: SocketAddr, seed: Seed) -> Result<EmulatorHandle, EmulatorError> {
    let (acceptor, ca_pem) = tls_acceptor().map_err(|message| EmulatorError::Seed {
        line: None,
        message: format!("cannot set up TLS: {message}"),
    })?;
    start_with(listen, seed, Some((acceptor, ca_pem))).await
}

/// A TLS acceptor for `127.0.0.1` and the PEM of the CA behind it.
fn tls_acceptor() -> Result<(tokio_rustls::TlsAcceptor, String), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    fn internal(what: &'static str) -> impl Fn(crypto::CryptoError) -> String {
        move |e| match e {
            crypto::CryptoError::Request(m) | crypto::CryptoError::Internal(m) => {
                format!("{what}: {m}")
            }
        }
    }
    let now = state::now_ms() / 1000;
    let chain = crypto::CertChain::generate("the emulator's TLS", "127.0.0.1", 86_400, now)
        .map_err(internal("CA"))?;
    let leaf = chain.issue_leaf(now).map_err(internal("certificate"))?;
    let certificates = crate::render::pem::parse_certificates(&leaf.chain_pem)?
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let key = x509_parser::pem::Pem::iter_from_buffer(leaf.key_pem.expose().as_bytes())
        .filter_map(Result::ok)
        .find(|block| block.label == "PRIVATE KEY")
        .ok_or("the generated key is not PKCS#8")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.contents));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        chain.root_pem().to_owned(),
    ))
}

async fn start_with(
    listen: SocketAddr,
    seed: Seed,
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
) -> Result<EmulatorHandle, EmulatorError> {
    seed.validate(None)?;
    let bind_error = |source| EmulatorError::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let shared = Arc::new(Shared::new(&seed).map_err(|message| EmulatorError::Seed {
        line: None,
        message,
    })?);
    let (stop, stopped) = watch::channel(false);
    let (acceptor, ca_pem) = tls.unzip();
    let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped, acceptor));
    Ok(EmulatorHandle {
        shared,
        addr,
        ca_pem: ca_pem.map(Arc::from),
        control: Arc::new(Control {
            stop,
            task: Mutex::new(Some(task)),
        }),
    })
}

/// Runs the emulator until `shutdown` completes (the `emulator` CLI subcommand).
pub async fn run(
    listen: SocketAddr,
    seed: Seed,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EmulatorError> {
    let handle = start(listen, seed).await?;
    let url = handle.url();
    tracing::info!(%url, control = %format!("{url}/__emulator/"), "Akeyless emulator listening");
    shutdown.await;
    handle.shutdown().await;
    tracing::info!("Akeyless emulator stopped");
    Ok(())
}

/// A running emulator. Clones share it; it stops on [`EmulatorHandle::shutdown`] or when the
/// last clone is dropped.
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Served over HTTPS: the CA behind its certificate.
    ca_pem: Option<Arc<str>>,
    control: Arc<Control>,
}

struct Control {
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl EmulatorHandle {
    /// The API base URL, e.g. `http://127.0.0.1:41234` (commands are `POST {url}/auth`, …).
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The CA certificate (PEM) that a client must trust, when serving HTTPS ([`start_tls`]).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// API requests to `endpoint` (`"/get-secret-value"` or `"get-secret-value"`) so far,
    /// failed and faulted ones included.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.shared.calls(endpoint)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Zeroes the call counters and empties the reads log.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Delay added before every API response (not control responses); zero to remove.
    pub fn set_latency(&self, delay: Duration) {
        self.shared
            .set_latency_ms(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    }

    /// Appends a fault; faults are tried in the order they were added.
    pub fn add_fault(&self, fault: Fault) {
        self.shared.add_fault(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Chooses the answers the API definition leaves open, and the producer's delay.
    pub fn set_modes(&self, modes: Modes) {
        self.shared.set_modes(modes);
    }

    /// Adds a version to `name`, as a rotation would: to a static or rotated secret (creating
    /// a static text secret if missing), or a fresh leaf to a certificate item (`value` is
    /// ignored). An unusable name (empty, trailing `/`) or an issuer or dynamic secret is
    /// logged and ignored.
    pub fn put_secret(&self, name: &str, value: &str) {
        if let Err(why) = self.shared.put_secret(name, value) {
            tracing::warn!(name, "emulator: put_secret ignored: {why}");
        }
    }

    /// Credentials minted from item `name` so far: leases of a dynamic secret, certificates
    /// issued by a PKI or SSH issuer. Cleared by [`EmulatorHandle::reset_stats`].
    pub fn leases_minted(&self, name: &str) -> u64 {
        self.shared.leases_minted(name)
    }

    /// The root CA (PEM) that a `certificate` item's chain ends in; `None` for other items.
    pub fn certificate_root_pem(&self, name: &str) -> Option<String> {
        self.shared.authority(name, |authority| match authority {
            Authority::Certificate(chain) => Some(chain.root_pem().to_owned()),
            _ => None,
        })
    }

    /// The CA certificate (PEM) of a `pki-cert-issuer` item; `None` for other items.
    pub fn pki_ca_pem(&self, issuer: &str) -> Option<String> {
        self.shared.authority(issuer, |authority| match authority {
            Authority::Pki(ca) => Some(ca.ca_pem().to_owned()),
            _ => None,
        })
    }

    /// The CA key of an `ssh-cert-issuer` item as an OpenSSH public key line
    /// (`ssh-ed25519 AAAA…`, for `TrustedUserCAKeys`); `None` for other items.
    pub fn ssh_ca_public_key(&self, issuer: &str) -> Option<String> {
        self.shared.authority(issuer, |authority| match authority {
            Authority::Ssh(ca) => Some(ca.public_key_line()),
            _ => None,
        })
    }

    /// Creates an item as the seed would, replacing any item of that name — of any type, as
    /// when an item is deleted and created again as another type. An invalid item is logged
    /// and ignored.
    pub fn put_item(&self, item: &SeedItem) {
        if let Err(why) = self.shared.put_item(item) {
            tracing::warn!(name = %item.name, "emulator: put_item ignored: {why}");
        }
    }

    /// Removes an item; later reads of it answer 404.
    pub fn delete_item(&self, name: &str) {
        self.shared.delete_item(name);
    }

    /// Every token issued so far becomes expired (API calls with it answer 401).
    pub fn expire_tokens(&self) {
        self.shared.expire_tokens();
    }

    /// Stops accepting, lets in-flight requests finish (for at most a second) and closes every
    /// connection. Other clones of the handle see a stopped emulator.
    pub async fn shutdown(self) {
        self.control.stop.send_replace(true);
        let task = lock(&self.control.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (shared, stopped) = (shared.clone(), stopped.clone());
                    match &tls {
                        None => {
                            connections.spawn(serve_connection(stream, shared, stopped));
                        }
                        Some(acceptor) => {
                            let handshake = acceptor.accept(stream);
                            connections.spawn(async move {
                                // A client that does not trust the CA gives up here.
                                let Ok(Ok(stream)) =
                                    tokio::time::timeout(Duration::from_secs(10), handshake).await
                                else {
                                    return;
                                };
                                serve_connection(stream, shared, stopped).await;
                            });
                        }
                    }
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "emulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Connections saw the same signal and are draining; give them a moment, then cut them.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(200), drain)
        .await
        .is_err()
    {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Completes once shutdown is requested (or every handle is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A `Reset` fault wakes this to drop the connection without answering.
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            let reset = reset.clone();
            async move { Ok::<_, Infallible>(handle(shared, request, reset).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = reset.notified() => {}
        _ = stop_requested(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await;
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    reset: Arc<Notify>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == CONTROL_PREFIX || path.starts_with("/__emulator/") {
        return control(&shared, request).await;
    }
    shared.count_call(&path);
    let method = request.method().clone();
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let latency = shared.latency_ms();
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fault = shared.take_fault(&path);
    match &fault {
        Some(FaultKind::Status {
            status,
            retry_after_secs,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = json_response(status, &api::fault_error(status));
            if let Some(secs) = retry_after_secs {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            return response;
        }
        Some(FaultKind::Reset) => {
            reset.notify_one();
            // The connection task drops this request together with the connection.
            return std::future::pending().await;
        }
        Some(FaultKind::Malformed) => {
            return response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Body::from(
                    "<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>\n",
                ),
            );
        }
        Some(FaultKind::Delay { ms }) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        Some(
            FaultKind::Truncated
            | FaultKind::SlowBody { .. }
            | FaultKind::ResetAfter
            | FaultKind::DelayAfter { .. },
        )
        | None => {}
    }

    // As a real server, the work is done whether or not the client waits for the answer.
    let work = tokio::spawn(async move {
        if let Some(reply) = producer_wait(&shared, &path, &body).await {
            return reply;
        }
        api::dispatch(&shared, &method, &path, &body)
    });
    let Ok(reply) = work.await else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "the command failed");
    };
    let bytes = Bytes::from(serde_json::to_vec(&reply.body).unwrap_or_default());
    match fault {
        Some(FaultKind::ResetAfter) => {
            reset.notify_one();
            std::future::pending().await
        }
        Some(FaultKind::DelayAfter { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            response(reply.status, "application/json", Body::from(bytes))
        }
        Some(FaultKind::Truncated) => {
            let cut = bytes.slice(..bytes.len() / 2);
            response(StatusCode::OK, "application/json", Body::from(cut))
        }
        Some(FaultKind::SlowBody { ms_per_chunk }) => {
            let delay = Duration::from_millis(ms_per_chunk);
            let chunks = futures::stream::unfold(bytes, move |mut rest| async move {
                if rest.is_empty() {
                    return None;
                }
                tokio::time::sleep(delay).await;
                let chunk = rest.split_to(rest.len().min(SLOW_BODY_CHUNK));
                Some((Ok::<_, Infallible>(chunk), rest))
            });
            response(reply.status, "application/json", Body::from_stream(chunks))
        }
        _ => response(reply.status, "application/json", Body::from(bytes)),
    }
}

/// A slow dynamic-secret producer ([`Modes::producer_delay_ms`]): waits for it, up to the
/// request's `timeout` (seconds, default 15). `Some`: the producer did not make it in time.
async fn producer_wait(shared: &Shared, path: &str, body: &[u8]) -> Option<api::Reply> {
    let delay = shared.modes().producer_delay_ms;
    if delay == 0 || path.trim_start_matches('/') != "get-dynamic-secret-value" {
        return None;
    }
    let timeout_secs = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|request| request.get("timeout").and_then(Value::as_u64))
        .unwrap_or(15);
    let limit = timeout_secs.saturating_mul(1000);
    tokio::time::sleep(Duration::from_millis(delay.min(limit))).await;
    (delay > limit).then(|| {
        api::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "failed to get dynamic secret value: the producer did not answer within {timeout_secs}s"
            ),
        )
        .into_reply()
    })
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is too large",
        ));
    }
    axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY_BYTES)
        .await
        .map_err(|err| {
            error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {err}"),
            )
        })
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    response(
        status,
        "application/json",
        Body::from(serde_json::to_vec(body).unwrap_or_default()),
    )
}

fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

// ---- control API ----

#[derive(Deserialize)]
struct LatencyRequest {
    ms: u64,
}

#[derive(Deserialize)]
struct PutSecretRequest {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct DeleteItemRequest {
    name: String,
}

async fn control(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let endpoint = path.strip_prefix(CONTROL_PREFIX).unwrap_or(&path);
    let ok = || json_response(StatusCode::OK, &json!({ "ok": true }));
    match (endpoint, &method) {
        ("/stats", &Method::GET) => json_response(StatusCode::OK, &json!(shared.stats())),
        ("/reset", &Method::POST) => {
            shared.reset_stats();
            ok()
        }
        ("/latency", &Method::POST) => match parse_control::<LatencyRequest>(&body) {
            Ok(request) => {
                shared.set_latency_ms(request.ms);
                ok()
            }
            Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
        },
        ("/faults", &Method::GET) => json_response(StatusCode::OK, &json!(shared.faults())),
        ("/faults", &Method::POST) => match parse_control::<Fault>(&body) {
            Ok(fault) => {
                shared.add_fault(fault);
                ok()
            }
            Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
        },
        ("/faults", &Method::DELETE) => {
            shared.clear_faults();
            ok()
        }
        ("/secrets", &Method::POST) => match parse_control::<PutSecretRequest>(&body) {
            Ok(request) => match shared.put_secret(&request.name, &request.value) {
                Ok(version) => {
                    json_response(StatusCode::OK, &json!({ "ok": true, "version": version }))
                }
                Err(why) => error_response(StatusCode::BAD_REQUEST, &why),
            },
            Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
        },
        ("/secrets", &Method::DELETE) => match parse_control::<DeleteItemRequest>(&body) {
            Ok(request) => {
                let existed = shared.delete_item(&request.name);
                json_response(StatusCode::OK, &json!({ "ok": true, "deleted": existed }))
            }
            Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
        },
        ("/expire-tokens", &Method::POST) => {
            shared.expire_tokens();
            ok()
        }
        ("/modes", &Method::GET) => json_response(StatusCode::OK, &json!(shared.modes())),
        ("/modes", &Method::POST) => match parse_control::<Modes>(&body) {
            Ok(modes) => {
                shared.set_modes(modes);
                ok()
            }
            Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
        },
        (
            "/stats" | "/reset" | "/latency" | "/faults" | "/secrets" | "/expire-tokens" | "/modes",
            _,
        ) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {method} is not allowed on {path}"),
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            &format!("unknown emulator control path {path:?}"),
        ),
    }
}

fn parse_control<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("invalid request body: {err}"))
}

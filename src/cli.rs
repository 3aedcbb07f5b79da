//! Command-line interface: flags with environment fallbacks, parsed once at the edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::telemetry::LogFormat;

/// The upstream driver chart's providers directory.
pub const DEFAULT_SOCKET: &str = "/var/run/secrets-store-csi-providers/akeyless.sock";
pub const DEFAULT_AKEYLESS_URL: &str = "https://api.akeyless.io";

#[derive(Debug, Parser)]
#[command(
    name = "akeyless-csi-provider",
    version,
    about = "Akeyless provider for the Kubernetes Secrets Store CSI driver"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format [default: json for serve, controller and emulator, text for mount and
    /// demo].
    #[arg(long, global = true, env = "AKEYLESS_CSI_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info`, `debug` or `akeyless_csi_provider=trace,info`
    /// [default: info for serve, controller and emulator, warn for the other commands (the demo
    /// also hides its provider's audit events: `audit=off`)].
    #[arg(long, global = true, env = "AKEYLESS_CSI_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl Cli {
    /// Daemons log JSON for log pipelines; the interactive commands keep their output readable.
    pub fn log_settings(&self) -> (LogFormat, String) {
        let daemon = matches!(
            self.command,
            Command::Serve(_) | Command::Controller(_) | Command::Emulator(_)
        );
        let format = self.log.log_format.unwrap_or(if daemon {
            LogFormat::Json
        } else {
            LogFormat::Text
        });
        // The demo tells its own story; the audit events of its provider would interrupt it.
        let quiet = if matches!(self.command, Command::Demo(_)) {
            "warn,audit=off"
        } else {
            "warn"
        };
        let level = self
            .log
            .log_level
            .clone()
            .unwrap_or_else(|| if daemon { "info" } else { quiet }.to_owned());
        (format, level)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the provider API on the driver's unix socket (what the DaemonSet runs).
    Serve(ServeArgs),
    /// Serve an Akeyless-compatible API on loopback, for demos, tests and benchmarks.
    Emulator(EmulatorArgs),
    /// Keep Kubernetes Secrets current from ESO's SecretStores and ExternalSecrets for Akeyless,
    /// with no pod mounting anything (a Deployment; leader-elected).
    Controller(ControllerArgs),
    /// Send the Mount the driver would send for a SecretProviderClass, and write the files.
    Mount(MountArgs),
    /// Run the emulator and the provider locally and mount a sample SecretProviderClass.
    Demo(DemoArgs),
    /// Check SecretProviderClass manifests offline, with the provider's own parsers: every
    /// problem at once, by file, line and field. Exit code 0 clean, 1 problems, 2 unreadable.
    Check(CheckArgs),
    /// Print this binary's version, or with --socket the version a running provider answers
    /// (the driver's Version call).
    Version(VersionArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket path: `<providers dir>/akeyless.sock`. The AKS add-on layout uses
    /// /etc/kubernetes/secrets-store-csi-providers/akeyless.sock.
    #[arg(long, env = "AKEYLESS_CSI_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Longest time one mount may take (the driver's own deadline, less a margin, applies
    /// when it is shorter).
    #[arg(long, env = "AKEYLESS_CSI_MOUNT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub mount_timeout: Duration,
    /// The Akeyless API, its client and logins.
    #[command(flatten)]
    pub akeyless: AkeylessArgs,
    /// Serve identical reads of the same identity from memory for this long (0s = off). Rotation
    /// polls then cost no Akeyless call, but see changes and revoked permissions that much later.
    #[arg(long, env = "AKEYLESS_CSI_RESULT_CACHE_TTL", default_value = "0s", value_parser = humantime::parse_duration)]
    pub result_cache_ttl: Duration,
    /// Address of the HTTP endpoints /healthz, /readyz and /metrics ("off" to disable).
    #[arg(long, env = "AKEYLESS_CSI_HTTP_ADDR", default_value = "0.0.0.0:8098", value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,
    /// Unix user ids allowed to connect to the socket (the driver runs as root). The provider's
    /// own uid is always allowed, for its readiness probe.
    #[arg(
        long = "allowed-peer-uid",
        env = "AKEYLESS_CSI_ALLOWED_PEER_UIDS",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub allowed_peer_uids: Vec<u32>,
    /// How long in-flight mounts may finish after SIGTERM.
    #[arg(long, env = "AKEYLESS_CSI_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// File holding the object-version HMAC key; created (0600) on first start. Defaults to
    /// `akeyless-csi-provider.key` beside the socket, so it survives provider restarts.
    #[arg(long, env = "AKEYLESS_CSI_VERSION_KEY_FILE")]
    pub version_key_file: Option<PathBuf>,
    /// The object-version HMAC key itself (base64, 32+ bytes), e.g. from a Secret shared by
    /// all nodes; overrides --version-key-file.
    #[arg(long, env = "AKEYLESS_CSI_VERSION_KEY", hide_env_values = true)]
    pub version_key: Option<String>,
    /// Mirror values into Kubernetes Secrets for SecretProviderClasses with `secretSync` (uses
    /// --kube-api-url, else in-cluster config). Needs RBAC: get secretproviderclasses; get,
    /// list secretproviderclasspodstatuses; get, create, update secrets.
    #[arg(long, env = "AKEYLESS_CSI_SYNC_SECRETS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub sync_secrets: bool,
    /// With --sync-secrets: how long one read of a SecretProviderClass (and one listing of a
    /// namespace's SecretProviderClassPodStatuses) answers for it on this node; a changed
    /// `secretSync` takes effect within this time. 0s reads on every mount.
    #[arg(long, env = "AKEYLESS_CSI_SPC_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub spc_cache_ttl: Duration,
    /// Identity: allow-list, node identity, provider defaults, cloud endpoints (boxed: large).
    #[command(flatten)]
    pub identity: Box<crate::auth::flags::IdentityArgs>,
}

/// Why the provider could not be assembled from its flags.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    VersionKey(#[from] crate::render::VersionKeyError),
}

impl ServeArgs {
    /// The provider these flags describe (reads or creates the version key).
    pub fn provider(
        &self,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> Result<crate::service::Provider, StartError> {
        use crate::{render, service};
        let version_key = match &self.version_key {
            Some(text) => render::VersionKey::from_base64(text, "AKEYLESS_CSI_VERSION_KEY")?,
            None => render::VersionKey::load_or_create(&self.version_key_path())?,
        };
        let client = self.akeyless.client(metrics.clone());
        let authenticator = self.akeyless.authenticator(&client, &self.identity);
        Ok(service::Provider::new(
            service::ProviderOptions {
                default_url: self.akeyless.akeyless_url.clone(),
                mount_timeout: self.mount_timeout,
                result_cache_ttl: self.result_cache_ttl,
                secret_sync: self.sync_secrets.then(|| {
                    crate::sync::SecretSync::new(
                        self.identity.kube_api_url.clone(),
                        self.spc_cache_ttl,
                    )
                }),
            },
            client,
            authenticator,
            version_key,
            metrics,
        ))
    }

    pub fn version_key_path(&self) -> PathBuf {
        self.version_key_file.clone().unwrap_or_else(|| {
            self.socket
                .parent()
                .map(|d| d.join("akeyless-csi-provider.key"))
                .unwrap_or_else(|| PathBuf::from("akeyless-csi-provider.key"))
        })
    }
}

/// The Akeyless API and how it is called: shared by `serve` and `controller`.
#[derive(Debug, Args)]
pub struct AkeylessArgs {
    /// Akeyless API URL for SecretProviderClasses (and stores) that name none
    /// (SaaS, or a Gateway such as https://gw:8000/api/v2).
    #[arg(long, env = "AKEYLESS_URL", default_value = DEFAULT_AKEYLESS_URL, value_parser = parse_url)]
    pub akeyless_url: Url,
    /// Timeout of one HTTP call to Akeyless.
    #[arg(long, env = "AKEYLESS_CSI_CALL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Attempts per Akeyless call for 5xx, 429 and transport errors.
    #[arg(long, env = "AKEYLESS_CSI_CALL_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub call_attempts: u32,
    /// Akeyless calls under way at once in this process; more wait in a queue.
    #[arg(long, env = "AKEYLESS_CSI_MAX_CONCURRENT_CALLS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_calls: u32,
    /// Calls allowed to wait for --max-concurrent-calls; beyond that a mount is refused at once
    /// with ResourceExhausted (the driver retries), or a refresh fails (retried with backoff).
    #[arg(long, env = "AKEYLESS_CSI_MAX_QUEUED_CALLS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_queued_calls: u32,
    /// Assumed token lifetime when Akeyless does not return an expiration.
    #[arg(long, env = "AKEYLESS_CSI_DEFAULT_TOKEN_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_token_ttl: Duration,
}

impl AkeylessArgs {
    /// The HTTP client these flags describe.
    pub fn client(
        &self,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> crate::akeyless::Client {
        crate::akeyless::Client::new(
            crate::akeyless::ClientOptions {
                call_timeout: self.call_timeout,
                max_attempts: self.call_attempts,
                max_concurrent_calls: self.max_concurrent_calls as usize,
                max_queued_calls: self.max_queued_calls as usize,
                ..crate::akeyless::ClientOptions::default()
            },
            metrics,
        )
    }

    /// Logins and their token cache, with the admin's identity rules.
    pub fn authenticator(
        &self,
        client: &crate::akeyless::Client,
        identity: &crate::auth::flags::IdentityArgs,
    ) -> crate::auth::Authenticator {
        crate::auth::Authenticator::new(
            client.clone(),
            crate::auth::AuthOptions {
                default_ttl: self.default_token_ttl,
                login_timeout: self.call_timeout.saturating_mul(self.call_attempts),
                settings: identity.settings(&self.akeyless_url),
                ..crate::auth::AuthOptions::default()
            },
        )
    }
}

/// The `serve` identity flags that mean nothing to the controller (its own cloud identity is
/// always on; stores bring their access ids; its Kubernetes client is its own): accepted, so a
/// shared environment does not break it, but not offered in its help.
const SERVE_ONLY_IDENTITY_FLAGS: [&str; 8] = [
    "node_identity",
    "token_request",
    "kube_api_url",
    "default_access_id",
    "default_access_type",
    "default_access_key",
    "default_uid_token",
    "default_k8s_auth_config_name",
];

#[derive(Debug, Args)]
#[command(mut_args(|arg| {
    let serve_only = SERVE_ONLY_IDENTITY_FLAGS.contains(&arg.get_id().as_str());
    arg.hide(serve_only)
}))]
pub struct ControllerArgs {
    /// Serve stores whose spec.controller is this class (and, unless --skip-unclassed, stores
    /// with none), like ESO's --controller-class.
    #[arg(long, env = "AKEYLESS_CSI_CONTROLLER_CLASS", default_value = crate::controller::DEFAULT_CLASS)]
    pub controller_class: String,
    /// Leave stores without spec.controller alone: run beside ESO and serve only stores that
    /// name our class.
    #[arg(long, env = "AKEYLESS_CSI_SKIP_UNCLASSED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub skip_unclassed: bool,
    /// Serve ClusterSecretStores (and ExternalSecrets that use them).
    #[arg(long, env = "AKEYLESS_CSI_CLUSTER_STORES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cluster_stores: bool,
    /// Watch this namespace only (default: all namespaces).
    #[arg(long, env = "AKEYLESS_CSI_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Hold a coordination.k8s.io Lease so that only one replica writes.
    #[arg(long, env = "AKEYLESS_CSI_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
    /// Namespace of the Lease (default: the controller's own, from POD_NAMESPACE or the
    /// service account's namespace file).
    #[arg(long, env = "AKEYLESS_CSI_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "AKEYLESS_CSI_LEADER_ELECTION_NAME",
        default_value = "akeyless-csi-provider-controller"
    )]
    pub leader_election_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
    /// How long the leader's claim lasts without renewal: a standby takes over this long after
    /// the leader dies.
    #[arg(long, env = "AKEYLESS_CSI_LEASE_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long before its claim ends the leader renews it.
    #[arg(long, env = "AKEYLESS_CSI_LEASE_GRACE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease_grace: Duration,
    /// Reconciles under way at once, per kind.
    #[arg(long, env = "AKEYLESS_CSI_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// How long a static read waits for other ExternalSecrets of the same store identity to
    /// join it: those due in one refresh round share one batched /get-secret-value.
    #[arg(long, env = "AKEYLESS_CSI_BATCH_WINDOW", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_window: Duration,
    /// Longest time one ExternalSecret's refresh may take (logins, reads, the write).
    #[arg(long, env = "AKEYLESS_CSI_REFRESH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub refresh_timeout: Duration,
    /// How often a store is validated again by a login (besides on every change).
    #[arg(long, env = "AKEYLESS_CSI_STORE_REVALIDATE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub store_revalidate: Duration,
    /// First retry after a failed reconcile; doubled per failure (with jitter) up to
    /// --max-backoff.
    #[arg(long, env = "AKEYLESS_CSI_MIN_BACKOFF", default_value = "5s", value_parser = humantime::parse_duration)]
    pub min_backoff: Duration,
    /// Longest wait before retrying a failed reconcile.
    #[arg(long, env = "AKEYLESS_CSI_MAX_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
    /// Address of the HTTP endpoints /healthz, /readyz and /metrics ("off" to disable).
    #[arg(long, env = "AKEYLESS_CSI_HTTP_ADDR", default_value = "0.0.0.0:8099", value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,
    /// The controller's own ServiceAccount token, for kubernetesAuth stores that name none
    /// (and secretRef stores of access type k8s); re-read on use, as the kubelet rotates it.
    /// Sent only to --akeyless-url and --allowed-gateway-url URLs.
    #[arg(long, env = "AKEYLESS_CSI_SERVICE_ACCOUNT_TOKEN_FILE", default_value = crate::controller::own::DEFAULT_TOKEN_FILE)]
    pub service_account_token_file: PathBuf,
    /// The Akeyless API, its client and logins.
    #[command(flatten)]
    pub akeyless: AkeylessArgs,
    /// Identity: allow-list for the controller's own credentials, cloud endpoints.
    #[command(flatten)]
    pub identity: Box<crate::auth::flags::IdentityArgs>,
}

impl ControllerArgs {
    /// The controller's settings; `namespace` is where it runs (the Lease's default home).
    pub fn options(&self, namespace: Option<String>) -> crate::controller::ControllerOptions {
        let leader = self
            .leader_election
            .then(|| crate::controller::leader::LeaderOptions {
                namespace: self
                    .leader_election_namespace
                    .clone()
                    .or(namespace)
                    .unwrap_or_else(|| "default".to_owned()),
                name: self.leader_election_name.clone(),
                identity: self
                    .leader_election_identity
                    .clone()
                    .filter(|i| !i.trim().is_empty())
                    .unwrap_or_else(host_name),
                duration: self.lease_duration,
                grace: self.lease_grace,
            });
        crate::controller::ControllerOptions {
            class: self.controller_class.clone(),
            skip_unclassed: self.skip_unclassed,
            cluster_stores: self.cluster_stores,
            namespace: self.namespace.clone(),
            default_url: self.akeyless.akeyless_url.clone(),
            concurrency: self.concurrency,
            refresh_timeout: self.refresh_timeout,
            store_revalidate: self.store_revalidate,
            min_backoff: self.min_backoff,
            max_backoff: self.max_backoff.max(self.min_backoff),
            leader,
            own: crate::controller::own::OwnIdentity::from_env(
                self.service_account_token_file.clone(),
            ),
        }
    }
}

/// This machine's host name (a pod's name in Kubernetes), for the Lease identity.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("controller-{}", std::process::id()))
}

impl ControllerArgs {
    /// Logins and their token cache. In the controller, the "node identity" of the CSI path is
    /// the controller's own cloud identity, which ESO uses for `aws_iam`, `gcp` and `azure_ad`
    /// stores without credentials: always on, and still only towards allowed URLs.
    pub fn authenticator(&self, client: &crate::akeyless::Client) -> crate::auth::Authenticator {
        let mut identity = (*self.identity).clone();
        identity.node_identity = true;
        self.akeyless.authenticator(client, &identity)
    }
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Seed YAML (auth methods and items); the built-in demo seed when omitted.
    #[arg(long)]
    pub seed: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The provider's socket.
    #[arg(long, env = "AKEYLESS_CSI_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// SecretProviderClass YAML file.
    #[arg(long)]
    pub spc: PathBuf,
    /// The nodePublishSecretRef data: a Secret YAML, a JSON object, or KEY=VALUE lines.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Pod namespace (default: the SecretProviderClass's namespace, else `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long, default_value = "debug-pod")]
    pub pod_name: String,
    #[arg(long, default_value = "00000000-0000-0000-0000-000000000000")]
    pub pod_uid: String,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// JSON of `csi.storage.k8s.io/serviceAccount.tokens` ({"<audience>": {"token": ...}}).
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Extra volumeAttributes of the pod's volume (override SPC parameters, as in the driver).
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Directory to write the files into.
    #[arg(long)]
    pub out: PathBuf,
    /// The deadline sent with the call (kubelet uses 2 minutes).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the mounted files in this directory (default: a temporary one, removed at the end).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// YAML files, `-` for stdin: SecretProviderClasses alone or among other manifests (e.g. the
    /// output of `kubectl kustomize` or `helm template`); other kinds are skipped.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// `json` for pipelines.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: CheckOutput,
    /// Also print what a first mount of each SecretProviderClass would do: the identity, the
    /// files, and the Akeyless calls.
    #[arg(long)]
    pub plan: bool,
    /// Also list the documents that were skipped, and why.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// How `check` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Ask the provider serving this socket instead (e.g. /provider/akeyless.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// How long to wait for its answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Where the HTTP endpoints listen, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpAddr {
    Off,
    On(SocketAddr),
}

fn parse_http_addr(text: &str) -> Result<HttpAddr, String> {
    match text.trim() {
        "" | "off" | "none" => Ok(HttpAddr::Off),
        addr => addr
            .parse()
            .map(HttpAddr::On)
            .map_err(|e| format!("{addr:?} is not an address like 0.0.0.0:8098 ({e})")),
    }
}

fn parse_url(text: &str) -> Result<Url, String> {
    crate::params::parse_gateway_url(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_controller_offers_only_the_flags_it_uses() {
        let cli = Cli::command();
        let flags = |name: &str| -> Vec<(String, bool)> {
            let command = cli.find_subcommand(name).expect("subcommand");
            command
                .get_arguments()
                .filter_map(|a| Some((a.get_long()?.to_owned(), a.is_hide_set())))
                .collect()
        };
        let controller = flags("controller");
        for id in SERVE_ONLY_IDENTITY_FLAGS {
            let long = id.replace('_', "-");
            assert!(
                controller.contains(&(long.clone(), true)),
                "{long} hidden in controller"
            );
            assert!(
                flags("serve").contains(&(long.clone(), false)),
                "{long} shown in serve"
            );
        }
        assert!(controller.contains(&("max-backoff".to_owned(), false)));
        // Hidden, still accepted: a shared environment does not stop the controller.
        assert!(
            Cli::try_parse_from([
                "akeyless-csi-provider",
                "controller",
                "--node-identity",
                "--default-access-id",
                "p-x"
            ])
            .is_ok()
        );
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["akeyless-csi-provider", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            args.akeyless.akeyless_url.as_str(),
            "https://api.akeyless.io/"
        );
        assert_eq!(
            args.version_key_path(),
            PathBuf::from("/var/run/secrets-store-csi-providers/akeyless-csi-provider.key")
        );
    }
}

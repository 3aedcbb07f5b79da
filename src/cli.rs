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
    /// Log line format [default: json for serve and emulator, text for mount and demo].
    #[arg(long, global = true, env = "AKEYLESS_CSI_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info`, `debug` or `akeyless_csi_provider=trace,info`
    /// [default: info for serve and emulator, warn for the other commands (the demo also hides
    /// its provider's audit events: `audit=off`)].
    #[arg(long, global = true, env = "AKEYLESS_CSI_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl Cli {
    /// Daemons log JSON for log pipelines; the interactive commands keep their output readable.
    pub fn log_settings(&self) -> (LogFormat, String) {
        let daemon = matches!(self.command, Command::Serve(_) | Command::Emulator(_));
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
    /// Akeyless API URL for SecretProviderClasses without `akeylessGatewayURL`
    /// (SaaS, or a Gateway such as https://gw:8000/api/v2).
    #[arg(long, env = "AKEYLESS_URL", default_value = DEFAULT_AKEYLESS_URL, value_parser = parse_url)]
    pub akeyless_url: Url,
    /// Longest time one mount may take (the driver's own deadline, less a margin, applies
    /// when it is shorter).
    #[arg(long, env = "AKEYLESS_CSI_MOUNT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub mount_timeout: Duration,
    /// Timeout of one HTTP call to Akeyless.
    #[arg(long, env = "AKEYLESS_CSI_CALL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Attempts per Akeyless call for 5xx, 429 and transport errors.
    #[arg(long, env = "AKEYLESS_CSI_CALL_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub call_attempts: u32,
    /// Akeyless calls under way at once on this node; more wait in a queue.
    #[arg(long, env = "AKEYLESS_CSI_MAX_CONCURRENT_CALLS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_calls: u32,
    /// Calls allowed to wait for --max-concurrent-calls; beyond that a mount is refused at once
    /// with ResourceExhausted (the driver retries).
    #[arg(long, env = "AKEYLESS_CSI_MAX_QUEUED_CALLS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_queued_calls: u32,
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
    /// Assumed token lifetime when Akeyless does not return an expiration.
    #[arg(long, env = "AKEYLESS_CSI_DEFAULT_TOKEN_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_token_ttl: Duration,
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
        use crate::{akeyless, auth, render, service};
        let version_key = match &self.version_key {
            Some(text) => render::VersionKey::from_base64(text, "AKEYLESS_CSI_VERSION_KEY")?,
            None => render::VersionKey::load_or_create(&self.version_key_path())?,
        };
        let client = akeyless::Client::new(
            akeyless::ClientOptions {
                call_timeout: self.call_timeout,
                max_attempts: self.call_attempts,
                max_concurrent_calls: self.max_concurrent_calls as usize,
                max_queued_calls: self.max_queued_calls as usize,
                ..akeyless::ClientOptions::default()
            },
            metrics.clone(),
        );
        let authenticator = auth::Authenticator::new(
            client.clone(),
            auth::AuthOptions {
                default_ttl: self.default_token_ttl,
                login_timeout: self.call_timeout.saturating_mul(self.call_attempts),
                settings: self.identity.settings(&self.akeyless_url),
                ..auth::AuthOptions::default()
            },
        );
        Ok(service::Provider::new(
            service::ProviderOptions {
                default_url: self.akeyless_url.clone(),
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
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["akeyless-csi-provider", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(args.akeyless_url.as_str(), "https://api.akeyless.io/");
        assert_eq!(
            args.version_key_path(),
            PathBuf::from("/var/run/secrets-store-csi-providers/akeyless-csi-provider.key")
        );
    }
}

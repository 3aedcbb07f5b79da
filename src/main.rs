//! The `akeyless-csi-provider` binary: parses flags, sets up logging and runs one command.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;

use akeyless_csi_provider::cli::{Cli, Command, HttpAddr};
use akeyless_csi_provider::telemetry::metrics::Metrics;
use akeyless_csi_provider::{
    check, controller, demo, emulator, fetch, mount_cli, server, service, telemetry,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (format, level) = cli.log_settings();
    telemetry::init(format, &level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let metrics = Metrics::new();
            let provider = args.provider(metrics.clone())?;
            let socket = server::bind(&args.socket)?;
            let health = server::health::Health::new(args.socket.clone(), metrics);
            if let HttpAddr::On(addr) = args.http_addr {
                server::health::serve(addr, health.clone())
                    .await
                    .with_context(|| format!("cannot serve the HTTP endpoints on {addr}"))?;
            }
            server::serve(
                socket,
                provider,
                server::shutdown_signal(),
                server::ServeOptions {
                    grace: args.shutdown_grace,
                    request_timeout: args.mount_timeout + args.akeyless.call_timeout,
                    allowed_peer_uids: args.allowed_peer_uids.clone(),
                },
                Some(health),
            )
            .await?;
            tracing::info!("stopped");
        }
        Command::Controller(args) => {
            let metrics = Metrics::new();
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
            let akeyless = args.akeyless.client(metrics.clone());
            let auth = args.authenticator(&akeyless);
            let fetcher = fetch::Fetcher::new(
                akeyless.clone(),
                fetch::FetchOptions {
                    mount_timeout: args.refresh_timeout,
                    result_cache_ttl: std::time::Duration::ZERO,
                    batch_window: Some(args.batch_window),
                },
                metrics.clone(),
            );
            let health = server::health::Health::without_socket(metrics.clone());
            if let HttpAddr::On(addr) = args.http_addr {
                server::health::serve(addr, health.clone())
                    .await
                    .with_context(|| format!("cannot serve the HTTP endpoints on {addr}"))?;
            }
            let options = args.options(controller::own_namespace());
            let parts = controller::Parts {
                client,
                akeyless,
                auth,
                fetcher,
                metrics,
                health,
            };
            controller::run(parts, options, server::shutdown_signal()).await?;
            tracing::info!("stopped");
        }
        Command::Emulator(args) => {
            let seed = match &args.seed {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read the seed {}", path.display()))?;
                    emulator::Seed::from_yaml(&text)?
                }
                None => emulator::Seed::demo(),
            };
            emulator::run(args.listen, seed, server::shutdown_signal()).await?;
        }
        Command::Mount(args) => {
            let code = mount_cli::run(&args).await?;
            std::process::exit(code);
        }
        Command::Demo(args) => demo::run(&args).await?,
        Command::Check(args) => std::process::exit(check::run(&args)),
        Command::Version(args) => match &args.socket {
            None => println!(
                "{} {} ({} {}, {} linked)",
                service::RUNTIME_NAME,
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
                if cfg!(target_feature = "crt-static") {
                    "statically"
                } else {
                    "dynamically"
                }
            ),
            Some(socket) => {
                let answer = mount_cli::version(socket, args.timeout).await?;
                println!(
                    "{} {} (API {}) at {}",
                    answer.runtime_name,
                    answer.runtime_version,
                    answer.version,
                    socket.display()
                );
            }
        },
    }
    Ok(())
}

//! Logging: JSON lines by default (what log pipelines on clusters expect), or text for people.
//!
//! Nothing in this crate logs attributes, secrets, tokens or values; the level only decides how
//! much of the data path is described.

pub mod metrics;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level {level:?}: {source}")]
    Level {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("logging is already initialised")]
    AlreadySet,
}

/// Installs the global subscriber writing to stderr. `level` is an `EnvFilter` directive
/// such as `info` or `akeyless_csi_provider=debug,info`.
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(level).map_err(|source| TelemetryError::Level {
        level: level.to_owned(),
        source,
    })?;
    // Colours only for a person at a terminal, never in files or CI logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadySet)
}

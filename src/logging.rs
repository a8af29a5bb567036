//! Log set-up: `tracing` to stderr, with the talk's line shapes.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Lifecycle lines only: start, shutdown phases, errors about the service itself.
    None,
    /// Also one line per message step, as in the talk.
    Info,
    /// Everything, including panic locations and stale settlements.
    Debug,
}

impl LogLevel {
    pub fn directives(self) -> String {
        match self {
            LogLevel::None => format!("info,{}=off", crate::FLOW),
            LogLevel::Info => "info".into(),
            LogLevel::Debug => "debug".into(),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: LogLevel) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.directives()));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        // By default a failed write is reported with `eprintln!`, which panics when stderr
        // is a closed pipe: every log line would then panic, and a log reader that goes
        // away would stop the service. Losing log lines is the lesser harm.
        .log_internal_errors(false)
        .init();
}

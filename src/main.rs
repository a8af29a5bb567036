//! The `mandrill` binary: parse flags, set up logs and metrics, run, print the report.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use std::sync::Arc;

use mandrill::cli::{ArgsError, Cli, Command};
use mandrill::config::{ConfigSource, OnSighup};
use mandrill::{app, history, logging, metrics, publish};

fn main() -> ExitCode {
    // An error that ends the run is one line, with its causes, whatever
    // `RUST_BACKTRACE` says: returning it from `main` would print its backtrace too.
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    // Before anything else: a signal during start-up takes the ordered path once the
    // service runs. The subcommands keep the default actions. A word that merely looks
    // like one (a value such as `--command publish`) only skips this.
    let subcommand = std::env::args_os()
        .skip(1)
        .any(|a| a == "publish" || a == "history");
    let early = if subcommand {
        Ok(())
    } else {
        app::catch_signals_early()
    };
    let cli = match Cli::parse_with_file(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ArgsError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(Command::History(args)) = &cli.subcommand {
        return match history::run(args, &mut std::io::stdout().lock()) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    if let Some(Command::Publish(args)) = &cli.subcommand {
        return match publish::run(args) {
            Ok(published) => {
                println!("{}", serde_json::to_string(&published)?);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    // Dropped at the end of `main`, which flushes every buffered log line.
    let _log = logging::init(cli.log, cli.log_format);
    if let Err(e) = early {
        tracing::warn!("Cannot catch signals at start-up ({e}); they are caught once running");
    }
    let health = Arc::new(metrics::Health::default());
    if let Some(addr) = cli.metrics_addr {
        let bound = metrics::serve(addr, health.clone())
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(
            "Serving Prometheus metrics at http://{bound}/metrics, probes at /healthz and /readyz"
        );
    }
    let linger = cli.metrics_linger;
    let mut config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    config.health = health;
    if config.on_sighup == OnSighup::Reload {
        // A reload reads the same command line, and so the config file it names, again.
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        config.reload = Some(ConfigSource(Arc::new(move || {
            Cli::parse_with_file(argv.clone())
                .and_then(Cli::into_config)
                .map_err(|e| e.to_string().lines().next().unwrap_or("").to_string())
        })));
    }
    let report = app::run(config)?;
    // A closed stdout must not turn a clean shutdown into a panic: say so and keep the
    // exit status.
    let line = serde_json::to_string(&report)?;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        tracing::error!("Cannot write the run report: {e}");
    }
    if !linger.is_zero() {
        // The exporter runs on its own thread, so /metrics stays up with the final counts.
        tracing::info!("Serving the final metrics for {linger:?} more");
        std::thread::sleep(linger);
    }
    Ok(ExitCode::from(report.exit_code as u8))
}

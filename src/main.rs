//! The `mandrill` binary: parse flags, set up logs and metrics, run, print the report.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use std::sync::Arc;

use mandrill::cli::{ArgsError, Cli, Command};
use mandrill::config::{ConfigSource, OnSighup};
use mandrill::{app, dashboard, history, logging, metrics, publish};

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

/// Prints a shell's completion script or the manual page.
fn print_docs() -> anyhow::Result<ExitCode> {
    use clap::Parser as _;
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Made whole first: the generator panics on a failed write, and a reader such as
    // `head` may close the pipe early, which is no error.
    let mut text = Vec::new();
    match cli.subcommand {
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command_full(), "mandrill", &mut text);
        }
        Some(Command::Man) => mandrill::cli::man_page(&mut text)?,
        _ => unreachable!("only called for completions and man"),
    }
    match std::io::stdout().lock().write_all(&text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn run() -> anyhow::Result<ExitCode> {
    // Before anything else: a signal during start-up takes the ordered path once the
    // service runs. The subcommands keep the default actions. A word that merely looks
    // like one (a value such as `--command publish`) only skips this.
    let subcommand = std::env::args_os().skip(1).any(|a| {
        ["publish", "history", "completions", "man"]
            .iter()
            .any(|c| a == *c)
    });
    let early = if subcommand {
        Ok(())
    } else {
        app::catch_signals_early()
    };
    // Completions and the manual need neither the environment nor a config file, so a
    // broken one does not keep them from a user.
    let first = std::env::args().nth(1);
    if matches!(first.as_deref(), Some("completions" | "man")) {
        return print_docs();
    }
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
    // The dashboard's feed hears the log's events, so it is on before logging starts.
    let page = cli.dashboard.map(|addr| (addr, dashboard::enable()));
    // Dropped at the end of `main`, which flushes every buffered log line.
    let _log = logging::init(cli.log, cli.log_format);
    for warning in &cli.warnings {
        tracing::warn!("{warning}");
    }
    if let Err(e) = early {
        tracing::warn!("Cannot catch signals at start-up ({e}); they are caught once running");
    }
    let health = Arc::new(metrics::Health::default());
    let served = match cli.metrics_addr {
        Some(addr) => {
            let bound = metrics::serve(addr, health.clone())
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            Some(format!("http://{bound}/metrics"))
        }
        None => None,
    };
    let page = match page {
        Some((addr, feed)) => {
            let bound = dashboard::serve(addr, feed)
                .with_context(|| format!("cannot serve the dashboard on {addr}"))?;
            Some(format!("http://{bound}/"))
        }
        None => None,
    };
    let config_read = cli
        .config_read
        .as_ref()
        .map_or("none".to_string(), |p| p.display().to_string());
    let linger = cli.metrics_linger;
    let mut config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    config.health = health;
    tracing::info!(
        "mandrill {} starting: {}; metrics {}; config file {config_read}",
        env!("CARGO_PKG_VERSION"),
        config.describe(),
        served.as_deref().unwrap_or("off")
    );
    if let Some(url) = served {
        tracing::info!("Serving Prometheus metrics at {url}, probes at /healthz and /readyz");
    }
    if let Some(url) = page {
        tracing::info!("Serving the supervision dashboard at {url}");
    }
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
        tracing::info!("Serving the final metrics for {linger:?} more");
    }
    if std::io::stderr().is_terminal() {
        // The last thing a person sees: after every log line, which the flush writes out.
        logging::flush();
        eprint!("{}", report.summary());
    }
    if !linger.is_zero() {
        // The exporter runs on its own thread, so /metrics stays up with the final counts.
        std::thread::sleep(linger);
    }
    Ok(ExitCode::from(report.exit_code as u8))
}

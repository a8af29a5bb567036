//! The `mandrill` binary: parse flags, set up logs, run, print the report.

use std::io::Write;
use std::process::ExitCode;

use mandrill::cli::{ArgsError, Cli};
use mandrill::{app, logging};

fn main() -> anyhow::Result<ExitCode> {
    let cli = match Cli::parse_with_file(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ArgsError::Clap(e)) => e.exit(),
        Err(ArgsError::File(e)) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    logging::init(cli.log);
    // Panics inside handlers are caught and logged by the supervision guard; the default
    // hook would print a second, unformatted report of each one. Keep the location for
    // debugging only.
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!(
            "panic at {}",
            info.location().map_or("?".into(), |l| l.to_string())
        );
    }));
    let report = app::run(cli.into_config())?;
    // A closed stdout must not turn a clean shutdown into a panic: say so and keep the
    // exit status.
    let line = serde_json::to_string(&report)?;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        tracing::error!("Cannot write the run report: {e}");
    }
    Ok(ExitCode::from(report.exit_code as u8))
}

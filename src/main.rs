//! The `mandrill` binary: parse flags, set up logs, run, print the report.

use std::process::ExitCode;

use clap::Parser;
use mandrill::{app, cli::Cli, logging};

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
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
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::from(report.exit_code as u8))
}

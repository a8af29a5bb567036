//! Rest-for-one: when an actor fails, it and every actor started after it restart.
//!
//!     cargo run --example rest_for_one
//!     cargo run --example rest_for_one -- --dashboard 8080 --slow   # watch it live

mod common;

use clap::Parser;
use mandrill::config::Strategy;

fn main() -> anyhow::Result<()> {
    let options = common::Options::parse();
    let r = common::run(&options, Strategy::RestForOne)?;
    common::narrate(Strategy::RestForOne, &r);
    Ok(())
}

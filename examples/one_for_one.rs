//! One-for-one: when an actor fails, only that actor restarts.
//!
//!     cargo run --example one_for_one
//!     cargo run --example one_for_one -- --dashboard 8080 --slow   # watch it live

mod common;

use clap::Parser;
use mandrill::config::Strategy;

fn main() -> anyhow::Result<()> {
    let options = common::Options::parse();
    let r = common::run(&options, Strategy::OneForOne)?;
    common::narrate(Strategy::OneForOne, &r);
    Ok(())
}

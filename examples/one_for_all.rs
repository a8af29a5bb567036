//! One-for-all: when an actor fails, every actor under the supervisor restarts, as OTP
//! does for children that only make sense together.
//!
//!     cargo run --example one_for_all
//!     cargo run --example one_for_all -- --dashboard 8080 --slow   # watch it live

mod common;

use clap::Parser;
use mandrill::config::Strategy;

fn main() -> anyhow::Result<()> {
    let options = common::Options::parse();
    let r = common::run(&options, Strategy::OneForAll)?;
    common::narrate(Strategy::OneForAll, &r);
    Ok(())
}

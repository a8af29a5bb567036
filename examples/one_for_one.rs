//! One-for-one: when an actor fails, only that actor restarts.
//!
//!     cargo run --example one_for_one

mod common;

use mandrill::config::Strategy;

fn main() -> anyhow::Result<()> {
    let r = common::run(Strategy::OneForOne)?;
    common::narrate(
        "Under one-for-one, each saver panic restarted the saver alone; its siblings kept \
         their state and never noticed.",
        &r,
    );
    Ok(())
}

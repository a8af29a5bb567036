//! One-for-all: when an actor fails, every actor under the supervisor restarts.
//!
//!     cargo run --example one_for_all

mod common;

use mandrill::config::Strategy;

fn main() -> anyhow::Result<()> {
    let r = common::run(Strategy::OneForAll)?;
    common::narrate(
        "Under one-for-all, each saver panic restarted all five actors, as OTP does for \
         children that only make sense together. The Acker's restart nacked its whole \
         in-flight table, so more messages were redelivered than under one-for-one.",
        &r,
    );
    println!("Redeliveries: {}", r.counts.redelivered);
    Ok(())
}

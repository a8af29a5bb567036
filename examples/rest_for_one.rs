//! Rest-for-one: when an actor fails, it and every actor started after it restart.
//!
//!     cargo run --example rest_for_one

mod common;

use mandrill::config::Strategy;

fn main() -> anyhow::Result<()> {
    let r = common::run(Strategy::RestForOne)?;
    common::narrate(
        "Under rest-for-one, each saver panic restarted the saver and the actors started \
         after it (restarter, consumer, publisher); the acker, started before it, kept \
         its state.",
        &r,
    );
    Ok(())
}

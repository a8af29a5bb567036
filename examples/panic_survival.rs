//! Watch supervision keep a pipeline whole while its actors panic.
//!
//! Runs 5,000 messages through the real pipeline in process, with panics injected into
//! every actor, and prints what the supervisor did and how every message ended.
//!
//!     cargo run --example panic_survival
//!     cargo run --example panic_survival -- --dashboard 8080 --slow   # watch it live

mod common;

use clap::Parser;
use mandrill::config::Config;

fn main() -> anyhow::Result<()> {
    let options = common::Options::parse();
    let config = Config {
        failure_rate: 0.1,
        faults: "panic:consumer=0.02,panic:saver=0.05,panic:restarter=0.05,panic:acker=0.02"
            .parse()?,
        ..common::config()
    };
    let r = common::run_with(&options, config)?;
    let c = r.counts;
    println!(
        "{} panics were caught and logged as `Caught exception`.",
        c.panics
    );
    println!(
        "{} actor restarts followed, each in place: the same address, fresh state.",
        c.actor_restarts
    );
    println!(
        "Messages the failed actors held were nacked and redelivered ({} nacks in all, failed restarts included; {} redeliveries).",
        c.nacked, c.redelivered
    );
    println!(
        "Of {} published: {} acked, {} dead-lettered after 5 deliveries, {} still pending.",
        c.published, c.acked, c.dead_lettered, r.pending_at_exit
    );
    println!(
        "Conservation (published == acked + dead_lettered + pending): {}",
        if r.conserved() { "holds" } else { "BROKEN" }
    );
    Ok(())
}

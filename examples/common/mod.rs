//! What the examples share: run a small pipeline in process with actors made
//! to fail, then tell what the supervisor did.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::time::Duration;

use mandrill::app;
use mandrill::config::{Config, StoreKind, Strategy};
use mandrill::report::Report;

/// A fast in-process run of 5,000 messages, with no restart failures, no escalation,
/// and small pulls: many handler calls, and so many chances to panic.
pub fn config() -> Config {
    Config {
        messages: Some(5_000),
        publish_delay: Duration::ZERO,
        publish_jitter: false,
        io_delay: Duration::ZERO,
        failure_rate: 0.0,
        seed: Some(2019),
        store: StoreKind::Memory,
        max_in_flight: 50,
        batch_size: 50,
        max_restarts: 1_000,
        handle_signals: false,
        ..Config::default()
    }
}

/// Runs `config()` with panics injected into the Saver only (one handler call in ten),
/// under `strategy`.
pub fn run(strategy: Strategy) -> anyhow::Result<Report> {
    // Lifecycle lines only: the supervision events, without per-message noise.
    let _log = mandrill::logging::init(
        mandrill::logging::LogLevel::None,
        mandrill::logging::LogFormat::Text,
    );
    let config = Config {
        strategy,
        faults: "panic:saver=0.1".parse()?,
        ..config()
    };
    let report = app::run(config)?;
    anyhow::ensure!(report.conserved(), "a message was lost");
    Ok(report)
}

/// Prints what happened to each actor, in start order.
pub fn narrate(what: &str, r: &Report) {
    println!("\n{what}");
    println!("The saver panicked {} times.", r.counts.panics);
    for name in ["acker", "saver", "restarter", "consumer", "publisher"] {
        if let Some(s) = r.supervision.get(name) {
            let failures: u64 = s.failures.values().sum();
            println!(
                "  {name:<9} failed {failures:>3} times, restarted {:>3} times",
                s.restarts
            );
        }
    }
    println!(
        "Every message still ended well: {} acked, {} dead-lettered, {} pending of {} published.",
        r.counts.acked, r.counts.dead_lettered, r.pending_at_exit, r.counts.published
    );
}

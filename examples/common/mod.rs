//! What the examples share: run a small pipeline in process with actors made
//! to fail, then tell what the supervisor did, from what the run did.
//!
//! Every example takes `--dashboard ADDR` to watch the run live in a browser, and
//! `--slow` to play it at a pace a person can follow there.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::time::Duration;

use clap::Parser;
use mandrill::app;
use mandrill::config::{Config, StoreKind, Strategy};
use mandrill::report::Report;

/// How an example runs.
#[derive(Debug, Default, Parser)]
pub struct Options {
    /// Serve the live supervision dashboard at http://ADDR/ while the run plays out; a
    /// port alone is on loopback.
    #[arg(long, value_name = "ADDR")]
    pub dashboard: Option<String>,

    /// Play the run at a human pace: 20 messages a second, each taking 50 ms of IO, for
    /// about 30 s, so that each restart can be followed on the dashboard.
    #[arg(long)]
    pub slow: bool,

    /// How long the dashboard stays up after the run, showing how it ended.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub linger: u64,
}

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

/// The same run slowed for a person to watch: about 30 s at 20 messages a second, and
/// panics often enough to see several.
fn slowed(config: Config) -> Config {
    Config {
        messages: Some(600),
        publish_rate: Some(20.0),
        io_delay: Duration::from_millis(50),
        io_jitter: false,
        max_in_flight: 5,
        batch_size: 5,
        ..config
    }
}

/// Runs `config` as `options` say: slowed, and with the dashboard up during the run and
/// for `--linger` after it.
pub fn run_with(options: &Options, config: Config) -> anyhow::Result<Report> {
    let feed = options
        .dashboard
        .as_ref()
        .map(|_| mandrill::dashboard::enable());
    // Lifecycle lines only: the supervision events, without per-message noise.
    let _log = mandrill::logging::init(
        mandrill::logging::LogLevel::None,
        mandrill::logging::LogFormat::Text,
    );
    if let (Some(addr), Some(feed)) = (&options.dashboard, feed) {
        let addr = match addr.parse::<u16>() {
            Ok(port) => std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => addr.parse()?,
        };
        let bound = mandrill::dashboard::serve(addr, feed)?;
        println!("Watch it live at http://{bound}/");
    }
    let config = if options.slow { slowed(config) } else { config };
    let report = app::run(config)?;
    anyhow::ensure!(report.conserved(), "a message was lost");
    if options.dashboard.is_some() && options.linger > 0 {
        println!(
            "The dashboard shows how the run ended for {} s more; Ctrl-C ends it sooner.",
            options.linger
        );
        std::thread::sleep(Duration::from_secs(options.linger));
    }
    Ok(report)
}

/// Runs `config()` with panics injected into the Saver only (one handler call in ten),
/// under `strategy`.
pub fn run(options: &Options, strategy: Strategy) -> anyhow::Result<Report> {
    let config = Config {
        strategy,
        faults: "panic:saver=0.1".parse()?,
        ..config()
    };
    run_with(options, config)
}

/// The children the examples tell of, in start order.
pub const CHILDREN: [&str; 5] = ["acker", "saver", "restarter", "consumer", "publisher"];

/// What the strategy did with the saver's panics, told from the run's report alone:
/// which siblings restarted with each panic, which only with some, and which kept their
/// state.
pub fn story(strategy: Strategy, r: &Report) -> String {
    let saver = &r.supervision["saver"];
    let panics = saver.failures.get("panic").copied().unwrap_or(0);
    let mut with_each = Vec::new();
    let mut with_some = Vec::new();
    let mut kept = Vec::new();
    let mut finished = Vec::new();
    for name in CHILDREN.iter().filter(|n| **n != "saver") {
        let Some(s) = r.supervision.get(*name) else {
            continue;
        };
        match s.restarts {
            0 if s.stopped => finished.push(name.to_string()),
            0 => kept.push(name.to_string()),
            n if n == panics => with_each.push(name.to_string()),
            n => {
                let why = if s.stopped {
                    ", until it stopped for good once its work was done"
                } else {
                    ""
                };
                with_some.push(format!("the {name} only {n} of those times{why}"))
            }
        }
    }
    let strategy = strategy.as_str();
    let mut out = format!(
        "Under {strategy}, the saver panicked {panics} times and was restarted {} times.",
        saver.restarts
    );
    out.push_str(&match with_each.as_slice() {
        [] => " No sibling restarted with it every time.".to_string(),
        names => format!(" Each panic restarted the {} with it.", list(names)),
    });
    if !with_some.is_empty() {
        out.push_str(&format!(" It restarted {}.", list(&with_some)));
    }
    if !kept.is_empty() {
        let verb = if kept.len() == 1 { "was" } else { "were" };
        out.push_str(&format!(
            " The {} {verb} never restarted and kept {} state.",
            list(&kept),
            if kept.len() == 1 { "its" } else { "their" }
        ));
    }
    if !finished.is_empty() {
        out.push_str(&format!(
            " The {} {} never restarted: stopped for good, as a transient child is once \
             its work is done, no strategy starts it again.",
            list(&finished),
            if finished.len() == 1 { "was" } else { "were" }
        ));
    }
    out.push_str(&format!(
        " {} deliveries were redelivered.",
        r.counts.redelivered
    ));
    out
}

/// `a`, `a and b`, `a, b and c`.
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Prints the story and what happened to each actor, in start order.
pub fn narrate(strategy: Strategy, r: &Report) {
    println!("\n{}", story(strategy, r));
    for name in CHILDREN {
        if let Some(s) = r.supervision.get(name) {
            let failures: u64 = s.failures.values().sum();
            println!(
                "  {name:<9} failed {failures:>3} times, restarted {:>3} times{}",
                s.restarts,
                if s.stopped { ", then stopped" } else { "" }
            );
        }
    }
    println!(
        "Every message still ended well: {} acked, {} dead-lettered, {} pending of {} published.",
        r.counts.acked, r.counts.dead_lettered, r.pending_at_exit, r.counts.published
    );
}

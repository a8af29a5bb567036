//! Scenario 2, panics: 100k messages with panics injected into every actor at 1% and at
//! 10% of handler calls, the restart intensity raised so that the run finishes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::util::{binary, inspect, last_report, Options, Section};

/// Runs the scenario: 100,000 messages at each rate, or 5,000 in the slice.
pub fn run(o: &Options) -> Section {
    let messages = if o.quick { 5_000 } else { 100_000 };
    eprintln!("2. panics: {messages} messages, every actor at 1% and at 10%");
    let runs: Vec<PanicRun> = [0.01, 0.1]
        .into_iter()
        .map(|rate| panic_run(rate, messages, &o.scratch))
        .collect();
    let mut out = Section::default();
    for p in &runs {
        if p.lost != 0 || p.exit_code != Some(0) || p.rows < p.acked as i64 {
            out.failures.push(format!("panic run at {}: {p:?}", p.rate));
        }
        let name = format!("2. panics at {:.0}%", p.rate * 100.0);
        out.row(
            &name,
            "lost; acked, dead-lettered, pending of published",
            format!(
                "{}; {}, {}, {} of {}",
                p.lost, p.acked, p.dead_lettered, p.pending_at_exit, p.published
            ),
        );
        out.row(
            &name,
            "panics; actor restarts; rows (saved)",
            format!(
                "{}; {}; {} ({})",
                p.panics, p.actor_restarts, p.rows, p.saved
            ),
        );
    }
    out.runs("panics", &runs);
    out
}

/// One panic run.
#[derive(Debug, Serialize)]
struct PanicRun {
    rate: f64,
    messages: u64,
    exit_code: Option<i32>,
    published: u64,
    acked: u64,
    dead_lettered: u64,
    pending_at_exit: u64,
    lost: i64,
    panics: u64,
    actor_restarts: u64,
    saved: u64,
    rows: i64,
    seconds: f64,
}

fn panic_run(rate: f64, messages: u64, dir: &Path) -> PanicRun {
    let db = dir.join(format!("panics-{rate}.db"));
    let inject = ["publisher", "consumer", "saver", "restarter", "acker"]
        .map(|a| format!("panic:{a}={rate}"))
        .join(",");
    let start = Instant::now();
    let out = Command::new(binary())
        .args(["--messages", &messages.to_string(), "--publish-delay", "0"])
        .args([
            "--io-delay",
            "0",
            "--log",
            "none",
            "--max-restarts",
            "10000000",
        ])
        .args(["--inject", &inject, "--seed", "1"])
        // Small batches: many handler calls, and so many chances to panic.
        .args(["--batch-size", "5", "--max-in-flight", "20"])
        .arg("--db")
        .arg(&db)
        .env("XDG_CONFIG_HOME", dir)
        .stderr(Stdio::null())
        .output()
        .expect("run mandrill");
    let seconds = start.elapsed().as_secs_f64();
    let r = last_report(&out.stdout).unwrap_or(Value::Null);
    let n = |f: &str| r[f].as_u64().unwrap_or(0);
    let (_, rows) = inspect(&db);
    PanicRun {
        rate,
        messages,
        exit_code: out.status.code(),
        published: n("published"),
        acked: n("acked"),
        dead_lettered: n("dead_lettered"),
        pending_at_exit: n("pending_at_exit"),
        lost: n("published") as i64
            - (n("acked") + n("dead_lettered") + n("pending_at_exit")) as i64,
        panics: n("panics"),
        actor_restarts: n("actor_restarts"),
        saved: n("saved"),
        rows,
        seconds,
    }
}

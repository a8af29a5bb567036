//! Runs the service's performance workloads on the release binary and prints a markdown
//! table of medians. Run it with `just bench`, which builds the binary first.
//!
//! Workloads (each run three times):
//! - in-memory: 200k messages, no IO delay, no per-message logs, failure rate 0.25, one
//!   delivery, memory store;
//! - durable: the same into a SQLite file;
//! - raw store: 200k fresh messages inserted straight into `SqliteStore`, 1000 a
//!   transaction, with no pipeline: the ceiling the durable pipeline runs against;
//! - shutdown: an unbounded publisher with 1 s of IO per step and no drain or shield
//!   time, SIGTERM after 2 s: time from the signal to exit.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const RUNS: usize = 3;

fn binary() -> PathBuf {
    // Examples live in target/<profile>/examples; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("mandrill");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first",
        bin.display()
    );
    bin
}

const PIPELINE: &[&str] = &[
    "--messages",
    "200000",
    "--publish-delay",
    "0",
    "--io-delay",
    "0",
    "--failure-rate",
    "0.25",
    "--max-deliveries",
    "1",
    "--log",
    "none",
    "--seed",
    "1",
];

fn report(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str(text.lines().last().expect("a report line")).expect("json report")
}

fn conserved(r: &Value) -> bool {
    let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
    n("published") == n("acked") + n("dead_lettered") + n("pending_at_exit")
}

fn pipeline(extra: &[&str]) -> f64 {
    let out = Command::new(binary())
        .args(PIPELINE)
        .args(extra)
        .stderr(Stdio::null())
        .output()
        .expect("run mandrill");
    assert!(out.status.success(), "{:?}", out.status);
    let r = report(&out.stdout);
    assert!(conserved(&r), "invariant broken: {r}");
    r["msgs_per_s"].as_f64().expect("msgs_per_s")
}

fn shutdown(db: &str) -> (f64, u64, bool) {
    let child = Command::new(binary())
        .args([
            "--publish-delay",
            "0",
            "--io-delay",
            "1",
            "--drain-timeout",
            "0",
            "--shield-timeout",
            "0",
            "--log",
            "none",
            "--db",
            db,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mandrill");
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    let out = child.wait_with_output().expect("wait");
    let ms = sent.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "{:?}", out.status);
    let r = report(&out.stdout);
    (
        ms,
        r["nacked_on_shutdown"].as_u64().unwrap_or(0),
        conserved(&r),
    )
}

/// Rows per second for batched inserts straight into the store, no actors involved.
fn raw_store(path: &std::path::Path) -> f64 {
    use mandrill::message::{InstanceName, Message};
    use mandrill::store::{sqlite::SqliteStore, SaveRow, Store};
    let mut store = SqliteStore::open(path).expect("open store");
    let name = InstanceName::parse("cattle-zpsk").expect("valid name");
    let rows: Vec<SaveRow> = (0..200_000)
        .map(|_| SaveRow {
            message: Message::new(name),
            attempt: 1,
        })
        .collect();
    let start = Instant::now();
    for batch in rows.chunks(1000) {
        store.save(batch).expect("save");
    }
    let rate = rows.len() as f64 / start.elapsed().as_secs_f64();
    store.close().expect("close");
    rate
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    xs[xs.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = |i: usize| {
        dir.path()
            .join(format!("bench-{i}.db"))
            .display()
            .to_string()
    };

    let memory: Vec<f64> = (0..RUNS)
        .map(|_| pipeline(&["--store", "memory"]))
        .collect();
    let durable: Vec<f64> = (0..RUNS).map(|i| pipeline(&["--db", &db(i)])).collect();
    let raw: Vec<f64> = (0..RUNS)
        .map(|i| raw_store(&dir.path().join(format!("raw-{i}.db"))))
        .collect();
    let shutdowns: Vec<_> = (0..RUNS).map(|i| shutdown(&db(100 + i))).collect();

    let fmt = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("| workload | runs | median | target |");
    println!("|---|---|---|---|");
    println!(
        "| in-memory pipeline (msgs/s) | {} | {:.0} | >= 500000 |",
        fmt(&memory),
        median(memory.clone())
    );
    println!(
        "| durable pipeline (msgs/s) | {} | {:.0} | >= 200000 |",
        fmt(&durable),
        median(durable.clone())
    );
    println!(
        "| raw batched insert, same schema (rows/s) | {} | {:.0} | ceiling for the above |",
        fmt(&raw),
        median(raw.clone())
    );
    let ms: Vec<f64> = shutdowns.iter().map(|s| s.0).collect();
    println!(
        "| SIGTERM to exit (ms) | {} | {:.0} | <= 200 |",
        fmt(&ms),
        median(ms.clone())
    );
    for (ms, nacked, ok) in &shutdowns {
        println!("shutdown run: {ms:.0} ms, {nacked} nacked on shutdown, invariant holds: {ok}");
    }
}

//! Scenario 1, signals: SIGTERM, SIGINT or SIGHUP at a random moment in the first 3 s,
//! over a mix of stores, IO delays and drain timeouts; and runs where a second signal
//! follows the first by 10 to 100 ms.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::util::{
    binary, conserved, exit_within, inspect, last_report, median, percentile, started, Options,
    Section,
};

/// How long a run may take past its signal before it counts as hung and is killed.
pub const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Runs the scenario: 200 runs with one signal and 40 with two, or 6 and 2 in the slice.
pub fn run(o: &Options) -> Section {
    let (single, double) = if o.quick { (6, 2) } else { (200, 40) };
    eprintln!("1. signals: {single} runs, and {double} with a second signal");
    let s: Vec<SignalRun> = (0..single + double)
        .map(|i| signal_run(o.seed + i as u64, &o.scratch, i >= single))
        .collect();
    let mut out = Section::default();
    for x in &s {
        let broke = x.hung
            || x.conserved == Some(false)
            || x.integrity_ok == Some(false)
            || x.saved_equals_rows == Some(false)
            || (x.second.is_none() && !x.report);
        if broke {
            out.failures
                .push(format!("signal run, seed {}: {x:?}", x.seed));
        }
    }
    let count = |f: &dyn Fn(&SignalRun) -> bool| s.iter().filter(|x| f(x)).count();
    let mut exits = std::collections::BTreeMap::new();
    for x in &s {
        let key = match (x.exit_code, x.killed_by) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown".into(),
        };
        *exits.entry(key).or_insert(0) += 1;
    }
    let exits: Vec<String> = exits.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let ms: Vec<f64> = s.iter().map(|x| x.signal_to_exit_ms).collect();
    let name = "1. signals";
    out.row(
        name,
        "runs (a second signal in)",
        format!("{} ({})", s.len(), count(&|x| x.second.is_some())),
    );
    out.row(name, "exits", exits.join("; "));
    out.row(name, "reports printed", count(&|x| x.report));
    out.row(
        name,
        "invariant held, of those",
        count(&|x| x.conserved == Some(true)),
    );
    out.row(
        name,
        &format!(
            "SQLite `integrity_check` ok, of {}",
            count(&|x| x.integrity_ok.is_some())
        ),
        count(&|x| x.integrity_ok == Some(true)),
    );
    out.row(
        name,
        &format!(
            "`saved` equal to the row count, of {}",
            count(&|x| x.saved_equals_rows.is_some())
        ),
        count(&|x| x.saved_equals_rows == Some(true)),
    );
    out.row(
        name,
        &format!("hung past {} s", EXIT_LIMIT.as_secs()),
        count(&|x| x.hung),
    );
    out.row(
        name,
        "signal to exit, ms: p50, p90, p99, max",
        format!(
            "{:.0}, {:.0}, {:.0}, {:.0}",
            median(&ms),
            percentile(&ms, 0.9),
            percentile(&ms, 0.99),
            percentile(&ms, 1.0)
        ),
    );
    out.runs("signals", &s);
    out
}

/// One signal run: what was done to it, and what came of it.
#[derive(Debug, Serialize)]
pub struct SignalRun {
    seed: u64,
    store: &'static str,
    io_delay: f64,
    drain: f64,
    signal: &'static str,
    at_ms: u64,
    /// A second signal and how long after the first, for the runs that send one.
    second: Option<(&'static str, u64)>,
    exit_code: Option<i32>,
    killed_by: Option<i32>,
    hung: bool,
    report: bool,
    conserved: Option<bool>,
    integrity_ok: Option<bool>,
    saved_equals_rows: Option<bool>,
    signal_to_exit_ms: f64,
}

const SIGNALS: [(Signal, &str); 3] = [
    (Signal::SIGTERM, "SIGTERM"),
    (Signal::SIGINT, "SIGINT"),
    (Signal::SIGHUP, "SIGHUP"),
];

fn signal_run(seed: u64, dir: &Path, second: bool) -> SignalRun {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sqlite = rng.random_bool(0.7);
    let io_delay = [0.0, 0.01, 0.1, 1.0][rng.random_range(0..4)];
    let drain = [0.1, 1.0, 5.0][rng.random_range(0..3)];
    let (signal, name) = SIGNALS[rng.random_range(0..3)];
    let at_ms = rng.random_range(0..3000);
    let second = second.then(|| {
        let (s, n) = SIGNALS[rng.random_range(0..2)];
        (s, n, rng.random_range(10..=100))
    });
    let db = dir.join(format!("signals-{seed}.db"));
    let mut cmd = Command::new(binary());
    cmd.args([
        "--publish-delay",
        "0.001",
        "--log",
        "none",
        "--seed",
        &seed.to_string(),
    ])
    .args([
        "--io-delay",
        &io_delay.to_string(),
        "--drain-timeout",
        &drain.to_string(),
    ])
    .env("XDG_CONFIG_HOME", dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if sqlite {
        cmd.arg("--db").arg(&db);
    } else {
        cmd.args(["--store", "memory"]);
    }
    let mut child = cmd.spawn().expect("run mandrill");
    started(child.id(), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(at_ms));
    let pid = Pid::from_raw(child.id() as i32);
    let sent = Instant::now();
    let _ = kill(pid, signal);
    if let Some((s, _, after)) = second {
        std::thread::sleep(Duration::from_millis(after));
        let _ = kill(pid, s);
    }
    let (status, hung) = exit_within(&mut child, EXIT_LIMIT);
    let took = sent.elapsed();
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_end(&mut stdout);
    }
    let report = last_report(&stdout);
    let (integrity_ok, saved_equals_rows) = match (&report, sqlite && db.exists()) {
        (_, false) => (None, None),
        (r, true) => {
            let (ok, rows) = inspect(&db);
            let saved = r.as_ref().and_then(|r| r["saved"].as_i64());
            (Some(ok), saved.map(|s| s == rows))
        }
    };
    use std::os::unix::process::ExitStatusExt;
    SignalRun {
        seed,
        store: if sqlite { "sqlite" } else { "memory" },
        io_delay,
        drain,
        signal: name,
        at_ms,
        second: second.map(|(_, n, after)| (n, after)),
        exit_code: status.and_then(|s| s.code()),
        killed_by: status.and_then(|s| s.signal()),
        hung,
        report: report.is_some(),
        conserved: report.as_ref().map(conserved),
        integrity_ok,
        saved_equals_rows,
        signal_to_exit_ms: took.as_secs_f64() * 1000.0,
    }
}

//! The torture suite: scenarios that try to make the service lose a message, on the
//! release binary. Every scenario is bounded in runs and in time, and seeded, so that a
//! run can be replayed with `--seed`. It prints a table and writes
//! `target/torture/torture.json`; `RELIABILITY.md` holds the last full run.
//!
//!     cargo run --release --example torture -- [--quick] [--seed N] [OUT_DIR]
//!
//! `--quick` is the slice CI runs: a few runs of each scenario.
//!
//! Scenarios so far:
//! 1. Signals: SIGTERM, SIGINT or SIGHUP at a random moment in the first 3 s, over a mix
//!    of stores, IO delays and drain timeouts; and runs where a second signal follows the
//!    first by 10 to 100 ms.
//! 2. Panics: panics injected into every actor at 1% and at 10% of handler calls.
//! 4. Store faults, so far one: a SIGKILL mid-run, then a restart on the same file.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use support::{binary, median};

/// How long a run may take past its signal before it counts as hung and is killed.
const EXIT_LIMIT: Duration = Duration::from_secs(60);

struct Options {
    quick: bool,
    seed: u64,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        quick: false,
        seed: 2019,
        out: PathBuf::from("target/torture"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--seed" => {
                o.seed = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seed takes a number")
            }
            dir => o.out = PathBuf::from(dir),
        }
    }
    o
}

/// One signal run: what was done to it, and what came of it.
#[derive(Debug, Serialize)]
struct SignalRun {
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

/// One SIGKILL mid-run, and the run after it on the same file.
#[derive(Debug, Serialize)]
struct KillRun {
    seed: u64,
    killed_at_ms: u64,
    /// `integrity_check` of the file the killed process left.
    integrity_ok: bool,
    rows_left: i64,
    /// The next run on the file: its exit, whether its report balanced, and whether what
    /// it saved is what the file gained.
    restart_exit: Option<i32>,
    restart_conserved: bool,
    restart_saved_equals_new_rows: bool,
    /// From starting the next run to its exit, with 1,000 messages to handle.
    recovery_ms: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    seed: u64,
    quick: bool,
    signals: Vec<SignalRun>,
    panics: Vec<PanicRun>,
    kills: Vec<KillRun>,
}

const SIGNALS: [(Signal, &str); 3] = [
    (Signal::SIGTERM, "SIGTERM"),
    (Signal::SIGINT, "SIGINT"),
    (Signal::SIGHUP, "SIGHUP"),
];

/// Waits until the child runs the binary itself, not the shell or loader before it.
fn started(pid: u32, limit: Duration) {
    let want = std::fs::canonicalize(binary()).expect("the binary");
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == want) {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits for the child to exit, up to `limit`; kills it past that.
fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, bool) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (Some(status), false);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return (child.wait().ok(), true);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn conserved(r: &Value) -> bool {
    let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
    n("published") == n("acked") + n("dead_lettered") + n("pending_at_exit")
}

/// `PRAGMA integrity_check`, and the row count of the messages, of a SQLite file.
fn inspect(db: &Path) -> (bool, i64) {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap_or(-1);
    (check == "ok", rows)
}

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
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut stdout);
    }
    let report: Option<Value> = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
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
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
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

fn kill_run(seed: u64, dir: &Path) -> KillRun {
    let mut rng = SmallRng::seed_from_u64(seed);
    let killed_at_ms = rng.random_range(200..2000);
    let db = dir.join(format!("kill-{seed}.db"));
    let mut child = Command::new(binary())
        .args([
            "--publish-delay",
            "0.001",
            "--io-delay",
            "0.01",
            "--log",
            "none",
        ])
        .args(["--seed", &seed.to_string()])
        .arg("--db")
        .arg(&db)
        .env("XDG_CONFIG_HOME", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mandrill");
    started(child.id(), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(killed_at_ms));
    let _ = child.kill();
    let _ = child.wait();
    let (integrity_ok, rows_left) = inspect(&db);
    let start = Instant::now();
    let out = Command::new(binary())
        .args([
            "--messages",
            "1000",
            "--publish-delay",
            "0",
            "--io-delay",
            "0.001",
        ])
        .args(["--log", "none", "--seed", &(seed + 1).to_string()])
        .arg("--db")
        .arg(&db)
        .env("XDG_CONFIG_HOME", dir)
        .stderr(Stdio::null())
        .output()
        .expect("run mandrill again");
    let recovery_ms = start.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Option<Value> = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    let (_, rows) = inspect(&db);
    KillRun {
        seed,
        killed_at_ms,
        integrity_ok,
        rows_left,
        restart_exit: out.status.code(),
        restart_conserved: report.as_ref().is_some_and(conserved),
        restart_saved_equals_new_rows: report
            .as_ref()
            .and_then(|r| r["saved"].as_i64())
            .is_some_and(|saved| saved == rows - rows_left),
        recovery_ms,
    }
}

fn main() {
    let o = options();
    std::fs::create_dir_all(&o.out).expect("the output directory");
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let (single, double) = if o.quick { (6, 2) } else { (200, 40) };
    eprintln!("1. signals: {single} runs, and {double} with a second signal");
    let signals: Vec<SignalRun> = (0..single + double)
        .map(|i| signal_run(o.seed + i as u64, scratch.path(), i >= single))
        .collect();
    let messages = if o.quick { 5_000 } else { 100_000 };
    eprintln!("2. panics: {messages} messages, every actor at 1% and at 10%");
    let panics: Vec<PanicRun> = [0.01, 0.1]
        .into_iter()
        .map(|rate| panic_run(rate, messages, scratch.path()))
        .collect();
    let kills = if o.quick { 2 } else { 20 };
    eprintln!("4. store faults: {kills} SIGKILLs mid-run, each followed by a run on the file");
    let kills: Vec<KillRun> = (0..kills)
        .map(|i| kill_run(o.seed + 10_000 + i as u64, scratch.path()))
        .collect();
    let r = Results {
        seed: o.seed,
        quick: o.quick,
        signals,
        panics,
        kills,
    };
    table(&r);
    let json = serde_json::to_string_pretty(&r).expect("json");
    std::fs::write(o.out.join("torture.json"), json).expect("write torture.json");
    eprintln!("wrote {}/torture.json", o.out.display());
    let failed = failures(&r);
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}

/// What broke the promise, one line each.
fn failures(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    for s in &r.signals {
        let broke = s.hung
            || s.conserved == Some(false)
            || s.integrity_ok == Some(false)
            || s.saved_equals_rows == Some(false)
            || (s.second.is_none() && !s.report);
        if broke {
            out.push(format!("signal run, seed {}: {s:?}", s.seed));
        }
    }
    for k in &r.kills {
        if !k.integrity_ok
            || k.restart_exit != Some(0)
            || !k.restart_conserved
            || !k.restart_saved_equals_new_rows
        {
            out.push(format!("kill run, seed {}: {k:?}", k.seed));
        }
    }
    for p in &r.panics {
        if p.lost != 0 || p.exit_code != Some(0) || p.rows < p.acked as i64 {
            out.push(format!("panic run at {}: {p:?}", p.rate));
        }
    }
    out
}

fn table(r: &Results) {
    let s = &r.signals;
    let count = |f: &dyn Fn(&SignalRun) -> bool| s.iter().filter(|x| f(x)).count();
    let mut exits = std::collections::BTreeMap::new();
    for x in s {
        let key = match (x.exit_code, x.killed_by) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown".into(),
        };
        *exits.entry(key).or_insert(0) += 1;
    }
    let ms: Vec<f64> = s.iter().map(|x| x.signal_to_exit_ms).collect();
    let pct = |q: f64| {
        let mut v = ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!("| scenario | figure | value |");
    println!("|---|---|---|");
    println!(
        "| 1. signals | runs (a second signal in) | {} ({}) |",
        s.len(),
        count(&|x| x.second.is_some())
    );
    println!("| 1. signals | exits | {exits:?} |");
    println!(
        "| 1. signals | reports printed | {} |",
        count(&|x| x.report)
    );
    println!(
        "| 1. signals | invariant held, of those | {} |",
        count(&|x| x.conserved == Some(true))
    );
    println!(
        "| 1. signals | SQLite integrity_check ok, of {} | {} |",
        count(&|x| x.integrity_ok.is_some()),
        count(&|x| x.integrity_ok == Some(true))
    );
    println!(
        "| 1. signals | saved equal to the rows, of {} | {} |",
        count(&|x| x.saved_equals_rows.is_some()),
        count(&|x| x.saved_equals_rows == Some(true))
    );
    println!(
        "| 1. signals | hung past {EXIT_LIMIT:?} | {} |",
        count(&|x| x.hung)
    );
    println!(
        "| 1. signals | signal to exit, ms: p50, p90, p99, max | {:.0}, {:.0}, {:.0}, {:.0} |",
        median(&ms),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    for p in &r.panics {
        println!(
            "| 2. panics at {:.0}% | lost; acked, dead-lettered, pending of published | {}; {}, {}, {} of {} |",
            p.rate * 100.0,
            p.lost,
            p.acked,
            p.dead_lettered,
            p.pending_at_exit,
            p.published
        );
        println!(
            "| 2. panics at {:.0}% | panics; actor restarts; rows (saved) | {}; {}; {} ({}) |",
            p.rate * 100.0,
            p.panics,
            p.actor_restarts,
            p.rows,
            p.saved
        );
    }
    let k = &r.kills;
    let recovery: Vec<f64> = k.iter().map(|x| x.recovery_ms).collect();
    println!(
        "| 4. SIGKILL, then a restart | runs; integrity_check ok; restarts exiting 0 and balanced; saved equal to the new rows | {}; {}; {}; {} |",
        k.len(),
        k.iter().filter(|x| x.integrity_ok).count(),
        k.iter().filter(|x| x.restart_exit == Some(0) && x.restart_conserved).count(),
        k.iter().filter(|x| x.restart_saved_equals_new_rows).count()
    );
    println!(
        "| 4. SIGKILL, then a restart | recovery, restart to exit with 1,000 messages, ms: p50, max | {:.0}, {:.0} |",
        median(&recovery),
        recovery.iter().copied().fold(0.0, f64::max)
    );
}

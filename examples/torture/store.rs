//! Scenario 4, store faults, so far one: a SIGKILL mid-run on SQLite, then a run of
//! 1,000 messages on the same file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::util::{binary, conserved, inspect, last_report, median, started, Options, Section};

/// Runs the scenario: 20 SIGKILLs, or 2 in the slice.
pub fn run(o: &Options) -> Section {
    let kills = if o.quick { 2 } else { 20 };
    eprintln!("4. store faults: {kills} SIGKILLs mid-run, each followed by a run on the file");
    let k: Vec<KillRun> = (0..kills)
        .map(|i| kill_run(o.seed + 10_000 + i as u64, &o.scratch))
        .collect();
    let mut out = Section::default();
    for x in &k {
        if !x.integrity_ok
            || x.restart_exit != Some(0)
            || !x.restart_conserved
            || !x.restart_saved_equals_new_rows
        {
            out.failures
                .push(format!("kill run, seed {}: {x:?}", x.seed));
        }
    }
    let recovery: Vec<f64> = k.iter().map(|x| x.recovery_ms).collect();
    let name = "4. SIGKILL, then a restart";
    out.row(
        name,
        "runs; `integrity_check` ok; next runs exiting 0 and balanced; their `saved` equal to the rows they added",
        format!(
            "{}; {}; {}; {}",
            k.len(),
            k.iter().filter(|x| x.integrity_ok).count(),
            k.iter()
                .filter(|x| x.restart_exit == Some(0) && x.restart_conserved)
                .count(),
            k.iter().filter(|x| x.restart_saved_equals_new_rows).count()
        ),
    );
    out.row(
        name,
        "recovery: the next run, start to exit with 1,000 messages, ms: p50, max",
        format!(
            "{:.0}, {:.0}",
            median(&recovery),
            recovery.iter().copied().fold(0.0, f64::max)
        ),
    );
    out.runs("kills", &k);
    out
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
    let report = last_report(&out.stdout);
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

//! What the scenarios share: the options, the shape of a scenario's section of the table
//! and of torture.json, and waiting on, reading and inspecting a run of the binary.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::support::{binary, median};

/// What the runner was asked for.
pub struct Options {
    /// The slice CI runs: a few runs of each scenario.
    pub quick: bool,
    /// The first seed; each run's own seed is derived from it and kept in torture.json.
    pub seed: u64,
    /// Where torture.json goes.
    pub out: PathBuf,
    /// Scratch space for databases, scripts and servers' files, removed at the end.
    pub scratch: PathBuf,
}

/// One scenario's part of the result: its runs for torture.json, its rows of the
/// table, and one line for each run that broke the promise.
#[derive(Default)]
pub struct Section {
    pub json: Vec<(&'static str, Value)>,
    pub rows: Vec<[String; 3]>,
    pub failures: Vec<String>,
}

impl Section {
    /// Adds a row of the table: the scenario, the figure, and its value.
    pub fn row(&mut self, scenario: &str, figure: &str, value: impl std::fmt::Display) {
        self.rows
            .push([scenario.to_string(), figure.to_string(), value.to_string()]);
    }

    /// Keeps a list of runs under `key` in torture.json.
    pub fn runs<T: serde::Serialize>(&mut self, key: &'static str, runs: &[T]) {
        self.json
            .push((key, serde_json::to_value(runs).expect("runs as json")));
    }
}

/// Waits until the child runs the binary itself, not the shell or loader before it.
pub fn started(pid: u32, limit: Duration) {
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
pub fn exit_within(child: &mut Child, limit: Duration) -> (Option<ExitStatus>, bool) {
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

pub fn conserved(r: &Value) -> bool {
    let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
    n("published") == n("acked") + n("dead_lettered") + n("pending_at_exit")
}

/// `PRAGMA integrity_check`, and the row count of the messages, of a SQLite file.
pub fn inspect(db: &Path) -> (bool, i64) {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap_or(-1);
    (check == "ok", rows)
}

/// The report a run printed last on stdout, if it printed one.
pub fn last_report(stdout: &[u8]) -> Option<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
}

/// The value at quantile `q` of `xs`, nearest rank; NaN for none.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

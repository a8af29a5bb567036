//! Scenario 4, store faults: a SIGKILL mid-run on SQLite, then a run of 1,000 messages on
//! the same file; a full disk under the SQLite file, then freed; the SQLite file deleted
//! under the service; the service's PostgreSQL backends terminated; and a PostgreSQL
//! server of the scenario's own stopped and started again.
//!
//! Every run but the SIGKILL's logs in JSON, so that each message acked is known by its
//! id and looked up in the store after the run: nothing may be acked that was not saved.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use postgres::{Client, NoTls};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::util::{
    binary, conserved, exit_within, inspect, last_report, median, started, Options, Section,
};

/// Runs the scenario: 20 SIGKILLs, or 2 in the slice, then 5 runs of each other fault, or
/// 1 in the slice.
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
    full_disk(o, &mut out);
    deleted_database(o, &mut out);
    postgres_terminated(o, &mut out);
    postgres_restarted(o, &mut out);
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

/// Runs of each fault after the SIGKILL's: 5, or 1 in the slice.
fn fault_runs(o: &Options) -> u64 {
    if o.quick {
        1
    } else {
        5
    }
}

/// How long a run may take to exit after its SIGTERM, or after the fault that stops it,
/// before it counts as hung and is killed.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// How long a run is given to save a message again after a fault has passed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);

/// What a log line of a saved message holds, and of an acked one.
const SAVED: &str = r#""outcome":"saved""#;
const ACKED: &str = r#""outcome":"acked""#;

/// A run of the service whose JSON log lines are read as they come, each with the moment
/// it came, so that a fault's moment can be set against what the service did after it.
struct Watched {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: std::thread::JoinHandle<()>,
}

/// A watched run once it has exited.
struct Finished {
    exit: Option<i32>,
    hung: bool,
    report: Option<Value>,
    lines: Vec<(Instant, String)>,
}

impl Watched {
    /// Runs the binary with `args`, publishing from the simulated publisher at about
    /// 600 messages a second, and logging each step in JSON.
    fn spawn(args: &[&str], dir: &Path) -> Self {
        let mut child = Command::new(binary())
            .args([
                "--publish-delay",
                "0.001",
                "--io-delay",
                "0.01",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("XDG_CONFIG_HOME", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mandrill");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let into = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                into.lock().expect("lines").push((Instant::now(), line));
            }
        });
        started(child.id(), Duration::from_secs(5));
        Self {
            child,
            lines,
            reader,
        }
    }

    /// Waits up to `limit` for a line holding `needle` that came after `after`; the
    /// moment it came.
    fn wait_for(&mut self, after: Instant, needle: &str, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|(t, l)| *t > after && l.contains(needle))
                .map(|(t, _)| *t);
            if found.is_some() {
                return found;
            }
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends SIGTERM, for the ordered shutdown.
    fn term(&self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Waits for the exit, up to `EXIT_LIMIT`, and takes the report and every log line.
    fn finish(mut self) -> Finished {
        let (status, hung) = exit_within(&mut self.child, EXIT_LIMIT);
        let mut stdout = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_end(&mut stdout);
        }
        let _ = self.reader.join();
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines"));
        Finished {
            exit: status.and_then(|s| s.code()),
            hung,
            report: last_report(&stdout),
            lines,
        }
    }
}

impl Finished {
    fn conserved(&self) -> bool {
        self.report.as_ref().is_some_and(conserved)
    }

    /// What stopped the run, as its report says.
    fn stopped_by(&self) -> Option<String> {
        self.report
            .as_ref()
            .and_then(|r| r["stopped_by"].as_str().map(str::to_string))
    }

    fn n(&self, field: &str) -> u64 {
        self.report
            .as_ref()
            .and_then(|r| r[field].as_u64())
            .unwrap_or(0)
    }

    /// The ids of the messages acked, as 32 lowercase hex digits.
    fn acked(&self) -> HashSet<String> {
        self.lines
            .iter()
            .filter(|(_, l)| l.contains(ACKED))
            .filter_map(|(_, l)| serde_json::from_str::<Value>(l).ok())
            .filter_map(|j| j["message_id"].as_str().map(hex_id))
            .collect()
    }

    /// Lines holding `needle` that came after `after`.
    fn count_after(&self, after: Instant, needle: &str) -> usize {
        self.lines
            .iter()
            .filter(|(t, l)| *t > after && l.contains(needle))
            .count()
    }
}

/// A message id as 32 lowercase hex digits, however it was written.
fn hex_id(id: &str) -> String {
    id.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The ids of the messages in a SQLite file, as 32 lowercase hex digits.
fn sqlite_ids(db: &Path) -> HashSet<String> {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return HashSet::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT message_id FROM messages") else {
        return HashSet::new();
    };
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map(|rows| {
            rows.filter_map(Result::ok)
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a scenario that cannot reach what it needs must fail rather than skip.
fn must_run() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Fails the section under CI=true, and skips loudly elsewhere, when a fault cannot be set
/// up on this machine.
fn cannot_run(out: &mut Section, name: &str, why: &str) {
    if must_run() {
        out.failures.push(format!("{name}: {why}"));
    } else {
        eprintln!("\n*** SKIPPED {name}: {why} ***\n");
    }
    out.row(name, "runs", format!("none: {why}"));
}

/// Whether a run ended as designed: at its SIGTERM with exit status 0, or by escalation
/// with exit status 1, when the restart intensity ran out while the store was down.
fn clean_exit(exit: Option<i32>, stopped_by: Option<&str>) -> bool {
    exit == Some(0) || (exit == Some(1) && stopped_by == Some("escalation"))
}

/// Exits 0, and exits 1 by escalation, of some runs.
fn exits<'a>(runs: impl Iterator<Item = (Option<i32>, Option<&'a str>)> + Clone) -> String {
    format!(
        "{}; {}",
        runs.clone().filter(|(e, _)| *e == Some(0)).count(),
        runs.filter(|(e, s)| *e == Some(1) && *s == Some("escalation"))
            .count()
    )
}

/// Milliseconds from `a` to `b`.
fn ms(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

/// p50 and max of some milliseconds, or "none".
fn p50_max(xs: &[f64]) -> String {
    if xs.is_empty() {
        return "none".into();
    }
    format!(
        "{:.0}, {:.0}",
        median(xs),
        xs.iter().copied().fold(0.0, f64::max)
    )
}

// A full disk.

/// A tmpfs mounted for a run, unmounted when dropped, whatever became of the run.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily, so that a process still holding a file there cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One run whose disk filled mid-run and was freed again.
#[derive(Debug, Serialize)]
struct DiskRun {
    seed: u64,
    filled_at_ms: u64,
    full_for_ms: u64,
    /// The bytes the filler took: what was free when the disk was filled.
    filler_bytes: u64,
    /// Whether the service met the full disk: a log line said so.
    noticed: bool,
    /// From deleting the filler to the next message saved.
    recovery_ms: Option<f64>,
    exit: Option<i32>,
    stopped_by: Option<String>,
    hung: bool,
    conserved: bool,
    dead_lettered: u64,
    integrity_ok: bool,
    rows: i64,
    acked: usize,
    /// Messages acked whose id is not in the file.
    acked_not_saved: usize,
}

impl DiskRun {
    fn broke(&self) -> bool {
        self.hung
            || !clean_exit(self.exit, self.stopped_by.as_deref())
            || !self.conserved
            || !self.integrity_ok
            || self.acked_not_saved > 0
    }
}

/// Writes `path` until the disk is full; the bytes written.
fn fill(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let chunk = vec![0xa5u8; 1 << 16];
    let mut written = 0;
    while let Ok(n) = f.write(&chunk) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    written
}

fn full_disk(o: &Options, out: &mut Section) {
    let name = "4. a full disk, then freed";
    let n = fault_runs(o);
    eprintln!("{name}: {n} runs on a 16 MB tmpfs");
    let mut runs = Vec::new();
    for i in 0..n {
        match disk_run(o.seed + 11_000 + i, &o.scratch) {
            Ok(x) => runs.push(x),
            Err(why) => return cannot_run(out, name, &why),
        }
    }
    for x in runs.iter().filter(|x| x.broke()) {
        out.failures
            .push(format!("full disk run, seed {}: {x:?}", x.seed));
    }
    out.row(
        name,
        "runs; the full disk met; exits 0 at SIGTERM; exits 1 by escalation; balanced; `integrity_check` ok; dead-lettered",
        format!(
            "{}; {}; {}; {}; {}; {}",
            runs.len(),
            runs.iter().filter(|x| x.noticed).count(),
            exits(runs.iter().map(|x| (x.exit, x.stopped_by.as_deref()))),
            runs.iter().filter(|x| x.conserved).count(),
            runs.iter().filter(|x| x.integrity_ok).count(),
            runs.iter().map(|x| x.dead_lettered).sum::<u64>()
        ),
    );
    out.row(
        name,
        "acked, by id; of them not in the file",
        format!(
            "{}; {}",
            runs.iter().map(|x| x.acked).sum::<usize>(),
            runs.iter().map(|x| x.acked_not_saved).sum::<usize>()
        ),
    );
    let recovery: Vec<f64> = runs.iter().filter_map(|x| x.recovery_ms).collect();
    out.row(
        name,
        "recovery: the filler deleted to the next message saved, ms: p50, max",
        p50_max(&recovery),
    );
    out.runs("full_disk", &runs);
}

fn disk_run(seed: u64, dir: &Path) -> Result<DiskRun, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let filled_at_ms = rng.random_range(300..1500);
    let full_for_ms = rng.random_range(500..2500);
    let mount = Tmpfs::mount(&dir.join(format!("disk-{seed}")), "16m")?;
    let db = mount.0.join("mandrill.db");
    let filler = mount.0.join("filler");
    let mut m = Watched::spawn(
        &[
            "--seed",
            &seed.to_string(),
            "--db",
            &db.display().to_string(),
        ],
        dir,
    );
    std::thread::sleep(Duration::from_millis(filled_at_ms));
    let filled = Instant::now();
    let filler_bytes = fill(&filler);
    std::thread::sleep(Duration::from_millis(full_for_ms));
    let _ = std::fs::remove_file(&filler);
    let freed = Instant::now();
    let saved = m.wait_for(freed, SAVED, RECOVERY_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    m.term();
    let f = m.finish();
    let (integrity_ok, rows) = inspect(&db);
    let ids = sqlite_ids(&db);
    let acked = f.acked();
    drop(mount);
    Ok(DiskRun {
        seed,
        filled_at_ms,
        full_for_ms,
        filler_bytes,
        noticed: f.count_after(filled, "disk is full") > 0,
        recovery_ms: saved.map(|t| ms(freed, t)),
        exit: f.exit,
        stopped_by: f.stopped_by(),
        hung: f.hung,
        conserved: f.conserved(),
        dead_lettered: f.n("dead_lettered"),
        integrity_ok,
        rows,
        acked: acked.len(),
        acked_not_saved: acked.difference(&ids).count(),
    })
}

// The database deleted.

/// What the service says when it notices its file is gone.
const DELETED: &str = "was deleted while the service ran";

/// One run whose SQLite file, with its WAL and shared memory, was deleted mid-run.
#[derive(Debug, Serialize)]
struct DeleteRun {
    seed: u64,
    deleted_at_ms: u64,
    exit: Option<i32>,
    hung: bool,
    stopped_by: Option<String>,
    /// Whether a line named the file and said it was deleted.
    said_so: bool,
    /// From the deletion to that line.
    noticed_ms: Option<f64>,
    conserved: bool,
    /// Messages saved after the service said the file was gone: into no file.
    saved_after_notice: usize,
    /// Messages logged as saved between the deletion and the line: their batch's commit
    /// may have come after the deletion, into a file already gone.
    saved_in_between: usize,
    /// Messages acked between the deletion and the line.
    acked_in_between: usize,
}

impl DeleteRun {
    fn broke(&self) -> bool {
        self.hung
            || self.exit != Some(1)
            || !self.said_so
            || !self.conserved
            || self.saved_after_notice > 0
    }
}

fn deleted_database(o: &Options, out: &mut Section) {
    let name = "4. the database deleted";
    let n = fault_runs(o);
    eprintln!("{name}: {n} runs, the file, its WAL and its shared memory deleted mid-run");
    let runs: Vec<DeleteRun> = (0..n)
        .map(|i| delete_run(o.seed + 12_000 + i, &o.scratch))
        .collect();
    for x in runs.iter().filter(|x| x.broke()) {
        out.failures
            .push(format!("deleted database run, seed {}: {x:?}", x.seed));
    }
    out.row(
        name,
        "runs; said the file was deleted; exits 1 by escalation; balanced; saves after saying so",
        format!(
            "{}; {}; {}; {}; {}",
            runs.len(),
            runs.iter().filter(|x| x.said_so).count(),
            runs.iter()
                .filter(|x| x.exit == Some(1) && x.stopped_by.as_deref() == Some("escalation"))
                .count(),
            runs.iter().filter(|x| x.conserved).count(),
            runs.iter().map(|x| x.saved_after_notice).sum::<usize>()
        ),
    );
    let noticed: Vec<f64> = runs.iter().filter_map(|x| x.noticed_ms).collect();
    out.row(
        name,
        "deletion to the line that says so, ms: p50, max; messages logged saved, and acked, meanwhile (committed before the deletion, or their batch would have failed)",
        format!(
            "{}; {}; {}",
            p50_max(&noticed),
            runs.iter().map(|x| x.saved_in_between).sum::<usize>(),
            runs.iter().map(|x| x.acked_in_between).sum::<usize>()
        ),
    );
    out.runs("deleted_database", &runs);
}

fn delete_run(seed: u64, dir: &Path) -> DeleteRun {
    let mut rng = SmallRng::seed_from_u64(seed);
    let deleted_at_ms = rng.random_range(300..2000);
    let db = dir.join(format!("deleted-{seed}.db"));
    let mut m = Watched::spawn(
        &[
            "--seed",
            &seed.to_string(),
            "--db",
            &db.display().to_string(),
        ],
        dir,
    );
    std::thread::sleep(Duration::from_millis(deleted_at_ms));
    let deleted = Instant::now();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    // A run that never notices is stopped, so that its exit says so.
    if m.wait_for(deleted, DELETED, EXIT_LIMIT).is_none() {
        m.term();
    }
    let f = m.finish();
    // Read from every line once the run is over: the service may exit before the reader
    // has passed its last lines on.
    let noticed = f
        .lines
        .iter()
        .find(|(t, l)| *t > deleted && l.contains(DELETED))
        .map(|(t, _)| *t);
    let path = db.display().to_string();
    let said_so = f
        .lines
        .iter()
        .any(|(_, l)| l.contains(DELETED) && l.contains(&path));
    let (saved_after_notice, saved_in_between, acked_in_between) = match noticed {
        Some(t) => (
            f.count_after(t, SAVED),
            f.count_after(deleted, SAVED) - f.count_after(t, SAVED),
            f.count_after(deleted, ACKED) - f.count_after(t, ACKED),
        ),
        None => (0, 0, 0),
    };
    DeleteRun {
        seed,
        deleted_at_ms,
        exit: f.exit,
        hung: f.hung,
        stopped_by: f.stopped_by(),
        said_so,
        noticed_ms: noticed.map(|t| ms(deleted, t)),
        conserved: f.conserved(),
        saved_after_notice,
        saved_in_between,
        acked_in_between,
    }
}

// PostgreSQL.

/// One run on PostgreSQL with outages: its backends terminated, or its server restarted.
#[derive(Debug, Serialize)]
struct PostgresRun {
    seed: u64,
    /// When each outage began, from the first message saved.
    outages_at_ms: Vec<u64>,
    /// For terminations, the backends ended each time; for a restart, how long the server
    /// was down.
    outage: Vec<u64>,
    /// From each outage's end to the next message saved.
    recovery_ms: Vec<f64>,
    exit: Option<i32>,
    stopped_by: Option<String>,
    hung: bool,
    conserved: bool,
    nacked: u64,
    dead_lettered: u64,
    rows: i64,
    acked: usize,
    /// Messages acked whose id is not in the table.
    acked_not_saved: usize,
}

impl PostgresRun {
    fn broke(&self, outages: usize) -> bool {
        self.hung
            || !clean_exit(self.exit, self.stopped_by.as_deref())
            || !self.conserved
            || self.acked_not_saved > 0
            || self.rows < 0
            || (self.stopped_by.as_deref() != Some("escalation")
                && self.recovery_ms.len() < outages)
    }
}

/// The rows of a PostgreSQL run's table: their count and their ids, or -1 and none when
/// the table cannot be read.
fn postgres_ids(url: &str) -> (i64, HashSet<String>) {
    let ids = Client::connect(url, NoTls).and_then(|mut c| {
        c.query("SELECT message_id::text FROM messages", &[])
            .map(|rows| rows.iter().map(|r| hex_id(r.get(0))).collect::<Vec<_>>())
    });
    match ids {
        Ok(ids) => (ids.len() as i64, ids.into_iter().collect()),
        Err(_) => (-1, HashSet::new()),
    }
}

/// Rows of the table for PostgreSQL runs.
fn postgres_rows(out: &mut Section, name: &str, runs: &[PostgresRun], outages: usize, what: &str) {
    for x in runs.iter().filter(|x| x.broke(outages)) {
        out.failures.push(format!("{name}, seed {}: {x:?}", x.seed));
    }
    out.row(
        name,
        &format!(
            "runs; {what}; exits 0 at SIGTERM; exits 1 by escalation; balanced; nacked; dead-lettered"
        ),
        format!(
            "{}; {}; {}; {}; {}; {}",
            runs.len(),
            runs.iter().map(|x| x.outages_at_ms.len()).sum::<usize>(),
            exits(runs.iter().map(|x| (x.exit, x.stopped_by.as_deref()))),
            runs.iter().filter(|x| x.conserved).count(),
            runs.iter().map(|x| x.nacked).sum::<u64>(),
            runs.iter().map(|x| x.dead_lettered).sum::<u64>()
        ),
    );
    out.row(
        name,
        "rows; acked, by id; of them not in the table",
        format!(
            "{}; {}; {}",
            runs.iter().map(|x| x.rows.max(0)).sum::<i64>(),
            runs.iter().map(|x| x.acked).sum::<usize>(),
            runs.iter().map(|x| x.acked_not_saved).sum::<usize>()
        ),
    );
    let recovery: Vec<f64> = runs.iter().flat_map(|x| x.recovery_ms.clone()).collect();
    out.row(
        name,
        "recovery: the outage's end to the next message saved, ms: p50, max",
        p50_max(&recovery),
    );
}

/// A run on PostgreSQL at `url`, with `outages` outages a few hundred milliseconds apart;
/// `outage` makes one and returns what it measured and when it ended.
fn postgres_run(
    seed: u64,
    dir: &Path,
    url: &str,
    outages: usize,
    mut outage: impl FnMut() -> (u64, Instant),
) -> PostgresRun {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut m = Watched::spawn(
        &[
            "--seed",
            &seed.to_string(),
            "--store",
            "postgres",
            "--db-url",
            url,
        ],
        dir,
    );
    let first = m
        .wait_for(
            Instant::now() - Duration::from_secs(1),
            SAVED,
            RECOVERY_LIMIT,
        )
        .unwrap_or_else(Instant::now);
    let (mut outages_at_ms, mut measured, mut recovery_ms) = (vec![], vec![], vec![]);
    for _ in 0..outages {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
        outages_at_ms.push(first.elapsed().as_millis() as u64);
        let (what, ended) = outage();
        measured.push(what);
        if let Some(t) = m.wait_for(ended, SAVED, RECOVERY_LIMIT) {
            recovery_ms.push(ms(ended, t));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    m.term();
    let f = m.finish();
    let (rows, ids) = postgres_ids(url);
    let acked = f.acked();
    PostgresRun {
        seed,
        outages_at_ms,
        outage: measured,
        recovery_ms,
        exit: f.exit,
        stopped_by: f.stopped_by(),
        hung: f.hung,
        conserved: f.conserved(),
        nacked: f.n("nacked"),
        dead_lettered: f.n("dead_lettered"),
        rows,
        acked: acked.len(),
        acked_not_saved: acked.difference(&ids).count(),
    }
}

/// Backends terminated per run.
const TERMINATIONS: usize = 3;

/// A schema and a login role of a run's own on the shared server, dropped with everything
/// they hold when this is, so that the run can end its backends and no one else's.
struct SharedSchema {
    admin: Client,
    base: String,
    name: String,
}

impl SharedSchema {
    fn new(base: &str) -> Result<Self, String> {
        let mut admin = Client::connect(base, NoTls)
            .map_err(|e| format!("cannot reach postgres at {base}: {e}"))?;
        let name = format!("torture_store_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {name}; CREATE ROLE {name} LOGIN; \
                 GRANT ALL ON SCHEMA {name} TO {name}"
            ))
            .map_err(|e| format!("cannot make a schema and a role: {e}"))?;
        Ok(Self {
            admin,
            base: base.to_string(),
            name,
        })
    }

    /// The service's URL: the run's role, with its schema first on the search path.
    fn url(&self) -> String {
        let (scheme, rest) = self.base.split_once("://").expect("a url");
        let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
        let sep = if rest.contains('?') { '&' } else { '?' };
        format!(
            "{scheme}://{}@{rest}{sep}options=-csearch_path%3D{}",
            self.name, self.name
        )
    }

    /// Terminates every backend of the run's role; how many there were.
    fn terminate(&mut self) -> u64 {
        self.admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&self.name],
            )
            .map_or(0, |rows| rows.len() as u64)
    }
}

impl Drop for SharedSchema {
    fn drop(&mut self) {
        let _ = self.terminate();
        let name = &self.name;
        let _ = self.admin.batch_execute(&format!(
            "DROP SCHEMA {name} CASCADE; DROP OWNED BY {name}; DROP ROLE {name}"
        ));
    }
}

fn postgres_terminated(o: &Options, out: &mut Section) {
    let name = "4. Postgres backends terminated";
    let n = fault_runs(o);
    eprintln!("{name}: {n} runs, each with {TERMINATIONS} terminations of every backend");
    let base = std::env::var("MANDRILL_TEST_PG_URL")
        .unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
    let mut runs = Vec::new();
    for i in 0..n {
        let seed = o.seed + 13_000 + i;
        let mut schema = match SharedSchema::new(&base) {
            Ok(s) => s,
            Err(why) => return cannot_run(out, name, &why),
        };
        let url = schema.url();
        runs.push(postgres_run(seed, &o.scratch, &url, TERMINATIONS, || {
            (schema.terminate(), Instant::now())
        }));
    }
    postgres_rows(out, name, &runs, TERMINATIONS, "terminations");
    out.runs("postgres_terminated", &runs);
}

/// A PostgreSQL 15 server of the scenario's own, which it may stop and start; stopped at
/// once when this is dropped, whatever became of the runs.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

/// Where the PostgreSQL 15 programs are.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl OwnPostgres {
    /// A new cluster, started. PostgreSQL refuses to run as root, so it runs as the
    /// `postgres` user, in a directory of its own outside the scratch directory, which
    /// that user cannot enter.
    fn start_new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("torture-pg")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let pg = Self { dir, port };
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(pg.dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        if !chown.success() {
            return Err("cannot give the server's directory to the postgres user".into());
        }
        pg.pg(&[
            "initdb",
            "-D",
            &pg.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])?;
        pg.start()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL program as the `postgres` user.
    fn pg(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/{}", args[0]))
            .args(&args[1..])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts the server and waits until it takes connections.
    fn start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.pg(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &opts,
            "-l",
            &log,
            "-w",
            "start",
        ])
    }

    /// Stops the server as an operator's restart does: fast, ending every backend.
    fn stop(&self) -> Result<(), String> {
        self.pg(&["pg_ctl", "-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pg(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

fn postgres_restarted(o: &Options, out: &mut Section) {
    let name = "4. Postgres restarted";
    let n = fault_runs(o);
    eprintln!("{name}: {n} runs on a server of the scenario's own, each restarting it once");
    let pg = match OwnPostgres::start_new() {
        Ok(pg) => pg,
        Err(why) => return cannot_run(out, name, &why),
    };
    let mut runs = Vec::new();
    for i in 0..n {
        let seed = o.seed + 14_000 + i;
        let db = format!("torture_{seed}");
        let created = Client::connect(&pg.url("postgres"), NoTls)
            .and_then(|mut c| c.batch_execute(&format!("CREATE DATABASE {db}")));
        if let Err(e) = created {
            return cannot_run(out, name, &format!("cannot make a database: {e}"));
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
        let url = pg.url(&db);
        runs.push(postgres_run(seed, &o.scratch, &url, 1, || {
            let down = Instant::now();
            if let Err(e) = pg.stop() {
                eprintln!("{name}: {e}");
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
            // A server that does not come back fails the run, by its missing recovery.
            if let Err(e) = pg.start() {
                eprintln!("{name}: {e}");
            }
            (down.elapsed().as_millis() as u64, Instant::now())
        }));
    }
    postgres_rows(out, name, &runs, 1, "restarts");
    out.runs("postgres_restarted", &runs);
}

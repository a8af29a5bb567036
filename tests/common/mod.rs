//! Runs the real `mandrill` binary for process-level tests: captures its stderr line by
//! line, sends it real signals, and parses the run report from its stdout. Every wait is
//! bounded.

#![allow(dead_code)]

pub mod brokers;
pub mod nats;
pub mod postgres;
pub mod pubsub;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Flags for an unleashed command action that runs `sh -c SCRIPT`, with `args` as the
/// script's `$0`, `$1` and so on, reading messages from stdin into the memory store.
pub fn sh_action<'a>(script: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--source",
        "stdin",
        "--store",
        "memory",
        "--action",
        "command",
        "--unleash",
        "--command",
        "sh",
        "--command-arg",
        "-c",
        "--command-arg",
        script,
    ];
    for a in args {
        flags.extend(["--command-arg", a]);
    }
    flags
}

/// One line for the stdin source: message number `i`, naming `host`, newline included.
/// The name is JSON-escaped, so a test may send any name it likes.
pub fn stdin_line(i: usize, host: &str) -> String {
    let id = format!("00000000-0000-4000-8000-{i:012}");
    serde_json::json!({ "message_id": id, "instance_name": host }).to_string() + "\n"
}

/// Stdin lines for `hosts`, one message each, numbered from 0.
pub fn stdin_lines(hosts: &[&str]) -> String {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| stdin_line(i, h))
        .collect()
}

/// Runs one instance for each of `inputs` on the SQLite file `db`, as instances sharing
/// it: `flags` come from `sh_action`, whose memory store becomes the file. Each is given
/// its input on stdin as at once as processes can, and each run must end well and ack
/// every line of it.
pub fn fleet_on_sqlite(flags: &[&str], db: &std::path::Path, inputs: &[String]) -> Vec<Finished> {
    let flags: Vec<&str> = flags
        .iter()
        .map(|&f| if f == "memory" { "sqlite" } else { f })
        .collect();
    let mut fleet: Vec<Mandrill> = inputs
        .iter()
        .map(|_| Mandrill::spawn_on(&flags, db))
        .collect();
    for (m, input) in fleet.iter_mut().zip(inputs) {
        m.write_stdin(input.as_bytes());
    }
    fleet
        .into_iter()
        .zip(inputs)
        .map(|(mut m, input)| {
            m.close_stdin();
            let f = m.finish(Duration::from_secs(60));
            assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
            assert_eq!(f.n("acked"), input.lines().count() as u64, "{}", f.report);
            f
        })
        .collect()
}

/// Flags for a fast run under injected faults: no pacing and no simulated IO, lifecycle
/// logs only, no escalation, and small pulls and batches, which mean many handler calls
/// and so many chances to fail.
pub const CHAOS: &[&str] = &[
    "--publish-delay",
    "0",
    "--io-delay",
    "0",
    "--log",
    "none",
    "--max-restarts",
    "1000000",
    "--max-in-flight",
    "50",
    "--batch-size",
    "50",
];

/// Kills the process when dropped, so that a failing test leaves no service running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

pub struct Mandrill {
    child: KillOnDrop,
    lines: Receiver<String>,
    /// Every stderr line seen so far, in order.
    pub log: Vec<String>,
    pub dir: tempfile::TempDir,
}

/// Keeps a test's run of the binary to its own settings: no log filter, colour,
/// `MANDRILL_` setting or config file from the user running the tests. The config
/// search path looks in `dir`, which holds none.
pub fn isolate(command: &mut Command, dir: &std::path::Path) {
    command
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("MANDRILL_") && !key.starts_with("MANDRILL_TEST_") {
            command.env_remove(&*key);
        }
    }
}

impl Mandrill {
    /// Starts the binary with a database in a fresh temporary directory.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_stdin(args, false)
    }

    pub fn spawn_with_stdin(args: &[&str], piped_stdin: bool) -> Self {
        Self::spawn_full(args, piped_stdin, &[])
    }

    /// Starts the binary with stdin piped and these variables added to its environment.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_full(args, true, env)
    }

    /// Starts the binary with stdin piped, on the SQLite file `db`, which several
    /// instances may share.
    pub fn spawn_on(args: &[&str], db: &std::path::Path) -> Self {
        Self::spawn_db(args, true, &[], Some(db))
    }

    fn spawn_full(args: &[&str], piped_stdin: bool, env: &[(&str, &str)]) -> Self {
        Self::spawn_db(args, piped_stdin, env, None)
    }

    fn spawn_db(
        args: &[&str],
        piped_stdin: bool,
        env: &[(&str, &str)],
        db: Option<&std::path::Path>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db.map_or_else(|| dir.path().join("mandrill.db"), |d| d.to_path_buf());
        let mut child = Command::new(env!("CARGO_BIN_EXE_mandrill"));
        isolate(&mut child, dir.path());
        let mut child = child
            .args(args)
            .arg("--db")
            .arg(&db)
            .envs(env.iter().copied())
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mandrill");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child: KillOnDrop(child),
            lines,
            log: Vec::new(),
            dir,
        }
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("mandrill.db")
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("send signal");
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        self.child
            .stdin
            .as_mut()
            .expect("piped stdin")
            .write_all(data)
            .expect("write stdin");
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for a stderr line containing `needle`, failing the test after `limit`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {needle:?} within {limit:?}; last lines:\n{}",
                        self.tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "stderr closed before a line with {needle:?}; last lines:\n{}",
                    self.tail()
                ),
            }
        }
    }

    /// Waits until `n` stderr lines in all contain `needle`.
    /// Waits for a log line with `needle` that names an `http://` address, and gives the
    /// address, `host:port`, as bound.
    pub fn wait_for_address(&mut self, needle: &str, limit: Duration) -> String {
        let line = self.wait_for(needle, limit);
        line.split("http://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ' ', ',']).next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string()
    }

    pub fn wait_for_count(&mut self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        // Counted as lines arrive: recounting the whole log per line is quadratic, and
        // some tests wait for tens of thousands of lines.
        let mut seen = self.log.iter().filter(|l| l.contains(needle)).count();
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen += usize::from(line.contains(needle));
                    self.log.push(line);
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "fewer than {n} lines with {needle:?} within {limit:?}:\n{}",
                        self.tail()
                    )
                }
            }
        }
    }

    /// Reads the first stdout line (the run report, printed before any metrics linger),
    /// failing the test after `limit`.
    pub fn report_line(&mut self, limit: Duration) -> Value {
        let stdout = self.child.stdout.take().expect("stdout not taken yet");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(limit) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("report {line:?} is not json: {e}")),
            Err(_) => {
                let _ = self.child.kill();
                panic!("no report within {limit:?}; last lines:\n{}", self.tail())
            }
        }
    }

    /// True if the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for exit, failing the test after `limit`; returns the status and the report
    /// (`Value::Null` when there is none) and collects the rest of stderr.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "did not exit within {limit:?}; last lines:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF, which follows exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).expect("stdout");
        }
        let report = out
            .lines()
            .last()
            .map(|l| serde_json::from_str(l).expect("report is json"))
            .unwrap_or(Value::Null);
        Finished {
            status,
            report,
            stdout: out,
            log: self.log,
            dir: self.dir,
        }
    }

    fn tail(&self) -> String {
        let from = self.log.len().saturating_sub(30);
        self.log[from..].join("\n")
    }
}

pub struct Finished {
    pub status: ExitStatus,
    pub report: Value,
    pub stdout: String,
    pub log: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Finished {
    pub fn n(&self, field: &str) -> u64 {
        self.report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("report has no {field}: {}", self.report))
    }

    /// The pipeline's conservation law.
    pub fn assert_conserved(&self) {
        assert_eq!(
            self.n("published"),
            self.n("acked") + self.n("dead_lettered") + self.n("pending_at_exit"),
            "published != acked + dead_lettered + pending_at_exit: {}",
            self.report
        );
    }

    /// Index of the first log line containing `needle`.
    pub fn line_index(&self, needle: &str) -> usize {
        self.log
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{}", self.log.join("\n")))
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.log.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn db_rows(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.dir.path().join("mandrill.db")).expect("db");
        conn.query_row(sql, [], |r| r.get(0)).expect("query")
    }
}

/// Waits for `child` to exit, for at most `limit`; past it, kills it and fails with
/// `what`.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: no exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a process runs: signal 0 only asks whether it is there, and a zombie, dead
/// but not yet reaped by whoever adopted it, does not count.
pub fn process_alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), None | Some('Z' | 'X'))
}

/// Payloads that are not messages, each with what its rejection says: not JSON, a
/// hostile instance name, oversize, no id.
pub fn bad_payloads() -> Vec<(Vec<u8>, &'static str)> {
    let id = uuid::Uuid::new_v4();
    vec![
        (b"{not json".to_vec(), "key must be a string"),
        (
            format!(r#"{{"message_id":"{id}","instance_name":"cattle-1; rm -rf /"}}"#).into(),
            "';'",
        ),
        (
            format!(
                r#"{{"message_id":"{id}","instance_name":"{}"}}"#,
                "x".repeat(70 * 1024)
            )
            .into(),
            "64 KiB",
        ),
        (
            br#"{"instance_name":"cattle-abcd"}"#.to_vec(),
            "missing field `message_id`",
        ),
    ]
}

/// Asserts that a run acked the `good` messages, and rejected and dead-lettered each bad
/// payload with its reason on its first delivery, before any reached the store or an
/// action; and that the counts balance.
pub fn assert_only_good_passed(f: &Finished, bad: &[(Vec<u8>, &str)], good: usize) {
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("acked"), good as u64, "{}", f.report);
    assert_eq!(f.n("rejected"), bad.len() as u64, "{}", f.report);
    assert_eq!(f.n("dead_lettered"), bad.len() as u64, "{}", f.report);
    assert_eq!(f.n("redelivered"), 0, "{}", f.report);
    for (_, reason) in bad {
        assert!(
            f.log
                .iter()
                .any(|l| l.contains("not a message") && l.contains(reason)),
            "no rejection says {reason:?}:\n{}",
            f.log.join("\n")
        );
    }
    assert_eq!(f.db_rows("SELECT count(*) FROM messages"), good as i64);
    assert_eq!(f.db_rows("SELECT count(*) FROM attempts"), good as i64);
    f.assert_conserved();
}

/// Whether `got` holds exactly the bad payloads, in any order.
pub fn same_payloads(mut got: Vec<Vec<u8>>, bad: &[(Vec<u8>, &str)]) -> bool {
    let mut want: Vec<Vec<u8>> = bad.iter().map(|(p, _)| p.clone()).collect();
    got.sort();
    want.sort();
    got == want
}

impl Finished {
    /// The ids of the messages in the run's SQLite store.
    pub fn stored_ids(&self) -> std::collections::HashSet<Vec<u8>> {
        let conn = rusqlite::Connection::open(self.dir.path().join("mandrill.db")).expect("db");
        let mut q = conn
            .prepare("SELECT message_id FROM messages")
            .expect("query");
        q.query_map([], |r| r.get(0))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect()
    }
}

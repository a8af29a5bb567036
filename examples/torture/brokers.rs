//! Scenario 5, broker faults: the run's own nats-server stopped (SIGTERM, or SIGKILL)
//! mid-run and started again on the same store; and every connection between the
//! service and a Pub/Sub emulator cut mid-run, new ones refused for a while, then let
//! through again. Each run publishes messages with ids of its own, and afterwards the
//! broker is asked what it still holds and what it dead-lettered: every id must be
//! there, or in the store, which a message reaches before it is acked.
//!
//! A run breaks the promise when an id is lost, when it hangs, or when it does not exit
//! 0 with a report. Whether the report balances is a figure, not a failure: a delivery
//! whose ack went out as the link broke comes back and is acked again, and one the
//! broker sent as the link broke is first seen as a redelivery, so across a fault the
//! report's `acked` may exceed the messages and its `published` fall short of them. The
//! rows say by how much.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::support::emulator::{Emulator, PROJECT};
use crate::util::{binary, conserved, exit_within, last_report, median, Options, Section};

/// How long a run may take, from the fault's end to its exit, before it counts as hung
/// and is killed.
const EXIT_LIMIT: Duration = Duration::from_secs(120);

/// How long a run may take to ack the messages that come before its fault.
const BEFORE_LIMIT: Duration = Duration::from_secs(60);

/// The NATS runs in turn: whether the server is stopped with SIGKILL rather than
/// SIGTERM, and whether the service runs with `--confirm-acks`; every pair comes up in
/// five runs.
const NATS_FAULTS: [(bool, bool); 5] = [
    (false, false),
    (true, false),
    (true, true),
    (false, true),
    (true, true),
];

/// Runs the scenario: 5 NATS runs and 3 Pub/Sub runs, or one of each in the slice.
pub fn run(o: &Options) -> Section {
    let (nats_runs, pubsub_runs) = if o.quick { (1, 1) } else { (5, 3) };
    eprintln!(
        "5. broker faults: {nats_runs} nats-server stops and restarts, {pubsub_runs} Pub/Sub \
         connection cuts"
    );
    let mut out = Section::default();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    match nats_program() {
        Some(program) => {
            let runs: Vec<Run> = (0..nats_runs)
                .map(|i| nats_run(&program, o.seed + 50_000 + i as u64, NATS_FAULTS[i % 5], o))
                .collect();
            rows(&mut out, "5. broker faults: nats-server stopped", &runs);
            out.runs("brokers_nats", &runs);
        }
        None => missing(&mut out, ci, "nats-server is not installed"),
    }
    match Emulator::start() {
        Ok(emulator) => {
            let runs: Vec<Run> = (0..pubsub_runs)
                .map(|i| pubsub_run(&emulator, o.seed + 51_000 + i as u64, o))
                .collect();
            rows(&mut out, "5. broker faults: Pub/Sub connection cut", &runs);
            out.runs("brokers_pubsub", &runs);
        }
        Err(e) => missing(&mut out, ci, &e),
    }
    out
}

/// A broker that cannot be had: a failure under CI, where a skip would hide a scenario
/// that never ran, and a row saying so elsewhere.
fn missing(out: &mut Section, ci: bool, why: &str) {
    out.row("5. broker faults", "skipped", why);
    if ci {
        out.failures.push(format!(
            "broker faults: {why}, and under CI=true it must run"
        ));
    }
}

/// The rows of one broker's runs, and a failure for each run that broke the promise.
fn rows(out: &mut Section, name: &str, runs: &[Run]) {
    for x in runs {
        if x.lost > 0 || x.hung || x.exit_code != Some(0) || !x.report {
            out.failures.push(format!("{name}, seed {}: {x:?}", x.seed));
        }
    }
    let count = |f: &dyn Fn(&Run) -> bool| runs.iter().filter(|x| f(x)).count();
    let sum = |f: &dyn Fn(&Run) -> u64| runs.iter().map(f).sum::<u64>();
    let (min, max) = (
        runs.iter().map(|x| x.down_ms).min().unwrap_or(0),
        runs.iter().map(|x| x.down_ms).max().unwrap_or(0),
    );
    if runs.iter().any(|x| x.fault == "cut") {
        out.row(
            name,
            "runs; connections cut and refused for, ms: min, max",
            format!("{}; {min}, {max}", runs.len()),
        );
    } else {
        out.row(
            name,
            "runs (by SIGKILL, with --confirm-acks); down for, ms: min, max",
            format!(
                "{} ({}, {}); {min}, {max}",
                runs.len(),
                count(&|x| x.fault == "SIGKILL"),
                count(&|x| x.confirm_acks)
            ),
        );
    }
    out.row(
        name,
        "messages published; lost (ids in neither the store, the broker nor its dead letters)",
        format!("{}; {}", sum(&|x| x.published), sum(&|x| x.lost)),
    );
    out.row(
        name,
        "after the runs: acked at the broker; dead-lettered; still pending (of them, saved)",
        format!(
            "{}; {}; {} ({})",
            sum(&|x| x.acked_at_broker),
            sum(&|x| x.dead_lettered),
            sum(&|x| x.pending),
            sum(&|x| x.pending_saved)
        ),
    );
    let n = |x: &Run, f: &str| x.counts.as_ref().and_then(|c| c[f].as_u64()).unwrap_or(0);
    out.row(
        name,
        "the reports against the broker: `acked` beyond the messages acked there \
         (deliveries acked twice); `published` short of the messages",
        format!(
            "{}; {}",
            sum(&|x| n(x, "acked").saturating_sub(x.acked_at_broker)),
            sum(&|x| x.published.saturating_sub(n(x, "published")))
        ),
    );
    out.row(
        name,
        "exits 0; reports balanced; hung past 120 s",
        format!(
            "{}; {}; {}",
            count(&|x| x.exit_code == Some(0)),
            count(&|x| x.conserved == Some(true)),
            count(&|x| x.hung)
        ),
    );
    let back: Vec<f64> = runs.iter().filter_map(|x| x.reconnect_ms).collect();
    out.row(
        name,
        "reconnect: broker back to the next ack, ms: p50, max",
        if back.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{:.0}, {:.0}",
                median(&back),
                back.iter().copied().fold(0.0, f64::max)
            )
        },
    );
}

/// One run with a broker fault in it, and what came of it.
#[derive(Debug, Serialize)]
struct Run {
    seed: u64,
    /// SIGTERM or SIGKILL for nats-server, `cut` for Pub/Sub.
    fault: &'static str,
    /// Whether the service waited for the server to confirm each ack.
    confirm_acks: bool,
    /// Acks the service logged before the fault.
    after_acks: usize,
    down_ms: u64,
    published: u64,
    /// Published ids found in none of the store, the stream or subscription, and the
    /// dead letters.
    lost: u64,
    /// Published messages the broker no longer holds for the service.
    acked_at_broker: u64,
    dead_lettered: u64,
    pending: u64,
    /// Of those, the ones already saved: their work was done and acked, and the broker
    /// holds them again.
    pending_saved: u64,
    exit_code: Option<i32>,
    hung: bool,
    report: bool,
    conserved: Option<bool>,
    /// The report's own counts, for the record.
    counts: Option<serde_json::Value>,
    /// From the broker being reachable again to the first ack logged after it.
    reconnect_ms: Option<f64>,
}

/// The messages of a run: `n` ids drawn from the run's seed, one host each, written as
/// newline-delimited JSON for `mandrill publish --input`.
fn messages(rng: &mut SmallRng, n: usize, file: &Path) -> HashSet<Uuid> {
    let mut ids = HashSet::with_capacity(n);
    let mut text = String::new();
    for i in 0..n {
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        ids.insert(id);
        let line = serde_json::json!({ "message_id": id, "instance_name": format!("cattle-{i}") });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(file, text).expect("write the messages");
    ids
}

/// The message ids in payloads; a payload that is not a message has none.
fn ids_of(payloads: &[Vec<u8>]) -> HashSet<Uuid> {
    payloads
        .iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .filter_map(|v| v["message_id"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// The ids of the messages saved in a SQLite store.
fn saved_ids(db: &Path) -> HashSet<Uuid> {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return HashSet::new();
    };
    let Ok(mut q) = conn.prepare("SELECT message_id FROM messages") else {
        return HashSet::new();
    };
    q.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map(|rows| {
            rows.filter_map(Result::ok)
                .filter_map(|b| Uuid::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The service, run with `args` and `env`, its log read line by line on a thread of its
/// own, which notes when each ack was logged.
struct Service {
    child: Child,
    acks: Arc<Mutex<Vec<Instant>>>,
    reader: Option<JoinHandle<()>>,
}

impl Service {
    fn spawn(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .envs(env.iter().copied())
            .env("XDG_CONFIG_HOME", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mandrill");
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let noted = acks.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Done. Acked") {
                    noted.lock().unwrap().push(Instant::now());
                }
            }
        });
        Self {
            child,
            acks,
            reader: Some(reader),
        }
    }

    /// Waits until `n` acks were logged; false if the service exited or `limit` passed.
    fn wait_for_acks(&mut self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.acks.lock().unwrap().len() >= n {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits for the exit, up to `limit`, and returns the exit code, whether it hung,
    /// the report, and the first ack logged at or after `back`.
    fn finish(mut self, limit: Duration, back: Instant) -> Finished {
        let (status, hung) = exit_within(&mut self.child, limit);
        let mut stdout = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_end(&mut stdout);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let first = self
            .acks
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|t| *t >= back);
        Finished {
            exit_code: status.and_then(|s| s.code()),
            hung,
            report: last_report(&stdout),
            reconnect_ms: first.map(|t| (t - back).as_secs_f64() * 1000.0),
        }
    }
}

struct Finished {
    exit_code: Option<i32>,
    hung: bool,
    report: Option<serde_json::Value>,
    reconnect_ms: Option<f64>,
}

/// What a run's messages came to, by the broker's own reading and the store's.
struct Tally {
    remaining: HashSet<Uuid>,
    dead_letters: HashSet<Uuid>,
}

impl Run {
    fn new(
        seed: u64,
        fault: &'static str,
        plan: &Plan,
        ids: &HashSet<Uuid>,
        saved: &HashSet<Uuid>,
        tally: &Tally,
        f: Finished,
    ) -> Self {
        let lost = ids
            .iter()
            .filter(|id| {
                !saved.contains(id)
                    && !tally.remaining.contains(id)
                    && !tally.dead_letters.contains(id)
            })
            .count() as u64;
        let pending = ids.intersection(&tally.remaining).count() as u64;
        let dead_lettered = ids.intersection(&tally.dead_letters).count() as u64;
        Run {
            seed,
            fault,
            confirm_acks: false,
            after_acks: plan.after_acks,
            down_ms: plan.down_ms,
            published: ids.len() as u64,
            lost,
            acked_at_broker: ids.len() as u64 - pending - dead_lettered,
            dead_lettered,
            pending,
            pending_saved: ids
                .iter()
                .filter(|id| tally.remaining.contains(id) && saved.contains(id))
                .count() as u64,
            exit_code: f.exit_code,
            hung: f.hung,
            report: f.report.is_some(),
            conserved: f.report.as_ref().map(conserved),
            counts: f.report.as_ref().map(|r| {
                serde_json::json!({
                    "published": r["published"],
                    "acked": r["acked"],
                    "dead_lettered": r["dead_lettered"],
                    "pending_at_exit": r["pending_at_exit"],
                    "stopped_by": r["stopped_by"],
                })
            }),
            reconnect_ms: f.reconnect_ms,
        }
    }
}

/// A run's size and its fault, drawn from its seed.
struct Plan {
    messages: usize,
    after_acks: usize,
    down_ms: u64,
    /// `--idle-exit`: longer than the fault and the reconnection after it, so that the
    /// run does not end for want of messages while the broker is away.
    idle_exit: &'static str,
}

impl Plan {
    fn draw(rng: &mut SmallRng, quick: bool) -> Self {
        let messages = if quick { 500 } else { 2000 };
        Plan {
            messages,
            after_acks: rng.random_range(messages / 10..messages / 2),
            down_ms: if quick {
                rng.random_range(500..1500)
            } else {
                rng.random_range(500..4000)
            },
            idle_exit: if quick { "6" } else { "12" },
        }
    }
}

/// The flags every run gives the service: simulated IO, a few failed restarts so that
/// some messages are nacked and redelivered, and a store whose ids are read afterwards.
fn service_flags<'a>(db: &'a Path, seed: &'a str, idle_exit: &'a str) -> Vec<&'a str> {
    vec![
        "--io-delay",
        "0.01",
        "--failure-rate",
        "0.1",
        "--min-restart-interval",
        "0",
        "--max-in-flight",
        "50",
        "--idle-exit",
        idle_exit,
        "--log",
        "info",
        "--seed",
        seed,
        "--db",
        db.to_str().expect("a utf-8 path"),
    ]
}

/// Publishes the file's messages with `mandrill publish`, creating what is missing.
fn publish(args: &[&str], file: &Path, env: &[(&str, &str)]) {
    let out = Command::new(binary())
        .args(["publish", "--create"])
        .args(args)
        .arg("--input")
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .expect("run mandrill publish");
    assert!(
        out.status.success(),
        "mandrill publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- NATS ----

/// Where `nats-server` is installed, if anywhere.
fn nats_program() -> Option<PathBuf> {
    which::which("nats-server")
        .ok()
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.exists()))
}

/// A nats-server of the run's own, on a port and a store directory that outlive it.
struct Nats {
    program: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Nats {
    /// Starts a server on a free port; a port found free may be taken before the server
    /// binds it, and then another is tried.
    fn start(program: &Path, dir: PathBuf) -> Self {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut nats = Nats {
                program: program.to_path_buf(),
                port,
                dir: dir.clone(),
                child: None,
            };
            if nats.try_spawn() {
                return nats;
            }
        }
        panic!("nats-server could not start on any of 5 free ports");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it listens; false if it exits first, as it does
    /// when its port is taken.
    fn try_spawn(&mut self) -> bool {
        let mut child = Command::new(&self.program)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Still running a moment after something listens: it is this server
                // that does.
                std::thread::sleep(Duration::from_millis(50));
                if child.try_wait().ok().flatten().is_none() {
                    self.child = Some(child);
                    return true;
                }
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops the server with `signal` and waits for it to go.
    fn stop(&mut self, signal: Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), signal);
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store; the port is the service's to
    /// find, so it is tried a few times.
    fn restart(&mut self) -> bool {
        (0..5).any(|_| {
            self.try_spawn() || {
                std::thread::sleep(Duration::from_millis(200));
                false
            }
        })
    }
}

/// The payloads a stream holds, by its own reading; none when it cannot be read.
async fn stream_payloads(js: &async_nats::jetstream::Context, name: &str) -> Vec<Vec<u8>> {
    let Ok(mut s) = js.get_stream(name).await else {
        return Vec::new();
    };
    let Ok(info) = s.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m.payload.to_vec());
        }
    }
    out
}

/// What the stream and its dead letters hold; removes both after.
fn nats_tally(url: &str, stream: &str) -> Tally {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let dlq = format!("{stream}_DLQ");
        let remaining = ids_of(&stream_payloads(&js, stream).await);
        let dead_letters = ids_of(&stream_payloads(&js, &dlq).await);
        for name in [stream, dlq.as_str()] {
            let _ = js.delete_stream(name).await;
        }
        Tally {
            remaining,
            dead_letters,
        }
    })
}

/// One run: messages into a stream of the run's own server, the service on them, the
/// server stopped after a drawn number of acks, kept down a drawn while, and started
/// again on the same store; the run ends by itself once nothing comes for a while.
fn nats_run(program: &Path, seed: u64, (kill, confirm_acks): (bool, bool), o: &Options) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let plan = Plan::draw(&mut rng, o.quick);
    let (signal, fault) = if kill {
        (Signal::SIGKILL, "SIGKILL")
    } else {
        (Signal::SIGTERM, "SIGTERM")
    };
    let dir = o.scratch.join(format!("brokers-nats-{seed}"));
    std::fs::create_dir_all(&dir).expect("the run's directory");
    let file = dir.join("messages.jsonl");
    let ids = messages(&mut rng, plan.messages, &file);
    let mut nats = Nats::start(program, dir.join("jetstream"));
    let url = nats.url();
    let stream = format!("TORTURE_{seed}");
    publish(
        &["--to", "jetstream", "--nats-url", &url, "--stream", &stream],
        &file,
        &[],
    );
    let db = dir.join("store.db");
    let seed_text = seed.to_string();
    let mut args = vec![
        "--source",
        "jetstream",
        "--nats-url",
        &url,
        "--stream",
        &stream,
        "--create",
        // Acks sent as the link broke are lost with it: their messages come back once
        // their lease runs out, well inside the idle time that ends the run.
        "--ack-deadline",
        "2",
    ];
    if confirm_acks {
        args.push("--confirm-acks");
    }
    args.extend(service_flags(&db, &seed_text, plan.idle_exit));
    let mut service = Service::spawn(&args, &[], &dir);
    service.wait_for_acks(plan.after_acks, BEFORE_LIMIT);
    nats.stop(signal);
    std::thread::sleep(Duration::from_millis(plan.down_ms));
    let restarted = nats.restart();
    let back = Instant::now();
    let f = service.finish(EXIT_LIMIT, back);
    assert!(restarted, "nats-server did not start again on its port");
    let tally = nats_tally(&url, &stream);
    drop(nats);
    let saved = saved_ids(&db);
    let _ = std::fs::remove_dir_all(&dir);
    let mut run = Run::new(seed, fault, &plan, &ids, &saved, &tally, f);
    run.confirm_acks = confirm_acks;
    run
}

// ---- Pub/Sub ----

/// A TCP proxy between the service and the emulator, on threads of its own: it can cut
/// every connection it carries and refuse new ones, by closing its listener, then listen
/// on the same port again.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.close_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Proxy {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().expect("the proxy's port").port();
        let cut = Arc::new(AtomicBool::new(false));
        let listening = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, l, s, k) = (cut.clone(), listening.clone(), stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || accept_loop(listener, port, upstream, c, l, s, k));
        Self {
            port,
            cut,
            listening,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn close_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Cuts every connection and refuses new ones until `resume`.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.listening.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.close_all();
    }

    /// Listens again; true once it does.
    fn resume(&self) -> bool {
        self.cut.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.listening.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.listening.load(Ordering::SeqCst)
    }
}

/// Accepts connections and joins each to one of its own to `upstream`, while not cut;
/// while cut, the port is closed, so that a connection is refused as by a broker gone.
fn accept_loop(
    listener: TcpListener,
    port: u16,
    upstream: String,
    cut: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
) {
    listener
        .set_nonblocking(true)
        .expect("a nonblocking listener");
    let mut listener = Some(listener);
    while !stop.load(Ordering::SeqCst) {
        if cut.load(Ordering::SeqCst) {
            listener = None;
            listening.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let Some(l) = &listener else {
            // Rust's listeners set SO_REUSEADDR, so the port the service was given can
            // be bound again while the connections cut from it linger.
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).expect("a nonblocking listener");
                    listener = Some(l);
                    listening.store(true, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let mut kept = conns.lock().unwrap();
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        kept.push(s);
                    }
                }
                drop(kept);
                pipe(&client, &server);
                pipe(&server, &client);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Copies one direction of a proxied connection on a thread of its own, until either
/// side closes or the connection is cut.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// One run: messages into a subscription of the run's own, the service on it through
/// the proxy, every connection cut after a drawn number of acks and new ones refused for
/// a drawn while; the run ends by itself once nothing comes for a while.
fn pubsub_run(emulator: &Emulator, seed: u64, o: &Options) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let plan = Plan::draw(&mut rng, o.quick);
    let dir = o.scratch.join(format!("brokers-pubsub-{seed}"));
    std::fs::create_dir_all(&dir).expect("the run's directory");
    let file = dir.join("messages.jsonl");
    let ids = messages(&mut rng, plan.messages, &file);
    let id = format!("torture-{seed}-{}", Uuid::new_v4().simple());
    let topic = format!("projects/{PROJECT}/topics/{id}");
    let subscription = format!("projects/{PROJECT}/subscriptions/{id}");
    let direct = [("PUBSUB_EMULATOR_HOST", emulator.host.as_str())];
    publish(
        &[
            "--to",
            "pubsub",
            "--topic",
            &topic,
            "--subscription",
            &subscription,
        ],
        &file,
        &direct,
    );
    let proxy = Proxy::start(emulator.host.clone());
    let through = proxy.host();
    let db = dir.join("store.db");
    let seed_text = seed.to_string();
    let mut args = vec!["--source", "pubsub", "--subscription", &subscription];
    args.extend(service_flags(&db, &seed_text, plan.idle_exit));
    let mut service = Service::spawn(&args, &[("PUBSUB_EMULATOR_HOST", &through)], &dir);
    service.wait_for_acks(plan.after_acks, BEFORE_LIMIT);
    proxy.cut();
    std::thread::sleep(Duration::from_millis(plan.down_ms));
    let resumed = proxy.resume();
    let back = Instant::now();
    let f = service.finish(EXIT_LIMIT, back);
    drop(proxy);
    assert!(resumed, "the proxy did not listen again on its port");
    let saved = saved_ids(&db);
    let dead_letter_sub = format!("{subscription}-dead-letters");
    let tally = runtime().block_on(async {
        let mut remaining = HashSet::new();
        let mut dead_letters = HashSet::new();
        // A delivery whose ack was lost in the cut is leased still: Pub/Sub hands it out
        // again only once its deadline (10 s) runs out. Until every id is accounted for,
        // look again after one.
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(11)).await;
            }
            remaining.extend(ids_of(&emulator.drain(&subscription, 1000).await.payloads));
            dead_letters.extend(ids_of(
                &emulator.drain(&dead_letter_sub, 1000).await.payloads,
            ));
            let seen = |id: &Uuid| {
                saved.contains(id) || remaining.contains(id) || dead_letters.contains(id)
            };
            if ids.iter().all(seen) {
                break;
            }
        }
        emulator.delete(&topic, &subscription).await;
        Tally {
            remaining,
            dead_letters,
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    Run::new(seed, "cut", &plan, &ids, &saved, &tally, f)
}

//! The benchmark harness: runs the performance workloads P1 to P6 of BENCHMARKS.md, the
//! max-in-flight scaling runs, latency against offered load and a burst of panics, prints
//! markdown tables, and writes `bench.json` (every run) and `bench.svg` (the plot) to
//! `target/bench`, or to the directory given as the first argument.
//!
//! Run it with `just bench`, which builds the release binary first. Most workloads run
//! the real binary; P2's raw insert, P6 and the panic burst run in this process, against
//! the library. Every workload that is timed runs three times and reports the median.
//!
//! `--plot-only DIR` reads `DIR/bench.json`, prints its tables and draws `DIR/bench.svg`
//! again, so that the plot can change without running the benchmarks.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use mandrill::actors::Pipeline;
use mandrill::app::{Extension, Started};
use mandrill::config::{Config, StoreKind};
use mandrill::names::ChildName;
use mandrill::protocol::Shutdown;
use mandrill::supervision::{guard, Child as _, Link};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod support;
use support::{binary, median};

const RUNS: usize = 3;
/// The flags every pipeline throughput run shares: P1's workload.
const PIPELINE: &[&str] = &[
    "--messages",
    "1000000",
    "--publish-delay",
    "0",
    "--io-delay",
    "0",
    "--failure-rate",
    "0.25",
    "--max-deliveries",
    "1",
    "--seed",
    "1",
];
/// P5's fixed IO delay.
const P5_IO: Duration = Duration::from_millis(10);
/// The offered loads at which the ack latency is measured, msgs/s: from the talk's pace
/// to P5's.
const LOADS: [f64; 5] = [1e3, 5e3, 2e4, 5e4, 1e5];
/// How long each run at an offered load publishes: long enough for a p99 of thousands of
/// messages at the lowest load, short enough to keep the series under a minute and a half.
const LOAD_SECS: f64 = 3.0;
/// Each phase of the panic burst: healthy, panicking, healthy again.
const BURST_PHASE: Duration = Duration::from_secs(2);
/// How often the panicking actor is told to panic during the burst: a hundred times
/// P6's rate, which costs nothing measurable, so that any cost a panic has shows.
const BURST_PANICS_PER_S: u32 = 100_000;
/// The load offered in the burst runs, as a share of P6's healthy rate. Paced, the rate
/// holds steady while the loop has room, so that a dip and the catch-up after it stand
/// out; unpaced, it swings by half whenever a table of the pipeline grows. Nearer the
/// healthy rate, it swings by half without panics too.
const BURST_LOAD: f64 = 0.5;
/// How often the burst run's status line gives the rate: four points a second show a dip
/// and its recovery without most of each point being noise.
const BURST_STATUS_EVERY: Duration = Duration::from_millis(250);

fn conserved(r: &Value) -> bool {
    let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
    n("published") == n("acked") + n("dead_lettered") + n("pending_at_exit")
}

/// A kB figure from /proc/PID/status, such as VmRSS or VmHWM.
fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

struct Run {
    report: Value,
    /// Peak RSS, sampled every 10 ms while the process ran.
    peak_rss_kb: u64,
}

/// Runs the binary to the end, stderr to `stderr` (or nowhere), sampling its peak RSS.
fn run(args: &[&str], stderr: Option<&Path>) -> Run {
    let err = match stderr {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("stderr file")),
        None => Stdio::null(),
    };
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("run mandrill");
    let mut peak = 0;
    while child.try_wait().expect("try_wait").is_none() {
        peak = peak.max(proc_kb(child.id(), "VmHWM").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{args:?}: {:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(text.lines().last().expect("a report")).expect("json report");
    assert!(conserved(&report), "invariant broken: {report}");
    Run {
        report,
        peak_rss_kb: peak,
    }
}

fn rate(args: &[&str], stderr: Option<&Path>) -> f64 {
    run(args, stderr).report["msgs_per_s"]
        .as_f64()
        .expect("msgs_per_s")
}

fn with(extra: &[&str]) -> Vec<String> {
    PIPELINE
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A process filled with messages in flight: 1 s of IO each, a publisher as fast as it
/// goes, the status line every half second telling how many are in flight.
struct Loaded {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Loaded {
    /// Publishes at the rate that keeps `max_in_flight` in flight with 1 s of IO each,
    /// and a little over: enough to fill the window without a growing backlog, which
    /// would be measured as memory per in-flight message.
    fn start(max_in_flight: usize, db: &Path, extra: &[&str]) -> Self {
        let rate = (max_in_flight as f64 * 1.05).to_string();
        Self::start_with(
            max_in_flight,
            db,
            &[&["--publish-rate", &rate], extra].concat(),
        )
    }

    fn start_with(max_in_flight: usize, db: &Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(binary())
            .args(["--io-delay", "1", "--io-fixed", "--log", "none"])
            .args(["--status", "always", "--status-every", "0.5"])
            .args(["--max-in-flight", &max_in_flight.to_string()])
            // Room for the whole window and as much again waiting, so that the backlog's
            // bound never caps what is in flight.
            .args(["--max-backlog", &(2 * max_in_flight).to_string()])
            .arg("--db")
            .arg(db)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mandrill");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        Self { child, lines }
    }

    /// Waits until the status line shows at least `n` in flight; returns the count.
    fn wait_in_flight(&self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) else {
                continue;
            };
            let count = line
                .split(" in flight")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|s| s.parse::<usize>().ok());
            if let Some(c) = count.filter(|&c| c >= n) {
                return c;
            }
        }
        panic!("never reached {n} in flight");
    }

    fn rss_kb(&self) -> u64 {
        proc_kb(self.child.id(), "VmRSS").expect("VmRSS")
    }

    /// SIGTERM, then the time to exit and the report.
    fn terminate(self) -> (Duration, Value) {
        let sent = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("signal");
        let out = self.child.wait_with_output().expect("wait");
        let took = sent.elapsed();
        assert!(out.status.success(), "{:?}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(text.lines().last().expect("a report")).expect("json");
        (took, report)
    }
}

/// RSS of a process that holds nothing in flight: it publishes one message an hour.
fn idle_rss_kb(db: &Path) -> u64 {
    let l = Loaded::start_with(1000, db, &["--publish-delay", "3600"]);
    std::thread::sleep(Duration::from_secs(2));
    let rss = l.rss_kb();
    l.terminate();
    rss
}

/// Rows per second for batched inserts straight into the store, no actors involved:
/// 1000 a transaction, the ids time-ordered as the publisher makes them.
fn raw_insert(path: &Path) -> f64 {
    use mandrill::message::{InstanceName, Message};
    use mandrill::store::{sqlite::SqliteStore, SaveRow, Store};
    let mut store = SqliteStore::open(path).expect("open store");
    let name = InstanceName::parse("cattle-zpsk").expect("valid name");
    let rows: Vec<SaveRow> = (0..1_000_000)
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

/// P6's panicking actor: a child of the real supervision tree that panics on every
/// tick. Before panicking it mails itself a probe, which the restarted actor handles
/// first: the supervision guard times the gap from the panic to that handler call.
struct Panicker {
    link: Link,
}

impl Actor for Panicker {
    type Context = Context<Self>;
}

impl mandrill::supervision::Child for Panicker {
    const NAME: ChildName = ChildName::Extension("panicker");
    fn link(&self) -> &Link {
        &self.link
    }
    fn retire(&mut self) {}
    fn is_retired(&self) -> bool {
        false
    }
}

impl Supervised for Panicker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        mandrill::supervision::note_restart(self);
    }
}

mandrill::restart_on_request!(Panicker);

#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

#[derive(Message)]
#[rtype(result = "()")]
struct Probe;

impl Handler<Tick> for Panicker {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        ctx.address().do_send(Probe);
        guard(self, ctx, "Tick", |_, _| panic!("injected panic"));
    }
}

impl Handler<Probe> for Panicker {
    type Result = ();
    fn handle(&mut self, _: Probe, ctx: &mut Context<Self>) {
        guard(self, ctx, "Probe", |_, _| ());
    }
}

impl Handler<Shutdown> for Panicker {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {}
}

struct AddPanicker {
    per_second: u32,
    /// When to panic; from the start to the end of the run without one.
    during: Option<Range<Instant>>,
}

impl Extension for AddPanicker {
    fn name(&self) -> ChildName {
        Panicker::NAME
    }

    fn start(self: Box<Self>, link: Link, _: &Pipeline) -> Started {
        let p = actix::Supervisor::start(move |_| Panicker { link });
        let every = Duration::from_secs(1) / self.per_second;
        let (from, until) = match self.during {
            Some(w) => (w.start, Some(w.end)),
            None => (Instant::now(), None),
        };
        let ticker = p.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let mut interval = tokio::time::interval(every);
            while ticker.connected() && until.is_none_or(|u| Instant::now() < u) {
                interval.tick().await;
                ticker.do_send(Tick);
            }
        });
        Started {
            restart: p.clone().recipient(),
            shutdown: p.recipient(),
        }
    }
}

/// P1's workload, for `messages` messages, as this process runs it.
fn p1_config(messages: u64) -> Config {
    Config {
        messages: Some(messages),
        publish_delay: Duration::ZERO,
        publish_jitter: false,
        io_delay: Duration::ZERO,
        failure_rate: 0.25,
        max_deliveries: 1,
        store: StoreKind::Memory,
        seed: Some(1),
        // Panics this frequent would otherwise exceed the restart intensity.
        max_restarts: u32::MAX,
        handle_signals: false,
        ..Config::default()
    }
}

/// Runs `config` in this process, with `ext` added to the tree.
fn in_process(config: Config, ext: Vec<Box<dyn Extension>>) -> mandrill::report::Report {
    let report = mandrill::app::run_extended(config, Box::new(std::io::empty()), ext)
        .expect("in-process run");
    assert!(report.conserved());
    report
}

/// The rate of a status line, from its leading `Status: N msgs/s` only: the rest of the
/// line's wording may change.
fn status_rate(line: &str) -> Option<f64> {
    let (n, rest) = line.split_once("Status: ")?.1.split_once(' ')?;
    rest.starts_with("msgs/s").then(|| n.parse().ok())?
}

/// Collects the rate of each status line written to it, with the time since `start`.
#[derive(Clone)]
struct StatusRates {
    start: Instant,
    samples: Arc<Mutex<Vec<(f64, f64)>>>,
}

impl std::io::Write for StatusRates {
    /// The subscriber writes each event whole, in one call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(rate) = status_rate(&String::from_utf8_lossy(buf)) {
            let t = self.start.elapsed().as_secs_f64();
            self.samples.lock().expect("samples").push((t, rate));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// P1's workload in this process at `offered` msgs/s for three phases of `BURST_PHASE`,
/// with the status line's rate taken every `BURST_STATUS_EVERY`: once as it is, once with
/// the panicking actor panicking in the middle phase only. The run without panics shows
/// what the burst's run would have done without them: the rate dips at the same points in
/// both, whenever a table of the pipeline grows.
fn burst(offered: f64) -> Burst {
    let (control, _) = paced(offered, false);
    let (samples, report) = paced(offered, true);
    Burst {
        offered_msgs_per_s: offered,
        panics_per_s: BURST_PANICS_PER_S,
        from_s: BURST_PHASE.as_secs_f64(),
        until_s: 2.0 * BURST_PHASE.as_secs_f64(),
        every_s: BURST_STATUS_EVERY.as_secs_f64(),
        samples,
        control,
        panics: report.counts.panics,
        msgs_per_s: report.msgs_per_s,
    }
}

/// One run of `burst`: the status lines' rates and the report. The status line is a log
/// event: a subscriber of this thread, where the event loop runs, takes the Monitor's
/// events and no others, so that the guard's log of each caught panic costs no more than
/// in P6.
fn paced(offered: f64, panics: bool) -> (Vec<(f64, f64)>, mandrill::report::Report) {
    let start = Instant::now();
    let from = start + BURST_PHASE;
    let rates = StatusRates {
        start,
        samples: Arc::default(),
    };
    let writer = rates.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "mandrill::actors::monitor=info",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let config = Config {
        status_every: Some(BURST_STATUS_EVERY),
        publish_rate: Some(offered),
        ..p1_config((offered * 3.0 * BURST_PHASE.as_secs_f64()) as u64)
    };
    let ext: Vec<Box<dyn Extension>> = if panics {
        vec![Box::new(AddPanicker {
            per_second: BURST_PANICS_PER_S,
            during: Some(from..from + BURST_PHASE),
        })]
    } else {
        Vec::new()
    };
    let report = tracing::subscriber::with_default(subscriber, || in_process(config, ext));
    let samples = rates.samples.lock().expect("samples").clone();
    (samples, report)
}

/// P5's flags at `rate` msgs/s for `messages`, then `store`'s.
fn p5_args(rate: f64, messages: u64, store: &[&str]) -> Vec<String> {
    let fixed = [
        "--io-fixed",
        "--max-in-flight",
        "10000",
        "--failure-rate",
        "0.25",
        "--max-deliveries",
        "1",
        "--flush-interval",
        "0",
        "--log",
        "none",
    ];
    let io = format!("{}", P5_IO.as_secs_f64());
    let paced = [
        "--publish-rate".to_string(),
        format!("{rate}"),
        "--messages".to_string(),
        messages.to_string(),
        "--io-delay".to_string(),
        io,
    ];
    paced
        .into_iter()
        .chain(fixed.iter().chain(store).map(|a| a.to_string()))
        .collect()
}

/// p50 and p99 of the ack latency, ms, and the rate served, msgs/s, with `offered`
/// msgs/s published: P5's flags on the memory store, for `LOAD_SECS`.
fn at_load(offered: f64) -> (f64, f64, f64) {
    let messages = (offered * LOAD_SECS) as u64;
    let args = p5_args(offered, messages, &["--store", "memory"]);
    let run = run(&strs(&args), None);
    let l = &run.report["ack_latency_ms"];
    let q = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
    (
        q("p50"),
        q("p99"),
        run.report["msgs_per_s"].as_f64().unwrap_or(0.0),
    )
}

/// One window size: every run of each measure.
#[derive(Serialize, Deserialize, Default)]
struct Scale {
    max_in_flight: usize,
    /// With P1's flags.
    msgs_per_s: Vec<f64>,
    /// Of the same runs, whose memory store keeps every message.
    peak_rss_mb: Vec<f64>,
    /// With 1 s of IO, as the status line counted them when RSS was read.
    in_flight_at_1s_io: Vec<f64>,
    rss_above_idle_mb: Vec<f64>,
}

/// One offered load: every run's figures.
#[derive(Serialize, Deserialize, Default)]
struct Load {
    offered_msgs_per_s: f64,
    msgs_per_s: Vec<f64>,
    /// Publish to ack, the 10 ms of IO included.
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
}

/// One run through a burst of panics.
#[derive(Serialize, Deserialize, Default)]
struct Burst {
    offered_msgs_per_s: f64,
    /// Asked of the ticker; `panics` says how many there were.
    panics_per_s: u32,
    /// When the panics started and stopped, seconds from the start of the run.
    from_s: f64,
    until_s: f64,
    /// How often the status line was written, seconds.
    every_s: f64,
    /// Each status line: when it was written, seconds from the start, and its rate over
    /// the `every_s` before, msgs/s.
    samples: Vec<(f64, f64)>,
    /// The same from the same run without the panics.
    control: Vec<(f64, f64)>,
    panics: u64,
    msgs_per_s: f64,
}

impl Burst {
    /// The median rate of `samples` before, during and after the panics, of the status
    /// lines whose interval lies within the phase (give or take a fifth of one). The
    /// first line, which includes the start-up, and the last, cut short by the end, are
    /// left out.
    fn phases(&self, samples: &[(f64, f64)]) -> [f64; 3] {
        let inner = match samples.len() {
            0..=2 => &[][..],
            n => &samples[1..n - 1],
        };
        let slack = self.every_s / 5.0;
        let within = |from: f64, until: f64| {
            let rates: Vec<f64> = inner
                .iter()
                .filter(|&&(t, _)| t - self.every_s >= from - slack && t <= until + slack)
                .map(|&(_, rate)| rate)
                .collect();
            if rates.is_empty() {
                f64::NAN
            } else {
                median(&rates)
            }
        };
        [
            within(0.0, self.from_s),
            within(self.from_s, self.until_s),
            within(self.until_s, f64::INFINITY),
        ]
    }
}

/// Every run of every workload, as `bench.json` keeps them for `--plot-only`. A field
/// missing from an older file is left empty.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct Results {
    p1_msgs_per_s: Vec<f64>,
    p1_log_info_msgs_per_s: Vec<f64>,
    /// The same 250k messages as the logging run, without per-message logs.
    p1_log_none_msgs_per_s: Vec<f64>,
    p2_msgs_per_s: Vec<f64>,
    p2_raw_insert_rows_per_s: Vec<f64>,
    p3_bytes_per_in_flight: Vec<f64>,
    p4_exit_ms: Vec<f64>,
    p4_nacked_on_shutdown: Vec<u64>,
    p4_conserved: Vec<bool>,
    /// p50, p90, p99, p999 of (publish-to-ack latency minus the IO delay), ms, per run.
    p5_overhead_ms: Vec<[f64; 4]>,
    p5_msgs_per_s: Vec<f64>,
    /// The same with `--store memory`: the pipeline without the database.
    p5_memory_overhead_ms: Vec<[f64; 4]>,
    p5_memory_msgs_per_s: Vec<f64>,
    p6_recovery_p50_us: Vec<f64>,
    p6_healthy_msgs_per_s: Vec<f64>,
    p6_panicking_msgs_per_s: Vec<f64>,
    p6_panics: Vec<u64>,
    /// P1 on the binary with panics injected into the Saver at about 1,000 a second,
    /// without and with the dashboard open in a page that reads every event.
    #[serde(default)]
    p6_flood_msgs_per_s: Vec<f64>,
    #[serde(default)]
    p6_flood_watched_msgs_per_s: Vec<f64>,
    #[serde(default)]
    p6_flood_panics_per_s: Vec<f64>,
    scaling: Vec<Scale>,
    /// The ack latency at each of `LOADS`.
    loads: Vec<Load>,
    burst: Burst,
}

/// P1's workload on the binary, with `--inject` panicking the Saver at about 1,000 times
/// a second, first without the dashboard and then with it open: a page reads every event
/// of the flood (four a panic) as fast as the stream gives them. The cost to the pipeline
/// is the difference in throughput, which P6's budget bounds at 10%.
fn flood(r: &mut Results) {
    // How often a Saver call panics for about 1,000 panics a second, found from two
    // runs: calls a second vary with the machine, and with how often they panic.
    let mut probe = 0.001;
    let args = |rate: f64| {
        with(&[
            "--store",
            "memory",
            "--log",
            "none",
            "--max-restarts",
            "100000",
        ])
        .into_iter()
        .chain(["--inject".to_string(), format!("panic:saver={rate}")])
        .collect::<Vec<String>>()
    };
    for _ in 0..2 {
        let first = run(&strs(&args(probe)), None).report;
        let per_s =
            first["panics"].as_f64().unwrap_or(0.0) / first["elapsed_s"].as_f64().unwrap_or(1.0);
        probe = (probe * 1000.0 / per_s.max(1.0)).min(0.5);
    }
    let rate = probe;
    for _ in 0..RUNS {
        let plain = run(&strs(&args(rate)), None).report;
        let watched = watched_run(&strs(&args(rate)));
        r.p6_flood_msgs_per_s
            .push(plain["msgs_per_s"].as_f64().unwrap_or(0.0));
        r.p6_flood_watched_msgs_per_s
            .push(watched["msgs_per_s"].as_f64().unwrap_or(0.0));
        r.p6_flood_panics_per_s.push(
            watched["panics"].as_f64().unwrap_or(0.0)
                / watched["elapsed_s"].as_f64().unwrap_or(1.0),
        );
    }
}

/// Runs the binary with the dashboard on and a page reading its stream to the end; gives
/// the report.
fn watched_run(args: &[&str]) -> Value {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(binary())
        .args(args)
        .args(["--dashboard", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mandrill");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let at = l.split("dashboard at http://").nth(1)?;
            Some(at.trim_end_matches('/').to_string())
        })
        .expect("the dashboard's address");
    // The rest of the log is drained, so that the service never waits on its stderr.
    std::thread::spawn(move || lines.for_each(drop));
    let page = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the dashboard");
        write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("ask for events");
        let mut sink = [0u8; 64 * 1024];
        let mut read = 0usize;
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 {
                break;
            }
            read += n;
        }
        read
    });
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{args:?}: {:?}", out.status);
    let read = page.join().expect("the page");
    assert!(read > 0, "the page read nothing");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(text.lines().last().expect("a report")).expect("json report");
    assert!(conserved(&report), "invariant broken: {report}");
    report
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice() {
        if flag == "--plot-only" {
            let dir = PathBuf::from(dir);
            let json = std::fs::read_to_string(dir.join("bench.json")).expect("read bench.json");
            let r: Results = serde_json::from_str(&json).expect("parse bench.json");
            table(&r);
            plot(&r, &dir.join("bench.svg")).expect("draw bench.svg");
            eprintln!("wrote {}/bench.svg", dir.display());
            return;
        }
    }
    let out_dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&out_dir).expect("output directory");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = |name: &str| dir.path().join(format!("{name}.db"));
    let mut r = Results::default();

    for i in 0..RUNS {
        eprintln!("run {}/{RUNS}: P1, P2, logging cost", i + 1);
        r.p1_msgs_per_s.push(rate(
            &strs(&with(&["--store", "memory", "--log", "none"])),
            None,
        ));
        // A quarter of P1's messages: at four lines each, a million would write 600 MB.
        let log = dir.path().join(format!("info-{i}.log"));
        let mut info = with(&["--store", "memory", "--log", "info"]);
        info[1] = "250000".into();
        r.p1_log_info_msgs_per_s
            .push(rate(&strs(&info), Some(&log)));
        let mut none = with(&["--store", "memory", "--log", "none"]);
        none[1] = "250000".into();
        r.p1_log_none_msgs_per_s.push(rate(&strs(&none), None));
        let _ = std::fs::remove_file(&log);
        let p = db(&format!("p2-{i}"));
        r.p2_msgs_per_s.push(rate(
            &strs(&with(&[
                "--db",
                p.to_str().expect("utf-8"),
                "--log",
                "none",
            ])),
            None,
        ));
        r.p2_raw_insert_rows_per_s
            .push(raw_insert(&db(&format!("raw-{i}"))));
    }

    eprintln!("P3 and P4: 100k in flight");
    let idle = idle_rss_kb(&db("idle"));
    for i in 0..RUNS {
        let l = Loaded::start(
            100_000,
            &db(&format!("p3-{i}")),
            &["--drain-timeout", "0", "--shield-timeout", "0"],
        );
        let n = l.wait_in_flight(99_000);
        // Let the allocator settle on the new high-water mark before reading.
        std::thread::sleep(Duration::from_millis(500));
        let rss = l.rss_kb();
        r.p3_bytes_per_in_flight
            .push((rss.saturating_sub(idle) * 1024) as f64 / n as f64);
        let (took, report) = l.terminate();
        r.p4_exit_ms.push(took.as_secs_f64() * 1000.0);
        r.p4_nacked_on_shutdown
            .push(report["nacked_on_shutdown"].as_u64().unwrap_or(0));
        r.p4_conserved.push(conserved(&report));
    }

    eprintln!("P5: 100k msgs/s offered, 10 ms of IO, SQLite and memory stores");
    let p5 = |store: &[&str]| {
        // Earlier runs leave hundreds of megabytes of deleted database files for the
        // kernel to write back, and a checkpoint's fsync waits behind them: flush them
        // first, so that each run measures itself.
        nix::unistd::sync();
        let run = run(&strs(&p5_args(100_000.0, 500_000, store)), None);
        let l = &run.report["ack_latency_ms"];
        let io_ms = P5_IO.as_secs_f64() * 1000.0;
        let q = |k: &str| l[k].as_f64().unwrap_or(f64::NAN) - io_ms;
        (
            [q("p50"), q("p90"), q("p99"), q("p999")],
            run.report["msgs_per_s"].as_f64().unwrap_or(0.0),
        )
    };
    for i in 0..RUNS {
        let p = db(&format!("p5-{i}"));
        let (q, rate) = p5(&["--db", p.to_str().expect("utf-8")]);
        r.p5_overhead_ms.push(q);
        r.p5_msgs_per_s.push(rate);
        let (q, rate) = p5(&["--store", "memory"]);
        r.p5_memory_overhead_ms.push(q);
        r.p5_memory_msgs_per_s.push(rate);
    }

    eprintln!("latency against offered load: 1k to 100k msgs/s, 10 ms of IO, memory store");
    r.loads = LOADS
        .iter()
        .map(|&offered| Load {
            offered_msgs_per_s: offered,
            ..Load::default()
        })
        .collect();
    // Run by run across the loads, so that a slow spell of the machine spreads over all
    // of them rather than landing on one.
    for _ in 0..RUNS {
        for l in &mut r.loads {
            let (p50, p99, rate) = at_load(l.offered_msgs_per_s);
            l.p50_ms.push(p50);
            l.p99_ms.push(p99);
            l.msgs_per_s.push(rate);
        }
    }

    eprintln!("P6: a panicking actor, in process");
    // As in `main`: the guard logs each caught panic; the default hook would also print
    // it, with a backtrace under RUST_BACKTRACE, a thousand times a second.
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..RUNS {
        let healthy = in_process(p1_config(1_000_000), Vec::new());
        let panicker = AddPanicker {
            per_second: 1000,
            during: None,
        };
        let panicking = in_process(p1_config(1_000_000), vec![Box::new(panicker)]);
        r.p6_healthy_msgs_per_s.push(healthy.msgs_per_s);
        r.p6_panicking_msgs_per_s.push(panicking.msgs_per_s);
        r.p6_recovery_p50_us
            .push(panicking.panic_recovery_ms.p50 * 1000.0);
        r.p6_panics.push(panicking.counts.panics);
    }

    eprintln!("P6 with the dashboard: a flood of failures with the page open");
    flood(&mut r);

    eprintln!("scaling: max-in-flight 1k, 10k, 100k");
    for mif in [1_000usize, 10_000, 100_000] {
        let m = mif.to_string();
        let backlog = (2 * mif).to_string();
        let mut s = Scale {
            max_in_flight: mif,
            ..Scale::default()
        };
        for i in 0..RUNS {
            let x = run(
                &strs(&with(&[
                    "--store",
                    "memory",
                    "--log",
                    "none",
                    "--max-in-flight",
                    &m,
                    "--max-backlog",
                    &backlog,
                ])),
                None,
            );
            s.msgs_per_s
                .push(x.report["msgs_per_s"].as_f64().unwrap_or(0.0));
            s.peak_rss_mb.push(x.peak_rss_kb as f64 / 1024.0);
            let l = Loaded::start(mif, &db(&format!("scale-{mif}-{i}")), &[]);
            let n = l.wait_in_flight(mif * 99 / 100);
            std::thread::sleep(Duration::from_millis(500));
            let rss = l.rss_kb();
            l.terminate();
            s.in_flight_at_1s_io.push(n as f64);
            s.rss_above_idle_mb
                .push(rss.saturating_sub(idle) as f64 / 1024.0);
        }
        r.scaling.push(s);
    }

    // Rounded, so that the figure reads well in the caption.
    let offered = (median(&r.p6_healthy_msgs_per_s) * BURST_LOAD / 1e4).round() * 1e4;
    eprintln!(
        "a burst of {BURST_PANICS_PER_S} panics/s, in process, {offered} msgs/s offered, {} s \
         into the run",
        BURST_PHASE.as_secs()
    );
    r.burst = burst(offered);

    table(&r);
    let json = serde_json::to_string_pretty(&r).expect("json");
    std::fs::write(out_dir.join("bench.json"), json).expect("write bench.json");
    plot(&r, &out_dir.join("bench.svg")).expect("draw bench.svg");
    eprintln!("wrote {0}/bench.json and {0}/bench.svg", out_dir.display());
}

fn fmt(xs: &[f64], digits: usize) -> String {
    xs.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn table(r: &Results) {
    let p1 = median(&r.p1_msgs_per_s);
    let p2 = median(&r.p2_msgs_per_s);
    let raw = median(&r.p2_raw_insert_rows_per_s);
    let p3 = median(&r.p3_bytes_per_in_flight);
    let p4 = median(&r.p4_exit_ms);
    let p5: Vec<f64> = r.p5_overhead_ms.iter().map(|q| q[2]).collect();
    let p5m = median(&p5);
    let p5_mem: Vec<f64> = r.p5_memory_overhead_ms.iter().map(|q| q[2]).collect();
    let p5m_mem = median(&p5_mem);
    let rec = median(&r.p6_recovery_p50_us);
    let healthy = median(&r.p6_healthy_msgs_per_s);
    let panicking = median(&r.p6_panicking_msgs_per_s);
    let cost = 1.0 - panicking / healthy;
    let info = median(&r.p1_log_info_msgs_per_s);
    let none = median(&r.p1_log_none_msgs_per_s);
    println!("| # | workload | runs | median | target | |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| P1 | in-memory pipeline, msgs/s | {} | {p1:.0} | >= 1,000,000 | {} |",
        fmt(&r.p1_msgs_per_s, 0),
        verdict(p1 >= 1e6)
    );
    println!(
        "| P2 | durable pipeline, msgs/s | {} | {p2:.0} | >= 400,000 | {} |",
        fmt(&r.p2_msgs_per_s, 0),
        verdict(p2 >= 4e5)
    );
    println!(
        "| P2 | raw batched insert, rows/s; ratio | {} | {raw:.0}; {:.2} | ratio >= 0.45 | {} |",
        fmt(&r.p2_raw_insert_rows_per_s, 0),
        p2 / raw,
        verdict(p2 / raw >= 0.45)
    );
    println!(
        "| P3 | RSS per in-flight message above idle, bytes | {} | {p3:.0} | <= 1024 | {} |",
        fmt(&r.p3_bytes_per_in_flight, 0),
        verdict(p3 <= 1024.0)
    );
    println!(
        "| P4 | SIGTERM with 100k in flight to exit, ms | {} | {p4:.0} | <= 100 | {} |",
        fmt(&r.p4_exit_ms, 0),
        verdict(p4 <= 100.0 && r.p4_conserved.iter().all(|&c| c))
    );
    println!(
        "| P5 | p99 of latency minus IO at 100k msgs/s, SQLite store, ms | {} | {p5m:.2} | <= 1 | {} |",
        fmt(&p5, 2),
        verdict(p5m <= 1.0)
    );
    println!(
        "| P5 | the same, memory store, ms | {} | {p5m_mem:.2} | <= 1 | {} |",
        fmt(&p5_mem, 2),
        verdict(p5m_mem <= 1.0)
    );
    println!(
        "| P6 | panic to serving again, median, µs | {} | {rec:.0} | <= 100 | {} |",
        fmt(&r.p6_recovery_p50_us, 0),
        verdict(rec <= 100.0)
    );
    println!(
        "| P6 | throughput lost to 1,000 panics/s | {} vs {} | {:.1}% | <= 10% | {} |",
        fmt(&r.p6_panicking_msgs_per_s, 0),
        fmt(&r.p6_healthy_msgs_per_s, 0),
        cost * 100.0,
        verdict(cost <= 0.10)
    );
    if !r.p6_flood_msgs_per_s.is_empty() {
        let plain = median(&r.p6_flood_msgs_per_s);
        let watched = median(&r.p6_flood_watched_msgs_per_s);
        let cost = 1.0 - watched / plain;
        println!(
            "| P6 | throughput lost to the dashboard open under {:.0} panics/s | {} vs {} | {:.1}% | <= 10% | {} |",
            median(&r.p6_flood_panics_per_s),
            fmt(&r.p6_flood_watched_msgs_per_s, 0),
            fmt(&r.p6_flood_msgs_per_s, 0),
            cost * 100.0,
            verdict(cost <= 0.10)
        );
    }
    println!(
        "| - | 250k of P1 with per-message logs (`--log info`, to a file), msgs/s | {} | {info:.0} | report | {:.1}x slower than {none:.0} without |",
        fmt(&r.p1_log_info_msgs_per_s, 0),
        none / info
    );
    println!();
    println!(
        "P4 runs: nacked on shutdown {:?}, invariant held {:?}. P6 panics per run {:?}.",
        r.p4_nacked_on_shutdown, r.p4_conserved, r.p6_panics
    );
    let ms = |qs: &[[f64; 4]]| -> Vec<String> {
        qs.iter()
            .map(|q| format!("{:.2}/{:.2}/{:.2}/{:.2}", q[0], q[1], q[2], q[3]))
            .collect()
    };
    println!(
        "P5 latency minus IO per run, p50/p90/p99/p99.9 ms: SQLite {:?}, memory {:?}.",
        ms(&r.p5_overhead_ms),
        ms(&r.p5_memory_overhead_ms)
    );
    println!();
    println!("| max-in-flight | msgs/s (P1 flags) | peak RSS, MB | in flight at 1 s IO | RSS above idle, MB |");
    println!("|---|---|---|---|---|");
    for s in &r.scaling {
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} |",
            s.max_in_flight,
            median(&s.msgs_per_s),
            median(&s.peak_rss_mb),
            median(&s.in_flight_at_1s_io),
            median(&s.rss_above_idle_mb)
        );
    }
    println!();
    println!(
        "| offered, msgs/s | served, msgs/s | p99 ack latency, ms (10 ms of IO) | median p99, ms |"
    );
    println!("|---|---|---|---|");
    for l in &r.loads {
        println!(
            "| {:.0} | {} | {} | {:.2} |",
            l.offered_msgs_per_s,
            fmt(&l.msgs_per_s, 0),
            fmt(&l.p99_ms, 2),
            median(&l.p99_ms)
        );
    }
    println!();
    println!(
        "P5 msgs/s at 100k offered: SQLite {} (median {:.0}), memory {} (median {:.0}).",
        fmt(&r.p5_msgs_per_s, 0),
        median(&r.p5_msgs_per_s),
        fmt(&r.p5_memory_msgs_per_s, 0),
        median(&r.p5_memory_msgs_per_s)
    );
    let b = &r.burst;
    println!(
        "Panic burst at {:.0} msgs/s offered: {} panics/s asked from {:.1} s to {:.1} s, {} \
         caught, {:.0} msgs/s over the run. Medians of the status lines' rates (every {:.2} s), \
         msgs/s:",
        b.offered_msgs_per_s,
        b.panics_per_s,
        b.from_s,
        b.until_s,
        b.panics,
        b.msgs_per_s,
        b.every_s,
    );
    println!();
    println!("| run | before | during | after |");
    println!("|---|---|---|---|");
    for (run, samples) in [
        ("with the burst", &b.samples),
        ("without panics", &b.control),
    ] {
        let [before, during, after] = b.phases(samples);
        println!("| {run} | {before:.0} | {during:.0} | {after:.0} |");
    }
}

/// A figure in the plot's own units: 1.2M, 589k, 10k, 2.5, 0.25.
fn si(v: f64) -> String {
    let (x, unit) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    // Three significant figures at most.
    let digits = match x.abs() {
        a if a < 1.0 => 3,
        a if a < 10.0 => 2,
        a if a < 100.0 => 1,
        _ => 0,
    };
    let text = format!("{x:.digits$}");
    let text = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => &text,
    };
    format!("{text}{unit}")
}

/// Ticks for a log axis from `lo` to `hi`: 1, 2 and 5 of each power of ten.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    (first..=last)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|&v| v >= lo && v <= hi)
        .collect()
}

type Area<'a> =
    plotters::drawing::DrawingArea<plotters::backend::SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, X, Y> = plotters::chart::ChartContext<
    'a,
    plotters::backend::SVGBackend<'a>,
    plotters::coord::cartesian::Cartesian2d<X, Y>,
>;
type Fallible = Result<(), Box<dyn std::error::Error>>;
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::{RGBColor, ShapeStyle};

// Every colour is solid, with no opacity: ImageMagick's own SVG renderer draws an
// element's opacity as full.
const STEEL: RGBColor = RGBColor(31, 119, 180);
const BRICK: RGBColor = RGBColor(214, 39, 40);
const LEAF: RGBColor = RGBColor(44, 140, 44);
const GRID: RGBColor = RGBColor(225, 225, 225);
const SHADE: RGBColor = RGBColor(253, 226, 226);
const GREY: RGBColor = RGBColor(160, 160, 160);
const CAPTION: (&str, u32) = ("sans-serif", 21);
const LABELS: (&str, u32) = ("sans-serif", 16);

/// `color` mixed with white, `f` of the way to white.
fn pale(color: RGBColor, f: f64) -> RGBColor {
    let mix = |c: u8| (c as f64 + (255.0 - c as f64) * f).round() as u8;
    RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

/// A log axis's range for figures from `lo` to `hi`, with a quarter of its height free
/// above them for the legend, and a little below.
fn headroom(lo: f64, hi: f64) -> (f64, f64) {
    let decades = (hi / lo).log10().max(1.0);
    (
        lo / 10f64.powf(decades * 0.08),
        hi * 10f64.powf(decades * 0.4),
    )
}

/// The smallest and largest of `xs`.
fn span(xs: impl IntoIterator<Item = f64>) -> (f64, f64) {
    xs.into_iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// The caption and label areas every panel shares.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
) -> plotters::chart::ChartBuilder<'a, 'b, plotters::backend::SVGBackend<'b>> {
    let mut b = plotters::chart::ChartBuilder::on(area);
    b.caption(caption, CAPTION)
        .margin(14)
        .x_label_area_size(62)
        .y_label_area_size(58);
    b
}

/// The grid and labels every panel shares: light lines at the ticks only. The y axis's
/// unit is in the caption, since ImageMagick's own SVG renderer draws no rotated text.
fn mesh<X, Y>(m: &mut plotters::chart::MeshStyle<'_, '_, X, Y, plotters::backend::SVGBackend<'_>>)
where
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    m.max_light_lines(0)
        .bold_line_style(GRID)
        .axis_style(plotters::style::BLACK)
        .label_style(LABELS)
        .axis_desc_style(LABELS);
}

/// Draws the runs at `x`: each run a small ring, a whisker from the least to the most,
/// and the median a bar across it.
fn spread<X, Y>(c: &mut Chart<'_, X, Y>, x: f64, runs: &[f64], color: RGBColor) -> Fallible
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    if runs.is_empty() {
        return Ok(());
    }
    let (lo, hi) = span(runs.iter().copied());
    c.draw_series(std::iter::once(PathElement::new(
        vec![(x, lo), (x, hi)],
        color.stroke_width(1),
    )))?;
    c.draw_series(
        runs.iter()
            .map(|&v| Circle::new((x, v), 3, color.stroke_width(1))),
    )?;
    c.draw_series(std::iter::once(
        EmptyElement::at((x, median(runs)))
            + PathElement::new(vec![(-8, 0), (8, 0)], color.stroke_width(3)),
    ))?;
    Ok(())
}

/// A line through `points`, drawn as one segment per pair: ImageMagick's own SVG
/// renderer, scaling a line of many points, closes it back to its start.
fn line<X, Y>(c: &mut Chart<'_, X, Y>, points: &[(f64, f64)], style: ShapeStyle) -> Fallible
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    c.draw_series(
        points
            .windows(2)
            .map(|w| PathElement::new(vec![w[0], w[1]], style)),
    )?;
    Ok(())
}

/// A line through the medians, under the runs.
fn median_line<X, Y>(c: &mut Chart<'_, X, Y>, points: &[(f64, f64)], color: RGBColor) -> Fallible
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    line(c, points, pale(color, 0.5).into())
}

/// One line of a key: its label, colour, and whether it stands for runs drawn by
/// `spread` (a bar and a ring) or for a line.
struct Entry(String, RGBColor, bool);

/// Draws a key of `entries`, one a line, downwards from the top left corner of the
/// plot, or upwards from its bottom left corner. Plotters' own legend centres its text
/// on the marker by an offset that ImageMagick's own SVG renderer misreads, pushing the
/// text below its box; text hung from its top lands where it should in both.
fn key<X, Y>(c: &mut Chart<'_, X, Y>, entries: &[Entry], top: bool) -> Fallible
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    let (x, y) = (c.x_range(), c.y_range());
    let corner = (x.start, if top { y.end } else { y.start });
    let font = LABELS
        .into_font()
        .color(&BLACK)
        .pos(plotters::style::text_anchor::Pos::new(
            HPos::Left,
            VPos::Top,
        ));
    let n = entries.len() as i32;
    for (i, Entry(label, color, runs)) in entries.iter().enumerate() {
        // The top of this line's text, in pixels below the corner.
        let dy = if top {
            10 + 22 * i as i32
        } else {
            -10 - 22 * (n - i as i32)
        };
        let width = if *runs { 3 } else { 2 };
        c.draw_series(std::iter::once(
            EmptyElement::at(corner)
                + PathElement::new(vec![(12, dy + 8), (32, dy + 8)], color.stroke_width(width))
                + Text::new(label.clone(), (40, dy), font.clone()),
        ))?;
        if *runs {
            c.draw_series(std::iter::once(
                EmptyElement::at(corner) + Circle::new((22, dy + 8), 3, color.stroke_width(1)),
            ))?;
        }
    }
    Ok(())
}

/// The label of the category at `v`, for an axis with a category at each whole number.
fn category(names: &[&str], v: f64) -> String {
    let i = v.round();
    match names.get(i as usize) {
        Some(name) if (v - i).abs() < 0.01 && i >= 0.0 => name.to_string(),
        _ => String::new(),
    }
}

/// The panels, in three rows: the window's effect on throughput and memory; latency
/// and the stores; the panic burst over time, across the whole width. Every panel shows
/// one measure on its own axis, every run of it, and the median of the runs.
fn plot(r: &Results, path: &Path) -> Fallible {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1500, 1260)).into_drawing_area();
        root.fill(&WHITE)?;
        let (grid, bottom) = root.split_vertically(860);
        let panels = grid.split_evenly((2, 3));
        scaling_panels(r, &panels[..3])?;
        latency_panel(r, &panels[3])?;
        load_panel(r, &panels[4])?;
        store_panel(r, &panels[5])?;
        burst_panel(&r.burst, &bottom)?;
        root.present()?;
    }
    // ImageMagick's own SVG renderer fills a line that carries an opacity attribute,
    // even with `fill="none"`; full opacity is the default, so the attribute can go.
    std::fs::write(path, svg.replace(r#" opacity="1""#, ""))?;
    Ok(())
}

/// Throughput, memory with the window full, and the P1 runs' peak memory, against the
/// window on a log axis.
fn scaling_panels(r: &Results, panels: &[Area]) -> Fallible {
    use plotters::prelude::*;
    let windows: Vec<f64> = r.scaling.iter().map(|s| s.max_in_flight as f64).collect();
    let x_axis = || {
        (500f64..200_000.0)
            .log_scale()
            .with_key_points(windows.clone())
    };
    type Measure = fn(&Scale) -> &[f64];
    let measures: [(&str, Measure, RGBColor); 3] = [
        (
            "Throughput by max-in-flight, P1 flags, msgs/s",
            |s| &s.msgs_per_s,
            STEEL,
        ),
        (
            "RSS above idle, window full (1 s IO), MB (log)",
            |s| &s.rss_above_idle_mb,
            BRICK,
        ),
        (
            "Peak RSS of the P1 runs (1M msgs kept), MB",
            |s| &s.peak_rss_mb,
            LEAF,
        ),
    ];
    for (area, (caption, measure, color)) in panels.iter().zip(measures) {
        let (lo, hi) = span(r.scaling.iter().flat_map(|s| measure(s).iter().copied()));
        let medians: Vec<(f64, f64)> = r
            .scaling
            .iter()
            .map(|s| (s.max_in_flight as f64, median(measure(s))))
            .collect();
        // The memory with the window full grows a hundredfold over the windows: on log
        // axes, growth in proportion to the window is a straight line.
        if color == BRICK {
            let y = (lo / 2.0..hi * 2.0)
                .log_scale()
                .with_key_points(log_ticks(lo / 2.0, hi * 2.0));
            let mut c = panel(area, caption).build_cartesian_2d(x_axis(), y)?;
            let mut m = c.configure_mesh();
            mesh(&mut m);
            m.x_desc("max-in-flight (log)")
                .x_label_formatter(&|v| si(*v))
                .y_label_formatter(&|v| si(*v))
                .draw()?;
            median_line(&mut c, &medians, color)?;
            for s in &r.scaling {
                spread(&mut c, s.max_in_flight as f64, measure(s), color)?;
            }
        } else {
            let mut c =
                panel(area, caption).build_cartesian_2d(x_axis(), 0f64..(hi * 1.15).max(1.0))?;
            let mut m = c.configure_mesh();
            mesh(&mut m);
            m.x_desc("max-in-flight (log)")
                .x_label_formatter(&|v| si(*v))
                .y_label_formatter(&|v| si(*v))
                .draw()?;
            median_line(&mut c, &medians, color)?;
            for s in &r.scaling {
                spread(&mut c, s.max_in_flight as f64, measure(s), color)?;
            }
        }
    }
    Ok(())
}

/// P5's percentiles of latency above the IO, SQLite beside memory, on a log axis: the
/// two stores' tails differ by a factor of up to a hundred.
fn latency_panel(r: &Results, area: &Area) -> Fallible {
    use plotters::prelude::*;
    let names = ["p50", "p90", "p99", "p99.9"];
    // A log axis has no zero: a figure at or under it is drawn at a microsecond.
    let floor = |v: f64| v.max(1e-3);
    let (lo, hi) = span(
        r.p5_overhead_ms
            .iter()
            .chain(&r.p5_memory_overhead_ms)
            .flatten()
            .map(|&v| floor(v)),
    );
    let (lo, hi) = headroom(lo, hi);
    let y = (lo..hi).log_scale().with_key_points(log_ticks(lo, hi));
    let mut c = panel(area, "P5 latency minus the 10 ms IO, ms (log)")
        .build_cartesian_2d(-0.5f64..3.5, y)?;
    let mut m = c.configure_mesh();
    mesh(&mut m);
    m.disable_x_mesh()
        .x_labels(names.len())
        .x_label_formatter(&|v| category(&names, *v))
        .x_desc("percentile, acked messages, 100k msgs/s offered")
        .y_label_formatter(&|v| si(*v))
        .draw()?;
    let mut entries = Vec::new();
    for (store, runs, color, dx) in [
        ("SQLite store", &r.p5_overhead_ms, STEEL, -0.15),
        ("memory store", &r.p5_memory_overhead_ms, BRICK, 0.15),
    ] {
        for i in 0..names.len() {
            let at: Vec<f64> = runs.iter().map(|q| floor(q[i])).collect();
            spread(&mut c, i as f64 + dx, &at, color)?;
        }
        entries.push(Entry(format!("{store}, {} runs", runs.len()), color, true));
    }
    key(&mut c, &entries, true)
}

/// The p99 of the ack latency against the load offered, with the IO's 10 ms marked: what
/// is above the line is the pipeline's own.
fn load_panel(r: &Results, area: &Area) -> Fallible {
    use plotters::prelude::*;
    let offered: Vec<f64> = r.loads.iter().map(|l| l.offered_msgs_per_s).collect();
    let (_, hi) = span(r.loads.iter().flat_map(|l| l.p99_ms.iter().copied()));
    let io_ms = P5_IO.as_secs_f64() * 1000.0;
    let mut c = panel(area, "p99 ack latency by offered load, ms").build_cartesian_2d(
        (500f64..200_000.0).log_scale().with_key_points(offered),
        0f64..(hi.max(io_ms) * 1.2),
    )?;
    let mut m = c.configure_mesh();
    mesh(&mut m);
    m.x_desc("offered msgs/s (log), memory store")
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| si(*v))
        .draw()?;
    c.draw_series(std::iter::once(plotters::element::DashedPathElement::new(
        vec![(500.0, io_ms), (200_000.0, io_ms)],
        6,
        4,
        BLACK,
    )))?;
    c.draw_series(std::iter::once(Text::new(
        "the 10 ms of IO",
        (560.0, io_ms * 0.96),
        LABELS
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                HPos::Left,
                VPos::Top,
            )),
    )))?;
    let medians: Vec<(f64, f64)> = r
        .loads
        .iter()
        .map(|l| (l.offered_msgs_per_s, median(&l.p99_ms)))
        .collect();
    median_line(&mut c, &medians, STEEL)?;
    for l in &r.loads {
        spread(&mut c, l.offered_msgs_per_s, &l.p99_ms, STEEL)?;
    }
    Ok(())
}

/// The rate with SQLite beside that with the memory store, unpaced (P2 and P1) and at
/// P5's 100k msgs/s offered; on a log axis, so that both loads show their spread.
fn store_panel(r: &Results, area: &Area) -> Fallible {
    use plotters::prelude::*;
    let groups = ["unpaced (P2, P1)", "100k offered (P5)"];
    let (lo, hi) = span(
        [
            &r.p1_msgs_per_s,
            &r.p2_msgs_per_s,
            &r.p5_msgs_per_s,
            &r.p5_memory_msgs_per_s,
        ]
        .into_iter()
        .flatten()
        .copied(),
    );
    let (lo, hi) = headroom(lo, hi);
    let y = (lo..hi).log_scale().with_key_points(log_ticks(lo, hi));
    let mut c =
        panel(area, "Throughput by store, msgs/s (log)").build_cartesian_2d(-0.5f64..1.5, y)?;
    let mut m = c.configure_mesh();
    mesh(&mut m);
    m.disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|v| category(&groups, *v))
        .x_desc("offered load")
        .y_label_formatter(&|v| si(*v))
        .draw()?;
    let mut entries = Vec::new();
    for (store, runs, color, dx) in [
        ("SQLite", [&r.p2_msgs_per_s, &r.p5_msgs_per_s], STEEL, -0.12),
        (
            "memory",
            [&r.p1_msgs_per_s, &r.p5_memory_msgs_per_s],
            BRICK,
            0.12,
        ),
    ] {
        for (i, runs) in runs.iter().enumerate() {
            spread(&mut c, i as f64 + dx, runs, color)?;
        }
        entries.push(Entry(format!("{store} store, {RUNS} runs"), color, true));
    }
    key(&mut c, &entries, true)
}

/// The rate over time through the burst of panics, and without them: each status
/// line's rate drawn over the interval it covers, the panicking phase shaded, and each
/// phase's median in the burst's run dashed.
fn burst_panel(b: &Burst, area: &Area) -> Fallible {
    use plotters::prelude::*;
    let last = |s: &[(f64, f64)]| s.last().map_or(1.0, |s| s.0);
    let end = last(&b.samples).max(last(&b.control)).ceil();
    let (_, hi) = span(b.samples.iter().chain(&b.control).map(|s| s.1));
    let top = hi.max(1.0) * 1.3;
    let caption = format!(
        "Throughput through {:.0} s of {} panics/s, P1's workload in process at {} offered, msgs/s",
        b.until_s - b.from_s,
        si(b.panics_per_s as f64),
        si(b.offered_msgs_per_s),
    );
    let mut c = panel(area, &caption).build_cartesian_2d(0f64..end, 0f64..top)?;
    let mut m = c.configure_mesh();
    mesh(&mut m);
    m.x_desc(format!(
        "seconds from the start; each step is the status line's rate over {} s",
        b.every_s
    ))
    .x_label_formatter(&|v| si(*v))
    .y_label_formatter(&|v| si(*v))
    .draw()?;
    c.draw_series(std::iter::once(Rectangle::new(
        [(b.from_s, 0.0), (b.until_s, top)],
        SHADE.filled(),
    )))?;
    let steps = |samples: &[(f64, f64)]| -> Vec<(f64, f64)> {
        samples
            .iter()
            .flat_map(|&(t, rate)| [((t - b.every_s).max(0.0), rate), (t, rate)])
            .collect()
    };
    let runs = [
        ("the same run without panics", &b.control, GREY),
        ("with the burst of panics", &b.samples, STEEL),
    ];
    for (_, samples, color) in runs {
        line(&mut c, &steps(samples), color.stroke_width(2))?;
    }
    let phases = [
        (0.0, b.from_s, "healthy"),
        (b.from_s, b.until_s, "panicking"),
        (b.until_s, end, "healthy again"),
    ];
    let label = LABELS
        .into_font()
        .color(&BLACK)
        .pos(plotters::style::text_anchor::Pos::new(
            HPos::Left,
            VPos::Top,
        ));
    let with = b.phases(&b.samples);
    let without = b.phases(&b.control);
    for (((from, until, name), rate), control) in phases.into_iter().zip(with).zip(without) {
        if rate.is_finite() {
            c.draw_series(std::iter::once(plotters::element::DashedPathElement::new(
                vec![(from, rate), (until, rate)],
                6,
                4,
                BLACK.stroke_width(1),
            )))?;
        }
        c.draw_series(std::iter::once(Text::new(
            format!("{name}: median {} ({} without)", si(rate), si(control)),
            (from + 0.08, top * 0.97),
            label.clone(),
        )))?;
    }
    let entries: Vec<Entry> = runs
        .iter()
        .map(|&(name, _, color)| Entry(name.into(), color, false))
        .collect();
    key(&mut c, &entries, false)
}

//! The benchmark harness: runs the performance workloads P1 to P6 of BENCHMARKS.md and
//! the max-in-flight scaling runs, prints a markdown table, and writes `bench.json` and
//! `bench.svg` (throughput and memory against max-in-flight, latency percentiles) to
//! `target/bench`, or to the directory given as the first argument.
//!
//! Run it with `just bench`, which builds the release binary first. Most workloads run
//! the real binary; P2's raw insert and P6 run in this process, against the library.
//! Every workload that is timed runs three times and reports the median.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
use serde::Serialize;
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
}

impl Extension for AddPanicker {
    fn name(&self) -> ChildName {
        Panicker::NAME
    }

    fn start(self: Box<Self>, link: Link, _: &Pipeline) -> Started {
        let p = actix::Supervisor::start(move |_| Panicker { link });
        let every = Duration::from_secs(1) / self.per_second;
        let ticker = p.clone();
        actix_rt::spawn(async move {
            let mut interval = tokio::time::interval(every);
            while ticker.connected() {
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

/// P1's workload in this process, with or without a thousand panics a second.
fn in_process(panics_per_s: Option<u32>) -> mandrill::report::Report {
    let config = Config {
        messages: Some(1_000_000),
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
    };
    let ext: Vec<Box<dyn Extension>> = match panics_per_s {
        Some(n) => vec![Box::new(AddPanicker { per_second: n })],
        None => Vec::new(),
    };
    let report = mandrill::app::run_extended(config, Box::new(std::io::empty()), ext)
        .expect("in-process run");
    assert!(report.conserved());
    report
}

#[derive(Serialize)]
struct Scale {
    max_in_flight: usize,
    msgs_per_s: f64,
    peak_rss_mb: f64,
    in_flight_at_1s_io: usize,
    rss_above_idle_mb: f64,
}

#[derive(Serialize, Default)]
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
    p6_recovery_p50_us: Vec<f64>,
    p6_healthy_msgs_per_s: Vec<f64>,
    p6_panicking_msgs_per_s: Vec<f64>,
    p6_panics: Vec<u64>,
    scaling: Vec<Scale>,
}

fn main() {
    let out_dir = std::env::args()
        .nth(1)
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
    let io = format!("{}", P5_IO.as_secs_f64());
    let p5 = |store: &[&str]| {
        // Earlier runs leave hundreds of megabytes of deleted database files for the
        // kernel to write back, and a checkpoint's fsync waits behind them: flush them
        // first, so that each run measures itself.
        nix::unistd::sync();
        let run = run(
            &[
                &[
                    "--publish-rate",
                    "100000",
                    "--messages",
                    "500000",
                    "--io-delay",
                    &io,
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
                ],
                store,
            ]
            .concat(),
            None,
        );
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
        let (q, _) = p5(&["--store", "memory"]);
        r.p5_memory_overhead_ms.push(q);
    }

    eprintln!("P6: a panicking actor, in process");
    // As in `main`: the guard logs each caught panic; the default hook would also print
    // it, with a backtrace under RUST_BACKTRACE, a thousand times a second.
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..RUNS {
        let healthy = in_process(None);
        let panicking = in_process(Some(1000));
        r.p6_healthy_msgs_per_s.push(healthy.msgs_per_s);
        r.p6_panicking_msgs_per_s.push(panicking.msgs_per_s);
        r.p6_recovery_p50_us
            .push(panicking.panic_recovery_ms.p50 * 1000.0);
        r.p6_panics.push(panicking.counts.panics);
    }

    eprintln!("scaling: max-in-flight 1k, 10k, 100k");
    for mif in [1_000usize, 10_000, 100_000] {
        let m = mif.to_string();
        let runs: Vec<Run> = (0..RUNS)
            .map(|_| {
                run(
                    &strs(&with(&[
                        "--store",
                        "memory",
                        "--log",
                        "none",
                        "--max-in-flight",
                        &m,
                    ])),
                    None,
                )
            })
            .collect();
        let rates: Vec<f64> = runs
            .iter()
            .map(|x| x.report["msgs_per_s"].as_f64().unwrap_or(0.0))
            .collect();
        let peaks: Vec<f64> = runs.iter().map(|x| x.peak_rss_kb as f64).collect();
        let l = Loaded::start(mif, &db(&format!("scale-{mif}")), &[]);
        let n = l.wait_in_flight(mif * 99 / 100);
        std::thread::sleep(Duration::from_millis(500));
        let rss = l.rss_kb();
        l.terminate();
        r.scaling.push(Scale {
            max_in_flight: mif,
            msgs_per_s: median(&rates),
            peak_rss_mb: median(&peaks) / 1024.0,
            in_flight_at_1s_io: n,
            rss_above_idle_mb: rss.saturating_sub(idle) as f64 / 1024.0,
        });
    }

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
            "| {} | {:.0} | {:.1} | {} | {:.1} |",
            s.max_in_flight, s.msgs_per_s, s.peak_rss_mb, s.in_flight_at_1s_io, s.rss_above_idle_mb
        );
    }
}

fn plot(r: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let x = |s: &Scale| (s.max_in_flight as f64).log10();

    let top = r.scaling.iter().map(|s| s.msgs_per_s).fold(0.0, f64::max) * 1.2;
    let mut c = ChartBuilder::on(&panels[0])
        .caption("throughput vs max-in-flight", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(2.8f64..5.2, 0f64..top.max(1.0))?;
    c.configure_mesh()
        .x_desc("max-in-flight (log10)")
        .y_desc("msgs/s")
        .draw()?;
    c.draw_series(LineSeries::new(
        r.scaling.iter().map(|s| (x(s), s.msgs_per_s)),
        &BLUE,
    ))?;
    c.draw_series(
        r.scaling
            .iter()
            .map(|s| Circle::new((x(s), s.msgs_per_s), 4, BLUE.filled())),
    )?;

    let top = r
        .scaling
        .iter()
        .map(|s| s.rss_above_idle_mb.max(s.peak_rss_mb))
        .fold(0.0, f64::max)
        * 1.2;
    let mut c = ChartBuilder::on(&panels[1])
        .caption("memory vs max-in-flight", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..110_000.0, 0f64..top.max(1.0))?;
    c.configure_mesh()
        .x_desc("max-in-flight")
        .y_desc("MB")
        .draw()?;
    c.draw_series(LineSeries::new(
        r.scaling
            .iter()
            .map(|s| (s.in_flight_at_1s_io as f64, s.rss_above_idle_mb)),
        &RED,
    ))?
    .label("RSS above idle, all in flight (1 s IO)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    c.draw_series(LineSeries::new(
        r.scaling
            .iter()
            .map(|s| (s.max_in_flight as f64, s.peak_rss_mb)),
        &GREEN,
    ))?
    .label("peak RSS, P1 flags")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let names = ["p50", "p90", "p99", "p99.9"];
    let top = r
        .p5_overhead_ms
        .iter()
        .chain(&r.p5_memory_overhead_ms)
        .flat_map(|q| q.iter().copied())
        .fold(0.0, f64::max)
        * 1.2;
    let mut c = ChartBuilder::on(&panels[2])
        .caption("P5: latency minus 10 ms IO", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..3.5, 0f64..top.max(1.0))?;
    c.configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|v| names.get(v.round() as usize).unwrap_or(&"").to_string())
        .y_desc("ms")
        .draw()?;
    let runs = r
        .p5_overhead_ms
        .iter()
        .map(|q| ("SQLite", q, BLUE))
        .chain(r.p5_memory_overhead_ms.iter().map(|q| ("memory", q, RED)));
    for (i, (store, q, color)) in runs.enumerate() {
        let series = c.draw_series(LineSeries::new(
            q.iter().enumerate().map(|(j, v)| (j as f64, *v)),
            color,
        ))?;
        // One legend entry per store; every run is drawn.
        if i % RUNS == 0 {
            series
                .label(format!("{store} store, {RUNS} runs"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

//! The real-broker benchmarks, each figure beside the ones it is judged against, all
//! measured in one run: prints a markdown table and writes `bench_brokers.json` to
//! `target/bench`, or to the directory given as the first argument.
//!
//! - JetStream: msgs/s end to end through the pipeline, beside a bare async-nats
//!   pull-and-ack loop on the same server; and msgs/s per instance with one, two and
//!   three instances on one durable consumer.
//! - Pub/Sub emulator: msgs/s end to end through the pipeline, beside a bare synchronous
//!   pull-and-acknowledge loop, and beside the talk's own design on Google's Python
//!   client (`examples/talk_subscriber.py`) with one, four and eight streaming pulls.
//!
//! It uses the NATS server at `MANDRILL_TEST_NATS_URL` (default `nats://127.0.0.1:4222`),
//! the emulator at `PUBSUB_EMULATOR_HOST` or one of its own, and the Python at
//! `MANDRILL_BENCH_PYTHON` (`just bench` makes a virtualenv with the client). Every
//! figure is the median of three runs, each on a stream or subscription of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

mod support;
use support::emulator::{Emulator, PROJECT};
use support::{delete_stream, instances, mandrill, median, total_rate};

const RUNS: usize = 3;
const MESSAGES: usize = 20_000;
/// The pipeline's flags for a pure broker figure: no simulated IO, no failures.
const QUICK: &[&str] = &[
    "--io-delay",
    "0",
    "--failure-rate",
    "0",
    "--min-restart-interval",
    "0",
    "--store",
    "memory",
    "--log",
    "none",
];

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Publishes the simulated messages into a fresh stream.
fn fill_stream(url: &str, stream: &str) {
    let n = MESSAGES.to_string();
    mandrill(
        &[
            "publish",
            "--to",
            "jetstream",
            "--create",
            "--nats-url",
            url,
        ]
        .into_iter()
        .chain(["--stream", stream, "--messages", &n])
        .collect::<Vec<_>>(),
        &[],
    );
}

/// The pipeline's rate on a stream filled for it.
fn jetstream_pipeline(url: &str) -> f64 {
    let stream = unique("BENCH");
    fill_stream(url, &stream);
    let n = MESSAGES.to_string();
    let mut args = vec![
        "--source",
        "jetstream",
        "--nats-url",
        url,
        "--stream",
        &stream,
    ];
    args.extend(["--create", "--messages", &n]);
    args.extend(QUICK);
    let r = mandrill(&args, &[]);
    delete_stream(url, &stream);
    r["msgs_per_s"].as_f64().unwrap_or(0.0)
}

/// A bare async-nats pull-and-ack loop on a stream filled the same way.
fn jetstream_raw(url: &str) -> f64 {
    let stream = unique("BENCH");
    fill_stream(url, &stream);
    let rate = rt().block_on(async {
        use async_nats::jetstream::consumer::{pull, AckPolicy};
        let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("nats"));
        let s = js.get_stream(&stream).await.expect("stream");
        let consumer = s
            .create_consumer(pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let started = Instant::now();
        let mut messages = consumer.messages().await.expect("messages");
        for _ in 0..MESSAGES {
            let m = messages.next().await.expect("a message").expect("ok");
            m.ack().await.expect("ack");
        }
        MESSAGES as f64 / started.elapsed().as_secs_f64()
    });
    delete_stream(url, &stream);
    rate
}

/// Instances on one durable consumer: the mean of their own rates, and the total.
fn jetstream_instances(url: &str, k: usize) -> (f64, f64) {
    let stream = unique("BENCH");
    fill_stream(url, &stream);
    let mut args = vec![
        "--source",
        "jetstream",
        "--nats-url",
        url,
        "--stream",
        &stream,
    ];
    args.extend(["--consumer", "shared", "--create", "--idle-exit", "1"]);
    args.extend(QUICK);
    let reports = instances(&args, k);
    delete_stream(url, &stream);
    let rates: Vec<f64> = reports
        .iter()
        .map(|r| r["msgs_per_s"].as_f64().unwrap_or(0.0))
        .collect();
    (rates.iter().sum::<f64>() / k as f64, total_rate(&reports))
}

/// A fresh topic and subscription with the simulated messages in it.
fn fill_subscription(emulator: &Emulator) -> (String, String) {
    let id = unique("bench");
    let topic = format!("projects/{PROJECT}/topics/{id}");
    let sub = format!("projects/{PROJECT}/subscriptions/{id}");
    let n = MESSAGES.to_string();
    mandrill(
        &["publish", "--to", "pubsub", "--create", "--topic", &topic]
            .into_iter()
            .chain(["--subscription", &sub, "--messages", &n])
            .collect::<Vec<_>>(),
        &[("PUBSUB_EMULATOR_HOST", &emulator.host)],
    );
    (topic, sub)
}

fn delete_subscription(emulator: &Emulator, topic: &str, sub: &str) {
    rt().block_on(emulator.delete(topic, sub));
}

fn pubsub_pipeline(emulator: &Emulator) -> f64 {
    let (topic, sub) = fill_subscription(emulator);
    let n = MESSAGES.to_string();
    let mut args = vec![
        "--source",
        "pubsub",
        "--subscription",
        &sub,
        "--messages",
        &n,
    ];
    args.extend(QUICK);
    let r = mandrill(&args, &[("PUBSUB_EMULATOR_HOST", &emulator.host)]);
    delete_subscription(emulator, &topic, &sub);
    r["msgs_per_s"].as_f64().unwrap_or(0.0)
}

/// The emulator's own ceiling: synchronous pulls of up to 1,000, each acked at once.
fn pubsub_bare(emulator: &Emulator) -> f64 {
    let (topic, sub) = fill_subscription(emulator);
    let rate = rt().block_on(async {
        let client = emulator.client().await;
        let subscription = client.subscription(&sub);
        let started = Instant::now();
        let mut got = 0;
        while got < MESSAGES {
            let batch = subscription.pull(1000, None).await.expect("pull");
            got += batch.len();
            let ids = batch.iter().map(|m| m.ack_id().to_string()).collect();
            subscription.ack(ids).await.expect("ack");
        }
        got as f64 / started.elapsed().as_secs_f64()
    });
    delete_subscription(emulator, &topic, &sub);
    rate
}

/// The talk's design on Google's Python client, with `streams` streaming pulls.
fn pubsub_python(emulator: &Emulator, python: &Path, streams: usize) -> Option<f64> {
    let (topic, sub) = fill_subscription(emulator);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/talk_subscriber.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--subscription", &sub, "--messages", &MESSAGES.to_string()])
        .args(["--streams", &streams.to_string()])
        .env("PUBSUB_EMULATOR_HOST", &emulator.host)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    delete_subscription(emulator, &topic, &sub);
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.lines().last()?).ok()?;
    r["msgs_per_s"].as_f64()
}

#[derive(Serialize)]
struct Results {
    messages: usize,
    jetstream_pipeline: f64,
    jetstream_raw: f64,
    /// Instances on one consumer: (count, mean msgs/s per instance, total msgs/s).
    jetstream_instances: Vec<(usize, f64, f64)>,
    pubsub_pipeline: f64,
    pubsub_bare: f64,
    /// The talk's Python design: (streams, msgs/s).
    pubsub_python: Vec<(usize, f64)>,
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or("target/bench".into()));
    std::fs::create_dir_all(&dir).expect("output directory");
    let url = std::env::var("MANDRILL_TEST_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    let python = std::env::var("MANDRILL_BENCH_PYTHON")
        .map(PathBuf::from)
        .ok();
    let emulator = Emulator::get().expect("the pub/sub emulator");

    eprintln!("JetStream: pipeline and raw loop, {RUNS} runs each");
    let (mut pipe, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        pipe.push(jetstream_pipeline(&url));
        raw.push(jetstream_raw(&url));
    }
    eprintln!("JetStream: one, two and three instances");
    let jetstream_instances = (1..=3)
        .map(|k| {
            let runs: Vec<_> = (0..RUNS).map(|_| jetstream_instances(&url, k)).collect();
            let per = median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
            let total = median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
            (k, per, total)
        })
        .collect();
    eprintln!("Pub/Sub emulator: pipeline, bare loop and the talk's Python design");
    let (mut ps_pipe, mut ps_bare) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ps_pipe.push(pubsub_pipeline(&emulator));
        ps_bare.push(pubsub_bare(&emulator));
    }
    let pubsub_python = match &python {
        Some(py) => [1, 4, 8]
            .into_iter()
            .filter_map(|streams| {
                let runs: Vec<f64> = (0..RUNS)
                    .filter_map(|_| pubsub_python(&emulator, py, streams))
                    .collect();
                (!runs.is_empty()).then(|| (streams, median(&runs)))
            })
            .collect(),
        None => {
            eprintln!("MANDRILL_BENCH_PYTHON is not set: the Python figures are left out");
            Vec::new()
        }
    };
    let r = Results {
        messages: MESSAGES,
        jetstream_pipeline: median(&pipe),
        jetstream_raw: median(&raw),
        jetstream_instances,
        pubsub_pipeline: median(&ps_pipe),
        pubsub_bare: median(&ps_bare),
        pubsub_python,
    };
    table(&r);
    let json = serde_json::to_string_pretty(&r).expect("json");
    std::fs::write(dir.join("bench_brokers.json"), json).expect("write bench_brokers.json");
}

fn table(r: &Results) {
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "\n{} messages a run; medians of {RUNS} runs\n\n| broker | what | msgs/s | against |\n|---|---|---:|---|",
        r.messages
    );
    let js = r.jetstream_pipeline / r.jetstream_raw;
    println!(
        "| JetStream | pipeline end to end | {:.0} | {:.2} of the raw loop (target 0.7: {}) |",
        r.jetstream_pipeline,
        js,
        verdict(js >= 0.7)
    );
    println!(
        "| JetStream | bare async-nats pull-and-ack loop | {:.0} | |",
        r.jetstream_raw
    );
    for (k, per, total) in &r.jetstream_instances {
        println!(
            "| JetStream | {k} instance(s) on one consumer | {per:.0} each | {total:.0} in all |"
        );
    }
    let ps = r.pubsub_pipeline / r.pubsub_bare;
    println!(
        "| Pub/Sub emulator | pipeline end to end | {:.0} | {:.2} of the bare loop (target 0.8: {}) |",
        r.pubsub_pipeline,
        ps,
        verdict(ps >= 0.8)
    );
    println!(
        "| Pub/Sub emulator | bare synchronous pull-and-acknowledge loop | {:.0} | |",
        r.pubsub_bare
    );
    for (streams, rate) in &r.pubsub_python {
        println!("| Pub/Sub emulator | the talk's design, Python client, {streams} stream(s) | {rate:.0} | |");
    }
}

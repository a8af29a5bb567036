//! The fleet's benchmarks, against the PostgreSQL at `MANDRILL_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and the NATS server at
//! `MANDRILL_TEST_NATS_URL` (default `nats://127.0.0.1:4222`), side by side in one run:
//!
//! - the durable pipeline into PostgreSQL, beside a raw batched insert (`UNNEST`, 1,000
//!   rows a statement) into a table of the same shape on the same server;
//! - restart claims per second, three connections racing for one set of hosts, as three
//!   instances do, without and with the fleet's cap and rate (set too high to refuse, so
//!   that only their cost shows);
//! - JetStream into PostgreSQL, end to end, with one, two and three instances.
//!
//! Every workload runs in a schema of its own, dropped after. It prints a markdown table
//! of medians of three and writes `bench_fleet.json` into the directory it is given.

use std::path::PathBuf;
use std::time::Instant;

use mandrill::message::InstanceName;
use mandrill::store::postgres::PostgresStore;
use mandrill::store::{AttemptContext, Claim, ClaimTerms, FleetRails, Store};
use postgres::{Client, NoTls};
use serde::Serialize;

mod support;
use support::{delete_stream, instances, mandrill, median, total_rate};

const RUNS: usize = 3;
/// Messages a pipeline run into PostgreSQL saves, and rows the raw insert writes.
const ROWS: usize = 200_000;
/// Messages a JetStream run takes.
const STREAMED: usize = 20_000;

/// A schema of the benchmark's own, dropped when this is.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn new() -> Self {
        let base = std::env::var("MANDRILL_TEST_PG_URL")
            .unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        Client::connect(&base, NoTls)
            .expect("postgres")
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        Self { base, name }
    }

    /// The URL of the schema, for the service.
    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.base, self.name)
    }

    fn client(&self) -> Client {
        Client::connect(&self.url(), NoTls).expect("postgres")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.base, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

/// The talk's pipeline, P2's workload, saving into PostgreSQL; `guard` keeps the
/// default minimum interval, and so a claim per restart.
fn pipeline(guard: bool) -> f64 {
    let schema = Schema::new();
    let (url, n) = (schema.url(), ROWS.to_string());
    let mut args = vec!["--store", "postgres", "--db-url", &url, "--messages", &n];
    args.extend(["--publish-delay", "0", "--io-delay", "0", "--failure-rate"]);
    args.extend([
        "0.25",
        "--max-deliveries",
        "1",
        "--seed",
        "1",
        "--log",
        "none",
    ]);
    if !guard {
        args.extend(["--min-restart-interval", "0"]);
    }
    mandrill(&args, &[])["msgs_per_s"].as_f64().unwrap_or(0.0)
}

/// A bare batched insert into a table shaped as the store's, 1,000 rows a statement.
fn raw_insert() -> f64 {
    let schema = Schema::new();
    let mut c = schema.client();
    c.batch_execute(
        "CREATE TABLE messages (message_id uuid PRIMARY KEY, instance_name text NOT NULL,
                                deliveries integer NOT NULL)",
    )
    .expect("table");
    let started = Instant::now();
    for _ in 0..ROWS / 1000 {
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| uuid::Uuid::now_v7()).collect();
        let names: Vec<String> = (0..1000).map(|i| format!("cattle-{i:04}")).collect();
        let deliveries = vec![1i32; 1000];
        c.execute(
            "INSERT INTO messages SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[])
             ON CONFLICT (message_id) DO NOTHING",
            &[&ids, &names, &deliveries],
        )
        .expect("insert");
    }
    ROWS as f64 / started.elapsed().as_secs_f64()
}

/// Three connections claim batches of 100 hosts, drawn from one set of 1,000, as fast as
/// they can: decisions a second, all three together, and how many hosts were won.
fn claims(fleet: FleetRails) -> (f64, usize) {
    const RACERS: usize = 3;
    const BATCHES: usize = 200;
    let schema = Schema::new();
    let database: postgres::Config = schema.url().parse().expect("url");
    let open = || PostgresStore::open(&database).expect("open");
    drop(open());
    let hosts: Vec<InstanceName> = (0..1000)
        .map(|i| InstanceName::parse(&format!("web-{i:04}")).expect("name"))
        .collect();
    let started = Instant::now();
    let won: usize = std::thread::scope(|s| {
        let racers: Vec<_> = (0..RACERS)
            .map(|r| {
                let (mut store, hosts) = (open(), &hosts);
                s.spawn(move || {
                    let context = AttemptContext {
                        domain: "example.net".into(),
                        action: "sim",
                        leashed: false,
                        service: format!("bench-{r}").into(),
                        claimed: true,
                    };
                    let mut won = 0;
                    for b in 0..BATCHES {
                        let claims: Vec<Claim> = (0..100)
                            .map(|i| Claim {
                                host: hosts[(b * 37 + i * 7 + r * 11) % hosts.len()],
                                message_id: uuid::Uuid::now_v7(),
                            })
                            .collect();
                        let terms = ClaimTerms {
                            context: &context,
                            now_ms: 1_000 + b as i64,
                            interval_ms: 3_600_000,
                            ttl_ms: 60_000,
                            fleet,
                        };
                        let got = store.claim_restarts(&claims, &terms).expect("claim");
                        won += got.iter().filter(|c| c.won()).count();
                    }
                    won
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().expect("racer")).sum()
    });
    let rate = (RACERS * BATCHES * 100) as f64 / started.elapsed().as_secs_f64();
    (rate, won)
}

/// `k` instances on one JetStream consumer, saving into one PostgreSQL schema with the
/// guard on: the total rate, from the first start to the last message acked.
fn jetstream_into_postgres(nats: &str, k: usize) -> f64 {
    let schema = Schema::new();
    let stream = format!("BENCH_{}", uuid::Uuid::new_v4().simple());
    let n = STREAMED.to_string();
    mandrill(
        &[
            "publish",
            "--to",
            "jetstream",
            "--create",
            "--nats-url",
            nats,
            "--stream",
            &stream,
            "--messages",
            &n,
        ],
        &[],
    );
    let url = schema.url();
    let args = [
        "--source",
        "jetstream",
        "--nats-url",
        nats,
        "--stream",
        &stream,
        "--consumer",
        "shared",
        "--create",
        "--idle-exit",
        "1",
        "--store",
        "postgres",
        "--db-url",
        &url,
        "--io-delay",
        "0",
        "--failure-rate",
        "0",
        "--log",
        "none",
    ];
    let reports = instances(&args, k);
    delete_stream(nats, &stream);
    total_rate(&reports)
}

#[derive(Serialize)]
struct Results {
    pipeline: Vec<f64>,
    pipeline_guarded: Vec<f64>,
    raw_insert: Vec<f64>,
    claims_per_s: Vec<f64>,
    hosts_won: Vec<usize>,
    claims_with_rails_per_s: Vec<f64>,
    /// (instances, runs in msgs/s)
    jetstream_into_postgres: Vec<(usize, Vec<f64>)>,
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or("target/bench".into()));
    std::fs::create_dir_all(&dir).expect("output directory");
    let nats = std::env::var("MANDRILL_TEST_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    let mut r = Results {
        pipeline: Vec::new(),
        pipeline_guarded: Vec::new(),
        raw_insert: Vec::new(),
        claims_per_s: Vec::new(),
        hosts_won: Vec::new(),
        claims_with_rails_per_s: Vec::new(),
        jetstream_into_postgres: Vec::new(),
    };
    for i in 0..RUNS {
        eprintln!("run {}/{RUNS}: pipeline, raw insert, claims", i + 1);
        r.pipeline.push(pipeline(false));
        r.raw_insert.push(raw_insert());
        r.pipeline_guarded.push(pipeline(true));
        let (rate, won) = claims(FleetRails::default());
        r.claims_per_s.push(rate);
        r.hosts_won.push(won);
        let unreachable = FleetRails {
            running: Some(1 << 40),
            starts: Some((3_600_000, 1 << 40)),
        };
        let (rate, won) = claims(unreachable);
        assert_eq!(won, 1000, "rails set too high to refuse refused");
        r.claims_with_rails_per_s.push(rate);
    }
    for k in 1..=3 {
        eprintln!("JetStream into PostgreSQL, {k} instance(s)");
        let runs = (0..RUNS)
            .map(|_| jetstream_into_postgres(&nats, k))
            .collect();
        r.jetstream_into_postgres.push((k, runs));
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (pipe, raw) = (median(&r.pipeline), median(&r.raw_insert));
    println!("\n| workload | runs | median | against |\n|---|---|---:|---|");
    println!(
        "| durable pipeline into PostgreSQL, no guard (`--min-restart-interval 0`), msgs/s | {} | {pipe:.0} | {:.2} of the raw insert (target 0.5: {}) |",
        runs(&r.pipeline),
        pipe / raw,
        if pipe / raw >= 0.5 { "met" } else { "missed" }
    );
    println!(
        "| raw `UNNEST` insert, 1,000 rows a statement, rows/s | {} | {raw:.0} | |",
        runs(&r.raw_insert)
    );
    println!(
        "| durable pipeline into PostgreSQL with the guard (a new host almost every message), msgs/s | {} | {:.0} | |",
        runs(&r.pipeline_guarded),
        median(&r.pipeline_guarded)
    );
    println!(
        "| claims decided a second, 3 connections racing for 1,000 hosts | {} | {:.0} | hosts won: {:?} (1,000 each run) |",
        runs(&r.claims_per_s),
        median(&r.claims_per_s),
        r.hosts_won
    );
    println!(
        "| the same, with the fleet's cap and rate set, too high to refuse | {} | {:.0} | |",
        runs(&r.claims_with_rails_per_s),
        median(&r.claims_with_rails_per_s)
    );
    for (k, v) in &r.jetstream_into_postgres {
        println!(
            "| JetStream into PostgreSQL, {k} instance(s), guard on, msgs/s in all | {} | {:.0} | |",
            runs(v),
            median(v)
        );
    }
    let json = serde_json::to_string_pretty(&r).expect("json");
    std::fs::write(dir.join("bench_fleet.json"), json).expect("write bench_fleet.json");
}

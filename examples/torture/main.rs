//! The torture suite: scenarios that try to make the service lose a message, on the
//! release binary. Every scenario is bounded in runs and in time, and seeded, so that a
//! run can be replayed with `--seed`. It prints a table and writes
//! `target/torture/torture.json`; `RELIABILITY.md` holds the last full run.
//!
//!     cargo run --release --example torture -- [--quick] [--seed N] [--only A,B] [OUT_DIR]
//!
//! `--quick` is the slice CI runs: a few runs of each scenario. `--only` runs the named
//! scenarios alone: signals, panics, hostile, store, brokers, fleet, fuzz.
//!
//! Each scenario has its own module, which runs it and returns its rows of the table,
//! its runs for torture.json and what broke the promise:
//! 1. `signals`: SIGTERM, SIGINT or SIGHUP at a random moment in the first 3 s.
//! 2. `panics`: panics injected into every actor at 1% and at 10% of handler calls.
//! 3. `hostile`: hostile input on stdin, and the same payloads on JetStream and on the
//!    Pub/Sub emulator.
//! 4. `store`: a SIGKILL then a restart on the same file, a full disk, the database
//!    deleted, PostgreSQL backends terminated, and PostgreSQL restarted.
//! 5. `brokers`: the run's own nats-server stopped and restarted mid-run, and the Pub/Sub
//!    emulator's connections cut.
//! 6. `fleet`: three instances on one JetStream consumer and one PostgreSQL schema, one
//!    SIGKILLed mid-run.
//! 7. `fuzz`: cargo-fuzz targets for the message line, the config file and durations.
//!
//! The scenarios that need a server (NATS, PostgreSQL, the Pub/Sub emulator) fail under
//! `CI=true` when they cannot reach it, and elsewhere skip it with a loud row.

#[path = "../support/mod.rs"]
mod support;

mod brokers;
mod fleet;
mod fuzz;
mod hostile;
mod panics;
mod signals;
mod store;
mod util;

use std::path::PathBuf;
use std::time::Instant;

use util::{Options, Section};

/// A scenario: it runs its runs and returns its part of the result.
type Scenario = fn(&Options) -> Section;

/// The scenarios in the order they run, each under the name `--only` takes.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("signals", signals::run),
    ("panics", panics::run),
    ("hostile", hostile::run),
    ("store", store::run),
    ("brokers", brokers::run),
    ("fleet", fleet::run),
    ("fuzz", fuzz::run),
];

fn options(scratch: PathBuf) -> (Options, Option<Vec<String>>) {
    let mut o = Options {
        quick: false,
        seed: 2019,
        out: PathBuf::from("target/torture"),
        scratch,
    };
    let mut only = None;
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
            "--only" => {
                let names: Vec<String> = args
                    .next()
                    .expect("--only takes scenario names")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                for n in &names {
                    assert!(
                        SCENARIOS.iter().any(|(s, _)| s == n),
                        "no scenario {n}: the scenarios are {:?}",
                        SCENARIOS.iter().map(|(s, _)| *s).collect::<Vec<_>>()
                    );
                }
                only = Some(names);
            }
            dir => o.out = PathBuf::from(dir),
        }
    }
    (o, only)
}

fn main() {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let (o, only) = options(scratch.path().to_path_buf());
    std::fs::create_dir_all(&o.out).expect("the output directory");
    let start = Instant::now();
    let mut json = serde_json::Map::new();
    json.insert("seed".into(), o.seed.into());
    json.insert("quick".into(), o.quick.into());
    let mut sections = Vec::new();
    for (name, run) in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let section = run(&o);
        for (key, value) in &section.json {
            json.insert(key.to_string(), value.clone());
        }
        sections.push(section);
    }
    let seconds = start.elapsed().as_secs_f64();
    json.insert("seconds".into(), seconds.round().into());
    println!("| scenario | figure | value |");
    println!("|---|---|---|");
    for [scenario, figure, value] in sections.iter().flat_map(|s| &s.rows) {
        println!("| {scenario} | {figure} | {value} |");
    }
    let text = serde_json::to_string_pretty(&json).expect("json");
    std::fs::write(o.out.join("torture.json"), text).expect("write torture.json");
    eprintln!("wrote {}/torture.json, in {seconds:.0} s", o.out.display());
    let failed: Vec<&String> = sections.iter().flat_map(|s| &s.failures).collect();
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}

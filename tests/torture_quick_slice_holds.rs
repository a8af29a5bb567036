//! CI's slice of the torture suite: a few runs of each scenario of `examples/torture/`
//! on the debug binary, one test per scenario so that they run side by side. The runner
//! exits 1, naming the run, when any run broke the promise: a hang, a broken invariant, a
//! failed integrity check, saved rows that do not match the report, or a lost message.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `torture --quick --only scenario` and returns its torture.json.
fn quick(scenario: &str) -> Value {
    let bin = Path::new(env!("CARGO_BIN_EXE_mandrill"));
    let runner = bin
        .parent()
        .expect("the target directory")
        .join("examples")
        .join("torture");
    assert!(
        runner.exists(),
        "{} is missing: cargo test builds the examples",
        runner.display()
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&runner)
        .args(["--quick", "--only", scenario])
        .arg(out.path())
        .output()
        .expect("run the torture runner");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.path().join("torture.json")).unwrap())
        .expect("torture.json")
}

/// How many runs of a kind the slice made.
fn runs(json: &Value, key: &str) -> usize {
    json[key].as_array().map_or(0, Vec::len)
}

#[test]
fn signals_at_random_moments_lose_nothing() {
    let json = quick("signals");
    assert_eq!(runs(&json, "signals"), 8);
}

#[test]
fn panics_in_every_actor_lose_nothing() {
    let json = quick("panics");
    assert_eq!(runs(&json, "panics"), 2);
}

#[test]
fn hostile_input_is_refused_and_reaches_nothing() {
    let json = quick("hostile");
    assert_eq!(runs(&json, "hostile_stdin"), 1);
    assert_eq!(runs(&json, "hostile_brokers"), 2);
}

#[test]
fn store_faults_lose_nothing() {
    let json = quick("store");
    assert_eq!(runs(&json, "kills"), 2);
    for fault in [
        "full_disk",
        "deleted_database",
        "postgres_terminated",
        "postgres_restarted",
    ] {
        assert_eq!(runs(&json, fault), 1, "{fault}");
    }
}

#[test]
fn broker_faults_lose_nothing() {
    let json = quick("brokers");
    assert_eq!(runs(&json, "brokers_nats"), 1);
    assert_eq!(runs(&json, "brokers_pubsub"), 1);
}

#[test]
fn a_fleet_with_an_instance_killed_loses_nothing() {
    let json = quick("fleet");
    assert_eq!(runs(&json, "fleet"), 2);
}

#[test]
fn fuzzed_parsers_neither_crash_nor_break_their_invariants() {
    let json = quick("fuzz");
    assert_eq!(runs(&json, "fuzz"), 3);
}

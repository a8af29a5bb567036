//! `mandrill history --db-url` reads a fleet's PostgreSQL database as `--db` reads a
//! file: every attempt, with the same filters and formats.

mod common;

use std::process::Command;
use std::time::Duration;

use common::postgres::Schema;
use common::Mandrill;
use serde_json::Value;

#[test]
fn the_history_of_a_postgres_store_is_read_back() {
    let Some(schema) = Schema::new() else { return };
    let f = Mandrill::spawn(&[
        "--store",
        "postgres",
        "--db-url",
        &schema.url,
        "--messages",
        "200",
        "--publish-delay",
        "0",
        "--io-delay",
        "0",
        "--failure-rate",
        "0.3",
        "--instance-id",
        "fleet-a",
    ])
    .finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    let history = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
            .args(["history", "--format", "json", "--limit", "1000"])
            .args(args)
            .env("DATABASE_URL", &schema.url)
            .output()
            .expect("run mandrill history");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    let restarted = history(&["--outcome", "restarted"]);
    assert_eq!(restarted.len() as u64, f.n("restarted"), "{}", f.report);
    assert!(restarted.iter().all(|r| r["service"] == "fleet-a"));
    let failed = history(&["--outcome", "failed"]);
    assert!(
        !failed.is_empty(),
        "no failed attempt at a failure rate of 0.3"
    );
    let one = restarted[0]["instance"].as_str().unwrap().to_string();
    let glob = format!("{}*", &one[..one.len() - 1]);
    let matched = history(&["--host", &glob]);
    assert!(matched.iter().any(|r| r["instance"] == one.as_str()));
    assert!(matched.iter().all(|r| r["instance"]
        .as_str()
        .unwrap()
        .starts_with(&glob[..glob.len() - 1])));
}

#[test]
fn a_database_without_a_store_is_one_line_and_exit_1() {
    let Some(schema) = Schema::new() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["history", "--db-url", &schema.url])
        .output()
        .expect("run mandrill history");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("holds no mandrill store"), "{err}");
}

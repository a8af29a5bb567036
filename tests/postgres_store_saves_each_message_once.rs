//! With `--store postgres`, the durable pipeline saves into a shared PostgreSQL schema,
//! created at start: under restart failures every message is acked or dead-lettered,
//! each one is stored once, every restart attempt is in the history, and the counts
//! balance.

mod common;

use std::time::Duration;

use common::postgres::Schema;
use common::Mandrill;

const MESSAGES: i64 = 2000;

#[test]
fn every_message_is_stored_once_in_postgres() {
    let Some(schema) = Schema::new() else { return };
    let f = Mandrill::spawn(&[
        "--store",
        "postgres",
        "--db-url",
        &schema.url,
        "--messages",
        &MESSAGES.to_string(),
        "--publish-delay",
        "0",
        "--io-delay",
        "0",
        "--failure-rate",
        "0.25",
        "--min-restart-interval",
        "0",
    ])
    .finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.assert_conserved();
    assert_eq!(f.n("acked") + f.n("dead_lettered"), MESSAGES as u64);
    assert_eq!(schema.count("SELECT count(*) FROM messages"), MESSAGES);
    assert_eq!(f.n("saved"), MESSAGES as u64, "{}", f.report);
    let attempts = schema.count("SELECT count(*) FROM attempts");
    assert!(
        attempts >= MESSAGES,
        "{attempts} attempts for {MESSAGES} messages"
    );
    assert_eq!(
        schema.count("SELECT max(version)::bigint FROM mandrill_schema"),
        3
    );
}

#[test]
fn an_unreachable_database_is_one_line_and_exit_1() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args([
            "--store",
            "postgres",
            "--db-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .args(["--messages", "1", "--log", "none"])
        // Even with backtraces asked for, a start-up error is one line.
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run mandrill");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // The banner is a log line; the error is the one line besides it.
    let not_logged: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(not_logged.len(), 1, "{err}");
    assert!(not_logged[0].starts_with("error: "), "{err}");
    assert!(
        err.contains("cannot open store postgres://127.0.0.1/none"),
        "{err}"
    );
}

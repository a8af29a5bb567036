//! `mandrill publish` writes into a real JetStream stream, creating it on `--create`:
//! it stores each message id once, so a replayed file adds nothing, rejects bad input
//! lines by number, and says all of it in its one output line. Without `--create`, a
//! missing stream is one clear error.

mod common;

use std::process::{Command, Output};

use common::nats::{counts_and_delete, unique, Nats};
use common::stdin_lines;
use serde_json::Value;

fn publish(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "jetstream", "--nats-url", url])
        .args(args)
        .output()
        .expect("run mandrill publish")
}

fn line(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one json line")
}

#[test]
fn a_replayed_file_is_stored_once_and_bad_lines_are_named() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("PUBLISH");
    let made = line(&publish(
        &nats.url,
        &["--stream", &stream, "--create", "--messages", "100"],
    ));
    assert_eq!(made["published"], 100, "{made}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replay.ndjson");
    let text = stdin_lines(&["cattle-a", "cattle-b", "cattle-c"]) + "not json\n";
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap();
    let first = publish(&nats.url, &["--stream", &stream, "--input", path]);
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    let first = line(&first);
    assert_eq!(
        (
            &first["published"],
            &first["duplicates"],
            &first["rejected"]
        ),
        (&3.into(), &0.into(), &1.into()),
        "{first}"
    );
    assert!(stderr.contains("rejected line 4"), "{stderr}");
    let again = line(&publish(&nats.url, &["--stream", &stream, "--input", path]));
    assert_eq!(
        (&again["published"], &again["duplicates"]),
        (&0.into(), &3.into()),
        "{again}"
    );
    let dlq = format!("{stream}_DLQ");
    assert_eq!(counts_and_delete(&nats.url, &[&stream, &dlq]), vec![103, 0]);
}

#[test]
fn a_missing_stream_is_one_clear_error() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("MISSING");
    let out = publish(&nats.url, &["--stream", &stream, "--messages", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!("error: stream {stream} does not exist (--create makes it)"),
    );
    assert!(out.stdout.is_empty());
}

//! The safety rails refuse restarts as documented, and a refusal is a decision: the
//! message is acked, nothing is restarted, and the report counts it by rail.

mod common;

use std::time::Duration;

use common::{stdin_lines, Mandrill};

fn run(extra: &[&str], hosts: &[&str]) -> common::Finished {
    let mut args = vec!["--source", "stdin", "--store", "memory", "--io-delay", "0"];
    args.extend_from_slice(extra);
    let mut m = Mandrill::spawn_with_stdin(&args, true);
    m.write_stdin(stdin_lines(hosts).as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.assert_conserved();
    f
}

#[test]
fn deny_and_allow_filter_the_targets() {
    let f = run(
        &[
            "--failure-rate",
            "0",
            "--allow",
            "cattle-*,pet-*",
            "--deny",
            "pet-*",
        ],
        &["cattle-a", "pet-fluffy", "horse-1"],
    );
    assert_eq!((f.n("acked"), f.n("restarted")), (3, 1), "{}", f.report);
    assert_eq!(f.report["refused"]["deny"], 1, "{}", f.report);
    assert_eq!(f.report["refused"]["allow"], 1, "{}", f.report);
    assert!(
        f.log
            .iter()
            .any(|l| l.contains("Refused restarting pet-fluffy.example.net: the deny rail")),
        "{}",
        f.log.join("\n")
    );
}

#[test]
fn the_pause_file_refuses_every_restart_while_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    std::fs::write(&pause, "").unwrap();
    let f = run(
        &["--pause-file", pause.to_str().unwrap()],
        &["cattle-a", "cattle-b"],
    );
    assert_eq!((f.n("acked"), f.n("restarted")), (2, 0), "{}", f.report);
    assert_eq!(f.report["refused"]["pause"], 2, "{}", f.report);
}

#[test]
fn a_malformed_rail_is_a_usage_error() {
    for args in [
        &["--allowed-hours", "9-15"][..],
        &["--timezone", "Mars/Olympus"],
        &["--excluded-weekdays", "Caturday"],
        &["--max-host-restarts", "10"],
        &["--deny", "["],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandrill"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

//! Stalls and errors injected into the real binary go through the decider: a stalled
//! Acker restarts, an unavailable store restarts the Saver with backoff, a failed host
//! restart resumes, and no message is lost. A decider given on the command line changes
//! what happens.

mod common;

use std::time::Duration;

use common::{Finished, Mandrill, CHAOS};

fn run(extra: &[&str]) -> Finished {
    let mut args = CHAOS.to_vec();
    args.extend_from_slice(&[
        "--messages",
        "3000",
        "--failure-rate",
        "0",
        "--seed",
        "7",
        "--store",
        "memory",
        "--handler-deadline",
        "0.02",
        "--backoff-min",
        "0.01",
        "--backoff-max",
        "0.05",
        "--inject",
        "stall:acker=0.01,error:saver=0.05,error:restarter=0.05",
    ]);
    args.extend_from_slice(extra);
    let f = Mandrill::spawn(&args).finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "done", "{}", f.report);
    f.assert_conserved();
    assert_eq!(f.n("acked") + f.n("dead_lettered"), 3000, "{}", f.report);
    f
}

fn child(f: &Finished, name: &str, field: &str) -> serde_json::Value {
    f.report["supervision"][name][field].clone()
}

#[test]
fn the_default_decider_restarts_stalls_backs_off_the_store_and_resumes_hosts() {
    let f = run(&[]);
    let stalls = child(&f, "acker", "failures")["stall"]
        .as_u64()
        .unwrap_or(0);
    assert!(stalls > 0, "{}", f.report);
    assert!(child(&f, "acker", "restarts").as_u64().unwrap() >= stalls);
    let store = child(&f, "saver", "failures")["store-unavailable"]
        .as_u64()
        .unwrap_or(0);
    assert!(store > 0, "{}", f.report);
    assert!(child(&f, "saver", "backoff_s").as_f64().unwrap() > 0.0);
    let hosts = child(&f, "restarter", "failures")["restart-failed"]
        .as_u64()
        .unwrap_or(0);
    assert!(hosts > 0, "{}", f.report);
    // Resumed, so the Restarter was never restarted.
    assert_eq!(child(&f, "restarter", "restarts"), 0, "{}", f.report);
}

#[test]
fn a_decider_on_the_command_line_overrides_the_defaults() {
    let f = run(&[
        "--decider",
        "stall=resume,store-unavailable=resume,restart-failed=restart",
    ]);
    assert_eq!(child(&f, "acker", "restarts"), 0, "{}", f.report);
    assert_eq!(child(&f, "saver", "restarts"), 0, "{}", f.report);
    assert_eq!(child(&f, "saver", "backoff_s"), 0.0, "{}", f.report);
    let hosts = child(&f, "restarter", "failures")["restart-failed"]
        .as_u64()
        .unwrap();
    assert_eq!(
        child(&f, "restarter", "restarts").as_u64().unwrap(),
        hosts,
        "{}",
        f.report
    );
}

//! SIGINT, SIGTERM and SIGHUP sent mid-flight each run the ordered shutdown: exit 0, the
//! phase lines in order, every message accounted for, and the database consistent.

mod common;

use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

const PHASES: [&str; 6] = [
    "Draining",
    "Nacking",
    "Closing database connections",
    "Flushing metrics",
    "Shutdown complete.",
    "",
];

fn shutdown_on(sig: Signal, name: &str) {
    // Slow IO keeps messages in flight; a short drain leaves some to nack.
    let mut m = Mandrill::spawn(&[
        "--publish-delay",
        "0.002",
        "--io-delay",
        "0.4",
        "--drain-timeout",
        "0.1",
        "--shield-timeout",
        "2",
        "--seed",
        "7",
    ]);
    // Wait until work is under way: something finished and more is pulled.
    m.wait_for("Done. Acked", Duration::from_secs(20));
    m.signal(sig);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "exit {:?}", f.status);
    let received = f.line_index(&format!("Received exit signal {name}..."));
    let mut last = received;
    for phase in PHASES.iter().filter(|p| !p.is_empty()) {
        let i = f.line_index(phase);
        assert!(i > last, "{phase:?} out of order:\n{}", f.log.join("\n"));
        last = i;
    }
    assert_eq!(f.report["stopped_by"], name);
    f.assert_conserved();
    assert!(f.n("acked") > 0, "{}", f.report);
    // Mid-flight means something was still pending when the signal came.
    assert!(
        f.n("nacked_on_shutdown") + f.n("pending_at_exit") > 0,
        "{}",
        f.report
    );
    assert_eq!(
        f.db_rows("SELECT count(*) FROM messages") as u64,
        f.n("saved"),
        "{}",
        f.report
    );
}

#[test]
fn sigint_runs_the_ordered_shutdown() {
    shutdown_on(Signal::SIGINT, "SIGINT");
}

#[test]
fn sigterm_runs_the_ordered_shutdown() {
    shutdown_on(Signal::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_runs_the_ordered_shutdown() {
    shutdown_on(Signal::SIGHUP, "SIGHUP");
}

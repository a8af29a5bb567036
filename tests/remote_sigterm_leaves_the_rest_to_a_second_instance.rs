//! SIGTERM mid-run against a real broker: the instance drains, releases what it still
//! holds back to the broker, and exits 0; a second instance started afterwards finishes
//! the rest. Every message is acked once, and none is lost.

mod common;

use std::time::Duration;

use common::brokers::Remote;
use nix::sys::signal::Signal;

const MESSAGES: usize = 200;

fn sigterm_mid_run_loses_nothing(broker: Remote) {
    // A batch pulled as the first instance exits stays leased until its lease runs out:
    // the second waits longer than that before it calls the run idle.
    let lease = broker.shortest_lease();
    let (lease_s, idle_s) = (lease.to_string(), (lease + 2).to_string());
    broker.publish(MESSAGES, &["--ack-deadline", &lease_s]);
    // Slow restarts, so that many messages are still leased at the signal.
    let slow = [
        "--io-delay",
        "1",
        "--failure-rate",
        "0",
        "--max-in-flight",
        "50",
        "--ack-deadline",
        &lease_s,
        "--drain-timeout",
        "0",
        "--shield-timeout",
        "0",
        "--store",
        "memory",
    ];
    let mut first = broker.spawn(&slow);
    first.wait_for_count("Acked", 10, Duration::from_secs(60));
    first.signal(Signal::SIGTERM);
    let a = first.finish(Duration::from_secs(30));
    assert!(a.status.success(), "{:?}\n{}", a.status, a.log.join("\n"));
    assert!(a.n("nacked_on_shutdown") > 0, "{}", a.report);
    assert!(a.n("acked") < MESSAGES as u64, "{}", a.report);

    let quick = [
        "--io-delay",
        "0",
        "--failure-rate",
        "0",
        "--store",
        "memory",
        "--ack-deadline",
        &lease_s,
        "--idle-exit",
        &idle_s,
    ];
    let b = broker.spawn(&quick).finish(Duration::from_secs(60));
    assert!(b.status.success(), "{:?}\n{}", b.status, b.log.join("\n"));
    // What the first released comes back to the second; so may a batch pulled just as
    // intake stopped, which goes straight back too.
    assert!(
        b.n("redelivered") >= a.n("nacked_on_shutdown"),
        "{}\n{}",
        a.report,
        b.report
    );
    assert_eq!(
        a.n("acked") + b.n("acked"),
        MESSAGES as u64,
        "{}\n{}",
        a.report,
        b.report
    );
    broker.assert_all_acked_and_delete();
}

#[test]
fn jetstream() {
    if let Some(broker) = Remote::jetstream("sigterm") {
        sigterm_mid_run_loses_nothing(broker);
    }
}

#[test]
fn pubsub() {
    if let Some(broker) = Remote::pubsub("sigterm") {
        sigterm_mid_run_loses_nothing(broker);
    }
}

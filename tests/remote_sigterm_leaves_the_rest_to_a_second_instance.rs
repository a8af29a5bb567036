//! SIGTERM mid-run against a real broker: the instance drains, releases what it still
//! holds back to the broker, and exits 0; a second instance started afterwards finishes
//! the rest. Every message is acked once, and none is lost.

mod common;

use std::time::Duration;

use common::brokers::{Left, Remote};
use nix::sys::signal::Signal;

const MESSAGES: usize = 200;

fn sigterm_mid_run_loses_nothing(broker: Remote) {
    broker.publish(MESSAGES, &[]);
    // Slow restarts, so that many messages are still leased at the signal.
    let slow = [
        "--io-delay",
        "1",
        "--failure-rate",
        "0",
        "--max-in-flight",
        "50",
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
        "--idle-exit",
        "3",
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
    assert_eq!(
        broker.left_and_delete(),
        Left {
            pending: 0,
            dead_letters: 0
        }
    );
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

//! A restart slower than the broker's lease does not get its message redelivered: the
//! service extends the lease while the work runs (`+WPI` on JetStream,
//! `modifyAckDeadline` on Pub/Sub), as the talk's `extend()` did.

mod common;

use std::time::Duration;

use common::brokers::Remote;

const MESSAGES: usize = 5;

fn slow_work_keeps_its_lease(broker: Remote) {
    let lease = broker.shortest_lease();
    let lease_s = lease.to_string();
    // Half as long again as the lease, and a second more.
    let slow = (lease as f64 * 1.5 + 1.0).to_string();
    broker.publish(MESSAGES, &["--ack-deadline", &lease_s]);
    let all = MESSAGES.to_string();
    let f = broker
        .spawn(&[
            "--ack-deadline",
            &lease_s,
            "--io-delay",
            &slow,
            "--io-fixed",
            "--failure-rate",
            "0",
            "--min-restart-interval",
            "0",
            "--messages",
            &all,
        ])
        .finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("acked"), MESSAGES as u64, "{}", f.report);
    assert_eq!(f.n("redelivered"), 0, "{}", f.report);
    assert_eq!(f.n("lease_expired"), 0, "{}", f.report);
    broker.assert_all_acked_and_delete();
}

#[test]
fn jetstream() {
    if let Some(broker) = Remote::jetstream("lease") {
        slow_work_keeps_its_lease(broker);
    }
}

#[test]
fn pubsub() {
    if let Some(broker) = Remote::pubsub("lease") {
        slow_work_keeps_its_lease(broker);
    }
}

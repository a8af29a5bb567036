//! Deliveries of one message id that are in flight at once, as an at-least-once broker
//! may make them, are each handled and settled as deliveries of their own: the save is
//! idempotent by message id, so the store holds one row, and the restart guard lets
//! only one of them restart the host.

mod common;

use std::time::Duration;

use common::brokers::Remote;
use common::stdin_line;

const COPIES: usize = 5;

fn copies_are_saved_once(broker: Remote) {
    broker.publish(0, &[]);
    // Published raw, with no id the broker could deduplicate by.
    let line = stdin_line(1, "cattle-dupe");
    broker.publish_raw(vec![line.trim_end().as_bytes().to_vec(); COPIES]);
    let all = COPIES.to_string();
    let f = broker
        .spawn(&[
            "--io-delay",
            "0.5",
            "--io-fixed",
            "--failure-rate",
            "0",
            "--messages",
            &all,
        ])
        .finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("acked"), COPIES as u64, "{}", f.report);
    assert_eq!(f.db_rows("SELECT count(*) FROM messages"), 1);
    assert_eq!(f.n("restarted"), 1, "{}", f.report);
    broker.assert_all_acked_and_delete();
}

#[test]
fn jetstream() {
    if let Some(broker) = Remote::jetstream("dupes") {
        copies_are_saved_once(broker);
    }
}

#[test]
fn pubsub() {
    if let Some(broker) = Remote::pubsub("dupes") {
        copies_are_saved_once(broker);
    }
}

//! 10,000 messages published by `mandrill publish` into a real broker are consumed under
//! restart failures (rate 0.25, 5 deliveries): every one is acked or dead-lettered, the
//! dead letters are in the broker's dead letters, the store holds each message once,
//! nothing is left to deliver, and the report's counts balance.

mod common;

use std::time::Duration;

use common::brokers::{Left, Remote};

const MESSAGES: usize = 10_000;

fn every_message_is_settled(broker: Remote) {
    broker.publish(MESSAGES, &["--max-deliveries", "5"]);
    let total = MESSAGES.to_string();
    let f = broker
        .spawn(&[
            "--io-delay",
            "0",
            "--failure-rate",
            "0.25",
            "--max-deliveries",
            "5",
            "--redelivery-delay",
            "0",
            "--min-restart-interval",
            "0",
            "--messages",
            &total,
        ])
        .finish(Duration::from_secs(240));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    let (acked, dead) = (f.n("acked"), f.n("dead_lettered"));
    assert_eq!(acked + dead, MESSAGES as u64, "{}", f.report);
    assert!(f.n("redelivered") > 0, "{}", f.report);
    assert_eq!(f.n("published"), MESSAGES as u64, "{}", f.report);
    f.assert_conserved();

    let stored = f.db_rows("SELECT count(*) FROM messages") as u64;
    assert!(
        (acked..=MESSAGES as u64).contains(&stored),
        "{stored} rows for {acked} acked: {}",
        f.report
    );
    assert_eq!(
        broker.left_and_delete(),
        Left {
            pending: 0,
            dead_letters: dead
        }
    );
}

#[test]
fn jetstream() {
    if let Some(broker) = Remote::jetstream("settles") {
        every_message_is_settled(broker);
    }
}

#[test]
fn pubsub() {
    if let Some(broker) = Remote::pubsub("settles") {
        every_message_is_settled(broker);
    }
}

//! With `--confirm-acks`, each ack waits for the server's confirmation (a double ack)
//! before the Acker counts it: every message is still acked once and leaves the stream,
//! and the run's counts balance.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;

const MESSAGES: usize = 500;

#[test]
fn confirmed_acks_settle_every_message() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("CONFIRM");
    publish(&nats.url, &stream, MESSAGES);
    let all = MESSAGES.to_string();
    let flags = [
        "--confirm-acks",
        "--io-delay",
        "0",
        "--failure-rate",
        "0.25",
        "--max-deliveries",
        "100",
        "--redelivery-delay",
        "0",
        "--min-restart-interval",
        "0",
        "--messages",
        &all,
    ];
    let f = Mandrill::spawn(&source(&nats.url, &stream, &flags)).finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("acked"), MESSAGES as u64, "{}", f.report);
    assert!(f.n("nacked") > 0, "{}", f.report);
    f.assert_conserved();
    let dlq = format!("{stream}_DLQ");
    assert_eq!(counts_and_delete(&nats.url, &[&stream, &dlq]), vec![0, 0]);
}

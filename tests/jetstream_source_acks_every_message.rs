//! With `--source jetstream`, the service consumes a real stream through a durable
//! consumer it creates: under restart failures every message is nacked back to the
//! server and redelivered until it is acked, the store holds each one once, and the
//! work-queue stream is empty afterwards.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;
use nix::sys::signal::Signal;

const MESSAGES: usize = 300;

#[test]
fn every_message_is_acked_once_and_leaves_the_stream() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("SOURCE");
    publish(&nats.url, &stream, MESSAGES);

    let mut m = Mandrill::spawn(&source(
        &nats.url,
        &stream,
        &[
            "--consumer",
            "mandrill",
            "--io-delay",
            "0",
            "--failure-rate",
            "0.25",
            "--max-deliveries",
            "1000",
            "--min-restart-interval",
            "0",
        ],
    ));
    m.wait_for_count("Done. Acked", MESSAGES, Duration::from_secs(60));
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("acked"), MESSAGES as u64, "{}", f.report);
    assert_eq!(f.n("dead_lettered"), 0, "{}", f.report);
    assert!(f.n("redelivered") > 0, "{}", f.report);
    assert_eq!(f.n("pending_at_exit"), 0, "{}", f.report);
    let stored = f.db_rows("SELECT count(*) FROM messages");
    assert_eq!(stored, MESSAGES as i64);
    let dlq = format!("{stream}_DLQ");
    assert_eq!(counts_and_delete(&nats.url, &[&stream, &dlq]), vec![0, 0]);
}

//! With `--source jetstream`, 10,000 messages published by `mandrill publish` into a
//! stream are consumed through a durable consumer under restart failures (rate 0.25, 5
//! deliveries): every one is acked or dead-lettered, the dead letters are in the
//! dead-letter stream, the store holds each message once, the work-queue stream is empty
//! afterwards, and the report's counts, taken from the server, balance.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;

const MESSAGES: usize = 10_000;

#[test]
fn every_message_is_acked_or_dead_lettered_and_none_is_left() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("SETTLES");
    publish(&nats.url, &stream, MESSAGES);

    let total = MESSAGES.to_string();
    let flags = [
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
    ];
    let m = Mandrill::spawn(&source(&nats.url, &stream, &flags));
    let f = m.finish(Duration::from_secs(240));
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
    let dlq = format!("{stream}_DLQ");
    assert_eq!(
        counts_and_delete(&nats.url, &[&stream, &dlq]),
        vec![0, dead]
    );
}

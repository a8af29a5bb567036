//! With `--source pubsub`, 10,000 messages published by `mandrill publish` into the
//! emulator are consumed under restart failures (rate 0.25, 5 deliveries): every one is
//! acked or dead-lettered, the dead letters are on the dead-letter topic, the store
//! holds each message once, the subscription is empty afterwards, and the report's
//! counts balance.

mod common;

use std::time::Duration;

use common::pubsub::{names, publish, source, Emulator};
use common::Mandrill;

const MESSAGES: usize = 10_000;

#[test]
fn every_message_is_acked_or_dead_lettered_and_none_is_left() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let names = names("settles");
    publish(&emulator, &names, MESSAGES, &[]);

    let total = MESSAGES.to_string();
    let m = Mandrill::spawn_env(
        &source(
            &names,
            &[
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
            ],
        ),
        &emulator.env(),
    );
    let f = m.finish(Duration::from_secs(240));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    let (acked, dead) = (f.n("acked"), f.n("dead_lettered"));
    assert_eq!(acked + dead, MESSAGES as u64, "{}", f.report);
    assert!(f.n("nacked") > 0, "{}", f.report);
    assert_eq!(f.n("pending_at_exit"), 0, "{}", f.report);
    assert_eq!(f.n("published"), MESSAGES as u64, "{}", f.report);
    f.assert_conserved();

    let stored = f.db_rows("SELECT count(*) FROM messages") as u64;
    assert!(
        (acked..=MESSAGES as u64).contains(&stored),
        "{stored} rows for {acked} acked: {}",
        f.report
    );
    // The broker's own view: nothing left to deliver, and every dead letter kept.
    assert_eq!(emulator.drain(&names.subscription).len(), 0);
    let letters = emulator.drain(&names.dead_letter_subscription);
    assert_eq!(letters.len() as u64, dead, "{}", f.report);
    emulator.delete(&names);
}

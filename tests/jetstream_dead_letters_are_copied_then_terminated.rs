//! JetStream has no dead-letter queue: a message that fails its last allowed delivery is
//! copied to the `<stream>_DLQ` stream and only then terminated, so it is neither lost
//! nor delivered again, and the shutdown waits for both steps.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;
use nix::sys::signal::Signal;

const MESSAGES: usize = 40;

#[test]
fn the_last_failed_delivery_lands_in_the_dead_letter_stream() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("DEAD");
    publish(&nats.url, &stream, MESSAGES);

    let mut m = Mandrill::spawn(&source(
        &nats.url,
        &stream,
        &[
            "--io-delay",
            "0",
            "--failure-rate",
            "1",
            "--max-deliveries",
            "2",
            "--redelivery-delay",
            "0",
            "--store",
            "memory",
        ],
    ));
    // Each message fails twice: once nacked, once dead-lettered.
    m.wait_for_count("Nacked", 2 * MESSAGES, Duration::from_secs(60));
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("dead_lettered"), MESSAGES as u64, "{}", f.report);
    assert_eq!(f.n("acked"), 0, "{}", f.report);
    let dlq = format!("{stream}_DLQ");
    assert_eq!(
        counts_and_delete(&nats.url, &[&stream, &dlq]),
        vec![0, MESSAGES as u64]
    );
}

//! A message pulled by an instance that dies before settling it comes back, from the
//! server, to another instance on the same durable consumer. Where the dead instance
//! held its last allowed delivery, the survivor dead-letters it on sight, copying it to
//! `<stream>_DLQ`, instead of leaving it in the stream for good.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;
use nix::sys::signal::Signal;

const MESSAGES: usize = 20;

fn instance(url: &str, stream: &str, io_delay: &str) -> Mandrill {
    Mandrill::spawn(&source(
        url,
        stream,
        &[
            "--consumer",
            "shared",
            "--ack-deadline",
            "1",
            "--max-deliveries",
            "1",
            "--io-delay",
            io_delay,
            "--io-fixed",
            "--failure-rate",
            "0",
            "--store",
            "memory",
        ],
    ))
}

#[test]
fn the_survivor_dead_letters_what_the_dead_instance_held_last() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("KILLED");
    publish(&nats.url, &stream, MESSAGES);

    // Its restarts take a minute, so it holds every message when it dies.
    let mut first = instance(&nats.url, &stream, "60");
    first.wait_for_count("Pulled", MESSAGES, Duration::from_secs(30));
    first.signal(Signal::SIGKILL);
    let _ = first.finish(Duration::from_secs(10));

    let mut second = instance(&nats.url, &stream, "0");
    second.wait_for_count("(lease expired)", MESSAGES, Duration::from_secs(30));
    second.signal(Signal::SIGTERM);
    let f = second.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(
        (f.n("dead_lettered"), f.n("lease_expired"), f.n("acked")),
        (MESSAGES as u64, MESSAGES as u64, 0),
        "{}",
        f.report
    );
    let dlq = format!("{stream}_DLQ");
    assert_eq!(
        counts_and_delete(&nats.url, &[&stream, &dlq]),
        vec![0, MESSAGES as u64]
    );
}

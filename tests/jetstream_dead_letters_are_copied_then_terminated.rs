//! JetStream has no dead-letter queue: a message that fails its last allowed delivery is
//! copied to the `<stream>_DLQ` stream and only then terminated, so it is neither lost
//! nor delivered again, and the shutdown waits for both steps.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nats::{unique, Nats};
use common::Mandrill;
use nix::sys::signal::Signal;

const MESSAGES: usize = 40;

/// How many messages each stream holds, by the server's own count; deletes them.
fn counts_and_delete(url: &str, streams: &[&str]) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut out = Vec::new();
        for name in streams {
            let mut s = js.get_stream(*name).await.unwrap();
            out.push(s.info().await.unwrap().state.messages);
            js.delete_stream(*name).await.unwrap();
        }
        out
    })
}

#[test]
fn the_last_failed_delivery_lands_in_the_dead_letter_stream() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("DEAD");
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "jetstream", "--create", "--nats-url"])
        .args([&nats.url, "--stream", &stream])
        .args(["--messages", &MESSAGES.to_string()])
        .output()
        .expect("run mandrill publish");
    assert!(out.status.success(), "{out:?}");

    let mut m = Mandrill::spawn(&[
        "--source",
        "jetstream",
        "--nats-url",
        &nats.url,
        "--stream",
        &stream,
        "--create",
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
    ]);
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

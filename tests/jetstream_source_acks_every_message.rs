//! With `--source jetstream`, the service consumes a real stream through a durable
//! consumer it creates: under restart failures every message is nacked back to the
//! server and redelivered until it is acked, the store holds each one once, and the
//! work-queue stream is empty afterwards.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nats::{unique, Nats};
use common::Mandrill;
use nix::sys::signal::Signal;

const MESSAGES: usize = 300;

/// How many messages the stream still holds, by the server's own count; deletes it.
fn count_and_delete(url: &str, stream: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        let n = s.info().await.unwrap().state.messages;
        js.delete_stream(stream).await.unwrap();
        n
    })
}

#[test]
fn every_message_is_acked_once_and_leaves_the_stream() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("SOURCE");
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "jetstream", "--create", "--nats-url"])
        .args([&nats.url, "--stream", &stream])
        .args(["--messages", &MESSAGES.to_string(), "--seed", "7"])
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
        "--consumer",
        "mandrill",
        "--create",
        "--io-delay",
        "0",
        "--failure-rate",
        "0.25",
        "--max-deliveries",
        "1000",
        "--min-restart-interval",
        "0",
    ]);
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
    assert_eq!(count_and_delete(&nats.url, &stream), 0);
}

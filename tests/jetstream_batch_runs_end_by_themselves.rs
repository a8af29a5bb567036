//! A remote stream has no end of its own, so a batch run against one ends by count or
//! by silence: `--messages N` shuts down once N messages are settled, and `--idle-exit`
//! once nothing has been pulled for that long. Both exit 0 with everything settled.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nats::{unique, Nats};
use common::Mandrill;

fn publish(url: &str, stream: &str, n: usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "jetstream", "--create", "--nats-url"])
        .args([url, "--stream", stream, "--messages", &n.to_string()])
        .output()
        .expect("run mandrill publish");
    assert!(out.status.success(), "{out:?}");
}

fn run(url: &str, stream: &str, extra: &[&str]) -> common::Finished {
    let mut args = vec![
        "--source",
        "jetstream",
        "--nats-url",
        url,
        "--stream",
        stream,
        "--create",
        "--io-delay",
        "0",
        "--failure-rate",
        "0",
        "--store",
        "memory",
        "--log",
        "none",
    ];
    args.extend_from_slice(extra);
    let f = Mandrill::spawn(&args).finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f
}

/// Deletes the stream and its dead letters.
fn delete(url: &str, stream: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        for name in [stream.to_string(), format!("{stream}_DLQ")] {
            js.delete_stream(&name).await.unwrap();
        }
    });
}

#[test]
fn messages_n_stops_after_n_settled() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("BATCH");
    publish(&nats.url, &stream, 80);
    let f = run(
        &nats.url,
        &stream,
        &["--messages", "50", "--max-in-flight", "10"],
    );
    assert_eq!(f.report["stopped_by"], "done", "{}", f.report);
    // The count is checked as outcomes arrive, so a few more may settle meanwhile.
    let acked = f.n("acked");
    assert!((50..80).contains(&acked), "{}", f.report);
    delete(&nats.url, &stream);
}

#[test]
fn idle_exit_stops_once_nothing_is_pulled() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("IDLE");
    publish(&nats.url, &stream, 30);
    let f = run(&nats.url, &stream, &["--idle-exit", "1"]);
    assert_eq!(f.report["stopped_by"], "idle", "{}", f.report);
    assert_eq!(f.n("acked"), 30, "{}", f.report);
    assert_eq!(f.n("pending_at_exit"), 0, "{}", f.report);
    delete(&nats.url, &stream);
}

//! A remote stream has no end of its own, so a batch run against one ends by count or
//! by silence: `--messages N` shuts down once N messages are settled, and `--idle-exit`
//! once nothing has been pulled for that long. Both exit 0 with everything settled.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;

fn run(url: &str, stream: &str, extra: &[&str]) -> common::Finished {
    let mut args = source(
        url,
        stream,
        &[
            "--io-delay",
            "0",
            "--failure-rate",
            "0",
            "--store",
            "memory",
            "--log",
            "none",
        ],
    );
    args.extend_from_slice(extra);
    let f = Mandrill::spawn(&args).finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f
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
    counts_and_delete(&nats.url, &[&stream, &format!("{stream}_DLQ")]);
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
    counts_and_delete(&nats.url, &[&stream, &format!("{stream}_DLQ")]);
}

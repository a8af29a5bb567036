//! The test's own nats-server is stopped for 3 seconds mid-run and started again on the
//! same store. The client reconnects by itself; what was in flight is settled once the
//! link is back, or redelivered by the server, and every message is still acked once
//! its work is done. Nothing is lost.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, publish, source, unique, Nats};
use common::Mandrill;

const MESSAGES: usize = 2000;

#[test]
fn a_three_second_outage_loses_no_message() {
    let Some(mut nats) = Nats::own() else { return };
    let stream = unique("OUTAGE");
    publish(&nats.url, &stream, MESSAGES);

    let flags = [
        "--io-delay",
        "0.01",
        "--failure-rate",
        "0",
        "--min-restart-interval",
        "0",
        "--max-in-flight",
        "20",
        // Acks sent as the link broke are lost with it: their messages come back once
        // their lease runs out, well inside the idle time that ends the run.
        "--ack-deadline",
        "2",
        "--idle-exit",
        "8",
    ];
    let mut m = Mandrill::spawn(&source(&nats.url, &stream, &flags));
    m.wait_for_count("Done. Acked", 200, Duration::from_secs(60));
    nats.stop();
    m.wait_for("disconnected", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    nats.restart();
    let f = m.finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert!(f
        .log
        .iter()
        .any(|l| l.contains("reconnected") || l.contains("event: connected")));
    assert!(f.n("acked") >= MESSAGES as u64, "{}", f.report);
    assert_eq!(f.stored_ids().len(), MESSAGES, "{}", f.report);
    let dlq = format!("{stream}_DLQ");
    assert_eq!(counts_and_delete(&nats.url, &[&stream, &dlq]), vec![0, 0]);
}

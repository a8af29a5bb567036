//! A broker that stays unreachable past `--broker-down-timeout` fails the adapter with
//! `broker-down`, which escalates through the supervisor to the ordered shutdown: the
//! run exits non-zero and says why.

mod common;

use std::time::Duration;

use common::brokers::Remote;

fn an_outage_past_the_timeout_escalates(mut broker: Remote) {
    broker.publish(50, &[]);
    let mut m = broker.spawn(&[
        "--io-delay",
        "0.2",
        "--failure-rate",
        "0",
        "--broker-down-timeout",
        "2",
        "--store",
        "memory",
    ]);
    m.wait_for("Done. Acked", Duration::from_secs(60));
    broker.stop_server();
    let f = m.finish(Duration::from_secs(90));
    assert!(!f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "escalation", "{}", f.report);
    let why = f.report["escalation"].as_str().unwrap_or_default();
    assert!(why.contains("unreachable"), "{}", f.report);
    assert_eq!(
        f.report["supervision"]["broker"]["failures"]["broker-down"], 1,
        "{}",
        f.report
    );
}

#[test]
fn jetstream() {
    if let Some(broker) = Remote::jetstream_own("down") {
        an_outage_past_the_timeout_escalates(broker);
    }
}

#[test]
fn pubsub() {
    if let Some(broker) = Remote::pubsub_own("down") {
        an_outage_past_the_timeout_escalates(broker);
    }
}

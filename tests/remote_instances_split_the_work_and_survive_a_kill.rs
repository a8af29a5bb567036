//! Three instances on one real subscription or durable consumer split the work. One is
//! killed with SIGKILL mid-run: the messages it held leased come back from the broker,
//! once their lease runs out, to the other two. Every message is acked, by one instance
//! or another, and none is lost.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::brokers::Remote;
use nix::sys::signal::Signal;

const MESSAGES: usize = 600;

fn three_share_and_survive_a_kill(broker: Remote) {
    let lease = broker.shortest_lease();
    let (lease_s, idle_s) = (lease.to_string(), (lease + 5).to_string());
    broker.publish(MESSAGES, &["--ack-deadline", &lease_s]);
    let flags = [
        "--io-delay",
        "0.1",
        "--io-fixed",
        "--failure-rate",
        "0",
        "--max-in-flight",
        "10",
        "--ack-deadline",
        &lease_s,
        "--min-restart-interval",
        "0",
        "--idle-exit",
        &idle_s,
    ];
    let mut running: Vec<_> = (0..3).map(|_| broker.spawn(&flags)).collect();
    // Killed as soon as it has done some work, it still holds leases.
    let mut victim = running.remove(0);
    victim.wait_for("Done. Acked", Duration::from_secs(60));
    victim.signal(Signal::SIGKILL);
    let killed = victim.finish(Duration::from_secs(10));

    let survivors: Vec<_> = running
        .into_iter()
        .map(|m| m.finish(Duration::from_secs(120)))
        .collect();
    let mut stored: HashSet<Vec<u8>> = killed.stored_ids();
    for f in &survivors {
        assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
        assert!(f.n("acked") > 0, "{}", f.report);
        stored.extend(f.stored_ids());
    }
    assert!(
        !killed.stored_ids().is_empty(),
        "the killed instance did no work"
    );
    let redelivered: u64 = survivors.iter().map(|f| f.n("redelivered")).sum();
    assert!(
        redelivered > 0,
        "what the killed instance held never came back"
    );
    assert_eq!(
        stored.len(),
        MESSAGES,
        "messages stored across the instances"
    );
    broker.assert_all_acked_and_delete();
}

#[test]
fn jetstream() {
    if let Some(broker) = Remote::jetstream("three") {
        three_share_and_survive_a_kill(broker);
    }
}

#[test]
fn pubsub() {
    if let Some(broker) = Remote::pubsub("three") {
        three_share_and_survive_a_kill(broker);
    }
}

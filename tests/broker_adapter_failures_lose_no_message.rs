//! A broker adapter that fails is restarted by its supervisor like any child, and no
//! message is lost: what the broker holds survives a restart of the adapter.

mod common;

use std::time::Duration;

use common::{Mandrill, CHAOS};

#[test]
fn panics_in_the_broker_adapter_are_survived_without_loss() {
    let extra = [
        "--messages",
        "20000",
        "--seed",
        "5",
        "--inject",
        "panic:broker=0.02",
    ];
    let m = Mandrill::spawn(&[CHAOS, &extra].concat());
    let f = m.finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "done", "{}", f.report);
    let broker = &f.report["supervision"]["broker"];
    let panics = broker["failures"]["panic"].as_u64().unwrap_or(0);
    assert!(panics > 0, "no panic was injected: {}", f.report);
    assert_eq!(broker["restarts"].as_u64(), Some(panics), "{}", f.report);
    f.assert_conserved();
    assert_eq!(f.n("published"), 20000, "{}", f.report);
    assert_eq!(f.n("pending_at_exit"), 0, "{}", f.report);
    assert_eq!(f.n("acked") + f.n("dead_lettered"), 20000, "{}", f.report);
}

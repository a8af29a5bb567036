//! Under each supervision strategy, with panics injected into every actor, no message is
//! lost: every one is acked or dead-lettered, and the strategy decides how many actors
//! restart per panic.

mod common;

use std::time::Duration;

use common::{Finished, Mandrill, CHAOS};

fn run(strategy: &str) -> Finished {
    let extra = [
        "--strategy",
        strategy,
        "--messages",
        "20000",
        "--seed",
        "11",
        "--inject",
        "panic:publisher=0.01,panic:consumer=0.01,panic:saver=0.01,panic:restarter=0.01,panic:acker=0.01",
    ];
    let m = Mandrill::spawn(&[CHAOS, &extra].concat());
    let f = m.finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "done", "{}", f.report);
    f.assert_conserved();
    assert_eq!(f.n("published"), 20000);
    assert_eq!(f.n("pending_at_exit"), 0, "{}", f.report);
    assert_eq!(f.n("acked") + f.n("dead_lettered"), 20000, "{}", f.report);
    assert!(f.n("panics") > 0, "{}", f.report);
    // The supervision report agrees with the counters it breaks down.
    let sup = f.report["supervision"]
        .as_object()
        .expect("supervision object");
    let sum = |field: &str| -> u64 {
        sup.values()
            .map(|c| match field {
                "panic" => c["failures"]["panic"].as_u64().unwrap_or(0),
                f => c[f].as_u64().unwrap(),
            })
            .sum()
    };
    assert_eq!(sum("panic"), f.n("panics"), "{}", f.report);
    assert_eq!(sum("restarts"), f.n("actor_restarts"), "{}", f.report);
    // The five pipeline actors and the broker adapter.
    assert_eq!(sup.len(), 6, "{}", f.report);
    f
}

#[test]
fn one_for_one_restarts_only_the_failed_actor() {
    let f = run("one-for-one");
    assert_eq!(f.n("actor_restarts"), f.n("panics"), "{}", f.report);
}

#[test]
fn one_for_all_restarts_every_actor_per_panic() {
    let f = run("one-for-all");
    // Five children: each panic restarts the failed one and its four siblings, until the
    // Publisher has sent its quota. Being transient, it then stays stopped, and each
    // panic restarts the four others.
    let (panics, restarts) = (f.n("panics"), f.n("actor_restarts"));
    assert!(
        restarts >= 4 * panics && restarts <= 5 * panics,
        "{panics} panics, {restarts} restarts\n{}",
        f.report
    );
    assert_eq!(f.report["supervision"]["publisher"]["stopped"], true);
}

#[test]
fn rest_for_one_restarts_the_failed_actor_and_those_after_it() {
    let f = run("rest-for-one");
    let (panics, restarts) = (f.n("panics"), f.n("actor_restarts"));
    assert!(
        restarts > panics && restarts < 5 * panics,
        "{panics} panics, {restarts} restarts"
    );
}

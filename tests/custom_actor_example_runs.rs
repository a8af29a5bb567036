//! The custom-actor example runs: a Notifier added from outside the core actors is
//! supervised like them, hears of every host restart, and stops at shutdown with counts
//! that match the run report.

#[path = "../examples/custom_actor.rs"]
#[allow(dead_code)]
mod custom_actor;

#[test]
fn the_notifier_is_supervised_and_its_counts_match_the_report() {
    // `run` itself fails if the counts disagree with the report or a message was lost.
    let (tally, report) = custom_actor::run().expect("the example runs");
    assert!(tally.restarted > 0, "{tally:?}");
    let notifier = &report.supervision["notifier"];
    // Its bug strikes on every 25th batch, and each time it is restarted in place.
    let panics = tally.batches / 25;
    assert!(panics > 0, "too few batches to meet the bug: {tally:?}");
    assert_eq!(notifier.failures["panic"], panics, "{notifier:?}");
    assert_eq!(notifier.restarts, panics, "{notifier:?}");
    assert!(report.killed_at_shutdown.is_empty());
}

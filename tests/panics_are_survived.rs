//! Panics injected into every actor's handlers are caught: the process lives on, each
//! panic is logged and counted, the actor is restarted, and no message is lost.

mod common;

use std::time::Duration;

use common::{Mandrill, CHAOS};

#[test]
fn injected_panics_lose_no_message() {
    let extra = [
        "--messages",
        "20000",
        "--failure-rate",
        "0.1",
        "--seed",
        "3",
        // The publisher makes its 20k in about 20 chunks, so it needs a higher rate.
        "--inject",
        "panic:publisher=0.2,panic:consumer=0.02,panic:saver=0.05,panic:restarter=0.05,panic:acker=0.01",
    ];
    // Backtraces asked for: the caught panics still print none of Rust's own reports.
    let m = Mandrill::spawn_env(&[CHAOS, &extra].concat(), &[("RUST_BACKTRACE", "1")]);
    let f = m.finish(Duration::from_secs(120));
    let reports = f.log.iter().filter(|l| l.contains("panicked at")).count();
    assert_eq!(reports, 0, "{}", f.log.join("\n"));
    assert!(
        f.status.success(),
        "exit {:?}\n{}",
        f.status,
        f.log.join("\n")
    );
    assert_eq!(f.report["stopped_by"], "done", "{}", f.report);
    f.assert_conserved();
    assert_eq!(f.n("published"), 20000);
    // A finished run leaves nothing behind: every message was acked or dead-lettered.
    assert_eq!(f.n("pending_at_exit"), 0, "{}", f.report);
    // Everything a failed actor held was nacked at once, not left to its lease.
    assert_eq!(f.n("lease_expired"), 0, "{}", f.report);
    let panics = f.n("panics");
    assert!(panics > 10, "{}", f.report);
    assert_eq!(f.n("actor_restarts"), panics, "{}", f.report);
    for actor in ["publisher", "consumer", "saver", "restarter", "acker"] {
        assert!(
            f.log
                .iter()
                .any(|l| l.contains("Caught exception: injected panic in") && l.contains(actor)),
            "no caught panic logged for {actor}"
        );
    }
    assert_eq!(
        f.count_lines("Caught exception: injected panic") as u64,
        panics
    );
    assert_eq!(
        f.db_rows("SELECT count(*) FROM messages") as u64,
        f.n("saved")
    );
}

//! 10k messages through the whole pipeline at failure rates 0, 0.25 and 1, with one and
//! with five deliveries allowed: every message is acked or dead-lettered, the counts
//! agree with each other, and the SQLite row count equals `saved`.

use std::time::Duration;

use mandrill::app;
use mandrill::config::{Config, StoreKind};

const N: u64 = 10_000;

fn run(failure_rate: f64, max_deliveries: u32) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let config = Config {
        messages: Some(N),
        publish_delay: Duration::ZERO,
        publish_jitter: false,
        io_delay: Duration::ZERO,
        failure_rate,
        max_deliveries,
        seed: Some(42),
        store: StoreKind::Sqlite(db.clone()),
        handle_signals: false,
        ..Config::default()
    };
    let r = app::run(config).expect("run");
    let case = format!(
        "rate {failure_rate}, max {max_deliveries}: {}",
        serde_json::to_string(&r).unwrap()
    );
    let c = r.counts;
    assert_eq!(r.stopped_by, "done", "{case}");
    assert_eq!(r.exit_code, 0, "{case}");
    assert_eq!(c.published, N, "{case}");
    assert!(r.conserved(), "{case}");
    assert_eq!(r.pending_at_exit, 0, "{case}");
    assert_eq!(c.acked + c.dead_lettered, N, "{case}");
    // Every delivery is consumed once, and every first delivery is saved.
    assert_eq!(c.consumed, N + c.redelivered, "{case}");
    assert_eq!(c.saved, N, "{case}");
    // Each delivery ends in exactly one ack or nack.
    assert_eq!(c.acked + c.nacked, c.consumed, "{case}");
    // A failed restart is the only way to fail here.
    assert_eq!(c.errors, c.nacked, "{case}");
    // Saves never fail here, so a message is acked exactly when its restart succeeded.
    assert_eq!(c.restarted + c.restart_skipped, c.acked, "{case}");
    if failure_rate == 0.0 {
        assert_eq!((c.acked, c.dead_lettered), (N, 0), "{case}");
    }
    if failure_rate == 1.0 {
        assert_eq!((c.acked, c.dead_lettered), (0, N), "{case}");
        assert_eq!(c.consumed, N * max_deliveries as u64, "{case}");
    }
    if max_deliveries == 1 {
        assert_eq!(c.redelivered, 0, "{case}");
        assert_eq!(c.dead_lettered, c.nacked, "{case}");
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as u64, c.saved, "{case}");
    let restarts: i64 = conn
        .query_row("SELECT count(*) FROM restarts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(restarts as u64, c.restarted, "{case}");
}

#[test]
fn no_failures_one_delivery() {
    run(0.0, 1);
}

#[test]
fn no_failures_five_deliveries() {
    run(0.0, 5);
}

#[test]
fn quarter_failures_one_delivery() {
    run(0.25, 1);
}

#[test]
fn quarter_failures_five_deliveries() {
    run(0.25, 5);
}

#[test]
fn all_failures_one_delivery() {
    run(1.0, 1);
}

#[test]
fn all_failures_five_deliveries() {
    run(1.0, 5);
}

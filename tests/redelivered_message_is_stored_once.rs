//! A message delivered several times is saved each time but stored once, with its
//! delivery count raised.

mod common;

use std::time::Duration;

use common::{stdin_line, Mandrill};

#[test]
fn redeliveries_update_one_row() {
    // Every restart fails, so each message is delivered --max-deliveries times and then
    // dead-lettered; every delivery is saved.
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--io-delay",
            "0",
            "--failure-rate",
            "1",
            "--max-deliveries",
            "3",
            "--min-restart-interval",
            "0",
        ],
        true,
    );
    for n in 0..10 {
        m.write_stdin(stdin_line(n, &format!("cattle-{n}")).as_bytes());
    }
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}", f.status);
    assert_eq!(f.n("consumed"), 30, "{}", f.report);
    assert_eq!(f.n("redelivered"), 20, "{}", f.report);
    assert_eq!(f.n("dead_lettered"), 10, "{}", f.report);
    assert_eq!(f.n("saved"), 10, "{}", f.report);
    assert_eq!(f.db_rows("SELECT count(*) FROM messages"), 10);
    assert_eq!(f.db_rows("SELECT min(deliveries) FROM messages"), 3);
    f.assert_conserved();
}

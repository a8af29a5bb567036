//! A message delivered several times is saved each time but stored once, with its
//! delivery count raised.

mod common;

use std::time::Duration;

use common::Mandrill;

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
    for n in 0..10u32 {
        let line = format!(
            r#"{{"message_id": "00000000-0000-4000-8000-{n:012}", "instance_name": "cattle-{n}"}}"#
        );
        m.write_stdin(line.as_bytes());
        m.write_stdin(b"\n");
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

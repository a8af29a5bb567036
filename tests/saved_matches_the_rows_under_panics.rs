//! The report's `saved` is the number of rows the store holds, even when panics restart
//! the Saver while a commit is on its way: the commit's answer comes back through the
//! Saver's mailbox, so a restarted Saver still counts the rows it wrote.

mod common;

use std::time::Duration;

use common::Mandrill;

#[test]
fn saved_equals_the_row_count_under_saver_and_acker_panics() {
    let m = Mandrill::spawn(&[
        "--inject",
        "panic:saver=0.1,panic:acker=0.1",
        "--messages",
        "20000",
        "--io-delay",
        "0",
        "--publish-delay",
        "0",
        "--max-restarts",
        "100000",
        "--seed",
        "7",
        "--log",
        "none",
    ]);
    let f = m.finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "done", "{}", f.report);
    assert!(f.n("panics") > 0, "{}", f.report);
    f.assert_conserved();
    let rows = f.db_rows("SELECT count(*) FROM messages") as u64;
    assert_eq!(f.n("saved"), rows, "{}", f.report);
}

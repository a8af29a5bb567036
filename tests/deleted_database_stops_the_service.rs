//! A SQLite file deleted under the running service is noticed at the next batch: nothing
//! more is acked into a file that is gone, the failure escalates to the ordered shutdown
//! with exit status 1, and every message is still accounted for.

mod common;

use std::time::Duration;

use common::Mandrill;

#[test]
fn deleting_the_database_file_escalates_instead_of_acking_into_it() {
    let mut m = Mandrill::spawn(&["--publish-delay", "0.002", "--io-delay", "0.005"]);
    m.wait_for_count("Done. Acked", 50, Duration::from_secs(20));
    let db = m.db_path();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    let line = m.wait_for("was deleted while the service ran", Duration::from_secs(10));
    assert!(line.contains(&db.display().to_string()), "{line}");
    let f = m.finish(Duration::from_secs(30));
    assert_eq!(f.status.code(), Some(1), "an escalation exits 1");
    f.assert_conserved();
    assert_eq!(f.report["stopped_by"], "escalation");
    // What was saved went with the file; what was not saved was not acked after it went.
    let gone = f.line_index("was deleted while the service ran");
    assert!(
        f.log[gone..].iter().all(|l| !l.contains("Saved ")),
        "a save after the file was gone"
    );
}

//! A real action is leashed unless `--unleash` is given: it logs what it would run, the
//! message is acked, and no process starts.

mod common;

use std::time::Duration;

use common::{stdin_line, Mandrill};

#[test]
fn without_unleash_no_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("{instance}");
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--action",
            "command",
            "--command",
            "touch",
            "--command-arg",
            marker.to_str().unwrap(),
        ],
        true,
    );
    m.write_stdin(stdin_line(1, "cattle-a").as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(
        (f.n("leashed"), f.n("restarted"), f.n("acked")),
        (1, 0, 1),
        "{}",
        f.report
    );
    assert!(
        f.log.iter().any(
            |l| l.contains("Would restart cattle-a.example.net (leashed):")
                && l.contains("cattle-a")
        ),
        "{}",
        f.log.join("\n")
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a leashed action ran its command"
    );
    // The history records the dry run, with what would have run.
    let (outcome, leashed, reason): (String, bool, String) =
        rusqlite::Connection::open(f.dir.path().join("mandrill.db"))
            .unwrap()
            .query_row("SELECT outcome, leashed, reason FROM attempts", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
    assert_eq!((outcome.as_str(), leashed), ("dry_run", true));
    assert!(reason.contains("touch"), "{reason}");
}

//! A command still running at `--action-timeout` is a timeout, and its whole process group
//! is killed: the child it started in the background is gone too.

mod common;

use std::time::Duration;

use common::{process_alive as alive, sh_action, stdin_line, Mandrill};

#[test]
fn a_timed_out_command_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut flags = sh_action(
        r#"sleep 60 & echo $! >> "$1"; echo $$ >> "$1"; wait"#,
        &["sh", pids.to_str().unwrap()],
    );
    flags.extend(["--action-timeout", "1", "--max-deliveries", "1"]);
    let mut m = Mandrill::spawn_with_stdin(&flags, true);
    m.write_stdin(stdin_line(1, "cattle-slow").as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.n("dead_lettered"), 1, "{}", f.report);
    assert!(
        f.log
            .iter()
            .any(|l| l.contains("Restarting cattle-slow.example.net timed out after 1s")),
        "{}",
        f.log.join("\n")
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived its timed-out restart");
    }
}

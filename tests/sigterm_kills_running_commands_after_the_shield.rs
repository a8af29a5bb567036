//! SIGTERM while 50 `command` restarts run: the shutdown shields them up to
//! `--shield-timeout`, then kills their process groups. No child outlives the service,
//! and every message is accounted for.

mod common;

use std::time::{Duration, Instant};

use common::{process_alive as alive, sh_action, stdin_line, Mandrill};
use nix::sys::signal::Signal;

const RESTARTS: usize = 50;

#[test]
fn no_command_outlives_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut flags = sh_action(
        r#"echo $$ >> "$1"; sleep 60 & echo $! >> "$1"; wait"#,
        &["sh", pids.to_str().unwrap()],
    );
    flags.extend([
        "--action-timeout",
        "120",
        "--shield-timeout",
        "1",
        "--drain-timeout",
        "0",
    ]);
    let mut m = Mandrill::spawn_with_stdin(&flags, true);
    let lines: String = (0..RESTARTS)
        .map(|i| stdin_line(i, &format!("cattle-{i}")))
        .collect();
    m.write_stdin(lines.as_bytes());
    // Every command has started once each wrote its own pid and its sleeper's.
    let deadline = Instant::now() + Duration::from_secs(30);
    let read = || {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .collect::<Vec<_>>()
    };
    while read().len() < 2 * RESTARTS {
        assert!(Instant::now() < deadline, "only {} pids", read().len());
        std::thread::sleep(Duration::from_millis(20));
    }
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.line_index(&format!(
        "Waiting up to 1s for {RESTARTS} shielded restarts"
    ));
    f.assert_conserved();
    assert_eq!(f.n("pending_at_exit"), RESTARTS as u64, "{}", f.report);
    for pid in read() {
        assert!(!alive(pid), "process {pid} outlived the service");
    }
}

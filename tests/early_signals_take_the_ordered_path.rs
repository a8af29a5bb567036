//! A signal that comes while the service starts takes the ordered path: the process
//! exits with its report and status 0, never by the signal's default action. Signals are
//! caught first thing in `main`, before the flags are read, the logs set up or the store
//! opened, which took up to 33 ms: the process catches them before its SQLite file
//! exists. The time before `main` no program can cover: the loader maps and relocates
//! this binary in 2 to 6 ms here, so the delays count from the moment the process shows
//! it catches them all (`SigCgt` in `/proc/PID/status`), which is `main`'s first act.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::exit_within;

/// Waits until the child forked for `pid` has become the binary and reached `main`,
/// whose first act is to catch the signals the service acts on; `db` must not exist by
/// then.
fn wait_for_main(pid: u32, binary: &std::path::Path, db: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let exe = format!("/proc/{pid}/exe");
    let status = format!("/proc/{pid}/status");
    let wanted = [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGTERM,
    ]
    .iter()
    .fold(0u64, |bits, &sig| bits | 1 << (sig as i32 - 1));
    let catches_them = || {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let caught = text.lines().find_map(|l| l.strip_prefix("SigCgt:"));
        let bits = caught.and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
        bits.unwrap_or(0) & wanted == wanted
    };
    while std::fs::read_link(&exe).ok().as_deref() != Some(binary) || !catches_them() {
        assert!(Instant::now() < deadline, "the process never reached main");
        assert!(
            !db.exists(),
            "the store was opened before the signals were caught"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn signal_after(sig: Signal, after: Duration) {
    let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_mandrill")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let mut child = Command::new(&binary)
        .args(["--messages", "1000000", "--log", "none", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_main(child.id(), &binary, &db);
    std::thread::sleep(after);
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    let what = format!("{sig} {after:?} after start");
    let status = exit_within(&mut child, Duration::from_secs(30), &what);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(
        status.signal(),
        None,
        "{sig} {after:?} after start killed the process\n{err}"
    );
    assert_eq!(status.code(), Some(0), "{sig} {after:?}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{sig} {after:?}: no report ({e}): {out:?}\n{err}"));
    assert_eq!(report["stopped_by"], sig.as_str(), "{report}");
}

#[test]
fn sigterm_at_any_moment_of_start_up_gets_the_report() {
    for ms in [0, 1, 2, 5, 10, 20] {
        signal_after(Signal::SIGTERM, Duration::from_millis(ms));
    }
}

#[test]
fn sighup_at_any_moment_of_start_up_gets_the_report() {
    for ms in [0, 1, 2, 5, 10, 20] {
        signal_after(Signal::SIGHUP, Duration::from_millis(ms));
    }
}

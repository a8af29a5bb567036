//! A log reader that goes away (a closed stderr pipe) must not stop the service: it keeps
//! handling messages and still shuts down in order on SIGTERM.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::exit_within;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn service_outlives_its_log_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["--publish-delay", "0.005", "--io-delay", "0.005", "--db"])
        .arg(dir.path().join("m.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(child.stderr.take());
    std::thread::sleep(Duration::from_millis(700));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = exit_within(
        &mut child,
        Duration::from_secs(15),
        "SIGTERM after its stderr closed",
    );
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("a report");
    assert_eq!(report["stopped_by"], "SIGTERM");
    // Work went on after the reader left: far more than 300 ms' worth was acked.
    assert!(report["acked"].as_u64().unwrap() > 80, "{report}");
}

//! A SQLite file the service may not write is refused at start, in one line and with exit
//! status 1, before a message is read: otherwise every save fails and every message ends
//! in the dead letters. Root may write any file, so as root the service runs as `nobody`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_read_only_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = dir.path().join("ro.db");
    let made = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["--messages", "1", "--publish-delay", "0", "--io-delay", "0"])
        .args(["--log", "none", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    // The file was made by this test's user.
    let as_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&db).unwrap()) == 0;
    let mut run = if as_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_mandrill"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_mandrill"))
    };
    let out = run
        .args([
            "--messages",
            "20",
            "--publish-delay",
            "0",
            "--io-delay",
            "0",
        ])
        .args(["--log", "none", "--db"])
        .arg(&db)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The banner is a log line; the error is the one line besides it.
    let not_logged: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(not_logged.len(), 1, "{err}");
    assert!(not_logged[0].starts_with("error: "), "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert!(out.stdout.is_empty(), "no run, so no report: {out:?}");
}

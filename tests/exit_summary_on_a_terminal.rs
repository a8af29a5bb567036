//! On a terminal, the run ends with a readable summary after the last log line; on a
//! pipe there is none, and no colour either. The JSON report goes to stdout both ways.

mod common;

use std::process::Command;

use serde_json::Value;

const ARGS: &str = "--store memory --messages 50 --publish-delay 0 --io-delay 0.001";

#[test]
fn a_terminal_gets_the_summary_last_and_stdout_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let inner = format!(
        "{} {ARGS} > {}",
        env!("CARGO_BIN_EXE_mandrill"),
        json.display()
    );
    // `script` runs the binary on a pseudo-terminal: its stderr is a terminal, and its
    // stdout goes to the file.
    let mut command = Command::new("script");
    common::isolate(&mut command, dir.path());
    let out = command
        .args(["-qec", &inner, "/dev/null"])
        .env_remove("NO_COLOR")
        .output()
        .expect("run script");
    assert!(out.status.success(), "{out:?}");
    let tty = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let lines: Vec<&str> = tty.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("mandrill finished"))
        .unwrap_or_else(|| panic!("no summary in {tty}"));
    assert!(
        lines[head..].iter().all(|l| !l.contains(" INFO ")),
        "a log line after the summary: {tty}"
    );
    assert!(tty.contains("\x1b["), "a terminal gets colour: {tty}");
    for label in [
        "published",
        "acked",
        "nacked",
        "dead-lettered",
        "host restarts",
    ] {
        assert!(
            lines[head..]
                .iter()
                .any(|l| l.trim_start().starts_with(label)),
            "{label} missing: {tty}"
        );
    }
    let report: Value =
        serde_json::from_str(std::fs::read_to_string(&json).unwrap().trim()).expect("report");
    assert_eq!(report["published"], 50);
}

#[test]
fn a_pipe_gets_the_report_and_no_summary_or_colour() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mandrill"));
    common::isolate(&mut command, dir.path());
    let out = command
        .args(ARGS.split(' '))
        .env_remove("NO_COLOR")
        .output()
        .expect("run mandrill");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("mandrill finished"), "{err}");
    assert!(!err.contains('\x1b'), "colour on a pipe: {err}");
    let report: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("report");
    assert_eq!(report["published"], 50);
    // Floats are rounded to six significant digits.
    let text = String::from_utf8_lossy(&out.stdout);
    let elapsed = text
        .split("\"elapsed_s\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("elapsed_s");
    let significant = elapsed.trim_start_matches(['0', '.']);
    let digits = significant.chars().filter(char::is_ascii_digit).count();
    assert!(digits <= 6, "{elapsed}");
}

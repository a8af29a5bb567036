//! An invalid config file stops the binary before it starts, with exit status 2 and an
//! error naming the offending key; a valid one is used.

use std::process::Command;

fn run(toml: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mandrill.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .arg("--config")
        .arg(&path)
        .args(["--db"])
        .arg(dir.path().join("m.db"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_bad_key_or_value_is_a_usage_error_naming_the_key() {
    for (toml, key) in [
        ("max_restarts = -1", "max_restarts"),
        ("[backoff]\njitter = 2", "backoff-jitter"),
        ("typo = 1", "typo"),
    ] {
        let out = run(toml, &[]);
        assert_eq!(out.status.code(), Some(2), "{toml:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // The key as the file spells it.
        assert!(err.contains(&format!("`{key}`")), "{toml:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "no report for a run that never started"
        );
    }
}

#[test]
fn a_good_file_drives_the_run() {
    let toml = "messages = 20\npublish_delay = 0\nio_delay = 0\nfailure_rate = 0\nlog = \"none\"";
    let out = run(toml, &["--store", "memory"]);
    assert!(out.status.success(), "{:?}", out.status);
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("report");
    assert_eq!(report["published"], 20);
    assert_eq!(report["acked"], 20);
}

//! Every flag can come from `MANDRILL_<FLAG>`: a flag wins over its variable, which wins
//! over the config file. A bad value in a variable is an error naming the variable. The
//! config file is `--config`, else `MANDRILL_CONFIG`, else the first found of
//! `$XDG_CONFIG_HOME/mandrill/mandrill.toml` and `/etc/mandrill/mandrill.toml`; the
//! banner names the one read.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs a short simulated run with `env` and `args`, its config search path in `home`.
fn run(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mandrill"));
    common::isolate(&mut command, home);
    command
        .args([
            "--store",
            "memory",
            "--publish-delay",
            "0",
            "--io-delay",
            "0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run mandrill")
}

fn published(out: &Output) -> u64 {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("a report");
    report["published"].as_u64().expect("published")
}

fn banner(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.contains("starting:"))
        .expect("a banner")
        .to_string()
}

#[test]
fn a_flag_wins_over_its_variable_which_wins_over_the_file() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("mandrill");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mandrill.toml"), "messages = 7\n").unwrap();
    let out = run(home.path(), &[], &[]);
    assert_eq!(published(&out), 7);
    let env = [("MANDRILL_MESSAGES", "5")];
    assert_eq!(published(&run(home.path(), &env, &[])), 5);
    assert_eq!(published(&run(home.path(), &env, &["--messages", "3"])), 3);
    assert_eq!(published(&run(home.path(), &env, &["--messages=4"])), 4);
    // A switch reads true or false.
    let on = run(home.path(), &[("MANDRILL_IO_FIXED", "true")], &[]);
    assert_eq!(published(&on), 7);
}

#[test]
fn a_bad_value_in_a_variable_is_an_error_naming_it() {
    let home = tempfile::tempdir().unwrap();
    // A run that wrongly starts still ends, whichever variable is tried.
    std::fs::create_dir(home.path().join("mandrill")).unwrap();
    std::fs::write(home.path().join("mandrill/mandrill.toml"), "messages = 1\n").unwrap();
    for (var, value) in [
        ("MANDRILL_FAILURE_RATE", "2"),
        ("MANDRILL_MESSAGES", "many"),
        ("MANDRILL_ACK_DEADLINE", "1e19"),
        ("MANDRILL_UNLEASH", "maybe"),
        ("MANDRILL_LOG", "loud"),
    ] {
        let out = run(home.path(), &[(var, value)], &[]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}={value}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            out.stdout.is_empty(),
            "no report for a run that never started"
        );
    }
    // The command line wins, so the bad variable is never read.
    let out = run(
        home.path(),
        &[("MANDRILL_FAILURE_RATE", "2")],
        &["--failure-rate", "0"],
    );
    assert_eq!(published(&out), 1);
}

#[test]
fn a_variable_that_looks_like_a_typo_is_warned_about() {
    let home = tempfile::tempdir().unwrap();
    let out = run(
        home.path(),
        &[("MANDRILL_FAILURE_RAT", "0.5")],
        &["--messages", "1"],
    );
    assert_eq!(published(&out), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MANDRILL_FAILURE_RAT is not a setting")
            && err.contains("did you mean MANDRILL_FAILURE_RATE"),
        "{err}"
    );
}

#[test]
fn the_config_file_is_looked_for_in_order() {
    let home = tempfile::tempdir().unwrap();
    let xdg = home.path().join("mandrill").join("mandrill.toml");
    std::fs::create_dir(xdg.parent().unwrap()).unwrap();
    std::fs::write(&xdg, "messages = 7\n").unwrap();
    let named = home.path().join("named.toml");
    std::fs::write(&named, "messages = 6\n").unwrap();
    let flagged = home.path().join("flagged.toml");
    std::fs::write(&flagged, "messages = 2\n").unwrap();

    let out = run(home.path(), &[], &[]);
    assert_eq!(published(&out), 7);
    assert!(banner(&out).ends_with(&format!("config file {}", xdg.display())));

    let env = [("MANDRILL_CONFIG", named.to_str().unwrap())];
    let out = run(home.path(), &env, &[]);
    assert_eq!(published(&out), 6);
    assert!(banner(&out).ends_with(&format!("config file {}", named.display())));

    let out = run(home.path(), &env, &["--config", flagged.to_str().unwrap()]);
    assert_eq!(published(&out), 2);
    assert!(banner(&out).ends_with(&format!("config file {}", flagged.display())));

    // With none on the path, none is read.
    std::fs::remove_file(&xdg).unwrap();
    let out = run(home.path(), &[], &["--messages", "1"]);
    assert!(banner(&out).ends_with("config file none") || banner(&out).contains("/etc/mandrill"));
}

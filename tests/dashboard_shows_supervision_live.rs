//! The supervision dashboard, in a real browser: headless Chromium, driven by
//! `tests/browser/dashboard.mjs` through playwright-core, opens the page of a run with
//! panics injected, and sees the tree's children, each restart within a second of its
//! log line, and at the end the counts of the run's report. The screenshots are kept in
//! `target/browser/`.
//!
//! It needs Chromium, Node.js and `npm ci` in `tests/browser`, which `.ci/run`
//! installs. Under `CI=true` a missing one fails the test; elsewhere it is skipped with a
//! loud message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Mandrill;
use serde_json::Value;

/// What the browser test needs, or why it cannot run.
fn browser() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!("{chromium} is missing (apt-get install chromium)"));
    }
    which::which("node").map_err(|_| "node is missing".to_string())?;
    if !dir.join("node_modules/playwright-core").exists() {
        return Err(format!(
            "playwright-core is missing (cd {} && npm ci)",
            dir.display()
        ));
    }
    Ok(dir)
}

#[test]
fn the_page_shows_the_tree_its_restarts_and_the_report() {
    let dir = match browser() {
        Ok(dir) => dir,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("cannot run the browser test: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: the dashboard's browser test cannot run here: {why}");
            return;
        }
    };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../browser");
    std::fs::create_dir_all(&out).unwrap();
    let mut m = Mandrill::spawn(&[
        "--store",
        "memory",
        "--strategy",
        "one-for-all",
        "--messages",
        "3000",
        "--publish-rate",
        "500",
        "--io-delay",
        "0.005",
        "--inject",
        "panic:saver=0.02",
        "--max-restarts",
        "1000",
        "--dashboard",
        "127.0.0.1:0",
        "--metrics-linger",
        "30",
    ]);
    let addr = m.wait_for_address(
        "Serving the supervision dashboard at",
        Duration::from_secs(10),
    );
    let url = format!("http://{addr}/");
    let run = Command::new("node")
        .current_dir(&dir)
        .arg("dashboard.mjs")
        .arg(&url)
        .arg(out.join("dashboard.png"))
        .arg(out.join("dashboard-one-for-all.png"))
        .output()
        .expect("run node");
    assert!(
        run.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: Value = serde_json::from_slice(run.stdout.trim_ascii()).expect("its report");
    let report = m.report_line(Duration::from_secs(60));
    m.signal(nix::sys::signal::Signal::SIGTERM);

    let names: Vec<&str> = seen["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for child in ["publisher", "consumer", "saver", "restarter", "acker"] {
        assert!(names.contains(&child), "{child} missing from {names:?}");
    }
    let restarts = seen["restarts"].as_array().unwrap();
    assert!(!restarts.is_empty(), "no restart was shown");
    let mut lateness: Vec<i64> = restarts
        .iter()
        .map(|r| r["receivedMs"].as_i64().unwrap() - r["tMs"].as_i64().unwrap())
        .collect();
    lateness.sort_unstable();
    eprintln!(
        "{} restarts shown; from log line to page: median {} ms, max {} ms",
        lateness.len(),
        lateness[lateness.len() / 2],
        lateness[lateness.len() - 1]
    );
    assert!(
        lateness.iter().all(|late| *late < 1000),
        "a restart shown a second or more after it was logged: {lateness:?}"
    );
    for field in [
        "published",
        "acked",
        "nacked",
        "dead_lettered",
        "panics",
        "actor_restarts",
    ] {
        assert_eq!(
            seen["counts"][field].as_u64(),
            report[field].as_u64(),
            "{field}: {seen}"
        );
    }
    assert!(
        report["panics"].as_u64().unwrap() > 0,
        "no panic was injected"
    );
    assert!(
        seen["status"].as_str().unwrap().starts_with("finished"),
        "{seen}"
    );
}

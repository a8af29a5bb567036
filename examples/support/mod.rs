//! What the benchmark harnesses share: finding the release binary beside them, running
//! it to its report, and the median of a workload's runs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The `mandrill` binary of the profile the harness was built with: examples live in
/// target/<profile>/examples, the binary one level up.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("mandrill");
    assert!(
        bin.exists(),
        "{} is missing: run `just bench`",
        bin.display()
    );
    bin
}

/// The middle of the runs.
pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the binary to its end with `env` added, and returns its report.
pub fn mandrill(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .output()
        .expect("run mandrill");
    assert!(out.status.success(), "mandrill {args:?} failed");
    report(&out.stdout)
}

/// The report a run printed last on stdout.
pub fn report(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("report")
}

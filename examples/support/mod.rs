//! What the benchmark harnesses and the torture suite share: finding the release binary
//! beside them, running it, or several instances of it, to their reports, the median of
//! a workload's runs, removing a JetStream stream with its dead letters, and the Pub/Sub
//! emulator (`emulator`).

#![allow(dead_code)]

pub mod emulator;

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

/// Runs `k` instances with the same `args` at once, and returns their reports.
pub fn instances(args: &[&str], k: usize) -> Vec<Value> {
    let children: Vec<_> = (0..k)
        .map(|_| {
            Command::new(binary())
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mandrill")
        })
        .collect();
    children
        .into_iter()
        .map(|c| report(&c.wait_with_output().expect("wait").stdout))
        .collect()
}

/// What instances acked in all, a second, from their start to the last one's end.
pub fn total_rate(reports: &[Value]) -> f64 {
    let acked: f64 = reports
        .iter()
        .map(|r| r["acked"].as_f64().unwrap_or(0.0))
        .sum();
    let longest = reports
        .iter()
        .map(|r| r["elapsed_s"].as_f64().unwrap_or(f64::MAX))
        .fold(0.0, f64::max);
    acked / longest
}

/// Removes a stream and its dead letters, if they are there.
pub fn delete_stream(url: &str, stream: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("nats"));
        for name in [stream.to_string(), format!("{stream}_DLQ")] {
            let _ = js.delete_stream(&name).await;
        }
    });
}

//! The rails a fleet shares count every instance: three processes on one SQLite file,
//! with at most one restart at once and 15 an hour, run one restart at a time between
//! them and 15 in all, because each claim takes its place under the rails in the same
//! transaction that every process on the file waits its turn for.

mod common;

use common::{fleet_on_sqlite, sh_action, stdin_line};

const HOSTS: usize = 20;
const RATE: u64 = 15;

#[test]
fn three_processes_share_the_cap_and_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let out = dir.path().join("restarted");
    let out_s = out.to_str().unwrap().to_string();
    // A restart that finds another one running leaves a mark.
    let mut flags = sh_action(
        r#"mkdir "$2.lock" 2>/dev/null || echo "$1" >> "$2.overlaps"
           printf '%s\n' "$1" >> "$2"; sleep 0.02; rmdir "$2.lock""#,
        &["sh", "{instance}", &out_s],
    );
    let rate = format!("1h={RATE}");
    flags.extend(["--max-concurrent-host-restarts", "1"]);
    flags.extend(["--max-host-restarts", &rate]);
    let inputs: Vec<String> = (0..3)
        .map(|n| {
            (0..HOSTS)
                .map(|i| stdin_line(n * HOSTS + i, &format!("web-{n}-{i:02}")))
                .collect()
        })
        .collect();
    let finished = fleet_on_sqlite(&flags, &db, &inputs);
    let restarted: u64 = finished.iter().map(|f| f.n("restarted")).sum();
    let refused: u64 = finished
        .iter()
        .map(|f| f.report["refused"]["rate"].as_u64().unwrap_or(0))
        .sum();
    let overlaps = std::fs::read_to_string(dir.path().join("restarted.overlaps"));
    assert!(overlaps.is_err(), "restarts ran at once: {overlaps:?}");
    let lines = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!((lines, restarted), (RATE, RATE));
    assert_eq!(refused, 3 * HOSTS as u64 - RATE);
}

//! Several instances on one SQLite file share its guard: three processes told to restart
//! the same hosts at once restart each one once, because a claim is one `BEGIN
//! IMMEDIATE` transaction that every process on the file waits its turn for.

mod common;

use std::collections::HashMap;

use common::{fleet_on_sqlite, sh_action, stdin_line};

const HOSTS: usize = 100;

#[test]
fn three_processes_on_one_file_restart_each_host_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let out = dir.path().join("restarted");
    let out_s = out.to_str().unwrap().to_string();
    let mut flags = sh_action(
        r#"printf '%s\n' "$1" >> "$2""#,
        &["sh", "{instance}", &out_s],
    );
    flags.extend(["--min-restart-interval", "1h"]);
    // Each gets every host, under message ids of its own.
    let inputs: Vec<String> = (0..3)
        .map(|n| {
            (0..HOSTS)
                .map(|i| stdin_line(n * HOSTS + i, &format!("web-{i:02}")))
                .collect()
        })
        .collect();
    let restarted: u64 = fleet_on_sqlite(&flags, &db, &inputs)
        .iter()
        .map(|f| f.n("restarted"))
        .sum();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *times.entry(line).or_default() += 1;
    }
    assert_eq!(times.len(), HOSTS, "hosts restarted");
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "restarted more than once: {twice:?}");
    assert_eq!(restarted, HOSTS as u64);
}

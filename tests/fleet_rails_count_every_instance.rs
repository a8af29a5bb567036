//! The rails a fleet shares count every instance: three processes on one SQLite file,
//! with at most one restart at once and 15 an hour, run one restart at a time between
//! them and 15 in all, because each claim takes its place under the rails in the same
//! transaction that every process on the file waits its turn for.

mod common;

use std::time::Duration;

use common::{sh_action, stdin_line, Mandrill};

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
    for f in flags.iter_mut().filter(|f| **f == "memory") {
        *f = "sqlite";
    }
    let rate = format!("1h={RATE}");
    flags.extend(["--max-concurrent-host-restarts", "1"]);
    flags.extend(["--max-host-restarts", &rate]);
    let mut fleet: Vec<Mandrill> = (0..3).map(|_| Mandrill::spawn_on(&flags, &db)).collect();
    for (n, m) in fleet.iter_mut().enumerate() {
        let lines: String = (0..HOSTS)
            .map(|i| stdin_line(n * HOSTS + i, &format!("web-{n}-{i:02}")))
            .collect();
        m.write_stdin(lines.as_bytes());
    }
    let (mut restarted, mut refused) = (0, 0);
    for mut m in fleet {
        m.close_stdin();
        let f = m.finish(Duration::from_secs(60));
        assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
        assert_eq!(f.n("acked"), HOSTS as u64, "{}", f.report);
        restarted += f.n("restarted");
        refused += f.report["refused"]["rate"].as_u64().unwrap_or(0);
    }
    let overlaps = std::fs::read_to_string(dir.path().join("restarted.overlaps"));
    assert!(overlaps.is_err(), "restarts ran at once: {overlaps:?}");
    let lines = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!((lines, restarted), (RATE, RATE));
    assert_eq!(refused, 3 * HOSTS as u64 - RATE);
}

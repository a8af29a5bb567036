//! A fleet: three instances on one JetStream consumer and one PostgreSQL database, over
//! 20k messages naming 500 hosts, with a one-hour minimum interval and a command action
//! that appends each host it restarts to a file. One instance is SIGKILLed mid-run.
//!
//! Each host is restarted at most once, as the file shows, whichever instance took its
//! messages; the hosts the killed instance had claimed without recording an outcome show
//! as claims without one. Every message is saved once, and the other instances settle
//! what the killed one held once the broker redelivers it.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::nats::{self, Nats};
use common::postgres::Schema;
use common::stdin_line;
use common::Mandrill;
use nix::sys::signal::Signal;

const MESSAGES: usize = 20_000;
const HOSTS: usize = 500;

/// Appends the host to the file after a moment, so that the kill finds restarts running.
const SCRIPT: &str = r#"sleep 0.05; printf '%s\n' "$1" >> "$2""#;

/// The host message `i` names: scattered, so that each instance meets hosts no other
/// has met yet from its first pull on.
fn host(i: usize) -> String {
    let h = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % HOSTS as u64;
    format!("web-{h:03}")
}

#[test]
fn three_instances_restart_each_host_at_most_once() {
    let Some(schema) = Schema::new() else { return };
    let Some(nats) = Nats::get() else { return };
    let stream = nats::unique("fleet");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("restarted");
    let file_s = file.to_str().unwrap().to_string();

    // The messages go in first, so that all three instances start on a full backlog.
    let input = dir.path().join("messages.ndjson");
    let lines: String = (0..MESSAGES).map(|i| stdin_line(i, &host(i))).collect();
    std::fs::write(&input, lines).unwrap();
    nats::publish_file(&nats.url, &stream, &input);

    let flags: Vec<&str> = vec![
        "--consumer",
        "fleet",
        "--store",
        "postgres",
        "--db-url",
        &schema.url,
        "--min-restart-interval",
        "1h",
        "--ack-deadline",
        "2",
        "--idle-exit",
        "8",
        "--max-in-flight",
        "500",
        "--claim-ttl",
        "3",
        "--action",
        "command",
        "--unleash",
        "--command",
        "sh",
        "--command-arg",
        "-c",
        "--command-arg",
        SCRIPT,
        "--command-arg",
        "sh",
        "--command-arg",
        "{instance}",
        "--command-arg",
        &file_s,
    ];
    let spawn = |id: &str| {
        let mut all = nats::source(&nats.url, &stream, &flags);
        all.extend(["--instance-id", id]);
        Mandrill::spawn(&all)
    };
    let mut victim = spawn("fleet-0");
    let others = [spawn("fleet-1"), spawn("fleet-2")];
    // Killed once it has restarted something, it still holds claims and leases.
    victim.wait_for("Restarted web-", Duration::from_secs(60));
    victim.signal(Signal::SIGKILL);
    let killed = victim.finish(Duration::from_secs(10));
    assert!(!killed.status.success());
    let finished: Vec<_> = others
        .into_iter()
        .map(|m| m.finish(Duration::from_secs(180)))
        .collect();
    for f in &finished {
        assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    }

    // Each host at most once in the file.
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *times.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "restarted more than once: {twice:?}");

    // Every host was restarted, or its claim was left without an outcome by the
    // instance killed while it held it; such a claim still counts as a restart.
    let mut client = postgres::Client::connect(&schema.url, postgres::NoTls).unwrap();
    let open: HashSet<String> = client
        .query("SELECT host FROM open_claims", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "{} hosts restarted; {} left claimed by the killed instance",
        times.len(),
        open.len()
    );
    let named: HashSet<String> = (0..MESSAGES).map(host).collect();
    assert_eq!(named.len(), HOSTS);
    for host in named {
        assert!(
            times.contains_key(host.as_str()) || open.contains(&host),
            "{host} was neither restarted nor left claimed"
        );
    }
    for host in &open {
        let by: String = client
            .query_one(
                "SELECT claimed_by FROM open_claims WHERE host = $1",
                &[host],
            )
            .unwrap()
            .get(0);
        assert_eq!(by, "fleet-0", "a surviving instance left {host} claimed");
    }
    let restarted = schema.count("SELECT count(*) FROM attempts WHERE outcome = 'restarted'");
    assert!(
        restarted as usize <= times.len(),
        "{restarted} restarts recorded, {} in the file",
        times.len()
    );

    // Every message saved once, and none left with the broker.
    assert_eq!(
        schema.count("SELECT count(*) FROM messages"),
        MESSAGES as i64
    );
    let left = nats::consumer_left_and_delete(&nats.url, &stream, "fleet");
    assert_eq!(left, (0, 0, 0), "(pending, unacked, dead letters) left");
    let survivors_acked: u64 = finished.iter().map(|f| f.n("acked")).sum();
    assert!(survivors_acked > 0);
}

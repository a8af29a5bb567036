//! JSON log lines carry each message's fields for a log pipeline to filter on, while text
//! lines keep the talk's shape without them.

mod common;

use std::process::Command;

use serde_json::Value;

fn run(format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mandrill"));
    common::isolate(&mut command, dir.path());
    let out = command
        .args([
            "--store",
            "memory",
            "--messages",
            "20",
            "--publish-delay",
            "0",
        ])
        .args(["--io-delay", "0.001", "--log-format", format])
        .output()
        .expect("run mandrill");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn each_step_of_a_message_is_a_json_line_with_its_fields() {
    let err = run("json");
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for line in lines.iter().filter(|l| l.get("outcome").is_some()) {
        let outcome = line["outcome"].as_str().unwrap();
        seen.insert(outcome.to_string());
        assert!(
            line["instance_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("cattle-")),
            "{line}"
        );
        assert!(line["actor"].is_string(), "{line}");
        if outcome != "skipped" {
            assert!(
                line["message_id"].as_str().is_some_and(|id| id.len() == 36),
                "{line}"
            );
        }
        if !["published", "skipped"].contains(&outcome) {
            assert!(line["attempt"].as_u64().is_some_and(|a| a >= 1), "{line}");
        }
    }
    for outcome in ["published", "pulled", "saved", "restarted", "acked"] {
        assert!(seen.contains(outcome), "no {outcome} line in {seen:?}");
    }
    let acked = lines.iter().filter(|l| l["outcome"] == "acked").count();
    assert_eq!(acked, 20);
}

#[test]
fn text_lines_keep_the_talk_shape() {
    let err = run("text");
    let acked: Vec<&str> = err.lines().filter(|l| l.contains("Done. Acked")).collect();
    assert_eq!(acked.len(), 20, "{err}");
    for line in acked {
        assert!(line.ends_with("')"), "fields leaked into the text: {line}");
    }
    assert!(
        err.contains("in memory, which the run does not keep"),
        "the memory store says what it did: {err}"
    );
    assert!(!err.contains("into database"), "{err}");
}

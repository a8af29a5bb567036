//! The stdin source rejects each kind of bad line with its line number and reason,
//! counts it, and goes on; valid lines are processed, and end of input shuts down.

mod common;

use std::time::Duration;

use common::Mandrill;

#[test]
fn bad_lines_are_rejected_and_good_ones_processed() {
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--io-delay",
            "0",
            "--failure-rate",
            "0",
        ],
        true,
    );
    let id = |n: u32| format!("6f1c2a9e-0000-4000-8000-{n:012}");
    let good = |n: u32, name: &str| {
        format!(
            r#"{{"message_id": "{}", "instance_name": "{name}"}}"#,
            id(n)
        )
    };
    let lines = [
        good(1, "cattle-zpsk"),                                                   // 1
        "{not json".to_string(),                                                  // 2
        format!(r#"{{"message_id": "{}"}}"#, id(3)),                              // 3
        r#"{"message_id": "not-a-uuid", "instance_name": "cattle-aaaa"}"#.into(), // 4
        format!(
            r#"{{"message_id": "{}", "instance_name": "cattle-1; rm -rf /"}}"#,
            id(5)
        ), // 5
        format!(
            r#"{{"message_id": "{}", "instance_name": "{}"}}"#,
            id(6),
            "a".repeat(70_000)
        ), // 6
        good(7, "cattle-998c"),                                                   // 7
        "".into(),              // 8, blank: skipped
        good(9, "cattle-j9bu"), // 9
    ];
    for l in &lines {
        m.write_stdin(l.as_bytes());
        m.write_stdin(b"\n");
    }
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "eof", "{}", f.report);
    assert_eq!(f.n("rejected"), 5, "{}", f.report);
    assert_eq!(f.n("published"), 3, "{}", f.report);
    assert_eq!(f.n("acked"), 3, "{}", f.report);
    f.assert_conserved();
    for (line, reason) in [
        (2, "key must be a string"),
        (3, "missing field `instance_name`"),
        (4, "UUID"),
        (5, "';'"),
        (6, "64 KiB"),
    ] {
        let prefix = format!("line {line}: rejected: ");
        let l = f
            .log
            .iter()
            .find(|l| l.contains(&prefix))
            .unwrap_or_else(|| panic!("no rejection for line {line}:\n{}", f.log.join("\n")));
        assert!(l.contains(reason), "{l:?} lacks {reason:?}");
    }
    assert_eq!(f.count_lines("rejected: "), 5);
    assert_eq!(f.db_rows("SELECT count(*) FROM messages"), 3);
    assert!(f
        .log
        .iter()
        .any(|l| l.contains("Restarted cattle-zpsk.example.net")));
}

//! An instance name is a validated DNS label before any action sees it, so even a
//! template that hands it to a shell, `sh -c 'echo {instance}'`, cannot be made to run
//! anything: a name with shell syntax is rejected at the edge and never restarted.

mod common;

use std::time::Duration;

use common::Mandrill;

#[test]
fn names_with_shell_syntax_are_rejected_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("echoed");
    let pwned = dir.path().join("pwned");
    let script = format!("echo {{instance}} >> {}", out.display());
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--store",
            "memory",
            "--action",
            "command",
            "--unleash",
            "--command",
            "sh",
            "--command-arg",
            "-c",
            "--command-arg",
            &script,
        ],
        true,
    );
    let touch = pwned.display().to_string();
    let lines = [
        format!(
            r#"{{"message_id":"00000000-0000-4000-8000-000000000001","instance_name":"cattle;touch {touch}"}}"#
        ),
        format!(
            r#"{{"message_id":"00000000-0000-4000-8000-000000000002","instance_name":"cattle$(touch {touch})"}}"#
        ),
        format!(
            r#"{{"message_id":"00000000-0000-4000-8000-000000000003","instance_name":"`touch {touch}`"}}"#
        ),
        r#"{"message_id":"00000000-0000-4000-8000-000000000004","instance_name":"cattle-ok"}"#
            .to_string(),
    ];
    m.write_stdin((lines.join("\n") + "\n").as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!((f.n("rejected"), f.n("restarted")), (3, 1), "{}", f.report);
    assert!(!pwned.exists(), "a name reached the shell");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "cattle-ok\n");
}

//! `--action command` runs the template as a real process per host: placeholders arrive
//! as one argv element each, the environment is cleared down to its allow-list, and a
//! non-zero exit is a failure whose reason keeps the status and the end of stderr.

mod common;

use std::time::Duration;

use common::{sh_action, stdin_lines, Mandrill};

const SCRIPT: &str = r#"case "$3" in *fail*) echo "boom on $3" >&2; exit 3;; esac
printf '%s\n' "$1" >> "$2"; env > "$2.env""#;

#[test]
fn a_command_restarts_hosts_and_a_failing_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restarted");
    let out = out.to_str().unwrap();
    let mut flags = sh_action(
        SCRIPT,
        &[
            "sh",
            r#"{hostname} has "quotes", it's one"#,
            out,
            "{instance}",
        ],
    );
    flags.extend(["--max-deliveries", "1", "--min-restart-interval", "0"]);
    let mut m = Mandrill::spawn_env(&flags, &[("MANDRILL_TEST_SECRET", "leak")]);
    m.write_stdin(stdin_lines(&["cattle-ok", "cattle-fail"]).as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.assert_conserved();
    assert_eq!(
        (f.n("restarted"), f.n("acked"), f.n("dead_lettered")),
        (1, 1, 1),
        "{}",
        f.report
    );
    // The phrase with spaces and quotes arrived as one argument, untouched.
    let lines = std::fs::read_to_string(out).unwrap();
    assert_eq!(lines, "cattle-ok.example.net has \"quotes\", it's one\n");
    let env = std::fs::read_to_string(format!("{out}.env")).unwrap();
    assert!(!env.contains("MANDRILL_TEST_SECRET"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(
        f.log.iter().any(|l| l.contains(
            "Could not restart cattle-fail.example.net: exit status 3: boom on cattle-fail"
        )),
        "{}",
        f.log.join("\n")
    );
}

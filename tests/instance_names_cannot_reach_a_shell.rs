//! An instance name is a validated DNS label before any action sees it, so even a
//! template that hands it to a shell, `sh -c 'echo {instance}'`, cannot be made to run
//! anything: a name with shell syntax is rejected at the edge and never restarted.

mod common;

use std::time::Duration;

use common::{sh_action, stdin_lines, Mandrill};

#[test]
fn names_with_shell_syntax_are_rejected_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("echoed");
    let pwned = dir.path().join("pwned");
    let script = format!("echo {{instance}} >> {}", out.display());
    let flags = sh_action(&script, &[]);
    let mut m = Mandrill::spawn_with_stdin(&flags, true);
    let touch = pwned.display().to_string();
    let lines = stdin_lines(&[
        &format!("cattle;touch {touch}"),
        &format!("cattle$(touch {touch})"),
        &format!("`touch {touch}`"),
        "cattle-ok",
    ]);
    m.write_stdin(lines.as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!((f.n("rejected"), f.n("restarted")), (3, 1), "{}", f.report);
    assert!(!pwned.exists(), "a name reached the shell");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "cattle-ok\n");
}

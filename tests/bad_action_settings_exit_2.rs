//! A command template that cannot work is a start-up error with exit status 2 and one
//! clear line, not a failure per message.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(args)
        .args(["--store", "memory"])
        .output()
        .expect("run mandrill");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_placeholders_and_missing_programs_are_refused_at_start() {
    for (args, says) in [
        (
            &[
                "--action",
                "command",
                "--command",
                "sh",
                "--command-arg",
                "{nope}",
            ][..],
            "error: --command: unknown placeholder {nope}",
        ),
        (
            &[
                "--action",
                "command",
                "--command",
                "no-such-program-anywhere",
            ],
            "error: --command: program \"no-such-program-anywhere\" not found",
        ),
        (
            &["--action", "command"],
            "error: --action command needs --command",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.starts_with(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

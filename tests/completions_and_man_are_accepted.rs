//! `mandrill completions SHELL` prints a script its shell accepts, and `mandrill man` a
//! page `man` renders.

use std::io::Write;
use std::process::{Command, Stdio};

fn mandrill(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(args)
        // A broken setting in the environment must not keep the docs from a user.
        .env("MANDRILL_FAILURE_RATE", "2")
        .output()
        .expect("run mandrill");
    assert!(out.status.success(), "{args:?}: {out:?}");
    assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    out.stdout
}

/// Runs `program args` with `input` on stdin; gives its status and stderr.
fn check(program: &str, args: &[&str], input: &[u8]) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_bash_script_parses() {
    let script = mandrill(&["completions", "bash"]);
    let (ok, err) = check("bash", &["-n"], &script);
    assert!(ok, "{err}");
    let text = String::from_utf8_lossy(&script);
    assert!(text.contains("--failure-rate"), "the flags are completed");
    assert!(text.contains("history"), "the subcommands are completed");
}

#[test]
fn the_zsh_and_fish_scripts_are_written() {
    let zsh = mandrill(&["completions", "zsh"]);
    assert!(zsh.starts_with(b"#compdef mandrill"));
    let fish = String::from_utf8(mandrill(&["completions", "fish"])).unwrap();
    assert!(fish.contains("complete -c mandrill"), "{fish}");
    // Each shell checks its own script where it is installed.
    for (shell, script) in [("zsh", zsh), ("fish", fish.into_bytes())] {
        if which::which(shell).is_ok() {
            let (ok, err) = check(shell, &["-n"], &script);
            assert!(ok, "{shell}: {err}");
        }
    }
}

#[test]
fn the_man_page_renders_without_warnings() {
    let page = mandrill(&["man"]);
    let (ok, err) = check("groff", &["-man", "-Tutf8", "-ww", "-z"], &page);
    assert!(ok && err.trim().is_empty(), "groff: {err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mandrill.1");
    std::fs::write(&path, &page).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&path)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("run man");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("--failure-rate"), "{text}");
    assert!(
        text.contains("MANDRILL_"),
        "the environment is documented: {text}"
    );
}

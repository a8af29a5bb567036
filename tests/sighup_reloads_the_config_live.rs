//! With `--on-sighup reload`, SIGHUP reads the config file again and applies what can
//! change live: a rail changed in the file refuses the next restart, a new log level
//! holds for the next message, a file that does not parse leaves the old config in force, a setting that cannot change live is named, and
//! no message is lost or counted twice across the reloads.

mod common;

use std::time::Duration;

use common::{stdin_line as line, Mandrill};
use nix::sys::signal::Signal;

/// The service on stdin, reloading `file` on SIGHUP.
fn reloading(file: &std::path::Path) -> Mandrill {
    Mandrill::spawn_with_stdin(
        &[
            "--config",
            file.to_str().unwrap(),
            "--on-sighup",
            "reload",
            "--source",
            "stdin",
        ],
        true,
    )
}

#[test]
fn a_rail_changed_in_the_file_takes_effect_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mandrill.toml");
    std::fs::write(&file, "failure-rate = 0\nio-delay = 0\n").unwrap();
    let mut m = reloading(&file);
    m.write_stdin(line(1, "pet-a").as_bytes());
    m.wait_for("Restarted pet-a.example.net", Duration::from_secs(20));

    std::fs::write(
        &file,
        "failure-rate = 0\nio-delay = 0\ndeny = \"pet-*\"\nmax-in-flight = 7\n",
    )
    .unwrap();
    m.signal(Signal::SIGHUP);
    m.wait_for("Reloaded the configuration", Duration::from_secs(20));
    m.wait_for(
        "cannot change while the service runs",
        Duration::from_secs(5),
    );
    m.write_stdin(line(2, "pet-b").as_bytes());
    m.wait_for(
        "Refused restarting pet-b.example.net",
        Duration::from_secs(20),
    );

    std::fs::write(&file, "this is [not toml").unwrap();
    m.signal(Signal::SIGHUP);
    m.wait_for("Cannot reload the configuration", Duration::from_secs(20));
    m.write_stdin(line(3, "pet-c").as_bytes());
    m.wait_for(
        "Refused restarting pet-c.example.net",
        Duration::from_secs(20),
    );
    m.close_stdin();

    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "eof", "{}", f.report);
    f.assert_conserved();
    assert_eq!(
        (f.n("published"), f.n("acked"), f.n("restarted")),
        (3, 3, 1),
        "{}",
        f.report
    );
    assert_eq!(f.report["refused"]["deny"], 2, "{}", f.report);
    let fixed = &f.log[f.line_index("cannot change while the service runs")];
    assert!(fixed.contains("max-in-flight"), "{fixed}");
}

#[test]
fn a_log_level_changed_in_the_file_holds_for_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mandrill.toml");
    std::fs::write(&file, "failure-rate = 0\nio-delay = 0\nlog = \"info\"\n").unwrap();
    let mut m = reloading(&file);
    m.write_stdin(line(1, "pet-a").as_bytes());
    m.wait_for("Restarted pet-a.example.net", Duration::from_secs(20));

    std::fs::write(&file, "failure-rate = 0\nio-delay = 0\nlog = \"none\"\n").unwrap();
    m.signal(Signal::SIGHUP);
    // The new level is set before this lifecycle line, which every level keeps.
    m.wait_for("Reloaded the configuration", Duration::from_secs(20));
    m.write_stdin(line(2, "pet-b").as_bytes());
    m.close_stdin();

    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.assert_conserved();
    assert_eq!(
        (f.n("published"), f.n("acked"), f.n("restarted")),
        (2, 2, 2),
        "{}",
        f.report
    );
    let quiet = f.log.iter().filter(|l| l.contains("pet-b")).count();
    assert_eq!(quiet, 0, "{}", f.log.join("\n"));
}

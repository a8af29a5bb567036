//! SIGUSR1 logs a live dump of the service, as the talk's stack-printing monitor does,
//! and the service carries on; SIGQUIT is noted and ignored. A later SIGTERM still shuts
//! it down cleanly.

mod common;

use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

#[test]
fn sigusr1_dumps_state_and_the_service_carries_on() {
    let mut m = Mandrill::spawn(&["--publish-delay", "0.01", "--io-delay", "0.05"]);
    m.wait_for("Done. Acked", Duration::from_secs(20));
    m.signal(Signal::SIGUSR1);
    m.wait_for("Dump: end; the service carries on", Duration::from_secs(10));
    let dump: Vec<&String> = m.log.iter().filter(|l| l.contains("Dump: ")).collect();
    let summary = dump
        .iter()
        .find(|l| l.contains("in flight, oldest in flight"))
        .unwrap_or_else(|| panic!("no summary line in {dump:#?}"));
    // The in-flight count is a number, not "unknown": the Acker answered.
    let count = summary
        .split("Dump: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .expect("a count");
    assert!(count.parse::<u64>().is_ok(), "{summary}");
    for actor in [
        "publisher",
        "subscription",
        "consumer",
        "saver",
        "restarter",
        "acker",
    ] {
        assert!(
            dump.iter()
                .any(|l| l.contains(&format!("Dump: {actor}: ")) && l.contains("answered in")),
            "no line for {actor} in {dump:#?}"
        );
    }
    assert!(
        dump.iter().any(|l| l.contains("Dump: supervision saver:")),
        "no supervision counters in {dump:#?}"
    );

    m.signal(Signal::SIGQUIT);
    m.wait_for(
        "Received SIGQUIT; it does not stop",
        Duration::from_secs(10),
    );
    // Still working after both: more messages get acked.
    let acked = m.log.iter().filter(|l| l.contains("Done. Acked")).count();
    m.wait_for_count("Done. Acked", acked + 5, Duration::from_secs(20));
    assert!(m.running());
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "exit {:?}", f.status);
    assert_eq!(f.report["stopped_by"], "SIGTERM");
    assert_eq!(f.count_lines("Received exit signal"), 1);
    f.assert_conserved();
}

//! SIGUSR1 and SIGQUIT are noted and ignored: the service carries on, and a later
//! SIGTERM still shuts it down cleanly.

mod common;

use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

#[test]
fn sigusr1_and_sigquit_do_not_stop_the_service() {
    let mut m = Mandrill::spawn(&["--publish-delay", "0.01", "--io-delay", "0.01"]);
    m.wait_for("Done. Acked", Duration::from_secs(20));
    for (sig, name) in [(Signal::SIGUSR1, "SIGUSR1"), (Signal::SIGQUIT, "SIGQUIT")] {
        m.signal(sig);
        m.wait_for(
            &format!("Received {name}; it does not stop"),
            Duration::from_secs(10),
        );
    }
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

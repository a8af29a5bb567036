//! Logs go through a non-blocking writer, and the shutdown flushes it: every per-message
//! line written before exit reaches stderr.

mod common;

use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

#[test]
fn every_ack_is_logged_by_the_time_the_process_exits() {
    let mut m = Mandrill::spawn(&["--publish-delay", "0", "--io-delay", "0", "--log", "info"]);
    // Let a burst of per-message lines build up, then stop in the middle of it.
    m.wait_for_count("Done. Acked", 20_000, Duration::from_secs(60));
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(60));
    assert!(f.status.success(), "exit {:?}", f.status);
    let acked = f.report["acked"].as_u64().expect("acked");
    assert!(acked >= 20_000, "{}", f.report);
    assert_eq!(f.count_lines("Done. Acked") as u64, acked);
    assert_eq!(
        f.log.last().map(|l| l.contains("Shutdown complete.")),
        Some(true),
        "{:?}",
        f.log.last()
    );
}

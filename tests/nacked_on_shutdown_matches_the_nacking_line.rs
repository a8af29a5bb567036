//! The report's `nacked_on_shutdown` is the number the shutdown says it nacks: deliveries
//! that the stopped Consumer's last pull brings back, and that go straight back to the
//! broker, were never in flight and are not counted again.

mod common;

use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

#[test]
fn nacked_on_shutdown_equals_the_number_in_the_nacking_line() {
    let mut m = Mandrill::spawn(&[
        "--publish-delay",
        "0",
        "--io-delay",
        "1",
        "--drain-timeout",
        "0",
        "--shield-timeout",
        "0",
        "--store",
        "memory",
        "--log",
        "none",
    ]);
    m.wait_for("Loaded", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    let line = &f.log[f.line_index("Nacking ")];
    let said: u64 = line
        .split("Nacking ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    assert!(said > 0, "nothing was in flight: {line}");
    assert_eq!(f.n("nacked_on_shutdown"), said, "{line}\n{}", f.report);
    f.assert_conserved();
}

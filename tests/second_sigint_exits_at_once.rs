//! A second SIGINT (or SIGTERM) during the shutdown exits at once, with 130 (or 143),
//! instead of waiting out the drain and shield timeouts.

mod common;

use std::time::{Duration, Instant};

use common::Mandrill;
use nix::sys::signal::Signal;

fn second_signal_exits_now(sig: Signal, name: &str, code: i32) {
    // Long IO and long timeouts: the first signal's shutdown would take many seconds.
    let mut m = Mandrill::spawn(&[
        "--publish-delay",
        "0.005",
        "--io-delay",
        "20",
        "--drain-timeout",
        "60",
        "--shield-timeout",
        "60",
    ]);
    m.wait_for("Pulled", Duration::from_secs(20));
    m.signal(sig);
    m.wait_for(
        &format!("Received exit signal {name}..."),
        Duration::from_secs(10),
    );
    m.wait_for("Draining", Duration::from_secs(10));
    let sent = Instant::now();
    m.signal(sig);
    let f = m.finish(Duration::from_secs(10));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(f.status.code(), Some(code), "{:?}", f.status);
    assert!(f.log.iter().any(|l| l.contains("again during shutdown")));
    assert!(!f.log.iter().any(|l| l.contains("Shutdown complete.")));
}

#[test]
fn second_sigint_exits_with_130() {
    second_signal_exits_now(Signal::SIGINT, "SIGINT", 130);
}

#[test]
fn second_sigterm_exits_with_143() {
    second_signal_exits_now(Signal::SIGTERM, "SIGTERM", 143);
}

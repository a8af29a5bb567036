//! The metrics endpoint serves `GET /metrics`, `/healthz` and `/readyz` and nothing else,
//! and `/readyz` fails from the start of the shutdown while `/healthz` still passes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Mandrill;
use nix::sys::signal::Signal;

/// Sends one request and gives the response's status code.
fn status(addr: &str, method: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the response");
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// Asks until `path` answers `want`, for at most `limit`.
fn until(addr: &str, path: &str, want: u16, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = status(addr, "GET", path);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{path} still answers {got}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn probes_pass_while_running_and_readiness_fails_during_the_shutdown() {
    // Each restart takes two seconds, so the shutdown waits that long for those running.
    let mut m = Mandrill::spawn(&[
        "--publish-delay",
        "0.01",
        "--io-delay",
        "2",
        "--io-fixed",
        "--failure-rate",
        "0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    // The log names the port bound, not the 0 asked for.
    let addr = m.wait_for_address(
        "Serving Prometheus metrics at http://",
        Duration::from_secs(10),
    );
    assert!(!addr.ends_with(":0"), "{addr}");

    until(&addr, "/readyz", 200, Duration::from_secs(10));
    assert_eq!(status(&addr, "GET", "/healthz"), 200);
    assert_eq!(status(&addr, "GET", "/metrics"), 200);
    assert_eq!(status(&addr, "GET", "/metrics?name=x"), 200);
    assert_eq!(status(&addr, "DELETE", "/foo"), 404);
    assert_eq!(status(&addr, "GET", "/"), 404);
    assert_eq!(status(&addr, "DELETE", "/metrics"), 405);
    assert_eq!(status(&addr, "POST", "/readyz"), 405);

    m.wait_for("Restarted ", Duration::from_secs(10));
    m.signal(Signal::SIGTERM);
    until(&addr, "/readyz", 503, Duration::from_secs(1));
    // The loop still runs the shutdown, so the service is alive.
    assert_eq!(status(&addr, "GET", "/healthz"), 200);
    assert!(m.running(), "the shutdown ended before the probe was asked");
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "exit {:?}", f.status);
    f.assert_conserved();
}

//! `/metrics` serves the run's counters in Prometheus text format; after the final flush
//! they equal the run report's.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::Mandrill;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the exporter");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of an unlabelled sample, e.g. `mandrill_acked_total 123`.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_match_the_run_report() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut m = Mandrill::spawn(&[
        "--messages",
        "3000",
        "--publish-delay",
        "0",
        "--io-delay",
        "0.002",
        "--log",
        "none",
        "--metrics-addr",
        &addr,
        "--metrics-linger",
        "10",
    ]);
    m.wait_for("Serving Prometheus metrics", Duration::from_secs(10));
    let report = m.report_line(Duration::from_secs(60));
    let body = scrape(&addr);
    for field in [
        "published",
        "consumed",
        "saved",
        "restarted",
        "restart_skipped",
        "acked",
        "nacked",
        "redelivered",
        "dead_lettered",
        "nacked_on_shutdown",
        "panics",
        "actor_restarts",
        "errors",
    ] {
        let want = report[field].as_u64().unwrap_or_else(|| panic!("{field}"));
        let got = sample(&body, &format!("mandrill_{field}_total"));
        assert_eq!(got, Some(want as f64), "{field}:\n{body}");
    }
    assert_eq!(
        sample(&body, "mandrill_pending_at_exit"),
        report["pending_at_exit"].as_f64()
    );
    // Every ack's latency went into the histogram, and handlers were timed.
    assert_eq!(
        sample(&body, "mandrill_ack_latency_seconds_count"),
        report["acked"].as_f64()
    );
    assert!(
        body.contains("mandrill_handler_seconds_bucket{actor=\"saver\""),
        "{body}"
    );
    assert!(body.contains("mandrill_loop_lag_seconds_count"), "{body}");
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "exit {:?}", f.status);
}

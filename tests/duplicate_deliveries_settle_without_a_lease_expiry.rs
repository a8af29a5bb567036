//! Deliveries that carry the same message id are independent in flight: brokers deliver
//! at least once, so duplicates happen, and each one settles on its own handle as soon as
//! its save and restart are done, never by waiting for a lease to run out.

mod common;

use std::time::Duration;

use common::Mandrill;

#[test]
fn twenty_deliveries_of_one_message_id_all_settle_promptly() {
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--store",
            "memory",
            "--failure-rate",
            "0",
            "--io-delay",
            "0.01",
            "--ack-deadline",
            "30",
            "--log",
            "none",
        ],
        true,
    );
    let lines: String = (1..=20)
        .map(|i| {
            format!(
                "{{\"message_id\":\"6f1c2a9e-5b7d-4c1e-9a3f-2d8e4b6c0a17\",\"instance_name\":\"host-{i}\"}}\n"
            )
        })
        .collect();
    m.write_stdin(lines.as_bytes());
    m.close_stdin();
    // A lease is 30 s; everything must be done long before one could run out.
    let f = m.finish(Duration::from_secs(15));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!(f.report["stopped_by"], "eof", "{}", f.report);
    f.assert_conserved();
    assert_eq!(f.n("published"), 20, "{}", f.report);
    assert_eq!(f.n("acked"), 20, "{}", f.report);
    assert_eq!(f.n("dead_lettered"), 0, "{}", f.report);
    assert_eq!(f.n("lease_expired"), 0, "{}", f.report);
    assert!(
        f.report["elapsed_s"].as_f64().unwrap() < 5.0,
        "{}",
        f.report
    );
}

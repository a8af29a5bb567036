//! Payloads on a JetStream stream that are not messages (not JSON, a hostile instance
//! name, oversize, no id) are rejected with their reason, copied to the dead-letter
//! stream and terminated on their first delivery: counted as rejected, never
//! redelivered, and never handed to an action.

mod common;

use std::time::Duration;

use common::nats::{counts_and_delete, payloads, publish, publish_raw, source, unique, Nats};
use common::{assert_only_good_passed, bad_payloads, same_payloads, Mandrill};

const GOOD: usize = 5;

#[test]
fn each_bad_payload_goes_to_the_dead_letters_once() {
    let Some(nats) = Nats::get() else { return };
    let stream = unique("BAD");
    publish(&nats.url, &stream, GOOD);
    let bad = bad_payloads();
    publish_raw(
        &nats.url,
        &stream,
        bad.iter().map(|(p, _)| p.clone()).collect(),
    );

    // Settled means acked or dead-lettered: the run ends once all of them are.
    let all = (GOOD + bad.len()).to_string();
    let flags = ["--io-delay", "0", "--failure-rate", "0", "--messages", &all];
    let m = Mandrill::spawn(&source(&nats.url, &stream, &flags));
    let f = m.finish(Duration::from_secs(60));
    assert_only_good_passed(&f, &bad, GOOD);

    let dlq = format!("{stream}_DLQ");
    let letters = payloads(&nats.url, &dlq);
    assert!(
        same_payloads(letters, &bad),
        "the dead letters are not the bad payloads"
    );
    assert_eq!(counts_and_delete(&nats.url, &[&stream, &dlq]), vec![0, 4]);
}

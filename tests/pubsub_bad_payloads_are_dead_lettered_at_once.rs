//! Payloads on a Pub/Sub subscription that are not messages (not JSON, a hostile
//! instance name, oversize, no id) are rejected with their reason and sent to the
//! dead-letter topic on their first delivery: counted as rejected, never redelivered,
//! and never handed to an action.

mod common;

use std::time::Duration;

use common::pubsub::{names, publish, source, Emulator};
use common::{assert_only_good_passed, bad_payloads, same_payloads, Mandrill};

const GOOD: usize = 5;

#[test]
fn each_bad_payload_goes_to_the_dead_letters_once() {
    let Some(emulator) = Emulator::get() else {
        return;
    };
    let names = names("bad");
    publish(&emulator, &names, GOOD, &[]);
    let bad = bad_payloads();
    emulator.publish_raw(&names.topic, bad.iter().map(|(p, _)| p.clone()).collect());

    // Settled means acked or dead-lettered: the run ends once all of them are.
    let all = (GOOD + bad.len()).to_string();
    let flags = ["--io-delay", "0", "--failure-rate", "0", "--messages", &all];
    let m = Mandrill::spawn_env(&source(&names, &flags), &emulator.env());
    let f = m.finish(Duration::from_secs(60));
    assert_only_good_passed(&f, &bad, GOOD);

    assert_eq!(emulator.drain(&names.subscription).len(), 0);
    let letters = emulator.drain(&names.dead_letter_subscription);
    assert!(
        same_payloads(letters, &bad),
        "the dead letters are not the bad payloads"
    );
    emulator.delete(&names);
}

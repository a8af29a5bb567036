//! More restarts than the intensity allows escalate: the ordered shutdown runs, the exit
//! status is non-zero, and the report names the child and the reason.

mod common;

use std::time::Duration;

use common::Mandrill;

#[test]
fn too_many_panics_escalate_to_an_ordered_shutdown() {
    let m = Mandrill::spawn(&[
        "--publish-delay",
        "0.01",
        "--io-delay",
        "0",
        "--max-restarts",
        "3",
        "--restart-window",
        "60",
        "--inject",
        "panic:saver=1",
    ]);
    let f = m.finish(Duration::from_secs(60));
    assert_eq!(
        f.status.code(),
        Some(1),
        "{:?}\n{}",
        f.status,
        f.log.join("\n")
    );
    assert_eq!(f.report["stopped_by"], "escalation", "{}", f.report);
    let escalation = f.report["escalation"].as_str().expect("escalation named");
    assert!(
        escalation.starts_with("saver: panic: injected panic"),
        "{escalation}"
    );
    let exceeded = f.line_index("Restart intensity exceeded");
    assert!(f.line_index("Nacking") > exceeded);
    assert!(f.line_index("Shutdown complete.") > exceeded);
    // The fourth restart is the one that exceeds 3; the saver keeps failing until the
    // shutdown has stopped intake, so there may be a few more, never fewer.
    assert!(f.n("actor_restarts") >= 4, "{}", f.report);
    assert_eq!(
        f.report["supervision"]["saver"]["escalations"], 1,
        "{}",
        f.report
    );
    assert_eq!(
        f.report["supervision"]["acker"]["escalations"], 0,
        "{}",
        f.report
    );
    f.assert_conserved();
    assert_eq!(f.n("acked"), 0, "{}", f.report);
}

#[test]
fn panics_spread_out_stay_within_the_intensity() {
    let m = Mandrill::spawn(&[
        "--messages",
        "200",
        "--publish-delay",
        "0.005",
        "--io-delay",
        "0",
        "--seed",
        "5",
        "--max-restarts",
        "1000",
        "--restart-window",
        "1",
        "--inject",
        "panic:restarter=0.05",
    ]);
    let f = m.finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}", f.status);
    assert_eq!(f.report["stopped_by"], "done");
    assert!(f.n("panics") > 0);
    f.assert_conserved();
}

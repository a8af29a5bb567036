//! A handler that runs longer than --slow-handler-ms is logged with the actor, what it
//! handled and how long it took, like asyncio debug mode's slow-callback warning; a run
//! without slow handlers logs no such warning.

mod common;

use std::time::Duration;

use common::{Mandrill, CHAOS};

const SLOW: &str = "Slow handler:";

/// How long each injected stall blocks: twice the handler deadline.
const STALL_MS: f64 = 100.0;

/// The duration a slow-handler line gives, in ms.
fn took_ms(line: &str) -> f64 {
    line.split("took ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"))
}

#[test]
fn an_injected_stall_is_logged_as_a_slow_handler() {
    // Every Restart call blocks for twice the deadline, 100 ms, past the 20 ms threshold.
    let mut args = CHAOS.to_vec();
    args.extend([
        "--messages",
        "100",
        "--inject",
        "stall:restarter=1",
        "--handler-deadline",
        "0.05",
        "--slow-handler-ms",
        "20",
        "--seed",
        "7",
    ]);
    let f = Mandrill::spawn(&args).finish(Duration::from_secs(60));
    assert!(f.status.success(), "exit {:?}", f.status);
    // Each stall is 100 ms, and is logged as the Restarter's. A busy machine may make
    // another handler pass the 20 ms threshold now and then; none takes as long as a
    // stall, so a line that did would be a stall put down to the wrong actor.
    let slow: Vec<(&String, f64)> = f
        .log
        .iter()
        .filter(|l| l.contains(SLOW))
        .map(|l| (l, took_ms(l)))
        .collect();
    let stalls: Vec<_> = slow
        .iter()
        .filter(|(l, _)| l.contains("restarter took") && l.contains("to handle Restart"))
        .collect();
    assert!(
        !stalls.is_empty(),
        "no slow-handler warning in:\n{:#?}",
        f.log
    );
    for (line, ms) in &slow {
        assert!(*ms >= 20.0, "{line}");
    }
    for (line, ms) in &stalls {
        assert!(*ms >= STALL_MS, "{line}");
    }
    for (line, ms) in slow.iter().filter(|s| !stalls.contains(s)) {
        assert!(*ms < STALL_MS, "a stall put down to another actor: {line}");
    }
    f.assert_conserved();
}

#[test]
fn a_run_without_slow_handlers_logs_no_warning() {
    let mut args = CHAOS.to_vec();
    args.extend(["--messages", "2000"]);
    let f = Mandrill::spawn(&args).finish(Duration::from_secs(60));
    assert!(f.status.success(), "exit {:?}", f.status);
    assert_eq!(f.report["acked"].as_u64().map(|n| n > 0), Some(true));
    let slow: Vec<&String> = f.log.iter().filter(|l| l.contains(SLOW)).collect();
    assert!(slow.is_empty(), "{slow:#?}");
}

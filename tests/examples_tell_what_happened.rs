//! The strategy examples tell what the run did, never what it was expected to do: each
//! claim of their story is checked here against the run's own report.

#[path = "../examples/common/mod.rs"]
mod common;

use mandrill::config::Strategy;
use mandrill::report::Report;

/// Checks every claim the story makes of `r`.
fn check(strategy: Strategy, r: &Report) {
    let story = common::story(strategy, r);
    let saver = &r.supervision["saver"];
    let panics = saver.failures["panic"];
    assert!(panics > 0, "no panic to tell of");
    assert!(
        story.contains(&format!("the saver panicked {panics} times")),
        "{story}"
    );
    assert!(
        story.contains(&format!("restarted {} times", saver.restarts)),
        "{story}"
    );
    assert!(story.contains(&format!(
        "{} deliveries were redelivered",
        r.counts.redelivered
    )));
    let sentence = |start: &str| {
        story
            .split(". ")
            .find(|s| s.trim_start().starts_with(start))
            .map(str::to_string)
    };
    for name in common::CHILDREN.into_iter().filter(|n| *n != "saver") {
        let s = &r.supervision[name];
        let with_each = sentence("Each panic restarted").is_some_and(|t| t.contains(name));
        let kept = sentence("The ").is_some_and(|t| t.contains(name) && t.contains("kept"));
        let some = story.contains(&format!("the {name} only {} of those times", s.restarts));
        let stopped = story.contains(name) && s.stopped && s.restarts == 0;
        match s.restarts {
            0 => assert!(kept || stopped, "{name} restarted 0 times: {story}"),
            n if n == panics => assert!(with_each, "{name} restarted with each panic: {story}"),
            _ => assert!(some, "{name} restarted {} times: {story}", s.restarts),
        }
        if s.restarts != panics {
            assert!(
                !with_each,
                "{name} is said to restart with each panic: {story}"
            );
        }
    }
}

#[test]
fn each_strategy_example_tells_its_own_run() {
    let options = common::Options::default();
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        let r = common::run(&options, strategy).expect("the example runs");
        check(strategy, &r);
        let restarted: Vec<&str> = common::CHILDREN
            .into_iter()
            .filter(|n| *n != "saver" && r.supervision[n].restarts > 0)
            .collect();
        // What each strategy must do, seen in the report the story is told from.
        match strategy {
            Strategy::OneForOne => assert!(restarted.is_empty(), "{restarted:?}"),
            Strategy::OneForAll => {
                for n in ["acker", "restarter", "consumer"] {
                    assert!(restarted.contains(&n), "{restarted:?}")
                }
            }
            Strategy::RestForOne => {
                assert!(!restarted.contains(&"acker"), "{restarted:?}");
                assert!(restarted.contains(&"restarter"), "{restarted:?}");
            }
        }
    }
}

//! The dashboard's feed hears each failure as the service logs it: the caught panic, the
//! child's failure with its kind and directive, and the supervisor's restart with the
//! siblings its strategy restarts; the final snapshot is the run's report.

use std::sync::Arc;

use mandrill::app;
use mandrill::config::{Config, StoreKind, Strategy};
use mandrill::dashboard::{Feed, FeedLayer};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

#[test]
fn a_panic_is_a_failure_then_a_restart_of_the_child_and_its_siblings() {
    let feed = Arc::new(Feed::default());
    let layer = FeedLayer::new(feed.clone()).with_filter(FeedLayer::targets());
    let config = Config {
        messages: Some(2_000),
        publish_delay: std::time::Duration::ZERO,
        io_delay: std::time::Duration::ZERO,
        failure_rate: 0.0,
        seed: Some(7),
        store: StoreKind::Memory,
        strategy: Strategy::RestForOne,
        max_restarts: 10_000,
        max_in_flight: 50,
        batch_size: 20,
        faults: "panic:saver=0.2".parse().unwrap(),
        handle_signals: false,
        ..Config::default()
    };
    let report =
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            app::run(config).expect("the run")
        });
    assert!(report.counts.panics > 0);
    let events: Vec<Value> = feed
        .events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first = |start: &str| {
        events
            .iter()
            .position(|e| e["message"].as_str().is_some_and(|m| m.starts_with(start)))
            .unwrap_or_else(|| panic!("no {start:?} event"))
    };
    let caught = first("Caught exception");
    let failed = first("Supervision: saver failed");
    let restarting = first("Supervision: restarting saver");
    assert!(caught < failed && failed < restarting, "out of order");
    assert_eq!(events[caught]["actor"], "saver");
    assert_eq!(events[caught]["level"], "ERROR");
    assert_eq!(events[failed]["kind"], "panic");
    assert_eq!(events[failed]["directive"], "restart");
    let restart = &events[restarting];
    assert_eq!(restart["strategy"], "rest-for-one");
    // Started after the saver: the restarter, the consumer and, until it finished, the
    // publisher.
    let siblings = restart["siblings"].as_str().unwrap();
    assert!(siblings.starts_with("restarter,consumer"), "{siblings}");
    assert!(events.iter().all(|e| e["t_ms"].as_u64().is_some()));
    assert!(
        events.iter().any(|e| e["message"] == "Shutdown complete."),
        "the shutdown's phases are in the feed"
    );
}

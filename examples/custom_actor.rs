//! Adding a supervised actor to the running pipeline without editing the core actors.
//!
//!     cargo run --example custom_actor
//!
//! The `Notifier` watches the Restarter: it receives the outcome of every host restart and,
//! when it stops at shutdown, writes one summary line. It is a child of the same
//! Supervisor as the core actors, with its own link and policy, and it has a bug: it
//! panics on every 25th batch it receives. The Supervisor restarts it in place each time,
//! and since it counts a batch before the bug can strike, its counts survive the panics
//! and match the run report exactly.
//!
//! The pieces, as ARCHITECTURE.md's "Adding an actor" lists them:
//! - the actor, with `Child` (its name, link, and how it retires) and `Supervised` (how a
//!   restart resets it);
//! - the messages it handles: `HostRestarts` from the Restarter, `Shutdown` from the
//!   SignalActor, `RestartChild` from the Supervisor;
//! - an `Extension`, which starts it in the tree after the core children (so that it stops
//!   before them) and hooks it up with `Watch`;
//! - `app::run_extended`, which runs the service with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use mandrill::actors::protocol::{HostRestarts, RestartOutcome};
use mandrill::actors::restarter::Watch;
use mandrill::actors::Pipeline;
use mandrill::app;
use mandrill::app::{Extension, Started};
use mandrill::config::{Config, StoreKind};
use mandrill::names::ChildName;
use mandrill::protocol::Shutdown;
use mandrill::supervision::{guard, hold_for_backoff, note_restart, Child, Link};

/// What the Notifier has seen so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub restarted: u64,
    pub failed: u64,
    pub skipped: u64,
    pub batches: u64,
}

/// Hears of every host restart and sums them up at shutdown.
struct Notifier {
    link: Link,
    /// Survives restarts: the tally is the run's, not one incarnation's.
    tally: Tally,
    /// Where the summary goes when the Notifier stops.
    summary: Arc<Mutex<Option<Tally>>>,
    retired: bool,
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        hold_for_backoff(self, ctx);
    }
}

impl Child for Notifier {
    const NAME: ChildName = ChildName::Extension("notifier");
    fn link(&self) -> &Link {
        &self.link
    }
    fn retire(&mut self) {
        self.retired = true;
    }
    fn is_retired(&self) -> bool {
        self.retired
    }
}

impl Supervised for Notifier {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // It holds no one's work, so there is nothing to hand back.
        note_restart(self);
    }
}

mandrill::restart_on_request!(Notifier);

impl Handler<HostRestarts> for Notifier {
    type Result = ();
    fn handle(&mut self, msg: HostRestarts, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        guard(self, ctx, "HostRestarts", |act, _| {
            // Count first, as every child takes in what it is given before it can fail.
            for r in &msg.0 {
                match r.outcome {
                    RestartOutcome::Restarted => act.tally.restarted += 1,
                    RestartOutcome::Failed(_) => act.tally.failed += 1,
                    RestartOutcome::Skipped(_) => act.tally.skipped += 1,
                }
            }
            act.tally.batches += 1;
            if act.tally.batches % 25 == 0 {
                panic!("the notifier's bug struck on batch {}", act.tally.batches);
            }
        });
    }
}

impl Handler<Shutdown> for Notifier {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        let t = self.tally;
        println!(
            "Notifier: {} hosts restarted, {} restarts failed, {} skipped as too recent",
            t.restarted, t.failed, t.skipped
        );
        *self.summary.lock().expect("summary") = Some(t);
    }
}

/// Adds the Notifier to the tree.
struct AddNotifier {
    summary: Arc<Mutex<Option<Tally>>>,
}

impl Extension for AddNotifier {
    fn name(&self) -> ChildName {
        Notifier::NAME
    }

    fn start(self: Box<Self>, link: Link, pipeline: &Pipeline) -> Started {
        let summary = self.summary;
        let notifier = actix::Supervisor::start(move |_| Notifier {
            link,
            tally: Tally::default(),
            summary,
            retired: false,
        });
        pipeline
            .restarter
            .do_send(Watch(notifier.clone().recipient()));
        Started {
            restart: notifier.clone().recipient(),
            shutdown: notifier.recipient(),
        }
    }
}

/// Runs 5,000 messages with the Notifier added; returns its tally and the run report.
pub fn run() -> anyhow::Result<(Tally, mandrill::report::Report)> {
    let _log = mandrill::logging::init(
        mandrill::logging::LogLevel::None,
        mandrill::logging::LogFormat::Text,
    );
    let config = Config {
        messages: Some(5_000),
        publish_delay: Duration::ZERO,
        publish_jitter: false,
        io_delay: Duration::ZERO,
        seed: Some(2019),
        store: StoreKind::Memory,
        max_in_flight: 50,
        max_restarts: 1_000,
        handle_signals: false,
        ..Config::default()
    };
    let summary = Arc::new(Mutex::new(None));
    let notifier = Box::new(AddNotifier {
        summary: summary.clone(),
    });
    let report = app::run_extended(config, Box::new(std::io::empty()), vec![notifier])?;
    let tally = summary
        .lock()
        .expect("summary")
        .take()
        .ok_or_else(|| anyhow::anyhow!("the notifier was not stopped at shutdown"))?;
    anyhow::ensure!(report.conserved(), "a message was lost");
    anyhow::ensure!(
        (tally.restarted, tally.skipped)
            == (report.counts.restarted, report.counts.restart_skipped),
        "the notifier saw {tally:?}, the run report says {} restarted and {} skipped",
        report.counts.restarted,
        report.counts.restart_skipped
    );
    Ok((tally, report))
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let (tally, report) = run()?;
    let notifier = &report.supervision["notifier"];
    println!(
        "\nThe notifier took {} batches of outcomes, panicked {} times and was restarted {} \
         times; its counts match the run report: {} restarted, {} skipped.",
        tally.batches,
        notifier.failures.get("panic").copied().unwrap_or(0),
        notifier.restarts,
        report.counts.restarted,
        report.counts.restart_skipped
    );
    Ok(())
}

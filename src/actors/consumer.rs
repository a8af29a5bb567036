//! `Consumer`: owns the pull loop.
//!
//! It pulls deliveries from the subscription within the flow-control credit, and
//! dispatches each batch to the Acker (to track), the Saver and the Restarter at once. It
//! never waits for a message's handling before pulling the next batch, and it stops
//! pulling when the shutdown begins.

use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::actors::acker::{Abandon, Track};
use crate::actors::protocol::StopIntake;
use crate::actors::restarter::Restart;
use crate::actors::saver::Save;
use crate::config::Injector;
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::subscription::{Pull, SubscriptionError};
use crate::supervision::{guard, note_restart, report_error, Child, Link};
use crate::FLOW;

/// How long one pull waits for the first delivery before it is asked again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long to wait before pulling again after the subscription failed.
const RETRY: Duration = Duration::from_millis(100);

/// Where the Consumer sends what it pulls.
#[derive(Clone)]
pub struct Downstream {
    pub track: Recipient<Track>,
    pub abandon: Recipient<Abandon>,
    pub save: Recipient<Save>,
    pub restart: Recipient<Restart>,
}

#[derive(Default)]
struct State {
    /// A batch pulled but not yet dispatched.
    in_hand: Vec<Delivery>,
}

pub struct Consumer {
    link: Link,
    pull: Recipient<Pull>,
    downstream: Downstream,
    batch: usize,
    injector: Injector,
    /// Survives restarts: a Consumer told to stop stays stopped.
    stopped: bool,
    state: State,
}

impl Consumer {
    pub fn new(
        link: Link,
        pull: Recipient<Pull>,
        downstream: Downstream,
        batch: usize,
        injector: Injector,
    ) -> Self {
        Self {
            link,
            pull,
            downstream,
            batch,
            injector,
            stopped: false,
            state: State::default(),
        }
    }

    fn pull_next(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        let request = self.pull.send(Pull {
            max: self.batch,
            wait: PULL_WAIT,
        });
        ctx.spawn(request.into_actor(self).map(|res, act, ctx| {
            let res = res.unwrap_or_else(|e| Err(SubscriptionError::Unavailable(e.to_string())));
            match res {
                Ok(batch) => {
                    guard(act, ctx, |act, _| act.dispatch(batch));
                    act.pull_next(ctx);
                }
                Err(e) => {
                    report_error(&act.link.metrics, Self::NAME, false, &e);
                    ctx.run_later(RETRY, |act, ctx| act.pull_next(ctx));
                }
            }
        }));
    }

    fn dispatch(&mut self, batch: Vec<Delivery>) {
        if batch.is_empty() {
            return;
        }
        if self.stopped {
            // Pulled after intake stopped: give them straight back.
            self.downstream.abandon.do_send(Abandon {
                deliveries: batch,
                failed: false,
            });
            return;
        }
        self.state.in_hand = batch;
        self.injector.maybe_panic();
        let batch = std::mem::take(&mut self.state.in_hand);
        Metrics::add(&self.link.metrics.consumed, batch.len() as u64);
        for d in &batch {
            info!(target: FLOW, "Pulled {}", d.message);
        }
        // Track first: the Acker must know a message before its outcomes arrive, and one
        // mailbox delivers in order.
        self.downstream.track.do_send(Track(batch.clone()));
        self.downstream.save.do_send(Save(batch.clone()));
        self.downstream.restart.do_send(Restart(batch));
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pull_next(ctx);
    }
}

impl Child for Consumer {
    const NAME: &'static str = "consumer";
    fn link(&self) -> &Link {
        &self.link
    }
}

impl Supervised for Consumer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        let held = std::mem::take(&mut self.state.in_hand);
        if !held.is_empty() {
            warn!("Consumer returning {} undispatched deliveries", held.len());
            self.downstream.abandon.do_send(Abandon {
                deliveries: held,
                failed: true,
            });
        }
        self.state = State::default();
        note_restart(self);
    }
}

impl Handler<StopIntake> for Consumer {
    type Result = ();
    fn handle(&mut self, _: StopIntake, _: &mut Context<Self>) {
        self.stopped = true;
    }
}

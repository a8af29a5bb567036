//! `Consumer`: owns the pull loop.
//!
//! It pulls deliveries from the subscription within the flow-control credit, and
//! dispatches each batch to the Acker (to track), the Saver and the Restarter at once. It
//! never waits for a message's handling before pulling the next batch, and it stops
//! pulling when the shutdown begins.

use std::time::Duration;

use actix::prelude::*;
use tracing::warn;

use crate::actors::acker::{Abandon, Track};
use crate::actors::protocol::Batch;
use crate::actors::restarter::Restart;
use crate::actors::saver::Save;
use crate::broker::{BrokerError, Pull};
use crate::faults::Injector;
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::supervision::{guard, note_restart, report_error, Child, Link};

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
    /// Survives restarts: whether a pull is out, whose answer will arrive as `Pulled`.
    pulling: bool,
    /// Survives restarts: a stopped Consumer pulls no more.
    retired: bool,
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
            pulling: false,
            retired: false,
            state: State::default(),
        }
    }

    /// Sends the next pull, unless one is out already or intake has stopped.
    ///
    /// The answer comes back as a `Pulled` message rather than to a future on this
    /// context: a restart drops a context's futures but keeps its mailbox, so a batch
    /// answered while this actor restarts is still dispatched, not left leased until its
    /// lease expires. `pulling` outlives restarts for the same reason, so that there is
    /// only ever one pull loop.
    fn pull_next(&mut self, ctx: &mut Context<Self>) {
        if self.stopped || self.pulling {
            return;
        }
        self.pulling = true;
        let request = self.pull.send(Pull {
            max: self.batch,
            wait: PULL_WAIT,
        });
        let me = ctx.address();
        actix_rt::spawn(async move {
            let res = request
                .await
                .unwrap_or_else(|e| Err(BrokerError::Unavailable(e.to_string())));
            me.do_send(Pulled(res));
        });
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
        // A batch still in hand was left there by a panic the policy resumed after.
        let stale = std::mem::replace(&mut self.state.in_hand, batch);
        if !stale.is_empty() {
            self.downstream.abandon.do_send(Abandon {
                deliveries: stale,
                failed: true,
            });
        }
        self.injector.maybe_fail();
        let batch = std::mem::take(&mut self.state.in_hand);
        let m = &self.link.metrics;
        Metrics::add(&m.consumed, batch.len() as u64);
        Metrics::add(
            &m.redelivered,
            batch.iter().filter(|d| d.attempt > 1).count() as u64,
        );
        for d in &batch {
            flow!(
                info,
                "consumer",
                "pulled",
                d.message.instance_name,
                d.message.message_id,
                d.attempt,
                "Pulled {}",
                d.message
            );
        }
        // Track first: the Acker must know a message before its outcomes arrive, and one
        // mailbox delivers in order.
        let batch: Batch = batch.into();
        self.downstream.track.do_send(Track(batch.clone()));
        self.downstream.save.do_send(Save(batch.clone()));
        self.downstream.restart.do_send(Restart(batch));
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        crate::supervision::after_backoff(ctx, |act, ctx| act.pull_next(ctx));
    }
}

impl Child for Consumer {
    const NAME: ChildName = ChildName::Consumer;
    fn link(&self) -> &Link {
        &self.link
    }
    fn retire(&mut self) {
        self.retired = true;
        self.stopped = true;
    }
    fn is_retired(&self) -> bool {
        self.retired
    }
}

crate::restart_on_request!(Consumer);

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

/// The subscription's answer to the Consumer's last pull.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Pulled(pub Result<Vec<Delivery>, BrokerError>);

impl Handler<Pulled> for Consumer {
    type Result = ();
    fn handle(&mut self, Pulled(res): Pulled, ctx: &mut Context<Self>) {
        self.pulling = false;
        match res {
            Ok(batch) => {
                guard(self, ctx, "Pulled", |act, _| act.dispatch(batch));
                // After a restart, the fresh Consumer pulls from `started`.
                if ctx.state() == ActorState::Running {
                    self.pull_next(ctx);
                }
            }
            Err(e) => {
                report_error(&self.link.metrics, Self::NAME.as_str(), false, &e);
                ctx.run_later(RETRY, |act, ctx| act.pull_next(ctx));
            }
        }
    }
}

impl Handler<Shutdown> for Consumer {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.stopped = true;
    }
}

/// Describes the Consumer for the live dump: whether it pulls, and what it holds.
impl Handler<Probe> for Consumer {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = match () {
            _ if self.stopped => "stopped",
            _ if self.pulling => "pulling",
            _ => "idle",
        };
        MessageResult(Probed::new(state, &[("in_hand", self.state.in_hand.len())]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryBrokerConfig};
    use crate::broker::Publish;
    use crate::message::{InstanceName, Message};
    use crate::testkit::{link, settle, sink, Got};

    struct Rig {
        sub: Addr<MemoryBroker>,
        consumer: Addr<Consumer>,
        tracked: Got<Track>,
        saved: Got<Save>,
        restarted: Got<Restart>,
    }

    fn rig(max_in_flight: usize) -> Rig {
        let (link, _, _) = link();
        let broker_link = link.clone();
        let sub = MemoryBroker::new(
            broker_link,
            MemoryBrokerConfig {
                max_in_flight,
                max_deliveries: 5,
                ack_deadline: Duration::from_secs(10),
                backlog: None,
            },
            Injector::none(ChildName::Broker),
        )
        .start();
        let (track, tracked) = sink();
        let (abandon, _) = sink();
        let (save, saved) = sink();
        let (restart, restarted) = sink();
        let downstream = Downstream {
            track,
            abandon,
            save,
            restart,
        };
        let pull = sub.clone().recipient();
        let injector = Injector::none(ChildName::Consumer);
        let consumer =
            actix::Supervisor::start(move |_| Consumer::new(link, pull, downstream, 100, injector));
        Rig {
            sub,
            consumer,
            tracked,
            saved,
            restarted,
        }
    }

    fn publish(n: usize) -> Publish {
        Publish(
            (0..n)
                .map(|_| Message::new(InstanceName::parse("cattle-a").unwrap()))
                .collect(),
        )
    }

    fn count<M>(got: &Got<M>, f: impl Fn(&M) -> usize) -> usize {
        got.take().iter().map(f).sum()
    }

    #[actix_rt::test]
    async fn every_pulled_delivery_goes_to_all_three() {
        let r = rig(1000);
        r.sub.send(publish(250)).await.unwrap();
        settle().await;
        assert_eq!(count(&r.tracked, |t| t.0.len()), 250);
        assert_eq!(count(&r.saved, |s| s.0.len()), 250);
        assert_eq!(count(&r.restarted, |s| s.0.len()), 250);
    }

    #[actix_rt::test]
    async fn pulling_stays_within_the_flow_control_credit() {
        // Nothing is ever acked here, so only the first 30 can be leased.
        let r = rig(30);
        r.sub.send(publish(100)).await.unwrap();
        settle().await;
        assert_eq!(count(&r.tracked, |t| t.0.len()), 30);
    }

    #[actix_rt::test]
    async fn stop_intake_stops_pulling() {
        tokio::time::pause();
        let r = rig(1000);
        r.consumer.send(Shutdown).await.unwrap();
        // Let the pull that was already waiting run out.
        tokio::time::sleep(PULL_WAIT * 2).await;
        r.sub.send(publish(10)).await.unwrap();
        tokio::time::sleep(PULL_WAIT * 2).await;
        assert_eq!(r.tracked.len(), 0);
    }
}

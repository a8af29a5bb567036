//! `Publisher`: the talk's simulated publisher.
//!
//! It makes messages for hosts named `cattle-` plus four random characters and hands them
//! to the subscription without ever waiting on their consumption. It stops after
//! `--messages N` or when the shutdown begins, and then closes the subscription's input.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::{rngs::SmallRng, Rng};
use tracing::info;

use crate::broker::{Backlog, Publish};
use crate::faults::Injector;
use crate::iowait::Alarm;
use crate::iowait::AlarmClock;
use crate::message::{cattle, Message};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{InputClosed, Probe, Probed, Shutdown};
use crate::supervision::{exited_normally, guard, note_restart, Child, Directive, Link};
use crate::FLOW;

/// How many messages an unpaced publisher makes before it yields to the event loop.
const CHUNK: u64 = 1024;
const HOUR: Duration = Duration::from_secs(3600);

/// The publisher's pace and limit.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Zero publishes as fast as possible, yielding to the loop between chunks.
    pub delay: Duration,
    /// When set, each delay is `random() * delay`.
    pub jitter: bool,
    pub limit: Option<u64>,
    /// When set, publish this many messages a second instead, what is owed at every tick.
    pub rate: Option<f64>,
    /// What times a paced publisher's ticks: one per resolution of the clock, or one per
    /// message at rates below that.
    pub clock: AlarmClock,
    /// The broker's places for messages not yet delivered; none, no bound.
    pub backlog: Option<Arc<Backlog>>,
}

pub struct Publisher {
    link: Link,
    publish: Recipient<Publish>,
    input_closed: Recipient<InputClosed>,
    config: PublisherConfig,
    rng: SmallRng,
    injector: Injector,
    /// Survive restarts: a publisher restarted after a failure must not publish its
    /// quota twice, and one told to stop stays stopped.
    sent: u64,
    stopped: bool,
    /// It sent its quota and, being permanent, waits to be started on a new round.
    exited: bool,
    retired: bool,
    /// For a rate-paced publisher: when pacing began and how many had been sent then.
    /// Each tick sends what the rate owes since, so late ticks do not lower the rate.
    paced_since: Option<(tokio::time::Instant, u64)>,
    /// When the armed tick is due. An alarm armed before a restart still rings after
    /// it; one that rings before this is such a leftover and is ignored, or every
    /// restart would add a chain of ticks.
    next_tick: Option<tokio::time::Instant>,
}

impl Publisher {
    pub fn new(
        link: Link,
        publish: Recipient<Publish>,
        input_closed: Recipient<InputClosed>,
        config: PublisherConfig,
        rng: SmallRng,
        injector: Injector,
    ) -> Self {
        Self {
            link,
            publish,
            input_closed,
            config,
            rng,
            injector,
            sent: 0,
            stopped: false,
            exited: false,
            retired: false,
            paced_since: None,
            next_tick: None,
        }
    }

    fn make(&mut self, now_ms: u64) -> Message {
        cattle(&mut self.rng, now_ms)
    }

    fn remaining(&self) -> u64 {
        self.config.limit.map_or(u64::MAX, |n| n - self.sent)
    }

    /// Stops publishing for good and closes the subscription's input, so that a finite
    /// run ends once everything published is settled.
    fn finish(&mut self) {
        if !self.stopped {
            self.stopped = true;
            info!("Publisher stopped after {} messages", self.sent);
            self.input_closed.do_send(InputClosed);
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopped || self.exited {
            return;
        }
        if self.remaining() == 0 {
            // A normal exit. A permanent publisher is started again on a fresh round, so
            // the input stays open; otherwise this is the end of the input.
            if exited_normally(self) == Directive::Restart {
                self.exited = true;
                return;
            }
            return self.finish();
        }
        self.injector.maybe_fail();
        let n = if let Some(rate) = self.config.rate {
            let (since, sent_then) = *self
                .paced_since
                .get_or_insert_with(|| (tokio::time::Instant::now(), self.sent));
            let owed = (since.elapsed().as_secs_f64() * rate) as u64;
            (sent_then + owed)
                .saturating_sub(self.sent)
                .min(self.remaining())
        } else if self.config.delay.is_zero() {
            CHUNK.min(self.remaining())
        } else {
            1
        };
        if n == 0 {
            return self.schedule(ctx);
        }
        let Some(backlog) = self.config.backlog.clone() else {
            return self.publish(n, ctx);
        };
        match backlog.try_take(n) {
            0 => {
                // The backlog is full: wait for the pipeline to take some, off the loop.
                let wait = async move { backlog.take(n).await };
                ctx.spawn(wait.into_actor(self).map(|k, act, ctx| {
                    guard(act, ctx, "publish tick", |act, ctx| act.publish(k, ctx));
                }));
            }
            k => self.publish(k, ctx),
        }
    }

    /// Publishes `n` messages, for which it holds places in the backlog if there is one,
    /// and schedules the next tick.
    fn publish(&mut self, n: u64, ctx: &mut Context<Self>) {
        if self.stopped || self.exited {
            if let Some(backlog) = &self.config.backlog {
                backlog.give(n);
            }
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let batch: Vec<Message> = (0..n).map(|_| self.make(now_ms)).collect();
        for m in &batch {
            info!(
                target: FLOW,
                instance_name = %m.instance_name,
                message_id = %m.message_id,
                actor = "publisher",
                outcome = "published",
                "Published {m}"
            );
        }
        self.sent += n;
        Metrics::add(&self.link.metrics.published, n);
        self.publish.do_send(Publish(batch));
        self.schedule(ctx);
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(rate) = self.config.rate {
            let clock = self.config.clock;
            // At an hour, a tick that finds nothing owed costs nothing worth saving.
            let per_message = Duration::try_from_secs_f64(1.0 / rate).map_or(HOUR, |d| d.min(HOUR));
            let at = tokio::time::Instant::now() + clock.resolution().max(per_message);
            self.next_tick = Some(at);
            return clock.arm(at, ctx);
        }
        let delay = if self.config.jitter {
            self.config.delay.mul_f64(self.rng.random::<f64>())
        } else {
            self.config.delay
        };
        if delay.is_zero() {
            // Yield, so that the rest of the pipeline runs between chunks.
            ctx.spawn(
                tokio::task::yield_now()
                    .into_actor(self)
                    .map(|_, act, ctx| act.guarded_tick(ctx)),
            );
        } else {
            ctx.run_later(delay, |act, ctx| act.guarded_tick(ctx));
        }
    }

    fn guarded_tick(&mut self, ctx: &mut Context<Self>) {
        guard(self, ctx, "publish tick", |act, ctx| act.tick(ctx));
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        crate::supervision::after_backoff(ctx, |act, ctx| act.guarded_tick(ctx));
    }
}

impl Child for Publisher {
    const NAME: ChildName = ChildName::Publisher;
    fn link(&self) -> &Link {
        &self.link
    }
    fn retire(&mut self) {
        self.retired = true;
        self.finish();
    }
    fn is_retired(&self) -> bool {
        self.retired
    }
}

/// A paced publisher's tick is due.
impl Handler<Alarm> for Publisher {
    type Result = ();
    fn handle(&mut self, _: Alarm, ctx: &mut Context<Self>) {
        match self.next_tick {
            Some(at) if tokio::time::Instant::now() >= at => {
                self.next_tick = None;
                self.guarded_tick(ctx);
            }
            _ => {}
        }
    }
}

crate::restart_on_request!(Publisher);

impl Supervised for Publisher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Restarted after a normal exit, it starts a new round of `--messages`, as OTP
        // runs a permanent child's init again.
        if self.exited && !self.stopped {
            self.exited = false;
            self.sent = 0;
        }
        note_restart(self);
    }
}

impl Handler<Shutdown> for Publisher {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.finish();
    }
}

/// Describes the Publisher for the live dump: how many it has sent.
impl Handler<Probe> for Publisher {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = match () {
            _ if self.retired => "retired",
            _ if self.exited => "exited",
            _ if self.stopped => "stopped",
            _ => "publishing",
        };
        MessageResult(Probed::new(state, &[("sent", self.sent as usize)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervision::policy::{ChildPolicy, RestartType};
    use crate::supervision::{ChildExited, RestartChild};
    use crate::testkit::{link_with, settle, sink, Got};

    struct Rig {
        published: Got<Publish>,
        closed: Got<InputClosed>,
        exits: Got<ChildExited>,
        publisher: Addr<Publisher>,
    }

    fn rig(delay: Duration, limit: Option<u64>, seed: u64) -> Rig {
        rig_of(RestartType::Transient, delay, limit, seed)
    }

    fn rig_of(restart: RestartType, delay: Duration, limit: Option<u64>, seed: u64) -> Rig {
        rig_full(restart, delay, None, limit, seed, None)
    }

    fn rig_full(
        restart: RestartType,
        delay: Duration,
        rate: Option<f64>,
        limit: Option<u64>,
        seed: u64,
        backlog: Option<Arc<Backlog>>,
    ) -> Rig {
        let (link, _, exits) = link_with(ChildPolicy {
            decider: Default::default(),
            restart,
        });
        let (publish, published) = sink();
        let (input_closed, closed) = sink();
        let config = PublisherConfig {
            delay,
            jitter: false,
            limit,
            rate,
            clock: AlarmClock::Tokio,
            backlog,
        };
        let rng = crate::faults::rng_for(Some(seed), crate::faults::Purpose::Publishing);
        let injector = crate::faults::Faults::default().injector(ChildName::Publisher, None);
        let publisher = actix::Supervisor::start(move |_| {
            Publisher::new(link, publish, input_closed, config, rng, injector)
        });
        Rig {
            published,
            closed,
            exits,
            publisher,
        }
    }

    #[actix_rt::test]
    async fn a_transient_publisher_exits_for_good_and_a_permanent_one_starts_a_new_round() {
        let r = rig(Duration::ZERO, Some(10), 1);
        settle().await;
        assert_eq!(messages(&r.published).len(), 10);
        let exits = r.exits.take();
        assert_eq!(exits.len(), 1);
        assert_eq!(exits[0].directive, Directive::Stop);
        assert_eq!(r.closed.len(), 1);
        // Its supervisor's strategy may still restart it; it stays finished.
        r.publisher
            .send(RestartChild {
                because: ChildName::Acker,
            })
            .await
            .unwrap();
        settle().await;
        assert!(messages(&r.published).is_empty());

        let r = rig_of(RestartType::Permanent, Duration::ZERO, Some(10), 1);
        settle().await;
        assert_eq!(messages(&r.published).len(), 10);
        assert_eq!(r.exits.take()[0].directive, Directive::Restart);
        assert_eq!(
            r.closed.len(),
            0,
            "a permanent publisher's input stays open"
        );
        // The supervisor restarts it, and it publishes a fresh round.
        r.publisher
            .send(RestartChild {
                because: ChildName::Publisher,
            })
            .await
            .unwrap();
        settle().await;
        assert_eq!(messages(&r.published).len(), 10);
    }

    fn messages(got: &Got<Publish>) -> Vec<Message> {
        got.take().into_iter().flat_map(|p| p.0).collect()
    }

    #[actix_rt::test]
    async fn an_unpaced_publisher_waits_for_room_in_the_backlog() {
        let backlog = Arc::new(Backlog::new(100));
        let r = rig_full(
            RestartType::Transient,
            Duration::ZERO,
            None,
            Some(1000),
            1,
            Some(backlog.clone()),
        );
        settle().await;
        assert_eq!(messages(&r.published).len(), 100);
        settle().await;
        assert!(
            messages(&r.published).is_empty(),
            "published past the bound"
        );
        // 30 of them leave the broker: 30 more go out, and no more.
        backlog.give(30);
        settle().await;
        assert_eq!(messages(&r.published).len(), 30);
        backlog.give(1000);
        settle().await;
        assert_eq!(messages(&r.published).len(), 870);
        assert_eq!(r.closed.len(), 1);
    }

    #[actix_rt::test]
    async fn publishes_exactly_the_limit_then_closes_input() {
        let r = rig(Duration::ZERO, Some(2500), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ms = messages(&r.published);
        assert_eq!(ms.len(), 2500);
        assert_eq!(r.closed.len(), 1);
        for m in &ms {
            let name = m.instance_name.as_str();
            assert!(name.starts_with("cattle-") && name.len() == 11, "{name}");
            assert_eq!(m.message_id.get_version_num(), 7);
        }
    }

    #[actix_rt::test]
    async fn the_same_seed_publishes_the_same_messages() {
        let (a, b) = (
            rig(Duration::ZERO, Some(10), 9),
            rig(Duration::ZERO, Some(10), 9),
        );
        let c = rig(Duration::ZERO, Some(10), 10);
        settle().await;
        let (a, b, c) = (
            messages(&a.published),
            messages(&b.published),
            messages(&c.published),
        );
        // Everything but the id's time repeats.
        let untimed = |ms: Vec<Message>| -> Vec<_> {
            ms.iter()
                .map(|m| (m.instance_name, m.message_id.as_bytes()[8..].to_vec()))
                .collect()
        };
        let (a, b, c) = (untimed(a), untimed(b), untimed(c));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[actix_rt::test]
    async fn a_rate_paces_publishing_by_what_is_owed_since_it_began() {
        tokio::time::pause();
        let r = rig_full(
            RestartType::Transient,
            Duration::ZERO,
            Some(100_000.0),
            None,
            1,
            None,
        );
        settle().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle().await;
        let n = messages(&r.published).len();
        // 100 ms at 100k/s owes 10,000; settling moves paused time on a few ms more.
        assert!((9_800..=10_600).contains(&n), "{n}");
    }

    #[actix_rt::test]
    async fn a_fixed_delay_paces_publishing() {
        tokio::time::pause();
        let r = rig(Duration::from_secs(1), None, 1);
        settle().await;
        assert_eq!(messages(&r.published).len(), 1);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(messages(&r.published).len(), 2);
        r.publisher.send(Shutdown).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(messages(&r.published).is_empty());
        assert_eq!(r.closed.len(), 1);
    }
}

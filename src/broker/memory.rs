//! `MemoryBroker`: the embedded broker, with real lease, ack and nack semantics.
//!
//! It holds every message from publish to ack or dead letter. The Publisher (or the stdin
//! source) publishes into it, the Consumer pulls from it, the Acker settles with it, and
//! the shutdown asks it what is still pending. It is a supervised child: a restart of the
//! adapter keeps every message, as a real broker keeps them when its client reconnects,
//! and only answers a parked pull.

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use std::{cmp::Reverse, collections::BinaryHeap, collections::VecDeque};

use actix::prelude::*;
use tokio::{sync::oneshot, time::Instant};
use tracing::debug;

use super::{
    Backlog, BrokerError, Extend, Pending, Publish, Pull, Settle, Settled, Settlement, Verdict,
};
use crate::faults::Injector;
use crate::message::{AckId, Delivery, Message};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::supervision::{guard, note_restart, Child, Link};
use crate::FastMap;

/// How often leases and delayed redeliveries are checked. Redelivery timing is accurate to
/// this, which is far below any ack deadline worth setting.
const TICK: Duration = Duration::from_millis(10);

/// A message the broker holds, between deliveries.
#[derive(Debug, Clone, Copy)]
struct Held {
    message: Message,
    /// Deliveries made so far.
    attempts: u32,
    published_at: SystemTime,
    /// It holds a place in the backlog, given back when it leaves the broker: acked or
    /// dead-lettered.
    placed: bool,
}

#[derive(Debug)]
struct Lease {
    held: Held,
    deadline: Instant,
}

/// A parked pull, answered as soon as a delivery can be made or its wait runs out.
struct Waiter {
    max: usize,
    reply: oneshot::Sender<Result<Vec<Delivery>, BrokerError>>,
    until: Instant,
}

/// How the in-memory broker behaves.
#[derive(Debug, Clone)]
pub struct MemoryBrokerConfig {
    pub max_in_flight: usize,
    /// Deliveries after which a message whose lease ran out goes to the dead letters; the
    /// Acker dead-letters a failed one itself.
    pub max_deliveries: u32,
    pub ack_deadline: Duration,
    /// The places for messages not yet delivered, which publishers take; none, no bound.
    pub backlog: Option<Arc<Backlog>>,
}

/// The in-memory broker.
pub struct MemoryBroker {
    link: Link,
    config: MemoryBrokerConfig,
    injector: Injector,
    /// Survives restarts: a stopped broker serves no more pulls.
    retired: bool,
    ready: VecDeque<Held>,
    /// Nacked messages waiting out their delay, soonest first.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_held: FastMap<u64, Held>,
    leased: FastMap<AckId, Lease>,
    /// Lease deadlines, soonest first. Extensions push a new entry and leave the old one to
    /// be skipped, which keeps extension O(log n) instead of a search.
    expiry: BinaryHeap<Reverse<(Instant, AckId)>>,
    next_tag: u64,
    waiter: Option<Waiter>,
}

impl MemoryBroker {
    pub fn new(link: Link, config: MemoryBrokerConfig, injector: Injector) -> Self {
        Self {
            link,
            config,
            injector,
            retired: false,
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            delayed_held: FastMap::default(),
            leased: FastMap::default(),
            expiry: BinaryHeap::new(),
            next_tag: 0,
            waiter: None,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.link.metrics
    }

    fn credit(&self) -> usize {
        self.config.max_in_flight.saturating_sub(self.leased.len())
    }

    fn pending(&self) -> u64 {
        (self.ready.len() + self.delayed_held.len() + self.leased.len()) as u64
    }

    fn lease(&mut self, max: usize) -> Vec<Delivery> {
        let n = max.min(self.credit()).min(self.ready.len());
        let now = Instant::now();
        let deadline = now + self.config.ack_deadline;
        let mut out = Vec::with_capacity(n);
        for mut held in self.ready.drain(..n) {
            held.attempts += 1;
            self.next_tag += 1;
            let tag = AckId(self.next_tag);
            self.leased.insert(tag, Lease { held, deadline });
            self.expiry.push(Reverse((deadline, tag)));
            out.push(Delivery {
                tag,
                message: held.message,
                attempt: held.attempts,
                published_at: held.published_at,
            });
        }
        // Settled leases leave their deadline behind until it comes due, so at a high
        // rate the heap held a whole ack deadline's worth of traffic, not what is in
        // flight. Rebuilding it from the live leases keeps it within twice that.
        if self.expiry.len() > 2 * self.leased.len() + 1024 {
            self.expiry = self
                .leased
                .iter()
                .map(|(&tag, l)| Reverse((l.deadline, tag)))
                .collect();
        }
        out
    }

    /// Answers the parked pull if there is anything to give, or its wait is over.
    fn serve_waiter(&mut self) {
        let Some(w) = self.waiter.take() else { return };
        if w.reply.is_closed() {
            return;
        }
        let batch = self.lease(w.max);
        if batch.is_empty() && Instant::now() < w.until {
            self.waiter = Some(w);
            return;
        }
        if let Err(Ok(batch)) = w.reply.send(Ok(batch)) {
            // The puller went away between asking and being answered: give the leases back
            // at once rather than letting them expire.
            for d in batch {
                if let Some(lease) = self.leased.remove(&d.tag) {
                    self.unlease(lease);
                }
            }
        }
    }

    /// Takes a delivery back as if it had never been made: the attempt is not spent, and
    /// the message goes first in line.
    fn unlease(&mut self, lease: Lease) {
        let mut held = lease.held;
        held.attempts -= 1;
        self.ready.push_front(held);
    }

    /// Holds a failed delivery for redelivery, at once or after `delay`.
    fn redeliver(&mut self, held: Held, delay: Duration) {
        if delay.is_zero() {
            self.ready.push_back(held);
        } else {
            self.next_tag += 1;
            let key = self.next_tag;
            self.delayed.push(Reverse((Instant::now() + delay, key)));
            self.delayed_held.insert(key, held);
        }
    }

    /// Gives back the places of `n` messages that left the broker.
    fn free_places(&self, n: u64) {
        if let Some(backlog) = &self.config.backlog {
            backlog.give(n);
        }
    }

    /// Dead letters are logged, not kept: a topic nobody reads would grow by a quarter of
    /// the traffic at the benchmark's failure rate.
    fn dead_letter(&self, held: Held, why: &str) {
        flow!(
            warn,
            "broker",
            "dead_lettered",
            held.message.instance_name,
            held.message.message_id,
            held.attempts,
            "Dead-lettered {} after {} deliveries ({why})",
            held.message,
            held.attempts
        );
    }

    fn tick(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, key))) = self.delayed.peek().copied() {
            if at > now {
                break;
            }
            self.delayed.pop();
            if let Some(held) = self.delayed_held.remove(&key) {
                self.ready.push_back(held);
            }
        }
        while let Some(Reverse((at, tag))) = self.expiry.peek().copied() {
            if at > now {
                break;
            }
            self.expiry.pop();
            // Skip entries for leases already settled or extended past this deadline.
            if self.leased.get(&tag).is_some_and(|l| l.deadline <= now) {
                let lease = self.leased.remove(&tag).expect("checked above");
                Metrics::inc(&self.metrics().lease_expired);
                debug!("Lease on {} expired", lease.held.message);
                // Nobody settled this delivery, so nobody else counts what becomes of it.
                if lease.held.attempts >= self.config.max_deliveries {
                    self.free_places(u64::from(lease.held.placed));
                    self.dead_letter(lease.held, "lease expired");
                    Metrics::inc(&self.metrics().dead_lettered);
                    self.metrics().mark_outcome();
                } else {
                    self.ready.push_back(lease.held);
                }
            }
        }
        self.serve_waiter();
    }

    /// Applies a batch of settlements; returns those whose lease had already run out.
    fn settle(&mut self, settlements: Vec<Settlement>) -> Settled {
        let mut stale = Vec::new();
        let mut left = 0;
        for s in settlements {
            let Some(lease) = self.leased.remove(&s.tag) else {
                // Its lease ran out and the message went back; the later delivery counts.
                debug!("Refused a settlement for stale delivery {:?}", s.tag);
                stale.push(s);
                continue;
            };
            match s.verdict {
                Verdict::Ack => left += u64::from(lease.held.placed),
                Verdict::Nack { delay } => self.redeliver(lease.held, delay),
                Verdict::DeadLetter => {
                    left += u64::from(lease.held.placed);
                    self.dead_letter(lease.held, "nacked");
                }
                Verdict::Release => self.unlease(lease),
            }
        }
        self.free_places(left);
        self.serve_waiter();
        Settled { stale }
    }
}

impl Actor for MemoryBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        ctx.run_interval(TICK, |act, ctx| {
            guard(act, ctx, "lease timer", |act, _| act.tick());
        });
    }
}

impl Child for MemoryBroker {
    const NAME: ChildName = ChildName::Broker;
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

crate::restart_on_request!(MemoryBroker);

impl Supervised for MemoryBroker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The messages are the broker's, not this adapter's: they stay. Only the parked
        // pull is answered, empty, so that the Consumer asks again.
        if let Some(w) = self.waiter.take() {
            let _ = w.reply.send(Ok(Vec::new()));
        }
        note_restart(self);
    }
}

/// Adds messages to the broker, first thing, so that a failure after cannot lose them.
impl Handler<Publish> for MemoryBroker {
    type Result = ();
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        let published_at = SystemTime::now();
        self.ready.extend(msg.0.into_iter().map(|message| Held {
            message,
            attempts: 0,
            published_at,
            placed: true,
        }));
        guard(self, ctx, "Publish", |act, _| {
            act.injector.maybe_fail();
            act.serve_waiter();
        });
    }
}

impl Handler<Pull> for MemoryBroker {
    type Result = Response<Result<Vec<Delivery>, BrokerError>>;
    fn handle(&mut self, pull: Pull, ctx: &mut Context<Self>) -> Self::Result {
        if self.retired {
            return Response::reply(Err(BrokerError::Closed));
        }
        let Some(batch) = guard(self, ctx, "Pull", |act, _| {
            act.injector.maybe_fail();
            act.lease(pull.max)
        }) else {
            return Response::reply(Ok(Vec::new()));
        };
        if !batch.is_empty() || pull.wait.is_zero() {
            return Response::reply(Ok(batch));
        }
        // One puller at a time: a newer pull replaces an older one, which gets an empty batch.
        if let Some(old) = self.waiter.take() {
            let _ = old.reply.send(Ok(Vec::new()));
        }
        let (reply, rx) = oneshot::channel();
        self.waiter = Some(Waiter {
            max: pull.max,
            reply,
            until: Instant::now() + pull.wait,
        });
        Response::fut(async move { rx.await.unwrap_or(Err(BrokerError::Closed)) })
    }
}

/// Applies settlements, then answers with those it refused, even if it fails after.
impl Handler<Settle> for MemoryBroker {
    type Result = MessageResult<Settle>;
    fn handle(&mut self, settle: Settle, ctx: &mut Context<Self>) -> Self::Result {
        let settled = self.settle(settle.0);
        guard(self, ctx, "Settle", |act, _| act.injector.maybe_fail());
        MessageResult(settled)
    }
}

impl Handler<Extend> for MemoryBroker {
    type Result = ();
    fn handle(&mut self, ext: Extend, _: &mut Context<Self>) {
        let deadline = Instant::now() + ext.by;
        for tag in ext.tags {
            if let Some(lease) = self.leased.get_mut(&tag) {
                if deadline > lease.deadline {
                    lease.deadline = deadline;
                    self.expiry.push(Reverse((deadline, tag)));
                }
            }
        }
    }
}

/// Counts what is neither acked nor dead-lettered.
impl Handler<Pending> for MemoryBroker {
    type Result = Result<u64, BrokerError>;
    fn handle(&mut self, _: Pending, _: &mut Context<Self>) -> Self::Result {
        Ok(self.pending())
    }
}

/// At shutdown there is nothing to let go of: the messages stay with the broker, and the
/// shutdown still asks what is pending after.
impl Handler<Shutdown> for MemoryBroker {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        if let Some(w) = self.waiter.take() {
            let _ = w.reply.send(Ok(Vec::new()));
        }
    }
}

/// Describes the broker for the live dump: what waits, what is leased, what is delayed.
impl Handler<Probe> for MemoryBroker {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = if self.retired { "retired" } else { "open" };
        let mut p = Probed::new(
            state,
            &[
                ("ready", self.ready.len()),
                ("leased", self.leased.len()),
                ("delayed", self.delayed_held.len()),
            ],
        );
        p.oldest = self
            .ready
            .front()
            .map(|h| h.published_at.elapsed().unwrap_or_default());
        MessageResult(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::InstanceName;
    use crate::testkit::settle as let_run;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    fn msgs(n: usize) -> Vec<Message> {
        (0..n)
            .map(|_| Message::new(InstanceName::parse("cattle-test").unwrap()))
            .collect()
    }

    fn start_with(
        max_in_flight: usize,
        max_deliveries: u32,
        injector: Injector,
    ) -> (Addr<MemoryBroker>, Arc<Metrics>) {
        let (link, _, metrics) = crate::testkit::link();
        let cfg = MemoryBrokerConfig {
            max_in_flight,
            max_deliveries,
            ack_deadline: Duration::from_secs(10),
            backlog: None,
        };
        let broker = actix::Supervisor::start(move |_| MemoryBroker::new(link, cfg, injector));
        (broker, metrics)
    }

    #[actix_rt::test]
    async fn a_place_in_the_backlog_is_given_back_only_when_its_message_leaves() {
        let backlog = Arc::new(Backlog::new(4));
        let (link, _, _) = crate::testkit::link();
        let cfg = MemoryBrokerConfig {
            max_in_flight: 10,
            max_deliveries: 5,
            ack_deadline: Duration::from_secs(10),
            backlog: Some(backlog.clone()),
        };
        let injector = Injector::none(ChildName::Broker);
        let sub = actix::Supervisor::start(move |_| MemoryBroker::new(link, cfg, injector));
        assert_eq!(backlog.try_take(4), 4);
        sub.send(Publish(msgs(4))).await.unwrap();
        let d = sub.send(pull(4)).await.unwrap().unwrap();
        let nack = Verdict::Nack {
            delay: Duration::ZERO,
        };
        // Delivered, nacked or released, a message still holds its place.
        sub.send(settle(&d[..1], nack)).await.unwrap();
        sub.send(settle(&d[1..2], Verdict::Release)).await.unwrap();
        assert_eq!(backlog.try_take(1), 0);
        // Acked or dead-lettered, it gives the place back.
        sub.send(settle(&d[2..3], Verdict::Ack)).await.unwrap();
        sub.send(settle(&d[3..4], Verdict::DeadLetter))
            .await
            .unwrap();
        assert_eq!(backlog.try_take(4), 2);
        let again = sub.send(pull(4)).await.unwrap().unwrap();
        sub.send(settle(&again, Verdict::Ack)).await.unwrap();
        assert_eq!(backlog.try_take(4), 2);
    }

    fn start(max_in_flight: usize, max_deliveries: u32) -> (Addr<MemoryBroker>, Arc<Metrics>) {
        start_with(
            max_in_flight,
            max_deliveries,
            Injector::none(ChildName::Broker),
        )
    }

    fn pull(max: usize) -> Pull {
        Pull {
            max,
            wait: Duration::ZERO,
        }
    }

    fn settle(ds: &[Delivery], verdict: Verdict) -> Settle {
        Settle(
            ds.iter()
                .map(|d| Settlement {
                    tag: d.tag,
                    verdict,
                })
                .collect(),
        )
    }

    #[actix_rt::test]
    async fn flow_control_caps_leases_and_acks_return_credit() {
        let (sub, _) = start(3, 5);
        sub.send(Publish(msgs(5))).await.unwrap();
        let first = sub.send(pull(10)).await.unwrap().unwrap();
        assert_eq!(first.len(), 3);
        assert!(sub.send(pull(10)).await.unwrap().unwrap().is_empty());
        sub.send(settle(&first[..2], Verdict::Ack)).await.unwrap();
        assert_eq!(sub.send(pull(10)).await.unwrap().unwrap().len(), 2);
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(3));
    }

    #[actix_rt::test]
    async fn nack_redelivers_and_a_dead_letter_is_gone() {
        let (sub, _) = start(10, 2);
        sub.send(Publish(msgs(1))).await.unwrap();
        let nack = Verdict::Nack {
            delay: Duration::ZERO,
        };
        let d1 = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!(d1[0].attempt, 1);
        sub.send(settle(&d1, nack)).await.unwrap();
        let d2 = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!((d2[0].attempt, d2[0].id()), (2, d1[0].id()));
        assert_ne!(d2[0].tag, d1[0].tag, "each delivery has its own handle");
        sub.send(settle(&d2, Verdict::DeadLetter)).await.unwrap();
        assert!(sub.send(pull(1)).await.unwrap().unwrap().is_empty());
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(0));
    }

    #[actix_rt::test]
    async fn release_keeps_the_message_without_spending_an_attempt() {
        let (sub, m) = start(10, 1);
        sub.send(Publish(msgs(1))).await.unwrap();
        let d = sub.send(pull(1)).await.unwrap().unwrap();
        sub.send(settle(&d, Verdict::Release)).await.unwrap();
        let again = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!(again[0].attempt, 1);
        assert_eq!(m.dead_lettered.load(Relaxed), 0);
    }

    #[actix_rt::test]
    async fn nack_delay_and_lease_expiry_follow_the_clock() {
        tokio::time::pause();
        let (sub, m) = start(10, 5);
        sub.send(Publish(msgs(1))).await.unwrap();
        let d = sub.send(pull(1)).await.unwrap().unwrap();
        let delay = Duration::from_secs(3);
        sub.send(settle(&d, Verdict::Nack { delay })).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(sub.send(pull(1)).await.unwrap().unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let d = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!(d.len(), 1);
        // An extended lease outlives its first deadline; an abandoned one does not.
        sub.send(Extend {
            tags: vec![d[0].tag],
            by: Duration::from_secs(20),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(m.lease_expired.load(Relaxed), 0);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(m.lease_expired.load(Relaxed), 1);
        let again = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!(again[0].attempt, 3);
        // The stale delivery's ack is refused, and says so; only the live one counts.
        let stale = sub.send(settle(&d, Verdict::Ack)).await.unwrap();
        assert_eq!(stale.stale.len(), 1);
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(1));
        let live = sub.send(settle(&again, Verdict::Ack)).await.unwrap();
        assert!(live.stale.is_empty());
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(0));
    }

    #[actix_rt::test]
    async fn a_lease_that_runs_out_on_the_last_delivery_is_dead_lettered_by_the_broker() {
        tokio::time::pause();
        let (sub, m) = start(10, 1);
        sub.send(Publish(msgs(1))).await.unwrap();
        sub.send(pull(1)).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(m.lease_expired.load(Relaxed), 1);
        assert_eq!(m.dead_lettered.load(Relaxed), 1);
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(0));
    }

    #[actix_rt::test]
    async fn parked_pull_is_answered_by_a_publish() {
        let (sub, _) = start(10, 5);
        let waiting = sub.send(Pull {
            max: 5,
            wait: Duration::from_secs(60),
        });
        let publisher = sub.clone();
        actix_rt::spawn(async move { publisher.send(Publish(msgs(2))).await.unwrap() });
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("pull answered")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2);
    }

    #[actix_rt::test]
    async fn pending_counts_what_is_ready_leased_and_delayed() {
        let (sub, _) = start(10, 5);
        sub.send(Publish(msgs(3))).await.unwrap();
        let d = sub.send(pull(2)).await.unwrap().unwrap();
        let delay = Duration::from_secs(60);
        sub.send(settle(&d[..1], Verdict::Nack { delay }))
            .await
            .unwrap();
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(3));
        sub.send(settle(&d[1..], Verdict::Ack)).await.unwrap();
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(2));
    }

    #[actix_rt::test]
    async fn a_restarted_adapter_keeps_every_message() {
        let injector = "panic:broker=1"
            .parse::<crate::faults::Faults>()
            .unwrap()
            .injector(ChildName::Broker, Some(1));
        let (sub, m) = start_with(10, 5, injector);
        // Publishing takes the messages in before the injected panic strikes.
        sub.send(Publish(msgs(4))).await.unwrap();
        let_run().await;
        assert!(m.actor_restarts.load(Relaxed) >= 1);
        assert_eq!(sub.send(Pending).await.unwrap(), Ok(4));
    }
}

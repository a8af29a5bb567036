//! `MemoryBroker`: an in-memory broker with real lease, ack and nack semantics.
//!
//! It owns every message from publish to ack or dead letter. The Publisher (or the stdin
//! source) publishes into it, the Consumer pulls from it, the Acker settles with it, and
//! the SignalActor asks it when everything is settled and what is left at exit.

use std::{cmp::Reverse, collections::BinaryHeap, collections::VecDeque};
use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use tokio::{sync::oneshot, time::Instant};
use tracing::{debug, warn};

use super::{BrokerError, Extend, Pull, Settle, Verdict};
use crate::message::{Delivery, DeliveryTag, Message};
use crate::metrics::{Counts, Metrics};
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
    published_at: Instant,
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
    pub max_deliveries: u32,
    pub ack_deadline: Duration,
}

/// The in-memory broker.
pub struct MemoryBroker {
    config: MemoryBrokerConfig,
    metrics: Arc<Metrics>,
    started: Instant,
    ready: VecDeque<Held>,
    /// Nacked messages waiting out their delay, soonest first.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_held: FastMap<u64, Held>,
    leased: FastMap<DeliveryTag, Lease>,
    /// Lease deadlines, soonest first. Extensions push a new entry and leave the old one to
    /// be skipped, which keeps extension O(log n) instead of a search.
    expiry: BinaryHeap<Reverse<(Instant, DeliveryTag)>>,
    next_tag: u64,
    waiter: Option<Waiter>,
    input_closed: bool,
    settled_waiters: Vec<oneshot::Sender<()>>,
    /// Dead letters are counted and logged, not kept: a topic nobody reads would grow
    /// by a quarter of the traffic at the benchmark's failure rate.
    dead_letters: u64,
    /// Publish to ack, in microseconds, for the report.
    ack_latency: hdrhistogram::Histogram<u64>,
    /// The same, for the metrics exporter; a no-op when nothing is installed.
    ack_latency_export: metrics::Histogram,
}

impl MemoryBroker {
    pub fn new(config: MemoryBrokerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            started: Instant::now(),
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            delayed_held: FastMap::default(),
            leased: FastMap::default(),
            expiry: BinaryHeap::new(),
            next_tag: 0,
            waiter: None,
            input_closed: false,
            settled_waiters: Vec::new(),
            dead_letters: 0,
            ack_latency: crate::metrics::micros_histogram(),
            ack_latency_export: metrics::histogram!("mandrill_ack_latency_seconds"),
        }
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
            if held.attempts > 1 {
                Metrics::inc(&self.metrics.redelivered);
            }
            self.next_tag += 1;
            let tag = DeliveryTag(self.next_tag);
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

    /// A failed delivery: redeliver it, or dead-letter it after the last allowed attempt.
    /// A dead letter is an outcome; the caller marks its time, once per batch.
    fn retry_or_dead_letter(&mut self, held: Held, delay: Duration, why: &str) {
        if held.attempts >= self.config.max_deliveries {
            warn!(
                target: crate::FLOW,
                "Dead-lettered {} after {} deliveries ({why})",
                held.message, held.attempts
            );
            Metrics::inc(&self.metrics.dead_lettered);
            self.dead_letters += 1;
        } else if delay.is_zero() {
            self.ready.push_back(held);
        } else {
            self.next_tag += 1;
            let key = self.next_tag;
            self.delayed.push(Reverse((Instant::now() + delay, key)));
            self.delayed_held.insert(key, held);
        }
    }

    fn mark_outcome(&self) {
        let ns = self.started.elapsed().as_nanos() as u64;
        self.metrics
            .last_outcome_ns
            .fetch_max(ns, std::sync::atomic::Ordering::Relaxed);
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
                Metrics::inc(&self.metrics.lease_expired);
                debug!("Lease on {} expired", lease.held.message);
                self.retry_or_dead_letter(lease.held, Duration::ZERO, "lease expired");
                self.mark_outcome();
            }
        }
        self.serve_waiter();
        self.check_settled();
    }

    fn check_settled(&mut self) {
        if self.input_closed && self.pending() == 0 && !self.settled_waiters.is_empty() {
            for w in self.settled_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Actor for MemoryBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, _| act.tick());
    }
}

/// Adds messages to the subscription.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Publish(pub Vec<Message>);

impl Handler<Publish> for MemoryBroker {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        if self.input_closed {
            warn!(
                "Dropped {} messages published after input closed",
                msg.0.len()
            );
            return;
        }
        let now = Instant::now();
        Metrics::add(&self.metrics.published, msg.0.len() as u64);
        self.ready.extend(msg.0.into_iter().map(|message| Held {
            message,
            attempts: 0,
            published_at: now,
        }));
        self.serve_waiter();
    }
}

impl Handler<Pull> for MemoryBroker {
    type Result = Response<Result<Vec<Delivery>, BrokerError>>;
    fn handle(&mut self, pull: Pull, _: &mut Context<Self>) -> Self::Result {
        let batch = self.lease(pull.max);
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

impl Handler<Settle> for MemoryBroker {
    type Result = ();
    fn handle(&mut self, settle: Settle, _: &mut Context<Self>) {
        // Counted here and added once: shared counters are cheap, but not free per message.
        let (mut acked, mut nacked, mut released) = (0, 0, 0);
        let now = Instant::now();
        for s in settle.0 {
            let Some(lease) = self.leased.remove(&s.tag) else {
                // Its lease ran out and the message went back; the later delivery counts.
                debug!("Ignored a settlement for stale delivery {:?}", s.tag);
                continue;
            };
            match s.verdict {
                Verdict::Ack => {
                    acked += 1;
                    let took = now.saturating_duration_since(lease.held.published_at);
                    self.ack_latency
                        .saturating_record(took.as_micros().min(u64::MAX as u128) as u64);
                    self.ack_latency_export.record(took.as_secs_f64());
                }
                Verdict::Nack { delay } => {
                    nacked += 1;
                    self.retry_or_dead_letter(lease.held, delay, "nacked");
                }
                Verdict::Release => {
                    released += 1;
                    self.unlease(lease);
                }
            }
        }
        Metrics::add(&self.metrics.acked, acked);
        Metrics::add(&self.metrics.nacked, nacked);
        Metrics::add(&self.metrics.nacked_on_shutdown, released);
        // One clock read per batch: every outcome in it happened at this moment.
        if acked + nacked > 0 {
            self.mark_outcome();
        }
        self.serve_waiter();
        self.check_settled();
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

/// Says that no more messages will be published.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InputClosed;

impl Handler<InputClosed> for MemoryBroker {
    type Result = ();
    fn handle(&mut self, _: InputClosed, _: &mut Context<Self>) {
        self.input_closed = true;
        self.check_settled();
    }
}

/// Resolves once input is closed and every message is acked or dead-lettered.
#[derive(Debug, Message)]
#[rtype(result = "oneshot::Receiver<()>")]
pub struct WhenSettled;

impl Handler<WhenSettled> for MemoryBroker {
    type Result = MessageResult<WhenSettled>;
    fn handle(&mut self, _: WhenSettled, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.settled_waiters.push(tx);
        self.check_settled();
        MessageResult(rx)
    }
}

/// What the broker holds right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holdings {
    /// Never delivered, waiting for redelivery, or leased.
    pub pending: u64,
    /// Messages given up on; the broker keeps them, this is their number.
    pub dead_letters: u64,
    /// The counters, read at the same moment as the holdings.
    pub counts: Counts,
    /// Publish to ack, so far.
    pub ack_latency: crate::metrics::Percentiles,
}

/// Reports what the broker holds.
#[derive(Debug, Message)]
#[rtype(result = "Holdings")]
pub struct Inspect;

impl Handler<Inspect> for MemoryBroker {
    type Result = MessageResult<Inspect>;
    fn handle(&mut self, _: Inspect, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Holdings {
            pending: self.pending(),
            dead_letters: self.dead_letters,
            counts: self.metrics.snapshot(),
            ack_latency: crate::metrics::Percentiles::of_us(&self.ack_latency),
        })
    }
}

/// Describes the broker for the live dump: what waits, what is leased, what is delayed.
impl Handler<crate::protocol::Probe> for MemoryBroker {
    type Result = MessageResult<crate::protocol::Probe>;
    fn handle(&mut self, _: crate::protocol::Probe, _: &mut Context<Self>) -> Self::Result {
        let state = if self.input_closed {
            "input closed"
        } else {
            "open"
        };
        let mut p = crate::protocol::Probed::new(
            state,
            &[
                ("ready", self.ready.len()),
                ("leased", self.leased.len()),
                ("delayed", self.delayed_held.len()),
                ("dead_letters", self.dead_letters as usize),
            ],
        );
        p.oldest = self.ready.front().map(|h| h.published_at.elapsed());
        MessageResult(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Settlement;
    use crate::message::InstanceName;
    use std::sync::atomic::Ordering::Relaxed;

    fn msgs(n: usize) -> Vec<Message> {
        (0..n)
            .map(|_| Message::new(InstanceName::parse("cattle-test").unwrap()))
            .collect()
    }

    fn start(max_in_flight: usize, max_deliveries: u32) -> (Addr<MemoryBroker>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let cfg = MemoryBrokerConfig {
            max_in_flight,
            max_deliveries,
            ack_deadline: Duration::from_secs(10),
        };
        (MemoryBroker::new(cfg, metrics.clone()).start(), metrics)
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
        let (sub, m) = start(3, 5);
        sub.send(Publish(msgs(5))).await.unwrap();
        let first = sub.send(pull(10)).await.unwrap().unwrap();
        assert_eq!(first.len(), 3);
        assert!(sub.send(pull(10)).await.unwrap().unwrap().is_empty());
        sub.send(settle(&first[..2], Verdict::Ack)).await.unwrap();
        assert_eq!(sub.send(pull(10)).await.unwrap().unwrap().len(), 2);
        assert_eq!(m.acked.load(Relaxed), 2);
    }

    #[actix_rt::test]
    async fn nack_redelivers_then_dead_letters() {
        let (sub, m) = start(10, 2);
        sub.send(Publish(msgs(1))).await.unwrap();
        let nack = Verdict::Nack {
            delay: Duration::ZERO,
        };
        let d1 = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!(d1[0].attempt, 1);
        sub.send(settle(&d1, nack)).await.unwrap();
        let d2 = sub.send(pull(1)).await.unwrap().unwrap();
        assert_eq!((d2[0].attempt, d2[0].id()), (2, d1[0].id()));
        sub.send(settle(&d2, nack)).await.unwrap();
        assert!(sub.send(pull(1)).await.unwrap().unwrap().is_empty());
        let h = sub.send(Inspect).await.unwrap();
        assert_eq!((h.pending, h.dead_letters), (0, 1));
        assert_eq!(m.redelivered.load(Relaxed), 1);
        assert_eq!(m.dead_lettered.load(Relaxed), 1);
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
        assert_eq!(m.nacked_on_shutdown.load(Relaxed), 1);
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
        // The stale delivery's ack is ignored; only the live one counts.
        sub.send(settle(&d, Verdict::Ack)).await.unwrap();
        assert_eq!(m.acked.load(Relaxed), 0);
        sub.send(settle(&again, Verdict::Ack)).await.unwrap();
        assert_eq!(m.acked.load(Relaxed), 1);
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
    async fn settled_fires_only_when_input_closed_and_nothing_pending() {
        let (sub, _) = start(10, 5);
        sub.send(Publish(msgs(1))).await.unwrap();
        let mut settled = sub.send(WhenSettled).await.unwrap();
        sub.send(InputClosed).await.unwrap();
        let d = sub.send(pull(1)).await.unwrap().unwrap();
        assert!(settled.try_recv().is_err());
        sub.send(settle(&d, Verdict::Ack)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .expect("settled in time")
            .unwrap();
    }
}

//! The broker contract: what the pipeline needs from a pub/sub broker.
//!
//! The contract is a set of actix messages, and the pipeline holds only `Recipient`s of
//! them, gathered in [`Broker`]: the Consumer pulls, the Acker settles and extends, the
//! load generator publishes, and the shutdown asks what is still pending. Any actor that
//! handles them is a broker adapter; [`memory::MemoryBroker`] is the embedded one. An
//! adapter is a supervised child like any other, so one that loses its connection is
//! restarted; what it holds in the broker survives that, because the broker keeps it.
//!
//! The run's accounting is not the broker's: the Acker counts what it decides and the
//! broker confirms, so any broker gives the same report. An adapter counts only what
//! happens inside the broker and nowhere else: a lease that ran out, and the dead letter
//! that may follow it.
//!
//! How each verdict maps onto an at-least-once broker:
//!
//! | verdict | `MemoryBroker` | Google Cloud Pub/Sub | NATS JetStream |
//! |---|---|---|---|
//! | `Ack` | removed for good | `acknowledge` | `+ACK` |
//! | `Nack { delay }` | redelivered after `delay` | `modifyAckDeadline(delay)`; 0 redelivers at once | `-NAK {"delay": delay}` |
//! | `DeadLetter` | moved to the dead letters | publish to the dead-letter topic, then `acknowledge`; or `modifyAckDeadline(0)` where the subscription's dead-letter policy has the same limit | copy to the dead-letter subject, then `+TERM` (no native dead-letter queue) |
//! | `Release` | back first in line; the attempt is not spent | `modifyAckDeadline(0)` | `-NAK` |
//! | `Extend { by }` | the lease's deadline moves to `by` from now | `modifyAckDeadline(by)` | `+WPI`, which restarts the consumer's `AckWait` |
//!
//! **Release where a broker cannot un-count a delivery.** Pub/Sub and JetStream count
//! every delivery towards their own limits (`deliveryAttempt`, `MaxDeliver`), so there a
//! released delivery spends an attempt. Release still means "not handled, through no
//! fault of the message": the service never dead-letters a message on a release, only
//! when a failed delivery is its last allowed one, and a message released at a shutdown
//! may so reach the broker's own limit one delivery early. `max_deliveries` must not
//! exceed the broker's own limit, or the broker dead-letters before the service would.
//!
//! **Stale settlements.** A settlement for a delivery whose lease already ran out names a
//! handle the broker has taken back. The memory broker refuses it and says so in
//! `Settled`, which keeps the run's counts exact; a broker that cannot tell (JetStream's
//! acks carry no answer) reports none.

pub mod jetstream;
pub mod memory;
pub mod pubsub;
pub mod remote;

use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message, Recipient};
use thiserror::Error;

use crate::message::{AckId, Delivery, Message as PubSubMessage};
use crate::protocol::Probe;

/// Why the broker could not serve a request.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("broker is closed")]
    Closed,
    #[error("broker is unavailable: {0}")]
    Unavailable(String),
}

/// Leases up to `max` deliveries, waiting up to `wait` for the first one to arrive.
///
/// The broker never leases more than its flow-control limit: when that many are out, the
/// pull waits for credit, which acks and nacks return. That wait is the only way anything
/// flows back up the pipeline.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Delivery>, BrokerError>")]
pub struct Pull {
    pub max: usize,
    pub wait: Duration,
}

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: remove the message for good.
    Ack,
    /// Failed: redeliver it after `delay`.
    Nack { delay: Duration },
    /// Failed on its last allowed delivery: give up on it, into the dead letters.
    DeadLetter,
    /// Not handled because the service is stopping: keep the message for a later delivery,
    /// without counting this delivery towards the dead-letter limit where the broker can.
    Release,
}

/// A verdict on one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub tag: AckId,
    pub verdict: Verdict,
}

/// Acks and nacks a batch of deliveries; the answer says which the broker refused.
#[derive(Debug, Message)]
#[rtype(result = "Settled")]
pub struct Settle(pub Vec<Settlement>);

/// What the broker made of a `Settle`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// The settlements it refused, because their delivery was no longer leased: the lease
    /// ran out and the message went back, so a later delivery decides it.
    pub stale: Vec<Settlement>,
}

/// Extends the leases of deliveries still being worked on, by `by` from now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Extend {
    pub tags: Vec<AckId>,
    pub by: Duration,
}

/// Publishes messages; the load generator and the stdin source use it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Publish(pub Vec<PubSubMessage>);

/// Places for the messages a broker holds, `--max-backlog` of them: a publisher takes a
/// place for each message before it publishes, and waits while there is none; the broker
/// gives the place back when the message leaves it, acked or dead-lettered. So a
/// publisher faster than the pipeline waits, where it would otherwise fill memory, and
/// everything the broker holds (waiting, leased, or waiting for redelivery) stays within
/// the bound.
///
/// The simulated publisher waits on the event loop without blocking it (`take`), and the
/// stdin reader on its own thread (`take_blocking`).
#[derive(Debug)]
pub struct Backlog {
    free: std::sync::Mutex<u64>,
    /// Wakes a thread waiting in `take_blocking`.
    freed: std::sync::Condvar,
    /// Wakes a task waiting in `take`.
    notify: tokio::sync::Notify,
}

impl Backlog {
    pub fn new(places: u64) -> Self {
        Self {
            free: std::sync::Mutex::new(places),
            freed: std::sync::Condvar::new(),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Takes up to `want` places, as many as are free, and gives how many it took.
    pub(crate) fn try_take(&self, want: u64) -> u64 {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let n = want.min(*free);
        *free -= n;
        n
    }

    /// Waits until a place is free, then takes up to `want` places; gives how many it
    /// took, at least one unless `want` is zero.
    pub async fn take(&self, want: u64) -> u64 {
        if want == 0 {
            return 0;
        }
        loop {
            // Registered before the look, so a place freed between the look and the
            // wait still wakes it.
            let freed = self.notify.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_take(want) {
                0 => freed.await,
                n => return n,
            }
        }
    }

    /// `take` for a thread outside the event loop: blocks it until a place is free.
    pub fn take_blocking(&self, want: u64) -> u64 {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while want > 0 && *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        let n = want.min(*free);
        *free -= n;
        n
    }

    /// Gives back `n` places, of messages delivered for the first time.
    pub fn give(&self, n: u64) {
        if n == 0 {
            return;
        }
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += n;
        self.freed.notify_all();
        self.notify.notify_waiters();
    }
}

/// How many messages are neither acked nor dead-lettered: not yet delivered, waiting
/// for redelivery, or leased. A finite run ends when it reaches zero, and the report's
/// `pending_at_exit` is its last answer.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, BrokerError>")]
pub struct Pending;

/// How long an adapter has found its broker unreachable; past the limit, the adapter
/// fails with `broker-down`, which escalates by default.
#[derive(Debug, Clone)]
pub struct Outage {
    limit: Duration,
    since: Option<std::time::Instant>,
}

impl Outage {
    pub fn new(limit: Duration) -> Self {
        Self { limit, since: None }
    }

    /// Notes whether the broker answered; says how long it has been down once that is
    /// past the limit.
    pub fn note(&mut self, reachable: bool) -> Option<Duration> {
        if reachable {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        Some(since.elapsed()).filter(|d| *d >= self.limit)
    }
}

/// Wakes pulls that found every lease this instance may hold out, as settlements free
/// room: a pull waits for credit rather than polling for it.
#[derive(Debug, Clone, Default)]
pub struct Room(std::sync::Arc<tokio::sync::Notify>);

impl Room {
    /// Waits until a settlement frees room, or `wait` passes.
    pub fn freed(&self, wait: Duration) -> impl std::future::Future<Output = ()> + 'static {
        // Made now, not when first awaited, so that no settlement in between is missed.
        let notified = self.0.clone().notified_owned();
        async move {
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    /// Says that settlements freed room.
    pub fn free(&self) {
        self.0.notify_waiters();
    }
}

/// A broker adapter as the pipeline holds it: a recipient for each message of the
/// contract.
#[derive(Clone)]
pub struct Broker {
    pub pull: Recipient<Pull>,
    pub settle: Recipient<Settle>,
    pub extend: Recipient<Extend>,
    pub publish: Recipient<Publish>,
    pub pending: Recipient<Pending>,
    pub probe: Recipient<Probe>,
    /// The places publishers take before they publish, where the adapter bounds its
    /// backlog.
    pub backlog: Option<std::sync::Arc<Backlog>>,
}

impl Broker {
    /// The contract's recipients of a running adapter.
    pub fn of<A>(adapter: &Addr<A>) -> Self
    where
        A: Actor
            + Handler<Pull>
            + Handler<Settle>
            + Handler<Extend>
            + Handler<Publish>
            + Handler<Pending>
            + Handler<Probe>,
        A::Context: ToEnvelope<A, Pull>
            + ToEnvelope<A, Settle>
            + ToEnvelope<A, Extend>
            + ToEnvelope<A, Publish>
            + ToEnvelope<A, Pending>
            + ToEnvelope<A, Probe>,
    {
        Self {
            pull: adapter.clone().recipient(),
            settle: adapter.clone().recipient(),
            extend: adapter.clone().recipient(),
            publish: adapter.clone().recipient(),
            pending: adapter.clone().recipient(),
            probe: adapter.clone().recipient(),
            backlog: None,
        }
    }
}

#[cfg(test)]
mod backlog_tests {
    use super::Backlog;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn takes_what_is_free_and_a_thread_waits_for_a_place() {
        let backlog = Arc::new(Backlog::new(3));
        assert_eq!(backlog.take_blocking(2), 2);
        assert_eq!(backlog.try_take(5), 1);
        let b = backlog.clone();
        let waiter = std::thread::spawn(move || b.take_blocking(4));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "took a place that was not free");
        backlog.give(2);
        assert_eq!(waiter.join().unwrap(), 2);
    }

    #[actix_rt::test]
    async fn a_task_waits_for_a_place_without_blocking_the_loop() {
        let backlog = Arc::new(Backlog::new(1));
        assert_eq!(backlog.take(1).await, 1);
        let b = backlog.clone();
        let waiter = actix_rt::spawn(async move { b.take(10).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        backlog.give(3);
        let took = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(took.expect("woken").unwrap(), 3);
    }
}

//! The subscription contract: what the pipeline needs from a pub/sub broker.
//!
//! The contract is a set of actix messages, and the pipeline holds only `Recipient`s of
//! them: the Consumer a `Recipient<Pull>`, the Acker `Recipient<Settle>` and
//! `Recipient<Extend>`. Any actor that handles these messages can stand in for the broker;
//! [`memory::MemoryBroker`] is the embedded one, and a NATS JetStream pull consumer
//! fits the same shape (fetch with expiry, ack, nak with delay, in-progress, max deliver).

pub mod memory;

use std::time::Duration;

use actix::Message;
use thiserror::Error;

use crate::message::{Delivery, DeliveryTag};

/// Why the subscription could not serve a request.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("subscription is closed")]
    Closed,
    #[error("subscription is unavailable: {0}")]
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
    /// Failed: redeliver after `delay`, or dead-letter it after the last allowed delivery.
    Nack { delay: Duration },
    /// Not handled because the service is stopping: keep the message for a later delivery,
    /// without counting this delivery towards the dead-letter limit.
    Release,
}

/// A verdict on one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Settlement {
    pub tag: DeliveryTag,
    pub verdict: Verdict,
}

/// Acks and nacks a batch of deliveries.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Settle(pub Vec<Settlement>);

/// Extends the leases of deliveries still being worked on, by `by` from now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Extend {
    pub tags: Vec<DeliveryTag>,
    pub by: Duration,
}

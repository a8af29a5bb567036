//! Messages and data shared by several actors. Messages that only one actor handles sit
//! in that actor's file, right before their `impl Handler`.

use actix::Message;
use thiserror::Error;

use crate::actors::restarter::RestartError;
use crate::message::{Delivery, InstanceName, Message as PubSubMessage};
use crate::store::StoreError;

/// Stops a child at shutdown, answered once it has stopped: the Publisher stops
/// publishing, the Consumer stops pulling, the Restarter fails what is still running, the
/// Saver commits its last batch and closes the store, the Acker nacks what is left. Every
/// child handles it, and the SignalActor sends it in reverse start order.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The two steps every message goes through, at the same time.
/// Asks an actor to describe itself, for the live dump on SIGUSR1. Every core actor
/// handles it. It waits in the mailbox behind everything sent before it, so how long the
/// answer takes shows how far behind the actor is; actix does not expose mailbox depth.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Probed")]
pub struct Probe;

/// What an actor says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probed {
    /// Its state: running, retired, stopped, closing and so on.
    pub state: &'static str,
    /// The sizes of its own queues and tables, by name.
    pub holds: Vec<(&'static str, usize)>,
    /// The age of the oldest message it holds, where it keeps ages.
    pub oldest: Option<std::time::Duration>,
}

impl Probed {
    pub fn new(state: &'static str, holds: &[(&'static str, usize)]) -> Self {
        Self {
            state,
            holds: holds.to_vec(),
            oldest: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Save,
    Restart,
}

/// Why a step failed for one message.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Restart(#[from] RestartError),
    #[error("{0} restarted before it finished")]
    Restarted(&'static str),
    #[error("{0} is closed")]
    Closed(&'static str),
    #[error("{0} is stopped")]
    Stopped(&'static str),
}

/// The result of one step for one delivery.
/// A batch of dispatched deliveries. The Consumer sends one batch to the Acker, the Saver
/// and the Restarter; sharing it saves two copies of every delivery.
pub type Batch = std::sync::Arc<[Delivery]>;

/// One step's result for one delivery. The error is boxed: it is the rare case, and
/// unboxed it made every outcome, and every message the Acker holds, twice as large.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery: Delivery,
    pub result: StepResult,
}

/// What one step came to.
pub type StepResult = Result<(), Box<StepError>>;

impl Outcome {
    pub fn ok(delivery: Delivery) -> Self {
        Self {
            delivery,
            result: Ok(()),
        }
    }

    pub fn err(delivery: Delivery, e: impl Into<StepError>) -> Self {
        Self {
            delivery,
            result: Err(Box::new(e.into())),
        }
    }

    pub fn message(&self) -> &PubSubMessage {
        &self.delivery.message
    }
}

/// An alarm the actor armed has rung; see `crate::iowait`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Alarm;

/// What became of one host's restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartOutcome {
    Restarted,
    /// Not restarted, and why (restarted too recently, or a restart already running).
    Skipped(String),
    Failed(RestartError),
}

/// One host restart, as the Restarter tells the actors that watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRestart {
    pub host: InstanceName,
    pub outcome: RestartOutcome,
}

/// The host restarts one Restarter handler call finished, sent to every watcher.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HostRestarts(pub Vec<HostRestart>);

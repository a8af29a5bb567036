//! What the pipeline's actors share: the batch the Consumer dispatches, the outcome of a
//! step, and what the Restarter tells its watchers. Messages that only one actor handles
//! sit in that actor's file, right before their `impl Handler`.

use actix::Message;
use thiserror::Error;

use crate::action::RestartError;
use crate::message::{AckId, Delivery, InstanceName};
use crate::store::StoreError;

/// The two steps every message goes through, at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Save,
    Restart,
}

/// Why a step failed for one message.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub(crate) enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Restart(#[from] RestartError),
    #[error("{0} restarted before it finished")]
    Restarted(crate::names::ChildName),
    #[error("{0} is closed")]
    Closed(crate::names::ChildName),
    #[error("{0} is stopped")]
    Stopped(crate::names::ChildName),
}

impl StepError {
    /// Whether retrying cannot help, so that the message is dead-lettered at once.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, StepError::Restart(e) if e.is_final())
    }
}

/// A batch of dispatched deliveries. The Consumer sends one batch to the Acker, the Saver
/// and the Restarter; sharing it saves two copies of every delivery.
pub(crate) type Batch = std::sync::Arc<[Delivery]>;

/// One step's result for one delivery, named by its handle: the Acker holds the rest.
/// The error is boxed: it is the rare case, and unboxed it made every outcome, and every
/// message the Acker holds, twice as large.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub tag: AckId,
    pub result: StepResult,
}

/// What one step came to.
pub(crate) type StepResult = Result<(), Box<StepError>>;

impl Outcome {
    pub(crate) fn ok(delivery: Delivery) -> Self {
        Self::ok_for(delivery.tag)
    }

    pub(crate) fn err(delivery: Delivery, e: impl Into<StepError>) -> Self {
        Self::err_for(delivery.tag, e)
    }

    pub(crate) fn ok_for(tag: AckId) -> Self {
        Self {
            tag,
            result: Ok(()),
        }
    }

    pub(crate) fn err_for(tag: AckId, e: impl Into<StepError>) -> Self {
        Self {
            tag,
            result: Err(Box::new(e.into())),
        }
    }
}

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

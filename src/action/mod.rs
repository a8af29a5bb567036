//! The restart-action contract: what the Restarter needs from whatever restarts a host.
//!
//! An action is started with a batch of jobs and returns at once; it must never block the
//! event loop it is called on. Each job's outcome arrives later, in the Restarter's
//! mailbox, as `ActionsDone`: exactly once per job, however the action batches them.
//! Because the outcome travels through the mailbox and not through a future on the
//! Restarter's context, it survives a restart of the Restarter. An action that blocks
//! (a command run and waited for) does so on a thread of its own or as a tokio task, and
//! an action with a timeout reports `TimedOut` itself.
//!
//! [`simulated::SimulatedRestarts`] is the talk's coin flip: `--failure-rate` and
//! `--io-delay`, timed by the clock thread.

pub mod command;
pub mod simulated;
pub mod webhook;

use std::time::Duration;

use actix::{Message, Recipient};
use thiserror::Error;

use uuid::Uuid;

use crate::message::{AckId, Hostname, InstanceName};

/// Why a restart failed or was refused, in words: a fixed text costs no allocation, which
/// matters when a quarter of all restarts fail.
pub type Reason = std::borrow::Cow<'static, str>;

/// Why a host restart failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RestartError {
    /// The action ran and the host did not come back.
    #[error("Could not restart {host}: {reason}")]
    Failed { host: Hostname, reason: Reason },
    /// The action did not finish within its time.
    #[error("Restarting {host} timed out after {after:?}")]
    TimedOut { host: Hostname, after: Duration },
    /// The action would not restart this host, for a reason of its own (a safety rail).
    #[error("Refused to restart {host}: {reason}")]
    Refused { host: Hostname, reason: Reason },
    /// The action could not be run at all: its command or endpoint is not there.
    #[error("restart action unavailable: {0}")]
    Unavailable(String),
}

impl RestartError {
    /// Whether retrying cannot help: the action refused the host, so its message goes
    /// to the dead letters at once rather than back to the broker.
    pub fn is_final(&self) -> bool {
        matches!(self, RestartError::Refused { .. })
    }

    /// What went wrong, without the host, which the history keeps beside it.
    pub fn detail(&self) -> Reason {
        match self {
            RestartError::Failed { reason, .. } | RestartError::Refused { reason, .. } => {
                reason.clone()
            }
            RestartError::TimedOut { after, .. } => format!("timed out after {after:?}").into(),
            RestartError::Unavailable(reason) => reason.clone().into(),
        }
    }
}

/// One host to restart, for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartJob {
    /// The delivery the restart is for, which names the outcome.
    pub id: AckId,
    /// The message that asked for it: an idempotency key for an action that wants one.
    pub message_id: Uuid,
    pub host: InstanceName,
    /// When the restart was handed to the action, in ms since the epoch, for the history.
    pub started_ms: i64,
    /// The delivery attempt that asked for it, from 1.
    pub attempt: u32,
}

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDone {
    pub job: RestartJob,
    pub result: Result<(), RestartError>,
}

/// Outcomes of jobs an action was started with, sent to the Restarter.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ActionsDone(pub Vec<JobDone>);

/// An action that cannot run at all: every restart fails as `Unavailable`, with the
/// reason, which the decider then handles.
pub struct Unavailable(pub String);

impl RestartAction for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }

    fn start(&mut self, jobs: Vec<RestartJob>, done: &Recipient<ActionsDone>) {
        let outcomes = jobs
            .into_iter()
            .map(|job| JobDone {
                job,
                result: Err(RestartError::Unavailable(self.0.clone())),
            })
            .collect();
        done.do_send(ActionsDone(outcomes));
    }
}

/// Something that restarts hosts.
pub trait RestartAction: Send + 'static {
    /// Its name in the history: `sim`, `command`.
    fn name(&self) -> &'static str;

    /// Starts restarting each job's host and returns at once, without blocking. Each
    /// job's outcome must reach `done` exactly once, whenever it is known.
    fn start(&mut self, jobs: Vec<RestartJob>, done: &Recipient<ActionsDone>);

    /// The job's outcome, if the action knows it at once without doing anything that
    /// takes time, as the simulated one does without IO; the job is then not started.
    /// Sparing such outcomes the trip through the mailbox keeps the pipeline's fastest
    /// path as fast as it was before actions had a contract.
    fn at_once(&mut self, job: &RestartJob) -> Option<Result<(), RestartError>> {
        let _ = job;
        None
    }

    /// What the action would do for a job, for the log line of a leashed restart.
    fn describe(&self, job: &RestartJob) -> String {
        let _ = job;
        String::new()
    }

    /// Gives up on every restart still running, at shutdown, once the shield is over:
    /// a command's process group is killed, so that no child outlives the service.
    fn stop(&mut self) {}
}

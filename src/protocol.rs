//! The messages every child of the tree handles, whatever it does: `Shutdown`, which stops
//! it, and `Probe`, which asks it to describe itself for the live dump. They are plain
//! values, so that broker adapters, the core actors and extensions can all answer them.

use actix::Message;

/// Stops a child at shutdown, answered once it has stopped: the Publisher stops
/// publishing, the Consumer stops pulling, the Restarter fails what is still running, the
/// Saver commits its last batch and closes the store, the Acker nacks what is left. Every
/// child handles it, and the shutdown sends it in reverse start order.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Asks an actor to describe itself, for the live dump on SIGUSR1. Every core actor
/// handles it. It waits in the mailbox behind everything sent before it, so how long the
/// answer takes shows how far behind the actor is; actix does not expose mailbox depth.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Probed")]
pub(crate) struct Probe;

/// What an actor says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Probed {
    /// Its state: running, retired, stopped, closing and so on.
    pub state: &'static str,
    /// The sizes of its own queues and tables, by name.
    pub holds: Vec<(&'static str, usize)>,
    /// The age of the oldest message it holds, where it keeps ages.
    pub oldest: Option<std::time::Duration>,
}

impl Probed {
    pub(crate) fn new(state: &'static str, holds: &[(&'static str, usize)]) -> Self {
        Self {
            state,
            holds: holds.to_vec(),
            oldest: None,
        }
    }
}

/// Says that no more messages will be published: the simulated publisher sent its last,
/// or standard input ended. A finite run ends once everything published is settled.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct InputClosed;

//! The supervision tree as its Supervisor and the shutdown see it: every child in start
//! order, with how to restart it, how to stop it, how long its stop may take, and the
//! failure counts its `Link` shares. Which children there are, and what each is wired to,
//! is the wiring's business (`crate::app`); here a child is only a name and recipients.

use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;

use super::child::{FailureCounts, RestartChild};
use crate::names::ChildName;
use crate::protocol::Shutdown;

/// One child of the tree.
#[derive(Clone)]
pub(crate) struct Member {
    pub name: ChildName,
    /// Restarts it in place, when its supervisor's strategy restarts it with a sibling.
    pub restart: Recipient<RestartChild>,
    /// Stops it at shutdown, answered once it has stopped.
    pub shutdown: Recipient<Shutdown>,
    /// How long the shutdown waits for it before going on without it.
    pub timeout: Duration,
    /// Its failures by kind, shared with its `Link`.
    pub failures: Arc<FailureCounts>,
    /// Whether the strategy restarts it with its siblings. A broker adapter stands
    /// outside, as a connection sits under a supervisor of its own in OTP: a worker's
    /// failure does not reconnect it, and its own failure restarts only itself.
    pub in_strategy: bool,
    /// What its policy does when it exits normally.
    pub restart_type: super::RestartType,
}

/// The children of one supervisor, in start order.
#[derive(Clone, Default)]
pub(crate) struct Tree {
    members: Vec<Member>,
}

impl Tree {
    /// Adds a child that has just started: it stops before every child added earlier.
    pub(crate) fn add(&mut self, member: Member) {
        self.members.push(member);
    }

    /// The children in start order, as the strategy sees them.
    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    /// The children in the order the shutdown stops them: the reverse of start order.
    pub(crate) fn stop_order(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().rev()
    }
}

//! Supervision, in one place: the policy (`policy`: failure kinds, directives, the
//! decider, restart types, shutdown timeouts), how restarts are paced (`strategy`: the
//! strategy, the intensity window, backoff), how a child survives a failure (`child`:
//! `Child`, `Link`, `guard`, `fail`), the tree of children (`tree`) and the Supervisor
//! actor that applies it all (`supervisor`).
//!
//! It sits below the actors: it knows children only by name and by the recipients they
//! give it, never by type, so that any actor, core or added from outside, can be one.

pub mod child;
pub mod policy;
pub mod strategy;
pub mod supervisor;
pub mod tree;

pub use child::{
    after_backoff, exited_normally, fail, guard, hold_for_backoff, note_restart, report_error,
    BackoffFor, Child, ChildExited, ChildFailed, FailureCounts, Link, RestartChild,
};
pub use policy::{ChildPolicy, Directive, FailureKind, RestartType};

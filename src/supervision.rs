//! The machinery that lets a child actor survive a panic: the `Child` trait, the `guard`
//! every handler runs its body in, and the report a failed child sends its supervisor.
//!
//! actix's own `Supervisor` restarts an actor only when its context stops, and a panic that
//! escapes a handler closes the mailbox for good. So the panic must never escape: `guard`
//! catches it, reports it, and stops the context, which actix's `Supervisor` then restarts
//! in place through `Supervised::restarting`. The mailbox and every `Addr` stay valid, and
//! messages queued behind the failed one are handled by the fresh incarnation.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;
use tracing::{error, warn};

use crate::metrics::Metrics;

/// Tells the supervisor that a child caught a panic and is restarting.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChildFailed {
    pub child: &'static str,
    pub kind: FailureKind,
    pub reason: String,
}

/// The kinds of failure a supervisor tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// A handler panicked.
    Panic,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Panic => "panic",
        }
    }
}

/// Asks a healthy child to restart with fresh state, because its supervisor's strategy
/// restarts it along with a failed sibling.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RestartChild {
    /// The sibling whose failure caused this restart.
    pub because: &'static str,
}

/// Implements `Handler<RestartChild>` for a child: stopping its context makes actix's
/// `Supervisor` restart it in place, through `Supervised::restarting`, exactly as after a
/// panic, minus the panic.
#[macro_export]
macro_rules! restart_on_request {
    ($child:ty) => {
        impl actix::Handler<$crate::supervision::RestartChild> for $child {
            type Result = ();
            fn handle(
                &mut self,
                msg: $crate::supervision::RestartChild,
                ctx: &mut actix::Context<Self>,
            ) {
                tracing::warn!(
                    actor = <$child as $crate::supervision::Child>::NAME,
                    "Restarting {} because {} failed",
                    <$child as $crate::supervision::Child>::NAME,
                    msg.because
                );
                actix::ActorContext::stop(ctx);
            }
        }
    };
}

/// Asks the supervisor how long a child that is starting must wait before it takes
/// messages again: its backoff, or zero.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "std::time::Duration")]
pub struct BackoffFor {
    pub child: &'static str,
}

/// What every child holds to report failures and learn its backoff.
#[derive(Clone)]
pub struct Link {
    pub supervisor: Recipient<ChildFailed>,
    pub backoff: Recipient<BackoffFor>,
    pub metrics: Arc<Metrics>,
}

/// Holds a starting child's mailbox for its backoff. Called first thing in `started`.
///
/// `ctx.wait` stops the context from taking messages until the delay is over, so
/// messages sent during the backoff stay queued in the mailbox and are handled after it,
/// in order; none is dropped. The supervisor handles the child's `ChildFailed` before
/// this question, because both travel through its mailbox in order.
pub fn hold_for_backoff<A: Child>(act: &A, ctx: &mut Context<A>) {
    let ask = act.link().backoff.send(BackoffFor { child: A::NAME });
    ctx.wait(ask.into_actor(act).then(|delay, _, _| {
        let delay = delay.unwrap_or_default();
        if !delay.is_zero() {
            warn!(
                actor = A::NAME,
                "Backing off for {delay:?} before taking messages"
            );
        }
        // No timer at all when nothing is owed: even a zero sleep waits a tick.
        actix::fut::wrap_future(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        })
    }));
}

/// A supervised actor.
///
/// The contract: a handler first moves what it was given into the actor's state, then does
/// the work that can fail. `release` hands back everything the state holds (nacking
/// messages, reporting failed outcomes), so that a panic anywhere loses nothing; the actor's
/// `Supervised::restarting` calls `release` and then replaces the state with a fresh one.
pub trait Child: Actor<Context = Context<Self>> + Supervised {
    /// The name used in logs, counters and `--inject`.
    const NAME: &'static str;

    fn link(&self) -> &Link;
}

/// Runs `f` once the context takes events again, that is after any backoff that
/// `hold_for_backoff` set up: work a child starts on its own belongs after its backoff too.
pub fn after_backoff<A: Child>(
    ctx: &mut Context<A>,
    f: impl FnOnce(&mut A, &mut Context<A>) + 'static,
) {
    ctx.spawn(actix::fut::ready(()).map(move |_, act, ctx| f(act, ctx)));
}

/// Runs a handler body, catching a panic instead of letting it close the mailbox.
///
/// On a panic it logs `Caught exception: ...`, counts it, tells the supervisor, and stops
/// the context so that actix's `Supervisor` restarts the actor with fresh state.
pub fn guard<A: Child, R>(
    act: &mut A,
    ctx: &mut Context<A>,
    body: impl FnOnce(&mut A, &mut Context<A>) -> R,
) -> Option<R> {
    let outer = GUARDED.replace(true);
    let result = catch_unwind(AssertUnwindSafe(|| body(act, ctx)));
    GUARDED.set(outer);
    match result {
        Ok(r) => Some(r),
        Err(payload) => {
            let reason = panic_text(&payload);
            error!(actor = A::NAME, "Caught exception: {reason}");
            let link = act.link();
            Metrics::inc(&link.metrics.panics);
            link.supervisor.do_send(ChildFailed {
                child: A::NAME,
                kind: FailureKind::Panic,
                reason,
            });
            ctx.stop();
            None
        }
    }
}

thread_local! {
    /// Whether the running code is inside `guard`, which reports panics itself.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Routes panic reports into the log. A panic inside `guard` is reported there as
/// `Caught exception`, so the hook only notes where it happened, at debug level; any other
/// panic is a bug outside supervision and is logged as an error.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info.location().map_or("?".into(), |l| l.to_string());
        let text = panic_text_of(info.payload());
        if GUARDED.get() {
            tracing::debug!("panic at {place}: {text}");
        } else {
            error!("Unsupervised panic at {place}: {text}");
        }
    }));
}

/// Logs and counts a restart; called from each child's `Supervised::restarting`.
pub fn note_restart<A: Child>(act: &A) {
    warn!(actor = A::NAME, "Restarting {} with fresh state", A::NAME);
    Metrics::inc(&act.link().metrics.actor_restarts);
}

/// The talk's global exception handler: every error that crosses an actor boundary is
/// logged with the actor's name and counted, here and nowhere else.
///
/// Errors about one message (a failed host restart) are per-message lines, which
/// `--log none` drops; errors about the service itself (a store that cannot commit) are
/// always logged. Both are always counted.
pub fn report_error(
    metrics: &Metrics,
    actor: &'static str,
    per_message: bool,
    err: &dyn std::fmt::Display,
) {
    Metrics::inc(&metrics.errors);
    if per_message {
        error!(target: crate::FLOW, actor, "Caught exception: {err}");
    } else {
        error!(actor, "Caught exception: {err}");
    }
}

/// The message a panic was raised with.
pub fn panic_text(payload: &Box<dyn Any + Send>) -> String {
    panic_text_of(payload.as_ref())
}

fn panic_text_of(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

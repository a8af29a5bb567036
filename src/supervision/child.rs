//! The machinery that lets a child actor survive a failure: the `Child` trait, the `guard`
//! every handler runs its body in, `fail`, which applies the child's policy, and the
//! reports a child sends its supervisor.
//!
//! actix's own `Supervisor` restarts an actor only when its context stops, and a panic that
//! escapes a handler closes the mailbox for good. So the panic must never escape: `guard`
//! catches it and hands it to `fail`, as it does a handler that overran its deadline, and
//! as the Saver and the Restarter do their errors. `fail` asks the child's `ChildPolicy`
//! (`super::policy`) for a directive and acts on it; to restart, it stops the context,
//! which actix's `Supervisor` then restarts in place through `Supervised::restarting`. The
//! mailbox and every `Addr` stay valid, and messages queued behind the failed one are
//! handled by the fresh incarnation.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, error, info, warn};

use super::policy::{ChildPolicy, Directive, FailureKind};
use crate::metrics::Metrics;
use crate::names::ChildName;

/// Tells the supervisor that a child failed, and which directive its policy chose. A
/// resumed failure is not sent: it is counted in the child's `FailureCounts` instead, so
/// that a burst of failed host restarts costs the supervisor nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChildFailed {
    pub child: ChildName,
    pub kind: FailureKind,
    pub reason: String,
    pub directive: Directive,
}

/// Tells the supervisor that a child finished its work normally, and whether its restart
/// type starts it again (`Restart`) or not (`Stop`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub child: ChildName,
    pub directive: Directive,
}

/// One child's failures by kind, counted where they happen.
#[derive(Debug, Default)]
pub struct FailureCounts([AtomicU64; FailureKind::ALL.len()]);

impl FailureCounts {
    pub(crate) fn add(&self, kind: FailureKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The kinds that happened at least once, by name.
    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        FailureKind::ALL
            .into_iter()
            .map(|k| (k.as_str(), self.0[k as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Asks a healthy child to restart with fresh state, because its supervisor's strategy
/// restarts it along with a failed sibling.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RestartChild {
    /// The sibling whose failure caused this restart.
    pub because: ChildName,
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
                    actor = <$child as $crate::supervision::Child>::NAME.as_str(),
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
    pub child: ChildName,
}

/// What a child holds to apply its policy, report to its supervisor and learn its
/// backoff. Each child has its own, made by its supervisor.
#[derive(Clone)]
pub struct Link {
    pub supervisor: Recipient<ChildFailed>,
    pub exited: Recipient<ChildExited>,
    pub backoff: Recipient<BackoffFor>,
    pub metrics: Arc<Metrics>,
    pub policy: ChildPolicy,
    pub failures: Arc<FailureCounts>,
    /// A handler that runs longer than this is a stall.
    pub deadline: Duration,
    /// A handler that runs longer than this is logged as slow, like asyncio's debug mode
    /// does for slow callbacks.
    pub slow: Duration,
    /// When the child last panicked, until its next handler call measures the recovery.
    /// The actor value outlives its restarts, and so does this.
    pub panicked_at: std::cell::Cell<Option<std::time::Instant>>,
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
                actor = A::NAME.as_str(),
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
    const NAME: ChildName;

    fn link(&self) -> &Link;

    /// Takes no more work from now on, across restarts: the `stop` directive. A retired
    /// child refuses what it is sent in the way that loses nothing (failing saves and
    /// restarts, nacking deliveries), as Akka sends a stopped actor's mail to dead letters.
    fn retire(&mut self);

    fn is_retired(&self) -> bool;
}

/// Runs `f` once the context takes events again, that is after any backoff that
/// `hold_for_backoff` set up: work a child starts on its own belongs after its backoff too.
pub fn after_backoff<A: Child>(
    ctx: &mut Context<A>,
    f: impl FnOnce(&mut A, &mut Context<A>) + 'static,
) {
    ctx.spawn(actix::fut::ready(()).map(move |_, act, ctx| f(act, ctx)));
}

/// Runs a handler body, catching a panic instead of letting it close the mailbox, and
/// timing it against the child's deadline. `what` names the message or timer handled, for
/// the slow-handler warning and the handling-time histogram.
///
/// Timing costs two clock reads per call, and calls handle whole batches, so the check
/// stays on in production: the benchmarks saw no difference with it.
///
/// A panic is logged as `Caught exception: ...` and counted, then goes to `fail` like
/// any other failure; so does a body that overran its deadline, after it returned. A stall
/// cannot be cut short: the handler holds the thread until it returns, which is exactly
/// the harm a stall does to every actor on that thread.
pub fn guard<A: Child, R>(
    act: &mut A,
    ctx: &mut Context<A>,
    what: &'static str,
    body: impl FnOnce(&mut A, &mut Context<A>) -> R,
) -> Option<R> {
    let started = std::time::Instant::now();
    if let Some(at) = act.link().panicked_at.take() {
        act.link().metrics.panic_recovery.record(started - at);
    }
    let result = catch_unwind(AssertUnwindSafe(|| body(act, ctx)));
    match result {
        Ok(r) => {
            let took = started.elapsed();
            metrics::histogram!("mandrill_handler_seconds", "actor" => A::NAME.as_str(), "message" => what)
                .record(took.as_secs_f64());
            if took > act.link().slow {
                warn!(
                    actor = A::NAME.as_str(),
                    message = what,
                    ms = took.as_secs_f64() * 1000.0,
                    "Slow handler: {} took {:.1} ms to handle {what}",
                    A::NAME,
                    took.as_secs_f64() * 1000.0
                );
            }
            let deadline = act.link().deadline;
            if took > deadline && ctx.state() == ActorState::Running {
                let reason =
                    format!("a handler ran for {took:?}, past its deadline of {deadline:?}");
                error!(actor = A::NAME.as_str(), "Caught exception: {reason}");
                fail(act, ctx, FailureKind::Stall, &reason);
            }
            Some(r)
        }
        Err(payload) => {
            let reason = crate::units::panic_text(payload.as_ref());
            error!(actor = A::NAME.as_str(), "Caught exception: {reason}");
            Metrics::inc(&act.link().metrics.panics);
            act.link().panicked_at.set(Some(std::time::Instant::now()));
            fail(act, ctx, FailureKind::Panic, &reason);
            None
        }
    }
}

/// Applies the child's policy to one failure: counts it, then acts on the directive.
///
/// - `Resume` keeps the state and the context as they are; the caller has already failed
///   the work that went wrong, so its messages are nacked.
/// - `Restart` and `RestartWithBackoff` stop the context, which actix's `Supervisor`
///   restarts in place with fresh state; the backoff, if any, is owed by the supervisor.
/// - `Stop` and `Escalate` retire the child, then restart it the same way, so that its
///   `restarting` hands back what the failed state held; the fresh incarnation refuses
///   all work. The supervisor escalates on `Escalate`.
///
/// Every directive but `Resume` is reported to the supervisor. After anything but
/// `Resume`, the caller must not touch the state again: it is about to be replaced.
pub fn fail<A: Child>(
    act: &mut A,
    ctx: &mut Context<A>,
    kind: FailureKind,
    reason: &dyn std::fmt::Display,
) -> Directive {
    let link = act.link();
    link.failures.add(kind);
    let directive = link.policy.on_failure(kind);
    if directive == Directive::Resume {
        debug!(
            actor = A::NAME.as_str(),
            kind = kind.as_str(),
            directive = "resume",
            "Supervision: resuming after {reason}"
        );
        return directive;
    }
    warn!(
        actor = A::NAME.as_str(),
        kind = kind.as_str(),
        directive = directive.as_str(),
        reason = %reason,
        "Supervision: {} failed ({kind}); directive {}",
        A::NAME,
        directive.as_str()
    );
    link.supervisor.do_send(ChildFailed {
        child: A::NAME,
        kind,
        reason: reason.to_string(),
        directive,
    });
    if matches!(directive, Directive::Stop | Directive::Escalate) {
        act.retire();
    }
    ctx.stop();
    directive
}

/// Tells the supervisor that the child finished its work normally, and returns what its
/// restart type says: `Restart` if it will be started again, `Stop` if not.
pub fn exited_normally<A: Child>(act: &A) -> Directive {
    let directive = act.link().policy.on_normal_exit();
    info!(
        actor = A::NAME.as_str(),
        directive = directive.as_str(),
        restart_type = act.link().policy.restart.as_str(),
        "Supervision: {} finished normally",
        A::NAME
    );
    act.link().exited.do_send(ChildExited {
        child: A::NAME,
        directive,
    });
    directive
}

/// Logs and counts a restart; called from each child's `Supervised::restarting`. A
/// retired child's last "restart" only swaps its failed state for an idle one, and is
/// not counted.
pub fn note_restart<A: Child>(act: &A) {
    if act.is_retired() {
        warn!(
            actor = A::NAME.as_str(),
            "Stopped {}; it takes no more work",
            A::NAME
        );
        return;
    }
    warn!(
        actor = A::NAME.as_str(),
        "Restarting {} with fresh state",
        A::NAME
    );
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

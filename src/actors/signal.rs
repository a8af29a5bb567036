//! `SignalActor`: owns OS signals and the ordered shutdown.
//!
//! It is the only code that touches OS signals. A signal, the end of input, the end of a
//! `--messages` run, or an escalation from the Supervisor starts the shutdown, whose
//! phases stand in `shutdown` below and nowhere else. It stops the children in reverse
//! start order, each within its own shutdown timeout: first those that take work in (the
//! Publisher and the Consumer), then, after draining and nacking through the Acker and
//! shielding running restarts, the Restarter, the Saver (which closes the store) and the
//! Acker. Then it writes the run report.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::time::{timeout, Instant};
use tracing::{error, info, warn};

use crate::actors::acker::{InFlight, ReleaseOutstanding, WhenIdle};
use crate::actors::monitor::{Dump, Monitor, MonitorConfig};
use crate::actors::restarter::Reconfigure;
use crate::actors::restarter::Running;
use crate::actors::Pipeline;
use crate::broker::Pending;
use crate::logging::LogLevel;
use crate::metrics::Metrics;
use crate::names::{ChildName, Signal};
use crate::protocol::{InputClosed, Shutdown};
use crate::report::Report;
use crate::supervision::supervisor::{Escalate, SupervisionStats};
use crate::supervision::tree::Member;

/// Bounds every request the shutdown makes that has no timeout of its own, so that a
/// wedged actor cannot hang it.
const ASK: Duration = Duration::from_secs(2);
/// How often a finite run whose input is closed asks the broker whether anything is
/// still pending.
const SETTLED_POLL: Duration = Duration::from_millis(10);

/// Why the service is stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Signal(Signal),
    /// The simulated publisher sent its `--messages` and every one is settled, or a
    /// remote source settled its `--messages`.
    Done,
    /// Standard input ended and every message is settled.
    Eof,
    /// Nothing was pulled for `--idle-exit`.
    Idle,
    Escalation {
        child: ChildName,
        reason: String,
    },
}

impl Cause {
    fn stopped_by(&self) -> String {
        match self {
            Cause::Signal(signal) => signal.name().to_string(),
            Cause::Done => "done".into(),
            Cause::Eof => "eof".into(),
            Cause::Idle => "idle".into(),
            Cause::Escalation { .. } => "escalation".into(),
        }
    }

    fn exit_code(&self) -> i32 {
        match self {
            Cause::Escalation { .. } => 1,
            _ => 0,
        }
    }
}

/// What SIGHUP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnSighup {
    /// The ordered shutdown, as SIGINT and SIGTERM: the talk's.
    #[default]
    Shutdown,
    /// Read the config file again and apply what can change while the service runs.
    Reload,
}

/// What a reload of the configuration changes while the service runs.
pub struct LiveSettings {
    pub log_level: LogLevel,
    /// The Restarter's new rails, leash, interval and action.
    pub restarter: Reconfigure,
    /// Settings that changed but cannot change live; they keep their old values.
    pub fixed: Vec<&'static str>,
}

/// Reads the configuration again and says what to change, or why it cannot; it reads a
/// file, so it runs on a blocking thread.
#[derive(Clone)]
pub struct Reloader(pub Arc<dyn Fn() -> Result<LiveSettings, String> + Send + Sync>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// How the service stops; each child's own shutdown timeout stands in the tree.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long in-flight messages may finish before the rest are nacked.
    pub drain: Duration,
    /// How long restarts already running are waited for.
    pub shield: Duration,
    /// Off in in-process tests, which must not take over the test runner's signals.
    pub handle_signals: bool,
    /// What ends a finite run once everything is settled: `Done` when the publisher
    /// sent its last message, `Eof` at the end of input.
    pub settled_cause: Cause,
    pub on_sighup: OnSighup,
    /// For a source with no end of its own (a remote broker): end once this many
    /// messages are settled, acked or dead-lettered.
    pub settle_target: Option<u64>,
    /// End once nothing has been pulled for this long.
    pub idle_exit: Option<Duration>,
    /// How to reload, with `OnSighup::Reload`.
    pub reloader: Option<Reloader>,
    /// For a remote broker, how the report's `published` and `pending_at_exit` were
    /// taken.
    pub broker_counts: Option<&'static str>,
}

/// Where the report goes once written; `crate::app::run` collects it.
pub type ReportSlot = Arc<Mutex<Option<Report>>>;

pub struct SignalActor {
    pipeline: Pipeline,
    monitor: Addr<Monitor>,
    config: ShutdownConfig,
    metrics: Arc<Metrics>,
    started: Instant,
    shutting_down: bool,
    /// Whether the input is closed, and whether a question to the broker about what is
    /// pending is out.
    input_closed: bool,
    asking: bool,
    report: ReportSlot,
}

impl SignalActor {
    pub fn new(
        pipeline: Pipeline,
        config: ShutdownConfig,
        monitor: MonitorConfig,
        metrics: Arc<Metrics>,
        report: ReportSlot,
    ) -> Self {
        // Started plainly, not supervised: it only reads, and nothing it does can fail
        // the service.
        let monitor = Monitor::new(pipeline.clone(), monitor, metrics.clone()).start();
        Self {
            pipeline,
            monitor,
            config,
            metrics,
            started: Instant::now(),
            shutting_down: false,
            input_closed: false,
            asking: false,
            report,
        }
    }

    fn begin(&mut self, cause: Cause, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        // The readiness probe fails from the first moment of the shutdown, so that a
        // load balancer sends no more work here.
        self.metrics.health.set_stopping();
        let stopping_at = Instant::now();
        let run = shutdown(
            self.pipeline.clone(),
            cause,
            self.config.clone(),
            self.metrics.clone(),
            self.started,
            stopping_at,
        );
        ctx.spawn(run.into_actor(self).map(|report, act, _| {
            let code = report.exit_code;
            *act.report.lock().expect("report slot") = Some(report);
            System::current().stop_with_code(code);
        }));
    }

    #[cfg(unix)]
    fn listen(&self, ctx: &mut Context<Self>) {
        use actix_rt::signal::unix::{signal, SignalKind};
        // Signals caught since the start of `main` are taken over, those that came
        // already included; their handlers stay the only ones, so no signal is read
        // twice.
        let early = EARLY.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut signals) = early {
            let me = ctx.address();
            let forward = move || {
                for number in signals.forever() {
                    if let Some(&sig) = Signal::ALL.iter().find(|s| s.number() == number) {
                        me.do_send(OsSignal(sig));
                    }
                }
            };
            let spawned = std::thread::Builder::new()
                .name("mandrill-signals".into())
                .spawn(forward);
            if let Err(e) = spawned {
                error!("Cannot listen for signals: {e}");
            }
            return;
        }
        for sig in Signal::ALL {
            let kind = match sig {
                Signal::Int => SignalKind::interrupt(),
                Signal::Term => SignalKind::terminate(),
                Signal::Hup => SignalKind::hangup(),
                Signal::Usr1 => SignalKind::user_defined1(),
                Signal::Quit => SignalKind::quit(),
            };
            match signal(kind) {
                Ok(mut stream) => {
                    let me = ctx.address();
                    actix_rt::spawn(async move {
                        while stream.recv().await.is_some() {
                            me.do_send(OsSignal(sig));
                        }
                    });
                }
                Err(e) => error!("Cannot listen for {sig}: {e}"),
            }
        }
    }

    /// Without Unix signals, Ctrl-C is all there is, and `ctrlc` delivers it.
    #[cfg(not(unix))]
    fn listen(&self, ctx: &mut Context<Self>) {
        let me = ctx.address();
        if let Err(e) = ctrlc::set_handler(move || me.do_send(OsSignal(Signal::Int))) {
            error!("Cannot listen for Ctrl-C: {e}");
        }
    }
}

/// The service's signals, caught from the first moment of `main` and held until the
/// SignalActor listens: a signal that came before would take its default action, and end
/// the process without its report, or leave a new SQLite file without its tables.
#[cfg(unix)]
static EARLY: Mutex<Option<signal_hook::iterator::Signals>> = Mutex::new(None);

/// Catches every signal the service acts on from now on, holding them until the
/// SignalActor listens. For the service's own run only: a subcommand keeps the default
/// actions, so that a signal still ends it.
#[cfg(unix)]
pub(crate) fn catch_early() -> std::io::Result<()> {
    let signals = signal_hook::iterator::Signals::new(Signal::ALL.map(Signal::number))?;
    *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Some(signals);
    Ok(())
}

impl Actor for SignalActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.config.handle_signals {
            self.listen(ctx);
        }
        if self.config.settle_target.is_some() || self.config.idle_exit.is_some() {
            let mut last = (0, Instant::now());
            ctx.run_interval(SETTLED_POLL, move |act, ctx| {
                if act.shutting_down {
                    return;
                }
                let c = act.metrics.snapshot();
                if act
                    .config
                    .settle_target
                    .is_some_and(|n| c.acked + c.dead_lettered >= n)
                {
                    return act.begin(Cause::Done, ctx);
                }
                if c.consumed != last.0 {
                    last = (c.consumed, Instant::now());
                } else if act.config.idle_exit.is_some_and(|s| last.1.elapsed() >= s) {
                    info!(
                        "Nothing pulled for {:?}",
                        act.config.idle_exit.unwrap_or_default()
                    );
                    act.begin(Cause::Idle, ctx);
                }
            });
        }
    }
}

/// Starts watching for the end of a finite run (`--messages`, or the end of stdin): once
/// the input is closed, the run ends when the broker holds nothing pending. The broker's
/// own count decides, so that this works alike for every broker.
impl Handler<InputClosed> for SignalActor {
    type Result = ();
    fn handle(&mut self, _: InputClosed, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.input_closed, true) {
            return;
        }
        ctx.run_interval(SETTLED_POLL, |act, ctx| {
            if act.shutting_down || act.asking {
                return;
            }
            act.asking = true;
            let ask = act.pipeline.broker.pending.send(Pending);
            ctx.spawn(ask.into_actor(act).map(|pending, act, ctx| {
                act.asking = false;
                if let Ok(Ok(0)) = pending {
                    let cause = act.config.settled_cause.clone();
                    act.begin(cause, ctx);
                }
            }));
        });
    }
}

/// A named OS signal arrived.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OsSignal(pub Signal);

impl Handler<OsSignal> for SignalActor {
    type Result = ();
    fn handle(&mut self, OsSignal(sig): OsSignal, ctx: &mut Context<Self>) {
        match sig {
            Signal::Usr1 => {
                info!("Received SIGUSR1; dumping the service's state, which does not stop it");
                self.monitor.do_send(Dump);
            }
            Signal::Quit => info!("Received {sig}; it does not stop the service"),
            Signal::Int | Signal::Term if self.shutting_down => {
                let code = sig.exit_status();
                error!("Received {sig} again during shutdown; exiting now with status {code}");
                crate::logging::flush();
                std::process::exit(code);
            }
            Signal::Hup if self.config.on_sighup == OnSighup::Reload && !self.shutting_down => {
                info!("Received SIGHUP; reloading the configuration");
                self.reload(ctx);
            }
            Signal::Int | Signal::Term | Signal::Hup => self.begin(Cause::Signal(sig), ctx),
        }
    }
}

impl SignalActor {
    /// Reads the configuration again on a blocking thread, then applies what can change
    /// live. A configuration that does not parse changes nothing.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let Some(Reloader(read)) = self.config.reloader.clone() else {
            warn!("Nothing to reload from; the configuration stays as it is");
            return;
        };
        self.metrics.health.reloading();
        let read = actix_rt::task::spawn_blocking(move || read());
        ctx.spawn(read.into_actor(self).map(|res, act, _| {
            // The old configuration or the new one, the service is ready again.
            act.metrics.health.reloaded();
            let settings = match res {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return error!("Cannot reload the configuration; the old one stays: {e}")
                }
                Err(e) => return error!("Cannot reload the configuration; the old one stays: {e}"),
            };
            if let Err(e) = crate::logging::set_level(settings.log_level) {
                warn!("Cannot change the log level: {e}");
            }
            if !settings.fixed.is_empty() {
                warn!(
                    "These settings cannot change while the service runs and keep their \
                     values: {}",
                    settings.fixed.join(", ")
                );
            }
            act.pipeline.restarter.do_send(settings.restarter);
            info!("Reloaded the configuration");
        }));
    }
}

/// Starts the ordered shutdown, unless it has started already.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Begin(pub Cause);

impl Handler<Begin> for SignalActor {
    type Result = ();
    fn handle(&mut self, Begin(cause): Begin, ctx: &mut Context<Self>) {
        self.begin(cause, ctx);
    }
}

impl Handler<Escalate> for SignalActor {
    type Result = ();
    fn handle(&mut self, e: Escalate, ctx: &mut Context<Self>) {
        self.begin(
            Cause::Escalation {
                child: e.child,
                reason: e.reason,
            },
            ctx,
        );
    }
}

/// Waits for `fut` up to `limit`, saying so if it ran out.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Option<T> {
    match timeout(limit, fut).await {
        Ok(v) => Some(v),
        Err(_) => {
            warn!("Gave up waiting for {what} after {limit:?}");
            None
        }
    }
}

/// Stops one child, waiting for it up to its shutdown timeout. A child that does not
/// answer in time is left behind, as OTP's `brutal_kill` after a timeout leaves a child
/// that would not stop: the shutdown goes on, and the process exit ends it.
async fn stop_child(child: &Member, killed: &mut Vec<&'static str>) {
    let what = format!("{} to stop", child.name);
    if within(child.timeout, &what, child.shutdown.send(Shutdown))
        .await
        .is_none()
    {
        error!(
            child = child.name.as_str(),
            "Supervision: {} did not stop within {:?}; going on without it",
            child.name,
            child.timeout
        );
        killed.push(child.name.as_str());
    }
}

/// The ordered shutdown. Each phase logs one line and is bounded by a timeout.
async fn shutdown(
    pipeline: Pipeline,
    cause: Cause,
    timeouts: ShutdownConfig,
    metrics: Arc<Metrics>,
    run_started: Instant,
    stopping_at: Instant,
) -> Report {
    // 1. Stop intake.
    match &cause {
        Cause::Signal(sig) => info!("Received exit signal {sig}..."),
        Cause::Done => info!("Published every message and all are settled; shutting down..."),
        Cause::Eof => info!("Input ended and all messages are settled; shutting down..."),
        Cause::Idle => info!("Nothing to pull for a while; shutting down..."),
        Cause::Escalation { child, reason } => {
            error!("Supervisor escalated a failure of {child} ({reason}); shutting down...")
        }
    }
    //    The children stop in reverse start order, those that take work in first, up to
    //    and including the Consumer.
    let mut killed = Vec::new();
    let order: Vec<Member> = pipeline.tree.stop_order().cloned().collect();
    let mut order = order.iter();
    for child in order.by_ref() {
        stop_child(child, &mut killed).await;
        if child.name == ChildName::Consumer {
            break;
        }
    }

    // 2. Drain: let in-flight messages finish normally.
    let n = within(ASK, "the in-flight count", pipeline.acker.send(InFlight)).await;
    info!(
        "Draining {} in-flight messages for up to {:?}",
        n.and_then(Result::ok).unwrap_or(0),
        timeouts.drain
    );
    if !timeouts.drain.is_zero() {
        if let Some(Ok(idle)) = within(ASK, "the acker", pipeline.acker.send(WhenIdle)).await {
            within(timeouts.drain, "the drain", idle).await;
        }
    }

    // 3. Nack what is left, except messages whose restart is running: those are shielded
    //    until they finish or the shield timeout passes.
    //    With no shield, nothing is kept, and one pass nacks everything.
    let keep = if timeouts.shield.is_zero() {
        Default::default()
    } else {
        within(ASK, "the restarter", pipeline.restarter.send(Running))
            .await
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let release = pipeline
        .acker
        .send(ReleaseOutstanding { keep: keep.clone() });
    let n = within(ASK, "the acker", release).await.and_then(Result::ok);
    info!("Nacking {} outstanding messages", n.unwrap_or(0));
    if !keep.is_empty() {
        info!(
            "Waiting up to {:?} for {} shielded restarts",
            timeouts.shield,
            keep.len()
        );
        if let Some(Ok(idle)) = within(ASK, "the acker", pipeline.acker.send(WhenIdle)).await {
            within(timeouts.shield, "shielded restarts", idle).await;
        }
        let release = pipeline.acker.send(ReleaseOutstanding {
            keep: Default::default(),
        });
        if let Some(Ok(late)) = within(ASK, "the acker", release).await {
            if late > 0 {
                warn!("Nacked {late} messages whose restarts outlived the shield timeout");
            }
        }
    }

    // 4. Stop the other children, in the same reverse start order: the Restarter, the
    //    Saver (which commits its last batch and closes the store), the Acker.
    for child in order {
        stop_child(child, &mut killed).await;
    }

    // 5. Write the run report, and flush it to the metrics exporter.
    info!("Flushing metrics");
    // Every child has stopped, and the Acker only once the broker confirmed all it was
    // sent: the counts are final, and what the broker holds is what was not settled.
    let pending = within(ASK, "the broker", pipeline.broker.pending.send(Pending))
        .await
        .and_then(Result::ok);
    let pending = match pending {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            error!("Cannot tell what the broker still holds: {e}");
            0
        }
        None => 0,
    };
    let supervision = within(
        ASK,
        "the supervisor",
        pipeline.supervisor.send(SupervisionStats),
    )
    .await
    .and_then(Result::ok)
    .unwrap_or_default();
    let counts = metrics.snapshot();
    let last_outcome = Duration::from_nanos(
        metrics
            .last_outcome_ns
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let elapsed = match cause {
        // A run that ended by itself is timed to its last outcome, not through the wait
        // that ended it.
        Cause::Done | Cause::Eof | Cause::Idle if !last_outcome.is_zero() => last_outcome,
        _ => stopping_at - run_started,
    };
    let elapsed_s = elapsed.as_secs_f64();
    let report = Report {
        counts,
        pending_at_exit: pending,
        broker_counts: timeouts.broker_counts,
        elapsed_s,
        msgs_per_s: if elapsed_s > 0.0 {
            (counts.acked + counts.nacked) as f64 / elapsed_s
        } else {
            0.0
        },
        shutdown_s: stopping_at.elapsed().as_secs_f64(),
        stopped_by: cause.stopped_by(),
        exit_code: cause.exit_code(),
        escalation: match &cause {
            Cause::Escalation { child, reason } => Some(format!("{child}: {reason}")),
            _ => None,
        },
        supervision,
        refused: metrics.refusals(),
        killed_at_shutdown: killed,
        ack_latency_ms: metrics.ack_latency.percentiles(),
        panic_recovery_ms: metrics.panic_recovery.percentiles(),
        loop_lag_ms: metrics.loop_lag.percentiles(),
    };
    report.export();
    if let Some(feed) = crate::dashboard::feed() {
        // The page's last word: the report itself, so its figures are the report's.
        feed.snapshot(serde_json::json!({
            "type": "final",
            "t_ms": crate::dashboard::now_ms(),
            "report": report,
        }));
    }

    // 6. Done.
    info!("Shutdown complete.");
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that answers `Shutdown` after `takes`, or never.
    struct Slow {
        takes: Option<Duration>,
    }

    impl Actor for Slow {
        type Context = Context<Self>;
    }

    impl Handler<Shutdown> for Slow {
        type Result = ResponseFuture<()>;
        fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
            let takes = self.takes;
            Box::pin(async move {
                match takes {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            })
        }
    }

    /// Stands in for the restart request, which the shutdown never sends.
    impl Handler<crate::supervision::RestartChild> for Slow {
        type Result = ();
        fn handle(&mut self, _: crate::supervision::RestartChild, _: &mut Context<Self>) {}
    }

    fn entry(name: &'static str, takes: Option<Duration>) -> Member {
        let slow = Slow { takes }.start();
        Member {
            name: ChildName::Extension(name),
            restart: slow.clone().recipient(),
            shutdown: slow.recipient(),
            timeout: Duration::from_secs(5),
            failures: Default::default(),
            in_strategy: true,
            restart_type: crate::supervision::RestartType::Permanent,
        }
    }

    #[actix_rt::test]
    async fn a_child_past_its_shutdown_timeout_is_left_behind_and_reported() {
        tokio::time::pause();
        let mut killed = Vec::new();
        let start = Instant::now();
        stop_child(&entry("prompt", Some(Duration::from_secs(4))), &mut killed).await;
        assert!(killed.is_empty());
        assert_eq!(start.elapsed().as_secs(), 4, "waited for the prompt child");
        stop_child(&entry("wedged", None), &mut killed).await;
        assert_eq!(killed, ["wedged"]);
        assert_eq!(start.elapsed().as_secs(), 9, "gave up after the timeout");
    }
}

//! `Monitor`: owns the service's view of itself while it runs.
//!
//! It measures event-loop lag (aiodebug's `monitor_loop_lag`, in actor form), feeds the
//! metrics exporter from the run's counters once a second, prints the status line, and
//! logs the live dump when the SignalActor passes on SIGUSR1. It only reads: it asks the
//! tree's actors to describe themselves with `Probe` and never changes what they do.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use crate::actors::acker::InFlight;
use crate::actors::Pipeline;
use crate::metrics::Metrics;
use crate::protocol::{Probe, Probed};
use crate::supervision::supervisor::{SupervisionStats, TreeView};

/// How often the lag timer is due. Short enough to see a stall of a tenth of a second,
/// long enough to cost nothing.
const LAG_EVERY: Duration = Duration::from_millis(50);
/// How often the exporter is fed from the counters.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// The states in which a broker adapter describes itself as connected.
const CONNECTED: [&str; 2] = ["open", "connected"];
/// How long the dump waits for each actor's answer.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// What the Monitor watches for and how often it reports.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// A loop lag of this much or more logs a warning.
    pub lag_warn: Duration,
    /// How often to print the status line, if at all.
    pub status_every: Option<Duration>,
}

pub struct Monitor {
    tree: Pipeline,
    metrics: Arc<Metrics>,
    lag_warn: Duration,
    status_every: Option<Duration>,
    /// The last lag measured, and in-flight count heard, for the status line and gauges.
    last_lag: Duration,
    in_flight: usize,
    /// Outcomes and time at the last status line, for its rate.
    last_status: (u64, Instant),
}

impl Monitor {
    pub fn new(tree: Pipeline, config: MonitorConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            tree,
            metrics,
            lag_warn: config.lag_warn,
            status_every: config.status_every,
            last_lag: Duration::ZERO,
            in_flight: 0,
            last_status: (0, Instant::now()),
        }
    }

    /// Arms the lag timer: it is due `LAG_EVERY` from now, and how late it runs is the
    /// time the loop spent on other work past that point.
    fn arm_lag_timer(&self, ctx: &mut Context<Self>) {
        let due = Instant::now() + LAG_EVERY;
        ctx.run_later(LAG_EVERY, move |act, ctx| {
            let lag = Instant::now().saturating_duration_since(due);
            act.last_lag = lag;
            act.metrics.health.beat();
            act.metrics.loop_lag.record(lag);
            metrics::gauge!("mandrill_loop_lag_seconds_last").set(lag.as_secs_f64());
            metrics::histogram!("mandrill_loop_lag_seconds").record(lag.as_secs_f64());
            if lag >= act.lag_warn {
                warn!(
                    lag_ms = lag.as_secs_f64() * 1000.0,
                    "Event loop lag: a timer ran {:.1} ms late; some handler held the loop",
                    lag.as_secs_f64() * 1000.0
                );
            }
            act.arm_lag_timer(ctx);
        });
    }

    /// Feeds the exporter: counters from the atomics, the in-flight gauge from the Acker,
    /// each child's supervision counters from the Supervisor. Tells the readiness probe
    /// whether the broker and the store are connected, as their actors describe themselves.
    fn export(&mut self, ctx: &mut Context<Self>) {
        self.metrics.snapshot().export();
        for (rail, n) in self.metrics.refusals() {
            metrics::counter!("mandrill_refused_total", "rail" => rail).absolute(n);
        }
        let stats = self.tree.supervisor.send(SupervisionStats);
        ctx.spawn(stats.into_actor(self).map(|stats, _, _| {
            if let Ok(stats) = stats {
                crate::report::export_supervision(&stats);
            }
        }));
        if let Some(feed) = crate::dashboard::feed() {
            self.feed_dashboard(feed.clone(), ctx);
        }
        let broker = probe("subscription", self.tree.broker.probe.clone());
        let store = probe("saver", self.tree.saver.clone().recipient());
        let health = self.metrics.health.clone();
        ctx.spawn(
            async move {
                let (broker, store) = (broker.await.1, store.await.1);
                let up = broker.is_some_and(|p| CONNECTED.contains(&p.state))
                    && store.is_some_and(|p| p.state == "running");
                health.set_connected(up);
            }
            .into_actor(self),
        );
        let ask = self.tree.acker.send(InFlight);
        ctx.spawn(ask.into_actor(self).map(|n, act, _| {
            if let Ok(n) = n {
                act.in_flight = n;
                metrics::gauge!("mandrill_in_flight").set(n as f64);
            }
        }));
    }

    /// Gives the dashboard what the page draws between events: the counters, what is in
    /// flight, the rails' refusals, and the tree as the Supervisor sees it.
    fn feed_dashboard(&self, feed: Arc<crate::dashboard::Feed>, ctx: &mut Context<Self>) {
        let view = self.tree.supervisor.send(TreeView);
        ctx.spawn(view.into_actor(self).map(move |tree, act, _| {
            let Ok(tree) = tree else { return };
            let m = &act.metrics;
            feed.snapshot(serde_json::json!({
                "type": "snapshot",
                "t_ms": crate::dashboard::now_ms(),
                "elapsed_s": m.started.elapsed().as_secs_f64(),
                "counts": m.snapshot(),
                "in_flight": act.in_flight,
                "lag_ms": act.last_lag.as_secs_f64() * 1000.0,
                "refused": m.refusals(),
                "stopping": m.health.stopping(),
                "dropped": feed.dropped(),
                "tree": tree,
            }));
        }));
    }

    fn status(&mut self) {
        let c = self.metrics.snapshot();
        let outcomes = c.acked + c.nacked + c.dead_lettered;
        let (before, at) = self.last_status;
        let secs = at.elapsed().as_secs_f64().max(1e-9);
        self.last_status = (outcomes, Instant::now());
        info!(
            "Status: {:.0} msgs/s, {} in flight, {} acked, {} nacked, {} host restarts, \
             {} actor restarts, lag {:.1} ms",
            (outcomes - before) as f64 / secs,
            self.in_flight,
            c.acked,
            c.nacked,
            c.restarted,
            c.actor_restarts,
            self.last_lag.as_secs_f64() * 1000.0
        );
    }
}

impl Actor for Monitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arm_lag_timer(ctx);
        ctx.run_interval(EXPORT_EVERY, |act, ctx| act.export(ctx));
        if let Some(every) = self.status_every {
            ctx.run_interval(every, |act, _| act.status());
        }
    }
}

/// Asks one actor to describe itself, timing the answer; gives the dump's line for it and
/// the answer, if there was one.
async fn probe(name: &'static str, addr: Recipient<Probe>) -> (String, Option<Probed>) {
    if !addr.connected() {
        return (format!("{name}: mailbox closed"), None);
    }
    let asked = Instant::now();
    match timeout(PROBE_WAIT, addr.send(Probe)).await {
        Ok(Ok(p)) => (describe(name, &p, asked.elapsed()), Some(p)),
        Ok(Err(e)) => (format!("{name}: {e}"), None),
        Err(_) => (
            format!("{name}: busy, no answer within {PROBE_WAIT:?}"),
            None,
        ),
    }
}

fn describe(name: &str, p: &Probed, answered_in: Duration) -> String {
    let holds: Vec<String> = p.holds.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let oldest = p
        .oldest
        .map(|d| format!(", oldest {:.3} s", d.as_secs_f64()))
        .unwrap_or_default();
    format!(
        "{name}: {}; {}{oldest}; answered in {} µs",
        p.state,
        holds.join(" "),
        answered_in.as_micros()
    )
}

/// Logs a snapshot of every actor, then carries on; sent by the SignalActor on SIGUSR1.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Dump;

impl Handler<Dump> for Monitor {
    type Result = ();
    fn handle(&mut self, _: Dump, ctx: &mut Context<Self>) {
        let tree = self.tree.clone();
        let metrics = self.metrics.clone();
        let lag = self.last_lag;
        ctx.spawn(
            async move {
                let mut lines = Vec::new();
                if let Some(p) = &tree.publisher {
                    lines.push(probe("publisher", p.clone().recipient()).await.0);
                }
                lines.push(probe("subscription", tree.broker.probe.clone()).await.0);
                lines.push(probe("consumer", tree.consumer.clone().recipient()).await.0);
                lines.push(probe("saver", tree.saver.clone().recipient()).await.0);
                lines.push(
                    probe("restarter", tree.restarter.clone().recipient())
                        .await
                        .0,
                );
                let (line, acker) = probe("acker", tree.acker.clone().recipient()).await;
                lines.push(line);
                let stats = timeout(PROBE_WAIT, tree.supervisor.send(SupervisionStats)).await;
                (lines, acker, stats, metrics, lag)
            }
            .into_actor(self)
            .map(|(lines, acker, stats, metrics, lag), _, _| {
                let (in_flight, oldest) = match acker {
                    Some(p) => (
                        p.holds.first().map_or(0, |h| h.1).to_string(),
                        p.oldest
                            .map_or("none".into(), |d| format!("{:.3} s", d.as_secs_f64())),
                    ),
                    None => ("unknown".into(), "unknown".into()),
                };
                let c = metrics.snapshot();
                info!(
                    "Dump: {in_flight} in flight, oldest in flight {oldest}, loop lag {:.1} ms; \
                     published {}, acked {}, nacked {}, dead-lettered {}, panics {}, \
                     actor restarts {}",
                    lag.as_secs_f64() * 1000.0,
                    c.published,
                    c.acked,
                    c.nacked,
                    c.dead_lettered,
                    c.panics,
                    c.actor_restarts
                );
                for line in lines {
                    info!("Dump: {line}");
                }
                match stats {
                    Ok(Ok(stats)) => {
                        for (child, s) in stats {
                            info!(
                                "Dump: supervision {child}: failures {:?}, restarts {}, \
                                 escalations {}, stopped {}, backoff {:.3} s",
                                s.failures, s.restarts, s.escalations, s.stopped, s.backoff_s
                            );
                        }
                    }
                    _ => warn!("Dump: the supervisor did not answer"),
                }
                info!("Dump: end; the service carries on");
            }),
        );
    }
}

//! `Restarter`: owns host restarts and the index of when each host was last restarted.
//!
//! It receives deliveries from the Consumer, skips hosts restarted less than the minimum
//! interval ago (the talk's "block when needed"), simulates the rest, records successful
//! restarts in the store's history, and sends outcomes to the Acker. The SignalActor asks
//! it which restarts are running (`Running`), so that the shutdown shields them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use rand::{rngs::SmallRng, Rng};
use tokio::time::Instant;
use tracing::info;

use crate::action::RestartError;
use crate::actors::acker::Outcomes;
use crate::actors::protocol::{
    Batch, HostRestart, HostRestarts, Outcome, RestartOutcome, Step, StepError,
};
use crate::faults::Injector;
use crate::iowait::draw_io;
use crate::iowait::Alarm;
use crate::iowait::{AlarmClock, IoWait};
use crate::message::{AckId, Delivery, InstanceName};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::store::{LoadRestarts, RecordRestarts, RestartRow};
use crate::supervision::{fail, guard, note_restart, report_error, Child, Directive, Link};
use crate::{FastSet, FLOW};

/// How restarts behave.
#[derive(Debug, Clone)]
pub struct RestarterConfig {
    /// Each restart takes `random() * io_delay`, or exactly `io_delay` without jitter.
    pub io_delay: Duration,
    pub io_jitter: bool,
    /// What ends the simulated IO.
    pub io_clock: AlarmClock,
    pub failure_rate: f64,
    /// Hosts restarted less than this long ago are skipped; zero disables the check.
    pub min_interval: Duration,
    pub domain: std::sync::Arc<str>,
}

/// Wall-clock time that follows the runtime's clock, so that paused time in tests moves
/// the restart history too.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall_ms: i64,
    at: Instant,
}

impl Clock {
    fn new() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            wall_ms,
            at: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.wall_ms + self.at.elapsed().as_millis() as i64
    }
}

#[derive(Default)]
struct State {
    /// Each host's last successful restart, in ms since the epoch. The store holds the
    /// durable copy; this index is loaded from it on start and kept in step after.
    /// It grows with every new host, and a table that doubles all at once held the loop
    /// for 25 ms at half a million hosts; griddle's table moves its entries a few at a
    /// time instead.
    last_restart: griddle::HashMap<InstanceName, i64, foldhash::fast::RandomState>,
    /// Restarts running: waiting out their simulated IO, by when it ends.
    io: IoWait<Delivery>,
    busy_hosts: FastSet<InstanceName>,
    /// The batch being handled, with how many of it have outcomes, until each delivery
    /// has one or waits in `io`. What is held here after a failure is failed by
    /// `restarting`.
    current: Option<(Batch, usize)>,
}

impl State {
    fn new(clock: AlarmClock) -> Self {
        Self {
            io: IoWait::new(clock),
            ..Self::default()
        }
    }
}

pub struct Restarter {
    link: Link,
    acker: Recipient<Outcomes>,
    load: Recipient<LoadRestarts>,
    record: Recipient<RecordRestarts>,
    config: RestarterConfig,
    clock: Clock,
    rng: SmallRng,
    injector: Injector,
    /// Survives restarts: a stopped Restarter fails every restart it is asked for.
    retired: bool,
    /// Survive restarts: the actors that asked to hear of every host restart, and what
    /// they are owed from the handler call in progress.
    watchers: Vec<Recipient<HostRestarts>>,
    notices: Vec<HostRestart>,
    state: State,
}

/// What to do for one delivery.
enum Plan {
    Skip(Skip),
    Restart,
}

/// Why a host is not restarted. It is formatted only when logged or watched.
enum Skip {
    Running,
    Recent { ago: Duration, min: Duration },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Running => f.write_str("a restart is already running"),
            Skip::Recent { ago, min } => write!(
                f,
                "last restarted {} ago, less than {}",
                humantime::format_duration(Duration::from_secs(ago.as_secs())),
                humantime::format_duration(*min)
            ),
        }
    }
}

impl Restarter {
    pub fn new(
        link: Link,
        acker: Recipient<Outcomes>,
        load: Recipient<LoadRestarts>,
        record: Recipient<RecordRestarts>,
        config: RestarterConfig,
        rng: SmallRng,
        injector: Injector,
    ) -> Self {
        let state = State::new(config.io_clock);
        Self {
            link,
            acker,
            load,
            record,
            config,
            clock: Clock::new(),
            rng,
            injector,
            retired: false,
            watchers: Vec::new(),
            notices: Vec::new(),
            state,
        }
    }

    /// Notes a host restart's outcome for the watchers; free when there are none.
    fn notice(&mut self, host: InstanceName, outcome: impl FnOnce() -> RestartOutcome) {
        if !self.watchers.is_empty() {
            self.notices.push(HostRestart {
                host,
                outcome: outcome(),
            });
        }
    }

    /// Decides for one host, `now_ms` being read once per batch.
    fn plan(&self, host: InstanceName, now_ms: i64) -> Plan {
        if self.config.min_interval.is_zero() {
            return Plan::Restart;
        }
        if self.state.busy_hosts.contains(&host) {
            return Plan::Skip(Skip::Running);
        }
        if let Some(&at) = self.state.last_restart.get(&host) {
            let ago = Duration::from_millis((now_ms - at).max(0) as u64);
            if ago < self.config.min_interval {
                return Plan::Skip(Skip::Recent {
                    ago,
                    min: self.config.min_interval,
                });
            }
        }
        Plan::Restart
    }

    /// Finishes one simulated restart: succeeds or fails at the configured rate, or when
    /// an error is injected. A failure goes to the policy, whose directive is returned.
    fn finish(
        &mut self,
        d: Delivery,
        outcomes: &mut Vec<Outcome>,
        rows: &mut Vec<RestartRow>,
        now_ms: i64,
        ctx: &mut Context<Self>,
    ) -> Directive {
        let host = d.message.instance_name;
        self.state.busy_hosts.remove(&host);
        let failed = self.rng.random::<f64>() < self.config.failure_rate;
        if failed || self.injector.error() {
            let e = RestartError::Failed(host.hostname(&self.config.domain));
            report_error(&self.link.metrics, Self::NAME.as_str(), true, &e);
            self.notice(host, || RestartOutcome::Failed(e.clone()));
            let kind = (&e).into();
            let directive = fail(self, ctx, kind, &e);
            outcomes.push(Outcome::err(d, e));
            return directive;
        } else {
            let at_ms = now_ms;
            self.state.last_restart.insert(host, at_ms);
            rows.push(RestartRow {
                host,
                at_ms,
                message_id: d.id(),
            });
            Metrics::inc(&self.link.metrics.restarted);
            info!(target: FLOW, "Restarted {}", host.hostname(&self.config.domain));
            self.notice(host, || RestartOutcome::Restarted);
            outcomes.push(Outcome::ok(d));
        }
        Directive::Resume
    }

    /// Finishes the restarts whose IO has ended.
    fn io_done(&mut self, ctx: &mut Context<Self>) {
        let (due, next) = self.state.io.take_due();
        if let Some(at) = next {
            self.config.io_clock.arm(at, ctx);
        }
        let (mut outcomes, mut rows) = (Vec::new(), Vec::new());
        let now_ms = self.clock.now_ms();
        for (i, &d) in due.iter().enumerate() {
            if self.finish(d, &mut outcomes, &mut rows, now_ms, ctx) != Directive::Resume {
                // The state is being replaced; its `restarting` fails what is left.
                self.state.current = Some((due[i + 1..].into(), 0));
                break;
            }
        }
        self.send(outcomes, rows);
    }

    fn send(&mut self, outcomes: Vec<Outcome>, rows: Vec<RestartRow>) {
        if !self.notices.is_empty() {
            let notices = HostRestarts(std::mem::take(&mut self.notices));
            for w in &self.watchers {
                w.do_send(notices.clone());
            }
        }
        if !rows.is_empty() {
            self.record.do_send(RecordRestarts(rows));
        }
        if !outcomes.is_empty() {
            self.acker.do_send(Outcomes {
                step: Step::Restart,
                outcomes,
            });
        }
    }
}

impl Actor for Restarter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        if self.config.min_interval.is_zero() {
            return;
        }
        // Block the mailbox until the index is loaded: deciding without it could restart
        // a host that was restarted a minute ago, before this process started.
        let since_ms = self.clock.now_ms() - self.config.min_interval.as_millis() as i64;
        let load = self.load.send(LoadRestarts { since_ms });
        ctx.wait(load.into_actor(self).map(|res, act, _| match res {
            Ok(Ok(rows)) => {
                info!("Loaded {} recent restarts from the history", rows.len());
                act.state.last_restart.extend(rows);
            }
            Ok(Err(e)) => report_error(&act.link.metrics, Self::NAME.as_str(), false, &e),
            Err(e) => report_error(&act.link.metrics, Self::NAME.as_str(), false, &e),
        }));
    }
}

impl Child for Restarter {
    const NAME: ChildName = ChildName::Restarter;
    fn link(&self) -> &Link {
        &self.link
    }
    fn retire(&mut self) {
        self.retired = true;
    }
    fn is_retired(&self) -> bool {
        self.retired
    }
}

crate::restart_on_request!(Restarter);

impl Supervised for Restarter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        let unfinished = self.state.current.take();
        let unfinished = unfinished
            .iter()
            .flat_map(|(b, done)| b[*done..].iter().copied());
        let failed = self
            .state
            .io
            .drain()
            .chain(unfinished)
            .map(|d| Outcome::err(d, StepError::Restarted(Self::NAME)))
            .collect();
        self.send(failed, Vec::new());
        // `started` reloads the index from the store's history.
        self.state = State::new(self.config.io_clock);
        note_restart(self);
    }
}

/// Finishes the restarts whose simulated IO has ended.
impl Handler<Alarm> for Restarter {
    type Result = ();
    fn handle(&mut self, _: Alarm, ctx: &mut Context<Self>) {
        guard(self, ctx, "Alarm", |act, ctx| act.io_done(ctx));
    }
}

/// Restarts the hosts a batch of dispatched deliveries names.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Restart(pub Batch);

impl Handler<Restart> for Restarter {
    type Result = ();
    fn handle(&mut self, msg: Restart, ctx: &mut Context<Self>) {
        if self.retired {
            let failed = msg
                .0
                .iter()
                .map(|&d| Outcome::err(d, StepError::Stopped(Self::NAME)))
                .collect();
            return self.send(failed, Vec::new());
        }
        guard(self, ctx, "Restart", |act, ctx| {
            let zero_io = act.config.io_delay.is_zero();
            // Held here until the end of the handler, when every delivery has an outcome or
            // waits in `io`: a panic before then fails them all.
            act.state.current = Some((msg.0.clone(), 0));
            act.injector.maybe_fail();
            let mut waits = Vec::new();
            let mut outcomes = Vec::with_capacity(msg.0.len());
            let mut rows = Vec::with_capacity(msg.0.len());
            let now_ms = act.clock.now_ms();
            let mut done = 0;
            for &d in msg.0.iter() {
                let host = d.message.instance_name;
                done += 1;
                match act.plan(host, now_ms) {
                    Plan::Skip(why) => {
                        info!(
                            target: FLOW,
                            "Skipped restarting {}: {why}",
                            host.hostname(&act.config.domain)
                        );
                        Metrics::inc(&act.link.metrics.restart_skipped);
                        act.notice(host, || RestartOutcome::Skipped(why.to_string()));
                        outcomes.push(Outcome::ok(d));
                    }
                    Plan::Restart if zero_io => {
                        if act.finish(d, &mut outcomes, &mut rows, now_ms, ctx) != Directive::Resume
                        {
                            // The state is being replaced; its `restarting` fails the
                            // rest of the batch.
                            act.state.current = Some((msg.0.clone(), done));
                            return act.send(outcomes, rows);
                        }
                    }
                    Plan::Restart => {
                        act.state.busy_hosts.insert(host);
                        let io = draw_io(act.config.io_delay, act.config.io_jitter, &mut act.rng);
                        waits.push((io, d));
                    }
                }
            }
            act.state.current = None;
            for (io, d) in waits {
                if let Some(at) = act.state.io.add(io, d) {
                    act.config.io_clock.arm(at, ctx);
                }
            }
            act.send(outcomes, rows);
        });
    }
}

/// Adds an actor that hears of every host restart's outcome, from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch(pub Recipient<HostRestarts>);

impl Handler<Watch> for Restarter {
    type Result = ();
    fn handle(&mut self, Watch(watcher): Watch, _: &mut Context<Self>) {
        self.watchers.push(watcher);
    }
}

/// At shutdown, fails the restarts still running and takes no more.
impl Handler<Shutdown> for Restarter {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        // Restarts still running outlived the shield; their messages are nacked already.
        let failed = self
            .state
            .io
            .drain()
            .map(|d| Outcome::err(d, StepError::Closed(Self::NAME)))
            .collect();
        self.send(failed, Vec::new());
        self.state.busy_hosts.clear();
        self.retired = true;
    }
}

/// The deliveries whose restart is running, which the shutdown must not abandon.
#[derive(Debug, Message)]
#[rtype(result = "HashSet<AckId>")]
pub struct Running;

impl Handler<Running> for Restarter {
    type Result = MessageResult<Running>;
    fn handle(&mut self, _: Running, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.io.iter().map(|d| d.tag).collect())
    }
}

/// Describes the Restarter for the live dump: restarts running and hosts indexed.
impl Handler<Probe> for Restarter {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = if self.retired { "retired" } else { "running" };
        MessageResult(Probed::new(
            state,
            &[
                ("running", self.state.io.len()),
                ("hosts_indexed", self.state.last_restart.len()),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::testkit::{delivery, link, name, results, settle, sink, FakeStore, Got};
    use std::sync::{Arc, Mutex};

    struct Rig {
        restarter: Addr<Restarter>,
        outcomes: Got<Outcomes>,
        history: Arc<Mutex<Vec<RestartRow>>>,
        failed: Got<crate::supervision::ChildFailed>,
        link: Link,
    }

    fn rig(io_delay: Duration, failure_rate: f64, min_interval: Duration, store: FakeStore) -> Rig {
        let (link, failed, _) = link();
        let kept = link.clone();
        let (acker, outcomes) = sink();
        let history = store.restarts.clone();
        let store = store.start();
        let (load, record) = (store.clone().recipient(), store.recipient());
        let config = RestarterConfig {
            io_delay,
            io_jitter: true,
            io_clock: crate::iowait::AlarmClock::Tokio,
            failure_rate,
            min_interval,
            domain: "example.net".into(),
        };
        let injector = crate::faults::Faults::default().injector(ChildName::Restarter, Some(1));
        let rng = crate::faults::rng_for(Some(1), crate::faults::Purpose::SimulatedRestarts);
        let restarter = actix::Supervisor::start(move |_| {
            Restarter::new(link, acker, load, record, config, rng, injector)
        });
        Rig {
            restarter,
            outcomes,
            history,
            failed,
            link: kept,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[actix_rt::test]
    async fn a_recently_restarted_host_is_skipped_as_a_success() {
        tokio::time::pause();
        let r = rig(Duration::ZERO, 0.0, HOUR, FakeStore::new(None));
        r.restarter
            .send(Restart(
                vec![delivery(1, "cattle-a"), delivery(2, "cattle-a")].into(),
            ))
            .await
            .unwrap();
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(()), Ok(())]);
        assert_eq!(
            r.history.lock().unwrap().len(),
            1,
            "the second message must not restart the host"
        );
        // Once the interval has passed, the host is restarted again.
        tokio::time::sleep(HOUR + Duration::from_secs(1)).await;
        r.restarter
            .send(Restart(vec![delivery(3, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        assert_eq!(r.history.lock().unwrap().len(), 2);
    }

    #[actix_rt::test]
    async fn the_history_in_the_store_is_honoured_from_the_start() {
        let mut store = FakeStore::new(None);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        store
            .inner
            .record_restarts(&[RestartRow {
                host: name("cattle-old"),
                at_ms: now_ms - 60_000,
                message_id: uuid::Uuid::new_v4(),
            }])
            .unwrap();
        let r = rig(Duration::ZERO, 0.0, HOUR, store);
        r.restarter
            .send(Restart(
                vec![delivery(1, "cattle-old"), delivery(2, "cattle-new")].into(),
            ))
            .await
            .unwrap();
        settle().await;
        let hosts: Vec<_> = r.history.lock().unwrap().iter().map(|r| r.host).collect();
        // The preloaded row is in the store, not in what this run recorded.
        assert_eq!(hosts, vec![name("cattle-new")]);
    }

    #[actix_rt::test]
    async fn a_failed_restart_says_which_host() {
        let r = rig(Duration::ZERO, 1.0, Duration::ZERO, FakeStore::new(None));
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-zpsk")].into()))
            .await
            .unwrap();
        settle().await;
        let err = RestartError::Failed(name("cattle-zpsk").hostname(&"example.net".into()));
        assert_eq!(err.to_string(), "Could not restart cattle-zpsk.example.net");
        assert_eq!(results(&r.outcomes), vec![Err(StepError::Restart(err))]);
        assert!(r.history.lock().unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn a_failed_host_restart_resumes_keeping_the_index_and_telling_no_one() {
        tokio::time::pause();
        let r = rig(Duration::ZERO, 0.0, HOUR, FakeStore::new(None));
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        // From now on every host restart fails; the policy resumes after each.
        r.restarter.send(FailAll).await.unwrap();
        r.restarter
            .send(Restart(
                vec![delivery(2, "cattle-b"), delivery(3, "cattle-a")].into(),
            ))
            .await
            .unwrap();
        settle().await;
        let got = results(&r.outcomes);
        assert_eq!(got[0], Ok(()));
        assert!(matches!(got[1], Err(StepError::Restart(_))), "{got:?}");
        // The index survived the failure: cattle-a is still skipped as recently restarted.
        assert_eq!(got[2], Ok(()));
        assert_eq!(r.history.lock().unwrap().len(), 1);
        assert_eq!(r.failed.len(), 0, "a resumed failure is not reported");
        assert_eq!(r.link.failures.snapshot()["restart-failed"], 1);
        assert_eq!(
            r.link
                .metrics
                .actor_restarts
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// Makes every later host restart fail, for tests.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct FailAll;

    impl Handler<FailAll> for Restarter {
        type Result = ();
        fn handle(&mut self, _: FailAll, _: &mut Context<Self>) {
            self.config.failure_rate = 1.0;
        }
    }

    #[actix_rt::test]
    async fn running_restarts_are_reported_until_they_finish() {
        tokio::time::pause();
        let r = rig(
            Duration::from_secs(10),
            0.0,
            Duration::ZERO,
            FakeStore::new(None),
        );
        let d = delivery(1, "cattle-a");
        r.restarter.send(Restart(vec![d].into())).await.unwrap();
        assert_eq!(
            r.restarter.send(Running).await.unwrap(),
            HashSet::from([d.tag])
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        assert!(r.restarter.send(Running).await.unwrap().is_empty());
    }
}

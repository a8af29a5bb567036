//! `Saver`: owns the write path to the store, batching messages into group commits.
//!
//! It receives deliveries from the Consumer, waits out each one's simulated IO, gathers
//! them into batches flushed on size or on a short timer, and hands each batch to the
//! `StoreWriter` on its `SyncArbiter` thread. Outcomes go to the Acker. At shutdown it
//! commits its last batch and closes the store.

use std::time::Duration;

use actix::prelude::*;
use rand::rngs::SmallRng;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::actors::acker::Outcomes;
use crate::actors::protocol::{Batch, Outcome, Step, StepError};
use crate::faults::Injector;
use crate::iowait::draw_io;
use crate::iowait::Alarm;
use crate::iowait::{AlarmClock, IoWait};
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::store::{CloseStore, SaveBatch, SaveRow, StoreError};
use crate::supervision::{fail, guard, note_restart, report_error, Child, Directive, Link};

/// How the Saver batches and how long its simulated IO takes.
#[derive(Debug, Clone)]
pub struct SaverConfig {
    /// Each save takes `random() * io_delay` before it joins a batch, or exactly
    /// `io_delay` without jitter.
    pub io_delay: Duration,
    pub io_jitter: bool,
    /// What ends the simulated IO.
    pub io_clock: AlarmClock,
    /// A batch is flushed when it reaches this size...
    pub batch_size: usize,
    /// ...or this long after its first message, whichever comes first.
    pub flush_interval: Duration,
    /// Whether the store keeps what it is given past the run: the log says "into
    /// database" only then.
    pub persistent: bool,
}

#[derive(Default)]
struct State {
    /// Deliveries still in their simulated IO, by when it ends.
    io: IoWait<Delivery>,
    /// The batch being gathered.
    batch: Vec<Delivery>,
    flush_timer: Option<SpawnHandle>,
    /// The batch the store is committing; one at a time, so that everything that arrives
    /// during a commit goes into the next one.
    committing: Option<Vec<Delivery>>,
    closing: Option<oneshot::Sender<Result<(), StoreError>>>,
    closed: bool,
}

impl State {
    fn new(clock: AlarmClock) -> Self {
        Self {
            io: IoWait::new(clock),
            ..Self::default()
        }
    }
}

pub struct Saver {
    link: Link,
    acker: Recipient<Outcomes>,
    save: Recipient<SaveBatch>,
    close: Recipient<CloseStore>,
    config: SaverConfig,
    rng: SmallRng,
    injector: Injector,
    /// Survives restarts: a stopped Saver fails every save, but still closes the store.
    retired: bool,
    /// Survives restarts, and counts them: a commit's answer for an earlier incarnation
    /// only owes its count, because that incarnation's restart failed its batch.
    incarnation: u64,
    state: State,
}

impl Saver {
    pub fn new(
        link: Link,
        acker: Recipient<Outcomes>,
        save: Recipient<SaveBatch>,
        close: Recipient<CloseStore>,
        config: SaverConfig,
        rng: SmallRng,
        injector: Injector,
    ) -> Self {
        let state = State::new(config.io_clock);
        Self {
            link,
            acker,
            save,
            close,
            config,
            rng,
            injector,
            retired: false,
            incarnation: 0,
            state,
        }
    }

    fn report(&self, outcomes: Vec<Outcome>) {
        if !outcomes.is_empty() {
            self.acker.do_send(Outcomes {
                step: Step::Save,
                outcomes,
            });
        }
    }

    /// Flushes a full batch, or makes sure a timer will flush a partial one.
    fn batch_grew(&mut self, ctx: &mut Context<Self>) {
        // A zero interval flushes at once rather than on a zero timer: tokio rounds every
        // deadline up to its next millisecond tick, so a zero timer still waits about a
        // millisecond. Commits stay grouped, as what arrives during one goes into the
        // next.
        if self.state.batch.len() >= self.config.batch_size || self.config.flush_interval.is_zero()
        {
            self.flush(ctx);
        } else if self.state.flush_timer.is_none() {
            let handle = ctx.run_later(self.config.flush_interval, |act, ctx| {
                act.state.flush_timer = None;
                guard(act, ctx, "flush timer", |act, ctx| act.flush(ctx));
            });
            self.state.flush_timer = Some(handle);
        }
    }

    /// Moves the deliveries whose IO has ended into the batch.
    fn io_done(&mut self, ctx: &mut Context<Self>) {
        let (due, next) = self.state.io.take_due();
        self.state.batch.extend(due);
        if let Some(at) = next {
            self.config.io_clock.arm(at, ctx);
        }
        self.batch_grew(ctx);
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.state.committing.is_some() || self.state.batch.is_empty() {
            return;
        }
        if let Some(h) = self.state.flush_timer.take() {
            ctx.cancel_future(h);
        }
        let batch = std::mem::take(&mut self.state.batch);
        let rows = batch
            .iter()
            .map(|d| SaveRow {
                message: d.message,
                attempt: d.attempt,
            })
            .collect();
        self.state.committing = Some(batch);
        let incarnation = self.incarnation;
        if self.injector.error() {
            // As if the store were unavailable: nothing is written and the batch fails.
            let e = StoreError::Unavailable(format!("injected error in {}", Self::NAME));
            ctx.notify(Committed {
                incarnation,
                res: Ok(Err(e)),
            });
            return;
        }
        // The answer comes back through the mailbox, not to a future on this context,
        // which a restart would drop: the rows are in the store whatever becomes of this
        // incarnation, and `saved` must count them.
        let request = self.save.send(SaveBatch(rows));
        let me = ctx.address();
        actix_rt::spawn(async move {
            me.do_send(Committed {
                incarnation,
                res: request.await,
            });
        });
    }

    fn committed(
        &mut self,
        res: Result<Result<u64, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        let batch = self.state.committing.take().unwrap_or_default();
        let res = res.unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())));
        match res {
            Ok(_) => {
                let where_to = if self.config.persistent {
                    "into database"
                } else {
                    "in memory, which the run does not keep"
                };
                let outcomes = batch
                    .into_iter()
                    .map(|d| {
                        flow!(
                            info,
                            "saver",
                            "saved",
                            d.message.instance_name,
                            d.message.message_id,
                            d.attempt,
                            "Saved {} {where_to}",
                            d.message
                        );
                        Outcome::ok(d)
                    })
                    .collect();
                self.report(outcomes);
            }
            Err(e) => {
                report_error(&self.link.metrics, Self::NAME.as_str(), false, &e);
                let outcomes = batch
                    .into_iter()
                    .map(|d| Outcome::err(d, e.clone()))
                    .collect();
                self.report(outcomes);
                if fail(self, ctx, (&e).into(), &e) != Directive::Resume {
                    return;
                }
            }
        }
        // Flush what gathered during the commit now if it is full, if the Saver is closing,
        // or if its timer fired while the commit ran; otherwise its timer will.
        if self.state.batch.len() >= self.config.batch_size
            || self.state.closing.is_some()
            || self.state.flush_timer.is_none()
        {
            self.flush(ctx);
        }
        self.try_close(ctx);
    }

    /// Once the last batch is committed, closes the store and answers the close request.
    fn try_close(&mut self, ctx: &mut Context<Self>) {
        if self.state.closing.is_none()
            || self.state.committing.is_some()
            || !self.state.batch.is_empty()
        {
            return;
        }
        let close = self.close.send(CloseStore);
        ctx.spawn(close.into_actor(self).map(|res, act, _| {
            let res = res.unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())));
            if let Err(e) = &res {
                report_error(&act.link.metrics, Self::NAME.as_str(), false, e);
            }
            if let Some(reply) = act.state.closing.take() {
                let _ = reply.send(res);
            }
        }));
    }

    /// Fails everything this incarnation holds, so the Acker nacks it.
    fn release(&mut self, why: StepError) {
        let held = self
            .state
            .io
            .drain()
            .chain(self.state.batch.drain(..))
            .chain(self.state.committing.take().unwrap_or_default())
            .map(|d| Outcome::err(d, why.clone()))
            .collect();
        self.report(held);
    }
}

impl Actor for Saver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        // A fresh incarnation picks up a close its predecessor did not finish.
        if self.state.closing.is_some() {
            crate::supervision::after_backoff(ctx, |act, ctx| {
                act.flush(ctx);
                act.try_close(ctx);
            });
        }
    }
}

impl Child for Saver {
    const NAME: ChildName = ChildName::Saver;
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

crate::restart_on_request!(Saver);

impl Supervised for Saver {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.release(StepError::Restarted(Self::NAME));
        self.incarnation += 1;
        let closing = self.state.closing.take();
        let closed = self.state.closed;
        self.state = State::new(self.config.io_clock);
        // A close requested before the failure is still owed an answer, and a closed
        // Saver stays closed.
        self.state.closing = closing;
        self.state.closed = closed;
        note_restart(self);
    }
}

/// Saves a batch of dispatched deliveries.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Save(pub Batch);

impl Handler<Save> for Saver {
    type Result = ();
    fn handle(&mut self, msg: Save, ctx: &mut Context<Self>) {
        if self.state.closed || self.state.closing.is_some() || self.retired {
            let why = if self.retired {
                StepError::Stopped(Self::NAME)
            } else {
                StepError::Closed(Self::NAME)
            };
            warn!("Failing {} saves: {why}", msg.0.len());
            let failed = msg
                .0
                .iter()
                .map(|&d| Outcome::err(d, why.clone()))
                .collect();
            return self.report(failed);
        }
        guard(self, ctx, "Save", |act, ctx| {
            if act.config.io_delay.is_zero() {
                act.state.batch.extend_from_slice(&msg.0);
                act.injector.maybe_fail();
                act.batch_grew(ctx);
            } else {
                // Each alarm `add` asks for is recorded as armed, so each must be armed.
                let mut alarms = Vec::new();
                for &d in msg.0.iter() {
                    let io = draw_io(act.config.io_delay, act.config.io_jitter, &mut act.rng);
                    alarms.extend(act.state.io.add(io, d));
                }
                act.injector.maybe_fail();
                for at in alarms {
                    act.config.io_clock.arm(at, ctx);
                }
            }
        });
    }
}

/// The store's answer to one commit, for the incarnation that sent it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Committed {
    incarnation: u64,
    res: Result<Result<u64, StoreError>, MailboxError>,
}

impl Handler<Committed> for Saver {
    type Result = ();
    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        // Counted first, before anything can fail: the rows are in the store.
        if let Ok(Ok(new)) = &msg.res {
            Metrics::add(&self.link.metrics.saved, *new);
        }
        if msg.incarnation != self.incarnation {
            // That incarnation's restart failed the batch already; only the count was owed.
            return;
        }
        guard(self, ctx, "SaveBatch reply", |act, ctx| {
            act.committed(msg.res, ctx)
        });
    }
}

/// Moves the deliveries whose simulated IO has ended into the batch.
impl Handler<Alarm> for Saver {
    type Result = ();
    fn handle(&mut self, _: Alarm, ctx: &mut Context<Self>) {
        guard(self, ctx, "Alarm", |act, ctx| act.io_done(ctx));
    }
}

impl Saver {
    /// Starts closing; `None` if closed already, else the answer to wait for.
    fn close(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        if self.state.closed {
            return None;
        }
        self.state.closed = true;
        // Saves still in simulated IO belong to messages the shutdown has already nacked.
        let in_io: Vec<_> = self.state.io.drain().collect();
        self.report(
            in_io
                .into_iter()
                .map(|d| Outcome::err(d, StepError::Closed(Self::NAME)))
                .collect(),
        );
        let (tx, rx) = oneshot::channel();
        self.state.closing = Some(tx);
        self.flush(ctx);
        self.try_close(ctx);
        Some(rx)
    }
}

/// At shutdown, commits the last batch and closes the store, logging a failure to close.
impl Handler<Shutdown> for Saver {
    type Result = Response<()>;
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Response<()> {
        info!("Closing database connections");
        let Some(rx) = self.close(ctx) else {
            return Response::reply(());
        };
        Response::fut(async move {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!("Closing the store failed: {e}"),
                Err(_) => error!("Closing the store failed: the saver dropped the request"),
            }
        })
    }
}

/// Describes the Saver for the live dump: what waits for IO, for a batch, for a commit.
impl Handler<Probe> for Saver {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = match () {
            _ if self.state.closed => "closed",
            _ if self.state.closing.is_some() => "closing",
            _ if self.retired => "retired",
            _ => "running",
        };
        let committing = self.state.committing.as_ref().map_or(0, Vec::len);
        MessageResult(Probed::new(
            state,
            &[
                ("in_io", self.state.io.len()),
                ("batch", self.state.batch.len()),
                ("committing", committing),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{delivery, link, results, settle, sink, start_saver, FakeStore, Got};
    use std::sync::{Arc, Mutex};

    struct Rig {
        saver: Addr<Saver>,
        outcomes: Got<Outcomes>,
        batches: Arc<Mutex<Vec<usize>>>,
        metrics: Arc<Metrics>,
    }

    fn rig(batch_size: usize, io_delay: Duration, fail: Option<StoreError>, faults: &str) -> Rig {
        let (link, _, metrics) = link();
        let (acker, outcomes) = sink();
        let (store, batches) = FakeStore::start(fail);
        let config = SaverConfig {
            io_delay,
            io_jitter: true,
            io_clock: crate::iowait::AlarmClock::Tokio,
            batch_size,
            flush_interval: Duration::from_millis(5),
            persistent: true,
        };
        let faults: crate::faults::Faults = faults.parse().unwrap();
        let saver = start_saver(
            link,
            acker,
            store,
            config,
            faults.injector(ChildName::Saver, Some(1)),
        );
        Rig {
            saver,
            outcomes,
            batches,
            metrics,
        }
    }

    /// Commits the last batch and closes the store, answering how the close went, as
    /// `Shutdown` does without an answer.
    #[derive(Debug, Message)]
    #[rtype(result = "Result<(), StoreError>")]
    pub struct Close;

    impl Handler<Close> for Saver {
        type Result = Response<Result<(), StoreError>>;
        fn handle(&mut self, _: Close, ctx: &mut Context<Self>) -> Self::Result {
            match self.close(ctx) {
                None => Response::reply(Ok(())),
                Some(rx) => {
                    Response::fut(async move { rx.await.unwrap_or(Err(StoreError::Closed)) })
                }
            }
        }
    }

    #[actix_rt::test]
    async fn a_full_batch_is_committed_at_once() {
        tokio::time::pause();
        let r = rig(3, Duration::ZERO, None, "");
        let ds: Vec<_> = (1..=3).map(|i| delivery(i, "a")).collect();
        r.saver.send(Save(ds.into())).await.unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(*r.batches.lock().unwrap(), vec![3]);
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(()), Ok(()), Ok(())]);
        assert_eq!(
            r.metrics.saved.load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[actix_rt::test]
    async fn a_partial_batch_waits_for_the_flush_timer() {
        tokio::time::pause();
        let r = rig(100, Duration::ZERO, None, "");
        r.saver
            .send(Save(vec![delivery(1, "a")].into()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(4)).await;
        assert!(r.batches.lock().unwrap().is_empty(), "flushed early");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(*r.batches.lock().unwrap(), vec![1]);
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
    }

    #[actix_rt::test]
    async fn simulated_io_delays_each_save() {
        tokio::time::pause();
        let r = rig(1, Duration::from_secs(10), None, "");
        r.saver
            .send(Save(vec![delivery(1, "a")].into()))
            .await
            .unwrap();
        settle().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
    }

    #[actix_rt::test]
    async fn a_failed_commit_fails_every_message_in_it() {
        let down = StoreError::Unavailable("disk full".into());
        let r = rig(2, Duration::ZERO, Some(down.clone()), "");
        r.saver
            .send(Save(vec![delivery(1, "a"), delivery(2, "b")].into()))
            .await
            .unwrap();
        settle().await;
        let want = Err(StepError::Store(down));
        assert_eq!(results(&r.outcomes), vec![want.clone(), want]);
        assert_eq!(
            r.metrics.errors.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[actix_rt::test]
    async fn close_commits_the_last_batch_then_refuses_more() {
        let r = rig(100, Duration::ZERO, None, "");
        r.saver
            .send(Save(vec![delivery(1, "a")].into()))
            .await
            .unwrap();
        r.saver.send(Close).await.unwrap().unwrap();
        assert_eq!(*r.batches.lock().unwrap(), vec![1]);
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        r.saver
            .send(Save(vec![delivery(2, "b")].into()))
            .await
            .unwrap();
        settle().await;
        assert_eq!(
            results(&r.outcomes),
            vec![Err(StepError::Closed(ChildName::Saver))]
        );
    }

    #[actix_rt::test]
    async fn a_panic_fails_what_it_held_and_the_saver_comes_back() {
        let r = rig(100, Duration::ZERO, None, "panic:saver=1");
        // The guard catches the panic, so even the sender gets its reply.
        r.saver
            .send(Save(vec![delivery(1, "a"), delivery(2, "b")].into()))
            .await
            .unwrap();
        settle().await;
        let want = Err(StepError::Restarted(ChildName::Saver));
        assert_eq!(results(&r.outcomes), vec![want.clone(), want]);
        // Restarted in place: the same address takes the close request.
        r.saver.send(Close).await.unwrap().unwrap();
    }

    #[actix_rt::test]
    async fn backoff_holds_messages_doubles_per_failure_and_resets_when_quiet() {
        use crate::supervision::strategy::{Backoff, Intensity, Strategy};
        use crate::supervision::supervisor::{Settings, Supervisor};
        use crate::supervision::{ChildFailed, Directive, FailureKind, RestartChild};
        use tokio::time::Instant;
        tokio::time::pause();
        let (escalate, _) = sink();
        let intensity = Intensity {
            max_restarts: 100,
            window: Duration::from_secs(60),
        };
        let backoff = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(10),
            jitter: 0.0,
            reset_after: Duration::from_secs(60),
        };
        let settings = Settings {
            strategy: Strategy::OneForOne,
            intensity,
            backoff,
            seed: Some(1),
        };
        let sup = Supervisor::new(settings, &Default::default(), escalate).start();
        let (mut link, _, _) = crate::testkit::link_with(crate::supervision::ChildPolicy {
            decider: Default::default(),
            restart: crate::supervision::RestartType::Permanent,
        });
        link.supervisor = sup.clone().recipient();
        link.backoff = sup.clone().recipient();
        let (acker, outcomes) = sink();
        let (store, _) = FakeStore::start(None);
        let config = SaverConfig {
            io_delay: Duration::ZERO,
            io_jitter: true,
            io_clock: crate::iowait::AlarmClock::Tokio,
            batch_size: 1,
            flush_interval: Duration::from_millis(5),
            persistent: true,
        };
        let injector = crate::faults::Injector::none(ChildName::Saver);
        let saver = start_saver(link, acker, store, config, injector);
        settle().await;
        // Two failures in a row double the delay; after a quiet minute it starts over.
        for (tag, backoff, quiet) in [(1, 1000, 0), (2, 2000, 0), (3, 1000, 61)] {
            tokio::time::sleep(Duration::from_secs(quiet)).await;
            // The saver fails (as its guard would report it) and restarts.
            sup.send(ChildFailed {
                child: ChildName::Saver,
                kind: FailureKind::Panic,
                reason: "boom".into(),
                directive: Directive::RestartWithBackoff,
            })
            .await
            .unwrap();
            saver
                .send(RestartChild {
                    because: ChildName::Saver,
                })
                .await
                .unwrap();
            let start = Instant::now();
            saver.do_send(Save(vec![delivery(tag, "cattle-a")].into()));
            tokio::time::sleep(Duration::from_millis(backoff - 50)).await;
            assert!(results(&outcomes).is_empty(), "handled during the backoff");
            while results(&outcomes).is_empty() {
                assert!(start.elapsed() < Duration::from_millis(backoff + 100));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let took = start.elapsed().as_millis() as u64;
            assert!((backoff..backoff + 100).contains(&took), "took {took} ms");
        }
    }

    /// One test per directive of the decider, each through a real failure of the Saver.
    mod directives {
        use super::*;
        use crate::supervision::policy::{ChildPolicy, Decider, RestartType};
        use crate::supervision::{ChildFailed, Directive, FailureKind};
        use crate::testkit::{link_with, start_saver};
        use std::sync::atomic::Ordering::Relaxed;

        struct Rig {
            saver: Addr<Saver>,
            outcomes: Got<Outcomes>,
            failed: Got<ChildFailed>,
            link: Link,
        }

        fn rig(
            decider: &str,
            restart: RestartType,
            store: Option<StoreError>,
            faults: &str,
        ) -> Rig {
            let decider: Decider = decider.parse().unwrap();
            let (mut link, failed, _) = link_with(ChildPolicy { decider, restart });
            link.deadline = Duration::from_millis(20);
            let (acker, outcomes) = sink();
            let (store, _) = FakeStore::start(store);
            let config = SaverConfig {
                io_delay: Duration::ZERO,
                io_jitter: true,
                io_clock: crate::iowait::AlarmClock::Tokio,
                batch_size: 1,
                flush_interval: Duration::from_millis(5),
                persistent: true,
            };
            let faults: crate::faults::Faults = faults.parse().unwrap();
            let injector = faults
                .injector(ChildName::Saver, Some(1))
                .stalling_for(Duration::from_millis(40));
            let saver = start_saver(link.clone(), acker, store, config, injector);
            Rig {
                saver,
                outcomes,
                failed,
                link,
            }
        }

        impl Rig {
            async fn save(&self, tag: u64) -> Vec<Result<(), StepError>> {
                self.saver
                    .send(Save(vec![delivery(tag, "a")].into()))
                    .await
                    .unwrap();
                settle().await;
                settle().await;
                results(&self.outcomes)
            }

            fn reports(&self) -> Vec<(FailureKind, Directive)> {
                self.failed
                    .take()
                    .into_iter()
                    .map(|f| (f.kind, f.directive))
                    .collect()
            }

            fn restarts(&self) -> u64 {
                self.link.metrics.actor_restarts.load(Relaxed)
            }
        }

        const PERMANENT: RestartType = RestartType::Permanent;

        #[actix_rt::test]
        async fn resume_nacks_the_work_keeps_the_actor_and_tells_no_one() {
            let down = StoreError::Unavailable("disk full".into());
            let r = rig(
                "store-unavailable=resume",
                PERMANENT,
                Some(down.clone()),
                "",
            );
            assert_eq!(r.save(1).await, vec![Err(StepError::Store(down))]);
            assert!(r.reports().is_empty());
            assert_eq!(r.restarts(), 0);
            assert_eq!(r.link.failures.snapshot()["store-unavailable"], 1);
        }

        #[actix_rt::test]
        async fn restart_is_the_default_for_a_panic() {
            let r = rig("", PERMANENT, None, "panic:saver=1");
            assert_eq!(
                r.save(1).await,
                vec![Err(StepError::Restarted(ChildName::Saver))]
            );
            assert_eq!(r.reports(), [(FailureKind::Panic, Directive::Restart)]);
            assert_eq!(r.restarts(), 1);
        }

        #[actix_rt::test]
        async fn restart_with_backoff_is_the_default_for_an_unavailable_store() {
            let down = StoreError::Unavailable("disk full".into());
            let r = rig("", PERMANENT, Some(down), "");
            r.save(1).await;
            assert_eq!(
                r.reports(),
                [(FailureKind::StoreUnavailable, Directive::RestartWithBackoff)]
            );
            assert_eq!(r.restarts(), 1);
        }

        #[actix_rt::test]
        async fn escalate_is_the_default_for_a_corrupt_store_and_stops_the_saver() {
            let corrupt = StoreError::Corrupt("bad page".into());
            let r = rig("", PERMANENT, Some(corrupt), "");
            r.save(1).await;
            assert_eq!(
                r.reports(),
                [(FailureKind::StoreCorrupt, Directive::Escalate)]
            );
            assert_eq!(
                r.save(2).await,
                vec![Err(StepError::Stopped(ChildName::Saver))]
            );
            assert_eq!(r.restarts(), 0);
        }

        #[actix_rt::test]
        async fn stop_refuses_all_later_work_but_still_closes_the_store() {
            let r = rig("panic=stop", PERMANENT, None, "panic:saver=1");
            assert_eq!(
                r.save(1).await,
                vec![Err(StepError::Restarted(ChildName::Saver))]
            );
            assert_eq!(r.reports(), [(FailureKind::Panic, Directive::Stop)]);
            assert_eq!(
                r.save(2).await,
                vec![Err(StepError::Stopped(ChildName::Saver))]
            );
            assert_eq!(r.restarts(), 0);
            r.saver.send(Close).await.unwrap().unwrap();
        }

        #[actix_rt::test]
        async fn a_temporary_child_is_stopped_where_a_permanent_one_restarts() {
            let r = rig("", RestartType::Temporary, None, "panic:saver=1");
            r.save(1).await;
            assert_eq!(r.reports(), [(FailureKind::Panic, Directive::Stop)]);
            assert_eq!(
                r.save(2).await,
                vec![Err(StepError::Stopped(ChildName::Saver))]
            );
            assert_eq!(r.restarts(), 0);
        }

        #[actix_rt::test]
        async fn a_handler_past_its_deadline_is_a_stall_and_restarts() {
            let r = rig("", PERMANENT, None, "stall:saver=1");
            r.saver
                .send(Save(vec![delivery(1, "a")].into()))
                .await
                .unwrap();
            settle().await;
            assert_eq!(r.reports(), [(FailureKind::Stall, Directive::Restart)]);
            assert_eq!(r.link.failures.snapshot()["stall"], 1);
        }

        #[actix_rt::test]
        async fn an_injected_error_fails_the_commit_as_an_unavailable_store() {
            let r = rig("store-unavailable=resume", PERMANENT, None, "error:saver=1");
            let got = r.save(1).await;
            assert!(
                matches!(
                    &got[..],
                    [Err(StepError::Store(StoreError::Unavailable(_)))]
                ),
                "{got:?}"
            );
            assert_eq!(r.link.failures.snapshot()["store-unavailable"], 1);
        }
    }
}

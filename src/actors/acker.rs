//! `Acker`: owns the table of deliveries in flight, every ack and nack, and the run's
//! accounting of them.
//!
//! The Consumer tells it what was dispatched; the Saver and the Restarter send it their
//! outcomes; it joins them per delivery, by the broker's handle, and settles with the
//! broker. It counts what the broker confirms it took (acks, nacks, dead letters), keeps
//! leases alive while work is in progress, nacks any delivery whose outcomes miss the
//! deadline, and answers the SignalActor's drain and nack phases.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::{sync::oneshot, time::Instant};
use tracing::{error, warn};

use crate::actors::protocol::{Batch, Outcome, Step, StepResult};
use crate::broker::{Extend, Settle, Settled, Settlement, Verdict};
use crate::faults::Injector;
use crate::message::{AckId, Delivery};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::supervision::{guard, note_restart, report_error, Child, Link};
use crate::FastMap;

/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(100);

/// The Acker's timing and limits.
#[derive(Debug, Clone)]
pub struct AckerConfig {
    /// A delivery without all its outcomes by then is nacked.
    pub message_timeout: Duration,
    /// The broker's lease; the Acker extends leases every half of it.
    pub ack_deadline: Duration,
    /// How long a nacked message waits before redelivery.
    pub redelivery_delay: Duration,
    /// A delivery that fails on this attempt or a later one is dead-lettered.
    pub max_deliveries: u32,
}

#[derive(Debug)]
struct Pending {
    delivery: Delivery,
    saved: Option<StepResult>,
    restarted: Option<StepResult>,
}

#[derive(Default)]
struct State {
    /// Keyed by the broker's handle, never by message id: two deliveries of one message
    /// in flight at once are two entries, and each settles on its own.
    pending: FastMap<AckId, Pending>,
    /// Track order is deadline order, because every delivery gets the same timeout.
    deadlines: VecDeque<(Instant, AckId)>,
    last_extend: Option<Instant>,
}

/// How many settlements of each verdict one `Settle` carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    acked: u64,
    nacked: u64,
    dead_lettered: u64,
}

impl Tally {
    fn of(settlements: &[Settlement]) -> Self {
        let mut t = Tally::default();
        for s in settlements {
            match s.verdict {
                Verdict::Ack => t.acked += 1,
                Verdict::Nack { .. } => t.nacked += 1,
                // The last nack of a message, which gives up on it: a nack all the same.
                Verdict::DeadLetter => {
                    t.nacked += 1;
                    t.dead_lettered += 1;
                }
                Verdict::Release => {}
            }
        }
        t
    }
}

pub struct Acker {
    link: Link,
    settle: Recipient<Settle>,
    extend: Recipient<Extend>,
    config: AckerConfig,
    injector: Injector,
    /// Kept across restarts: the SignalActor is still waiting on them.
    idle_waiters: Vec<oneshot::Sender<()>>,
    /// Survive restarts, because their answers come back through the mailbox: how many
    /// settles the broker has not answered yet, and who waits for none to be left.
    unconfirmed: usize,
    confirmed_waiters: Vec<oneshot::Sender<()>>,
    /// Survives restarts: a stopped Acker nacks every delivery it is told about.
    retired: bool,
    /// Publish-to-ack latencies of the acks being settled, recorded once per batch.
    latencies: Vec<Duration>,
    /// The same, for the metrics exporter; a no-op when nothing is installed.
    latency_export: metrics::Histogram,
    state: State,
}

impl Acker {
    pub fn new(
        link: Link,
        settle: Recipient<Settle>,
        extend: Recipient<Extend>,
        config: AckerConfig,
        injector: Injector,
    ) -> Self {
        Self {
            link,
            settle,
            extend,
            config,
            injector,
            idle_waiters: Vec::new(),
            unconfirmed: 0,
            confirmed_waiters: Vec::new(),
            retired: false,
            latencies: Vec::new(),
            latency_export: metrics::histogram!("mandrill_ack_latency_seconds"),
            state: State::default(),
        }
    }

    /// The verdict on a delivery that failed: nack it for redelivery, or dead-letter it
    /// when this was its last allowed attempt.
    fn failed(&self, d: &Delivery) -> Verdict {
        if d.attempt >= self.config.max_deliveries {
            Verdict::DeadLetter
        } else {
            Verdict::Nack {
                delay: self.config.redelivery_delay,
            }
        }
    }

    /// Settles a delivery whose outcomes are both in, at `now`: the clock is read once
    /// per batch, since every outcome in it arrived at that moment.
    fn finish(&mut self, p: Pending, now: SystemTime, out: &mut Vec<Settlement>) {
        let (Some(saved), Some(restarted)) = (&p.saved, &p.restarted) else {
            return;
        };
        let msg = p.delivery.message;
        let (id, attempt) = (msg.message_id, p.delivery.attempt);
        let verdict = match (saved, restarted) {
            (Ok(()), Ok(())) => {
                flow!(
                    info,
                    "acker",
                    "acked",
                    msg.instance_name,
                    id,
                    attempt,
                    "Done. Acked {msg}"
                );
                let took = now
                    .duration_since(p.delivery.published_at)
                    .unwrap_or_default();
                self.latencies.push(took);
                Verdict::Ack
            }
            (Err(e), _) | (_, Err(e)) if e.is_final() => {
                flow!(
                    warn,
                    "acker",
                    "dead_lettered",
                    msg.instance_name,
                    id,
                    attempt,
                    "Dead-lettered {msg} at once: {e}"
                );
                Verdict::DeadLetter
            }
            (Err(e), _) | (_, Err(e)) => {
                flow!(
                    warn,
                    "acker",
                    "nacked",
                    msg.instance_name,
                    id,
                    attempt,
                    "Nacked {msg}: {e}"
                );
                self.failed(&p.delivery)
            }
        };
        out.push(Settlement {
            tag: p.delivery.tag,
            verdict,
        });
    }

    /// Sends settlements to the broker. Its answer comes back through the mailbox as
    /// `Confirmed`, so that a restart of the Acker in between loses no count.
    fn send_settlements(&mut self, out: Vec<Settlement>, ctx: &mut Context<Self>) {
        if !self.latencies.is_empty() {
            self.link.metrics.ack_latency.record_all(&self.latencies);
            for took in self.latencies.drain(..) {
                self.latency_export.record(took.as_secs_f64());
            }
        }
        if !out.is_empty() {
            self.unconfirmed += 1;
            let tally = Tally::of(&out);
            let answer = self.settle.send(Settle(out));
            let me = ctx.address();
            actix_rt::spawn(async move {
                me.do_send(Confirmed {
                    tally,
                    answer: answer.await,
                });
            });
        }
        if self.state.pending.is_empty() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(&(at, tag)) = self.state.deadlines.front() {
            let live = self.state.pending.contains_key(&tag);
            // Entries for settled deliveries are dropped as soon as they reach the front,
            // which keeps the queue about as long as the oldest delivery in flight is old.
            if live && at > now {
                break;
            }
            self.state.deadlines.pop_front();
            if let Some(p) = self.state.pending.remove(&tag) {
                warn!(
                    "Nacked {} after {:?} without all its outcomes",
                    p.delivery.message, self.config.message_timeout
                );
                out.push(Settlement {
                    tag,
                    verdict: self.failed(&p.delivery),
                });
            }
        }
        let half = self.config.ack_deadline / 2;
        if self.state.last_extend.is_none_or(|t| now - t >= half) {
            self.state.last_extend = Some(now);
            if !self.state.pending.is_empty() {
                let tags = self.state.pending.keys().copied().collect();
                self.extend.do_send(Extend {
                    tags,
                    by: self.config.ack_deadline,
                });
            }
        }
        self.send_settlements(out, ctx);
    }

    /// Gives every held delivery back to the broker, except those in `keep`: released
    /// when `failed` is false, else nacked as failures. Returns how many it gave back.
    fn settle_all_but(
        &mut self,
        keep: &HashSet<AckId>,
        failed: bool,
        ctx: &mut Context<Self>,
    ) -> usize {
        let released: Vec<Settlement> = self
            .state
            .pending
            .iter()
            .filter(|(tag, _)| !keep.contains(tag))
            .map(|(&tag, p)| Settlement {
                tag,
                verdict: if failed {
                    self.failed(&p.delivery)
                } else {
                    Verdict::Release
                },
            })
            .collect();
        self.state.pending.retain(|tag, _| keep.contains(tag));
        let n = released.len();
        self.send_settlements(released, ctx);
        n
    }

    /// Releases what is in flight at shutdown, counting it as nacked on shutdown.
    fn release_in_flight(&mut self, keep: &HashSet<AckId>, ctx: &mut Context<Self>) -> usize {
        let n = self.settle_all_but(keep, false, ctx);
        Metrics::add(&self.link.metrics.nacked_on_shutdown, n as u64);
        n
    }
}

impl Actor for Acker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        ctx.run_interval(SWEEP, |act, ctx| {
            guard(act, ctx, "sweep timer", |act, ctx| act.sweep(ctx));
        });
    }
}

impl Child for Acker {
    const NAME: ChildName = ChildName::Acker;
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

crate::restart_on_request!(Acker);

impl Supervised for Acker {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // The table may be half-updated; nack everything in it so the broker redelivers,
        // and outcomes that arrive later for those deliveries are ignored. A nack spends
        // a delivery attempt, so a message that always panics the Acker ends in the dead
        // letters instead of looping.
        self.latencies.clear();
        let n = self.settle_all_but(&HashSet::new(), true, ctx);
        warn!("Acker nacked {n} in-flight messages for redelivery");
        self.state = State::default();
        note_restart(self);
    }
}

/// Starts tracking dispatched deliveries; their outcomes will follow.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Track(pub Batch);

impl Handler<Track> for Acker {
    type Result = ();
    fn handle(&mut self, msg: Track, ctx: &mut Context<Self>) {
        if self.retired {
            // Nobody will join these outcomes: give the deliveries back at once, so that
            // they are redelivered and, in the end, dead-lettered rather than lost.
            let out = msg
                .0
                .iter()
                .map(|d| {
                    flow!(
                        warn,
                        "acker",
                        "nacked",
                        d.message.instance_name,
                        d.message.message_id,
                        d.attempt,
                        "Nacked {}: acker is stopped",
                        d.message
                    );
                    Settlement {
                        tag: d.tag,
                        verdict: self.failed(d),
                    }
                })
                .collect();
            return self.send_settlements(out, ctx);
        }
        guard(self, ctx, "Track", |act, _| {
            let deadline = Instant::now() + act.config.message_timeout;
            for &d in msg.0.iter() {
                act.state.pending.insert(
                    d.tag,
                    Pending {
                        delivery: d,
                        saved: None,
                        restarted: None,
                    },
                );
                act.state.deadlines.push_back((deadline, d.tag));
            }
            act.injector.maybe_fail();
        });
    }
}

/// Outcomes of one step for a batch of deliveries.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Outcomes {
    pub step: Step,
    pub outcomes: Vec<Outcome>,
}

impl Handler<Outcomes> for Acker {
    type Result = ();
    fn handle(&mut self, msg: Outcomes, ctx: &mut Context<Self>) {
        guard(self, ctx, "Outcomes", |act, ctx| {
            act.injector.maybe_fail();
            let now = SystemTime::now();
            let mut out = Vec::with_capacity(msg.outcomes.len());
            for o in msg.outcomes {
                use std::collections::hash_map::Entry;
                // An outcome for a delivery no longer tracked (nacked at its deadline or
                // at shutdown) has nothing left to decide.
                let Entry::Occupied(mut e) = act.state.pending.entry(o.tag) else {
                    continue;
                };
                let p = e.get_mut();
                let other = match msg.step {
                    Step::Save => {
                        p.saved = Some(o.result);
                        &p.restarted
                    }
                    Step::Restart => {
                        p.restarted = Some(o.result);
                        &p.saved
                    }
                };
                if other.is_some() {
                    let p = e.remove();
                    act.finish(p, now, &mut out);
                }
            }
            act.send_settlements(out, ctx);
        });
    }
}

/// The broker's answer to one `Settle`, with what that `Settle` carried.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Confirmed {
    tally: Tally,
    answer: Result<Settled, MailboxError>,
}

impl Handler<Confirmed> for Acker {
    type Result = ();
    fn handle(&mut self, msg: Confirmed, _: &mut Context<Self>) {
        // No guard and no fault injection: this only counts, and a lost count would break
        // the run's conservation law.
        self.unconfirmed = self.unconfirmed.saturating_sub(1);
        let taken = match msg.answer {
            Ok(settled) => {
                let stale = Tally::of(&settled.stale);
                Tally {
                    acked: msg.tally.acked - stale.acked,
                    nacked: msg.tally.nacked - stale.nacked,
                    dead_lettered: msg.tally.dead_lettered - stale.dead_lettered,
                }
            }
            Err(e) => {
                report_error(&self.link.metrics, Self::NAME.as_str(), false, &e);
                Tally::default()
            }
        };
        let m = &self.link.metrics;
        Metrics::add(&m.acked, taken.acked);
        Metrics::add(&m.nacked, taken.nacked);
        Metrics::add(&m.dead_lettered, taken.dead_lettered);
        if taken != Tally::default() {
            m.mark_outcome();
        }
        if self.unconfirmed == 0 {
            for w in self.confirmed_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// Hands back deliveries that were pulled but not dispatched: released without spending
/// an attempt when intake has stopped, nacked when the Consumer failed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Abandon {
    pub deliveries: Vec<Delivery>,
    pub failed: bool,
}

impl Handler<Abandon> for Acker {
    type Result = ();
    fn handle(&mut self, msg: Abandon, ctx: &mut Context<Self>) {
        // No guard and no fault injection: this is the path that rescues messages from
        // other actors' failures, and it only forwards.
        let out = msg
            .deliveries
            .iter()
            .map(|d| {
                self.state.pending.remove(&d.tag);
                Settlement {
                    tag: d.tag,
                    verdict: if msg.failed {
                        self.failed(d)
                    } else {
                        Verdict::Release
                    },
                }
            })
            .collect();
        self.send_settlements(out, ctx);
    }
}

/// Resolves when no delivery is in flight.
#[derive(Debug, Message)]
#[rtype(result = "oneshot::Receiver<()>")]
pub struct WhenIdle;

impl Handler<WhenIdle> for Acker {
    type Result = MessageResult<WhenIdle>;
    fn handle(&mut self, _: WhenIdle, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.idle_waiters.push(tx);
        self.send_settlements(Vec::new(), ctx);
        MessageResult(rx)
    }
}

/// Releases every delivery in flight back to the broker, except those in `keep` (whose
/// restarts are shielded); returns how many it released.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct ReleaseOutstanding {
    pub keep: HashSet<AckId>,
}

impl Handler<ReleaseOutstanding> for Acker {
    type Result = usize;
    fn handle(&mut self, msg: ReleaseOutstanding, ctx: &mut Context<Self>) -> usize {
        self.release_in_flight(&msg.keep, ctx)
    }
}

/// At shutdown, gives back whatever is still in flight, without spending an attempt,
/// takes no more, and answers once the broker has confirmed every settlement, so that
/// the report's counts are final.
impl Handler<Shutdown> for Acker {
    type Result = Response<()>;
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Response<()> {
        let n = self.release_in_flight(&HashSet::new(), ctx);
        if n > 0 {
            warn!("Acker released {n} messages still in flight at its shutdown");
        }
        self.retired = true;
        if self.unconfirmed == 0 {
            return Response::reply(());
        }
        let (tx, rx) = oneshot::channel();
        self.confirmed_waiters.push(tx);
        Response::fut(async move {
            if rx.await.is_err() {
                error!("The acker went away before the broker confirmed its settlements");
            }
        })
    }
}

/// How many deliveries are in flight.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct InFlight;

impl Handler<InFlight> for Acker {
    type Result = usize;
    fn handle(&mut self, _: InFlight, _: &mut Context<Self>) -> usize {
        self.state.pending.len()
    }
}

/// Describes the Acker for the live dump: deliveries in flight and the oldest one's age.
impl Handler<Probe> for Acker {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = if self.retired { "retired" } else { "running" };
        let mut p = Probed::new(state, &[("in_flight", self.state.pending.len())]);
        // A scan, but only on demand; the hot path keeps no ordered index for it.
        p.oldest = self
            .state
            .pending
            .values()
            .map(|p| p.delivery.published_at)
            .min()
            .map(|at| at.elapsed().unwrap_or_default());
        MessageResult(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::RestartError;
    use crate::actors::protocol::StepError;
    use crate::testkit::{delivery, link, settle, sink, Got};

    struct Rig {
        acker: Addr<Acker>,
        settled: Got<Settle>,
        extended: Got<Extend>,
        failed: Got<crate::supervision::ChildFailed>,
    }

    fn rig(panic_rate: &str) -> Rig {
        let (link, failed, _) = link();
        let (settle, settled) = sink();
        let (extend, extended) = sink();
        let faults: crate::faults::Faults = panic_rate.parse().unwrap();
        let config = AckerConfig {
            message_timeout: Duration::from_secs(30),
            ack_deadline: Duration::from_secs(10),
            redelivery_delay: Duration::from_secs(2),
            max_deliveries: 5,
        };
        let injector = faults.injector(ChildName::Acker, Some(1));
        let acker =
            actix::Supervisor::start(move |_| Acker::new(link, settle, extend, config, injector));
        Rig {
            acker,
            settled,
            extended,
            failed,
        }
    }

    fn verdicts(got: &Got<Settle>) -> Vec<(AckId, Verdict)> {
        got.take()
            .into_iter()
            .flat_map(|s| s.0)
            .map(|s| (s.tag, s.verdict))
            .collect()
    }

    const NACK: Verdict = Verdict::Nack {
        delay: Duration::from_secs(2),
    };

    #[actix_rt::test]
    async fn acks_when_both_steps_succeed_and_nacks_when_either_fails() {
        let r = rig("");
        let ds = [delivery(1, "a"), delivery(2, "b"), delivery(3, "c")];
        r.acker.send(Track(ds.to_vec().into())).await.unwrap();
        let save = ds.iter().map(|d| Outcome::ok(*d)).collect();
        r.acker
            .send(Outcomes {
                step: Step::Save,
                outcomes: save,
            })
            .await
            .unwrap();
        assert!(
            verdicts(&r.settled).is_empty(),
            "settled on half the outcomes"
        );
        let restart = vec![
            Outcome::ok(ds[0]),
            Outcome::err(
                ds[1],
                RestartError::Failed {
                    host: crate::message::InstanceName::parse("b")
                        .unwrap()
                        .hostname(&"example.net".into()),
                    reason: "down".into(),
                },
            ),
            Outcome::ok(ds[2]),
        ];
        r.acker
            .send(Outcomes {
                step: Step::Restart,
                outcomes: restart,
            })
            .await
            .unwrap();
        settle().await;
        let mut v = verdicts(&r.settled);
        v.sort_by_key(|(t, _)| *t);
        assert_eq!(
            v,
            vec![
                (AckId(1), Verdict::Ack),
                (AckId(2), NACK),
                (AckId(3), Verdict::Ack)
            ]
        );
        assert_eq!(r.acker.send(InFlight).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn a_message_missing_an_outcome_is_nacked_at_its_deadline() {
        tokio::time::pause();
        let r = rig("");
        let d = delivery(1, "a");
        r.acker.send(Track(vec![d].into())).await.unwrap();
        r.acker
            .send(Outcomes {
                step: Step::Save,
                outcomes: vec![Outcome::ok(d)],
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(verdicts(&r.settled).is_empty());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(verdicts(&r.settled), vec![(AckId(1), NACK)]);
        // Its late outcome changes nothing.
        r.acker
            .send(Outcomes {
                step: Step::Restart,
                outcomes: vec![Outcome::ok(d)],
            })
            .await
            .unwrap();
        settle().await;
        assert!(verdicts(&r.settled).is_empty());
    }

    #[actix_rt::test]
    async fn leases_of_messages_in_progress_are_extended() {
        tokio::time::pause();
        let r = rig("");
        r.acker
            .send(Track(vec![delivery(7, "a")].into()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let ext = r.extended.take();
        assert!(
            ext.iter().any(|e| e.tags == vec![AckId(7)]),
            "no extension for the tracked delivery"
        );
    }

    #[actix_rt::test]
    async fn release_outstanding_spares_shielded_messages() {
        let r = rig("");
        let (kept, dropped) = (delivery(1, "a"), delivery(2, "b"));
        r.acker
            .send(Track(vec![kept, dropped].into()))
            .await
            .unwrap();
        let keep = HashSet::from([kept.tag]);
        assert_eq!(r.acker.send(ReleaseOutstanding { keep }).await.unwrap(), 1);
        settle().await;
        assert_eq!(verdicts(&r.settled), vec![(AckId(2), Verdict::Release)]);
        let idle = r.acker.send(WhenIdle).await.unwrap();
        for step in [Step::Save, Step::Restart] {
            r.acker
                .send(Outcomes {
                    step,
                    outcomes: vec![Outcome::ok(kept)],
                })
                .await
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("idle once the shielded message finished")
            .unwrap();
        assert_eq!(verdicts(&r.settled), vec![(AckId(1), Verdict::Ack)]);
    }

    #[actix_rt::test]
    async fn a_restart_request_starts_it_afresh_after_nacking_its_table() {
        let r = rig("");
        r.acker
            .send(Track(vec![delivery(1, "a")].into()))
            .await
            .unwrap();
        r.acker
            .send(crate::supervision::RestartChild {
                because: ChildName::Saver,
            })
            .await
            .unwrap();
        settle().await;
        assert_eq!(verdicts(&r.settled), vec![(AckId(1), NACK)]);
        assert_eq!(r.acker.send(InFlight).await.unwrap(), 0);
        // A sibling's restart is not this child's failure.
        assert_eq!(r.failed.len(), 0);
    }

    #[actix_rt::test]
    async fn a_panic_nacks_what_was_tracked_and_the_address_keeps_working() {
        let r = rig("panic:acker=1");
        let ds = vec![delivery(1, "a"), delivery(2, "b")];
        r.acker.do_send(Track(ds.into()));
        settle().await;
        let mut v = verdicts(&r.settled);
        v.sort_by_key(|(t, _)| *t);
        assert_eq!(v, vec![(AckId(1), NACK), (AckId(2), NACK)]);
        let failed = r.failed.take();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].child, ChildName::Acker);
        // The same address answers after the restart.
        assert_eq!(r.acker.send(InFlight).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn two_deliveries_of_one_message_settle_independently() {
        let r = rig("");
        let first = delivery(1, "a");
        // The same message, delivered again before the first delivery settled.
        let second = Delivery {
            tag: AckId(2),
            attempt: 2,
            ..first
        };
        r.acker
            .send(Track(vec![first, second].into()))
            .await
            .unwrap();
        assert_eq!(r.acker.send(InFlight).await.unwrap(), 2);
        for d in [second, first] {
            for step in [Step::Save, Step::Restart] {
                r.acker
                    .send(Outcomes {
                        step,
                        outcomes: vec![Outcome::ok(d)],
                    })
                    .await
                    .unwrap();
            }
        }
        settle().await;
        let mut v = verdicts(&r.settled);
        v.sort_by_key(|(t, _)| *t);
        assert_eq!(v, vec![(AckId(1), Verdict::Ack), (AckId(2), Verdict::Ack)]);
        assert_eq!(r.acker.send(InFlight).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn a_failure_on_the_last_allowed_delivery_dead_letters_it() {
        let r = rig("");
        let last = Delivery {
            attempt: 5,
            ..delivery(1, "a")
        };
        r.acker.send(Track(vec![last].into())).await.unwrap();
        let failure = StepError::Closed(ChildName::Saver);
        for step in [Step::Save, Step::Restart] {
            r.acker
                .send(Outcomes {
                    step,
                    outcomes: vec![Outcome::err(last, failure.clone())],
                })
                .await
                .unwrap();
        }
        settle().await;
        assert_eq!(verdicts(&r.settled), vec![(AckId(1), Verdict::DeadLetter)]);
    }

    #[actix_rt::test]
    async fn only_what_the_broker_took_is_counted() {
        // A broker that refuses every ack as stale.
        struct Refusing;
        impl Actor for Refusing {
            type Context = Context<Self>;
        }
        impl Handler<Settle> for Refusing {
            type Result = MessageResult<Settle>;
            fn handle(&mut self, s: Settle, _: &mut Context<Self>) -> Self::Result {
                let stale =
                    s.0.into_iter()
                        .filter(|s| s.verdict == Verdict::Ack)
                        .collect();
                MessageResult(Settled { stale })
            }
        }
        let (link, _, metrics) = link();
        let (extend, _) = sink();
        let config = AckerConfig {
            message_timeout: Duration::from_secs(30),
            ack_deadline: Duration::from_secs(10),
            redelivery_delay: Duration::ZERO,
            max_deliveries: 5,
        };
        let settle_to = Refusing.start().recipient();
        let acker = Acker::new(
            link,
            settle_to,
            extend,
            config,
            Injector::none(ChildName::Acker),
        )
        .start();
        let (ok, bad) = (delivery(1, "a"), delivery(2, "b"));
        acker.send(Track(vec![ok, bad].into())).await.unwrap();
        let failure = StepError::Closed(ChildName::Saver);
        for step in [Step::Save, Step::Restart] {
            let outcomes = vec![Outcome::ok(ok), Outcome::err(bad, failure.clone())];
            acker.send(Outcomes { step, outcomes }).await.unwrap();
        }
        // Shutdown answers once every settlement is confirmed.
        acker.send(Shutdown).await.unwrap();
        let c = metrics.snapshot();
        assert_eq!((c.acked, c.nacked), (0, 1));
    }
}

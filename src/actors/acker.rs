//! `Acker`: owns the table of messages in flight and every ack and nack.
//!
//! The Consumer tells it what was dispatched; the Saver and the Restarter send it their
//! outcomes; it joins them per message and settles with the subscription. It keeps leases
//! alive while work is in progress, nacks any message whose outcomes miss the deadline,
//! and answers the SignalActor's drain and nack phases.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use tokio::{sync::oneshot, time::Instant};
use tracing::{info, warn};
use uuid::Uuid;

use crate::actors::protocol::{Batch, Outcome, Step, StepResult};
use crate::broker::{Extend, Settle, Settlement, Verdict};
use crate::faults::Injector;
use crate::message::{Delivery, DeliveryTag};
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::supervision::{guard, note_restart, Child, Link};
use crate::{FastMap, FLOW};

/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(100);

/// The Acker's timing.
#[derive(Debug, Clone)]
pub struct AckerConfig {
    /// A message without all its outcomes by then is nacked.
    pub message_timeout: Duration,
    /// The subscription's lease; the Acker extends leases every half of it.
    pub ack_deadline: Duration,
    /// How long a nacked message waits before redelivery.
    pub redelivery_delay: Duration,
}

#[derive(Debug)]
struct Pending {
    delivery: Delivery,
    saved: Option<StepResult>,
    restarted: Option<StepResult>,
}

#[derive(Default)]
struct State {
    pending: FastMap<Uuid, Pending>,
    /// Track order is deadline order, because every message gets the same timeout.
    deadlines: VecDeque<(Instant, Uuid, DeliveryTag)>,
    last_extend: Option<Instant>,
}

pub struct Acker {
    link: Link,
    settle: Recipient<Settle>,
    extend: Recipient<Extend>,
    config: AckerConfig,
    injector: Injector,
    /// Kept across restarts: the SignalActor is still waiting on them.
    idle_waiters: Vec<oneshot::Sender<()>>,
    /// Survives restarts: a stopped Acker nacks every delivery it is told about.
    retired: bool,
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
            retired: false,
            state: State::default(),
        }
    }

    fn nack(&self) -> Verdict {
        Verdict::Nack {
            delay: self.config.redelivery_delay,
        }
    }

    /// Settles a message whose outcomes are both in.
    fn finish(&self, p: Pending, out: &mut Vec<Settlement>) {
        let (Some(saved), Some(restarted)) = (&p.saved, &p.restarted) else {
            return;
        };
        let msg = p.delivery.message;
        let verdict = match (saved, restarted) {
            (Ok(()), Ok(())) => {
                info!(target: FLOW, "Done. Acked {msg}");
                Verdict::Ack
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(target: FLOW, "Nacked {msg}: {e}");
                self.nack()
            }
        };
        out.push(Settlement {
            tag: p.delivery.tag,
            verdict,
        });
    }

    fn send_settlements(&mut self, out: Vec<Settlement>) {
        if !out.is_empty() {
            self.settle.do_send(Settle(out));
        }
        if self.state.pending.is_empty() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(&(at, id, tag)) = self.state.deadlines.front() {
            let live = self
                .state
                .pending
                .get(&id)
                .is_some_and(|p| p.delivery.tag == tag);
            // Entries for settled messages are dropped as soon as they reach the front,
            // which keeps the queue about as long as the oldest message in flight is old.
            if live && at > now {
                break;
            }
            self.state.deadlines.pop_front();
            if !live {
                continue;
            }
            if let Some(p) = self.state.pending.remove(&id) {
                warn!(
                    "Nacked {} after {:?} without all its outcomes",
                    p.delivery.message, self.config.message_timeout
                );
                out.push(Settlement {
                    tag: p.delivery.tag,
                    verdict: self.nack(),
                });
            }
        }
        let half = self.config.ack_deadline / 2;
        if self.state.last_extend.is_none_or(|t| now - t >= half) {
            self.state.last_extend = Some(now);
            if !self.state.pending.is_empty() {
                let tags = self
                    .state
                    .pending
                    .values()
                    .map(|p| p.delivery.tag)
                    .collect();
                self.extend.do_send(Extend {
                    tags,
                    by: self.config.ack_deadline,
                });
            }
        }
        self.send_settlements(out);
    }

    /// Gives every held message back to the subscription with `verdict`, except those in
    /// `keep`.
    fn settle_all_but(&mut self, keep: &HashSet<Uuid>, verdict: Verdict) -> usize {
        let released: Vec<Settlement> = self
            .state
            .pending
            .iter()
            .filter(|(id, _)| !keep.contains(id))
            .map(|(_, p)| Settlement {
                tag: p.delivery.tag,
                verdict,
            })
            .collect();
        self.state.pending.retain(|id, _| keep.contains(id));
        let n = released.len();
        self.send_settlements(released);
        n
    }
}

impl Actor for Acker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        ctx.run_interval(SWEEP, |act, ctx| {
            guard(act, ctx, "sweep timer", |act, _| act.sweep());
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
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The table may be half-updated; nack everything in it so the subscription
        // redelivers, and outcomes that arrive later for those messages are ignored. A
        // nack spends a delivery attempt, so a message that always panics the Acker ends
        // in the dead letters instead of looping.
        let n = self.settle_all_but(&HashSet::new(), self.nack());
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
                    warn!(target: FLOW, "Nacked {}: acker is stopped", d.message);
                    Settlement {
                        tag: d.tag,
                        verdict: self.nack(),
                    }
                })
                .collect();
            return self.send_settlements(out);
        }
        guard(self, ctx, "Track", |act, _| {
            let deadline = Instant::now() + act.config.message_timeout;
            for &d in msg.0.iter() {
                act.state.pending.insert(
                    d.id(),
                    Pending {
                        delivery: d,
                        saved: None,
                        restarted: None,
                    },
                );
                act.state.deadlines.push_back((deadline, d.id(), d.tag));
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
        guard(self, ctx, "Outcomes", |act, _| {
            act.injector.maybe_fail();
            let mut out = Vec::with_capacity(msg.outcomes.len());
            for o in msg.outcomes {
                use std::collections::hash_map::Entry;
                // An outcome for a delivery no longer tracked (nacked at its deadline or
                // at shutdown, or superseded by a redelivery) has nothing left to decide.
                let Entry::Occupied(mut e) = act.state.pending.entry(o.delivery.id()) else {
                    continue;
                };
                let p = e.get_mut();
                if p.delivery.tag != o.delivery.tag {
                    continue;
                }
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
                    act.finish(p, &mut out);
                }
            }
            act.send_settlements(out);
        });
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
    fn handle(&mut self, msg: Abandon, _: &mut Context<Self>) {
        // No guard and no fault injection: this is the path that rescues messages from
        // other actors' failures, and it only forwards.
        let verdict = if msg.failed {
            self.nack()
        } else {
            Verdict::Release
        };
        let out = msg
            .deliveries
            .iter()
            .map(|d| {
                self.state.pending.remove(&d.id());
                Settlement {
                    tag: d.tag,
                    verdict,
                }
            })
            .collect();
        self.send_settlements(out);
    }
}

/// Resolves when no message is in flight.
#[derive(Debug, Message)]
#[rtype(result = "oneshot::Receiver<()>")]
pub struct WhenIdle;

impl Handler<WhenIdle> for Acker {
    type Result = MessageResult<WhenIdle>;
    fn handle(&mut self, _: WhenIdle, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.idle_waiters.push(tx);
        self.send_settlements(Vec::new());
        MessageResult(rx)
    }
}

/// Nacks every message in flight back to the subscription, except those in `keep`
/// (whose restarts are shielded); returns how many it nacked.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct ReleaseOutstanding {
    pub keep: HashSet<Uuid>,
}

impl Handler<ReleaseOutstanding> for Acker {
    type Result = usize;
    fn handle(&mut self, msg: ReleaseOutstanding, _: &mut Context<Self>) -> usize {
        self.settle_all_but(&msg.keep, Verdict::Release)
    }
}

/// At shutdown, gives back whatever is still in flight, without spending an attempt, and
/// takes no more.
impl Handler<Shutdown> for Acker {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        let n = self.settle_all_but(&HashSet::new(), Verdict::Release);
        if n > 0 {
            warn!("Acker released {n} messages still in flight at its shutdown");
        }
        self.retired = true;
    }
}

/// How many messages are in flight.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct InFlight;

impl Handler<InFlight> for Acker {
    type Result = usize;
    fn handle(&mut self, _: InFlight, _: &mut Context<Self>) -> usize {
        self.state.pending.len()
    }
}

/// Describes the Acker for the live dump: messages in flight and the oldest one's age.
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
            .map(|at| at.elapsed());
        MessageResult(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::RestartError;
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

    fn verdicts(got: &Got<Settle>) -> Vec<(DeliveryTag, Verdict)> {
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
                RestartError::Failed(
                    crate::message::InstanceName::parse("b")
                        .unwrap()
                        .hostname(&"example.net".into()),
                ),
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
                (DeliveryTag(1), Verdict::Ack),
                (DeliveryTag(2), NACK),
                (DeliveryTag(3), Verdict::Ack)
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
        assert_eq!(verdicts(&r.settled), vec![(DeliveryTag(1), NACK)]);
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
            ext.iter().any(|e| e.tags == vec![DeliveryTag(7)]),
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
        let keep = HashSet::from([kept.id()]);
        assert_eq!(r.acker.send(ReleaseOutstanding { keep }).await.unwrap(), 1);
        settle().await;
        assert_eq!(
            verdicts(&r.settled),
            vec![(DeliveryTag(2), Verdict::Release)]
        );
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
        assert_eq!(verdicts(&r.settled), vec![(DeliveryTag(1), Verdict::Ack)]);
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
        assert_eq!(verdicts(&r.settled), vec![(DeliveryTag(1), NACK)]);
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
        assert_eq!(v, vec![(DeliveryTag(1), NACK), (DeliveryTag(2), NACK)]);
        let failed = r.failed.take();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].child, ChildName::Acker);
        // The same address answers after the restart.
        assert_eq!(r.acker.send(InFlight).await.unwrap(), 0);
    }
}

//! `Acker`: owns the table of messages in flight and every ack and nack.
//!
//! The Consumer tells it what was dispatched; the Saver and the Restarter send it their
//! outcomes; it joins them per message and settles with the subscription. It keeps leases
//! alive while work is in progress, nacks any message whose outcomes miss the deadline,
//! and answers the SignalActor's drain and nack phases.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use tokio::{sync::oneshot, time::Instant};
use tracing::{info, warn};
use uuid::Uuid;

use crate::actors::protocol::{Outcome, Step, StepError};
use crate::config::Injector;
use crate::message::{Delivery, DeliveryTag};
use crate::subscription::{Extend, Settle, Settlement, Verdict};
use crate::supervision::{guard, note_restart, Child, Link};
use crate::FLOW;

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
    saved: Option<Result<(), StepError>>,
    restarted: Option<Result<(), StepError>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<Uuid, Pending>,
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
            state: State::default(),
        }
    }

    fn nack(&self) -> Verdict {
        Verdict::Nack {
            delay: self.config.redelivery_delay,
        }
    }

    /// Settles a finished message, if both outcomes are in.
    fn try_finish(&mut self, id: Uuid, out: &mut Vec<Settlement>) {
        let Some(p) = self.state.pending.get(&id) else {
            return;
        };
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
        self.state.pending.remove(&id);
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
        ctx.run_interval(SWEEP, |act, ctx| {
            guard(act, ctx, |act, _| act.sweep());
        });
    }
}

impl Child for Acker {
    const NAME: &'static str = "acker";
    fn link(&self) -> &Link {
        &self.link
    }
}

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
pub struct Track(pub Vec<Delivery>);

impl Handler<Track> for Acker {
    type Result = ();
    fn handle(&mut self, msg: Track, ctx: &mut Context<Self>) {
        guard(self, ctx, |act, _| {
            let deadline = Instant::now() + act.config.message_timeout;
            for d in msg.0 {
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
            act.injector.maybe_panic();
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
        guard(self, ctx, |act, _| {
            act.injector.maybe_panic();
            let mut out = Vec::new();
            for o in msg.outcomes {
                let id = o.delivery.id();
                // An outcome for a delivery no longer tracked (nacked at its deadline or
                // at shutdown, or superseded by a redelivery) has nothing left to decide.
                let Some(p) = act.state.pending.get_mut(&id) else {
                    continue;
                };
                if p.delivery.tag != o.delivery.tag {
                    continue;
                }
                match msg.step {
                    Step::Save => p.saved = Some(o.result),
                    Step::Restart => p.restarted = Some(o.result),
                }
                act.try_finish(id, &mut out);
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

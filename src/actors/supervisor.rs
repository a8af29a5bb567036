//! `Supervisor`: owns the supervision tree and its restart policy.
//!
//! It starts the children in a fixed order, which stands in `start_children` and nowhere
//! else, hears from every child that fails, restarts the failed child's siblings as its
//! strategy says (one-for-one, one-for-all or rest-for-one), and escalates to the
//! SignalActor when restarts exceed the intensity limit. The failed child itself restarts
//! in place through actix's `Supervisor` (see `crate::supervision`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::actors::acker::{Acker, AckerConfig};
use crate::actors::consumer::{Consumer, Downstream};
use crate::actors::publisher::{Publisher, PublisherConfig};
use crate::actors::restarter::{Restarter, RestarterConfig};
use crate::actors::saver::{Saver, SaverConfig};
use crate::config::{rng_for, Backoff, Config, Source, Strategy};
use crate::metrics::{ChildStats, Metrics};
use crate::store::{Store, StoreWriter};
use crate::subscription::memory::{MemoryConfig, MemorySubscription};
use crate::supervision::{BackoffFor, Child, ChildFailed, Link, RestartChild};
use crate::FastMap;
use rand::{rngs::SmallRng, Rng};

/// How many deliveries one pull asks for.
const PULL_BATCH: usize = 1024;

/// Restart intensity: more than `max_restarts` within `window` escalates.
#[derive(Debug, Clone, Copy)]
pub struct Intensity {
    pub max_restarts: u32,
    pub window: Duration,
}

/// Tells the SignalActor that supervision gave up: the ordered shutdown must run and the
/// process must exit non-zero.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Escalate {
    pub child: &'static str,
    pub reason: String,
}

/// Addresses of everything the tree started.
#[derive(Clone)]
pub struct Tree {
    pub supervisor: Addr<Supervisor>,
    pub store: Addr<StoreWriter>,
    pub subscription: Addr<MemorySubscription>,
    pub acker: Addr<Acker>,
    pub saver: Addr<Saver>,
    pub restarter: Addr<Restarter>,
    pub consumer: Addr<Consumer>,
    /// Absent when messages come from standard input.
    pub publisher: Option<Addr<Publisher>>,
}

pub struct Supervisor {
    intensity: Intensity,
    strategy: Strategy,
    backoff: Backoff,
    /// Per child: failures in a row, and when the last one happened.
    streaks: FastMap<&'static str, (u32, Instant)>,
    /// Per child: the delay its next start must wait, handed out once.
    owed: FastMap<&'static str, Duration>,
    rng: SmallRng,
    /// Restartable children in start order, by name.
    children: Vec<(&'static str, Recipient<RestartChild>)>,
    stats: BTreeMap<&'static str, ChildStats>,
    escalate: Recipient<Escalate>,
    recent: VecDeque<Instant>,
    escalated: bool,
}

impl Supervisor {
    fn new(
        intensity: Intensity,
        strategy: Strategy,
        backoff: Backoff,
        children: Vec<(&'static str, Recipient<RestartChild>)>,
        escalate: Recipient<Escalate>,
        seed: Option<u64>,
    ) -> Self {
        let stats = children
            .iter()
            .map(|(n, _)| (*n, ChildStats::default()))
            .collect();
        Supervisor {
            intensity,
            strategy,
            backoff,
            streaks: FastMap::default(),
            owed: FastMap::default(),
            rng: rng_for(seed, "backoff"),
            children,
            stats,
            escalate,
            recent: VecDeque::new(),
            escalated: false,
        }
    }

    /// Starts the whole tree: the Supervisor, then its children in `start_children`'s
    /// order, so that every address a child is given is live. The shutdown stops intake
    /// at the other end first.
    pub fn start_tree(
        config: &Config,
        metrics: Arc<Metrics>,
        store: Box<dyn Store>,
        escalate: Recipient<Escalate>,
    ) -> Tree {
        // The Supervisor must know its children to apply its strategy, and they must know
        // it to report failures: create it, and start them inside its constructor.
        let mut tree = None;
        Supervisor::create(|ctx| {
            let started = Self::start_children(config, &metrics, store, ctx.address());
            let children = started.restartable();
            tree = Some(started);
            let intensity = Intensity {
                max_restarts: config.max_restarts,
                window: config.restart_window,
            };
            Supervisor::new(
                intensity,
                config.strategy,
                config.backoff,
                children,
                escalate,
                config.seed,
            )
        });
        tree.expect("the constructor ran")
    }

    /// Starts the children in their one fixed order: each after everything it sends to.
    fn start_children(
        config: &Config,
        metrics: &Arc<Metrics>,
        store: Box<dyn Store>,
        supervisor: Addr<Supervisor>,
    ) -> Tree {
        let link = Link {
            supervisor: supervisor.clone().recipient(),
            backoff: supervisor.clone().recipient(),
            metrics: metrics.clone(),
        };
        let seed = config.seed;
        let inject = |name| config.faults.injector(name, seed);

        // 1. The store's writer thread. SQLite has one writer, so one thread.
        let slot = Mutex::new(Some(store));
        let store = SyncArbiter::start(1, move || {
            let store = slot.lock().expect("store slot").take();
            StoreWriter::new(store.expect("the store writer runs on exactly one thread"))
        });

        // 2. The subscription, standing in for the broker.
        let subscription = MemorySubscription::new(
            MemoryConfig {
                max_in_flight: config.max_in_flight,
                max_deliveries: config.max_deliveries,
                ack_deadline: config.ack_deadline,
            },
            metrics.clone(),
        )
        .start();

        // 3. The Acker, which settles with the subscription.
        let acker = {
            let (link, sub) = (link.clone(), subscription.clone());
            let cfg = AckerConfig {
                message_timeout: config.message_timeout,
                ack_deadline: config.ack_deadline,
                redelivery_delay: config.redelivery_delay,
            };
            let injector = inject(Acker::NAME);
            actix::Supervisor::start(move |_| {
                Acker::new(
                    link,
                    sub.clone().recipient(),
                    sub.recipient(),
                    cfg,
                    injector,
                )
            })
        };

        // 4. The Saver and 5. the Restarter, which report to the Acker.
        let saver = {
            let (link, acker, store) = (link.clone(), acker.clone(), store.clone());
            let cfg = SaverConfig {
                io_delay: config.io_delay,
                batch_size: config.batch_size,
                flush_interval: config.flush_interval,
            };
            let (rng, injector) = (rng_for(seed, "saver-io"), inject("saver"));
            actix::Supervisor::start(move |_| {
                Saver::new(
                    link,
                    acker.recipient(),
                    store.clone().recipient(),
                    store.recipient(),
                    cfg,
                    rng,
                    injector,
                )
            })
        };
        let restarter = {
            let (link, acker, store) = (link.clone(), acker.clone(), store.clone());
            let cfg = RestarterConfig {
                io_delay: config.io_delay,
                failure_rate: config.failure_rate,
                min_interval: config.min_restart_interval,
                domain: config.domain.clone(),
            };
            let (rng, injector) = (rng_for(seed, "restarter"), inject("restarter"));
            actix::Supervisor::start(move |_| {
                Restarter::new(
                    link,
                    acker.recipient(),
                    store.clone().recipient(),
                    store.recipient(),
                    cfg,
                    rng,
                    injector,
                )
            })
        };

        // 6. The Consumer, which feeds the three above.
        let consumer = {
            let downstream = Downstream {
                track: acker.clone().recipient(),
                abandon: acker.clone().recipient(),
                save: saver.clone().recipient(),
                restart: restarter.clone().recipient(),
            };
            let (link, pull) = (link.clone(), subscription.clone().recipient());
            let batch = PULL_BATCH.min(config.max_in_flight);
            let injector = inject("consumer");
            actix::Supervisor::start(move |_| {
                Consumer::new(link, pull, downstream, batch, injector)
            })
        };

        // 7. The Publisher, the head of the pipeline, started last.
        let publisher = (config.source == Source::Simulated).then(|| {
            let (link, sub) = (link.clone(), subscription.clone());
            let cfg = PublisherConfig {
                delay: config.publish_delay,
                jitter: config.publish_jitter,
                limit: config.messages,
            };
            let (rng, injector) = (rng_for(seed, "publisher"), inject("publisher"));
            actix::Supervisor::start(move |_| {
                Publisher::new(
                    link,
                    sub.clone().recipient(),
                    sub.recipient(),
                    cfg,
                    rng,
                    injector,
                )
            })
        });

        Tree {
            supervisor,
            store,
            subscription,
            acker,
            saver,
            restarter,
            consumer,
            publisher,
        }
    }
}

impl Tree {
    /// The restartable children, in start order, as the strategy sees them.
    fn restartable(&self) -> Vec<(&'static str, Recipient<RestartChild>)> {
        let mut out: Vec<(&'static str, Recipient<RestartChild>)> = vec![
            (Acker::NAME, self.acker.clone().recipient()),
            (Saver::NAME, self.saver.clone().recipient()),
            (Restarter::NAME, self.restarter.clone().recipient()),
            (Consumer::NAME, self.consumer.clone().recipient()),
        ];
        if let Some(p) = &self.publisher {
            out.push((Publisher::NAME, p.clone().recipient()));
        }
        out
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Supervisor {
    /// The healthy siblings the strategy restarts along with `failed`. The failed child
    /// restarts itself: its guard stopped its context already.
    fn siblings_to_restart(&self, failed: &str) -> Vec<&(&'static str, Recipient<RestartChild>)> {
        let at = self.children.iter().position(|(name, _)| *name == failed);
        match (self.strategy, at) {
            (Strategy::OneForOne, _) | (_, None) => Vec::new(),
            (Strategy::OneForAll, Some(i)) => self
                .children
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c)
                .collect(),
            (Strategy::RestForOne, Some(i)) => self.children[i + 1..].iter().collect(),
        }
    }
}

impl Supervisor {
    /// The backoff before `child`'s restart after a failure at `now`: the streak of
    /// failures grows while they come closer together than `reset_after`.
    fn next_delay(&mut self, child: &'static str, now: Instant) -> Duration {
        let reset_after = self.backoff.reset_after;
        let streak = self.streaks.entry(child).or_insert((0, now));
        if now.duration_since(streak.1) >= reset_after {
            streak.0 = 0;
        }
        *streak = (streak.0 + 1, now);
        let n = streak.0;
        self.backoff.delay(n, self.rng.random::<f64>())
    }
}

/// Hands a starting child the backoff it owes, once; zero if it owes none.
impl Handler<BackoffFor> for Supervisor {
    type Result = MessageResult<BackoffFor>;
    fn handle(&mut self, msg: BackoffFor, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.owed.remove(msg.child).unwrap_or_default())
    }
}

impl Handler<ChildFailed> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildFailed, _: &mut Context<Self>) {
        let now = Instant::now();
        let kind = msg.kind.as_str();
        warn!(child = msg.child, kind, reason = %msg.reason, "Supervision: child failed");
        let stats = self.stats.entry(msg.child).or_default();
        *stats.failures.entry(kind).or_default() += 1;
        // The failed child restarts whatever the supervisor decides: its guard stopped it.
        stats.restarts += 1;
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.intensity.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 > self.intensity.max_restarts && !self.escalated {
            self.escalated = true;
            self.stats.entry(msg.child).or_default().escalations += 1;
            error!(
                child = msg.child,
                directive = "escalate",
                restarts = self.recent.len(),
                window_s = self.intensity.window.as_secs_f64(),
                "Restart intensity exceeded: {} restarts within {:?}; escalating",
                self.recent.len(),
                self.intensity.window
            );
            self.escalate.do_send(Escalate {
                child: msg.child,
                reason: msg.reason,
            });
            return;
        }
        let delay = self.next_delay(msg.child, now);
        self.stats.entry(msg.child).or_default().backoff_s += delay.as_secs_f64();
        if !delay.is_zero() {
            self.owed.insert(msg.child, delay);
        }
        let siblings: Vec<_> = self
            .siblings_to_restart(msg.child)
            .into_iter()
            .map(|(name, r)| (*name, r.clone()))
            .collect();
        info!(
            child = msg.child,
            directive = "restart",
            strategy = ?self.strategy,
            backoff_ms = delay.as_millis() as u64,
            siblings = siblings.len(),
            "Supervision: restarting {}", msg.child
        );
        for (name, sibling) in siblings {
            self.stats.entry(name).or_default().restarts += 1;
            sibling.do_send(RestartChild { because: msg.child });
        }
    }
}

/// Reports what each child went through, for the run report.
#[derive(Debug, Message)]
#[rtype(result = "BTreeMap<&'static str, ChildStats>")]
pub struct SupervisionStats;

impl Handler<SupervisionStats> for Supervisor {
    type Result = MessageResult<SupervisionStats>;
    fn handle(&mut self, _: SupervisionStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervision::FailureKind;
    use crate::testkit::{settle, sink, Got};

    fn supervisor(max_restarts: u32, window: Duration) -> (Addr<Supervisor>, Got<Escalate>) {
        let (s, escalations, _) = with_children(max_restarts, window, Strategy::OneForOne);
        (s, escalations)
    }

    /// A supervisor over three sink children, a, b and c, started in that order.
    fn with_children(
        max_restarts: u32,
        window: Duration,
        strategy: Strategy,
    ) -> (Addr<Supervisor>, Got<Escalate>, [Got<RestartChild>; 3]) {
        let (escalate, escalations) = sink();
        let (a, got_a) = sink();
        let (b, got_b) = sink();
        let (c, got_c) = sink();
        let intensity = Intensity {
            max_restarts,
            window,
        };
        let children = vec![("a", a), ("b", b), ("c", c)];
        let s = Supervisor::new(
            intensity,
            strategy,
            Backoff::default(),
            children,
            escalate,
            Some(1),
        )
        .start();
        (s, escalations, [got_a, got_b, got_c])
    }

    /// Which of a, b and c were asked to restart after `failed` failed.
    async fn restarted_after(strategy: Strategy, failed: &'static str) -> Vec<&'static str> {
        let (s, _, got) = with_children(10, Duration::from_secs(5), strategy);
        s.send(self::failed(failed)).await.unwrap();
        settle().await;
        ["a", "b", "c"]
            .into_iter()
            .zip(got)
            .filter(|(_, g)| {
                let asks = g.take();
                assert!(asks.iter().all(|r| r.because == failed));
                !asks.is_empty()
            })
            .map(|(name, _)| name)
            .collect()
    }

    #[actix_rt::test]
    async fn one_for_one_restarts_no_sibling() {
        assert!(restarted_after(Strategy::OneForOne, "b").await.is_empty());
    }

    #[actix_rt::test]
    async fn one_for_all_restarts_every_sibling() {
        assert_eq!(restarted_after(Strategy::OneForAll, "b").await, ["a", "c"]);
        assert_eq!(restarted_after(Strategy::OneForAll, "a").await, ["b", "c"]);
    }

    #[actix_rt::test]
    async fn the_stats_count_failures_restarts_and_escalations_per_child() {
        let (s, _, _) = with_children(1, Duration::from_secs(60), Strategy::OneForAll);
        s.send(failed("b")).await.unwrap();
        s.send(failed("b")).await.unwrap();
        let stats = s.send(SupervisionStats).await.unwrap();
        assert_eq!(stats["b"].failures["panic"], 2);
        assert_eq!(stats["b"].restarts, 2);
        assert_eq!(stats["b"].escalations, 1);
        // The second failure escalated instead of restarting the siblings.
        assert_eq!(stats["a"].restarts, 1);
        assert_eq!(stats["c"].restarts, 1);
        assert!(stats["a"].failures.is_empty());
    }

    #[actix_rt::test]
    async fn rest_for_one_restarts_only_later_siblings() {
        assert_eq!(restarted_after(Strategy::RestForOne, "a").await, ["b", "c"]);
        assert_eq!(restarted_after(Strategy::RestForOne, "b").await, ["c"]);
        assert!(restarted_after(Strategy::RestForOne, "c").await.is_empty());
    }

    fn failed(child: &'static str) -> ChildFailed {
        ChildFailed {
            child,
            kind: FailureKind::Panic,
            reason: "boom".into(),
        }
    }

    #[actix_rt::test]
    async fn more_restarts_than_the_limit_within_the_window_escalate_once() {
        tokio::time::pause();
        let (s, escalations) = supervisor(2, Duration::from_secs(5));
        s.send(failed("saver")).await.unwrap();
        s.send(failed("acker")).await.unwrap();
        settle().await;
        assert_eq!(
            escalations.len(),
            0,
            "two restarts are within a limit of two"
        );
        s.send(failed("restarter")).await.unwrap();
        s.send(failed("saver")).await.unwrap();
        settle().await;
        let e = escalations.take();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].child, e[0].reason.as_str()), ("restarter", "boom"));
    }

    #[actix_rt::test]
    async fn restarts_spread_beyond_the_window_do_not_escalate() {
        tokio::time::pause();
        let (s, escalations) = supervisor(2, Duration::from_secs(5));
        for _ in 0..6 {
            s.send(failed("saver")).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert_eq!(escalations.len(), 0);
    }

    #[actix_rt::test]
    async fn backoff_holds_messages_doubles_per_failure_and_resets_when_quiet() {
        use crate::actors::saver::{Save, SaverConfig};
        use crate::testkit::{delivery, results, start_saver, FakeStore};
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
        let sup = Supervisor::new(
            intensity,
            Strategy::OneForOne,
            backoff,
            Vec::new(),
            escalate,
            Some(1),
        )
        .start();
        let link = Link {
            supervisor: sup.clone().recipient(),
            backoff: sup.clone().recipient(),
            metrics: Arc::new(Metrics::default()),
        };
        let (acker, outcomes) = sink();
        let (store, _) = FakeStore::start(None);
        let config = SaverConfig {
            io_delay: Duration::ZERO,
            batch_size: 1,
            flush_interval: Duration::from_millis(5),
        };
        let saver = start_saver(link, acker, store, config, &Default::default());
        settle().await;
        // Two failures in a row double the delay; after a quiet minute it starts over.
        for (tag, backoff, quiet) in [(1, 1000, 0), (2, 2000, 0), (3, 1000, 61)] {
            tokio::time::sleep(Duration::from_secs(quiet)).await;
            // The saver fails (as its guard would report it) and restarts.
            sup.send(failed("saver")).await.unwrap();
            saver.send(RestartChild { because: "saver" }).await.unwrap();
            let start = Instant::now();
            saver.do_send(Save(vec![delivery(tag, "cattle-a")]));
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
}

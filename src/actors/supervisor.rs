//! `Supervisor`: owns the supervision tree and its restart policy.
//!
//! It starts the children in a fixed order, which stands in `start_children` and nowhere
//! else, and gives each a `Link` holding its policy. It hears from every child that fails
//! with a directive other than resume, and from a child that finishes normally. It
//! restarts the failed child's siblings as its strategy says (one-for-one, one-for-all or
//! rest-for-one), hands out backoff, keeps stopped children out of later restarts, and
//! escalates to the SignalActor on an `escalate` directive or when restarts exceed the
//! intensity limit. The failed child itself restarts in place through actix's
//! `Supervisor` (see `crate::supervision`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{error, info};

use crate::actors::acker::{Acker, AckerConfig};
use crate::actors::consumer::{Consumer, Downstream};
use crate::actors::protocol::Shutdown;
use crate::actors::publisher::{Publisher, PublisherConfig};
use crate::actors::restarter::{Restarter, RestarterConfig};
use crate::actors::saver::{Saver, SaverConfig};
use crate::config::{rng_for, Backoff, Config, Source, Strategy};
use crate::iowait::AlarmClock;
use crate::metrics::{ChildStats, Metrics};
use crate::policy::{ChildPolicy, Directive, RestartType};
use crate::store::{Store, StoreWriter};
use crate::subscription::memory::{MemoryConfig, MemorySubscription};
use crate::supervision::{
    BackoffFor, Child, ChildExited, ChildFailed, FailureCounts, Link, RestartChild,
};
use crate::{FastMap, FastSet};
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
    /// Each child's failure counts, which its `Link` shares.
    failures: Vec<(&'static str, Arc<FailureCounts>)>,
    /// The children that take part in the shutdown, in start order.
    started: Vec<StopEntry>,
    /// Children added by extensions, in start order.
    extensions: Vec<(&'static str, Recipient<RestartChild>)>,
}

/// A child as the shutdown sees it.
#[derive(Clone)]
pub struct StopEntry {
    pub name: &'static str,
    pub shutdown: Recipient<Shutdown>,
    /// How long the shutdown waits for it before going on without it.
    pub timeout: Duration,
}

/// A restartable child, as its supervisor sees it.
#[derive(Clone)]
pub struct Entry {
    pub name: &'static str,
    pub restart: Recipient<RestartChild>,
    pub failures: Arc<FailureCounts>,
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
    /// Restartable children in start order.
    children: Vec<Entry>,
    /// Children stopped for good, which no strategy restarts.
    stopped: FastSet<&'static str>,
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
        children: Vec<Entry>,
        escalate: Recipient<Escalate>,
        seed: Option<u64>,
    ) -> Self {
        let stats = children
            .iter()
            .map(|c| (c.name, ChildStats::default()))
            .collect();
        Supervisor {
            intensity,
            strategy,
            backoff,
            streaks: FastMap::default(),
            owed: FastMap::default(),
            rng: rng_for(seed, "backoff"),
            children,
            stopped: FastSet::default(),
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
        extensions: Vec<Box<dyn Extension>>,
    ) -> Tree {
        // The Supervisor must know its children to apply its strategy, and they must know
        // it to report failures: create it, and start them inside its constructor.
        let mut tree = None;
        Supervisor::create(|ctx| {
            let started = Self::start_children(config, &metrics, store, ctx.address(), extensions);
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

    /// Starts the children in their one fixed order: each after everything it sends to,
    /// and the extensions after all of them.
    fn start_children(
        config: &Config,
        metrics: &Arc<Metrics>,
        store: Box<dyn Store>,
        supervisor: Addr<Supervisor>,
        extensions: Vec<Box<dyn Extension>>,
    ) -> Tree {
        let mut failures = Vec::new();
        let mut link_for = |name: &'static str| {
            let restart = config.restart_types.of(name);
            make_link(config, metrics, &supervisor, name, restart, &mut failures)
        };
        let seed = config.seed;
        let inject = |name| {
            config
                .faults
                .injector(name, seed)
                .stalling_for(config.handler_deadline * 2)
        };

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
            let (link, sub) = (link_for(Acker::NAME), subscription.clone());
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

        let mut started = Vec::new();
        let mut stops = |name: &'static str, shutdown: Recipient<Shutdown>| {
            started.push(StopEntry {
                name,
                shutdown,
                timeout: config.shutdown_timeouts.of(name),
            })
        };
        stops(Acker::NAME, acker.clone().recipient());

        // 4. The Saver and 5. the Restarter, which report to the Acker.
        let saver = {
            let (link, acker, store) = (link_for(Saver::NAME), acker.clone(), store.clone());
            let cfg = SaverConfig {
                io_delay: config.io_delay,
                io_jitter: config.io_jitter,
                io_clock: AlarmClock::Thread,
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
            let (link, acker, store) = (link_for(Restarter::NAME), acker.clone(), store.clone());
            let cfg = RestarterConfig {
                io_delay: config.io_delay,
                io_jitter: config.io_jitter,
                io_clock: AlarmClock::Thread,
                failure_rate: config.failure_rate,
                min_interval: config.min_restart_interval,
                domain: config.domain.as_str().into(),
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

        stops(Saver::NAME, saver.clone().recipient());
        stops(Restarter::NAME, restarter.clone().recipient());

        // 6. The Consumer, which feeds the three above.
        let consumer = {
            let downstream = Downstream {
                track: acker.clone().recipient(),
                abandon: acker.clone().recipient(),
                save: saver.clone().recipient(),
                restart: restarter.clone().recipient(),
            };
            let (link, pull) = (link_for(Consumer::NAME), subscription.clone().recipient());
            let batch = PULL_BATCH.min(config.max_in_flight);
            let injector = inject("consumer");
            actix::Supervisor::start(move |_| {
                Consumer::new(link, pull, downstream, batch, injector)
            })
        };

        stops(Consumer::NAME, consumer.clone().recipient());

        // 7. The Publisher, the head of the pipeline, started last.
        let publisher = (config.source == Source::Simulated).then(|| {
            let (link, sub) = (link_for(Publisher::NAME), subscription.clone());
            let cfg = PublisherConfig {
                delay: config.publish_delay,
                jitter: config.publish_jitter,
                limit: config.messages,
                rate: config.publish_rate,
                clock: AlarmClock::Thread,
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
        if let Some(p) = &publisher {
            stops(Publisher::NAME, p.clone().recipient());
        }

        let mut tree = Tree {
            supervisor: supervisor.clone(),
            store,
            subscription,
            acker,
            saver,
            restarter,
            consumer,
            publisher,
            failures,
            started,
            extensions: Vec::new(),
        };

        // 8. Extensions, each given the tree so far.
        for extension in extensions {
            let name = extension.name();
            let restart = extension.restart_type();
            let link = make_link(
                config,
                metrics,
                &supervisor,
                name,
                restart,
                &mut tree.failures,
            );
            let started = extension.start(link, &tree);
            tree.extensions.push((name, started.restart));
            tree.started.push(StopEntry {
                name,
                shutdown: started.shutdown,
                timeout: config.shutdown_timeouts.of(name),
            });
        }
        tree
    }
}

/// Makes a child's own link: its policy, and failure counts its supervisor can read.
fn make_link(
    config: &Config,
    metrics: &Arc<Metrics>,
    supervisor: &Addr<Supervisor>,
    name: &'static str,
    restart: RestartType,
    failures: &mut Vec<(&'static str, Arc<FailureCounts>)>,
) -> Link {
    let counts = Arc::new(FailureCounts::default());
    failures.push((name, counts.clone()));
    Link {
        supervisor: supervisor.clone().recipient(),
        exited: supervisor.clone().recipient(),
        backoff: supervisor.clone().recipient(),
        metrics: metrics.clone(),
        policy: ChildPolicy {
            decider: config.decider,
            restart,
        },
        failures: counts,
        deadline: config.handler_deadline,
        slow: config.slow_handler,
        panicked_at: Default::default(),
    }
}

/// A child added to the tree by code outside the core actors, such as the Notifier in
/// `examples/custom_actor.rs`. It starts after every core child, so it stops before
/// them, and it is supervised like them: its own link and policy, the strategy, the
/// intensity, a place in the report's `supervision` object.
pub trait Extension {
    /// Its name in logs, supervision events and the report.
    fn name(&self) -> &'static str;

    fn restart_type(&self) -> RestartType {
        RestartType::Permanent
    }

    /// Starts the child (with `actix::Supervisor::start`, so that it restarts in place)
    /// and hooks it to the core through the tree's addresses, such as `Watch` on the
    /// Restarter.
    fn start(self: Box<Self>, link: Link, tree: &Tree) -> Started;
}

/// What the Supervisor and the shutdown need of a started extension.
pub struct Started {
    pub restart: Recipient<RestartChild>,
    pub shutdown: Recipient<Shutdown>,
}

impl Tree {
    /// The children in the order the shutdown stops them: the reverse of start order.
    pub fn stop_order(&self) -> Vec<StopEntry> {
        self.started.iter().rev().cloned().collect()
    }

    /// The restartable children, in start order, as the strategy sees them.
    fn restartable(&self) -> Vec<Entry> {
        let mut out: Vec<(&'static str, Recipient<RestartChild>)> = vec![
            (Acker::NAME, self.acker.clone().recipient()),
            (Saver::NAME, self.saver.clone().recipient()),
            (Restarter::NAME, self.restarter.clone().recipient()),
            (Consumer::NAME, self.consumer.clone().recipient()),
        ];
        if let Some(p) = &self.publisher {
            out.push((Publisher::NAME, p.clone().recipient()));
        }
        out.extend(self.extensions.iter().cloned());
        out.into_iter()
            .map(|(name, restart)| Entry {
                name,
                restart,
                failures: self
                    .failures
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| f.clone())
                    .expect("every child has a link"),
            })
            .collect()
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Supervisor {
    /// The healthy siblings the strategy restarts along with `failed`. The failed child
    /// restarts itself: its guard stopped its context already. Stopped children stay
    /// stopped.
    fn siblings_to_restart(&self, failed: &str) -> Vec<Entry> {
        let at = self.children.iter().position(|c| c.name == failed);
        let picked: Vec<&Entry> = match (self.strategy, at) {
            (Strategy::OneForOne, _) | (_, None) => Vec::new(),
            (Strategy::OneForAll, Some(i)) => self
                .children
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c)
                .collect(),
            (Strategy::RestForOne, Some(i)) => self.children[i + 1..].iter().collect(),
        };
        picked
            .into_iter()
            .filter(|c| !self.stopped.contains(c.name))
            .cloned()
            .collect()
    }

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

    /// Hands the failure up: the SignalActor runs the ordered shutdown and exits 1.
    fn escalate(&mut self, child: &'static str, reason: String) {
        if self.escalated {
            return;
        }
        self.escalated = true;
        self.stats.entry(child).or_default().escalations += 1;
        error!(child, directive = "escalate", reason = %reason, "Supervision: escalating the failure of {child}");
        self.escalate.do_send(Escalate { child, reason });
    }

    /// Restarts `child` (itself too, when `also_self`, because it did not stop on its own)
    /// and the siblings its strategy names, unless the restart intensity is exceeded.
    fn restart(
        &mut self,
        child: &'static str,
        reason: String,
        with_backoff: bool,
        also_self: bool,
    ) {
        let now = Instant::now();
        self.stats.entry(child).or_default().restarts += 1;
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.intensity.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 > self.intensity.max_restarts {
            error!(
                child,
                restarts = self.recent.len(),
                window_s = self.intensity.window.as_secs_f64(),
                "Restart intensity exceeded: {} restarts within {:?}",
                self.recent.len(),
                self.intensity.window
            );
            return self.escalate(child, reason);
        }
        let delay = self.next_delay(child, now);
        let delay = if with_backoff { delay } else { Duration::ZERO };
        self.stats.entry(child).or_default().backoff_s += delay.as_secs_f64();
        if !delay.is_zero() {
            self.owed.insert(child, delay);
        }
        let siblings = self.siblings_to_restart(child);
        info!(
            child,
            directive = if with_backoff { "restart-with-backoff" } else { "restart" },
            strategy = ?self.strategy,
            backoff_ms = delay.as_millis() as u64,
            siblings = siblings.len(),
            "Supervision: restarting {child}"
        );
        if also_self {
            if let Some(me) = self.children.iter().find(|c| c.name == child) {
                me.restart.do_send(RestartChild { because: child });
            }
        }
        for sibling in siblings {
            self.stats.entry(sibling.name).or_default().restarts += 1;
            sibling.restart.do_send(RestartChild { because: child });
        }
    }

    fn stop(&mut self, child: &'static str) {
        self.stopped.insert(child);
        self.stats.entry(child).or_default().stopped = true;
        info!(
            child,
            directive = "stop",
            "Supervision: {child} is stopped and will not be restarted"
        );
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
        let reason = format!("{}: {}", msg.kind, msg.reason);
        match msg.directive {
            // A child that resumes does not report; nothing to do if one did.
            Directive::Resume => {}
            Directive::Restart => self.restart(msg.child, reason, false, false),
            Directive::RestartWithBackoff => self.restart(msg.child, reason, true, false),
            Directive::Stop => self.stop(msg.child),
            Directive::Escalate => {
                self.stop(msg.child);
                self.escalate(msg.child, reason);
            }
        }
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, _: &mut Context<Self>) {
        match msg.directive {
            Directive::Restart => {
                self.restart(msg.child, "exited normally".into(), false, true);
            }
            _ => self.stop(msg.child),
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
        let mut stats = self.stats.clone();
        for c in &self.children {
            stats.entry(c.name).or_default().failures = c.failures.snapshot();
        }
        MessageResult(stats)
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
        let children = [("a", a), ("b", b), ("c", c)]
            .into_iter()
            .map(|(name, restart)| Entry {
                name,
                restart,
                failures: Default::default(),
            })
            .collect();
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
    async fn the_tree_stops_in_reverse_start_order_with_extensions_first() {
        struct Extra;
        impl Extension for Extra {
            fn name(&self) -> &'static str {
                "extra"
            }
            fn start(self: Box<Self>, _: Link, tree: &Tree) -> Started {
                // Any child will do to stand in for it; the order is what is tested.
                Started {
                    restart: tree.acker.clone().recipient(),
                    shutdown: tree.acker.clone().recipient(),
                }
            }
        }
        let (escalate, _) = sink();
        let config = Config {
            store: crate::config::StoreKind::Memory,
            shutdown_timeouts: "1s, saver=9s".parse().unwrap(),
            handle_signals: false,
            ..Config::default()
        };
        let tree = Supervisor::start_tree(
            &config,
            Arc::new(Metrics::default()),
            Box::new(crate::store::memory::MemoryStore::default()),
            escalate,
            vec![Box::new(Extra)],
        );
        let order: Vec<_> = tree
            .stop_order()
            .iter()
            .map(|c| (c.name, c.timeout.as_secs()))
            .collect();
        assert_eq!(
            order,
            [
                ("extra", 1),
                ("publisher", 1),
                ("consumer", 1),
                ("restarter", 1),
                ("saver", 9),
                ("acker", 1)
            ]
        );
        let restartable: Vec<_> = tree.restartable().iter().map(|c| c.name).collect();
        assert_eq!(
            restartable,
            [
                "acker",
                "saver",
                "restarter",
                "consumer",
                "publisher",
                "extra"
            ]
        );
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
        failed_with(child, Directive::Restart)
    }

    fn failed_with(child: &'static str, directive: Directive) -> ChildFailed {
        ChildFailed {
            child,
            kind: FailureKind::Panic,
            reason: "boom".into(),
            directive,
        }
    }

    /// Which of a, b and c were asked to restart, and why.
    fn asked(got: &[Got<RestartChild>; 3]) -> Vec<(&'static str, &'static str)> {
        ["a", "b", "c"]
            .into_iter()
            .zip(got)
            .flat_map(|(name, g)| g.take().into_iter().map(move |r| (name, r.because)))
            .collect()
    }

    #[actix_rt::test]
    async fn a_permanent_child_that_exits_normally_is_restarted_with_its_siblings() {
        let (s, _, got) = with_children(10, Duration::from_secs(5), Strategy::RestForOne);
        let exited = |directive| ChildExited {
            child: "b",
            directive,
        };
        s.send(exited(Directive::Restart)).await.unwrap();
        settle().await;
        // Unlike a failed child, an exited one did not stop itself: it is asked too.
        assert_eq!(asked(&got), [("b", "b"), ("c", "b")]);
        let stats = s.send(SupervisionStats).await.unwrap();
        assert_eq!((stats["b"].restarts, stats["b"].stopped), (1, false));

        // A transient or temporary one is left stopped, and later restarts skip it.
        s.send(exited(Directive::Stop)).await.unwrap();
        s.send(failed("a")).await.unwrap();
        settle().await;
        assert_eq!(asked(&got), [("c", "a")]);
        assert!(s.send(SupervisionStats).await.unwrap()["b"].stopped);
    }

    #[actix_rt::test]
    async fn the_stop_directive_restarts_no_one_and_counts_no_restart() {
        let (s, escalations, got) = with_children(0, Duration::from_secs(5), Strategy::OneForAll);
        s.send(failed_with("b", Directive::Stop)).await.unwrap();
        settle().await;
        assert!(asked(&got).is_empty());
        // A limit of zero restarts would have escalated on any restart.
        assert_eq!(escalations.len(), 0);
        let stats = s.send(SupervisionStats).await.unwrap();
        assert_eq!((stats["b"].restarts, stats["b"].stopped), (0, true));
    }

    #[actix_rt::test]
    async fn the_escalate_directive_escalates_at_once() {
        let (s, escalations, got) = with_children(10, Duration::from_secs(5), Strategy::OneForAll);
        s.send(failed_with("c", Directive::Escalate)).await.unwrap();
        settle().await;
        let e = escalations.take();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].child, e[0].reason.as_str()), ("c", "panic: boom"));
        assert!(asked(&got).is_empty());
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
        assert_eq!(
            (e[0].child, e[0].reason.as_str()),
            ("restarter", "panic: boom")
        );
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
        let (mut link, _, _) = crate::testkit::link_with(ChildPolicy {
            decider: Default::default(),
            restart: crate::policy::RestartType::Permanent,
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
        };
        let injector = crate::config::Faults::default().injector("saver", None);
        let saver = start_saver(link, acker, store, config, injector);
        settle().await;
        // Two failures in a row double the delay; after a quiet minute it starts over.
        for (tag, backoff, quiet) in [(1, 1000, 0), (2, 2000, 0), (3, 1000, 61)] {
            tokio::time::sleep(Duration::from_secs(quiet)).await;
            // The saver fails (as its guard would report it) and restarts.
            sup.send(failed_with("saver", Directive::RestartWithBackoff))
                .await
                .unwrap();
            saver.send(RestartChild { because: "saver" }).await.unwrap();
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
}

//! `Supervisor`: owns the restart policy over the tree's children.
//!
//! It is given the tree once its children have started (`crate::app` starts them). It
//! hears from every child that fails with a directive other than resume, and from a child
//! that finishes normally. It restarts the failed child's siblings as its strategy says
//! (one-for-one, one-for-all or rest-for-one), hands out backoff, keeps stopped children
//! out of later restarts, and escalates to the SignalActor on an `escalate` directive or
//! when restarts exceed the intensity limit. The failed child itself restarts in place
//! through actix's `Supervisor` (see `super::child`).

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use rand::{rngs::SmallRng, Rng};
use serde::Serialize;
use tokio::time::Instant;
use tracing::{error, info};

use super::child::{BackoffFor, ChildExited, ChildFailed, RestartChild};
use super::policy::Directive;
use super::strategy::{Backoff, Intensity, IntensityWindow, Strategy, Streaks};
use super::tree::{Member, Tree};
use crate::faults::{rng_for, Purpose};
use crate::names::ChildName;
use crate::{FastMap, FastSet};

/// How a supervisor restarts its children.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    /// Seeds the backoff's jitter.
    pub seed: Option<u64>,
}

/// Tells the SignalActor that supervision gave up: the ordered shutdown must run and the
/// process must exit non-zero.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct Escalate {
    pub child: ChildName,
    pub reason: String,
}

/// What one supervised child went through in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChildStats {
    /// Failures by kind (`panic`, `stall`, `store-unavailable`, ...), resumed ones too.
    pub failures: BTreeMap<&'static str, u64>,
    /// Restarts, its own and those its supervisor's strategy asked of it.
    pub restarts: u64,
    /// Time its restarts were held back by backoff.
    pub backoff_s: f64,
    /// Times its failure escalated: by directive, or past the restart intensity.
    pub escalations: u64,
    /// Whether it was stopped for good, by directive or by its restart type.
    pub stopped: bool,
}

pub struct Supervisor {
    strategy: Strategy,
    backoff: Backoff,
    window: IntensityWindow,
    streaks: Streaks,
    /// Per child: the delay its next start must wait, handed out once.
    owed: FastMap<ChildName, Duration>,
    rng: SmallRng,
    /// The children in start order.
    children: Vec<Member>,
    /// Children stopped for good, which no strategy restarts.
    stopped: FastSet<ChildName>,
    stats: BTreeMap<ChildName, ChildStats>,
    escalate: Recipient<Escalate>,
    escalated: bool,
}

impl Supervisor {
    pub(crate) fn new(settings: Settings, tree: &Tree, escalate: Recipient<Escalate>) -> Self {
        let children = tree.members().to_vec();
        let stats = children
            .iter()
            .map(|c| (c.name, ChildStats::default()))
            .collect();
        Supervisor {
            strategy: settings.strategy,
            backoff: settings.backoff,
            window: IntensityWindow::new(settings.intensity),
            streaks: Streaks::default(),
            owed: FastMap::default(),
            rng: rng_for(settings.seed, Purpose::Backoff),
            children,
            stopped: FastSet::default(),
            stats,
            escalate,
            escalated: false,
        }
    }

    /// The healthy siblings the strategy restarts along with `failed`. The failed child
    /// restarts itself: its guard stopped its context already. Stopped children stay
    /// stopped.
    fn siblings_to_restart(&self, failed: ChildName) -> Vec<Member> {
        let group: Vec<&Member> = self.children.iter().filter(|c| c.in_strategy).collect();
        let Some(at) = group.iter().position(|c| c.name == failed) else {
            return Vec::new();
        };
        self.strategy
            .siblings(at, group.len())
            .map(|i| group[i])
            .filter(|c| !self.stopped.contains(&c.name))
            .cloned()
            .collect()
    }

    /// Hands the failure up: the SignalActor runs the ordered shutdown and exits 1.
    fn escalate(&mut self, child: ChildName, reason: String) {
        if self.escalated {
            return;
        }
        self.escalated = true;
        self.stats.entry(child).or_default().escalations += 1;
        error!(child = child.as_str(), directive = "escalate", reason = %reason, "Supervision: escalating the failure of {child}");
        self.escalate.do_send(Escalate { child, reason });
    }

    /// Restarts `child` (itself too, when `also_self`, because it did not stop on its own)
    /// and the siblings its strategy names, unless the restart intensity is exceeded.
    fn restart(&mut self, child: ChildName, reason: String, with_backoff: bool, also_self: bool) {
        let now = Instant::now();
        self.stats.entry(child).or_default().restarts += 1;
        if let Some(n) = self.window.exceeded_by(now) {
            let window = self.window.limit().window;
            error!(
                child = child.as_str(),
                restarts = n,
                window_s = window.as_secs_f64(),
                "Restart intensity exceeded: {n} restarts within {window:?}"
            );
            return self.escalate(child, reason);
        }
        let n = self.streaks.failed(child, now, self.backoff.reset_after);
        let delay = self.backoff.delay(n, self.rng.random::<f64>());
        let delay = if with_backoff { delay } else { Duration::ZERO };
        self.stats.entry(child).or_default().backoff_s += delay.as_secs_f64();
        if !delay.is_zero() {
            self.owed.insert(child, delay);
        }
        let siblings = self.siblings_to_restart(child);
        let names: Vec<&str> = siblings.iter().map(|s| s.name.as_str()).collect();
        info!(
            child = child.as_str(),
            directive = if with_backoff {
                "restart-with-backoff"
            } else {
                "restart"
            },
            strategy = self.strategy.as_str(),
            backoff_ms = delay.as_millis() as u64,
            siblings = names.join(","),
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

    /// What `child` went through: the supervisor's counts, and the failures its `Link`
    /// counted, resumed ones too.
    fn stats_of(&self, child: &Member) -> ChildStats {
        ChildStats {
            failures: child.failures.snapshot(),
            ..self.stats.get(&child.name).cloned().unwrap_or_default()
        }
    }

    fn stop(&mut self, child: ChildName) {
        self.stopped.insert(child);
        self.stats.entry(child).or_default().stopped = true;
        info!(
            child = child.as_str(),
            directive = "stop",
            "Supervision: {child} is stopped and will not be restarted"
        );
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// Hands a starting child the backoff it owes, once; zero if it owes none.
impl Handler<BackoffFor> for Supervisor {
    type Result = MessageResult<BackoffFor>;
    fn handle(&mut self, msg: BackoffFor, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.owed.remove(&msg.child).unwrap_or_default())
    }
}

/// Acts on a child's failure by the directive its policy chose.
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

/// Starts a child that finished normally again, or leaves it stopped, by its restart type.
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

/// Describes the tree as it stands, for the dashboard: each child in start order, and the
/// restart intensity's window.
#[derive(Debug, Message)]
#[rtype(result = "TreeState")]
pub(crate) struct TreeView;

/// The tree as it stands.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TreeState {
    pub strategy: &'static str,
    /// Restarts within the intensity window now, and how many it allows.
    pub in_window: usize,
    pub max_restarts: u32,
    pub window_s: f64,
    pub escalated: bool,
    pub children: Vec<ChildView>,
}

/// One child, as the dashboard shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ChildView {
    pub name: &'static str,
    pub restart_type: &'static str,
    #[serde(flatten)]
    pub stats: ChildStats,
}

impl Handler<TreeView> for Supervisor {
    type Result = MessageResult<TreeView>;
    fn handle(&mut self, _: TreeView, _: &mut Context<Self>) -> Self::Result {
        let limit = self.window.limit();
        let children = self
            .children
            .iter()
            .map(|c| ChildView {
                name: c.name.as_str(),
                restart_type: c.restart_type.as_str(),
                stats: self.stats_of(c),
            })
            .collect();
        MessageResult(TreeState {
            strategy: self.strategy.as_str(),
            in_window: self.window.in_window(Instant::now()),
            max_restarts: limit.max_restarts,
            window_s: limit.window.as_secs_f64(),
            escalated: self.escalated,
            children,
        })
    }
}

/// Reports what each child went through, for the run report.
#[derive(Debug, Message)]
#[rtype(result = "BTreeMap<&'static str, ChildStats>")]
pub(crate) struct SupervisionStats;

impl Handler<SupervisionStats> for Supervisor {
    type Result = MessageResult<SupervisionStats>;
    fn handle(&mut self, _: SupervisionStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.children
                .iter()
                .map(|c| (c.name.as_str(), self.stats_of(c)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervision::FailureKind;
    use crate::testkit::{settle, sink, Got};

    const A: ChildName = ChildName::Extension("a");
    const B: ChildName = ChildName::Extension("b");
    const C: ChildName = ChildName::Extension("c");

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
        with_children_in(max_restarts, window, strategy, [true; 3])
    }

    /// The same, with whether each child is in the strategy.
    fn with_children_in(
        max_restarts: u32,
        window: Duration,
        strategy: Strategy,
        in_strategy: [bool; 3],
    ) -> (Addr<Supervisor>, Got<Escalate>, [Got<RestartChild>; 3]) {
        let (escalate, escalations) = sink();
        let (a, got_a) = sink();
        let (b, got_b) = sink();
        let (c, got_c) = sink();
        let settings = Settings {
            strategy,
            intensity: Intensity {
                max_restarts,
                window,
            },
            backoff: Backoff::default(),
            seed: Some(1),
        };
        let mut tree = Tree::default();
        let (shutdown, _) = sink();
        for ((name, restart), in_strategy) in [(A, a), (B, b), (C, c)].into_iter().zip(in_strategy)
        {
            tree.add(Member {
                name,
                restart,
                shutdown: shutdown.clone(),
                timeout: Duration::from_secs(5),
                failures: Default::default(),
                in_strategy,
                restart_type: crate::supervision::RestartType::Permanent,
            });
        }
        let s = Supervisor::new(settings, &tree, escalate).start();
        (s, escalations, [got_a, got_b, got_c])
    }

    /// Which of a, b and c were asked to restart after `failed` failed.
    async fn restarted_after(strategy: Strategy, failed: ChildName) -> Vec<ChildName> {
        let (s, _, got) = with_children(10, Duration::from_secs(5), strategy);
        s.send(self::failed(failed)).await.unwrap();
        settle().await;
        [A, B, C]
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
        assert!(restarted_after(Strategy::OneForOne, B).await.is_empty());
    }

    #[actix_rt::test]
    async fn one_for_all_restarts_every_sibling() {
        assert_eq!(restarted_after(Strategy::OneForAll, B).await, [A, C]);
        assert_eq!(restarted_after(Strategy::OneForAll, A).await, [B, C]);
    }

    #[actix_rt::test]
    async fn the_stats_count_failures_restarts_and_escalations_per_child() {
        let (s, _, _) = with_children(1, Duration::from_secs(60), Strategy::OneForAll);
        s.send(failed(B)).await.unwrap();
        s.send(failed(B)).await.unwrap();
        let stats = s.send(SupervisionStats).await.unwrap();
        assert_eq!(stats["b"].restarts, 2);
        assert_eq!(stats["b"].escalations, 1);
        // The second failure escalated instead of restarting the siblings.
        assert_eq!(stats["a"].restarts, 1);
        assert_eq!(stats["c"].restarts, 1);
        assert!(stats["a"].failures.is_empty());
    }

    /// The dashboard's events of what the supervisor did, in order, as JSON.
    fn dashboard_events(feed: &crate::dashboard::Feed) -> Vec<serde_json::Value> {
        feed.events()
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    #[actix_rt::test]
    async fn the_dashboard_hears_restarts_backoff_and_escalation_as_they_happen() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::Layer as _;
        let feed = std::sync::Arc::new(crate::dashboard::Feed::default());
        let layer = crate::dashboard::FeedLayer::new(feed.clone())
            .with_filter(crate::dashboard::FeedLayer::targets());
        let _heard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        let (s, _, _) = with_children(1, Duration::from_secs(60), Strategy::OneForAll);

        s.send(failed_with(B, Directive::RestartWithBackoff))
            .await
            .unwrap();
        let events = dashboard_events(&feed);
        let restart = events.last().expect("a restart event");
        assert_eq!(restart["child"], "b");
        assert_eq!(restart["directive"], "restart-with-backoff");
        assert_eq!(restart["strategy"], "one-for-all");
        assert_eq!(
            restart["siblings"], "a,c",
            "the siblings it restarts, by name"
        );
        assert!(restart["backoff_ms"].as_u64().unwrap() > 0, "{restart}");
        let tree = s.send(TreeView).await.unwrap();
        assert_eq!((tree.in_window, tree.max_restarts), (1, 1));
        let names: Vec<&str> = tree.children.iter().map(|c| c.name).collect();
        assert_eq!(names, ["a", "b", "c"], "in start order");
        assert!(tree.children[1].stats.backoff_s > 0.0);

        // A second restart within the window is more than it allows: an escalation.
        s.send(failed(B)).await.unwrap();
        let events = dashboard_events(&feed);
        let messages: Vec<&str> = events
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert!(
            messages[1].starts_with("Restart intensity exceeded"),
            "{messages:?}"
        );
        assert_eq!(events[2]["directive"], "escalate");
        assert_eq!(events[2]["level"], "ERROR");
        assert!(s.send(TreeView).await.unwrap().escalated);
    }

    #[actix_rt::test]
    async fn rest_for_one_restarts_only_later_siblings() {
        assert_eq!(restarted_after(Strategy::RestForOne, A).await, [B, C]);
        assert_eq!(restarted_after(Strategy::RestForOne, B).await, [C]);
        assert!(restarted_after(Strategy::RestForOne, C).await.is_empty());
    }

    fn failed(child: ChildName) -> ChildFailed {
        failed_with(child, Directive::Restart)
    }

    fn failed_with(child: ChildName, directive: Directive) -> ChildFailed {
        ChildFailed {
            child,
            kind: FailureKind::Panic,
            reason: "boom".into(),
            directive,
        }
    }

    /// Which of a, b and c were asked to restart, and why.
    fn asked(got: &[Got<RestartChild>; 3]) -> Vec<(ChildName, ChildName)> {
        [A, B, C]
            .into_iter()
            .zip(got)
            .flat_map(|(name, g)| g.take().into_iter().map(move |r| (name, r.because)))
            .collect()
    }

    #[actix_rt::test]
    async fn a_permanent_child_that_exits_normally_is_restarted_with_its_siblings() {
        let (s, _, got) = with_children(10, Duration::from_secs(5), Strategy::RestForOne);
        let exited = |directive| ChildExited {
            child: B,
            directive,
        };
        s.send(exited(Directive::Restart)).await.unwrap();
        settle().await;
        // Unlike a failed child, an exited one did not stop itself: it is asked too.
        assert_eq!(asked(&got), [(B, B), (C, B)]);
        let stats = s.send(SupervisionStats).await.unwrap();
        assert_eq!((stats["b"].restarts, stats["b"].stopped), (1, false));

        // A transient or temporary one is left stopped, and later restarts skip it.
        s.send(exited(Directive::Stop)).await.unwrap();
        s.send(failed(A)).await.unwrap();
        settle().await;
        assert_eq!(asked(&got), [(C, A)]);
        assert!(s.send(SupervisionStats).await.unwrap()["b"].stopped);
    }

    #[actix_rt::test]
    async fn the_stop_directive_restarts_no_one_and_counts_no_restart() {
        let (s, escalations, got) = with_children(0, Duration::from_secs(5), Strategy::OneForAll);
        s.send(failed_with(B, Directive::Stop)).await.unwrap();
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
        s.send(failed_with(C, Directive::Escalate)).await.unwrap();
        settle().await;
        let e = escalations.take();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].child, e[0].reason.as_str()), (C, "panic: boom"));
        assert!(asked(&got).is_empty());
    }

    #[actix_rt::test]
    async fn more_restarts_than_the_limit_within_the_window_escalate_once() {
        tokio::time::pause();
        let (s, escalations) = supervisor(2, Duration::from_secs(5));
        s.send(failed(ChildName::Saver)).await.unwrap();
        s.send(failed(ChildName::Acker)).await.unwrap();
        settle().await;
        assert_eq!(
            escalations.len(),
            0,
            "two restarts are within a limit of two"
        );
        s.send(failed(ChildName::Restarter)).await.unwrap();
        s.send(failed(ChildName::Saver)).await.unwrap();
        settle().await;
        let e = escalations.take();
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].child, e[0].reason.as_str()),
            (ChildName::Restarter, "panic: boom")
        );
    }

    #[actix_rt::test]
    async fn restarts_spread_beyond_the_window_do_not_escalate() {
        tokio::time::pause();
        let (s, escalations) = supervisor(2, Duration::from_secs(5));
        for _ in 0..6 {
            s.send(failed(ChildName::Saver)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert_eq!(escalations.len(), 0);
    }

    #[actix_rt::test]
    async fn a_child_outside_the_strategy_restarts_alone_and_never_with_a_sibling() {
        let five = Duration::from_secs(5);
        let (s, _, got) = with_children_in(10, five, Strategy::OneForAll, [false, true, true]);
        s.send(failed(A)).await.unwrap();
        settle().await;
        assert!(asked(&got).is_empty(), "a's failure restarted a sibling");
        s.send(failed(B)).await.unwrap();
        settle().await;
        assert_eq!(asked(&got), [(C, B)]);
    }
}

//! `Restarter`: owns host restarts and the index of when each host was last restarted.
//!
//! It receives deliveries from the Consumer, skips hosts restarted less than the minimum
//! interval ago (the talk's "block when needed"), and starts the restart action for the
//! rest. The action's outcomes come back to its mailbox, even across its own restarts;
//! it records successful restarts in the store's history, sends every outcome to the
//! Acker, and tells its watchers. The SignalActor asks it which restarts are running
//! (`Running`), so that the shutdown shields them.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::time::Instant;
use tracing::info;

use crate::action::{ActionsDone, JobDone, RestartAction, RestartError, RestartJob};
use crate::actors::acker::Outcomes;
use crate::actors::protocol::{
    Batch, HostRestart, HostRestarts, Outcome, RestartOutcome, Step, StepError,
};
use crate::faults::Injector;
use crate::message::{AckId, InstanceName};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::rails::{Rail, RailError, Rails, RecentStarts};
use crate::store::{
    Attempt, AttemptContext, AttemptOutcome, Claim, ClaimRestarts, Claimed, FleetRails,
    LoadRestarts, RecordAttempts, ReleaseClaims, StoreError,
};
use crate::supervision::{fail, guard, note_restart, report_error, Child, Directive, Link};
use crate::{FastMap, FLOW};

/// How restarts are decided.
#[derive(Debug, Clone)]
pub(crate) struct RestarterConfig {
    /// Hosts restarted less than this long ago are skipped; zero disables the check.
    pub min_interval: Duration,
    pub domain: std::sync::Arc<str>,
    /// A leashed Restarter only logs what its action would do, and acks the message.
    pub leashed: bool,
    /// The safety rails every restart must pass.
    pub rails: Rails,
    /// Who this service is, for the history: `hostname:pid`, or `--instance-id`.
    pub service: std::sync::Arc<str>,
    /// Whether the store keeps a history of every attempt. Without one, only the
    /// attempts that settle a claim are sent to it.
    pub history: bool,
    /// How long a claim waits for its restart's outcome before the history shows it as
    /// `unknown`.
    pub claim_ttl: Duration,
    /// Whether other processes may share the store, and so its claims.
    pub shared_store: bool,
}

/// The store calls the Restarter makes, each to the store's writer threads.
pub(crate) struct StoreCalls {
    pub load: Recipient<LoadRestarts>,
    pub record: Recipient<RecordAttempts>,
    pub claim: Recipient<ClaimRestarts>,
    pub release: Recipient<ReleaseClaims>,
}

impl StoreCalls {
    /// Every call to one store actor.
    pub(crate) fn to<A>(store: &Addr<A>) -> Self
    where
        A: Actor
            + Handler<LoadRestarts>
            + Handler<RecordAttempts>
            + Handler<ClaimRestarts>
            + Handler<ReleaseClaims>,
        A::Context: actix::dev::ToEnvelope<A, LoadRestarts>
            + actix::dev::ToEnvelope<A, RecordAttempts>
            + actix::dev::ToEnvelope<A, ClaimRestarts>
            + actix::dev::ToEnvelope<A, ReleaseClaims>,
    {
        Self {
            load: store.clone().recipient(),
            record: store.clone().recipient(),
            claim: store.clone().recipient(),
            release: store.clone().recipient(),
        }
    }
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
    /// The batch being planned, with how many of it have an outcome or a running
    /// restart. What is held here after a failure is failed by `restarting`.
    current: Option<(Batch, usize)>,
}

pub struct Restarter {
    link: Link,
    acker: Recipient<Outcomes>,
    store: StoreCalls,
    action: Box<dyn RestartAction>,
    config: RestarterConfig,
    clock: Clock,
    injector: Injector,
    /// Survives restarts: a stopped Restarter fails every restart it is asked for.
    retired: bool,
    /// How many times this Restarter has been restarted: an answer to a claim sent by
    /// an earlier incarnation cannot fail this one.
    incarnation: u64,
    /// Each host's last successful restart, in ms since the epoch. The store holds the
    /// durable copy; this index is loaded from it on start and kept in step after. It
    /// survives restarts: it is the safety rail against restarting a host twice within
    /// the interval, and a restart caused by a failing store could not reload it.
    /// It grows with every new host, and a table that doubles all at once held the loop
    /// for 25 ms at half a million hosts; griddle's table moves its entries a few at a
    /// time instead.
    last_restart: griddle::HashMap<InstanceName, i64, foldhash::fast::RandomState>,
    /// Survive restarts, because the restarts they list run on and their outcomes still
    /// arrive: each host being restarted, with the delivery that started its restart,
    /// and the deliveries that joined that restart. One restart of a host runs at a time.
    running: FastMap<InstanceName, AckId>,
    joined: FastMap<InstanceName, Vec<AckId>>,
    /// Survive restarts too: restarts waiting for a place under the rails' cap on
    /// restarts running at once, how many have one, and when recent ones started.
    waiting: VecDeque<RestartJob>,
    active: usize,
    started: RecentStarts,
    /// Whether any rail is set, decided once: none costs nothing per restart.
    rails_on: bool,
    /// Actions a reload replaced, whose restarts may still run.
    replaced: Vec<Box<dyn RestartAction>>,
    /// Survive restarts, as the claims they describe are under way: the restarts waiting
    /// for a claim in the store, and whether a claim is under way.
    to_claim: Vec<RestartJob>,
    claiming: bool,
    /// Survive restarts too: restarts the fleet's cap on restarts running at once made
    /// wait, to be claimed again once a place may have freed up, and whether that is
    /// already arranged.
    for_place: Vec<RestartJob>,
    place_asked: bool,
    /// Set at shutdown, when claims still queued in the store lose their use.
    claims_abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Survive restarts: the actors that asked to hear of every host restart, and what
    /// they are owed from the handler call in progress.
    watchers: Vec<Recipient<HostRestarts>>,
    notices: Vec<HostRestart>,
    state: State,
}

/// What to do for one delivery.
enum Plan {
    /// Restarted too recently: skipped, as a success.
    Skip(Recent),
    /// A restart of the host is running: the delivery shares its outcome.
    Join,
    /// A safety rail refuses the restart: a decision, and the message is acked.
    Refuse(Rail),
    /// A safety rail could not be checked: no restart, and the message is retried.
    Unsafe(RailError),
    Restart,
}

/// Why a host is not restarted. It is formatted only when logged or watched.
struct Recent {
    ago: Duration,
    min: Duration,
}

impl std::fmt::Display for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "last restarted {} ago, less than {}",
            humantime::format_duration(Duration::from_secs(self.ago.as_secs())),
            humantime::format_duration(self.min)
        )
    }
}

/// What one handler call has to send once it is done.
struct Finished {
    outcomes: Vec<Outcome>,
    rows: Vec<Attempt>,
    /// Read once per handler call.
    now_ms: i64,
}

/// How often restarts waiting for a place under the fleet's cap on restarts running at
/// once ask for one again: a claim each time, so not too often, and a restart waits no
/// longer than this for a place another instance freed.
const PLACE_POLL: Duration = Duration::from_millis(100);

/// What joiners are told of the restart they shared.
const SHARED: &str = "it was restarted for another message at the same time";

/// Why a host claimed by another restart that is still running is skipped.
const HELD: &str = "another instance is restarting it";

/// The claim a restart makes on its host.
fn claim_of(job: &RestartJob) -> Claim {
    Claim {
        host: job.host,
        message_id: job.message_id,
    }
}

impl Restarter {
    pub(crate) fn new(
        link: Link,
        acker: Recipient<Outcomes>,
        store: StoreCalls,
        action: Box<dyn RestartAction>,
        config: RestarterConfig,
        injector: Injector,
    ) -> Self {
        let rails_on = config.rails.any();
        Self {
            link,
            acker,
            store,
            action,
            config,
            clock: Clock::new(),
            injector,
            retired: false,
            incarnation: 0,
            last_restart: Default::default(),
            running: FastMap::default(),
            joined: FastMap::default(),
            waiting: VecDeque::new(),
            active: 0,
            started: RecentStarts::default(),
            rails_on,
            replaced: Vec::new(),
            to_claim: Vec::new(),
            claiming: false,
            for_place: Vec::new(),
            place_asked: false,
            claims_abandoned: Default::default(),
            watchers: Vec::new(),
            notices: Vec::new(),
            state: State::default(),
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

    /// Decides for one host, `now_ms` being read once per batch. A host is never
    /// restarted twice at once, whatever the interval.
    fn plan(&mut self, host: InstanceName, now_ms: i64) -> Plan {
        if self.running.contains_key(&host) {
            return Plan::Join;
        }
        if !self.config.min_interval.is_zero() {
            if let Some(&at) = self.last_restart.get(&host) {
                let ago = Duration::from_millis((now_ms - at).max(0) as u64);
                if ago < self.config.min_interval {
                    return Plan::Skip(Recent {
                        ago,
                        min: self.config.min_interval,
                    });
                }
            }
        }
        if self.rails_on {
            // The store counts the starts when the fleet shares the rate rail.
            let started = self.fleet().starts.is_none().then_some(&mut self.started);
            match self.config.rails.check(host, now_ms, started) {
                Ok(Some(rail)) => return Plan::Refuse(rail),
                Ok(None) => {}
                Err(e) => return Plan::Unsafe(e),
            }
        }
        Plan::Restart
    }

    /// Whether restarts are guarded by claims in the store: with no minimum interval
    /// there is nothing to guard, and a store no other process can share (the in-memory
    /// one) has no other instance to guard against: the index is the guard there.
    /// With the fleet's rails, a claim is a place under them too, so claims are made
    /// whatever the interval.
    fn guarded(&self) -> bool {
        self.config.shared_store && (!self.config.min_interval.is_zero() || self.fleet().any())
    }

    /// The rails every instance sharing the store shares: the cap on restarts running
    /// at once and the rate, counted in the store. A leashed instance restarts nothing,
    /// so it takes no place under them.
    fn fleet(&self) -> FleetRails {
        if !self.config.shared_store || self.config.leashed {
            return FleetRails::default();
        }
        let rails = &self.config.rails;
        FleetRails {
            running: rails.max_concurrent.map(|n| n as u64),
            starts: rails
                .rate
                .map(|r| (r.window.as_millis() as i64, u64::from(r.max))),
        }
    }

    /// Who makes the attempts, for the store.
    fn context(&self) -> AttemptContext {
        AttemptContext {
            domain: self.config.domain.clone(),
            action: self.action.name(),
            leashed: self.config.leashed,
            service: self.config.service.clone(),
            claimed: self.guarded(),
        }
    }

    /// Starts a restart now if the cap on restarts running at once has room, by adding
    /// it to `jobs`; else it waits its turn.
    fn launch(&mut self, job: RestartJob, jobs: &mut Vec<RestartJob>) {
        let cap = self.config.rails.max_concurrent.unwrap_or(usize::MAX);
        if self.active < cap {
            self.active += 1;
            jobs.push(job);
        } else {
            self.waiting.push_back(job);
        }
    }

    /// Claims the hosts waiting for a claim in the store, unless a claim is under way:
    /// those that arrive meanwhile go together in the next one, as the Saver's group
    /// commit does, so that a busy Restarter makes few, large claims. The answer comes
    /// back to the mailbox as `ClaimsDecided`, whichever incarnation reads it.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.to_claim.is_empty() {
            return;
        }
        self.claiming = true;
        let jobs = std::mem::take(&mut self.to_claim);
        let asked = self.store.claim.send(ClaimRestarts {
            claims: jobs.iter().map(claim_of).collect(),
            context: self.context(),
            now_ms: self.clock.now_ms(),
            interval_ms: self.config.min_interval.as_millis() as i64,
            ttl_ms: self.config.claim_ttl.as_millis() as i64,
            fleet: self.fleet(),
            abandoned: self.claims_abandoned.clone(),
        });
        let (me, incarnation) = (ctx.address(), self.incarnation);
        actix_rt::spawn(async move {
            let result = asked
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())));
            me.do_send(ClaimsDecided {
                jobs,
                result,
                incarnation,
            });
        });
    }

    /// Gives back claims whose restarts will not start, so that a redelivery can try
    /// again. A claim that cannot be given back stays, and its host counts as restarted
    /// for the interval: safety before liveness.
    fn give_back(&self, claims: Vec<Claim>) {
        if claims.is_empty() {
            return;
        }
        let n = claims.len();
        let asked = self.store.release.send(ReleaseClaims {
            service: self.config.service.clone(),
            claims,
        });
        actix_rt::spawn(async move {
            let res = asked
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())));
            if let Err(e) = res {
                tracing::warn!(
                    "Could not give back {n} restart claims ({e}); their hosts count as \
                     restarted until the minimum interval has passed"
                );
            }
        });
    }

    /// Takes in the store's answer to claims: restarts the hosts won, skips those held,
    /// and fails safe when the store could not answer.
    fn claims_decided(&mut self, msg: ClaimsDecided, ctx: &mut Context<Self>) {
        let ClaimsDecided {
            jobs,
            result,
            incarnation,
        } = msg;
        self.claiming = false;
        self.claim(ctx);
        let mut out = Finished {
            outcomes: Vec::with_capacity(jobs.len()),
            rows: Vec::new(),
            now_ms: self.clock.now_ms(),
        };
        let (mut start, mut done, mut back) = (Vec::new(), Vec::new(), Vec::new());
        let claimed = match result {
            Ok(claimed) => claimed,
            Err(e) => {
                // No restart without a claim. The claim may have been written all the
                // same, so it is given back too, unless the store never saw it.
                if e != StoreError::Closed {
                    back.extend(jobs.iter().map(claim_of));
                }
                for job in &jobs {
                    if self.running.get(&job.host) != Some(&job.id) {
                        continue;
                    }
                    self.running.remove(&job.host);
                    let joiners = self.joined.remove(&job.host).unwrap_or_default();
                    let hostname = job.host.hostname(&self.config.domain);
                    let e = RestartError::Unavailable(format!(
                        "cannot claim {hostname} in the store, so it is not restarted: {e}"
                    ));
                    self.notice(job.host, || RestartOutcome::Failed(e.clone()));
                    for tag in joiners.into_iter().chain([job.id]) {
                        report_error(&self.link.metrics, Self::NAME.as_str(), true, &e);
                        out.outcomes.push(Outcome::err_for(tag, e.clone()));
                    }
                }
                self.give_back(back);
                self.send(out.outcomes, out.rows, ctx);
                // An answer that waited in the mailbox through a restart is old news: a
                // store outage restarts the Restarter once per incarnation, not once per
                // claim that was under way when it began.
                if incarnation == self.incarnation && !self.retired {
                    report_error(&self.link.metrics, Self::NAME.as_str(), false, &e);
                    fail(self, ctx, (&e).into(), &e);
                }
                return;
            }
        };
        for (job, claimed) in jobs.into_iter().zip(claimed) {
            let tracked = self.running.get(&job.host) == Some(&job.id);
            if !tracked {
                // The shutdown, or a restart of this actor, gave up on the delivery.
                if claimed.won() {
                    back.push(claim_of(&job));
                }
                continue;
            }
            match claimed {
                Claimed::Won if self.retired => {
                    back.push(claim_of(&job));
                    self.running.remove(&job.host);
                    let joiners = self.joined.remove(&job.host).unwrap_or_default();
                    for tag in joiners.into_iter().chain([job.id]) {
                        out.outcomes
                            .push(Outcome::err_for(tag, StepError::Stopped(Self::NAME)));
                    }
                }
                Claimed::Won => match self.action.at_once(&job) {
                    Some(result) => {
                        self.active += 1;
                        done.push(JobDone { job, result });
                    }
                    None => self.launch(job, &mut start),
                },
                Claimed::Held { restarted_ms } => {
                    self.running.remove(&job.host);
                    let joiners = self.joined.remove(&job.host).unwrap_or_default();
                    let why = match restarted_ms {
                        Some(at) => {
                            let known = self.last_restart.entry(job.host).or_insert(at);
                            *known = (*known).max(at);
                            Recent {
                                ago: Duration::from_millis((out.now_ms - at).max(0) as u64),
                                min: self.config.min_interval,
                            }
                            .to_string()
                        }
                        None => HELD.to_string(),
                    };
                    let hostname = job.host.hostname(&self.config.domain);
                    for tag in joiners.into_iter().chain([job.id]) {
                        info!(
                            target: FLOW,
                            instance_name = %job.host,
                            actor = "restarter",
                            outcome = "skipped",
                            "Skipped restarting {hostname}: {why}"
                        );
                        Metrics::inc(&self.link.metrics.restart_skipped);
                        self.notice(job.host, || RestartOutcome::Skipped(why.clone()));
                        out.outcomes.push(Outcome::ok_for(tag));
                    }
                }
                Claimed::Refused => {
                    self.running.remove(&job.host);
                    let joiners = self.joined.remove(&job.host).unwrap_or_default();
                    self.refuse(&job, Rail::Rate, &mut out);
                    for tag in joiners {
                        self.refuse_joiner(&job, Rail::Rate);
                        out.outcomes.push(Outcome::ok_for(tag));
                    }
                    out.outcomes.push(Outcome::ok_for(job.id));
                }
                Claimed::Wait => self.for_place.push(job),
            }
        }
        self.ask_for_place(ctx);
        if !start.is_empty() {
            self.action.start(start, &ctx.address().recipient());
        }
        self.give_back(back);
        self.send(out.outcomes, out.rows, ctx);
        if !done.is_empty() {
            self.finished(done, ctx);
        }
    }

    /// Refuses a restart by a rail: a decision, not a failure, so its delivery is acked;
    /// the caller answers for it.
    fn refuse(&mut self, job: &RestartJob, rail: Rail, out: &mut Finished) {
        self.refuse_joiner(job, rail);
        if self.config.history {
            let outcome = AttemptOutcome::Refused(rail.as_str());
            out.rows.push(self.attempt(job, out.now_ms, outcome, None));
        }
    }

    /// Logs and counts a refusal for one delivery, which `refuse` records once.
    fn refuse_joiner(&mut self, job: &RestartJob, rail: Rail) {
        flow!(
            info,
            "restarter",
            "refused",
            job.host,
            job.message_id,
            job.attempt,
            "Refused restarting {}: the {} rail",
            job.host.hostname(&self.config.domain),
            rail.as_str()
        );
        self.link.metrics.refuse(rail);
        self.notice(job.host, || {
            RestartOutcome::Skipped(format!("refused by the {} rail", rail.as_str()))
        });
    }

    /// Arranges for the restarts waiting for a place under the fleet's cap to be
    /// claimed again after `PLACE_POLL`: the other instances' restarts finish unseen.
    /// (This instance's own finish sooner, once their outcomes are written: `send`.)
    /// The timer is a task of its own, so that it outlives restarts of this actor.
    fn ask_for_place(&mut self, ctx: &mut Context<Self>) {
        if self.for_place.is_empty() || self.place_asked {
            return;
        }
        self.place_asked = true;
        let me = ctx.address();
        actix_rt::spawn(async move {
            tokio::time::sleep(PLACE_POLL).await;
            me.do_send(ClaimAgain);
        });
    }

    /// Starts the restarts waiting for a place under the cap, as places free up.
    fn start_waiting(&mut self, ctx: &mut Context<Self>) {
        let cap = self.config.rails.max_concurrent.unwrap_or(usize::MAX);
        let mut jobs = Vec::new();
        while self.active < cap {
            let Some(mut job) = self.waiting.pop_front() else {
                break;
            };
            job.started_ms = self.clock.now_ms();
            // One the shutdown gave up on is no longer running.
            if self.running.get(&job.host) == Some(&job.id) {
                self.active += 1;
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            self.action.start(jobs, &ctx.address().recipient());
        }
    }

    /// Takes in the outcomes of restarts that finished: records the successes, decides
    /// the failures by the policy, and passes every one on to the Acker, for the delivery
    /// that started the restart and those that joined it.
    fn finished(&mut self, done: Vec<JobDone>, ctx: &mut Context<Self>) {
        let mut out = Finished {
            outcomes: Vec::with_capacity(done.len()),
            rows: Vec::new(),
            now_ms: self.clock.now_ms(),
        };
        let mut done = done.into_iter();
        while let Some(JobDone { job, result }) = done.next() {
            // A restart the shutdown gave up on has no delivery left to answer for, but
            // the host's restart happened all the same.
            let tracked = self.running.remove(&job.host) == Some(job.id);
            self.active = self.active.saturating_sub(1);
            let joiners = if tracked && !self.joined.is_empty() {
                self.joined.remove(&job.host).unwrap_or_default()
            } else {
                Vec::new()
            };
            if self.take_outcome(job, result, tracked, joiners, &mut out, ctx) != Directive::Resume
            {
                // The fresh incarnation decides the rest, each by the policy: they go back
                // through the mailbox, which outlives this one.
                let rest: Vec<JobDone> = done.collect();
                if !rest.is_empty() {
                    ctx.address().do_send(ActionsDone(rest));
                }
                break;
            }
        }
        self.start_waiting(ctx);
        self.send(out.outcomes, out.rows, ctx);
    }

    /// One attempt's row for the history.
    fn attempt(
        &self,
        job: &RestartJob,
        finished_ms: i64,
        outcome: AttemptOutcome,
        reason: Option<std::borrow::Cow<'static, str>>,
    ) -> Attempt {
        Attempt {
            message_id: job.message_id,
            host: job.host,
            started_ms: job.started_ms,
            finished_ms,
            outcome,
            reason,
        }
    }

    /// Takes in one restart's outcome, for its own delivery if it is `tracked` and for
    /// the `joiners`; returns the policy's directive on a failure, `Resume` on success.
    fn take_outcome(
        &mut self,
        job: RestartJob,
        result: Result<(), RestartError>,
        tracked: bool,
        joiners: Vec<AckId>,
        out: &mut Finished,
        ctx: &mut Context<Self>,
    ) -> Directive {
        let host = job.host;
        let result = match result {
            Ok(()) if self.injector.error() => Err(RestartError::Failed {
                host: host.hostname(&self.config.domain),
                reason: "an injected error".into(),
            }),
            r => r,
        };
        match result {
            Ok(()) => {
                self.last_restart.insert(host, out.now_ms);
                let row = self.attempt(&job, out.now_ms, AttemptOutcome::Restarted, None);
                out.rows.push(row);
                Metrics::inc(&self.link.metrics.restarted);
                let hostname = host.hostname(&self.config.domain);
                flow!(
                    info,
                    "restarter",
                    "restarted",
                    host,
                    job.message_id,
                    job.attempt,
                    "Restarted {hostname}"
                );
                self.notice(host, || RestartOutcome::Restarted);
                if tracked {
                    out.outcomes.push(Outcome::ok_for(job.id));
                }
                for tag in joiners {
                    info!(
                        target: FLOW,
                        instance_name = %host,
                        actor = "restarter",
                        outcome = "skipped",
                        "Skipped restarting {hostname}: {SHARED}"
                    );
                    Metrics::inc(&self.link.metrics.restart_skipped);
                    self.notice(host, || RestartOutcome::Skipped(SHARED.into()));
                    out.outcomes.push(Outcome::ok_for(tag));
                }
                Directive::Resume
            }
            Err(e) => {
                self.notice(host, || RestartOutcome::Failed(e.clone()));
                let outcome = match e {
                    RestartError::TimedOut { .. } => AttemptOutcome::TimedOut,
                    _ => AttemptOutcome::Failed,
                };
                // The attempt settles its claim, so it is recorded even without a history.
                if self.config.history || self.guarded() {
                    let row = self.attempt(&job, out.now_ms, outcome, Some(e.detail()));
                    out.rows.push(row);
                }
                let directive = fail(self, ctx, (&e).into(), &e);
                // Each delivery the failure nacks is an error of its own.
                for tag in joiners {
                    report_error(&self.link.metrics, Self::NAME.as_str(), true, &e);
                    out.outcomes.push(Outcome::err_for(tag, e.clone()));
                }
                report_error(&self.link.metrics, Self::NAME.as_str(), true, &e);
                if tracked {
                    out.outcomes.push(Outcome::err_for(job.id, e));
                }
                directive
            }
        }
    }

    fn send(&mut self, mut outcomes: Vec<Outcome>, rows: Vec<Attempt>, ctx: &mut Context<Self>) {
        if !self.notices.is_empty() {
            let notices = HostRestarts(std::mem::take(&mut self.notices));
            for w in &self.watchers {
                w.do_send(notices.clone());
            }
        }
        if !rows.is_empty() {
            // The nacks of failed restarts go out once their claims are given back: a
            // redelivery that overtook the release would find its host still claimed,
            // and skip it for good.
            let gives_back = self.guarded() && rows.iter().any(|r| r.outcome.gives_back_claim());
            let held = gives_back.then(|| (self.acker.clone(), std::mem::take(&mut outcomes)));
            // A failed history write is a store failure like the Saver's, decided by the
            // policy; its answer comes back through the mailbox.
            let context = self.context();
            // Settling a claim frees a place under the fleet's cap for those waiting.
            let freed = !self.for_place.is_empty();
            let written = self.store.record.send(RecordAttempts { context, rows });
            let me = ctx.address();
            actix_rt::spawn(async move {
                let res = written
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())));
                if freed {
                    me.do_send(ClaimAgain);
                }
                if let Some((acker, outcomes)) = held.filter(|(_, o)| !o.is_empty()) {
                    acker.do_send(Outcomes {
                        step: Step::Restart,
                        outcomes,
                    });
                }
                if let Err(e) = res {
                    me.do_send(HistoryFailed(e));
                }
            });
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
        let now_ms = self.clock.now_ms();
        let since_ms = now_ms - self.config.min_interval.as_millis() as i64;
        let load = self.store.load.send(LoadRestarts { since_ms, now_ms });
        ctx.wait(load.into_actor(self).map(|res, act, _| match res {
            Ok(Ok(rows)) => {
                info!("Loaded {} recent restarts from the history", rows.len());
                for (host, at) in rows {
                    let known = act.last_restart.entry(host).or_insert(at);
                    *known = (*known).max(at);
                }
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
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Restarts already running go on: their outcomes arrive in the mailbox, which the
        // fresh incarnation reads. Only the batch being planned is failed, and what it
        // put in the tables before its restarts were started is taken out again.
        let mut failed = Vec::new();
        let unfinished = self.state.current.take();
        for d in unfinished.iter().flat_map(|(b, done)| &b[*done..]) {
            let host = d.message.instance_name;
            if self.running.get(&host) == Some(&d.tag) {
                self.running.remove(&host);
            }
            if let Some(joiners) = self.joined.get_mut(&host) {
                joiners.retain(|tag| *tag != d.tag);
            }
            failed.push(Outcome::err(*d, StepError::Restarted(Self::NAME)));
        }
        self.send(failed, Vec::new(), ctx);
        // The index of last restarts is kept; `started` merges the store's history in.
        self.state = State::default();
        self.incarnation += 1;
        note_restart(self);
    }
}

/// Restarts the hosts a batch of dispatched deliveries names.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Restart(pub Batch);

impl Handler<Restart> for Restarter {
    type Result = ();
    fn handle(&mut self, msg: Restart, ctx: &mut Context<Self>) {
        if self.retired {
            let failed = msg
                .0
                .iter()
                .map(|&d| Outcome::err(d, StepError::Stopped(Self::NAME)))
                .collect();
            return self.send(failed, Vec::new(), ctx);
        }
        guard(self, ctx, "Restart", |act, ctx| {
            // Held here until every delivery has an outcome or a started restart: a
            // panic before then fails them all; a failure decided otherwise than resume
            // fails those not reached yet.
            act.state.current = Some((msg.0.clone(), 0));
            act.injector.maybe_fail();
            let (mut jobs, mut claims) = (Vec::new(), Vec::new());
            let mut out = Finished {
                outcomes: Vec::with_capacity(msg.0.len()),
                rows: Vec::new(),
                now_ms: act.clock.now_ms(),
            };
            for (i, &d) in msg.0.iter().enumerate() {
                let host = d.message.instance_name;
                let job = RestartJob {
                    id: d.tag,
                    message_id: d.id(),
                    host,
                    started_ms: out.now_ms,
                    attempt: d.attempt,
                };
                match act.plan(host, out.now_ms) {
                    Plan::Skip(why) => {
                        flow!(
                            info,
                            "restarter",
                            "skipped",
                            host,
                            job.message_id,
                            job.attempt,
                            "Skipped restarting {}: {why}",
                            host.hostname(&act.config.domain)
                        );
                        Metrics::inc(&act.link.metrics.restart_skipped);
                        act.notice(host, || RestartOutcome::Skipped(why.to_string()));
                        out.outcomes.push(Outcome::ok(d));
                    }
                    Plan::Join => act.joined.entry(host).or_default().push(d.tag),
                    Plan::Refuse(rail) => {
                        act.refuse(&job, rail, &mut out);
                        out.outcomes.push(Outcome::ok(d));
                    }
                    Plan::Unsafe(e) => {
                        // Failing safe, as Chaos Monkey does: no restart, and the message
                        // is nacked and retried.
                        let e = RestartError::Unavailable(e.to_string());
                        report_error(&act.link.metrics, Self::NAME.as_str(), true, &e);
                        if act.config.history {
                            let reason = Some(e.detail());
                            let failed = AttemptOutcome::Failed;
                            out.rows.push(act.attempt(&job, out.now_ms, failed, reason));
                        }
                        act.notice(host, || RestartOutcome::Failed(e.clone()));
                        let directive = fail(act, ctx, (&e).into(), &e);
                        out.outcomes.push(Outcome::err(d, e));
                        if directive != Directive::Resume {
                            act.state.current = Some((msg.0.clone(), i + 1));
                            break;
                        }
                    }
                    Plan::Restart if act.config.leashed => {
                        let would = act.action.describe(&job);
                        flow!(
                            info,
                            "restarter",
                            "leashed",
                            host,
                            job.message_id,
                            job.attempt,
                            "Would restart {} (leashed): {would}",
                            host.hostname(&act.config.domain)
                        );
                        Metrics::inc(&act.link.metrics.leashed);
                        if act.config.history {
                            let dry = AttemptOutcome::DryRun;
                            out.rows
                                .push(act.attempt(&job, out.now_ms, dry, Some(would.into())));
                        }
                        out.outcomes.push(Outcome::ok(d));
                    }
                    Plan::Restart if act.guarded() => {
                        // The host is claimed in the store first, and restarted once the
                        // claim is won; meanwhile other deliveries of it join this one.
                        act.running.insert(host, d.tag);
                        claims.push(job);
                    }
                    Plan::Restart => {
                        // An outcome known at once is taken in here, as if it had come
                        // back: no table, no trip through the mailbox.
                        if let Some(result) = act.action.at_once(&job) {
                            let directive =
                                act.take_outcome(job, result, true, Vec::new(), &mut out, ctx);
                            if directive != Directive::Resume {
                                act.state.current = Some((msg.0.clone(), i + 1));
                                break;
                            }
                            continue;
                        }
                        act.running.insert(host, d.tag);
                        act.launch(job, &mut jobs);
                    }
                }
            }
            if !jobs.is_empty() {
                act.action.start(jobs, &ctx.address().recipient());
            }
            if !claims.is_empty() {
                act.to_claim.extend(claims);
                act.claim(ctx);
            }
            if ctx.state() == ActorState::Running {
                act.state.current = None;
            }
            act.send(out.outcomes, out.rows, ctx);
        });
    }
}

/// Outcomes of restarts the action finished, whichever incarnation started them.
impl Handler<ActionsDone> for Restarter {
    type Result = ();
    fn handle(&mut self, msg: ActionsDone, ctx: &mut Context<Self>) {
        // No guard and no fault injection: these outcomes are the only word of restarts
        // that already happened, and a panic here would lose them.
        self.finished(msg.0, ctx);
    }
}

/// The store's answer to claims on hosts about to be restarted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ClaimsDecided {
    jobs: Vec<RestartJob>,
    result: Result<Vec<Claimed>, StoreError>,
    /// The incarnation that sent the claim.
    incarnation: u64,
}

impl Handler<ClaimsDecided> for Restarter {
    type Result = ();
    fn handle(&mut self, msg: ClaimsDecided, ctx: &mut Context<Self>) {
        // No guard and no fault injection, as for outcomes: a claim won must be used or
        // given back, and a panic here would strand it until its ttl.
        self.claims_decided(msg, ctx);
    }
}

/// A place under the fleet's cap on restarts running at once may have freed up.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ClaimAgain;

impl Handler<ClaimAgain> for Restarter {
    type Result = ();
    fn handle(&mut self, _: ClaimAgain, ctx: &mut Context<Self>) {
        self.place_asked = false;
        // The shutdown, or a restart of this actor, may have given up on some.
        let waiting = std::mem::take(&mut self.for_place);
        let running = &self.running;
        let tracked = waiting
            .into_iter()
            .filter(|job| running.get(&job.host) == Some(&job.id));
        self.to_claim.extend(tracked);
        if !self.retired {
            self.claim(ctx);
        }
    }
}

/// A history write failed; the policy decides what the Restarter does about it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct HistoryFailed(pub StoreError);

impl Handler<HistoryFailed> for Restarter {
    type Result = ();
    fn handle(&mut self, HistoryFailed(e): HistoryFailed, ctx: &mut Context<Self>) {
        report_error(&self.link.metrics, Self::NAME.as_str(), false, &e);
        fail(self, ctx, (&e).into(), &e);
    }
}

/// New settings from a reload of the configuration: they apply to restarts planned from
/// now on; restarts running go on as they were started.
pub struct Reconfigure {
    pub rails: Rails,
    pub leashed: bool,
    pub min_interval: Duration,
    pub action: Box<dyn RestartAction>,
}

impl Message for Reconfigure {
    type Result = ();
}

impl Handler<Reconfigure> for Restarter {
    type Result = ();
    fn handle(&mut self, msg: Reconfigure, _: &mut Context<Self>) {
        self.rails_on = msg.rails.any();
        self.config.rails = msg.rails;
        self.config.leashed = msg.leashed;
        self.config.min_interval = msg.min_interval;
        // The old action's restarts still report to this mailbox; it is kept so that the
        // shutdown can stop them.
        let old = std::mem::replace(&mut self.action, msg.action);
        self.replaced.push(old);
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
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        // Restarts still running outlived the shield; their messages are nacked already.
        // Their outcomes may still come, and are then only recorded.
        let owners = self.running.drain().map(|(_, id)| id);
        let joiners = self.joined.drain().flat_map(|(_, ids)| ids);
        let failed = owners
            .chain(joiners)
            .map(|id| Outcome::err_for(id, StepError::Closed(Self::NAME)))
            .collect();
        self.send(failed, Vec::new(), ctx);
        // Restarts still running end here: a command's process group is killed.
        self.action.stop();
        for old in &mut self.replaced {
            old.stop();
        }
        // Restarts still waiting for a claim, or for a place to claim, have none to give
        // back, and a claim still queued in the store is not made.
        self.claims_abandoned
            .store(true, std::sync::atomic::Ordering::Release);
        self.to_claim.clear();
        self.for_place.clear();
        // Restarts still waiting for a place never started: their claims go back.
        let waiting = std::mem::take(&mut self.waiting);
        if self.guarded() {
            self.give_back(waiting.iter().map(claim_of).collect());
        }
        self.active = 0;
        self.retired = true;
    }
}

/// The deliveries whose restart is running, which the shutdown must not abandon.
#[derive(Debug, Message)]
#[rtype(result = "HashSet<AckId>")]
pub(crate) struct Running;

impl Handler<Running> for Restarter {
    type Result = MessageResult<Running>;
    fn handle(&mut self, _: Running, _: &mut Context<Self>) -> Self::Result {
        let owners = self.running.values().copied();
        MessageResult(
            owners
                .chain(self.joined.values().flatten().copied())
                .collect(),
        )
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
                ("running", self.running.len()),
                ("joined", self.joined.values().map(Vec::len).sum()),
                ("waiting", self.waiting.len()),
                ("to_claim", self.to_claim.len()),
                ("waiting_for_a_fleet_place", self.for_place.len()),
                ("hosts_indexed", self.last_restart.len()),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::simulated::{SimulatedConfig, SimulatedRestarts};
    use crate::faults::{rng_for, Purpose};
    use crate::iowait::AlarmClock;
    use crate::store::Store;
    use crate::testkit::{by_tag, delivery, link, name, results, settle, sink, FakeStore, Got};
    use std::sync::{Arc, Mutex};

    struct Rig {
        restarter: Addr<Restarter>,
        outcomes: Got<Outcomes>,
        history: Arc<Mutex<Vec<Attempt>>>,
        failed: Got<crate::supervision::ChildFailed>,
        link: Link,
        store: Addr<FakeStore>,
    }

    fn rig(io_delay: Duration, failure_rate: f64, min_interval: Duration, store: FakeStore) -> Rig {
        rig_with(
            io_delay,
            failure_rate,
            min_interval,
            store,
            Rails::default(),
        )
    }

    fn rig_with(
        io_delay: Duration,
        failure_rate: f64,
        min_interval: Duration,
        store: FakeStore,
        rails: Rails,
    ) -> Rig {
        let (link, failed, _) = link();
        let kept = link.clone();
        let (acker, outcomes) = sink();
        let history = store.restarts.clone();
        let store = store.start();
        let kept_store = store.clone();
        let calls = StoreCalls::to(&store);
        let config = RestarterConfig {
            min_interval,
            domain: "example.net".into(),
            leashed: false,
            rails,
            service: "test".into(),
            history: true,
            claim_ttl: Duration::from_secs(90),
            shared_store: true,
        };
        let action = simulated(io_delay, failure_rate);
        let injector = Injector::none(ChildName::Restarter);
        let restarter = actix::Supervisor::start(move |_| {
            Restarter::new(link, acker, calls, action, config, injector)
        });
        Rig {
            restarter,
            outcomes,
            history,
            failed,
            link: kept,
            store: kept_store,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn simulated(io_delay: Duration, failure_rate: f64) -> Box<dyn RestartAction> {
        let config = SimulatedConfig {
            io_delay,
            io_jitter: false,
            clock: AlarmClock::Tokio,
            failure_rate,
            domain: "example.net".into(),
        };
        let rng = rng_for(Some(1), Purpose::SimulatedRestarts);
        Box::new(SimulatedRestarts::new(config, rng))
    }

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
        // Another instance restarted it a minute ago, and its claim stands.
        let claim = crate::store::Claim {
            host: name("cattle-old"),
            message_id: uuid::Uuid::new_v4(),
        };
        let terms = crate::store::ClaimTerms {
            context: &AttemptContext::test(),
            now_ms: now_ms - 60_000,
            interval_ms: HOUR.as_millis() as i64,
            ttl_ms: 1_000,
            fleet: crate::store::FleetRails::default(),
        };
        store.inner.claim_restarts(&[claim], &terms).unwrap();
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
        let err = RestartError::Failed {
            host: name("cattle-zpsk").hostname(&"example.net".into()),
            reason: "the simulated restart failed".into(),
        };
        assert_eq!(
            err.to_string(),
            "Could not restart cattle-zpsk.example.net: the simulated restart failed"
        );
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
        let got = by_tag(&r.outcomes);
        assert_eq!(got[0], (AckId(1), Ok(())));
        assert!(
            matches!(got[1], (AckId(2), Err(StepError::Restart(_)))),
            "{got:?}"
        );
        // The index survived the failure: cattle-a is still skipped as recently restarted.
        assert_eq!(got[2], (AckId(3), Ok(())));
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
            self.action = simulated(Duration::ZERO, 1.0);
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

    #[actix_rt::test]
    async fn an_outcome_that_arrives_after_a_restart_still_reaches_the_acker() {
        tokio::time::pause();
        let r = rig(
            Duration::from_secs(10),
            0.0,
            Duration::ZERO,
            FakeStore::new(None),
        );
        let d = delivery(1, "cattle-a");
        r.restarter.send(Restart(vec![d].into())).await.unwrap();
        // A sibling's failure restarts the Restarter while the host restarts.
        r.restarter
            .send(crate::supervision::RestartChild {
                because: ChildName::Saver,
            })
            .await
            .unwrap();
        settle().await;
        assert!(
            results(&r.outcomes).is_empty(),
            "the running restart was failed"
        );
        assert_eq!(
            r.restarter.send(Running).await.unwrap(),
            HashSet::from([d.tag])
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        assert_eq!(r.history.lock().unwrap().len(), 1);
    }

    #[actix_rt::test]
    async fn a_failed_history_write_is_decided_like_any_store_failure() {
        let down = crate::store::StoreError::Unavailable("disk full".into());
        let r = rig(
            Duration::ZERO,
            0.0,
            Duration::ZERO,
            FakeStore::new(Some(down)),
        );
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        settle().await;
        // The restart itself succeeded, and its message is acked.
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        assert_eq!(r.link.failures.snapshot()["store-unavailable"], 1);
        let failed = r.failed.take();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].directive, Directive::RestartWithBackoff);
        assert_eq!(
            r.link
                .metrics
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[actix_rt::test]
    async fn the_index_survives_a_restart_that_cannot_reload_it() {
        tokio::time::pause();
        let r = rig(Duration::ZERO, 0.0, HOUR, FakeStore::new(None));
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        // The store goes away, and the Restarter restarts: it cannot reload the history.
        let down = crate::store::StoreError::Unavailable("gone".into());
        r.store
            .send(crate::testkit::FailWith(Some(down)))
            .await
            .unwrap();
        r.restarter
            .send(crate::supervision::RestartChild {
                because: ChildName::Saver,
            })
            .await
            .unwrap();
        r.restarter
            .send(Restart(vec![delivery(2, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(()), Ok(())]);
        let m = r.link.metrics.snapshot();
        assert_eq!(
            (m.restarted, m.restart_skipped),
            (1, 1),
            "the host was restarted again within the interval"
        );
    }

    #[actix_rt::test]
    async fn a_refusal_by_a_rail_acks_and_is_counted_but_restarts_nothing() {
        let rails = Rails {
            deny: "pet-*".parse().unwrap(),
            rate: Some("1h=1".parse().unwrap()),
            ..Rails::default()
        };
        let r = rig_with(Duration::ZERO, 0.0, HOUR, FakeStore::new(None), rails);
        let ds = vec![
            delivery(1, "pet-fluffy"),
            delivery(2, "cattle-a"),
            delivery(3, "cattle-b"),
        ];
        r.restarter.send(Restart(ds.into())).await.unwrap();
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(()), Ok(()), Ok(())]);
        let m = &r.link.metrics;
        assert_eq!(m.snapshot().restarted, 1);
        assert_eq!(
            m.refusals(),
            std::collections::BTreeMap::from([("deny", 1), ("rate", 1)])
        );
    }

    #[actix_rt::test]
    async fn restarts_over_the_cap_wait_their_turn() {
        tokio::time::pause();
        let rails = Rails {
            max_concurrent: Some(1),
            ..Rails::default()
        };
        let io = Duration::from_secs(10);
        let r = rig_with(io, 0.0, Duration::ZERO, FakeStore::new(None), rails);
        let ds = vec![delivery(1, "cattle-a"), delivery(2, "cattle-b")];
        r.restarter.send(Restart(ds.into())).await.unwrap();
        // Both wait on a restart, and the shutdown would shield both.
        assert_eq!(r.restarter.send(Running).await.unwrap().len(), 2);
        tokio::time::sleep(io + Duration::from_millis(5)).await;
        settle().await;
        assert_eq!(by_tag(&r.outcomes), vec![(AckId(1), Ok(()))]);
        tokio::time::sleep(io).await;
        settle().await;
        assert_eq!(by_tag(&r.outcomes), vec![(AckId(2), Ok(()))]);
    }

    /// A second Restarter on the rig's store, as another instance of the service.
    fn another_instance(r: &Rig, rails: Rails) -> (Addr<Restarter>, Got<Outcomes>) {
        let (link, _, _) = link();
        let (acker, outcomes) = sink();
        let calls = StoreCalls::to(&r.store);
        let config = RestarterConfig {
            min_interval: HOUR,
            domain: "example.net".into(),
            leashed: false,
            rails,
            service: "another".into(),
            history: true,
            claim_ttl: Duration::from_secs(90),
            shared_store: true,
        };
        let action = simulated(Duration::from_secs(1), 0.0);
        let injector = Injector::none(ChildName::Restarter);
        let restarter = actix::Supervisor::start(move |_| {
            Restarter::new(link, acker, calls, action, config, injector)
        });
        (restarter, outcomes)
    }

    #[actix_rt::test]
    async fn two_instances_on_one_store_restart_a_host_once() {
        tokio::time::pause();
        let r = rig(Duration::from_secs(1), 0.0, HOUR, FakeStore::new(None));
        let (other, other_outcomes) = another_instance(&r, Rails::default());
        r.restarter
            .send(Restart(vec![delivery(1, "web-01")].into()))
            .await
            .unwrap();
        other
            .send(Restart(vec![delivery(2, "web-01")].into()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        // Both messages are acked; the host was restarted by one instance alone.
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        assert_eq!(results(&other_outcomes), vec![Ok(())]);
        assert_eq!(r.history.lock().unwrap().len(), 1);
        // The loser learnt nothing it could cache while the restart ran; asked again
        // now, it is told the restart happened and caches it.
        other
            .send(Restart(vec![delivery(3, "web-01")].into()))
            .await
            .unwrap();
        settle().await;
        assert_eq!(results(&other_outcomes), vec![Ok(())]);
        assert_eq!(r.history.lock().unwrap().len(), 1);
    }

    #[actix_rt::test]
    async fn the_cap_on_restarts_at_once_counts_every_instance() {
        tokio::time::pause();
        let rails = Rails {
            max_concurrent: Some(1),
            ..Rails::default()
        };
        let io = Duration::from_secs(10);
        let r = rig_with(io, 0.0, HOUR, FakeStore::new(None), rails.clone());
        let (other, other_outcomes) = another_instance(&r, rails);
        r.restarter
            .send(Restart(vec![delivery(1, "web-01")].into()))
            .await
            .unwrap();
        settle().await;
        other
            .send(Restart(vec![delivery(2, "web-02")].into()))
            .await
            .unwrap();
        // The other instance's restart waits for the one place the fleet has.
        tokio::time::sleep(io / 2).await;
        settle().await;
        let holds = other.send(Probe).await.unwrap().holds;
        assert!(
            holds.contains(&("waiting_for_a_fleet_place", 1)),
            "{holds:?}"
        );
        tokio::time::sleep(io / 2 + Duration::from_millis(5)).await;
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        assert!(results(&other_outcomes).is_empty());
        // It gets the place once the first restart is over, and restarts its host.
        tokio::time::sleep(PLACE_POLL + Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(results(&other_outcomes), vec![Ok(())]);
    }

    #[actix_rt::test]
    async fn no_claim_no_restart_and_the_message_is_retried() {
        let down = crate::store::StoreError::Unavailable("connection refused".into());
        let r = rig(Duration::ZERO, 0.0, HOUR, FakeStore::new(None));
        r.store
            .send(crate::testkit::FailWith(Some(down)))
            .await
            .unwrap();
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        let got = results(&r.outcomes);
        assert!(
            matches!(
                &got[..],
                [Err(StepError::Restart(RestartError::Unavailable(why)))]
                    if why.contains("cannot claim cattle-a.example.net")
            ),
            "{got:?}"
        );
        assert_eq!(r.link.metrics.snapshot().restarted, 0);
    }

    #[actix_rt::test]
    async fn a_failed_restart_gives_its_claim_back_for_the_redelivery() {
        tokio::time::pause();
        let r = rig(Duration::ZERO, 1.0, HOUR, FakeStore::new(None));
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        assert!(results(&r.outcomes)[0].is_err());
        // The action works again, and the redelivery restarts the host.
        r.restarter.send(WorkAgain).await.unwrap();
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        assert_eq!(results(&r.outcomes), vec![Ok(())]);
        assert_eq!(r.link.metrics.snapshot().restarted, 1);
    }

    /// Makes every later host restart succeed, for tests.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct WorkAgain;

    impl Handler<WorkAgain> for Restarter {
        type Result = ();
        fn handle(&mut self, _: WorkAgain, _: &mut Context<Self>) {
            self.action = simulated(Duration::ZERO, 0.0);
        }
    }

    #[actix_rt::test]
    async fn a_rail_that_cannot_be_checked_restarts_nothing_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let rails = Rails {
            pause_file: Some(file.join("below-a-file")),
            ..Rails::default()
        };
        let r = rig_with(Duration::ZERO, 0.0, HOUR, FakeStore::new(None), rails);
        r.restarter
            .send(Restart(vec![delivery(1, "cattle-a")].into()))
            .await
            .unwrap();
        settle().await;
        let got = results(&r.outcomes);
        assert!(
            matches!(
                &got[..],
                [Err(StepError::Restart(RestartError::Unavailable(_)))]
            ),
            "{got:?}"
        );
        assert_eq!(r.link.metrics.snapshot().restarted, 0);
    }
}

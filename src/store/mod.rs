//! The store contract: the `Store` trait, the `StoreOpener` that makes its connections,
//! and `StoreWriter`, the `SyncArbiter` actor that runs one connection on a thread of its
//! own. `sqlite.rs` and `memory.rs` implement it.
//!
//! Every call into a store blocks, so only `StoreWriter` makes them, on its own thread:
//! as many threads as the store takes connections at once, one for SQLite's single
//! writer, several for a pool. The Saver and the Restarter talk to them through messages
//! and never touch a connection. A connection that fails with `Unavailable` is dropped,
//! and the next call opens a new one: a store that comes back is used again without a
//! restart of the process.

pub(crate) mod memory;
pub mod postgres;
pub mod sqlite;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use thiserror::Error;
use uuid::Uuid;

use crate::message::{InstanceName, Message};

/// Why a store call failed.
///
/// The variants are the failure kinds a supervisor can tell apart: a store that is
/// unavailable for now is worth retrying, a corrupt one is not.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("cannot open store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store corrupt: {0}")]
    Corrupt(String),
    #[error("store is closed")]
    Closed,
    #[error("store writer panicked: {0}")]
    Panicked(String),
}

/// One message to save, at the delivery attempt it arrived with.
#[derive(Debug, Clone, Copy)]
pub struct SaveRow {
    pub message: Message,
    pub attempt: u32,
}

/// What became of one restart attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Restarted,
    /// A leashed action's dry run: logged, and nothing run.
    DryRun,
    Failed,
    TimedOut,
    /// Refused by the safety rail of this name.
    Refused(&'static str),
}

impl AttemptOutcome {
    /// The outcome as the history stores it: `restarted`, `dry_run`, `failed`,
    /// `timed_out` or `refused:RAIL`.
    pub fn text(self) -> std::borrow::Cow<'static, str> {
        match self {
            AttemptOutcome::Restarted => "restarted".into(),
            AttemptOutcome::DryRun => "dry_run".into(),
            AttemptOutcome::Failed => "failed".into(),
            AttemptOutcome::TimedOut => "timed_out".into(),
            AttemptOutcome::Refused(rail) => format!("refused:{rail}").into(),
        }
    }
}

/// What the attempts recorded together have in common: who made them, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptContext {
    /// The hostname is `host.domain`.
    pub domain: Arc<str>,
    /// The action that ran them: `sim`, `command`, `webhook`.
    pub action: &'static str,
    pub leashed: bool,
    /// The service instance that made them: `hostname:pid`, or `--instance-id`.
    pub service: Arc<str>,
    /// Whether their restarts held claims, which recording them settles. Without the
    /// guard there is nothing to settle, and recording costs no more than the rows.
    pub claimed: bool,
}

impl AttemptContext {
    /// The context of tests' attempts.
    #[cfg(test)]
    pub(crate) fn test() -> Self {
        Self {
            domain: "example.net".into(),
            action: "sim",
            leashed: false,
            service: "test".into(),
            claimed: true,
        }
    }
}

/// One restart attempt, for the history: every one is recorded, not only successes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub message_id: Uuid,
    pub host: InstanceName,
    /// Milliseconds since the Unix epoch, UTC.
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: AttemptOutcome,
    /// Why it failed or what a dry run would have run; a fixed text costs nothing.
    pub reason: Option<std::borrow::Cow<'static, str>>,
}

impl Attempt {
    /// A successful restart at `at_ms`, for tests.
    #[cfg(test)]
    pub(crate) fn restarted(host: InstanceName, at_ms: i64, message_id: Uuid) -> Self {
        Self {
            message_id,
            host,
            started_ms: at_ms,
            finished_ms: at_ms,
            outcome: AttemptOutcome::Restarted,
            reason: None,
        }
    }
}

/// One connection to a place that keeps messages and the restart history.
pub trait Store: Send {
    /// Saves a batch in one transaction. Saving is idempotent by message id: a message
    /// already stored keeps one row and gets its delivery count raised. Returns how many
    /// messages were new.
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError>;

    /// Appends restart attempts, which share `context`, to the history, giving back the
    /// claims of those that failed.
    fn record_attempts(
        &mut self,
        context: &AttemptContext,
        rows: &[Attempt],
    ) -> Result<(), StoreError>;

    /// Each host claimed at or after `since_ms` whose claim stands at `now_ms`, with when
    /// it counts as restarted: its restart has an outcome that keeps the claim, or it is
    /// past its ttl without one. A claim still waiting within its ttl may yet be given
    /// back, and the guard answers for it.
    fn restarts_since(
        &mut self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(InstanceName, i64)>, StoreError>;

    /// The guard: claims each host for one delivery's restart, unless the host was
    /// restarted or claimed less than `terms.interval_ms` before `terms.now_ms`; returns,
    /// claim by claim, whether it was won. It is atomic across every connection to the
    /// store, so that instances sharing one store never restart a host twice within the
    /// interval, and the claim is durable before it returns, so that a restart is
    /// recorded before it runs. A host named twice is won once at most. With
    /// `terms.fleet` set, the claims the guard lets through, in order, also take a place
    /// under the fleet's rails, checked and taken in the same atomic step.
    fn claim_restarts(
        &mut self,
        claims: &[Claim],
        terms: &ClaimTerms,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Gives back claims won by `service` whose restarts never started, so that a
    /// redelivery can try again: each host counts from its claim before, if it had one.
    /// `record_attempts` gives back the claim of a failed attempt the same way, in the
    /// same transaction; the claim of any other attempt stands, and is what tells the
    /// guard when the host was last restarted.
    fn release_claims(&mut self, service: &str, claims: &[Claim]) -> Result<(), StoreError>;

    fn close(&mut self) -> Result<(), StoreError>;
}

/// One host claimed for the restart one delivery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub host: InstanceName,
    /// The message whose restart it is: its outcome, recorded by `record_attempts`,
    /// settles the claim.
    pub message_id: Uuid,
}

/// What claims made together share.
#[derive(Debug, Clone)]
pub struct ClaimTerms<'a> {
    pub context: &'a AttemptContext,
    /// Milliseconds since the Unix epoch, UTC.
    pub now_ms: i64,
    /// The minimum interval between two restarts of one host.
    pub interval_ms: i64,
    /// How long a claim may wait for its outcome: past it, the history shows the
    /// restart's outcome as `unknown`. The host still counts as restarted.
    pub ttl_ms: i64,
    /// The rails the instances sharing the store share.
    pub fleet: FleetRails,
}

/// The safety rails a fleet shares through its store, checked in the claim's own
/// transaction: every instance's claims count against one limit. With neither set,
/// a claim costs no more than the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetRails {
    /// At most this many restarts claimed and waiting for their outcome at once; claims
    /// past it wait their turn (`Claimed::Wait`). A claim past its ttl no longer counts.
    pub running: Option<u64>,
    /// At most `.1` restarts started (claims won) within any `.0` ms; claims past it are
    /// refused (`Claimed::Refused`).
    pub starts: Option<(i64, u64)>,
}

impl FleetRails {
    pub fn any(&self) -> bool {
        self.running.is_some() || self.starts.is_some()
    }

    /// How long the store keeps when restarts started: the rate's window, and never
    /// less than a day, so that a window made longer by a reload still counts the
    /// restarts before it.
    pub(crate) fn starts_kept_ms(&self) -> i64 {
        const DAY_MS: i64 = 86_400_000;
        self.starts.map_or(DAY_MS, |(window, _)| window.max(DAY_MS))
    }

    /// The places left under the rails, given how many restarts are `running` and how
    /// many `started` within the rate's window.
    pub(crate) fn places(&self, running: u64, started: u64) -> Places {
        Places {
            running: self.running.map(|max| max.saturating_sub(running)),
            starts: self.starts.map(|(_, max)| max.saturating_sub(started)),
        }
    }
}

/// What the fleet's rails still allow within one claim's transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Places {
    running: Option<u64>,
    starts: Option<u64>,
}

impl Places {
    /// Takes a place for one claim the guard lets through, or says why there is none:
    /// the rate refuses before the cap makes it wait, as the rails are checked before
    /// the cap on one instance.
    pub(crate) fn take(&mut self) -> Option<Claimed> {
        if self.starts == Some(0) {
            return Some(Claimed::Refused);
        }
        if self.running == Some(0) {
            return Some(Claimed::Wait);
        }
        if let Some(n) = &mut self.starts {
            *n -= 1;
        }
        if let Some(n) = &mut self.running {
            *n -= 1;
        }
        None
    }
}

/// Whether a claim was won.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    Won,
    /// Another claim holds the host. `restarted_ms` is when the host counts as last
    /// restarted, for the claimant's index, unless that claim's restart is still
    /// running, in which case it may yet be released.
    Held {
        restarted_ms: Option<i64>,
    },
    /// The fleet's rate rail refuses the restart: a decision, as on one instance.
    Refused,
    /// The fleet's cap on restarts running at once is reached: the claim is to be made
    /// again once a place may have freed up.
    Wait,
}

impl Claimed {
    pub fn won(self) -> bool {
        self == Claimed::Won
    }
}

impl ClaimTerms<'_> {
    /// Whether a host's claim made at `at_ms`, waiting for its outcome until
    /// `expires_ms` (`None` once it has one), stops a new claim; and if so, what the
    /// claimant is told.
    /// A host whose restart is still running elsewhere is held whatever the interval:
    /// a host is never restarted twice at once.
    pub(crate) fn stopped_by(&self, at_ms: i64, expires_ms: Option<i64>) -> Option<Claimed> {
        let running = expires_ms.is_some_and(|e| e >= self.now_ms);
        if self.now_ms - at_ms >= self.interval_ms && !running {
            return None;
        }
        Some(Claimed::Held {
            restarted_ms: (!running).then_some(at_ms),
        })
    }
}

impl AttemptOutcome {
    /// Whether recording this outcome gives back the claim its restart held: nothing
    /// was restarted. Any other outcome leaves the claim standing as the host's last
    /// restart; a restart that timed out may have happened, so it keeps its claim too:
    /// safety before liveness.
    pub(crate) fn gives_back_claim(self) -> bool {
        self == AttemptOutcome::Failed
    }
}

/// What to read of the restart history.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only instance names that match this glob, in SQLite's `GLOB` syntax.
    pub host: Option<String>,
    /// Only attempts started at or after this, in ms since the epoch.
    pub since_ms: Option<i64>,
    /// Only this outcome; `refused` stands for every `refused:RAIL`.
    pub outcome: Option<String>,
    pub limit: u64,
    /// The time claims are judged at: one past its ttl is shown as `unknown`.
    pub now_ms: i64,
}

/// One attempt as the history holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryRow {
    pub started_ms: i64,
    pub finished_ms: i64,
    pub instance: String,
    pub hostname: String,
    pub action: String,
    pub leashed: bool,
    pub outcome: String,
    pub reason: Option<String>,
    pub service: String,
    pub message_id: String,
}

/// Why the history shows a claim's outcome as `unknown`.
pub(crate) const UNKNOWN: &str = "claimed, and no outcome was recorded within the claim ttl";

/// The history rows of claims with no attempt recorded for them: `running` while within
/// their ttl, `unknown` after, when the instance that claimed them is gone.
pub(crate) fn open_claim_row(claim: OpenClaimRow, now_ms: i64) -> HistoryRow {
    let unknown = claim.expires_ms < now_ms;
    HistoryRow {
        started_ms: claim.claimed_ms,
        finished_ms: if unknown { claim.expires_ms } else { now_ms },
        hostname: claim.hostname.unwrap_or_else(|| claim.instance.clone()),
        instance: claim.instance,
        action: claim.action.unwrap_or_default(),
        leashed: false,
        outcome: if unknown { "unknown" } else { "running" }.into(),
        reason: Some(if unknown {
            UNKNOWN.into()
        } else {
            "claimed, and the restart is running".into()
        }),
        service: claim.service.unwrap_or_default(),
        message_id: claim.message_id.unwrap_or_default(),
    }
}

/// A claim without an outcome, as a store reads it back for the history.
pub(crate) struct OpenClaimRow {
    pub instance: String,
    pub claimed_ms: i64,
    pub expires_ms: i64,
    pub service: Option<String>,
    pub message_id: Option<String>,
    pub hostname: Option<String>,
    pub action: Option<String>,
}

/// Puts the attempts and the open claims that match `q` together, newest first.
pub(crate) fn merge_history(
    mut attempts: Vec<HistoryRow>,
    claims: Vec<OpenClaimRow>,
    q: &HistoryQuery,
    now_ms: i64,
) -> Vec<HistoryRow> {
    let wanted = |r: &HistoryRow| q.outcome.as_deref().is_none_or(|o| o == r.outcome);
    attempts.extend(
        claims
            .into_iter()
            .map(|c| open_claim_row(c, now_ms))
            .filter(wanted),
    );
    attempts.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
    attempts.truncate(q.limit as usize);
    attempts
}

/// A restart history row's host, read back from a database: a row that is not a valid
/// name was not written by the service, so it is skipped, loudly.
pub(crate) fn history_host(host: &str) -> Option<InstanceName> {
    match InstanceName::parse(host) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("Skipped restart history row {host:?}: {e}");
            None
        }
    }
}

/// Opens connections to one store.
pub(crate) trait StoreOpener: Send + Sync {
    /// How many connections the store takes at once: one for SQLite, which has a single
    /// writer, more for a pool. The store gets one writer thread per connection.
    fn connections(&self) -> usize;

    /// Opens one connection, with the schema in place.
    fn open(&self) -> Result<Box<dyn Store>, StoreError>;
}

/// What the writer threads of one store share.
struct Shared {
    opener: Arc<dyn StoreOpener>,
    /// A connection opened before the threads started, for the first thread to take:
    /// opening it at start-up makes a bad path a clear error before anything runs.
    first: Mutex<Option<Box<dyn Store>>>,
    /// Set by `CloseStore`: every thread's next call fails with `Closed`.
    closed: AtomicBool,
    /// How many threads are inside a store call, and a signal for when none is: the
    /// close waits for calls under way on other threads, which the process would
    /// otherwise cut short as it exits.
    busy: Mutex<usize>,
    idle: std::sync::Condvar,
}

/// How long a close waits for the calls under way on other threads.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Shared {
    /// Counts one call under way until the guard is dropped.
    fn enter(self: &Arc<Self>) -> Busy {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Busy(self.clone())
    }

    /// Waits until no call is under way, or `CLOSE_WAIT` has passed.
    fn wait_idle(&self) {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (busy, waited) = self
            .idle
            .wait_timeout_while(busy, CLOSE_WAIT, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        drop(busy);
        if waited.timed_out() {
            tracing::warn!("Closing the store with calls still under way after {CLOSE_WAIT:?}");
        }
    }
}

/// One store call under way.
struct Busy(Arc<Shared>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut n = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// Runs one connection to a `Store` on a `SyncArbiter` thread.
pub(crate) struct StoreWriter {
    shared: Arc<Shared>,
    conn: Option<Box<dyn Store>>,
}

impl StoreWriter {
    /// Starts the store's writer threads, one per connection it takes; `first` is a
    /// connection already open.
    pub(crate) fn start(opener: Arc<dyn StoreOpener>, first: Box<dyn Store>) -> Addr<StoreWriter> {
        let threads = opener.connections().max(1);
        let shared = Arc::new(Shared {
            opener,
            first: Mutex::new(Some(first)),
            closed: AtomicBool::new(false),
            busy: Mutex::new(0),
            idle: std::sync::Condvar::new(),
        });
        SyncArbiter::start(threads, move || StoreWriter {
            conn: shared.first.lock().expect("first connection").take(),
            shared: shared.clone(),
        })
    }

    /// Runs one store call on this thread's connection, opening one if it has none. A
    /// connection that was already open and fails as unavailable may have died while it
    /// sat idle: a database restart, or `pg_terminate_backend`, ends every connection
    /// of a pool, and each thread learns of it only on its next call. That call is made
    /// once more on a fresh connection, so that one outage fails each caller once, not
    /// once per stale connection. Every call is safe to repeat: saves are idempotent by
    /// message id, and a claim already won is held, not won twice.
    fn call<R>(
        &mut self,
        f: impl Fn(&mut dyn Store) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _busy = self.shared.enter();
        let reused = self.conn.is_some();
        let result = self.call_once(&f);
        if reused && matches!(result, Err(StoreError::Unavailable(_))) {
            return self.call_once(&f);
        }
        result
    }

    /// Runs one store call. A panic inside the store becomes an error, so that the
    /// thread, which nothing would restart, lives on; after an unavailable store or a
    /// panic the connection is dropped, and the next call opens a fresh one.
    fn call_once<R>(
        &mut self,
        f: &impl Fn(&mut dyn Store) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            if let Some(mut conn) = self.conn.take() {
                let _ = conn.close();
            }
            return Err(StoreError::Closed);
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            // The store opened at start-up, so one that cannot be opened now is down for
            // a while, not misconfigured: the caller retries, as for any outage.
            None => self
                .conn
                .insert(self.shared.opener.open().map_err(|e| match e {
                    StoreError::Open { reason, .. } => StoreError::Unavailable(reason),
                    e => e,
                })?),
        };
        let result = catch_unwind(AssertUnwindSafe(|| f(conn.as_mut())))
            .unwrap_or_else(|p| Err(StoreError::Panicked(crate::units::panic_text(p.as_ref()))));
        if matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Panicked(_))
        ) {
            tracing::warn!("Dropping the store connection; the next call opens a new one");
            self.conn = None;
        }
        result
    }
}

impl Actor for StoreWriter {
    type Context = SyncContext<Self>;
}

/// Writes a group commit: a batch of messages in one transaction.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub(crate) struct SaveBatch(pub Vec<SaveRow>);

impl Handler<SaveBatch> for StoreWriter {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, msg: SaveBatch, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.save(&msg.0))
    }
}

/// Appends restart attempts to the history.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub(crate) struct RecordAttempts {
    pub context: AttemptContext,
    pub rows: Vec<Attempt>,
}

impl Handler<RecordAttempts> for StoreWriter {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: RecordAttempts, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.record_attempts(&msg.context, &msg.rows))
    }
}

/// Loads each host's latest restart since a time, to seed the Restarter's index.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(InstanceName, i64)>, StoreError>")]
pub(crate) struct LoadRestarts {
    pub since_ms: i64,
    pub now_ms: i64,
}

impl Handler<LoadRestarts> for StoreWriter {
    type Result = Result<Vec<(InstanceName, i64)>, StoreError>;
    fn handle(&mut self, msg: LoadRestarts, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.restarts_since(msg.since_ms, msg.now_ms))
    }
}

/// Closes the store once the calls under way on every thread have finished; later
/// calls, on every connection, fail with `StoreError::Closed`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub(crate) struct CloseStore;

impl Handler<CloseStore> for StoreWriter {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: CloseStore, _: &mut SyncContext<Self>) -> Self::Result {
        // Every call sent before the close was taken by some thread before it; those
        // still under way on other threads finish first.
        self.shared.wait_idle();
        let result = self.call(|s| s.close());
        self.shared.closed.store(true, Ordering::Release);
        self.conn = None;
        result
    }
}

/// Claims hosts for restarts, in one atomic step across every connection.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Claimed>, StoreError>")]
pub(crate) struct ClaimRestarts {
    pub claims: Vec<Claim>,
    pub context: AttemptContext,
    pub now_ms: i64,
    pub interval_ms: i64,
    pub ttl_ms: i64,
    pub fleet: FleetRails,
    /// Set once the claimant has shut down: a claim still queued then is answered
    /// `Closed` without touching the store, so that the shutdown waits neither for
    /// claims no restart will use nor for giving them back.
    pub abandoned: Arc<AtomicBool>,
}

impl ClaimRestarts {
    /// What its claims share, as the store reads it.
    pub(crate) fn terms(&self) -> ClaimTerms<'_> {
        ClaimTerms {
            context: &self.context,
            now_ms: self.now_ms,
            interval_ms: self.interval_ms,
            ttl_ms: self.ttl_ms,
            fleet: self.fleet,
        }
    }
}

impl Handler<ClaimRestarts> for StoreWriter {
    type Result = Result<Vec<Claimed>, StoreError>;
    fn handle(&mut self, msg: ClaimRestarts, _: &mut SyncContext<Self>) -> Self::Result {
        if msg.abandoned.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let terms = msg.terms();
        self.call(|s| s.claim_restarts(&msg.claims, &terms))
    }
}

/// Gives back claims whose restarts never started.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub(crate) struct ReleaseClaims {
    pub service: std::sync::Arc<str>,
    pub claims: Vec<Claim>,
}

impl Handler<ReleaseClaims> for StoreWriter {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: ReleaseClaims, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.release_claims(&msg.service, &msg.claims))
    }
}

/// The guard's contract, for each store's tests: `a` and `b` are two connections to one
/// empty store, as two instances would hold.
#[cfg(test)]
pub(crate) fn claims_are_won_once_per_interval(a: &mut dyn Store, b: &mut dyn Store) {
    let name = |s| InstanceName::parse(s).unwrap();
    let claim = |host| Claim {
        host: name(host),
        message_id: Uuid::new_v4(),
    };
    let context = AttemptContext::test();
    let terms = |now_ms| ClaimTerms {
        context: &context,
        now_ms,
        interval_ms: 500,
        ttl_ms: 100,
        fleet: FleetRails::default(),
    };
    let (h, other) = (claim("cattle-a"), claim("cattle-b"));
    assert_eq!(
        a.claim_restarts(&[h], &terms(1_000)).unwrap(),
        [Claimed::Won]
    );
    // A claim whose restart runs still may be given back: it is not a restart yet.
    let again = Claim {
        message_id: Uuid::new_v4(),
        ..h
    };
    assert_eq!(
        b.claim_restarts(&[again, other, other], &terms(1_050))
            .unwrap(),
        [
            Claimed::Held { restarted_ms: None },
            Claimed::Won,
            Claimed::Held { restarted_ms: None }
        ]
    );
    // Its restart is recorded: the claim stands, and the host counts as restarted when
    // it was claimed, before the action ran.
    let mut done = Attempt::restarted(h.host, 1_020, h.message_id);
    done.started_ms = 1_000;
    a.record_attempts(&context, &[done]).unwrap();
    assert_eq!(
        b.claim_restarts(&[again], &terms(1_200)).unwrap(),
        [Claimed::Held {
            restarted_ms: Some(1_000)
        }]
    );
    assert_eq!(
        b.claim_restarts(&[again], &terms(1_500)).unwrap(),
        [Claimed::Won]
    );
    // A claim left without an outcome past its ttl counts as a restart.
    assert_eq!(
        a.claim_restarts(&[other], &terms(1_300)).unwrap(),
        [Claimed::Held {
            restarted_ms: Some(1_050)
        }]
    );
    // A failed restart gives its claim back, and the host counts from its claim before.
    let third = claim("cattle-c");
    assert_eq!(
        a.claim_restarts(&[third], &terms(3_000)).unwrap(),
        [Claimed::Won]
    );
    let mut failed = Attempt::restarted(third.host, 3_010, third.message_id);
    failed.outcome = AttemptOutcome::Failed;
    b.record_attempts(&context, &[failed]).unwrap();
    assert_eq!(
        b.claim_restarts(&[third], &terms(3_020)).unwrap(),
        [Claimed::Won]
    );
    // A release by another service, or for another message, gives nothing back.
    b.release_claims("someone-else", &[third]).unwrap();
    b.release_claims(&context.service, &[claim("cattle-c")])
        .unwrap();
    assert!(!a.claim_restarts(&[third], &terms(3_100)).unwrap()[0].won());
    // A release by its owner does.
    a.release_claims(&context.service, &[third]).unwrap();
    assert_eq!(
        a.claim_restarts(&[third], &terms(3_200)).unwrap(),
        [Claimed::Won]
    );
    a.release_claims(&context.service, &[third]).unwrap();
    // The index loads hosts restarted, or claimed past their ttl, since a time; a claim
    // still within its ttl may yet be given back.
    let mut since = a.restarts_since(1_000, 1_600).unwrap();
    since.sort_by_key(|(h, _)| h.as_str().to_string());
    assert_eq!(since, [(other.host, 1_050)]);
    let mut since = a.restarts_since(1_000, 3_300).unwrap();
    since.sort_by_key(|(h, _)| h.as_str().to_string());
    assert_eq!(since, [(h.host, 1_500), (other.host, 1_050)]);
}

/// What the Restarter loads at start: each host's latest claim that stands.
#[cfg(test)]
pub(crate) fn the_guard_loads_each_hosts_latest_claim(s: &mut dyn Store) {
    let h = InstanceName::parse("cattle-a").unwrap();
    let context = AttemptContext::test();
    for at in [100, 300] {
        let claim = Claim {
            host: h,
            message_id: Uuid::new_v4(),
        };
        let terms = ClaimTerms {
            context: &context,
            now_ms: at,
            interval_ms: 150,
            ttl_ms: 10,
            fleet: FleetRails::default(),
        };
        assert_eq!(s.claim_restarts(&[claim], &terms).unwrap(), [Claimed::Won]);
        let done = Attempt::restarted(h, at + 5, claim.message_id);
        s.record_attempts(&context, &[done]).unwrap();
    }
    assert_eq!(s.restarts_since(0, 400).unwrap(), vec![(h, 300)]);
    assert!(s.restarts_since(301, 400).unwrap().is_empty());
}

/// A claim on each of `hosts`, each for a message of its own, in the `racer`'s own
/// order: turned `turn` places, and backwards for odd racers.
#[cfg(test)]
fn in_own_order(hosts: &[InstanceName], racer: usize, turn: usize) -> Vec<Claim> {
    let mut claims: Vec<Claim> = hosts
        .iter()
        .map(|&host| Claim {
            host,
            message_id: Uuid::new_v4(),
        })
        .collect();
    claims.rotate_left(turn % hosts.len());
    if racer % 2 == 1 {
        claims.reverse();
    }
    claims
}

/// The guard, raced: 8 connections claim the same 100 hosts at once, each in an order of
/// its own, and each host is won exactly once, with no claim failing.
#[cfg(test)]
pub(crate) fn raced_claims_win_each_host_once(open: &(dyn Fn() -> Box<dyn Store> + Sync)) {
    let hosts: Vec<InstanceName> = (0..100)
        .map(|i| InstanceName::parse(&format!("host-{i}")).unwrap())
        .collect();
    let context = AttemptContext::test();
    let wins: Vec<Vec<(InstanceName, Claimed)>> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..8)
            .map(|racer| {
                let mut store = open();
                let (hosts, context) = (&hosts, &context);
                s.spawn(move || {
                    let claims = in_own_order(hosts, racer, racer * 13);
                    let terms = ClaimTerms {
                        context,
                        now_ms: 10_000,
                        interval_ms: 3_600_000,
                        ttl_ms: 60_000,
                        fleet: FleetRails::default(),
                    };
                    let got = store.claim_restarts(&claims, &terms).unwrap();
                    claims.iter().map(|c| c.host).zip(got).collect()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for host in &hosts {
        let winners = wins
            .iter()
            .flatten()
            .filter(|(h, c)| h == host && c.won())
            .count();
        assert_eq!(winners, 1, "{host} was won {winners} times");
    }
}

/// Instances saving the same messages, and claiming the same hosts, each in an order of
/// its own and over and over, never fail for waiting on each other: a store that took
/// rows in the order it was given them would deadlock.
#[cfg(test)]
pub(crate) fn writes_in_any_order_never_deadlock(open: &(dyn Fn() -> Box<dyn Store> + Sync)) {
    let hosts: Vec<InstanceName> = (0..200)
        .map(|i| InstanceName::parse(&format!("host-{i}")).unwrap())
        .collect();
    let messages: Vec<crate::message::Message> = hosts
        .iter()
        .map(|&h| crate::message::Message::new(h))
        .collect();
    let context = AttemptContext::test();
    std::thread::scope(|s| {
        let racers: Vec<_> = (0..4)
            .map(|racer| {
                let mut store = open();
                let (hosts, messages, context) = (&hosts, &messages, &context);
                s.spawn(move || {
                    for round in 0..25 {
                        let turn = (racer * 37 + round * 11) % hosts.len();
                        let mut rows: Vec<SaveRow> = messages
                            .iter()
                            .map(|&message| SaveRow {
                                message,
                                attempt: 1 + racer as u32,
                            })
                            .collect();
                        rows.rotate_left(turn);
                        if racer % 2 == 1 {
                            rows.reverse();
                        }
                        let claims = in_own_order(hosts, racer, turn);
                        store.save(&rows).expect("save");
                        let terms = ClaimTerms {
                            context,
                            now_ms: 1_000 * round as i64,
                            interval_ms: 500,
                            ttl_ms: 100,
                            fleet: FleetRails::default(),
                        };
                        store.claim_restarts(&claims, &terms).expect("claim");
                    }
                })
            })
            .collect();
        for r in racers {
            r.join().unwrap();
        }
    });
}

/// The fleet's rails, for each store's tests: `a` and `b` are two connections to one
/// empty store. Every claim the guard lets through takes a place under the cap on
/// restarts running at once and under the rate, whichever connection makes it.
#[cfg(test)]
pub(crate) fn the_fleets_rails_count_every_connection(a: &mut dyn Store, b: &mut dyn Store) {
    let claim = |host: &str| Claim {
        host: InstanceName::parse(host).unwrap(),
        message_id: Uuid::new_v4(),
    };
    let context = AttemptContext::test();
    let terms = |now_ms, fleet| ClaimTerms {
        context: &context,
        now_ms,
        interval_ms: 0,
        ttl_ms: 100,
        fleet,
    };
    let capped = FleetRails {
        running: Some(2),
        starts: None,
    };
    let (x, y, z) = (claim("cattle-x"), claim("cattle-y"), claim("cattle-z"));
    let wait = Claimed::Wait;
    let won =
        |c: &mut dyn Store, claims: &[Claim], at| c.claim_restarts(claims, &terms(at, capped));
    assert_eq!(won(a, &[x, y], 1_000).unwrap(), [Claimed::Won; 2]);
    // A host whose restart runs is held whatever the interval, and takes no place.
    let x_again = Claim {
        message_id: Uuid::new_v4(),
        ..x
    };
    let held = Claimed::Held { restarted_ms: None };
    assert_eq!(won(b, &[x_again, z], 1_010).unwrap(), [held, wait]);
    // A recorded outcome frees a place; so does a claim past its ttl.
    let done = Attempt::restarted(x.host, 1_020, x.message_id);
    a.record_attempts(&context, &[done]).unwrap();
    assert_eq!(won(b, &[z], 1_030).unwrap(), [Claimed::Won]);
    assert_eq!(won(b, &[claim("cattle-w")], 1_040).unwrap(), [wait]);
    assert_eq!(won(b, &[claim("cattle-w")], 1_101).unwrap(), [Claimed::Won]);

    // The rate counts the claims won within its window, and refuses past it.
    let rated = FleetRails {
        running: None,
        starts: Some((1_000, 2)),
    };
    let (p, q, r) = (claim("cattle-p"), claim("cattle-q"), claim("cattle-r"));
    let refused = Claimed::Refused;
    let rate =
        |c: &mut dyn Store, claims: &[Claim], at| c.claim_restarts(claims, &terms(at, rated));
    assert_eq!(
        rate(a, &[p, q, r], 5_000).unwrap(),
        [Claimed::Won, Claimed::Won, refused]
    );
    assert_eq!(rate(b, &[r], 5_999).unwrap(), [refused]);
    assert_eq!(rate(b, &[r], 6_000).unwrap(), [Claimed::Won]);
}

/// The fleet's rails, raced: 8 connections claim 10 hosts each at once, and the places
/// under the cap, then under the rate, are taken exactly once.
#[cfg(test)]
pub(crate) fn raced_claims_take_each_place_once(open: &(dyn Fn() -> Box<dyn Store> + Sync)) {
    let context = AttemptContext::test();
    let race = |round: usize, now_ms: i64, fleet: FleetRails| -> Vec<Claimed> {
        std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|racer| {
                    let mut store = open();
                    let context = &context;
                    s.spawn(move || {
                        let claims: Vec<Claim> = (0..10)
                            .map(|i| Claim {
                                host: InstanceName::parse(&format!("h-{round}-{racer}-{i}"))
                                    .unwrap(),
                                message_id: Uuid::new_v4(),
                            })
                            .collect();
                        let terms = ClaimTerms {
                            context,
                            now_ms,
                            interval_ms: 3_600_000,
                            ttl_ms: 60_000,
                            fleet,
                        };
                        store.claim_restarts(&claims, &terms).unwrap()
                    })
                })
                .collect();
            racers.into_iter().flat_map(|r| r.join().unwrap()).collect()
        })
    };
    let count = |all: &[Claimed], which: Claimed| all.iter().filter(|&&c| c == which).count();
    let capped = race(
        0,
        10_000,
        FleetRails {
            running: Some(5),
            starts: None,
        },
    );
    assert_eq!(count(&capped, Claimed::Won), 5, "{capped:?}");
    assert_eq!(count(&capped, Claimed::Wait), 75);
    // The capped round's claims are past their ttl by now, and its starts out of the
    // rate's window.
    let rated = race(
        1,
        100_000,
        FleetRails {
            running: None,
            starts: Some((1_000, 7)),
        },
    );
    assert_eq!(count(&rated, Claimed::Won), 7, "{rated:?}");
    assert_eq!(count(&rated, Claimed::Refused), 73);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Opens connections that fail while `down` is set, or once the server has ended
    /// them (those opened before the `ended` count), counting every open.
    struct Flaky {
        down: Arc<AtomicBool>,
        opened: Arc<AtomicU32>,
        ended: Arc<AtomicU32>,
    }

    struct FlakyConn {
        down: Arc<AtomicBool>,
        ended: Arc<AtomicU32>,
        number: u32,
    }

    impl Store for FlakyConn {
        fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
            if self.down.load(Ordering::SeqCst) || self.number < self.ended.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection reset".into()));
            }
            Ok(rows.len() as u64)
        }
        fn record_attempts(&mut self, _: &AttemptContext, _: &[Attempt]) -> Result<(), StoreError> {
            Ok(())
        }
        fn restarts_since(
            &mut self,
            _: i64,
            _: i64,
        ) -> Result<Vec<(InstanceName, i64)>, StoreError> {
            Ok(Vec::new())
        }
        fn claim_restarts(
            &mut self,
            claims: &[Claim],
            _: &ClaimTerms,
        ) -> Result<Vec<Claimed>, StoreError> {
            Ok(vec![Claimed::Won; claims.len()])
        }
        fn release_claims(&mut self, _: &str, _: &[Claim]) -> Result<(), StoreError> {
            Ok(())
        }
        fn close(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    impl StoreOpener for Flaky {
        fn connections(&self) -> usize {
            1
        }
        fn open(&self) -> Result<Box<dyn Store>, StoreError> {
            Ok(Box::new(FlakyConn {
                down: self.down.clone(),
                ended: self.ended.clone(),
                number: self.opened.fetch_add(1, Ordering::SeqCst),
            }))
        }
    }

    #[actix_rt::test]
    async fn an_unavailable_store_is_reopened_on_the_next_call() {
        let down = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU32::new(0));
        let ended = Arc::new(AtomicU32::new(0));
        let opener = Arc::new(Flaky {
            down: down.clone(),
            opened: opened.clone(),
            ended: ended.clone(),
        });
        let first = opener.open().unwrap();
        let writer = StoreWriter::start(opener, first);
        assert_eq!(writer.send(SaveBatch(Vec::new())).await.unwrap(), Ok(0));
        // Down: the call fails, after one more try on a fresh connection.
        down.store(true, Ordering::SeqCst);
        let failed = writer.send(SaveBatch(Vec::new())).await.unwrap();
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        down.store(false, Ordering::SeqCst);
        assert_eq!(writer.send(SaveBatch(Vec::new())).await.unwrap(), Ok(0));
        assert_eq!(
            opened.load(Ordering::SeqCst),
            3,
            "the connection was not reopened"
        );
        // The server ended every connection while they sat idle: the next call succeeds
        // on a fresh one, and its caller never hears of it.
        ended.store(3, Ordering::SeqCst);
        assert_eq!(writer.send(SaveBatch(Vec::new())).await.unwrap(), Ok(0));
        assert_eq!(opened.load(Ordering::SeqCst), 4);
        writer.send(CloseStore).await.unwrap().unwrap();
        assert_eq!(
            writer.send(SaveBatch(Vec::new())).await.unwrap(),
            Err(StoreError::Closed)
        );
    }

    #[actix_rt::test]
    async fn a_claim_abandoned_while_queued_is_not_made() {
        let store = memory::MemoryStore::default();
        let writer = StoreWriter::start(Arc::new(store.clone()), Box::new(store.clone()));
        let host = InstanceName::parse("web-01").unwrap();
        let claim = |abandoned: bool| ClaimRestarts {
            claims: vec![Claim {
                host,
                message_id: Uuid::new_v4(),
            }],
            context: AttemptContext::test(),
            now_ms: 1_000,
            interval_ms: 3_600_000,
            ttl_ms: 60_000,
            fleet: FleetRails::default(),
            abandoned: Arc::new(AtomicBool::new(abandoned)),
        };
        let answer = writer.send(claim(true)).await.unwrap();
        assert_eq!(answer, Err(StoreError::Closed));
        // Nothing was claimed: the host is still free.
        let answer = writer.send(claim(false)).await.unwrap();
        assert_eq!(answer, Ok(vec![Claimed::Won]));
    }
}

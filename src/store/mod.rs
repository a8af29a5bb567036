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

    /// Appends restart attempts, which share `context`, to the history.
    fn record_attempts(
        &mut self,
        context: &AttemptContext,
        rows: &[Attempt],
    ) -> Result<(), StoreError>;

    /// Each host's latest successful restart at or after `since_ms`.
    fn restarts_since(&mut self, since_ms: i64) -> Result<Vec<(InstanceName, i64)>, StoreError>;

    /// Claims each host for a restart at `now_ms`, unless it was restarted or claimed
    /// less than `interval_ms` before; returns, host by host, whether the claim was won.
    /// It is atomic across every connection to the store, so that instances sharing one
    /// store never restart a host twice within the interval.
    fn claim_restarts(
        &mut self,
        hosts: &[InstanceName],
        now_ms: i64,
        interval_ms: i64,
    ) -> Result<Vec<bool>, StoreError>;

    fn close(&mut self) -> Result<(), StoreError>;
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
        });
        SyncArbiter::start(threads, move || StoreWriter {
            conn: shared.first.lock().expect("first connection").take(),
            shared: shared.clone(),
        })
    }

    /// Runs one store call on this thread's connection, opening one if it has none. A
    /// panic inside the store becomes an error, so that the thread, which nothing would
    /// restart, lives on; after an unavailable store or a panic the connection is dropped,
    /// and the next call opens a fresh one.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            if let Some(mut conn) = self.conn.take() {
                let _ = conn.close();
            }
            return Err(StoreError::Closed);
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.shared.opener.open()?),
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
}

impl Handler<LoadRestarts> for StoreWriter {
    type Result = Result<Vec<(InstanceName, i64)>, StoreError>;
    fn handle(&mut self, msg: LoadRestarts, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.restarts_since(msg.since_ms))
    }
}

/// Closes the store; later calls, on every connection, fail with `StoreError::Closed`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub(crate) struct CloseStore;

impl Handler<CloseStore> for StoreWriter {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: CloseStore, _: &mut SyncContext<Self>) -> Self::Result {
        let result = self.call(|s| s.close());
        self.shared.closed.store(true, Ordering::Release);
        self.conn = None;
        result
    }
}

/// The claim's contract, for each store's tests: `a` and `b` are two connections to one
/// empty store.
#[cfg(test)]
pub(crate) fn claims_are_won_once_per_interval(a: &mut dyn Store, b: &mut dyn Store) {
    let name = |s| InstanceName::parse(s).unwrap();
    let (h, other, third) = (name("cattle-a"), name("cattle-b"), name("cattle-c"));
    assert_eq!(a.claim_restarts(&[h], 1_000, 500).unwrap(), [true]);
    assert_eq!(
        b.claim_restarts(&[h, other], 1_200, 500).unwrap(),
        [false, true]
    );
    assert_eq!(b.claim_restarts(&[h], 1_500, 500).unwrap(), [true]);
    // A recorded restart counts as a claim.
    let context = AttemptContext::test();
    a.record_attempts(
        &context,
        &[Attempt::restarted(third, 3_000, Uuid::new_v4())],
    )
    .unwrap();
    assert_eq!(b.claim_restarts(&[third], 3_100, 500).unwrap(), [false]);
    assert_eq!(b.claim_restarts(&[third], 3_600, 500).unwrap(), [true]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Opens connections that fail while `down` is set, counting every open.
    struct Flaky {
        down: Arc<AtomicBool>,
        opened: Arc<AtomicU32>,
    }

    struct FlakyConn(Arc<AtomicBool>);

    impl Store for FlakyConn {
        fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
            if self.0.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection reset".into()));
            }
            Ok(rows.len() as u64)
        }
        fn record_attempts(&mut self, _: &AttemptContext, _: &[Attempt]) -> Result<(), StoreError> {
            Ok(())
        }
        fn restarts_since(&mut self, _: i64) -> Result<Vec<(InstanceName, i64)>, StoreError> {
            Ok(Vec::new())
        }
        fn claim_restarts(
            &mut self,
            hosts: &[InstanceName],
            _: i64,
            _: i64,
        ) -> Result<Vec<bool>, StoreError> {
            Ok(vec![true; hosts.len()])
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
            self.opened.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FlakyConn(self.down.clone())))
        }
    }

    #[actix_rt::test]
    async fn an_unavailable_store_is_reopened_on_the_next_call() {
        let down = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU32::new(0));
        let opener = Arc::new(Flaky {
            down: down.clone(),
            opened: opened.clone(),
        });
        let first = opener.open().unwrap();
        let writer = StoreWriter::start(opener, first);
        assert_eq!(writer.send(SaveBatch(Vec::new())).await.unwrap(), Ok(0));
        down.store(true, Ordering::SeqCst);
        let failed = writer.send(SaveBatch(Vec::new())).await.unwrap();
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        down.store(false, Ordering::SeqCst);
        assert_eq!(writer.send(SaveBatch(Vec::new())).await.unwrap(), Ok(0));
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "the connection was not reopened"
        );
        writer.send(CloseStore).await.unwrap().unwrap();
        assert_eq!(
            writer.send(SaveBatch(Vec::new())).await.unwrap(),
            Err(StoreError::Closed)
        );
    }
}

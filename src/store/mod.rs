//! Durable storage: the `Store` trait, its SQLite and in-memory implementations, and
//! `StoreWriter`, the `SyncArbiter` actor that runs them on their own thread.
//!
//! Every call into a store blocks, so only `StoreWriter` makes them, on a thread of its own.
//! The Saver and the Restarter talk to it through messages and never touch a connection.

pub mod memory;
pub mod sqlite;

use std::panic::{catch_unwind, AssertUnwindSafe};

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

/// One successful restart, for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartRow {
    pub host: InstanceName,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub message_id: Uuid,
}

/// A place to keep messages and the restart history.
pub trait Store: Send {
    /// Saves a batch in one transaction. Saving is idempotent by message id: a message
    /// already stored keeps one row and gets its delivery count raised. Returns how many
    /// messages were new.
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError>;
    fn record_restarts(&mut self, rows: &[RestartRow]) -> Result<(), StoreError>;
    /// Each host's latest restart at or after `since_ms`.
    fn restarts_since(&mut self, since_ms: i64) -> Result<Vec<(InstanceName, i64)>, StoreError>;
    fn close(&mut self) -> Result<(), StoreError>;
}

/// Runs a `Store` on a `SyncArbiter` thread.
pub struct StoreWriter {
    store: Option<Box<dyn Store>>,
}

impl StoreWriter {
    pub fn new(store: Box<dyn Store>) -> Self {
        Self { store: Some(store) }
    }

    /// Runs one store call, turning a panic inside it into an error so that the thread,
    /// which nothing would restart, lives on.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let store = self.store.as_deref_mut().ok_or(StoreError::Closed)?;
        catch_unwind(AssertUnwindSafe(|| f(store)))
            .unwrap_or_else(|p| Err(StoreError::Panicked(crate::units::panic_text(p.as_ref()))))
    }
}

impl Actor for StoreWriter {
    type Context = SyncContext<Self>;
}

/// Writes a group commit: a batch of messages and restart records in one transaction.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct SaveBatch(pub Vec<SaveRow>);

impl Handler<SaveBatch> for StoreWriter {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, msg: SaveBatch, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.save(&msg.0))
    }
}

/// Appends successful restarts to the history.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct RecordRestarts(pub Vec<RestartRow>);

impl Handler<RecordRestarts> for StoreWriter {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: RecordRestarts, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.record_restarts(&msg.0))
    }
}

/// Loads each host's latest restart since a time, to seed the Restarter's index.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(InstanceName, i64)>, StoreError>")]
pub struct LoadRestarts {
    pub since_ms: i64,
}

impl Handler<LoadRestarts> for StoreWriter {
    type Result = Result<Vec<(InstanceName, i64)>, StoreError>;
    fn handle(&mut self, msg: LoadRestarts, _: &mut SyncContext<Self>) -> Self::Result {
        self.call(|s| s.restarts_since(msg.since_ms))
    }
}

/// Closes the store; later calls fail with `StoreError::Closed`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct CloseStore;

impl Handler<CloseStore> for StoreWriter {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: CloseStore, _: &mut SyncContext<Self>) -> Self::Result {
        let result = self.call(|s| s.close());
        self.store = None;
        result
    }
}

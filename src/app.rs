//! Builds the actor system from a `Config`, runs it to the end of its shutdown, and hands
//! back the run report. `main` and the in-process tests both start here.

use std::io::Read;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use thiserror::Error;

use crate::actors::signal::SignalActor;
use crate::actors::supervisor::{Extension, Supervisor};
use crate::config::{Config, Source, StoreKind};
use crate::metrics::{Metrics, Report};
use crate::store::{memory::MemoryStore, sqlite::SqliteStore, Store, StoreError};
use crate::subscription::memory::InputClosed;
use crate::{source, supervision};

/// Why the service could not run.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("actor system failed: {0}")]
    System(#[from] std::io::Error),
    #[error("the service stopped without writing its report")]
    NoReport,
}

/// Opens the configured store. Done before the actor system starts, so that a bad path
/// is a clear error at start-up rather than a failure on the first save.
pub fn open_store(kind: &StoreKind) -> Result<Box<dyn Store>, StoreError> {
    Ok(match kind {
        StoreKind::Sqlite(path) => Box::new(SqliteStore::open(path)?),
        StoreKind::Memory => Box::new(MemoryStore::default()),
    })
}

/// Runs the service, reading standard input when the source is stdin.
pub fn run(config: Config) -> Result<Report, RunError> {
    run_with_input(config, Box::new(std::io::stdin()))
}

/// Runs the service with `input` standing in for standard input.
pub fn run_with_input(config: Config, input: Box<dyn Read + Send>) -> Result<Report, RunError> {
    run_extended(config, input, Vec::new())
}

/// Runs the service with `extensions` added to the supervision tree after the core
/// children (see `examples/custom_actor.rs`).
pub fn run_extended(
    config: Config,
    input: Box<dyn Read + Send>,
    extensions: Vec<Box<dyn Extension>>,
) -> Result<Report, RunError> {
    let store = open_store(&config.store)?;
    let metrics = Arc::new(Metrics::default());
    let report = Arc::new(Mutex::new(None));
    let system = actix_rt::System::new();
    system.block_on(async {
        let slot = report.clone();
        let m = metrics.clone();
        let cfg = &config;
        let started = SignalActor::create(move |ctx| {
            let escalate = ctx.address().recipient();
            let tree = Supervisor::start_tree(cfg, m.clone(), store, escalate, extensions);
            let input = (cfg.source == Source::Stdin).then(|| {
                source::spawn(
                    input,
                    tree.subscription.clone().recipient(),
                    tree.subscription.clone().recipient(),
                    m.clone(),
                )
            });
            if let Some(Err(e)) = input {
                // Without a reader nothing will ever be published: end the input now,
                // so the run shuts down instead of waiting forever.
                supervision::report_error(&m, "source", false, &e);
                tree.subscription.do_send(InputClosed);
            }
            SignalActor::new(tree, cfg, m, slot)
        });
        drop(started);
    });
    system.run_with_code()?;
    let report = report.lock().expect("report slot").take();
    report.ok_or(RunError::NoReport)
}

//! Mayhem Mandrill: a chaos-monkey service on actix, after Lynn Root's "Advanced asyncio:
//! Solving Real-World Production Problems" (PyCon 2019). See ARCHITECTURE.md for the map.

/// A per-message log line, under the `FLOW` target, with the fields a log pipeline
/// filters on: the host, the message id, the delivery attempt, the actor and the
/// outcome. JSON lines show them; text lines leave them out (`logging::TalkFields`).
macro_rules! flow {
    ($level:ident, $actor:literal, $outcome:literal, $host:expr, $id:expr, $attempt:expr, $($text:tt)+) => {
        tracing::$level!(
            target: $crate::FLOW,
            instance_name = %$host,
            message_id = %$id,
            attempt = $attempt,
            actor = $actor,
            outcome = $outcome,
            $($text)+
        )
    };
}

// Values: plain data, depending on nothing else in the crate.
pub mod message;
pub mod names;
pub mod protocol;
mod units;
// Contracts: what the pipeline needs from a broker, a store and a restart action.
mod action;
mod broker;
pub mod store;
// Runtime utilities.
pub mod dashboard;
mod faults;
mod iowait;
pub mod logging;
pub mod metrics;
mod rails;
// Supervision: policy, then runtime.
pub mod report;
pub mod supervision;
// The actors.
pub mod actors;
mod source;
// The wiring, the configuration aggregate and the command line.
pub mod app;
pub mod cli;
pub mod config;
pub mod history;
pub mod publish;
// The fuzz targets' bodies, public only so that `fuzz/` and the torture suite reach
// them; nothing else uses them.
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod testkit;

/// The hash map for the pipeline's own tables. Std's SipHash was about a third of all
/// instructions on the hot path; foldhash is several times cheaper and, being seeded
/// per process, still keeps ids that arrive from outside from being made to collide.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set to go with [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The tracing target of per-message lines, which `--log none` turns off while keeping
/// lifecycle lines.
pub const FLOW: &str = "mandrill::flow";

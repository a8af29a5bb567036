//! Run-wide counters and the run report printed at exit.
//!
//! Counters are relaxed atomics behind one `Arc`: actors on the event loop, the store's
//! threads and the stdin thread all bump them, and an uncontended relaxed add costs about as
//! much as a plain one. Nothing reads them on the hot path; the report reads them once.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The counters every actor reports into.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Nanoseconds from the start of the run to the last ack, nack or dead letter.
            pub last_outcome_ns: AtomicU64,
        }

        /// A point-in-time copy of the counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct Counts {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> Counts {
                Counts { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Messages accepted by the subscription.
    published,
    /// Deliveries the Consumer dispatched.
    consumed,
    /// Messages stored for the first time.
    saved,
    /// Hosts restarted.
    restarted,
    /// Restarts skipped because the host was restarted recently.
    restart_skipped,
    acked,
    /// Nacks for failed handling, not those at shutdown.
    nacked,
    /// Deliveries beyond the first.
    redelivered,
    dead_lettered,
    nacked_on_shutdown,
    /// Leases that ran out before an ack or nack.
    lease_expired,
    /// Input lines that were not valid messages.
    rejected,
    /// Panics caught in actor handlers.
    panics,
    actor_restarts,
    /// Errors that crossed an actor boundary.
    errors,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// What one supervised child went through in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChildStats {
    /// Failures by kind (`panic`, `stall`, `store-unavailable`, ...), resumed ones too.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// Restarts, its own and those its supervisor's strategy asked of it.
    pub restarts: u64,
    /// Time its restarts were held back by backoff.
    pub backoff_s: f64,
    /// Times its failure escalated: by directive, or past the restart intensity.
    pub escalations: u64,
    /// Whether it was stopped for good, by directive or by its restart type.
    pub stopped: bool,
}

/// The one JSON line printed on stdout at exit.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub counts: Counts,
    /// Messages the subscription still held at exit: never delivered, waiting for
    /// redelivery, or nacked at shutdown.
    pub pending_at_exit: u64,
    /// From start to the last outcome, or to the signal.
    pub elapsed_s: f64,
    /// `(acked + nacked) / elapsed_s`.
    pub msgs_per_s: f64,
    /// From the start of the shutdown to its end.
    pub shutdown_s: f64,
    /// `done`, `eof`, `escalation` or the signal's name.
    pub stopped_by: String,
    pub exit_code: i32,
    /// The child and reason, when the supervisor escalated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    /// Per supervised child, by name.
    pub supervision: std::collections::BTreeMap<&'static str, ChildStats>,
    /// Children that did not stop within their shutdown timeout, in stop order.
    pub killed_at_shutdown: Vec<&'static str>,
}

impl Report {
    /// The conservation law every run must keep.
    pub fn conserved(&self) -> bool {
        self.counts.published
            == self.counts.acked + self.counts.dead_lettered + self.pending_at_exit
    }
}

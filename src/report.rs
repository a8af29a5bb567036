//! The run report: the one JSON line printed on stdout at exit, and its export to the
//! metrics registry. The shutdown assembles it from the counters and the supervisor.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::metrics::{Counts, Percentiles};
use crate::supervision::supervisor::ChildStats;

/// The one JSON line printed on stdout at exit.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub counts: Counts,
    /// Messages the subscription still held at exit: never delivered, waiting for
    /// redelivery, or nacked at shutdown.
    pub pending_at_exit: u64,
    /// For a remote broker, how `published` and `pending_at_exit` were taken: there the
    /// broker, not this instance, knows what was published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_counts: Option<&'static str>,
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
    pub supervision: BTreeMap<&'static str, ChildStats>,
    /// Restarts refused by the safety rails, by rail; a refused message is acked.
    pub refused: BTreeMap<&'static str, u64>,
    /// Children that did not stop within their shutdown timeout, in stop order.
    pub killed_at_shutdown: Vec<&'static str>,
    /// From publish to ack, for acked messages.
    pub ack_latency_ms: Percentiles,
    /// From a caught panic to the restarted actor's next handler call.
    pub panic_recovery_ms: Percentiles,
    /// How late the event loop ran the lag monitor's timer.
    pub loop_lag_ms: Percentiles,
}

/// Exports each child's supervision counters: at exit from the report, and once a second
/// while the service runs.
pub(crate) fn export_supervision(stats: &BTreeMap<&'static str, ChildStats>) {
    for (&child, s) in stats {
        metrics::counter!("mandrill_child_restarts_total", "child" => child).absolute(s.restarts);
        metrics::counter!("mandrill_child_escalations_total", "child" => child)
            .absolute(s.escalations);
        metrics::gauge!("mandrill_child_backoff_seconds", "child" => child).set(s.backoff_s);
        metrics::gauge!("mandrill_child_stopped", "child" => child).set(if s.stopped {
            1.0
        } else {
            0.0
        });
        for (&kind, &n) in &s.failures {
            metrics::counter!("mandrill_child_failures_total", "child" => child, "kind" => kind)
                .absolute(n);
        }
    }
}

impl Report {
    /// Exports every report field: the counts as counters, the rest as gauges.
    pub(crate) fn export(&self) {
        self.counts.export();
        metrics::gauge!("mandrill_pending_at_exit").set(self.pending_at_exit as f64);
        metrics::gauge!("mandrill_elapsed_seconds").set(self.elapsed_s);
        metrics::gauge!("mandrill_msgs_per_second").set(self.msgs_per_s);
        metrics::gauge!("mandrill_shutdown_seconds").set(self.shutdown_s);
        metrics::gauge!("mandrill_exit_code").set(self.exit_code as f64);
        metrics::gauge!("mandrill_killed_at_shutdown").set(self.killed_at_shutdown.len() as f64);
        for (&rail, &n) in &self.refused {
            metrics::counter!("mandrill_refused_total", "rail" => rail).absolute(n);
        }
        export_supervision(&self.supervision);
    }

    /// The conservation law every run must keep.
    pub fn conserved(&self) -> bool {
        self.counts.published
            == self.counts.acked + self.counts.dead_lettered + self.pending_at_exit
    }
}

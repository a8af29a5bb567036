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
    #[serde(serialize_with = "crate::units::round_f64")]
    pub elapsed_s: f64,
    /// `(acked + nacked) / elapsed_s`.
    #[serde(serialize_with = "crate::units::round_f64")]
    pub msgs_per_s: f64,
    /// From the start of the shutdown to its end.
    #[serde(serialize_with = "crate::units::round_f64")]
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

    /// A few aligned lines for a person at a terminal: what the run did, how it was
    /// stopped, and how long it took.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let rows = [
            ("published", c.published),
            ("acked", c.acked),
            ("nacked", c.nacked),
            ("dead-lettered", c.dead_lettered),
            ("pending at exit", self.pending_at_exit),
            ("host restarts", c.restarted),
            ("restarts refused", self.refused.values().sum()),
            ("actor restarts", c.actor_restarts),
            ("panics caught", c.panics),
        ];
        let numbers: Vec<String> = rows.iter().map(|(_, n)| thousands(*n)).collect();
        let width = numbers.iter().map(String::len).max().unwrap_or(0);
        let how = match self.stopped_by.as_str() {
            "done" => "finished: all it published was settled".to_string(),
            "eof" => "finished: the input ended and all of it was settled".to_string(),
            "idle" => "stopped: nothing to pull for --idle-exit".to_string(),
            "escalation" => format!(
                "stopped by an escalation: {}",
                self.escalation.as_deref().unwrap_or("unknown")
            ),
            signal => format!("stopped by {signal}"),
        };
        let mut out = format!(
            "mandrill {how}, after {:.2} s (shutdown {:.2} s), exit {}\n",
            self.elapsed_s, self.shutdown_s, self.exit_code
        );
        for ((label, _), n) in rows.iter().zip(&numbers) {
            out.push_str(&format!("  {label:<16} {n:>width$}\n"));
        }
        out.push_str(&format!(
            "  {:<16} {:.0} msgs/s\n",
            "throughput", self.msgs_per_s
        ));
        out
    }

    /// The conservation law every run must keep.
    pub fn conserved(&self) -> bool {
        self.counts.published
            == self.counts.acked + self.counts.dead_lettered + self.pending_at_exit
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_aligns_its_numbers_and_rounds_its_times() {
        let report = Report {
            counts: Counts {
                published: 1_234_567,
                acked: 1_200_000,
                restarted: 7,
                ..Counts::default()
            },
            pending_at_exit: 34_567,
            broker_counts: None,
            elapsed_s: 1.800_190_999_999_999_9,
            msgs_per_s: 685_812.345,
            shutdown_s: 0.25,
            stopped_by: "SIGTERM".into(),
            exit_code: 0,
            escalation: None,
            supervision: BTreeMap::new(),
            refused: BTreeMap::new(),
            killed_at_shutdown: Vec::new(),
            ack_latency_ms: Percentiles::default(),
            panic_recovery_ms: Percentiles::default(),
            loop_lag_ms: Percentiles::default(),
        };
        let text = report.summary();
        assert!(
            text.starts_with("mandrill stopped by SIGTERM, after 1.80 s (shutdown 0.25 s), exit 0"),
            "{text}"
        );
        assert!(text.contains("  published        1,234,567\n"), "{text}");
        assert!(text.contains("  host restarts            7\n"), "{text}");
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"elapsed_s\":1.80019,"), "{json}");
        assert!(json.contains("\"msgs_per_s\":685812.0,"), "{json}");
    }
}

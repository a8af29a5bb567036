//! Run-wide counters, latency histograms, and their Prometheus export.
//!
//! Counters are relaxed atomics behind one `Arc`: actors on the event loop, the store's
//! threads and the stdin thread all bump them, and an uncontended relaxed add costs about as
//! much as a plain one. Nothing reads them on the hot path; the report reads them once.
//!
//! The `metrics` crate's registry is fed from these atomics once a second by the Monitor,
//! and a last time in the shutdown's "Flushing metrics" phase, rather than on every
//! increment: the hot path keeps its plain atomic adds whether or not anything scrapes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::rails::Rail;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The counters every actor reports into.
        #[derive(Debug)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// When the run started.
            pub started: std::time::Instant,
            /// Nanoseconds from the start of the run to the last ack, nack or dead letter.
            pub last_outcome_ns: AtomicU64,
            /// From publish to ack, for acked messages.
            pub ack_latency: Timings,
            /// From a caught panic to the restarted actor's next handler call.
            pub panic_recovery: Timings,
            /// How late the event loop ran the lag monitor's timer.
            pub loop_lag: Timings,
            /// Restarts refused by each safety rail, in `Rail::ALL` order.
            pub refused: [AtomicU64; Rail::ALL.len()],
        }

        impl Default for Metrics {
            fn default() -> Self {
                Self {
                    $($name: AtomicU64::new(0),)*
                    started: std::time::Instant::now(),
                    last_outcome_ns: AtomicU64::new(0),
                    ack_latency: Timings::default(),
                    panic_recovery: Timings::default(),
                    loop_lag: Timings::default(),
                    refused: Default::default(),
                }
            }
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

        impl Counts {
            /// Sets the exported counters to these values: `mandrill_<name>_total`.
            pub fn export(&self) {
                $(metrics::counter!(concat!("mandrill_", stringify!($name), "_total"))
                    .absolute(self.$name);)*
            }
        }
    };
}

counters! {
    /// Messages published to the broker: by the simulated publisher, or read from stdin.
    published,
    /// Deliveries the Consumer dispatched.
    consumed,
    /// Messages stored for the first time.
    saved,
    /// Hosts restarted.
    restarted,
    /// Restarts skipped because the host was restarted recently.
    restart_skipped,
    /// Restarts a leashed action did not run: logged, and the message acked.
    leashed,
    /// Acks the broker took.
    acked,
    /// Nacks for failed handling that the broker took, the last one of a message, which
    /// dead-letters it, included; releases at shutdown are not nacks.
    nacked,
    /// Deliveries beyond the first.
    redelivered,
    /// Messages given up on: failed on their last allowed delivery, or whose lease ran
    /// out on it.
    dead_lettered,
    /// Messages in flight that the shutdown gave back to the broker.
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

    /// Counts a restart refused by `rail`.
    pub(crate) fn refuse(&self, rail: Rail) {
        self.refused[rail as usize].fetch_add(1, Relaxed);
    }

    /// The refusals so far, by rail, for the rails that refused anything.
    pub(crate) fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        Rail::ALL
            .into_iter()
            .map(|r| (r.as_str(), self.refused[r as usize].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Notes that an outcome (an ack, a nack or a dead letter) happened now.
    pub(crate) fn mark_outcome(&self) {
        let ns = self.started.elapsed().as_nanos() as u64;
        self.last_outcome_ns.fetch_max(ns, Relaxed);
    }
}

/// A histogram of rare timings (panics, lag samples), shared behind a lock: these come
/// at most a few thousand times a second, where a lock costs nothing measurable. It
/// keeps nanoseconds, because a restart takes about a microsecond.
#[derive(Debug)]
pub struct Timings(std::sync::Mutex<hdrhistogram::Histogram<u64>>);

impl Default for Timings {
    fn default() -> Self {
        let h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("valid bounds");
        Self(std::sync::Mutex::new(h))
    }
}

impl Timings {
    pub fn record(&self, d: std::time::Duration) {
        self.record_all(&[d]);
    }

    /// Records a batch of timings under one lock.
    pub(crate) fn record_all(&self, ds: &[std::time::Duration]) {
        let mut h = self.0.lock().expect("timings lock");
        for d in ds {
            h.saturating_record(d.as_nanos().min(u64::MAX as u128) as u64);
        }
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of_ns(&self.0.lock().expect("timings lock"))
    }
}

/// Percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of nanoseconds.
    pub(crate) fn of_ns(h: &hdrhistogram::Histogram<u64>) -> Self {
        Self::scaled(h, 1e-6)
    }

    fn scaled(h: &hdrhistogram::Histogram<u64>, to_ms: f64) -> Self {
        let ms = |v: u64| v as f64 * to_ms;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Starts the Prometheus exporter on its own thread, serving `/metrics` at `addr`, and
/// installs it as the `metrics` recorder. Call before the service starts.
pub fn serve_prometheus(
    addr: std::net::SocketAddr,
) -> Result<(), metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Handler times are microseconds to seconds; latencies reach the IO delay and beyond.
    let handler = [
        1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
    ];
    let latency = [
        1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full("mandrill_handler_seconds".into()), &handler)?
        .set_buckets_for_metric(Matcher::Suffix("latency_seconds".into()), &latency)?
        .set_buckets_for_metric(Matcher::Full("mandrill_loop_lag_seconds".into()), &handler)?
        .install()
}

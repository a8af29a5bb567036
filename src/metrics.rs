//! Run-wide counters, latency histograms, and their Prometheus export.
//!
//! Counters are relaxed atomics behind one `Arc`: actors on the event loop, the store's
//! threads and the stdin thread all bump them, and an uncontended relaxed add costs about as
//! much as a plain one. Nothing reads them on the hot path; the report reads them once.
//!
//! The `metrics` crate's registry is fed from these atomics once a second by the Monitor,
//! and a last time in the shutdown's "Flushing metrics" phase, rather than on every
//! increment: the hot path keeps its plain atomic adds whether or not anything scrapes.
//!
//! `serve` runs the HTTP endpoint on its own thread: `/metrics`, and the probes
//! `/healthz` and `/readyz`, which answer from `Health`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rails::Rail;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// The counters every actor reports into.
        #[derive(Debug)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
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
            /// What `/healthz` and `/readyz` answer from.
            pub health: Arc<Health>,
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
                    health: Default::default(),
                }
            }
        }

        /// A point-in-time copy of the counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct Counts {
            $($(#[doc = $doc])* pub $name: u64,)*
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

        /// Each exported counter's name and its help text, taken from its doc comment.
        const COUNTER_HELP: &[(&str, &[&str])] = &[
            $((concat!("mandrill_", stringify!($name), "_total"), &[$($doc),*]),)*
        ];
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
    /// Restarts of supervised actors, whatever the cause.
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
    #[serde(serialize_with = "crate::units::round_f64")]
    pub p50: f64,
    #[serde(serialize_with = "crate::units::round_f64")]
    pub p90: f64,
    #[serde(serialize_with = "crate::units::round_f64")]
    pub p99: f64,
    #[serde(serialize_with = "crate::units::round_f64")]
    pub p999: f64,
    #[serde(serialize_with = "crate::units::round_f64")]
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

/// What the probes answer from: whether the event loop is alive, and whether the
/// service is ready for work. The Monitor beats and judges readiness once a second; the
/// SignalActor marks a reload and the start of the shutdown.
///
/// It tells systemd too, under `Type=notify` (`contrib/mandrill.service`): `READY=1` the
/// first time the service is ready and after each reload, `RELOADING=1` when a reload
/// begins, `STOPPING=1` when the shutdown does. Without `NOTIFY_SOCKET` that costs
/// nothing.
#[derive(Debug)]
pub struct Health {
    born: Instant,
    /// Milliseconds from `born` to the loop's last beat.
    beat_ms: AtomicU64,
    /// The broker and the store are connected.
    connected: AtomicBool,
    stopping: AtomicBool,
    /// systemd was told the service is ready.
    announced: AtomicBool,
}

/// A loop that has not beaten for this long is stuck, and `/healthz` says so.
pub const STALE_BEAT: Duration = Duration::from_secs(5);

impl Default for Health {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            beat_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            announced: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// The loop ran a timer just now.
    pub fn beat(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.beat_ms.fetch_max(ms, Relaxed);
    }

    /// Whether the loop beat within `STALE_BEAT`. Before the first beat, the start-up
    /// counts as one.
    pub fn alive(&self) -> bool {
        let last = Duration::from_millis(self.beat_ms.load(Relaxed));
        self.born.elapsed().saturating_sub(last) < STALE_BEAT
    }

    /// Whether the broker and the store were both connected at the last look.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Relaxed);
        if up && !self.stopping.load(Relaxed) && !self.announced.swap(true, Relaxed) {
            tell_systemd(&[sd_notify::NotifyState::Ready]);
        }
    }

    /// The shutdown has begun: the service takes no new work from here on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
        tell_systemd(&[sd_notify::NotifyState::Stopping]);
    }

    /// A reload of the configuration has begun.
    pub fn reloading(&self) {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        // systemd matches a reload to its request by this clock.
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        tell_systemd(&states);
    }

    /// The reload is over, whether it changed anything or not.
    pub fn reloaded(&self) {
        if self.announced.load(Relaxed) && !self.stopping.load(Relaxed) {
            tell_systemd(&[sd_notify::NotifyState::Ready]);
        }
    }

    /// Whether the shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Connected and not shutting down.
    pub fn ready(&self) -> bool {
        self.connected.load(Relaxed) && !self.stopping.load(Relaxed)
    }
}

/// Sends `states` to the service manager, if one listens. A failure to tell it is logged
/// and changes nothing else: the service runs the same without one.
fn tell_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("Cannot notify the service manager: {e}");
    }
}

/// Why an HTTP thread of the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exporter(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot start the http server: {0}")]
    Server(String),
}

/// Listens on `addr`, and runs `serve` with the server on a thread named `name`; gives
/// the address bound, which names the real port when `addr` asks for port 0. The
/// metrics endpoint and the dashboard each have one.
pub(crate) fn http_thread(
    addr: SocketAddr,
    name: &str,
    serve: impl FnOnce(tiny_http::Server) + Send + 'static,
) -> Result<SocketAddr, ServeError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| ServeError::Server(e.to_string()))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || serve(server))
        .map_err(|e| ServeError::Server(e.to_string()))?;
    Ok(bound)
}

/// How often the exporter's histograms are brought up to date when nothing scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder and serves, on its own thread at `addr`,
/// `GET /metrics`, `GET /healthz` (the event loop is alive) and `GET /readyz` (connected,
/// and not shutting down). Any other path is 404, and any other method 405. Gives the
/// address bound, which names the real port when `addr` asks for port 0. Call before the
/// service starts.
pub fn serve(addr: SocketAddr, health: Arc<Health>) -> Result<SocketAddr, ServeError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Handler times are microseconds to seconds; latencies reach the IO delay and beyond.
    let handler = [
        1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
    ];
    let latency = [
        1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("mandrill_handler_seconds".into()), &handler)?
        .set_buckets_for_metric(Matcher::Suffix("latency_seconds".into()), &latency)?
        .set_buckets_for_metric(Matcher::Full("mandrill_loop_lag_seconds".into()), &handler)?
        .build_recorder();
    let render = recorder.handle();
    // Listen first: a port in use must not leave a recorder installed with nothing
    // serving.
    let bound = http_thread(addr, "mandrill-metrics", move |server| {
        let mut upkept = Instant::now();
        loop {
            match server.recv_timeout(UPKEEP_EVERY) {
                Ok(Some(request)) => answer(request, &render, &health),
                Ok(None) => {}
                // The listener is gone: nothing more can be served.
                Err(_) => return,
            }
            if upkept.elapsed() >= UPKEEP_EVERY {
                render.run_upkeep();
                upkept = Instant::now();
            }
        }
    })?;
    metrics::set_global_recorder(recorder)
        .map_err(|e| ServeError::Server(format!("cannot install the metrics recorder: {e}")))?;
    describe();
    Ok(bound)
}

/// The endpoints, by path.
const ENDPOINTS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// What one request gets: its status and body, and for a 405 the methods allowed.
fn route(
    method: &tiny_http::Method,
    url: &str,
    metrics: impl FnOnce() -> String,
    health: &Health,
) -> (u16, String) {
    use tiny_http::Method;
    let path = url.split(['?', '#']).next().unwrap_or("");
    if !ENDPOINTS.contains(&path) {
        return (404, "not found\n".into());
    }
    if !matches!(method, Method::Get | Method::Head) {
        return (405, "method not allowed\n".into());
    }
    match path {
        "/metrics" => (200, metrics()),
        "/healthz" if health.alive() => (200, "ok\n".into()),
        "/healthz" => (503, format!("event loop stalled for over {STALE_BEAT:?}\n")),
        _ if health.ready() => (200, "ready\n".into()),
        _ if health.stopping.load(Relaxed) => (503, "shutting down\n".into()),
        _ => (503, "broker or store not connected\n".into()),
    }
}

fn answer(
    request: tiny_http::Request,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    health: &Health,
) {
    let (status, body) = route(request.method(), request.url(), || handle.render(), health);
    let kind = if status == 200 && request.url().starts_with("/metrics") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    response.add_header(tiny_http::Header::from_bytes("Content-Type", kind).expect("valid header"));
    if status == 405 {
        response
            .add_header(tiny_http::Header::from_bytes("Allow", "GET, HEAD").expect("valid header"));
    }
    // A client that hung up is no concern of the service.
    let _ = request.respond(response);
}

/// Gives every metric its `# HELP` line, and sets the build-info gauge.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, lines) in COUNTER_HELP {
        describe_counter!(*name, help(lines));
    }
    describe_counter!(
        "mandrill_refused_total",
        "Restarts refused by a safety rail, by rail"
    );
    describe_counter!(
        "mandrill_child_restarts_total",
        "Restarts of each supervised child"
    );
    describe_counter!(
        "mandrill_child_escalations_total",
        "Escalations by each supervised child"
    );
    describe_counter!(
        "mandrill_child_failures_total",
        "Failures of each supervised child, by kind"
    );
    describe_gauge!(
        "mandrill_child_backoff_seconds",
        Unit::Seconds,
        "The backoff before each child's next restart"
    );
    describe_gauge!(
        "mandrill_child_stopped",
        "1 when a child is stopped for good, else 0"
    );
    describe_gauge!("mandrill_in_flight", "Deliveries the Acker holds unsettled");
    describe_gauge!(
        "mandrill_loop_lag_seconds_last",
        Unit::Seconds,
        "The last event-loop lag measured"
    );
    describe_histogram!(
        "mandrill_loop_lag_seconds",
        Unit::Seconds,
        "How late the event loop ran the lag timer"
    );
    describe_histogram!(
        "mandrill_handler_seconds",
        Unit::Seconds,
        "How long each actor's handlers ran, by actor and message"
    );
    describe_histogram!(
        "mandrill_ack_latency_seconds",
        Unit::Seconds,
        "From publish to ack, for acked messages"
    );
    describe_gauge!(
        "mandrill_pending_at_exit",
        "Messages the subscription still held at exit"
    );
    describe_gauge!(
        "mandrill_elapsed_seconds",
        Unit::Seconds,
        "From start to the last outcome, or to the signal; set at exit"
    );
    describe_gauge!(
        "mandrill_msgs_per_second",
        "Acks and nacks a second over the run; set at exit"
    );
    describe_gauge!(
        "mandrill_shutdown_seconds",
        Unit::Seconds,
        "How long the shutdown took; set at exit"
    );
    describe_gauge!(
        "mandrill_exit_code",
        "The exit status the run ends with; set at exit"
    );
    describe_gauge!(
        "mandrill_killed_at_shutdown",
        "Children that did not stop within their shutdown timeout"
    );
    describe_gauge!("mandrill_build_info", "Always 1, labelled with the version");
    metrics::gauge!("mandrill_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// One doc comment's lines as one line of help text.
fn help(lines: &[&str]) -> String {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::Method;

    #[test]
    fn only_the_three_endpoints_answer_and_only_to_get() {
        let health = Health::default();
        let route = |m: Method, url: &str| route(&m, url, || "m".into(), &health).0;
        assert_eq!(route(Method::Get, "/metrics"), 200);
        assert_eq!(route(Method::Get, "/metrics?x=1"), 200);
        assert_eq!(route(Method::Head, "/healthz"), 200);
        assert_eq!(route(Method::Delete, "/metrics"), 405);
        assert_eq!(route(Method::Post, "/readyz"), 405);
        assert_eq!(route(Method::Get, "/foo"), 404);
        assert_eq!(route(Method::Delete, "/foo"), 404);
        assert_eq!(route(Method::Get, "/"), 404);
        assert_eq!(route(Method::Get, "/metrics/"), 404);
    }

    #[test]
    fn ready_means_connected_and_not_stopping() {
        let health = Health::default();
        let ready = |h: &Health| route(&tiny_http::Method::Get, "/readyz", String::new, h).0;
        assert_eq!(ready(&health), 503);
        health.set_connected(true);
        assert_eq!(ready(&health), 200);
        health.set_stopping();
        assert_eq!(ready(&health), 503);
    }

    #[test]
    fn every_counter_has_help() {
        for (name, lines) in COUNTER_HELP {
            assert!(!help(lines).is_empty(), "{name} has no help text");
        }
    }
}

//! The live supervision dashboard: a page at `/` and the stream it reads at `/events`,
//! on a listener of its own (`--dashboard ADDR`).
//!
//! Nothing here keeps books of its own. The page is fed from what the service already
//! says: the supervision and shutdown events it logs, caught by a `tracing` layer
//! (`FeedLayer`), and the counters and the tree's state the Monitor reads once a second
//! (`Feed::snapshot`). Both go into one `Feed`, a bounded buffer that drops its oldest
//! events when full and counts them, so a slow or closed browser never slows the
//! pipeline: a producer only takes a short lock, and each page has its own thread that
//! reads from the buffer at its own pace, told with server-sent events.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The page: one static file, with its styles and script inline and nothing fetched.
const PAGE: &str = include_str!("dashboard.html");

/// Events the buffer keeps. A page that falls this far behind loses the oldest, and is
/// told how many.
const KEEP: usize = 1024;
/// Events a page is sent when it connects, so that it opens on the recent past.
const REPLAY: usize = 50;
/// Pages served at once; each holds a thread.
const MAX_PAGES: usize = 16;
/// A comment line this often keeps a quiet stream from being closed by a proxy.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The targets whose events the page shows: supervision, and the shutdown's phases.
const TARGETS: [&str; 2] = ["mandrill::supervision", "mandrill::actors::signal"];

/// The one feed of the process, set when the dashboard is on.
static FEED: OnceLock<Arc<Feed>> = OnceLock::new();

/// Turns the dashboard's feed on for this process; call before logging is set up, so
/// that its layer is installed. Gives the feed.
pub fn enable() -> Arc<Feed> {
    FEED.get_or_init(|| Arc::new(Feed::default())).clone()
}

/// The feed, when the dashboard is on.
pub fn feed() -> Option<&'static Arc<Feed>> {
    FEED.get()
}

/// The events and the latest snapshot, for the pages to read.
#[derive(Debug, Default)]
pub struct Feed {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The number the next event gets.
    next: u64,
    /// The last `KEEP` events, numbered, as JSON.
    events: VecDeque<(u64, Arc<str>)>,
    /// Events dropped from the front of the buffer.
    dropped: u64,
    /// The latest snapshot, and how many snapshots there have been.
    snapshot: Option<Arc<str>>,
    snapshots: u64,
}

impl Feed {
    /// Adds an event; the oldest goes when the buffer is full.
    pub fn push(&self, event: Value) {
        let line: Arc<str> = event.to_string().into();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.events.len() == KEEP {
            s.events.pop_front();
            s.dropped += 1;
        }
        let n = s.next;
        s.events.push_back((n, line));
        s.next += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Replaces the snapshot of counters and the tree.
    pub fn snapshot(&self, snapshot: Value) {
        let line: Arc<str> = snapshot.to_string().into();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.snapshot = Some(line);
        s.snapshots += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// The events the buffer holds, oldest first.
    pub fn events(&self) -> Vec<Arc<str>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Events the buffer dropped, because it was full.
    pub fn dropped(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.dropped)
    }

    /// The events since `cursor` and the snapshot if it is newer than `seen`, waiting up
    /// to `wait` for either. Events older than the buffer holds are counted as missed.
    fn since(&self, cursor: u64, seen: u64, wait: Duration) -> Batch {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .changed
            .wait_timeout_while(s, wait, |s| s.next <= cursor && s.snapshots <= seen)
            .unwrap_or_else(|p| p.into_inner());
        let first = s.events.front().map_or(s.next, |(n, _)| *n);
        Batch {
            missed: first.saturating_sub(cursor),
            events: s
                .events
                .iter()
                .filter(|(n, _)| *n >= cursor)
                .map(|(_, e)| e.clone())
                .collect(),
            next: s.next,
            snapshot: (s.snapshots > seen).then(|| s.snapshot.clone()).flatten(),
            snapshots: s.snapshots,
        }
    }

    /// Where a new page starts reading: `REPLAY` events back.
    fn start(&self) -> u64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next.saturating_sub(REPLAY as u64)
    }
}

/// What one read of the feed gives a page.
struct Batch {
    missed: u64,
    events: Vec<Arc<str>>,
    next: u64,
    snapshot: Option<Arc<str>>,
    snapshots: u64,
}

/// Catches the supervision and shutdown events the service logs, as they are logged, and
/// puts each in the feed with its fields.
pub struct FeedLayer {
    feed: Arc<Feed>,
}

impl FeedLayer {
    pub fn new(feed: Arc<Feed>) -> Self {
        Self { feed }
    }

    /// The filter that keeps its cost to the events it shows: everything else is never
    /// even formatted for it.
    pub fn targets() -> tracing_subscriber::filter::Targets {
        TARGETS.iter().fold(
            tracing_subscriber::filter::Targets::new(),
            |targets, target| targets.with_target(*target, tracing::Level::INFO),
        )
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FeedLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut e = fields.0;
        e.insert("type".into(), "event".into());
        e.insert("level".into(), meta.level().as_str().into());
        e.insert("t_ms".into(), now_ms().into());
        self.feed.push(Value::Object(e));
    }
}

/// An event's fields as JSON.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Milliseconds since the epoch, for the page's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves the page and its stream at `addr` on a thread of its own; gives the address
/// bound. Call `enable` first.
pub fn serve(addr: SocketAddr, feed: Arc<Feed>) -> Result<SocketAddr, crate::metrics::ServeError> {
    let pages = Arc::new(AtomicUsize::new(0));
    crate::metrics::http_thread(addr, "mandrill-dashboard", move |server| {
        for request in server.incoming_requests() {
            answer(request, &feed, &pages);
        }
    })
}

fn answer(request: tiny_http::Request, feed: &Arc<Feed>, pages: &Arc<AtomicUsize>) {
    use tiny_http::{Header, Method, Response};
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let get = matches!(request.method(), Method::Get | Method::Head);
    let header = |k: &str, v: &str| Header::from_bytes(k, v).expect("valid header");
    let respond = |request: tiny_http::Request, status: u16, kind: &str, body: String| {
        let response = Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", kind));
        // A page that went away is no concern of the service.
        let _ = request.respond(response);
    };
    match (path.as_str(), get) {
        ("/", true) => respond(request, 200, "text/html; charset=utf-8", PAGE.into()),
        ("/events", true) => {
            if pages.fetch_add(1, Relaxed) >= MAX_PAGES {
                pages.fetch_sub(1, Relaxed);
                return respond(request, 503, "text/plain", "too many pages open\n".into());
            }
            let (feed, pages) = (feed.clone(), pages.clone());
            let spawned = std::thread::Builder::new()
                .name("mandrill-dashboard-page".into())
                .spawn(move || {
                    stream(request.into_writer(), &feed);
                    pages.fetch_sub(1, Relaxed);
                });
            if spawned.is_err() {
                tracing::warn!("Cannot start a thread for a dashboard page");
            }
        }
        ("/" | "/events", false) => {
            respond(request, 405, "text/plain", "method not allowed\n".into())
        }
        _ => respond(request, 404, "text/plain", "not found\n".into()),
    }
}

/// Streams the feed to one page until it goes away.
fn stream(mut out: Box<dyn Write + Send>, feed: &Feed) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if out
        .write_all(head.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return;
    }
    let (mut cursor, mut seen) = (feed.start(), 0);
    loop {
        let batch = feed.since(cursor, seen, KEEPALIVE);
        let mut text = String::new();
        if batch.missed > 0 {
            let missed = json!({"type": "dropped", "count": batch.missed});
            text.push_str(&format!("data: {missed}\n\n"));
        }
        for event in &batch.events {
            text.push_str(&format!("data: {event}\n\n"));
        }
        if let Some(snapshot) = &batch.snapshot {
            text.push_str(&format!("data: {snapshot}\n\n"));
        }
        if text.is_empty() {
            text.push_str(": keepalive\n\n");
        }
        (cursor, seen) = (batch.next, batch.snapshots);
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_its_oldest_and_a_late_page_is_told() {
        let feed = Feed::default();
        for i in 0..KEEP + 10 {
            feed.push(json!({ "i": i }));
        }
        assert_eq!(feed.dropped(), 10);
        let batch = feed.since(0, 0, Duration::ZERO);
        assert_eq!(batch.missed, 10);
        assert_eq!(batch.events.len(), KEEP);
        assert!(batch.events[0].contains("\"i\":10"));
        // A page that is up to date waits, and gets only what is new.
        let batch = feed.since(batch.next, 0, Duration::ZERO);
        assert!(batch.events.is_empty() && batch.missed == 0);
    }

    #[test]
    fn a_new_page_opens_on_the_recent_past_and_the_latest_snapshot() {
        let feed = Feed::default();
        for i in 0..200 {
            feed.push(json!({ "i": i }));
        }
        feed.snapshot(json!({"type": "snapshot", "n": 1}));
        feed.snapshot(json!({"type": "snapshot", "n": 2}));
        let batch = feed.since(feed.start(), 0, Duration::ZERO);
        assert_eq!(batch.events.len(), REPLAY);
        assert!(batch.snapshot.unwrap().contains("\"n\":2"));
        let again = feed.since(batch.next, batch.snapshots, Duration::ZERO);
        assert!(
            again.snapshot.is_none(),
            "an old snapshot is not sent twice"
        );
    }
}

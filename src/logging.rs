//! Log set-up: `tracing` to stderr through a non-blocking writer, with the talk's line
//! shapes, as text or as JSON.

use std::sync::Mutex;

use clap::ValueEnum;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer};

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Lifecycle lines only: start, shutdown phases, errors about the service itself.
    None,
    /// Also one line per message step, as in the talk.
    Info,
    /// Everything, including panic locations and stale settlements.
    Debug,
}

impl LogLevel {
    pub(crate) fn directives(self) -> String {
        match self {
            LogLevel::None => format!("info,{}=off", crate::FLOW),
            LogLevel::Info => "info".into(),
            LogLevel::Debug => "debug".into(),
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, with the event's fields as keys.
    Json,
}

/// Lines the writer thread may hold before a logging actor waits for it. At about 150
/// bytes a line this is some 20 MB: room for a burst of per-message lines at full speed.
const BUFFERED_LINES: usize = 128_000;

/// The writer thread's guard, kept where `flush` can reach it from anywhere: an exit
/// with `std::process::exit` skips every destructor in `main`.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Sets the level of the subscriber `init` installed, for a live reload.
type SetLevel = Box<dyn Fn(LogLevel) -> Result<(), String> + Send>;

/// How to change the level while the service runs; set by `init`.
static SET_LEVEL: Mutex<Option<SetLevel>> = Mutex::new(None);

/// Changes how much is logged from now on, as a reload of the config asks.
pub fn set_level(level: LogLevel) -> Result<(), String> {
    let slot = SET_LEVEL.lock().map_err(|e| e.to_string())?;
    match &*slot {
        Some(set) => set(level),
        None => Err("logging was not set up by this program".into()),
    }
}

/// Wraps a filter's reload handle, whatever subscriber it belongs to, as a `SetLevel`.
fn level_setter<S: 'static>(handle: reload::Handle<EnvFilter, S>) -> SetLevel {
    Box::new(move |l: LogLevel| {
        handle
            .reload(EnvFilter::new(l.directives()))
            .map_err(|e| e.to_string())
    })
}

/// Flushes every buffered line when dropped; `init` returns it.
#[must_use = "dropping the guard flushes and stops the log writer"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Writes out every buffered line and stops the writer; later lines are dropped. Call it
/// right before `std::process::exit`.
pub fn flush() {
    // Dropping the guard waits (up to a second) for the writer to drain.
    let guard = WRITER.lock().map(|mut g| g.take());
    drop(guard);
}

/// The fields a per-message line carries for log pipelines: JSON lines show them, and
/// text lines keep the talk's shape without them.
const MESSAGE_FIELDS: [&str; 5] = ["instance_name", "message_id", "attempt", "actor", "outcome"];

/// Text fields: the message, then every other field as `name=value`, except a
/// per-message line's `MESSAGE_FIELDS`, which its text already says in words. A line
/// is per-message when it has an `outcome`.
struct TalkFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TalkFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        struct Collect(Vec<(&'static str, String)>);
        impl tracing::field::Visit for Collect {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                let shown = if field.name() == "message" {
                    value.to_string()
                } else {
                    format!("{value:?}")
                };
                self.0.push((field.name(), shown));
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push((field.name(), format!("{value:?}")));
            }
        }
        let mut all = Collect(Vec::new());
        fields.record(&mut all);
        let per_message = all.0.iter().any(|(name, _)| *name == "outcome");
        let mut line = all
            .0
            .iter()
            .find(|(name, _)| *name == "message")
            .map_or(String::new(), |(_, text)| text.clone());
        for (name, value) in &all.0 {
            if *name == "message" || (per_message && MESSAGE_FIELDS.contains(name)) {
                continue;
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&format!("{name}={value}"));
        }
        writer.write_str(&line)
    }
}

/// The log lines' layer, text or JSON, written by the non-blocking writer.
///
/// By default a failed write is reported with `eprintln!`, which panics when stderr is a
/// closed pipe: every log line would then panic, and a log reader that goes away would
/// stop the service. Losing log lines is the lesser harm.
fn lines<S>(
    writer: tracing_appender::non_blocking::NonBlocking,
    format: LogFormat,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(colour())
        .with_target(false)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => lines.fmt_fields(TalkFields).boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    }
}

/// Whether log lines are coloured: only on a terminal, and never when `NO_COLOR` is set
/// to anything but the empty string (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_colour
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
///
/// Lines are formatted on the logging thread but written by a dedicated thread, so a
/// slow stderr (a pipe nobody drains fast enough, a terminal) does not stall the event
/// loop. The writer is not lossy: when its buffer is full the logger waits rather than
/// drop a line. Keep the returned guard alive until the end of `main`; dropping it
/// flushes every buffered line.
///
/// It also quiets panics, for the binary and the examples alike: those inside handlers
/// are caught and logged by the supervision guard, and the default hook would print a
/// second, unformatted report of each, with a backtrace whenever `RUST_BACKTRACE` is
/// set. The location is kept, at debug level.
pub fn init(level: LogLevel, format: LogFormat) -> LogGuard {
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!(
            "panic at {}",
            info.location().map_or("?".into(), |l| l.to_string())
        );
    }));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.directives()));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("mandrill-log")
        .finish(std::io::stderr());
    let (filter, handle) = reload::Layer::new(filter);
    match crate::dashboard::feed() {
        // The level filters every event, so that one logged by nobody costs a check of
        // its callsite's cached interest and no more.
        None => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(lines(writer, format))
                .try_init();
        }
        // The level filters the log lines only: the dashboard sees its events whatever
        // the level, and nothing else.
        Some(feed) => {
            let feed = crate::dashboard::FeedLayer::new(feed.clone())
                .with_filter(crate::dashboard::FeedLayer::targets());
            let _ = tracing_subscriber::registry()
                .with(lines(writer, format).with_filter(filter))
                .with(feed)
                .try_init();
        }
    }
    let set = level_setter(handle);
    if let Ok(mut slot) = SET_LEVEL.lock() {
        *slot = Some(set);
    }
    if let Ok(mut slot) = WRITER.lock() {
        *slot = Some(guard);
    }
    LogGuard(())
}

//! The service's runtime configuration, the aggregate of every part's settings,
//! independent of where it came from: flags, a config file, or code.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::action::command::Template;
use crate::action::webhook::{Header, Url};
pub use crate::actors::signal::OnSighup;
use crate::broker::jetstream::JetStreamConfig;
use crate::broker::pubsub::PubSubConfig;
use crate::faults::Faults;
use crate::logging::LogLevel;
use crate::rails::Rails;
use crate::supervision::policy::{Decider, RestartTypes, ShutdownTimeouts};
pub use crate::supervision::strategy::{Backoff, Strategy};

/// Reads the configuration again, as it was read at start: the command line and the
/// config file it names.
#[derive(Clone)]
pub struct ConfigSource(pub Arc<dyn Fn() -> Result<Config, String> + Send + Sync>);

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSource")
    }
}

/// Compares settings by how they print, which every one of them can.
macro_rules! changed {
    ($a:expr, $b:expr, $($name:literal => $field:ident),* $(,)?) => {{
        let mut out = Vec::new();
        $(if format!("{:?}", $a.$field) != format!("{:?}", $b.$field) {
            out.push($name);
        })*
        out
    }};
}

impl Config {
    /// The settings that differ in `new` but cannot change while the service runs, by
    /// their flag names.
    pub fn fixed_changes(&self, new: &Config) -> Vec<&'static str> {
        changed!(self, new,
            "source" => source, "messages" => messages, "publish-delay" => publish_delay,
            "publish-rate" => publish_rate, "seed" => seed, "io-delay" => io_delay,
            "domain" => domain, "max-deliveries" => max_deliveries,
            "max-in-flight" => max_in_flight, "max-backlog" => max_backlog, "ack-deadline" => ack_deadline,
            "redelivery-delay" => redelivery_delay, "message-timeout" => message_timeout,
            "store" => store, "batch-size" => batch_size, "flush-interval" => flush_interval,
            "drain-timeout" => drain_timeout, "shield-timeout" => shield_timeout,
            "shutdown-timeout" => shutdown_timeouts, "max-restarts" => max_restarts,
            "restart-window" => restart_window, "strategy" => strategy, "backoff" => backoff,
            "decider" => decider, "restart-type" => restart_types,
            "claim-ttl" => claim_ttl, "handler-deadline" => handler_deadline, "slow-handler-ms" => slow_handler,
            "lag-warn-ms" => lag_warn, "status" => status_every, "inject" => faults,
            "instance-id" => instance_id, "on-sighup" => on_sighup,
            "metrics-addr" => metrics_addr,
        )
    }
}

/// What restarts a host.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionSpec {
    /// The talk's coin flip after simulated IO.
    Simulated,
    /// A program run per host, killed with its process group after `timeout`.
    Command {
        template: Template,
        timeout: Duration,
    },
    /// A JSON POST per host to `url`, with `headers`, given up after `timeout`.
    Webhook {
        url: Url,
        headers: Vec<Header>,
        timeout: Duration,
    },
}

impl ActionSpec {
    /// Whether it restarts real hosts, and so is leashed until unleashed.
    pub fn is_real(&self) -> bool {
        !matches!(self, ActionSpec::Simulated)
    }
}

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The talk's simulated publisher.
    Simulated,
    /// Newline-delimited JSON on standard input.
    Stdin,
    /// A durable consumer on a NATS JetStream stream.
    JetStream(JetStreamConfig),
    /// A Google Cloud Pub/Sub subscription.
    PubSub(PubSubConfig),
}

impl Source {
    /// Whether the source is a broker of its own, with no end: a run against it ends on
    /// `--messages`, `--idle-exit` or a signal.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::JetStream(_) | Self::PubSub(_))
    }
}

/// Which store the Saver writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite(PathBuf),
    /// A PostgreSQL database that several instances share, with up to `pool`
    /// connections.
    Postgres {
        database: crate::store::postgres::Database,
        pool: usize,
    },
    Memory,
}

/// Everything the service needs to run. `Config::default()` is the embedded defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// Stop publishing after this many messages; `None` publishes until shutdown.
    pub messages: Option<u64>,
    /// Shut down once nothing has been pulled for this long.
    pub idle_exit: Option<Duration>,
    pub publish_delay: Duration,
    /// When set, each publish delay is `random() * publish_delay`.
    pub publish_jitter: bool,
    pub seed: Option<u64>,
    /// Save and restart each take `random() * io_delay` of simulated IO...
    pub io_delay: Duration,
    /// ...or, when false, exactly `io_delay`.
    pub io_jitter: bool,
    /// Publish at this many messages a second instead of pacing by `publish_delay`.
    pub publish_rate: Option<f64>,
    pub failure_rate: f64,
    pub domain: String,
    pub max_deliveries: u32,
    pub max_in_flight: usize,
    /// Messages the in-memory broker holds, not yet acked or dead-lettered, at most.
    pub max_backlog: u64,
    /// How long a delivery's lease lasts before the subscription redelivers it.
    pub ack_deadline: Duration,
    /// How long a nacked message waits before redelivery.
    pub redelivery_delay: Duration,
    /// A message whose outcomes are not all in by then is nacked.
    pub message_timeout: Duration,
    pub store: StoreKind,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub min_restart_interval: Duration,
    /// How long a restart's claim waits for its outcome before the history shows it as
    /// `unknown`; unset, the action's timeout and a margin.
    pub claim_ttl: Option<Duration>,
    pub drain_timeout: Duration,
    pub shield_timeout: Duration,
    /// How long each child may take to stop at shutdown before it is abandoned.
    pub shutdown_timeouts: ShutdownTimeouts,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub strategy: Strategy,
    pub backoff: Backoff,
    pub decider: Decider,
    pub restart_types: RestartTypes,
    /// A handler that runs longer than this is a stall.
    pub handler_deadline: Duration,
    /// A handler that runs longer than this logs a warning.
    pub slow_handler: Duration,
    /// A loop lag of this much or more logs a warning.
    pub lag_warn: Duration,
    /// How often to print the status line, if at all.
    pub status_every: Option<Duration>,
    pub faults: Faults,
    /// What restarts a host.
    pub action: ActionSpec,
    /// Whether a real action may restart hosts; leashed, it only logs what it would do.
    pub unleash: bool,
    /// The safety rails every restart must pass.
    pub rails: Rails,
    /// Who this service is in the history; `hostname:pid` when unset.
    pub instance_id: Option<String>,
    /// How much is logged; a reload can change it.
    pub log_level: LogLevel,
    /// What SIGHUP does.
    pub on_sighup: OnSighup,
    /// Where a reload reads the configuration again; none, nothing to reload from.
    pub reload: Option<ConfigSource>,
    /// Where `main` serves Prometheus metrics, if anywhere; it cannot change live.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// What the run tells the metrics endpoint's probes.
    pub health: std::sync::Arc<crate::metrics::Health>,
    /// Off in in-process tests, which must not take over the test runner's signals.
    pub handle_signals: bool,
}

impl Config {
    /// Where messages come from, where they are kept and what restarts hosts, in a few
    /// words each, for the start-up banner.
    pub fn describe(&self) -> String {
        let source = match &self.source {
            Source::Simulated => "simulated publisher, in-memory broker".to_string(),
            Source::Stdin => "stdin, in-memory broker".to_string(),
            Source::JetStream(js) => format!(
                "jetstream {} stream {} consumer {}",
                js.target.url, js.target.stream, js.consumer.name
            ),
            Source::PubSub(ps) => {
                let at = std::env::var("PUBSUB_EMULATOR_HOST")
                    .map_or("Google Cloud".to_string(), |h| {
                        format!("the emulator at {h}")
                    });
                format!("pubsub {} on {at}", ps.subscription.name)
            }
        };
        let store = match &self.store {
            StoreKind::Sqlite(path) => format!("sqlite {}", path.display()),
            StoreKind::Postgres { database, pool } => format!("{database} ({pool} connections)"),
            StoreKind::Memory => "memory, nothing kept".to_string(),
        };
        let leash = if self.unleash { "unleashed" } else { "leashed" };
        let action = match &self.action {
            ActionSpec::Simulated => format!("simulated, failing at {}", self.failure_rate),
            ActionSpec::Command { template, .. } => {
                format!("command {} ({leash})", template.program().display())
            }
            ActionSpec::Webhook { url, .. } => format!("webhook {url} ({leash})"),
        };
        format!("source {source}; store {store}; action {action}")
    }
}

/// What a claim's ttl adds to the action's timeout by default: time to record the
/// outcome once the action is done.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

impl Config {
    /// How long a restart's claim waits for its outcome: `--claim-ttl`, or the action's
    /// timeout and a margin. The simulated action has no timeout; its IO delay, doubled
    /// for jitter, stands in for one.
    pub fn claim_ttl(&self) -> Duration {
        self.claim_ttl.unwrap_or_else(|| {
            let timeout = match &self.action {
                ActionSpec::Simulated => self.io_delay * 2,
                ActionSpec::Command { timeout, .. } | ActionSpec::Webhook { timeout, .. } => {
                    *timeout
                }
            };
            timeout + CLAIM_MARGIN
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source: Source::Simulated,
            messages: None,
            idle_exit: None,
            publish_delay: Duration::from_secs(1),
            publish_jitter: true,
            seed: None,
            io_delay: Duration::from_secs(1),
            io_jitter: true,
            publish_rate: None,
            failure_rate: 0.25,
            domain: "example.net".into(),
            max_deliveries: 5,
            max_in_flight: 1000,
            max_backlog: 100_000,
            ack_deadline: Duration::from_secs(10),
            redelivery_delay: Duration::ZERO,
            message_timeout: Duration::from_secs(30),
            store: StoreKind::Sqlite(PathBuf::from("mandrill.db")),
            batch_size: 1000,
            flush_interval: Duration::from_millis(5),
            min_restart_interval: Duration::from_secs(7 * 24 * 3600),
            claim_ttl: None,
            drain_timeout: Duration::from_secs(5),
            shield_timeout: Duration::from_secs(30),
            shutdown_timeouts: ShutdownTimeouts::default(),
            max_restarts: 10,
            restart_window: Duration::from_secs(5),
            strategy: Strategy::OneForOne,
            backoff: Backoff::default(),
            decider: Decider::default(),
            restart_types: RestartTypes::default(),
            handler_deadline: Duration::from_secs(1),
            slow_handler: Duration::from_millis(100),
            lag_warn: Duration::from_millis(100),
            status_every: None,
            faults: Faults::default(),
            action: ActionSpec::Simulated,
            unleash: false,
            rails: Rails::default(),
            instance_id: None,
            log_level: LogLevel::Info,
            on_sighup: OnSighup::Shutdown,
            reload: None,
            metrics_addr: None,
            health: Default::default(),
            handle_signals: true,
        }
    }
}

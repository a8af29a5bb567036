//! The command line: every flag, its default and its help text, turned into a `Config`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::action::command::Template;
use crate::action::webhook::{Header, Url};
use crate::actors::signal::OnSighup;
use crate::broker::jetstream::{ConsumerSpec, JetStreamConfig, Target, SHARERS};
use crate::broker::pubsub::{self, PubSubConfig, PubSubError, SubscriptionSpec};
use crate::config::{ActionSpec, Config, Source, StoreKind};
use crate::faults::Faults;
use crate::history::HistoryArgs;
use crate::logging::{LogFormat, LogLevel};
use crate::message::InstanceName;
use crate::publish::PublishArgs;
use crate::rails::{Days, Globs, Hours, RailSpecError, Rails, Rate, Weekdays, Zone};
use crate::supervision::policy::{Decider, PolicyError, RestartTypes, ShutdownTimeouts};
use crate::supervision::strategy::{Backoff, Strategy};
use crate::units::{parse_duration, parse_positive_duration, parse_probability};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// The talk's simulated publisher.
    Sim,
    /// Newline-delimited JSON messages on standard input.
    Stdin,
    /// A durable pull consumer on a NATS JetStream stream (see --nats-url, --stream,
    /// --consumer).
    Jetstream,
    /// A Google Cloud Pub/Sub subscription (see --subscription, --topic); the emulator
    /// at PUBSUB_EMULATOR_HOST when that is set.
    Pubsub,
}

/// What the binary does besides running the service.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// What was restarted, when and why: reads the restart history, read-only, so it
    /// runs beside the service.
    History(HistoryArgs),
    /// The talk's publisher as a load generator into a real broker, or a replay of a
    /// file of messages; prints what it published.
    Publish(PublishArgs),
    /// Prints a completion script for a shell, e.g. `mandrill completions bash >
    /// /etc/bash_completion.d/mandrill`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints the manual page, in roff: `mandrill man | man -l -`.
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    /// The talk's simulated restart: `--io-delay` of IO, failing at `--failure-rate`.
    Sim,
    /// Run a program per host (see --command).
    Command,
    /// POST a JSON request per host to --webhook-url.
    Webhook,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    /// A SQLite file (see --db).
    Sqlite,
    /// A PostgreSQL database that several instances share (see --db-url, --db-pool).
    Postgres,
    /// In memory, for study runs and benchmarks; nothing is kept.
    Memory,
}

/// Mayhem Mandrill: a chaos-monkey service that restarts hosts named in pub/sub messages.
///
/// Each message is saved and its host restarted at the same time; the message is acked
/// when both succeed and nacked otherwise. SIGINT, SIGTERM and SIGHUP start an ordered
/// shutdown; a second SIGINT or SIGTERM exits at once. At exit, one JSON line on stdout
/// reports the run. Durations take seconds (0.5) or units (30s, 7d).
#[derive(Debug, Parser)]
#[command(
    name = "mandrill",
    version,
    args_override_self = true,
    allow_negative_numbers = true
)]
pub struct Cli {
    /// A command other than running the service.
    #[command(subcommand)]
    pub subcommand: Option<Command>,

    /// The config file read, if any: named by --config or MANDRILL_CONFIG, or found on
    /// the search path.
    #[arg(skip)]
    pub config_read: Option<PathBuf>,

    /// What to warn about once logging runs, such as a MANDRILL_ variable that is no
    /// setting.
    #[arg(skip)]
    pub warnings: Vec<String>,

    /// Read settings from a TOML file first; environment variables and flags override
    /// it. Keys are the long flag names (`failure-rate = 0.1`, or `failure_rate`), and a
    /// table joins its name to its keys (`[backoff]` `min = 1` is --backoff-min 1).
    /// Without it, the first file found of $XDG_CONFIG_HOME/mandrill/mandrill.toml
    /// (~/.config when unset) and /etc/mandrill/mandrill.toml is read.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Where messages come from.
    #[arg(long, value_enum, default_value_t = SourceArg::Sim)]
    pub source: SourceArg,

    /// The NATS server, for --source jetstream.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// The JetStream stream, for --source jetstream; its subject is its name.
    #[arg(long, value_name = "NAME", default_value = "MAYHEM")]
    pub stream: String,

    /// The durable consumer, for --source jetstream; every instance naming it shares
    /// the work.
    #[arg(long, value_name = "NAME", default_value = "mandrill")]
    pub consumer: String,

    /// How long a remote broker may stay unreachable, while the adapter reconnects,
    /// before it fails with broker-down, which escalates to the ordered shutdown.
    #[arg(long, value_name = "S", default_value = "60", value_parser = parse_positive_duration)]
    pub broker_down_timeout: Duration,

    /// With --source jetstream, wait for the server to confirm each ack (a double ack),
    /// so that an ack it never got is not counted; slower.
    #[arg(long)]
    pub confirm_acks: bool,

    /// The subscription, for --source pubsub: projects/PROJECT/subscriptions/NAME.
    #[arg(long, value_name = "NAME")]
    pub subscription: Option<String>,

    /// The topic --create subscribes --subscription to, for --source pubsub
    /// [default: the topic of the subscription's own name].
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,

    /// Create what is missing. JetStream: the stream and the consumer, with explicit
    /// acks, --ack-deadline as their ack wait, --max-deliveries, and 16 x --max-in-flight
    /// as max_ack_pending, a ceiling shared by every instance on the consumer.
    /// Pub/Sub: the topic, a dead-letter topic with a subscription that keeps its
    /// messages, and the subscription, with --ack-deadline and a dead-letter policy.
    #[arg(long)]
    pub create: bool,

    /// Deliveries before a message goes to the dead letters; 1 makes a nack final.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,

    /// Flow control: at most this many messages leased at once.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,

    /// The in-memory broker holds at most this many messages not yet acked or
    /// dead-lettered; the simulated publisher and the stdin reader wait for room beyond it.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: u64,

    /// Lease on a delivery; the subscription redelivers it when the lease runs out.
    /// Leases of messages still being worked on are extended.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_positive_duration)]
    pub ack_deadline: Duration,

    /// Delay before a nacked message is redelivered.
    #[arg(long, value_name = "S", default_value = "0", value_parser = parse_duration)]
    pub redelivery_delay: Duration,

    /// A message whose save or restart has not finished by then is nacked.
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_positive_duration)]
    pub message_timeout: Duration,

    /// Where messages are stored.
    #[arg(long, value_enum, default_value_t = StoreArg::Sqlite)]
    pub store: StoreArg,

    /// The SQLite file; its schema is created at start.
    #[arg(long, value_name = "PATH", default_value = "mandrill.db", value_parser = parse_db_path)]
    pub db: PathBuf,

    /// The PostgreSQL database, for --store postgres: postgres://USER@HOST/DB; its
    /// schema is created or migrated at start. DATABASE_URL, when this is unset.
    #[arg(long, value_name = "URL")]
    pub db_url: Option<String>,

    /// Connections to PostgreSQL, each with a writer thread of its own.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub db_pool: u64,

    /// Group commit: a batch is written when it holds this many messages...
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,

    /// ...or this long after its first message arrived; 0 commits as soon as the last
    /// commit is done, whatever the size.
    #[arg(long, value_name = "S", default_value = "0.005", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// How long a restart's claim in the store waits for its outcome; past it, an
    /// instance that died mid-restart shows as `unknown` in the history [default: the
    /// action timeout + 30s].
    #[arg(long, value_name = "S", value_parser = parse_positive_duration)]
    pub claim_ttl: Option<Duration>,

    /// Who this service is in the restart history [default: hostname:pid].
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,

    /// Domain appended to instance names to make hostnames.
    #[arg(long, default_value = "example.net", value_parser = parse_domain)]
    pub domain: String,

    /// Do not restart a host restarted less than this long ago; 0 disables the check.
    #[arg(long, value_name = "S", default_value = "7d", value_parser = parse_duration)]
    pub min_restart_interval: Duration,

    /// What restarts a host. A real action (`command`) is leashed until --unleash: it
    /// logs what it would run, and the message is acked.
    #[arg(long, value_enum, default_value_t = ActionArg::Sim)]
    pub action: ActionArg,

    /// The program `--action command` runs for each host, found on PATH at start-up.
    #[arg(long, value_name = "PROGRAM")]
    pub command: Option<String>,

    /// One argument of the program, in order; repeat it for each. {instance}, {hostname}
    /// and {message_id} are filled in inside the one argument, never through a shell;
    /// `{{` is a brace. The program's environment keeps only PATH, HOME, USER, LOGNAME,
    /// LANG, LC_ALL, TZ and SSH_AUTH_SOCK, and its stdin is closed.
    #[arg(long = "command-arg", value_name = "ARG", allow_hyphen_values = true,
          action = clap::ArgAction::Append)]
    pub command_args: Vec<String>,

    /// The endpoint `--action webhook` POSTs to: {"message_id", "instance_name",
    /// "hostname", "attempt", "dry_run"}. 2xx is a restart; 4xx is a refusal, and the
    /// message goes to the dead letters at once; 5xx, a timeout or a failed connection is
    /// retried.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub webhook_url: Option<Url>,

    /// A header for every webhook request, NAME=VALUE; repeat it for each. `${VAR}` in
    /// the value is that environment variable's value. Values are never logged.
    #[arg(long = "webhook-header", value_name = "NAME=VALUE", action = clap::ArgAction::Append)]
    pub webhook_headers: Vec<String>,

    /// A restart still running after this is a timeout: its whole process group is killed.
    #[arg(long, value_name = "S", default_value = "60", value_parser = parse_positive_duration)]
    pub action_timeout: Duration,

    /// Let a real action restart hosts. Without it, `--action command` only logs what it
    /// would run, as Chaos Monkey's leash does.
    #[arg(long)]
    pub unleash: bool,

    /// Rail: restart only hosts whose instance name matches one of these globs
    /// (`cattle-*,web-?`) [default: all].
    #[arg(long, value_name = "GLOBS", value_parser = parse_rail::<Globs>)]
    pub allow: Option<Globs>,

    /// Rail: never restart hosts whose instance name matches one of these globs; deny
    /// wins over --allow.
    #[arg(long, value_name = "GLOBS", value_parser = parse_rail::<Globs>)]
    pub deny: Option<Globs>,

    /// Rail: restart only within these hours of the day, in --timezone (`09:00-15:00`;
    /// `22:00-02:00` spans midnight).
    #[arg(long, value_name = "HH:MM-HH:MM", value_parser = parse_rail::<Hours>)]
    pub allowed_hours: Option<Hours>,

    /// Rail: no restarts on these weekdays, in --timezone (`Sat,Sun`).
    #[arg(long, value_name = "DAYS", value_parser = parse_rail::<Weekdays>)]
    pub excluded_weekdays: Option<Weekdays>,

    /// Rail: no restarts on these days of the year, in --timezone (`Dec24,Jan1`).
    #[arg(long, value_name = "DAYS", value_parser = parse_rail::<Days>)]
    pub excluded_days: Option<Days>,

    /// The IANA time zone the time rails are read in (`Europe/Stockholm`) [default: UTC].
    #[arg(long, value_name = "ZONE", value_parser = parse_rail::<Zone>)]
    pub timezone: Option<Zone>,

    /// Rail, the kill switch: while this file exists, every restart is refused.
    #[arg(long, value_name = "PATH")]
    pub pause_file: Option<PathBuf>,

    /// Rail: at most N host restarts started within WINDOW (`1h=10`); past it, refused.
    #[arg(long, value_name = "WINDOW=N", value_parser = parse_rail::<Rate>)]
    pub max_host_restarts: Option<Rate>,

    /// Rail: at most N host restarts running at once; the rest wait their turn.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrent_host_restarts: Option<u64>,

    /// Restart intensity: more than this many actor restarts within --restart-window
    /// escalates to an ordered shutdown with exit status 1.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_restarts: u32,

    /// The window for --max-restarts.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_positive_duration)]
    pub restart_window: Duration,

    /// Supervision strategy: which children restart when one fails.
    #[arg(long, value_enum, default_value_t = Strategy::OneForOne)]
    pub strategy: Strategy,

    /// The decider: what each kind of failure leads to, as KIND=DIRECTIVE[,...] over the
    /// defaults. Kinds: panic, stall, store-open, store-unavailable, store-corrupt,
    /// store-closed, store-panicked, restart-failed. Directives: resume, restart,
    /// restart-with-backoff, stop, escalate. Defaults: restart-failed and store-closed
    /// resume, store-unavailable restarts with backoff, store-open and store-corrupt
    /// escalate, the rest restart.
    #[arg(long, value_name = "SPEC", value_parser = parse_policy::<Decider>)]
    pub decider: Option<Decider>,

    /// Restart types, CHILD=TYPE[,...]: permanent (always restarted), transient (not after
    /// a normal exit) or temporary (never restarted). Defaults: the publisher is
    /// transient, the rest permanent.
    #[arg(long, value_name = "SPEC", value_parser = parse_policy::<RestartTypes>)]
    pub restart_type: Option<RestartTypes>,

    /// A handler that runs longer than this is a stall, a failure the decider handles.
    #[arg(long, value_name = "S", default_value = "1", value_parser = parse_positive_duration)]
    pub handler_deadline: Duration,

    /// Backoff, for the restart-with-backoff directive: the delay before a failed
    /// actor's first restart in a row; it doubles with each further failure. 0 turns it off.
    #[arg(long, value_name = "S", default_value = "0.1", value_parser = parse_duration)]
    pub backoff_min: Duration,

    /// Backoff: the longest delay, before jitter.
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Backoff: each delay is multiplied by 1 + random() * this.
    #[arg(long, value_name = "F", default_value_t = 0.2, value_parser = parse_probability)]
    pub backoff_jitter: f64,

    /// Backoff: an actor that has not failed for this long starts again from --backoff-min.
    #[arg(long, value_name = "S", default_value = "60", value_parser = parse_duration)]
    pub backoff_reset: Duration,

    /// Run the ordered shutdown once nothing has been pulled for this long, for batch
    /// runs against a broker that has no end of its own.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_exit: Option<Duration>,

    /// Shutdown: how long to let in-flight messages finish; 0 does not wait.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Shutdown: how long to wait for restarts already running.
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_duration)]
    pub shield_timeout: Duration,

    /// Shutdown: how long each child may take to stop before the shutdown goes on
    /// without it (OTP's brutal kill after a timeout). S for every child, or
    /// CHILD=S[,...]; the Saver's includes its last commit and closing the store.
    #[arg(long, value_name = "SPEC", default_value = "5", value_parser = parse_policy::<ShutdownTimeouts>)]
    pub shutdown_timeout: ShutdownTimeouts,

    /// What SIGHUP does: the ordered shutdown, or a reload of the config file that
    /// applies the log level, the safety rails, the action and the failure rate live.
    #[arg(long, value_enum, default_value_t = OnSighup::Shutdown)]
    pub on_sighup: OnSighup,

    /// Logging: none keeps lifecycle lines only; RUST_LOG overrides it.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log: LogLevel,

    /// Log line format: text for people, json for log pipelines (one object a line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Warn about any actor handler that runs longer than this many milliseconds, naming
    /// the actor, what it handled and how long it took. 0 turns the warning off.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub slow_handler_ms: u64,

    /// Warn when the event loop runs a timer this many milliseconds late or more (the
    /// loop lag, also exported as a metric). 0 turns the warning off.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub lag_warn_ms: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9000.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Serve the live supervision dashboard at http://ADDR/: a port alone is on
    /// loopback (8080 is 127.0.0.1:8080). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_local_addr)]
    pub dashboard: Option<std::net::SocketAddr>,

    /// Keep serving /metrics and the dashboard this long after the final flush at
    /// shutdown, so that a last scrape or a last look sees the final counts.
    #[arg(long, value_name = "S", default_value = "0", value_parser = parse_duration)]
    pub metrics_linger: Duration,

    /// A status line every --status-every on stderr: auto prints it only when stderr is
    /// a terminal.
    #[arg(long, value_enum, default_value_t = StatusArg::Auto)]
    pub status: StatusArg,

    /// How often the status line is printed.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_positive_duration)]
    pub status_every: Duration,

    /// Publish this many messages, then shut down once every one is settled; with
    /// --source jetstream or pubsub, shut down once this many are settled [default: run
    /// until a signal].
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,

    /// Fixed delay between published messages; 0 publishes as fast as possible
    /// [default: random() * 1s, the talk's pace].
    #[arg(long, value_name = "S", value_parser = parse_duration)]
    pub publish_delay: Option<Duration>,

    /// Make each publish delay random() * --publish-delay.
    #[arg(long)]
    pub jitter: bool,

    /// Publish this many messages a second, in small bursts every 100 µs (one message at a
    /// time below 10,000 a second); overrides --publish-delay. For load tests at a fixed
    /// offered rate.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub publish_rate: Option<f64>,

    /// Seed every random choice (host names, ids, failures, delays) for a reproducible run.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Simulated IO: saving and restarting each take random() * S.
    #[arg(long, value_name = "S", default_value = "1", value_parser = parse_duration)]
    pub io_delay: Duration,

    /// Make every save and restart take exactly --io-delay, not random() * --io-delay.
    #[arg(long)]
    pub io_fixed: bool,

    /// Probability that a simulated restart fails.
    #[arg(long, value_name = "P", default_value_t = 0.25, value_parser = parse_probability)]
    pub failure_rate: f64,

    /// Inject faults: KIND:ACTOR=RATE[,...], e.g. panic:saver=0.01,stall:acker=0.001.
    /// RATE is the chance that one handler call fails (a call may carry a batch of
    /// messages). Kinds: panic; stall (the handler blocks for twice --handler-deadline);
    /// error (the saver's commit fails as store-unavailable, the restarter's host restart
    /// fails). Actors: publisher, consumer, saver, restarter, acker.
    #[arg(long, value_name = "SPEC", value_parser = parse_faults)]
    pub inject: Option<Faults>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Only when stderr is a terminal.
    Auto,
    Always,
    Never,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid toml, line {line}, column {column}: {reason}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("config file {path}{at}: unknown key `{key}`{hint}")]
    UnknownKey {
        path: String,
        /// Where, as `, line N`, when the key is found in the text.
        at: String,
        key: String,
        /// `; did you mean ...?`, when a key is close.
        hint: String,
    },
    #[error("config file {path}{at}: key `{key}`: {reason}")]
    BadValue {
        path: String,
        at: String,
        key: String,
        reason: String,
    },
    /// Two spellings of one key, such as `max_in_flight` and `max-in-flight`, or a
    /// table's key and the joined name: TOML lets both through, and one would silently
    /// win.
    #[error("config file {path}{at}: key `{key}` sets --{flag}, which key `{other}` sets already")]
    SetTwice {
        path: String,
        at: String,
        key: String,
        flag: String,
        other: String,
    },
}

/// Why the command line, with its config file, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A `MANDRILL_` variable holds a value its flag refuses.
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    /// The restart action's settings do not make a usable action.
    #[error("{0}")]
    Action(String),
    /// A broker's name or setting is unusable.
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    #[error("--source pubsub needs --subscription projects/PROJECT/subscriptions/NAME")]
    NoSubscription,
    /// The store's settings do not make a usable store.
    #[error("{0}")]
    Store(String),
}

impl Cli {
    /// Parses the command line, the environment and a config file: flags win over
    /// `MANDRILL_<FLAG>` variables, which win over the file. The file is `--config` (or
    /// `MANDRILL_CONFIG`), else the first found on the search path.
    pub fn parse_with_file<I, T>(argv: I) -> Result<Cli, ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        check_env(&argv)?;
        let cli = Cli::parse_full(&argv)?;
        let path = match &cli.config {
            Some(path) => Some(path.clone()),
            None => search_path().into_iter().find(|p| p.exists()),
        };
        let mut cli = match &path {
            None => cli,
            Some(path) => {
                let from_file = file_args(path)?
                    .into_iter()
                    .filter(|arg| !set_in_env(flag_of(arg)));
                let mut merged = vec![argv[0].clone()];
                merged.extend(from_file.map(Into::into));
                merged.extend(argv[1..].iter().cloned());
                Cli::parse_full(&merged)?
            }
        };
        cli.config_read = path;
        cli.warnings = unknown_env_vars();
        Ok(cli)
    }

    /// The command as the binary parses it: every flag under its `--help` heading, and
    /// readable from its `MANDRILL_<FLAG>` variable.
    pub fn command_full() -> clap::Command {
        use clap::CommandFactory;
        Cli::command().mut_args(|arg| {
            let Some(long) = arg.get_long().map(str::to_string) else {
                return arg;
            };
            if is_meta(&arg) {
                return arg;
            }
            let arg = match heading_of(&long) {
                Some(heading) => arg.help_heading(heading),
                None => arg,
            };
            // `-h` gives each flag's first sentence; `--help` the whole text.
            let arg = match (arg.get_help().map(|h| h.to_string()), arg.get_long_help()) {
                (Some(help), None) => match first_sentence(&help) {
                    Some(short) => arg.long_help(help.clone()).help(short),
                    None => arg,
                },
                _ => arg,
            };
            // Values stay out of `--help`: a variable may hold a secret.
            arg.env(env_name(&long)).hide_env_values(true)
        })
    }

    fn parse_full(argv: &[std::ffi::OsString]) -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        let mut command = Cli::command_full();
        let matches = command.try_get_matches_from_mut(argv)?;
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }
}

/// The manual page, in roff: clap's sections, with the environment and the files the
/// binary reads added before the version.
pub fn man_page(out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(Cli::command_full());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    out.extend_from_slice(
        br#".SH ENVIRONMENT
Every flag can be set with a variable named MANDRILL_ and the flag's name in
capitals, with underscores for hyphens: \fB\-\-failure\-rate\fR is
\fBMANDRILL_FAILURE_RATE\fR. A flag on the command line wins over its variable,
which wins over the config file. A bad value in a variable is an error that names
the variable.
.TP
\fBMANDRILL_CONFIG\fR
The config file, as \fB\-\-config\fR.
.TP
\fBDATABASE_URL\fR
The PostgreSQL database, when \fB\-\-db\-url\fR is unset.
.TP
\fBPUBSUB_EMULATOR_HOST\fR
The Pub/Sub emulator to use instead of Google Cloud.
.TP
\fBNO_COLOR\fR
Set to anything but the empty string, log lines are never coloured. They are
coloured only when standard error is a terminal.
.TP
\fBRUST_LOG\fR
A log filter that overrides \fB\-\-log\fR.
.SH FILES
.TP
\fI$XDG_CONFIG_HOME/mandrill/mandrill.toml\fR (\fI~/.config\fR when unset)
The config file read when none is named.
.TP
\fI/etc/mandrill/mandrill.toml\fR
The config file read when none is named and the one above is missing.
.SH EXIT STATUS
0 after an ordered shutdown, 1 when the service could not start or an escalation
stopped it, 2 for a usage error.
"#,
    );
    man.render_version_section(out)
}

/// The first sentence of a help text, when there is more after it.
fn first_sentence(help: &str) -> Option<String> {
    let end = help.find(". ")?;
    Some(help[..end].to_string())
}

/// Where a config file is looked for when none is named, in order.
fn search_path() -> Vec<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    xdg.map(|d| d.join("mandrill").join("mandrill.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/mandrill/mandrill.toml")])
        .collect()
}

/// `--help`, `--version` and `--config`'s own kin: flags that are not settings.
fn is_meta(arg: &clap::Arg) -> bool {
    matches!(
        arg.get_action(),
        clap::ArgAction::Help
            | clap::ArgAction::HelpShort
            | clap::ArgAction::HelpLong
            | clap::ArgAction::Version
    )
}

/// The variable a flag is read from: `--failure-rate` is `MANDRILL_FAILURE_RATE`.
pub fn env_name(long: &str) -> String {
    format!("MANDRILL_{}", long.replace('-', "_").to_uppercase())
}

/// Whether a flag's variable is set, so that it wins over the config file.
fn set_in_env(long: &str) -> bool {
    std::env::var_os(env_name(long)).is_some()
}

/// The flag of one `--flag=value` or `--flag` argument.
fn flag_of(arg: &str) -> &str {
    let arg = arg.trim_start_matches("--");
    arg.split_once('=').map_or(arg, |(flag, _)| flag)
}

/// The flags under each heading of `--help`, in the order shown.
const HEADINGS: &[(&str, &[&str])] = &[
    (
        "Source",
        &[
            "source",
            "nats-url",
            "stream",
            "consumer",
            "subscription",
            "topic",
            "create",
            "broker-down-timeout",
            "confirm-acks",
            "max-deliveries",
            "max-in-flight",
            "max-backlog",
            "ack-deadline",
            "redelivery-delay",
            "message-timeout",
        ],
    ),
    (
        "Store",
        &[
            "store",
            "db",
            "db-url",
            "db-pool",
            "batch-size",
            "flush-interval",
            "instance-id",
            "claim-ttl",
        ],
    ),
    (
        "Action and safety",
        &[
            "action",
            "command",
            "command-arg",
            "webhook-url",
            "webhook-header",
            "action-timeout",
            "unleash",
            "domain",
            "min-restart-interval",
            "allow",
            "deny",
            "allowed-hours",
            "excluded-weekdays",
            "excluded-days",
            "timezone",
            "pause-file",
            "max-host-restarts",
            "max-concurrent-host-restarts",
        ],
    ),
    (
        "Supervision",
        &[
            "strategy",
            "max-restarts",
            "restart-window",
            "decider",
            "restart-type",
            "handler-deadline",
            "backoff-min",
            "backoff-max",
            "backoff-jitter",
            "backoff-reset",
        ],
    ),
    (
        "Shutdown",
        &[
            "drain-timeout",
            "shield-timeout",
            "shutdown-timeout",
            "on-sighup",
            "idle-exit",
        ],
    ),
    (
        "Observability",
        &[
            "log",
            "log-format",
            "slow-handler-ms",
            "lag-warn-ms",
            "metrics-addr",
            "metrics-linger",
            "dashboard",
            "status",
            "status-every",
        ],
    ),
    (
        "Simulation",
        &[
            "messages",
            "publish-delay",
            "jitter",
            "publish-rate",
            "seed",
            "io-delay",
            "io-fixed",
            "failure-rate",
            "inject",
        ],
    ),
];

fn heading_of(long: &str) -> Option<&'static str> {
    HEADINGS
        .iter()
        .find(|(_, flags)| flags.contains(&long))
        .map(|(heading, _)| *heading)
}

/// Checks every `MANDRILL_<FLAG>` variable whose flag the command line does not give, on
/// its own, so that a bad value is an error naming the variable.
fn check_env(argv: &[std::ffi::OsString]) -> Result<(), ArgsError> {
    let command = Cli::command_full();
    for arg in command.get_arguments().filter(|a| !is_meta(a)) {
        let Some(long) = arg.get_long() else { continue };
        let var = env_name(long);
        let Some(value) = std::env::var_os(&var) else {
            continue;
        };
        let on_command_line = argv.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a.strip_prefix("--")
                .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
        });
        if on_command_line {
            continue;
        }
        let bad = |reason: String| ArgsError::Env {
            var: var.clone(),
            reason,
        };
        let value = value
            .into_string()
            .map_err(|_| bad("not valid UTF-8".into()))?;
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            const BOOLISH: [&str; 8] = ["true", "false", "1", "0", "yes", "no", "on", "off"];
            if !BOOLISH.contains(&value.to_ascii_lowercase().as_str()) {
                return Err(bad(format!(
                    "{value:?} is not one of true, false, 1, 0, yes, no, on, off"
                )));
            }
            continue;
        }
        // The flag's own parser judges it; `--flag=value`, so that -1 is a value.
        use clap::Parser as _;
        if let Err(e) = Cli::try_parse_from(["mandrill".to_string(), format!("--{long}={value}")]) {
            return Err(bad(first_line(&e.to_string())));
        }
    }
    Ok(())
}

/// The `MANDRILL_` variables set that are no setting but are close to one, each with
/// the one it is likely meant to be. Others are left alone: a webhook header may read a
/// variable of any name.
fn unknown_env_vars() -> Vec<String> {
    let command = Cli::command_full();
    let known: Vec<String> = command
        .get_arguments()
        .filter(|a| !is_meta(a))
        .filter_map(|a| a.get_long().map(env_name))
        .collect();
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("MANDRILL_") && !known.contains(k))
        .filter_map(|k| {
            let near = closest(&k, known.iter().map(String::as_str))?;
            Some(format!(
                "{k} is not a setting, and is ignored; did you mean {near}?"
            ))
        })
        .collect()
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A clap error's first line, without its `error: ` prefix.
fn first_line(e: &str) -> String {
    e.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

/// The line and column of a byte offset in `text`, both from 1.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `, line N`: the first line that sets `key`, or for a key joined from a table, its last
/// part; empty when none is found.
fn key_line(text: &str, key: &str) -> String {
    let leaf = key.rsplit('-').next().unwrap_or(key);
    [key, leaf]
        .iter()
        .find_map(|k| {
            text.lines().position(|l| {
                let l = l.trim_start().trim_start_matches('"');
                l.strip_prefix(k)
                    .is_some_and(|rest| rest.trim_start_matches('"').trim_start().starts_with('='))
            })
        })
        .map_or(String::new(), |i| format!(", line {}", i + 1))
}

/// The largest config file read: a config is a few hundred bytes, and a path such as
/// `/dev/zero` must not be read without end.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config file: a regular file, of at most `MAX_CONFIG_BYTES`.
fn read_config(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("larger than {} KiB", MAX_CONFIG_BYTES / 1024));
    }
    Ok(text)
}

/// Reads a TOML config file into the flags it stands for, checking every key and value.
pub(crate) fn file_args(path: &std::path::Path) -> Result<Vec<String>, ConfigFileError> {
    let shown = path.display().to_string();
    let text = read_config(path).map_err(|reason| ConfigFileError::Read {
        path: shown.clone(),
        reason,
    })?;
    text_args(shown, &text)
}

/// The flags a config file's text stands for, checking every key and value; `shown` is
/// the file's name in errors.
pub(crate) fn text_args(shown: String, text: &str) -> Result<Vec<String>, ConfigFileError> {
    use clap::CommandFactory;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = line_and_column(text, e.span().map_or(0, |s| s.start));
        ConfigFileError::Syntax {
            path: shown.clone(),
            line,
            column,
            reason: e.message().trim().to_string(),
        }
    })?;
    let command = Cli::command();
    let is_flag = |key: &str| {
        let flag = key.replace('_', "-");
        command
            .get_arguments()
            .any(|a| a.get_long() == Some(flag.as_str()))
    };
    let mut pairs = Vec::new();
    flatten("", &table, &is_flag, &mut pairs);
    let mut args = Vec::new();
    // The key each flag came from, so that no flag is set by two keys.
    let mut set_by: std::collections::BTreeMap<String, String> = Default::default();
    for (key, value) in pairs {
        let flag = key.replace('_', "-");
        let known = command
            .get_arguments()
            .any(|a| a.get_long() == Some(flag.as_str()) && flag != "config");
        if !known {
            let flags = command
                .get_arguments()
                .filter(|a| !is_meta(a))
                .filter_map(|a| a.get_long())
                .filter(|f| *f != "config");
            let hint =
                closest(&flag, flags).map_or(String::new(), |f| format!("; did you mean `{f}`?"));
            return Err(ConfigFileError::UnknownKey {
                path: shown,
                at: key_line(text, &key),
                key,
                hint,
            });
        }
        let bad = |reason: String| ConfigFileError::BadValue {
            path: shown.clone(),
            at: key_line(text, &key),
            key: key.clone(),
            reason,
        };
        // `--flag=value`, so that a value like -1 is not taken for a flag.
        let mut these = match &value {
            toml::Value::Boolean(true) => vec![format!("--{flag}")],
            toml::Value::Boolean(false) => Vec::new(),
            toml::Value::String(s) => vec![format!("--{flag}={s}")],
            toml::Value::Integer(i) => vec![format!("--{flag}={i}")],
            toml::Value::Float(f) => vec![format!("--{flag}={f}")],
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>, _> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        toml::Value::Float(f) => Ok(f.to_string()),
                        other => Err(bad(format!(
                            "a list may hold strings and numbers, not {}",
                            other.type_str()
                        ))),
                    })
                    .collect();
                let parts = parts?;
                let appends = command.get_arguments().any(|a| {
                    a.get_long() == Some(flag.as_str())
                        && matches!(a.get_action(), clap::ArgAction::Append)
                });
                if appends {
                    // A flag given once per value: its values are never joined.
                    parts.iter().map(|p| format!("--{flag}={p}")).collect()
                } else if flag == "command" {
                    // The program, then its arguments, each one flag: never joined.
                    let mut parts = parts.into_iter();
                    let program = parts.next().map(|p| format!("--command={p}"));
                    program
                        .into_iter()
                        .chain(parts.map(|a| format!("--command-arg={a}")))
                        .collect()
                } else {
                    vec![format!("--{flag}={}", parts.join(","))]
                }
            }
            other => {
                return Err(bad(format!(
                    "{} is not a value this key takes",
                    other.type_str()
                )))
            }
        };
        let flags: std::collections::BTreeSet<&str> = std::iter::once(flag.as_str())
            .chain(these.iter().map(|a| flag_of(a)))
            .collect();
        if let Some((flag, other)) = flags
            .iter()
            .find_map(|f| set_by.get(*f).map(|other| (f, other)))
        {
            return Err(ConfigFileError::SetTwice {
                path: shown,
                at: key_line(text, &key),
                flag: flag.to_string(),
                other: other.clone(),
                key,
            });
        }
        for f in flags {
            set_by.insert(f.to_string(), key.clone());
        }
        // Check the value on its own, so that the error names the key it came from.
        let mut alone = vec!["mandrill".to_string()];
        alone.extend(these.iter().cloned());
        if let Err(e) = Cli::try_parse_from(&alone) {
            return Err(bad(first_line(&e.to_string())));
        }
        args.append(&mut these);
    }
    Ok(args)
}

/// Flattens nested tables into `table-key` names. A table named after a flag that takes
/// `NAME=VALUE` pairs (`[decider]`) becomes that flag's list of pairs.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    is_flag: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, toml::Value)>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}-{k}")
        };
        match v {
            toml::Value::Table(t) if is_flag(&key) => {
                let pairs = t
                    .iter()
                    .map(|(name, value)| match value {
                        toml::Value::String(s) => toml::Value::String(format!("{name}={s}")),
                        other => toml::Value::String(format!("{name}={other}")),
                    })
                    .collect();
                out.push((key, toml::Value::Array(pairs)));
            }
            toml::Value::Table(t) => flatten(&key, t, is_flag, out),
            v => out.push((key, v.clone())),
        }
    }
}

/// An address to listen on; a port alone is on loopback.
fn parse_local_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not HOST:PORT or a port, such as 127.0.0.1:8080"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of messages a second"
        )),
    }
}

/// A threshold in milliseconds, where 0 means never.
fn off_if_zero(ms: u64) -> Duration {
    match ms {
        0 => Duration::MAX,
        ms => Duration::from_millis(ms),
    }
}

fn parse_policy<T: std::str::FromStr<Err = PolicyError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: PolicyError| e.to_string())
}

fn parse_url(s: &str) -> Result<Url, String> {
    s.parse()
        .map_err(|e: crate::action::webhook::WebhookError| e.to_string())
}

fn parse_rail<T: std::str::FromStr<Err = RailSpecError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: RailSpecError| e.to_string())
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    s.parse()
        .map_err(|e: crate::faults::FaultSpecError| e.to_string())
}

/// A SQLite file is a path: SQLite would also take `:memory:` and `file:` URIs, and
/// a run on one would report messages saved that nothing kept.
fn parse_db_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() || s == ":memory:" || s.starts_with("file:") {
        return Err(format!(
            "{s:?} is not a file path; for a run that keeps nothing, use --store memory"
        ));
    }
    Ok(PathBuf::from(s))
}

/// A domain is dot-separated labels, each valid as an instance name.
fn parse_domain(s: &str) -> Result<String, String> {
    for label in s.split('.') {
        InstanceName::parse(label).map_err(|e| format!("{s:?} is not a domain: {e}"))?;
    }
    Ok(s.to_string())
}

impl Cli {
    /// The configuration the flags describe, checked as a whole: a command template with
    /// an unknown placeholder or a program that is not there is an error here.
    pub fn into_config(self) -> Result<Config, ArgsError> {
        if self.action != ActionArg::Webhook && self.webhook_url.is_some() {
            return Err(ArgsError::Action(
                "--webhook-url is given, but --action is not webhook".into(),
            ));
        }
        let action = match (self.action, self.command) {
            (ActionArg::Sim, None) => ActionSpec::Simulated,
            (ActionArg::Sim | ActionArg::Webhook, Some(_)) => {
                return Err(ArgsError::Action(
                    "--command is given, but --action is not command".into(),
                ))
            }
            (ActionArg::Webhook, None) => {
                let url = self.webhook_url.ok_or_else(|| {
                    ArgsError::Action("--action webhook needs --webhook-url URL".into())
                })?;
                let headers = self
                    .webhook_headers
                    .iter()
                    .map(|h| Header::parse(h))
                    .collect::<Result<_, _>>()
                    .map_err(|e| ArgsError::Action(format!("--webhook-header: {e}")))?;
                ActionSpec::Webhook {
                    url,
                    headers,
                    timeout: self.action_timeout,
                }
            }
            (ActionArg::Command, None) => {
                return Err(ArgsError::Action(
                    "--action command needs --command PROGRAM".into(),
                ))
            }
            (ActionArg::Command, Some(program)) => {
                let argv: Vec<String> = std::iter::once(program).chain(self.command_args).collect();
                let template = Template::parse(&argv)
                    .map_err(|e| ArgsError::Action(format!("--command: {e}")))?;
                ActionSpec::Command {
                    template,
                    timeout: self.action_timeout,
                }
            }
        };
        let (publish_delay, publish_jitter) = match self.publish_delay {
            Some(d) => (d, self.jitter),
            None => (Duration::from_secs(1), true),
        };
        Ok(Config {
            source: match self.source {
                SourceArg::Sim => Source::Simulated,
                SourceArg::Stdin => Source::Stdin,
                SourceArg::Jetstream => Source::JetStream(JetStreamConfig {
                    target: Target {
                        url: self.nats_url.clone(),
                        stream: self.stream.clone(),
                    },
                    consumer: ConsumerSpec {
                        name: self.consumer.clone(),
                        ack_wait: self.ack_deadline,
                        max_deliveries: self.max_deliveries,
                        max_ack_pending: u32::try_from(self.max_in_flight)
                            .unwrap_or(u32::MAX)
                            .saturating_mul(SHARERS),
                    },
                    create: self.create,
                    down_timeout: self.broker_down_timeout,
                    confirm_acks: self.confirm_acks,
                    max_in_flight: usize::try_from(self.max_in_flight).unwrap_or(usize::MAX),
                }),
                SourceArg::Pubsub => {
                    let name = self
                        .subscription
                        .as_deref()
                        .ok_or(ArgsError::NoSubscription)?;
                    Source::PubSub(PubSubConfig {
                        subscription: SubscriptionSpec {
                            name: pubsub::Name::subscription("--subscription", name)?,
                            topic: self
                                .topic
                                .as_deref()
                                .map(|t| pubsub::Name::topic("--topic", t))
                                .transpose()?,
                            ack_deadline: self.ack_deadline,
                            max_deliveries: self.max_deliveries,
                        },
                        create: self.create,
                        down_timeout: self.broker_down_timeout,
                        max_in_flight: usize::try_from(self.max_in_flight).unwrap_or(usize::MAX),
                    })
                }
            },
            messages: self.messages,
            idle_exit: self.idle_exit,
            publish_delay,
            publish_jitter,
            seed: self.seed,
            io_delay: self.io_delay,
            io_jitter: !self.io_fixed,
            publish_rate: self.publish_rate,
            failure_rate: self.failure_rate,
            domain: self.domain,
            max_deliveries: self.max_deliveries,
            max_in_flight: self.max_in_flight as usize,
            max_backlog: self.max_backlog,
            ack_deadline: self.ack_deadline,
            redelivery_delay: self.redelivery_delay,
            message_timeout: self.message_timeout,
            store: match self.store {
                StoreArg::Sqlite => StoreKind::Sqlite(self.db),
                StoreArg::Postgres => {
                    let url = self
                        .db_url
                        .or_else(|| std::env::var("DATABASE_URL").ok())
                        .ok_or_else(|| {
                            ArgsError::Store(
                                "--store postgres needs --db-url or DATABASE_URL".into(),
                            )
                        })?;
                    StoreKind::Postgres {
                        database: url.parse().map_err(|e| {
                            ArgsError::Store(format!("--db-url is not a postgres url: {e}"))
                        })?,
                        pool: self.db_pool as usize,
                    }
                }
                StoreArg::Memory => StoreKind::Memory,
            },
            batch_size: self.batch_size as usize,
            flush_interval: self.flush_interval,
            min_restart_interval: self.min_restart_interval,
            claim_ttl: self.claim_ttl,
            drain_timeout: self.drain_timeout,
            shield_timeout: self.shield_timeout,
            shutdown_timeouts: self.shutdown_timeout,
            max_restarts: self.max_restarts,
            restart_window: self.restart_window,
            strategy: self.strategy,
            backoff: Backoff {
                min: self.backoff_min,
                max: self.backoff_max,
                jitter: self.backoff_jitter,
                reset_after: self.backoff_reset,
            },
            decider: self.decider.unwrap_or_default(),
            restart_types: self.restart_type.unwrap_or_default(),
            handler_deadline: self.handler_deadline,
            slow_handler: off_if_zero(self.slow_handler_ms),
            lag_warn: off_if_zero(self.lag_warn_ms),
            status_every: match self.status {
                StatusArg::Always => Some(self.status_every),
                StatusArg::Never => None,
                StatusArg::Auto => {
                    use std::io::IsTerminal;
                    std::io::stderr().is_terminal().then_some(self.status_every)
                }
            },
            faults: self.inject.unwrap_or_default(),
            action,
            unleash: self.unleash,
            rails: Rails {
                allow: self.allow.unwrap_or_default(),
                deny: self.deny.unwrap_or_default(),
                hours: self.allowed_hours,
                weekdays: self.excluded_weekdays.unwrap_or_default(),
                days: self.excluded_days.unwrap_or_default(),
                zone: self.timezone.unwrap_or_default(),
                pause_file: self.pause_file,
                rate: self.max_host_restarts,
                max_concurrent: self.max_concurrent_host_restarts.map(|n| n as usize),
            },
            instance_id: self.instance_id,
            log_level: self.log,
            on_sighup: self.on_sighup,
            reload: None,
            metrics_addr: self.metrics_addr,
            health: Default::default(),
            handle_signals: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let argv = std::iter::once("mandrill").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.into_config().expect("a valid configuration"))
    }

    #[test]
    fn no_arguments_give_the_embedded_defaults() {
        let c = parse(&[]).unwrap();
        let d = Config::default();
        assert_eq!(c.source, d.source);
        assert_eq!(c.store, d.store);
        assert_eq!((c.publish_delay, c.publish_jitter), (d.publish_delay, true));
        assert_eq!(c.io_delay, d.io_delay);
        assert_eq!(c.failure_rate, d.failure_rate);
        assert_eq!(c.max_deliveries, d.max_deliveries);
        assert_eq!(c.max_in_flight, d.max_in_flight);
        assert_eq!(c.min_restart_interval, d.min_restart_interval);
        assert_eq!(c.drain_timeout, d.drain_timeout);
        assert_eq!(c.shield_timeout, d.shield_timeout);
        assert_eq!(c.max_restarts, d.max_restarts);
        assert_eq!(c.restart_window, d.restart_window);
        assert_eq!(c.strategy, d.strategy);
        assert_eq!(c.backoff, d.backoff);
    }

    #[test]
    fn an_explicit_delay_is_fixed_unless_jittered() {
        let c = parse(&["--publish-delay", "0.2"]).unwrap();
        assert_eq!(
            (c.publish_delay, c.publish_jitter),
            (Duration::from_millis(200), false)
        );
        let c = parse(&["--publish-delay", "0.2", "--jitter"]).unwrap();
        assert!(c.publish_jitter);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--failure-rate", "1.5"][..],
            &["--max-deliveries", "0"],
            &["--io-delay", "-1"],
            &["--ack-deadline", "0"],
            &["--inject", "panic:nobody=0.1"],
            &["--domain", "bad domain"],
            &["--store", "mysql"],
            &["--log", "loud"],
            &["--strategy", "all-for-none"],
            &["--handler-deadline", "1e19"],
            &["--ack-deadline", "1e19"],
            &["--redelivery-delay", "1e19"],
            &["--message-timeout", "1e19"],
            &["--io-delay", "1e19"],
            &["--min-restart-interval", "367d"],
            &["--db", ":memory:"],
            &["--db", "file:x?mode=memory"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn a_negative_value_is_a_range_error_not_an_unknown_flag() {
        let err = parse(&["--failure-rate", "-0.1"]).expect_err("accepted");
        let text = err.to_string();
        assert!(!text.contains("unexpected argument"), "{text}");
        assert!(text.contains("-0.1"), "{text}");
    }

    #[test]
    fn a_config_file_that_is_not_a_small_regular_file_is_refused() {
        let dev = file_args(std::path::Path::new("/dev/zero")).expect_err("read");
        assert!(dev.to_string().contains("not a regular file"), "{dev}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        let big = file_args(&big).expect_err("read");
        assert!(big.to_string().contains("larger than"), "{big}");
    }

    fn with_file(toml: &str, args: &[&str]) -> Result<Config, ArgsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mandrill.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap().to_string();
        let mut argv = vec!["mandrill", "--config", &path];
        argv.extend_from_slice(args);
        Cli::parse_with_file(argv).and_then(Cli::into_config)
    }

    #[test]
    fn a_config_file_sets_values_and_flags_override_it() {
        let toml = r#"
            failure_rate = 0.5
            strategy = "one-for-all"
            jitter = true
            publish-delay = "2s"
            inject = ["panic:saver=0.1", "panic:acker=0.2"]
            [backoff]
            min = 0.25
        "#;
        let c = with_file(toml, &[]).unwrap();
        assert_eq!(c.failure_rate, 0.5);
        assert_eq!(c.strategy, Strategy::OneForAll);
        assert_eq!(
            (c.publish_delay, c.publish_jitter),
            (Duration::from_secs(2), true)
        );
        assert_eq!(c.backoff.min, Duration::from_millis(250));
        assert_eq!(c.faults.0.len(), 2);
        let c = with_file(
            toml,
            &["--failure-rate", "0.1", "--strategy", "rest-for-one"],
        )
        .unwrap();
        assert_eq!(c.failure_rate, 0.1);
        assert_eq!(c.strategy, Strategy::RestForOne);
    }

    #[test]
    fn a_config_file_sets_the_policies_from_tables() {
        use crate::supervision::policy::{Directive, FailureKind, RestartType};
        let toml = r#"
            handler-deadline = "250ms"
            [decider]
            panic = "stop"
            store-unavailable = "resume"
            [restart-type]
            acker = "temporary"
            [shutdown-timeout]
            saver = "10s"
            [inject]
            "stall:acker" = 0.001
            "error:restarter" = 0.2
        "#;
        let c = with_file(toml, &[]).unwrap();
        assert_eq!(c.decider.decide(FailureKind::Panic), Directive::Stop);
        assert_eq!(
            c.decider.decide(FailureKind::StoreUnavailable),
            Directive::Resume
        );
        assert_eq!(
            c.restart_types.of(crate::names::ChildName::Acker),
            RestartType::Temporary
        );
        assert_eq!(
            c.restart_types.of(crate::names::ChildName::Publisher),
            RestartType::Transient
        );
        assert_eq!(
            c.shutdown_timeouts.of(crate::names::ChildName::Saver),
            Duration::from_secs(10)
        );
        assert_eq!(
            c.shutdown_timeouts.of(crate::names::ChildName::Acker),
            Duration::from_secs(5)
        );
        assert_eq!(c.handler_deadline, Duration::from_millis(250));
        assert_eq!(c.faults.0.len(), 2);
        let e = with_file("[decider]\npanic = \"reboot\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `decider`") && e.contains("reboot"), "{e}");
    }

    #[test]
    fn every_setting_has_a_heading_and_a_variable() {
        let command = Cli::command_full();
        for arg in command.get_arguments().filter(|a| !is_meta(a)) {
            let long = arg.get_long().expect("every setting has a long flag");
            if long != "config" {
                assert!(heading_of(long).is_some(), "--{long} has no heading");
            }
            let var = arg.get_env().map(|v| v.to_string_lossy().into_owned());
            assert_eq!(var, Some(env_name(long)), "--{long}");
        }
        for (_, flags) in HEADINGS {
            for flag in *flags {
                assert!(
                    command.get_arguments().any(|a| a.get_long() == Some(flag)),
                    "--{flag} is under a heading but is no flag"
                );
            }
        }
        assert_eq!(env_name("failure-rate"), "MANDRILL_FAILURE_RATE");
    }

    #[test]
    fn every_duration_is_taken_up_to_its_bound_and_refused_past_it() {
        let command = <Cli as clap::CommandFactory>::command();
        let durations: Vec<&str> = command
            .get_arguments()
            .filter(|a| {
                a.get_value_names()
                    .is_some_and(|names| names.iter().any(|n| n.as_str() == "S"))
            })
            .filter_map(|a| a.get_long())
            .collect();
        assert!(durations.len() >= 15, "{durations:?}");
        for flag in durations {
            let at = format!("--{flag}=366d");
            assert!(parse(&[&at]).is_ok(), "{at} refused");
            for past in ["367d", "1e19", "inf"] {
                let past = format!("--{flag}={past}");
                let err = parse(&[&past]).expect_err(&format!("{past} accepted"));
                assert_eq!(err.exit_code(), 2, "{past}");
            }
        }
    }

    #[test]
    fn the_sample_configs_are_valid() {
        for sample in ["examples/mandrill.toml", "contrib/mandrill.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(sample);
            let args = file_args(&path).unwrap_or_else(|e| panic!("{sample}: {e}"));
            let argv = std::iter::once("mandrill".to_string()).chain(args);
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{sample}: {e}"));
            cli.into_config()
                .unwrap_or_else(|e| panic!("{sample}: {e}"));
        }
    }

    #[test]
    fn toml_errors_say_where_and_suggest_a_key() {
        let err = |toml: &str| with_file(toml, &[]).unwrap_err().to_string();
        let e = err("messages = 3\nfailure_rat = 0.1");
        assert!(
            e.contains(", line 2: unknown key `failure_rat`; did you mean `failure-rate`?"),
            "{e}"
        );
        let e = err("messages = 3\nfailure_rate = ");
        assert!(e.contains("line 2, column 16"), "{e}");
        let e = err("messages = 3\n[backoff]\nmin = \"soon\"");
        assert!(e.contains(", line 3: key `backoff-min`"), "{e}");
        let e = err("wholly_unlike_anything = 1");
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn a_key_set_under_two_spellings_is_refused() {
        // Found by fuzzing: TOML takes both keys, and the later in key order silently
        // won.
        let err = |toml: &str| with_file(toml, &[]).unwrap_err().to_string();
        let e = err("max_in_flight = 10\nmax-in-flight = 20\n");
        assert!(
            e.contains(
                "key `max_in_flight` sets --max-in-flight, which key `max-in-flight` sets already"
            ),
            "{e}"
        );
        let e = err("max-in-flight = 20\n[max]\nin-flight = 10\n");
        assert!(e.contains("sets --max-in-flight"), "{e}");
        let e = err("command = [\"true\", \"a\"]\ncommand-arg = [\"b\"]\n");
        assert!(e.contains("sets --command-arg"), "{e}");
    }

    #[test]
    fn config_file_errors_name_the_key() {
        let err = |toml: &str| with_file(toml, &[]).unwrap_err().to_string();
        let e = err("failure_rat = 0.1");
        assert!(e.contains("unknown key `failure_rat`"), "{e}");
        let e = err("[backoff]\nmin = \"soon\"");
        assert!(e.contains("key `backoff-min`") && e.contains("soon"), "{e}");
        let e = err("max-deliveries = 0");
        assert!(e.contains("key `max-deliveries`"), "{e}");
        let e = err("strategy = [true]");
        assert!(e.contains("key `strategy`"), "{e}");
        let e = err("failure_rate = ");
        assert!(e.contains("not valid toml"), "{e}");
        let e = err("config = \"other.toml\"");
        assert!(e.contains("unknown key `config`"), "{e}");
        let missing = Cli::parse_with_file(["mandrill", "--config", "/nonexistent/m.toml"]);
        assert!(matches!(
            missing,
            Err(ArgsError::File(ConfigFileError::Read { .. }))
        ));
    }

    fn action_of(args: &[&str]) -> Result<ActionSpec, ArgsError> {
        let argv = std::iter::once("mandrill").chain(args.iter().copied());
        Ok(Cli::try_parse_from(argv)?.into_config()?.action)
    }

    #[test]
    fn a_command_template_comes_from_repeated_flags_or_a_file_list() {
        let argv = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let want = ActionSpec::Command {
            template: Template::parse(&argv(&["sh", "-c", "echo {instance}"])).unwrap(),
            timeout: Duration::from_secs(60),
        };
        let flags = [
            "--action",
            "command",
            "--command",
            "sh",
            "--command-arg",
            "-c",
            "--command-arg",
            "echo {instance}",
        ];
        assert_eq!(action_of(&flags).unwrap(), want);
        let toml = r#"
            action = "command"
            command = ["sh", "-c", "echo {instance}"]
        "#;
        assert_eq!(with_file(toml, &[]).unwrap().action, want);
    }

    #[test]
    fn a_bad_action_is_a_clear_error() {
        for (args, says) in [
            (&["--action", "command"][..], "needs --command"),
            (&["--command", "sh"], "--action is not command"),
            (
                &[
                    "--action",
                    "command",
                    "--command",
                    "sh",
                    "--command-arg",
                    "{host}",
                ],
                "unknown placeholder {host}",
            ),
            (
                &[
                    "--action",
                    "command",
                    "--command",
                    "no-such-program-anywhere",
                ],
                "not found",
            ),
        ] {
            let e = action_of(args).expect_err(&format!("{args:?} accepted"));
            assert!(matches!(e, ArgsError::Action(_)), "{e:?}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn the_example_config_files_are_valid() {
        for file in ["examples/mandrill.toml", "examples/real-restarts.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let args = file_args(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!args.is_empty(), "{file}");
        }
    }
}

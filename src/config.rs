//! The service's runtime configuration, independent of where it came from (flags today,
//! a config file later), plus fault injection and seeded randomness.

use std::{path::PathBuf, str::FromStr, time::Duration};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use thiserror::Error;

use crate::policy::{Decider, RestartTypes, ShutdownTimeouts};

/// Which children a supervisor restarts when one fails, over the children in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The failed child and every child started after it.
    RestForOne,
}

/// Exponential backoff between restarts of the same child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay; zero restarts at once even under `restart-with-backoff`.
    pub min: Duration,
    /// No delay grows past this, before jitter.
    pub max: Duration,
    /// Each delay is multiplied by `1 + random() * jitter`.
    pub jitter: f64,
    /// A child that has not failed for this long starts again from `min`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the `n`th restart in a row (from 1): `min * 2^(n-1)`, capped at
    /// `max`, times `1 + r * jitter` for `r` in `[0, 1)`.
    pub fn delay(&self, n: u32, r: f64) -> Duration {
        if self.min.is_zero() || n == 0 {
            return Duration::ZERO;
        }
        let doubled = self.min.saturating_mul(1u32 << (n - 1).min(31));
        doubled.min(self.max).mul_f64(1.0 + r * self.jitter)
    }
}

/// Where messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The talk's simulated publisher.
    Simulated,
    /// Newline-delimited JSON on standard input.
    Stdin,
}

/// Which store the Saver writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite(PathBuf),
    Memory,
}

/// Everything the service needs to run. `Config::default()` is the embedded defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// Stop publishing after this many messages; `None` publishes until shutdown.
    pub messages: Option<u64>,
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
    /// Off in in-process tests, which must not take over the test runner's signals.
    pub handle_signals: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source: Source::Simulated,
            messages: None,
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
            ack_deadline: Duration::from_secs(10),
            redelivery_delay: Duration::ZERO,
            message_timeout: Duration::from_secs(30),
            store: StoreKind::Sqlite(PathBuf::from("mandrill.db")),
            batch_size: 1000,
            flush_interval: Duration::from_millis(5),
            min_restart_interval: Duration::from_secs(7 * 24 * 3600),
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
            handle_signals: true,
        }
    }
}

/// The actors that faults can be injected into, by the names used on the command line.
pub const ACTORS: [&str; 5] = ["publisher", "consumer", "saver", "restarter", "acker"];

/// Why an `--inject` spec is invalid.
#[derive(Debug, Error, PartialEq)]
pub enum FaultSpecError {
    #[error("{0:?} is not KIND:ACTOR=RATE")]
    Shape(String),
    #[error("unknown fault kind {0:?}; known kinds: panic, stall, error")]
    Kind(String),
    #[error("{0} has no error to inject; it takes panic and stall")]
    NoError(&'static str),
    #[error("unknown actor {0:?}; known actors: publisher, consumer, saver, restarter, acker")]
    Actor(String),
    #[error("rate {0:?} is not a number between 0 and 1")]
    Rate(String),
}

/// The kinds of fault that can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The actor's handler panics before it does its work.
    Panic,
    /// The actor's handler blocks its thread for twice `--handler-deadline`.
    Stall,
    /// The actor's work fails with its own error: the Saver's commit with
    /// `StoreError::Unavailable`, the Restarter's host restart with `RestartError::Failed`.
    Error,
}

/// The actors whose work has an error of its own to inject.
pub const ACTORS_WITH_ERRORS: [&str; 2] = ["saver", "restarter"];

/// One `KIND:ACTOR=RATE` item.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub actor: &'static str,
    pub rate: f64,
}

/// The faults to inject, parsed from `panic:saver=0.01,panic:acker=0.001`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults(pub Vec<FaultSpec>);

impl FromStr for Faults {
    type Err = FaultSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let shape = || FaultSpecError::Shape(item.to_string());
            let (kind, rest) = item.split_once(':').ok_or_else(shape)?;
            let (actor, rate) = rest.split_once('=').ok_or_else(shape)?;
            let kind = match kind {
                "panic" => FaultKind::Panic,
                "stall" => FaultKind::Stall,
                "error" => FaultKind::Error,
                other => return Err(FaultSpecError::Kind(other.to_string())),
            };
            let actor = ACTORS
                .iter()
                .find(|a| **a == actor)
                .ok_or_else(|| FaultSpecError::Actor(actor.to_string()))?;
            if kind == FaultKind::Error && !ACTORS_WITH_ERRORS.contains(actor) {
                return Err(FaultSpecError::NoError(actor));
            }
            let rate = parse_probability(rate).map_err(|_| FaultSpecError::Rate(rate.into()))?;
            out.push(FaultSpec { kind, actor, rate });
        }
        Ok(Faults(out))
    }
}

impl Faults {
    /// The injector for one actor, seeded so that `--seed` reproduces its failures. An
    /// injected stall lasts `stall`.
    pub fn injector(&self, actor: &'static str, seed: Option<u64>) -> Injector {
        let rate = |kind| {
            self.0
                .iter()
                .filter(|f| f.actor == actor && f.kind == kind)
                .map(|f| f.rate)
                .fold(0.0, f64::max)
        };
        Injector {
            actor,
            panic_rate: rate(FaultKind::Panic),
            stall_rate: rate(FaultKind::Stall),
            error_rate: rate(FaultKind::Error),
            stall: Duration::from_secs(2),
            rng: rng_for(seed, actor),
        }
    }
}

/// Decides, handler call by handler call, whether to inject a fault into one actor.
///
/// A rate is the probability that one handler call fails. A call handles one actix
/// message; at the talk's pace that carries one delivery, at full speed a batch of them,
/// and a panic fails the whole batch, as a real bug in a batching actor would.
#[derive(Debug)]
pub struct Injector {
    actor: &'static str,
    panic_rate: f64,
    stall_rate: f64,
    error_rate: f64,
    stall: Duration,
    rng: SmallRng,
}

impl Injector {
    /// Makes an injected stall last `stall`; the Supervisor sets it to twice the handler
    /// deadline, so that every injected stall is caught.
    pub fn stalling_for(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// Stalls or panics, each at its rate. Called at the top of a handler, so that a
    /// supervised actor meets a fault exactly where real bugs would put one.
    pub fn maybe_fail(&mut self) {
        if self.stall_rate > 0.0 && self.rng.random::<f64>() < self.stall_rate {
            // Blocking on purpose: a stall is a handler that holds its thread.
            std::thread::sleep(self.stall);
        }
        if self.panic_rate > 0.0 && self.rng.random::<f64>() < self.panic_rate {
            panic!("injected panic in {}", self.actor);
        }
    }

    /// Whether this piece of work should fail with the actor's own error.
    pub fn error(&mut self) -> bool {
        self.error_rate > 0.0 && self.rng.random::<f64>() < self.error_rate
    }
}

/// A random stream for one purpose. With a seed, each purpose gets its own reproducible
/// stream, so that adding draws in one actor does not shift another's.
pub fn rng_for(seed: Option<u64>, purpose: &str) -> SmallRng {
    match seed {
        Some(seed) => {
            // FNV-1a over the purpose keeps the streams apart without another dependency.
            let salt = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            SmallRng::seed_from_u64(seed ^ salt)
        }
        None => SmallRng::from_os_rng(),
    }
}

/// Parses a probability in `[0, 1]`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

/// Parses a duration given as seconds (`0.5`) or in human form (`30s`, `7d`).
/// One simulated IO's length: `random() * max`, or `max` itself without jitter.
pub fn draw_io(max: Duration, jitter: bool, rng: &mut impl rand::Rng) -> Duration {
    if jitter {
        max.mul_f64(rng.random::<f64>())
    } else {
        max
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a non-negative number of seconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is neither seconds nor a duration like 30s or 7d: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_specs() {
        let f: Faults = "panic:saver=0.01, panic:acker=1".parse().unwrap();
        assert_eq!(f.0.len(), 2);
        assert_eq!(f.0[0].actor, "saver");
        assert_eq!(f.0[1].rate, 1.0);
        assert_eq!(
            "boom:saver=0.1".parse::<Faults>(),
            Err(FaultSpecError::Kind("boom".into()))
        );
        assert_eq!(
            "panic:db=0.1".parse::<Faults>(),
            Err(FaultSpecError::Actor("db".into()))
        );
        assert_eq!(
            "panic:saver=2".parse::<Faults>(),
            Err(FaultSpecError::Rate("2".into()))
        );
        let f: Faults = "stall:acker=0.001,error:restarter=0.2".parse().unwrap();
        assert_eq!(f.0[0].kind, FaultKind::Stall);
        assert_eq!(f.0[1].kind, FaultKind::Error);
        assert_eq!(
            "error:acker=0.1".parse::<Faults>(),
            Err(FaultSpecError::NoError("acker"))
        );
        assert!(matches!(
            "panic-saver".parse::<Faults>(),
            Err(FaultSpecError::Shape(_))
        ));
    }

    #[test]
    fn seeded_streams_repeat_and_differ() {
        let draw = |p| rng_for(Some(7), p).random::<u64>();
        assert_eq!(draw("a"), draw("a"));
        assert_ne!(draw("a"), draw("b"));
    }

    #[test]
    fn injector_panics_at_rate_one_only() {
        let f: Faults = "panic:saver=1".parse().unwrap();
        let mut never = f.injector("acker", Some(1));
        never.maybe_fail();
        let mut always = f.injector("saver", Some(1));
        assert!(std::panic::catch_unwind(move || always.maybe_fail()).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_on_top() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
            reset_after: Duration::from_secs(10),
        };
        let ms = |n, r| b.delay(n, r).as_millis();
        assert_eq!(
            [ms(1, 0.0), ms(2, 0.0), ms(3, 0.0), ms(4, 0.0)],
            [100, 200, 400, 800]
        );
        assert_eq!([ms(5, 0.0), ms(40, 0.0)], [1000, 1000]);
        assert_eq!(ms(1, 0.999), 149);
        assert_eq!(ms(5, 1.0), 1500);
        let off = Backoff {
            min: Duration::ZERO,
            ..b
        };
        assert_eq!(off.delay(3, 0.5), Duration::ZERO);
    }

    #[test]
    fn durations_in_seconds_or_words() {
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604800)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

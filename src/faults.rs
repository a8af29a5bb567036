//! Fault injection and seeded randomness: `--inject` parsed into `Faults`, the `Injector`
//! each actor consults at the top of its handlers, and `rng_for`, which gives every random
//! choice in the service a stream of its own.

use std::{str::FromStr, time::Duration};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use thiserror::Error;

use crate::names::ChildName;
use crate::units::parse_probability;

/// The children that faults can be injected into.
const INJECTABLE: [ChildName; 6] = [
    ChildName::Broker,
    ChildName::Publisher,
    ChildName::Consumer,
    ChildName::Saver,
    ChildName::Restarter,
    ChildName::Acker,
];

/// The children whose work has an error of its own to inject.
const WITH_ERRORS: [ChildName; 2] = [ChildName::Saver, ChildName::Restarter];

/// Why an `--inject` spec is invalid.
#[derive(Debug, Error, PartialEq)]
pub enum FaultSpecError {
    #[error("{0:?} is not KIND:ACTOR=RATE")]
    Shape(String),
    #[error("unknown fault kind {0:?}; known kinds: panic, stall, error")]
    Kind(String),
    #[error("{0} has no error to inject; it takes panic and stall")]
    NoError(ChildName),
    #[error(
        "unknown actor {0:?}; known actors: broker, publisher, consumer, saver, restarter, acker"
    )]
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

/// One `KIND:ACTOR=RATE` item.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub actor: ChildName,
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
            let actor = ChildName::parse(actor)
                .filter(|a| INJECTABLE.contains(a))
                .ok_or_else(|| FaultSpecError::Actor(actor.to_string()))?;
            if kind == FaultKind::Error && !WITH_ERRORS.contains(&actor) {
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
    pub fn injector(&self, actor: ChildName, seed: Option<u64>) -> Injector {
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
            rng: rng_for(seed, Purpose::Faults(actor)),
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
    actor: ChildName,
    panic_rate: f64,
    stall_rate: f64,
    error_rate: f64,
    stall: Duration,
    rng: SmallRng,
}

impl Injector {
    /// An injector that never fails anything.
    pub fn none(actor: ChildName) -> Self {
        Faults::default().injector(actor, None)
    }

    /// Makes an injected stall last `stall`; the wiring sets it to twice the handler
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

/// What a random stream is for. Each purpose has its own stream, so that adding draws for
/// one purpose never shifts another's, and no two purposes share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The simulated publisher's host names, ids and pacing.
    Publishing,
    /// How long each simulated save takes.
    SaveIo,
    /// How long each simulated host restart takes, and whether it fails.
    SimulatedRestarts,
    /// The jitter on supervision backoff.
    Backoff,
    /// The faults injected into one child.
    Faults(ChildName),
}

impl Purpose {
    fn label(self) -> String {
        match self {
            Purpose::Publishing => "publishing".into(),
            Purpose::SaveIo => "save-io".into(),
            Purpose::SimulatedRestarts => "simulated-restarts".into(),
            Purpose::Backoff => "backoff".into(),
            Purpose::Faults(child) => format!("faults/{child}"),
        }
    }
}

/// The random stream for one purpose: reproducible with a seed, from the OS without one.
pub fn rng_for(seed: Option<u64>, purpose: Purpose) -> SmallRng {
    match seed {
        Some(seed) => {
            // FNV-1a over the purpose keeps the streams apart without another dependency.
            let salt = purpose
                .label()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                });
            SmallRng::seed_from_u64(seed ^ salt)
        }
        None => SmallRng::from_os_rng(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_specs() {
        let f: Faults = "panic:saver=0.01, panic:acker=1".parse().unwrap();
        assert_eq!(f.0.len(), 2);
        assert_eq!(f.0[0].actor, ChildName::Saver);
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
            Err(FaultSpecError::NoError(ChildName::Acker))
        );
        assert!(matches!(
            "panic-saver".parse::<Faults>(),
            Err(FaultSpecError::Shape(_))
        ));
    }

    #[test]
    fn seeded_streams_repeat_and_every_purpose_has_its_own() {
        let draw = |p| rng_for(Some(7), p).random::<u64>();
        assert_eq!(draw(Purpose::Backoff), draw(Purpose::Backoff));
        let all = [
            Purpose::Publishing,
            Purpose::SaveIo,
            Purpose::SimulatedRestarts,
            Purpose::Backoff,
            Purpose::Faults(ChildName::Publisher),
            Purpose::Faults(ChildName::Saver),
            Purpose::Faults(ChildName::Restarter),
        ];
        let draws: std::collections::HashSet<u64> = all.into_iter().map(draw).collect();
        assert_eq!(draws.len(), all.len(), "two purposes share a stream");
    }

    #[test]
    fn injector_panics_at_rate_one_only() {
        let f: Faults = "panic:saver=1".parse().unwrap();
        let mut never = f.injector(ChildName::Acker, Some(1));
        never.maybe_fail();
        let mut always = f.injector(ChildName::Saver, Some(1));
        assert!(std::panic::catch_unwind(move || always.maybe_fail()).is_err());
    }
}

//! The supervision policy, as data: the kinds of failure, the directives a decider maps
//! them to, each child's restart type and shutdown timeout.
//!
//! Nothing here runs an actor. The wiring builds a `ChildPolicy` for each child, and the
//! child's `guard` consults it the moment a failure happens, because the child must act on
//! it before it takes its next message (see `super::child`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::action::RestartError;
use crate::names::ChildName;
use crate::store::StoreError;
use crate::units::parse_duration;

/// The kinds of failure a supervisor tells apart: a panic, a stall, and each variant of
/// the error enums the Saver and the Restarter meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// A handler panicked.
    Panic,
    /// A handler ran past `--handler-deadline`, holding up every actor on its thread.
    Stall,
    /// `StoreError::Open`.
    StoreOpen,
    /// `StoreError::Unavailable`: the store may come back.
    StoreUnavailable,
    /// `StoreError::Corrupt`: it will not.
    StoreCorrupt,
    /// `StoreError::Closed`: a write after the store was closed.
    StoreClosed,
    /// `StoreError::Panicked`: the store's code panicked on its writer thread.
    StorePanicked,
    /// `RestartError::Failed`: one host did not restart.
    RestartFailed,
    /// `RestartError::TimedOut`: one host's restart took too long.
    RestartTimedOut,
    /// `RestartError::Refused`: the action would not restart one host.
    RestartRefused,
    /// `RestartError::Unavailable`: the action could not be run at all.
    RestartUnavailable,
    /// The broker stayed unreachable past `--broker-down-timeout`.
    BrokerDown,
}

impl FailureKind {
    pub const ALL: [FailureKind; 12] = [
        FailureKind::Panic,
        FailureKind::Stall,
        FailureKind::StoreOpen,
        FailureKind::StoreUnavailable,
        FailureKind::StoreCorrupt,
        FailureKind::StoreClosed,
        FailureKind::StorePanicked,
        FailureKind::RestartFailed,
        FailureKind::RestartTimedOut,
        FailureKind::RestartRefused,
        FailureKind::RestartUnavailable,
        FailureKind::BrokerDown,
    ];

    /// The name used in flags, the config file, logs and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Panic => "panic",
            FailureKind::Stall => "stall",
            FailureKind::StoreOpen => "store-open",
            FailureKind::StoreUnavailable => "store-unavailable",
            FailureKind::StoreCorrupt => "store-corrupt",
            FailureKind::StoreClosed => "store-closed",
            FailureKind::StorePanicked => "store-panicked",
            FailureKind::RestartFailed => "restart-failed",
            FailureKind::RestartTimedOut => "restart-timed-out",
            FailureKind::RestartRefused => "restart-refused",
            FailureKind::RestartUnavailable => "restart-unavailable",
            FailureKind::BrokerDown => "broker-down",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&StoreError> for FailureKind {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Open { .. } => FailureKind::StoreOpen,
            StoreError::Unavailable(_) => FailureKind::StoreUnavailable,
            StoreError::Corrupt(_) => FailureKind::StoreCorrupt,
            StoreError::Closed => FailureKind::StoreClosed,
            StoreError::Panicked(_) => FailureKind::StorePanicked,
        }
    }
}

impl From<&RestartError> for FailureKind {
    fn from(e: &RestartError) -> Self {
        match e {
            RestartError::Failed { .. } => FailureKind::RestartFailed,
            RestartError::TimedOut { .. } => FailureKind::RestartTimedOut,
            RestartError::Refused { .. } => FailureKind::RestartRefused,
            RestartError::Unavailable(_) => FailureKind::RestartUnavailable,
        }
    }
}

/// What a supervisor does about one failure, in Akka's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Keep the child's state and go on; the work that failed is nacked.
    Resume,
    /// Restart the child with fresh state, at once.
    Restart,
    /// Restart the child with fresh state after its exponential backoff.
    RestartWithBackoff,
    /// Stop the child for good: it takes no more work, and what is sent to it is nacked.
    Stop,
    /// Stop the child and hand the failure up: the ordered shutdown runs, exit status 1.
    Escalate,
}

impl Directive {
    pub fn as_str(self) -> &'static str {
        match self {
            Directive::Resume => "resume",
            Directive::Restart => "restart",
            Directive::RestartWithBackoff => "restart-with-backoff",
            Directive::Stop => "stop",
            Directive::Escalate => "escalate",
        }
    }

    /// Whether the child gets a fresh incarnation that takes work.
    pub fn restarts(self) -> bool {
        matches!(self, Directive::Restart | Directive::RestartWithBackoff)
    }
}

impl FromStr for Directive {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            Directive::Resume,
            Directive::Restart,
            Directive::RestartWithBackoff,
            Directive::Stop,
            Directive::Escalate,
        ];
        named(&all, s, Directive::as_str).ok_or_else(|| PolicyError::Directive(s.to_string()))
    }
}

/// The value in `all` whose name is `s`.
fn named<T: Copy>(all: &[T], s: &str, name: fn(T) -> &'static str) -> Option<T> {
    all.iter().copied().find(|t| name(*t) == s)
}

/// When a child is restarted, in OTP's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted, even after it finishes its work normally.
    Permanent,
    /// Restarted after a failure, not after a normal exit.
    Transient,
    /// Never restarted: a failure stops it for good.
    Temporary,
}

impl RestartType {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartType::Permanent => "permanent",
            RestartType::Transient => "transient",
            RestartType::Temporary => "temporary",
        }
    }
}

impl FromStr for RestartType {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            RestartType::Permanent,
            RestartType::Transient,
            RestartType::Temporary,
        ];
        named(&all, s, RestartType::as_str).ok_or_else(|| PolicyError::RestartType(s.to_string()))
    }
}

/// Why a policy setting is invalid.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    #[error("{0:?} is not NAME=VALUE")]
    Shape(String),
    #[error(
        "unknown failure kind {0:?}; known kinds: panic, stall, store-open, store-unavailable, \
         store-corrupt, store-closed, store-panicked, restart-failed, restart-timed-out, \
         restart-refused, restart-unavailable"
    )]
    Kind(String),
    #[error("unknown directive {0:?}; known directives: resume, restart, restart-with-backoff, stop, escalate")]
    Directive(String),
    #[error("unknown restart type {0:?}; known types: permanent, transient, temporary")]
    RestartType(String),
    #[error(
        "unknown child {0:?}; known children: broker, acker, saver, restarter, consumer, publisher"
    )]
    Child(String),
    #[error("{0}")]
    Duration(String),
}

/// Akka's decider: a directive for every kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decider([Directive; FailureKind::ALL.len()]);

impl Default for Decider {
    /// The defaults, and why:
    /// - a panic or a stall restarts: the state may be half-updated, and a fresh one is
    ///   cheap because `release` hands back everything the old one held;
    /// - a failed, timed-out or refused host restart resumes: the host is at fault, not
    ///   the Restarter, and its message is nacked so that the broker redelivers it;
    /// - an unavailable restart action restarts the Restarter with backoff, as an
    ///   unavailable store does the Saver: it waits before it tries the next hosts;
    /// - an unavailable store restarts with backoff, giving the store time to come back
    ///   without a restart storm;
    /// - a store that cannot be opened or is corrupt escalates: no restart mends it;
    /// - a write after the store was closed resumes: it happens only at shutdown, and its
    ///   message is nacked;
    /// - a panic inside the store's own code restarts the Saver, as any panic does;
    /// - a broker that stays unreachable escalates: the adapter has already retried for
    ///   `--broker-down-timeout`, and the operator must know.
    fn default() -> Self {
        let mut d = Decider([Directive::Restart; FailureKind::ALL.len()]);
        d.set(FailureKind::StoreOpen, Directive::Escalate);
        d.set(FailureKind::StoreUnavailable, Directive::RestartWithBackoff);
        d.set(FailureKind::StoreCorrupt, Directive::Escalate);
        d.set(FailureKind::StoreClosed, Directive::Resume);
        d.set(FailureKind::RestartFailed, Directive::Resume);
        d.set(FailureKind::RestartTimedOut, Directive::Resume);
        d.set(FailureKind::RestartRefused, Directive::Resume);
        d.set(
            FailureKind::RestartUnavailable,
            Directive::RestartWithBackoff,
        );
        d.set(FailureKind::BrokerDown, Directive::Escalate);
        d
    }
}

impl Decider {
    pub(crate) fn decide(&self, kind: FailureKind) -> Directive {
        self.0[kind.index()]
    }

    pub fn set(&mut self, kind: FailureKind, directive: Directive) {
        self.0[kind.index()] = directive;
    }
}

/// `KIND=DIRECTIVE[,...]`, over the defaults.
impl FromStr for Decider {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut decider = Decider::default();
        for (kind, directive) in pairs(s)? {
            let kind = named(&FailureKind::ALL, kind, FailureKind::as_str)
                .ok_or_else(|| PolicyError::Kind(kind.to_string()))?;
            decider.set(kind, directive.parse()?);
        }
        Ok(decider)
    }
}

/// Splits `a=b, c=d` into pairs.
fn pairs(s: &str) -> Result<Vec<(&str, &str)>, PolicyError> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| PolicyError::Shape(item.to_string()))
        })
        .collect()
}

fn child(name: &str) -> Result<ChildName, PolicyError> {
    ChildName::parse(name).ok_or_else(|| PolicyError::Child(name.to_string()))
}

/// Each core child's restart type: `CHILD=TYPE[,...]` over the defaults, which are
/// permanent for every child but the Publisher. The Publisher is transient: when it has
/// sent its `--messages`, it is done, and restarting it would only finish again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartTypes(Vec<(ChildName, RestartType)>);

impl Default for RestartTypes {
    fn default() -> Self {
        RestartTypes(vec![(ChildName::Publisher, RestartType::Transient)])
    }
}

impl RestartTypes {
    pub fn of(&self, child: ChildName) -> RestartType {
        self.0
            .iter()
            .rev()
            .find(|(c, _)| *c == child)
            .map_or(RestartType::Permanent, |(_, t)| *t)
    }
}

impl FromStr for RestartTypes {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut types = RestartTypes::default();
        for (name, t) in pairs(s)? {
            types.0.push((child(name)?, t.parse()?));
        }
        Ok(types)
    }
}

/// OTP's default shutdown timeout for a worker.
pub(crate) const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);

/// How long each child may take to stop at shutdown before it is abandoned: `S` for
/// every child, or `CHILD=S[,...]`; both may be mixed, later items winning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimeouts {
    all: Duration,
    by_child: Vec<(ChildName, Duration)>,
}

impl Default for ShutdownTimeouts {
    fn default() -> Self {
        Self {
            all: DEFAULT_SHUTDOWN,
            by_child: Vec::new(),
        }
    }
}

impl ShutdownTimeouts {
    pub fn of(&self, child: ChildName) -> Duration {
        self.by_child
            .iter()
            .rev()
            .find(|(c, _)| *c == child)
            .map_or(self.all, |(_, d)| *d)
    }
}

impl FromStr for ShutdownTimeouts {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = ShutdownTimeouts::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((name, d)) => out.by_child.push((
                    child(name.trim())?,
                    parse_duration(d.trim()).map_err(PolicyError::Duration)?,
                )),
                None => {
                    out.all = parse_duration(item).map_err(PolicyError::Duration)?;
                    out.by_child.clear();
                }
            }
        }
        Ok(out)
    }
}

/// What one child needs to know to act on its own failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildPolicy {
    pub decider: Decider,
    pub restart: RestartType,
}

impl ChildPolicy {
    /// The directive for a failure of `kind`. A temporary child is never restarted, so
    /// a directive to restart it stops it instead.
    pub(crate) fn on_failure(&self, kind: FailureKind) -> Directive {
        match self.decider.decide(kind) {
            d if d.restarts() && self.restart == RestartType::Temporary => Directive::Stop,
            d => d,
        }
    }

    /// The directive when the child finished its work normally: only a permanent child
    /// is started again.
    pub(crate) fn on_normal_exit(&self) -> Directive {
        match self.restart {
            RestartType::Permanent => Directive::Restart,
            RestartType::Transient | RestartType::Temporary => Directive::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_decider_is_the_documented_one() {
        let d = Decider::default();
        let got: Vec<_> = FailureKind::ALL
            .into_iter()
            .map(|k| (k.as_str(), d.decide(k).as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("panic", "restart"),
                ("stall", "restart"),
                ("store-open", "escalate"),
                ("store-unavailable", "restart-with-backoff"),
                ("store-corrupt", "escalate"),
                ("store-closed", "resume"),
                ("store-panicked", "restart"),
                ("restart-failed", "resume"),
                ("restart-timed-out", "resume"),
                ("restart-refused", "resume"),
                ("restart-unavailable", "restart-with-backoff"),
                ("broker-down", "escalate"),
            ]
        );
    }

    #[test]
    fn a_decider_spec_overrides_the_defaults_it_names() {
        let d: Decider = "panic=stop, restart-failed=escalate".parse().unwrap();
        assert_eq!(d.decide(FailureKind::Panic), Directive::Stop);
        assert_eq!(d.decide(FailureKind::RestartFailed), Directive::Escalate);
        assert_eq!(d.decide(FailureKind::Stall), Directive::Restart);
        assert_eq!(
            "oops=stop".parse::<Decider>(),
            Err(PolicyError::Kind("oops".into()))
        );
        assert_eq!(
            "panic=reboot".parse::<Decider>(),
            Err(PolicyError::Directive("reboot".into()))
        );
        assert_eq!(
            "panic".parse::<Decider>(),
            Err(PolicyError::Shape("panic".into()))
        );
    }

    #[test]
    fn restart_types_default_to_permanent_but_the_publisher() {
        let t = RestartTypes::default();
        assert_eq!(t.of(ChildName::Saver), RestartType::Permanent);
        assert_eq!(t.of(ChildName::Publisher), RestartType::Transient);
        let t: RestartTypes = "publisher=permanent,acker=temporary".parse().unwrap();
        assert_eq!(t.of(ChildName::Publisher), RestartType::Permanent);
        assert_eq!(t.of(ChildName::Acker), RestartType::Temporary);
        assert_eq!(
            "db=temporary".parse::<RestartTypes>(),
            Err(PolicyError::Child("db".into()))
        );
    }

    #[test]
    fn shutdown_timeouts_take_a_default_and_overrides() {
        let t: ShutdownTimeouts = "2s, saver=10s".parse().unwrap();
        assert_eq!(t.of(ChildName::Acker), Duration::from_secs(2));
        assert_eq!(t.of(ChildName::Saver), Duration::from_secs(10));
        assert_eq!(
            ShutdownTimeouts::default().of(ChildName::Saver),
            DEFAULT_SHUTDOWN
        );
        assert!("saver=soon".parse::<ShutdownTimeouts>().is_err());
    }

    #[test]
    fn a_temporary_child_is_stopped_where_another_would_restart() {
        let policy = |restart| ChildPolicy {
            decider: Decider::default(),
            restart,
        };
        let temporary = policy(RestartType::Temporary);
        assert_eq!(temporary.on_failure(FailureKind::Panic), Directive::Stop);
        assert_eq!(
            temporary.on_failure(FailureKind::StoreUnavailable),
            Directive::Stop
        );
        // Directives that do not restart are left alone.
        assert_eq!(
            temporary.on_failure(FailureKind::RestartFailed),
            Directive::Resume
        );
        assert_eq!(
            temporary.on_failure(FailureKind::StoreCorrupt),
            Directive::Escalate
        );
        let transient = policy(RestartType::Transient);
        assert_eq!(transient.on_failure(FailureKind::Panic), Directive::Restart);
        assert_eq!(transient.on_normal_exit(), Directive::Stop);
        assert_eq!(
            policy(RestartType::Permanent).on_normal_exit(),
            Directive::Restart
        );
    }
}

//! The names the service gives its parts: the children of its supervision tree and the OS
//! signals it acts on. They are enums, so that a misspelt name is a compile error and
//! every match over them is exhaustive; text appears only in flags, logs and the report.

use std::fmt;

/// A child of the supervision tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildName {
    /// The broker adapter.
    Broker,
    Acker,
    Saver,
    Restarter,
    Consumer,
    Publisher,
    /// A child added from outside the core, by its own name.
    Extension(&'static str),
}

impl ChildName {
    /// The core children, in start order.
    pub(crate) const CORE: [ChildName; 6] = [
        ChildName::Broker,
        ChildName::Acker,
        ChildName::Saver,
        ChildName::Restarter,
        ChildName::Consumer,
        ChildName::Publisher,
    ];

    /// The name used in flags, the config file, logs and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildName::Broker => "broker",
            ChildName::Acker => "acker",
            ChildName::Saver => "saver",
            ChildName::Restarter => "restarter",
            ChildName::Consumer => "consumer",
            ChildName::Publisher => "publisher",
            ChildName::Extension(name) => name,
        }
    }

    /// The core child named `s`.
    pub fn parse(s: &str) -> Option<ChildName> {
        Self::CORE.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ChildName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OS signal the service acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Hup,
    Usr1,
    Quit,
}

impl Signal {
    pub(crate) const ALL: [Signal; 5] = [
        Signal::Int,
        Signal::Term,
        Signal::Hup,
        Signal::Usr1,
        Signal::Quit,
    ];

    /// The signal's name, as logs and the report's `stopped_by` give it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Hup => "SIGHUP",
            Signal::Usr1 => "SIGUSR1",
            Signal::Quit => "SIGQUIT",
        }
    }

    /// The signal's number on this system.
    #[cfg(unix)]
    pub(crate) fn number(self) -> i32 {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
        match self {
            Signal::Int => SIGINT,
            Signal::Term => SIGTERM,
            Signal::Hup => SIGHUP,
            Signal::Usr1 => SIGUSR1,
            Signal::Quit => SIGQUIT,
        }
    }

    /// The exit status of a process that exits at once on this signal: 128 plus its number.
    pub(crate) fn exit_status(self) -> i32 {
        128 + match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Usr1 => 10,
            Signal::Term => 15,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_names_round_trip_and_others_do_not_parse() {
        for c in ChildName::CORE {
            assert_eq!(ChildName::parse(c.as_str()), Some(c));
        }
        assert_eq!(ChildName::parse("db"), None);
        assert_eq!(ChildName::Extension("notifier").as_str(), "notifier");
    }

    #[test]
    fn exit_statuses_follow_the_shell_convention() {
        assert_eq!(Signal::Int.exit_status(), 130);
        assert_eq!(Signal::Term.exit_status(), 143);
    }
}

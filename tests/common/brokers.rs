//! One face for both real brokers, so that a behaviour every broker must have is written
//! once and run against each: a test's own stream or subscription, the flags and the
//! environment that point the service at it, and the broker's own count of what is left.

use super::nats::{self, Nats};
use super::pubsub::{self, Emulator};
use super::Mandrill;

/// A real broker with names of the test's own.
pub enum Remote {
    JetStream {
        nats: Nats,
        stream: String,
    },
    PubSub {
        emulator: Emulator,
        names: pubsub::Names,
    },
}

/// What the broker holds after a run, by its own count.
#[derive(Debug, PartialEq, Eq)]
pub struct Left {
    /// Messages not yet acked or dead-lettered.
    pub pending: u64,
    /// Messages in the dead letters.
    pub dead_letters: u64,
}

impl Remote {
    /// A JetStream stream on the test's server, or `None` when the test should skip.
    pub fn jetstream(prefix: &str) -> Option<Self> {
        let nats = Nats::get()?;
        Some(Self::JetStream {
            stream: nats::unique(&prefix.to_uppercase()),
            nats,
        })
    }

    /// A Pub/Sub subscription on the test's emulator, or `None` when the test should skip.
    pub fn pubsub(prefix: &str) -> Option<Self> {
        let emulator = Emulator::get()?;
        Some(Self::PubSub {
            names: pubsub::names(prefix),
            emulator,
        })
    }

    /// A JetStream stream on a server of the test's own, which it may stop.
    pub fn jetstream_own(prefix: &str) -> Option<Self> {
        let nats = Nats::own()?;
        Some(Self::JetStream {
            stream: nats::unique(&prefix.to_uppercase()),
            nats,
        })
    }

    /// A Pub/Sub subscription on an emulator of the test's own, which it may stop.
    pub fn pubsub_own(prefix: &str) -> Option<Self> {
        let emulator = Emulator::own()?;
        Some(Self::PubSub {
            names: pubsub::names(prefix),
            emulator,
        })
    }

    /// Stops the test's own server, as a crash would.
    pub fn stop_server(&mut self) {
        match self {
            Self::JetStream { nats, .. } => nats.stop(),
            Self::PubSub { emulator, .. } => emulator.stop(),
        }
    }

    /// The shortest lease the broker allows, in seconds: Pub/Sub's floor is 10.
    pub fn shortest_lease(&self) -> u64 {
        match self {
            Self::JetStream { .. } => 1,
            Self::PubSub { .. } => 10,
        }
    }

    /// Creates the stream or subscription with `--ack-deadline` and `--max-deliveries`
    /// from `extra`, and publishes `n` simulated messages with `mandrill publish`.
    pub fn publish(&self, n: usize, extra: &[&str]) {
        match self {
            Self::JetStream { nats, stream } => nats::publish(&nats.url, stream, n),
            Self::PubSub { emulator, names } => pubsub::publish(emulator, names, n, extra),
        }
    }

    /// Publishes payloads as they are, with no id the broker could deduplicate by.
    pub fn publish_raw(&self, payloads: Vec<Vec<u8>>) {
        match self {
            Self::JetStream { nats, stream } => nats::publish_raw(&nats.url, stream, payloads),
            Self::PubSub { emulator, names } => emulator.publish_raw(&names.topic, payloads),
        }
    }

    /// Starts the service on the test's stream or subscription, creating what is
    /// missing (with JetStream, a durable consumer named `shared`), with `extra` flags.
    pub fn spawn(&self, extra: &[&str]) -> Mandrill {
        match self {
            Self::JetStream { nats, stream } => {
                let mut flags = nats::source(&nats.url, stream, &["--consumer", "shared"]);
                flags.extend_from_slice(extra);
                Mandrill::spawn(&flags)
            }
            Self::PubSub { emulator, names } => {
                let mut flags = pubsub::source(names, &["--create"]);
                flags.extend_from_slice(extra);
                Mandrill::spawn_env(&flags, &emulator.env())
            }
        }
    }

    /// Asserts that the broker holds nothing more for the service and no dead letters,
    /// then removes the test's names.
    pub fn assert_all_acked_and_delete(&self) {
        let left = self.left_and_delete();
        let none = Left {
            pending: 0,
            dead_letters: 0,
        };
        assert_eq!(left, none, "the broker still holds messages");
    }

    /// What the broker holds for the service, and in its dead letters; then removes the
    /// test's streams, or topics and subscriptions.
    pub fn left_and_delete(&self) -> Left {
        match self {
            Self::JetStream { nats, stream } => {
                let dlq = format!("{stream}_DLQ");
                let counts = nats::counts_and_delete(&nats.url, &[stream, &dlq]);
                Left {
                    pending: counts[0],
                    dead_letters: counts[1],
                }
            }
            Self::PubSub { emulator, names } => {
                let left = Left {
                    pending: emulator.drain(&names.subscription).len() as u64,
                    dead_letters: emulator.drain(&names.dead_letter_subscription).len() as u64,
                };
                emulator.delete(names);
                left
            }
        }
    }
}

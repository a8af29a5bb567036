//! `mandrill publish`: the talk's publisher as a load generator into a real broker, or a
//! replay of newline-delimited messages from a file. It prints one JSON line saying what
//! it published.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use thiserror::Error;

use crate::broker::jetstream::{JetStreamError, Stored, Stream, Target, Unconfirmed};
use crate::broker::pubsub::{self, PubSubError, SubscriptionSpec};
use crate::message::{cattle, parse_line, Message};

/// Publishes sent and not yet confirmed, at most: JetStream answers each one, and
/// Pub/Sub each bundle of up to a thousand.
const WINDOW: usize = 256;
const PUBSUB_WINDOW: usize = 4096;

/// The broker `mandrill publish` writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum To {
    /// A NATS JetStream stream (see --nats-url and --stream).
    Jetstream,
    /// A Google Cloud Pub/Sub topic (see --topic); the emulator at PUBSUB_EMULATOR_HOST
    /// when that is set.
    Pubsub,
}

/// What `mandrill publish` publishes, and where.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[arg(long, value_enum)]
    pub to: To,
    /// The NATS server.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The JetStream stream; its subject is its name.
    #[arg(long, value_name = "NAME", default_value = "MAYHEM")]
    pub stream: String,
    /// The Pub/Sub topic: projects/PROJECT/topics/NAME.
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
    /// The Pub/Sub subscription --create makes on --topic, so that what is published is
    /// kept for it: projects/PROJECT/subscriptions/NAME.
    #[arg(long, value_name = "NAME")]
    pub subscription: Option<String>,
    /// The ack deadline of a subscription --create makes.
    #[arg(long, value_name = "S", default_value = "10", value_parser = crate::units::parse_positive_duration)]
    pub ack_deadline: Duration,
    /// The deliveries a subscription --create makes allows before its dead letters.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,
    /// How many simulated messages to publish; ignored with --input.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub messages: u64,
    /// At most this many messages a second; unpaced when absent.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Publish the newline-delimited JSON messages in this file (`-` for stdin) instead.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Create the stream when it is missing; for Pub/Sub, the topic, the subscription
    /// and its dead-letter topic, as `mandrill --source pubsub --create` does.
    #[arg(long)]
    pub create: bool,
    /// Seed for the simulated messages' names and ids.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Why `mandrill publish` stopped.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    #[error("publish --to pubsub needs --topic projects/PROJECT/topics/NAME")]
    NoTopic,
    #[error(
        "publish --to pubsub --create needs --subscription, or what is published has \
         nowhere to be kept"
    )]
    NothingKeeps,
    #[error("cannot read {path}: {reason}")]
    Input { path: String, reason: String },
    #[error("--rate must be a positive number of messages a second, not {0}")]
    Rate(f64),
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
}

/// The line `mandrill publish` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Published {
    pub to: To,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Messages the broker stored.
    pub published: u64,
    /// Messages the broker already held, by id: a replay or a retried publish. Pub/Sub
    /// keeps no ids, so there this is always 0.
    pub duplicates: u64,
    /// Input lines that are not messages; each is named on stderr.
    pub rejected: u64,
}

/// Publishes what the arguments say and returns what was stored.
pub fn run(args: &PublishArgs) -> Result<Published, PublishError> {
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(PublishError::Rate(r));
        }
    }
    // The connection's own tasks run on the worker thread, so a slow input read on this
    // one never keeps the client from answering the server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| PublishError::Runtime(e.to_string()))?;
    runtime.block_on(publish(args))
}

async fn publish(args: &PublishArgs) -> Result<Published, PublishError> {
    let mut out = Published {
        to: args.to,
        stream: None,
        topic: None,
        published: 0,
        duplicates: 0,
        rejected: 0,
    };
    let sink = match args.to {
        To::Jetstream => {
            let target = Target {
                url: args.nats_url.clone(),
                stream: args.stream.clone(),
            };
            out.stream = Some(args.stream.clone());
            Sink::JetStream(Box::new(Stream::open(target, args.create).await?))
        }
        To::Pubsub => {
            let topic = args.topic.as_deref().ok_or(PublishError::NoTopic)?;
            let topic = pubsub::Name::topic("--topic", topic)?;
            let spec = match (&args.subscription, args.create) {
                (Some(s), true) => Some(SubscriptionSpec {
                    name: pubsub::Name::subscription("--subscription", s)?,
                    topic: Some(topic.clone()),
                    ack_deadline: args.ack_deadline,
                    max_deliveries: args.max_deliveries,
                }),
                (None, true) => return Err(PublishError::NothingKeeps),
                (_, false) => None,
            };
            out.topic = Some(topic.to_string());
            Sink::PubSub(pubsub::Topic::open(topic, spec.as_ref()).await?)
        }
    };
    let mut pace = args.rate.map(|r| {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    // A window of publishes is sent before the oldest answer is awaited: one at a time,
    // the round trip to the server bounded the rate.
    let window = match sink {
        Sink::JetStream(_) => WINDOW,
        Sink::PubSub(_) => PUBSUB_WINDOW,
    };
    let mut unconfirmed = VecDeque::with_capacity(window);
    let mut send = async |m: Message, out: &mut Published| -> Result<(), PublishError> {
        if let Some(tick) = pace.as_mut() {
            tick.tick().await;
        }
        if unconfirmed.len() == window {
            let oldest: Sending = unconfirmed.pop_front().expect("full");
            out.count(oldest.confirmed().await?);
        }
        unconfirmed.push_back(sink.send(&m).await?);
        Ok(())
    };
    match &args.input {
        Some(path) => {
            let fail = |e: std::io::Error| PublishError::Input {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(path).map_err(fail)?,
                ))
            };
            for (n, line) in reader.split(b'\n').enumerate() {
                let line = line.map_err(fail)?;
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match parse_line(line) {
                    Ok(m) => send(m, &mut out).await?,
                    Err(e) => {
                        eprintln!("rejected line {}: {e}", n + 1);
                        out.rejected += 1;
                    }
                }
            }
        }
        None => {
            let mut rng = match args.seed {
                Some(s) => SmallRng::seed_from_u64(s),
                None => SmallRng::from_os_rng(),
            };
            for _ in 0..args.messages {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                send(cattle(&mut rng, now_ms), &mut out).await?;
            }
        }
    }
    for rest in unconfirmed {
        out.count(rest.confirmed().await?);
    }
    sink.close().await;
    Ok(out)
}

/// Where `mandrill publish` sends.
enum Sink {
    JetStream(Box<Stream>),
    PubSub(pubsub::Topic),
}

/// A publish not yet confirmed, by either broker.
enum Sending {
    JetStream(Unconfirmed),
    PubSub(pubsub::Sent),
}

impl Sink {
    async fn send(&self, m: &Message) -> Result<Sending, PublishError> {
        Ok(match self {
            Self::JetStream(s) => Sending::JetStream(s.send(m).await?),
            Self::PubSub(t) => Sending::PubSub(t.send(m).await?),
        })
    }

    async fn close(self) {
        if let Self::PubSub(t) = self {
            t.close().await;
        }
    }
}

impl Sending {
    async fn confirmed(self) -> Result<Stored, PublishError> {
        Ok(match self {
            Self::JetStream(u) => u.confirmed().await?,
            Self::PubSub(s) => s.confirmed().await.map(|()| Stored::New)?,
        })
    }
}

impl Published {
    fn count(&mut self, stored: Stored) {
        match stored {
            Stored::New => self.published += 1,
            Stored::Duplicate => self.duplicates += 1,
        }
    }
}

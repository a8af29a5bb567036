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
use crate::message::{cattle, parse_line, Message};

/// Publishes sent and not yet confirmed, at most.
const WINDOW: usize = 256;

/// The broker `mandrill publish` writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum To {
    /// A NATS JetStream stream (see --nats-url and --stream).
    Jetstream,
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
    /// How many simulated messages to publish; ignored with --input.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub messages: u64,
    /// At most this many messages a second; unpaced when absent.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Publish the newline-delimited JSON messages in this file (`-` for stdin) instead.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Create the stream when it is missing.
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
    pub stream: String,
    /// Messages the broker stored.
    pub published: u64,
    /// Messages the broker already held, by id: a replay or a retried publish.
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
    let target = Target {
        url: args.nats_url.clone(),
        stream: args.stream.clone(),
    };
    let stream = Stream::open(target, args.create).await?;
    let mut out = Published {
        to: args.to,
        stream: args.stream.clone(),
        published: 0,
        duplicates: 0,
        rejected: 0,
    };
    let mut pace = args.rate.map(|r| {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    // Up to WINDOW publishes are sent before the oldest answer is awaited: one at a time,
    // the round trip to the server bounded the rate.
    let mut unconfirmed = VecDeque::with_capacity(WINDOW);
    let mut send = async |m: Message, out: &mut Published| -> Result<(), PublishError> {
        if let Some(tick) = pace.as_mut() {
            tick.tick().await;
        }
        if unconfirmed.len() == WINDOW {
            let oldest: Unconfirmed = unconfirmed.pop_front().expect("full");
            out.count(oldest.confirmed().await?);
        }
        unconfirmed.push_back(stream.send(&m).await?);
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
    Ok(out)
}

impl Published {
    fn count(&mut self, stored: Stored) {
        match stored {
            Stored::New => self.published += 1,
            Stored::Duplicate => self.duplicates += 1,
        }
    }
}

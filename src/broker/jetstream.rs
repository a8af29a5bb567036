//! NATS JetStream, the self-hosted broker: the stream the service consumes and the
//! publishing into it.
//!
//! A stream of messages is a work queue: a message is removed once acked, and every
//! instance that names the same durable consumer shares the work. Each message's id goes
//! in `Nats-Msg-Id`, so the stream's duplicate window stores a retried publish once.
//! Everything here goes through `async-nats`; no protocol is written by hand.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use thiserror::Error;

use crate::message::Message;

/// How long the stream remembers a message id to drop a second publish of it. Two
/// minutes is the server's own default, said out loud so the guarantee is ours.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why JetStream could not do what was asked.
#[derive(Debug, Error)]
pub enum JetStreamError {
    #[error("cannot connect to nats at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("stream {stream} does not exist (--create makes it)")]
    NoStream { stream: String },
    #[error("cannot create stream {stream}: {reason}")]
    CreateStream { stream: String, reason: String },
    #[error("cannot read stream {stream}: {reason}")]
    StreamInfo { stream: String, reason: String },
    #[error("cannot publish to {subject}: {reason}")]
    Publish { subject: String, reason: String },
}

/// Where messages go: a server and a stream whose one subject is the stream's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub stream: String,
}

impl Target {
    /// The subject the stream listens on.
    pub fn subject(&self) -> &str {
        &self.stream
    }
}

/// An open connection to a stream.
pub struct Stream {
    target: Target,
    js: jetstream::Context,
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The stream stored the message.
    New,
    /// The stream already held a message with this id inside its duplicate window.
    Duplicate,
}

impl Stream {
    /// Connects and finds the stream, or creates it when `create` is set.
    pub async fn open(target: Target, create: bool) -> Result<Self, JetStreamError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(&target.url)
            .await
            .map_err(|e| JetStreamError::Connect {
                url: target.url.clone(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client);
        let stream = Self { target, js };
        if create {
            stream.create().await?;
        } else {
            stream.messages().await?;
        }
        Ok(stream)
    }

    /// Creates the stream as a work queue with a duplicate window, unless it exists.
    async fn create(&self) -> Result<(), JetStreamError> {
        let config = stream::Config {
            name: self.target.stream.clone(),
            subjects: vec![self.target.subject().to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map(drop)
            .map_err(|e| JetStreamError::CreateStream {
                stream: self.target.stream.clone(),
                reason: e.to_string(),
            })
    }

    /// How many messages the stream holds: published and not yet acked.
    pub async fn messages(&self) -> Result<u64, JetStreamError> {
        let name = &self.target.stream;
        let info = match self.js.get_stream(name).await {
            Ok(s) => s.get_info().await,
            Err(e) if not_found(&e.kind()) => {
                return Err(JetStreamError::NoStream {
                    stream: name.clone(),
                })
            }
            Err(e) => {
                return Err(JetStreamError::StreamInfo {
                    stream: name.clone(),
                    reason: e.to_string(),
                })
            }
        };
        info.map(|i| i.state.messages)
            .map_err(|e| JetStreamError::StreamInfo {
                stream: name.clone(),
                reason: e.to_string(),
            })
    }

    /// Sends one message, its id in `Nats-Msg-Id`; the answer says when the stream has
    /// stored it. Sending the next before that answer keeps the link busy.
    pub async fn send(&self, message: &Message) -> Result<Unconfirmed, JetStreamError> {
        let subject = self.target.subject();
        let payload = serde_json::to_vec(message).map_err(|e| publish_error(subject, &e))?;
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(message.message_id.to_string());
        let ack = self
            .js
            .send_publish(subject.to_string(), publish)
            .await
            .map_err(|e| publish_error(subject, &e))?;
        Ok(Unconfirmed {
            ack,
            subject: subject.to_string(),
        })
    }
}

/// Whether the server said the stream does not exist.
fn not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A message sent to the stream and not yet confirmed.
pub struct Unconfirmed {
    ack: jetstream::context::PublishAckFuture,
    subject: String,
}

impl Unconfirmed {
    /// Waits for the stream's answer.
    pub async fn confirmed(self) -> Result<Stored, JetStreamError> {
        let ack = self
            .ack
            .await
            .map_err(|e| publish_error(&self.subject, &e))?;
        Ok(if ack.duplicate {
            Stored::Duplicate
        } else {
            Stored::New
        })
    }
}

fn publish_error(subject: &str, e: &dyn std::fmt::Display) -> JetStreamError {
    JetStreamError::Publish {
        subject: subject.to_string(),
        reason: e.to_string(),
    }
}

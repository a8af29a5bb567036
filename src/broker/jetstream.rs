//! NATS JetStream, the self-hosted broker: the stream the service consumes and the
//! publishing into it.
//!
//! A stream of messages is a work queue: a message is removed once acked, and every
//! instance that names the same durable consumer shares the work. Each message's id goes
//! in `Nats-Msg-Id`, so the stream's duplicate window stores a retried publish once.
//! Everything here goes through `async-nats`; no protocol is written by hand.

use std::time::Duration;

use actix::prelude::*;
use async_nats::jetstream::{self, message::PublishMessage, stream, AckKind};
use futures_util::future::join_all;
use thiserror::Error;
use tracing::{info, warn};

use super::remote::{self, screen, Leases, Unfit};
use super::{
    BrokerError, Extend, Outage, Pending, Publish, Pull, Room, Settle, Settled, Settlement, Verdict,
};
use crate::faults::Injector;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::supervision::{fail, guard, note_restart, Child, FailureKind, Link};

/// How long the stream remembers a message id to drop a second publish of it. Two
/// minutes is the server's own default, said out loud so the guarantee is ours.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How the report's `published` and `pending_at_exit` are taken from the server.
pub const COUNTS: &str = "published: the consumer's backlog when this instance connected, \
    plus what the stream stored while it ran; pending_at_exit: the consumer's backlog at \
    exit (num_pending + num_ack_pending). They balance acked + dead_lettered when this is \
    the stream's only consumer instance";

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
    #[error("cannot use consumer {consumer}: {reason}")]
    Consumer { consumer: String, reason: String },
    #[error("cannot fetch from consumer {consumer}: {reason}")]
    Fetch { consumer: String, reason: String },
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

    /// The stream, and its one subject, that keeps the dead letters: JetStream has no
    /// dead-letter queue of its own.
    pub fn dead_letters(&self) -> String {
        format!("{}_DLQ", self.stream)
    }
}

/// An open connection to a stream.
#[derive(Clone)]
pub struct Stream {
    target: Target,
    client: async_nats::Client,
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
        let js = jetstream::new(client.clone());
        let stream = Self { target, client, js };
        if create {
            stream.create().await?;
        } else {
            stream.state().await?;
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
        let dlq = self.target.dead_letters();
        let dead_letters = stream::Config {
            name: dlq.clone(),
            subjects: vec![dlq.clone()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        for (name, config) in [(&self.target.stream, config), (&dlq, dead_letters)] {
            self.js.get_or_create_stream(config).await.map_err(|e| {
                JetStreamError::CreateStream {
                    stream: name.clone(),
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    /// Copies a delivery's payload to the dead letters and waits until it is stored; the
    /// original's stream and sequence in `Nats-Msg-Id` keep a retried copy single.
    pub async fn copy_to_dead_letters(
        &self,
        handle: &jetstream::Message,
    ) -> Result<(), JetStreamError> {
        let subject = self.target.dead_letters();
        let id = match handle.info() {
            Ok(info) => format!("{}:{}", info.stream, info.stream_sequence),
            Err(e) => return Err(publish_error(&subject, &e)),
        };
        let copy = PublishMessage::build()
            .payload(handle.payload.clone())
            .message_id(id);
        self.js
            .send_publish(subject.clone(), copy)
            .await
            .map_err(|e| publish_error(&subject, &e))?
            .await
            .map_err(|e| publish_error(&subject, &e))?;
        Ok(())
    }

    /// Whether the client is connected now; between a lost connection and its return
    /// it is reconnecting, with its own backoff.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The stream's state: what it holds, and the sequence of the last message it stored.
    pub async fn state(&self) -> Result<stream::State, JetStreamError> {
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
        info.map(|i| i.state)
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
/// How long a fetch of what is there now may stay open on the server.
const FETCH_EXPIRY: Duration = Duration::from_millis(100);

/// How long past a request's expiry its deliveries are still read. The server ends a
/// request with an answer at its expiry; when the connection broke meanwhile, that
/// answer never comes, and the client's own timer would keep the request open five
/// seconds longer, with no pull made after the server is back. A delivery the server
/// sent into a request given up on is leased to no one, and comes back when its lease
/// runs out.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// The items of `stream` until it ends or `limit` has passed, whichever comes first.
fn until<S: futures_util::Stream + Unpin>(
    stream: S,
    limit: Duration,
) -> impl futures_util::Stream<Item = S::Item> {
    use futures_util::StreamExt as _;
    stream.take_until(tokio::time::sleep(limit))
}

/// A durable pull consumer's settings; every instance that names it shares its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub name: String,
    /// How long a delivery is leased before the server redelivers it.
    pub ack_wait: Duration,
    /// Deliveries the service allows a message; the server allows one more (see
    /// `JetStreamBroker::pull`).
    pub max_deliveries: u32,
    /// Deliveries out at once, across every instance: the server's ceiling. Each
    /// instance holds at most its own `--max-in-flight` below it.
    pub max_ack_pending: u32,
}

/// A durable pull consumer on the stream.
#[derive(Clone)]
pub struct Consumer {
    inner: jetstream::consumer::PullConsumer,
    name: String,
}

/// One delivery as the server made it.
pub type Fetched = super::remote::Fetched<jetstream::Message>;

impl Stream {
    /// Binds to the durable consumer, or creates it with explicit acks when `create` is
    /// set.
    pub async fn consumer(
        &self,
        spec: &ConsumerSpec,
        create: bool,
    ) -> Result<Consumer, JetStreamError> {
        let fail = |e: &dyn std::fmt::Display| JetStreamError::Consumer {
            consumer: spec.name.clone(),
            reason: e.to_string(),
        };
        let stream = self
            .js
            .get_stream(&self.target.stream)
            .await
            .map_err(|e| fail(&e))?;
        let inner = if create {
            let config = jetstream::consumer::pull::Config {
                durable_name: Some(spec.name.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                // One more than the service allows: a message whose lease ran out on its
                // last allowed delivery comes back once more, to be dead-lettered, rather
                // than staying in the stream for good.
                max_deliver: i64::from(spec.max_deliveries) + 1,
                max_ack_pending: i64::from(spec.max_ack_pending),
                ..Default::default()
            };
            stream
                .get_or_create_consumer(&spec.name, config)
                .await
                .map_err(|e| fail(&e))?
        } else {
            stream
                .get_consumer(&spec.name)
                .await
                .map_err(|e| fail(&e))?
        };
        Ok(Consumer {
            inner,
            name: spec.name.clone(),
        })
    }
}

impl Consumer {
    /// Takes up to `max` deliveries that are there now; when there are none, waits up to
    /// `wait` for one.
    pub async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Fetched>, JetStreamError> {
        // A fetch of what is there now still waits when the consumer's other instances
        // hold every lease it allows: the server keeps the request open, and the
        // deliveries it later sends into it would wait there too, with their leases
        // running. The expiry bounds that.
        let fetch = self.inner.fetch().max_messages(max).expires(FETCH_EXPIRY);
        let now = self.take(fetch.messages().await, max, FETCH_EXPIRY);
        let now = now.await?;
        if !now.is_empty() || wait.is_zero() {
            return Ok(now);
        }
        // A request for more would stay open until it filled or expired. One for a single
        // message ends as soon as it arrives.
        let one = self.inner.batch().max_messages(1).expires(wait).messages();
        self.take(one.await, 1, wait).await
    }

    /// Reads a request's deliveries until it ends, or until `ANSWER_GRACE` past its
    /// `expiry`: the server's answer at the expiry was then lost with the connection.
    async fn take(
        &self,
        batch: Result<jetstream::consumer::pull::Batch, jetstream::consumer::pull::BatchError>,
        max: usize,
        expiry: Duration,
    ) -> Result<Vec<Fetched>, JetStreamError> {
        let fail = |e: &dyn std::fmt::Display| JetStreamError::Fetch {
            consumer: self.name.clone(),
            reason: e.to_string(),
        };
        use futures_util::StreamExt as _;
        let batch = batch.map_err(|e| fail(&e))?;
        let mut batch = std::pin::pin!(until(batch, expiry + ANSWER_GRACE));
        let mut out = Vec::with_capacity(max);
        while let Some(next) = batch.next().await {
            let handle = next.map_err(|e| fail(&e))?;
            let info = handle.info().map_err(|e| fail(&e))?;
            let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
            let published_at = std::time::SystemTime::from(info.published);
            let message = crate::message::parse_line(&handle.payload).map_err(|e| e.to_string());
            out.push(Fetched {
                message,
                attempt,
                published_at,
                handle,
            });
        }
        Ok(out)
    }

    /// Deliveries not yet made plus deliveries out and not yet acked, by the server's count.
    pub async fn pending(&mut self) -> Result<u64, JetStreamError> {
        let info = self
            .inner
            .info()
            .await
            .map_err(|e| JetStreamError::Consumer {
                consumer: self.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

/// How long a pull made while connecting waits before it answers, empty.
const CONNECTING_NAP: Duration = Duration::from_millis(50);

/// What the JetStream adapter connects to and how it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    pub target: Target,
    pub consumer: ConsumerSpec,
    /// Create the stream and the consumer when they are missing.
    pub create: bool,
    /// How long the server may stay unreachable before the adapter fails with
    /// `broker-down`.
    pub down_timeout: Duration,
    /// Wait for the server to confirm each ack (a double ack); one it does not confirm
    /// is reported stale, so it is not counted as acked.
    pub confirm_acks: bool,
    /// Deliveries this instance holds at once.
    pub max_in_flight: usize,
}

/// How many instances a consumer made by `--create` lets hold their own
/// `--max-in-flight` at once: its `max_ack_pending` is this many times that. A ceiling
/// equal to one instance's share would make instances wait on each other's leases.
pub const SHARERS: u32 = 16;

/// The adapter: pulls from a durable consumer, settles with the server, and keeps each
/// delivery's handle under an `AckId` until it is settled.
///
/// The messages and the count of their deliveries are the server's; a restart of this
/// actor keeps the connection and the handles, and a lost connection is the client's to
/// win back, with its own backoff.
pub struct JetStreamBroker {
    link: Link,
    config: JetStreamConfig,
    injector: Injector,
    retired: bool,
    conn: Option<(Stream, Consumer)>,
    connecting: bool,
    leases: Leases<jetstream::Message>,
    outage: Outage,
    room: Room,
    /// The stream's last sequence when `published` was last brought up to date.
    counted_to: Option<u64>,
}

impl JetStreamBroker {
    pub fn new(link: Link, config: JetStreamConfig, injector: Injector) -> Self {
        Self {
            outage: Outage::new(config.down_timeout),
            link,
            config,
            injector,
            retired: false,
            conn: None,
            connecting: false,
            leases: Leases::default(),
            counted_to: None,
            room: Room::default(),
        }
    }

    /// Opens the stream and binds the consumer, once at a time; a failure is tried again
    /// on the next pull.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.conn.is_some() || self.connecting {
            return;
        }
        self.connecting = true;
        let config = self.config.clone();
        let open = async move {
            let stream = Stream::open(config.target.clone(), config.create).await?;
            let mut consumer = stream.consumer(&config.consumer, config.create).await?;
            let backlog = consumer.pending().await?;
            let last = stream.state().await?.last_sequence;
            Ok::<_, JetStreamError>(((stream, consumer), backlog, last))
        };
        ctx.spawn(open.into_actor(self).map(|res, act, ctx| {
            act.connecting = false;
            match res {
                Ok((conn, backlog, last)) => {
                    info!(
                        "Consuming {} through consumer {} ({backlog} pending)",
                        act.config.target.stream, act.config.consumer.name
                    );
                    // What the server holds for the consumer now counts as published,
                    // and so, from here on, does whatever the stream stores.
                    Metrics::add(&act.link.metrics.published, backlog);
                    act.counted_to = Some(last);
                    act.conn = Some(conn);
                }
                Err(e) => {
                    warn!("Cannot reach JetStream: {e}");
                    if let Some(down) = act.outage.note(false) {
                        act.down(down, ctx);
                    }
                }
            }
        }));
    }

    /// Fails with `broker-down`: the server has been unreachable for `down`.
    fn down(&mut self, down: Duration, ctx: &mut Context<Self>) -> BrokerError {
        let reason = format!(
            "JetStream at {} unreachable for {}s",
            self.config.target.url,
            down.as_secs()
        );
        fail(self, ctx, FailureKind::BrokerDown, &reason);
        BrokerError::Unavailable(reason)
    }
}

/// Dead-letters what `screen` took out of a fetch, and says what it was.
async fn dead_letter_unfit(stream: Stream, unfit: Vec<(Unfit, jetstream::Message)>) -> Vec<Unfit> {
    let mut out = Vec::with_capacity(unfit.len());
    for (why, handle) in unfit {
        dead_letter(stream.clone(), handle).await;
        out.push(why);
    }
    out
}

/// Sends one acknowledgement; the server's answer to it is not awaited, as JetStream
/// gives none without a double ack.
async fn settle_one(handle: jetstream::Message, kind: AckKind) {
    if let Err(e) = handle.ack_with(kind).await {
        warn!("Cannot settle a JetStream delivery: {e}");
    }
}

/// Copies a delivery to the dead letters, then terminates it so the server never
/// delivers it again. A copy that fails leaves the message to a later delivery instead:
/// terminated first, it would be lost.
async fn dead_letter(stream: Stream, handle: jetstream::Message) {
    match stream.copy_to_dead_letters(&handle).await {
        Ok(()) => settle_one(handle, AckKind::Term).await,
        Err(e) => {
            warn!("Cannot dead-letter a JetStream delivery, so it stays for redelivery: {e}");
            settle_one(handle, AckKind::Nak(None)).await;
        }
    }
}

impl Actor for JetStreamBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        self.connect(ctx);
    }
}

impl Child for JetStreamBroker {
    const NAME: ChildName = ChildName::Broker;
    fn link(&self) -> &Link {
        &self.link
    }
    fn retire(&mut self) {
        self.retired = true;
    }
    fn is_retired(&self) -> bool {
        self.retired
    }
}

crate::restart_on_request!(JetStreamBroker);

impl Supervised for JetStreamBroker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A restart drops the context's futures, a connection attempt among them.
        self.connecting = false;
        note_restart(self);
    }
}

/// Publishes into the stream, for the stdin source; each id in `Nats-Msg-Id`.
impl Handler<Publish> for JetStreamBroker {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        self.connect(ctx);
        let stream = self.conn.as_ref().map(|(s, _)| s.clone());
        Box::pin(
            async move {
                let Some(stream) = stream else {
                    return Err(format!(
                        "{} messages not published: not connected",
                        msg.0.len()
                    ));
                };
                for m in &msg.0 {
                    stream
                        .send(m)
                        .await
                        .map_err(|e| e.to_string())?
                        .confirmed()
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            .into_actor(self)
            .map(|res, _, _| {
                if let Err(e) = res {
                    warn!("Cannot publish to JetStream: {e}");
                }
            }),
        )
    }
}

impl Handler<Pull> for JetStreamBroker {
    type Result = ResponseActFuture<Self, Result<Vec<Delivery>, BrokerError>>;
    fn handle(&mut self, pull: Pull, ctx: &mut Context<Self>) -> Self::Result {
        if self.retired {
            return Box::pin(fut::ready(Err(BrokerError::Closed)));
        }
        guard(self, ctx, "Pull", |act, _| act.injector.maybe_fail());
        self.connect(ctx);
        // Before the first connection, a failed attempt is what tells.
        let up = self.conn.as_ref().map(|(s, _)| s.connected());
        if let Some(down) = up.and_then(|up| self.outage.note(up)) {
            return Box::pin(fut::ready(Err(self.down(down, ctx))));
        }
        let Some((stream, consumer)) = self.conn.clone() else {
            if self.connecting {
                // The first pulls come while the connection is still being made: wait a
                // little, as a pull waits for messages, rather than report an error.
                let nap = tokio::time::sleep(pull.wait.min(CONNECTING_NAP));
                return Box::pin(
                    async move {
                        nap.await;
                        Ok(Vec::new())
                    }
                    .into_actor(self),
                );
            }
            let e = BrokerError::Unavailable("not connected to JetStream".into());
            return Box::pin(fut::ready(Err(e)));
        };
        let room = self.leases.room(self.config.max_in_flight);
        if room == 0 {
            // Every lease this instance may hold is out: wait for a settlement to free
            // one, as a pull waits for messages.
            let freed = self.room.freed(pull.wait);
            return Box::pin(
                async move {
                    freed.await;
                    Ok(Vec::new())
                }
                .into_actor(self),
            );
        }
        let max_deliveries = self.config.consumer.max_deliveries;
        let max = pull.max.min(room);
        let fetch = async move {
            let mut fetched = consumer.fetch(max, pull.wait).await?;
            let unfit = screen(&mut fetched, max_deliveries);
            let unfit = dead_letter_unfit(stream, unfit).await;
            Ok::<_, JetStreamError>((fetched, unfit))
        };
        Box::pin(fetch.into_actor(self).map(|res, act, _| match res {
            Ok((fetched, unfit)) => {
                remote::count("JetStream", &act.link.metrics, &unfit);
                Ok(act.leases.admit(fetched))
            }
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }))
    }
}

/// Sends each verdict to the server and answers once every one is sent, so that the
/// shutdown's wait for the Acker covers them. JetStream's plain acks carry no answer, so
/// none is reported stale; with `confirm_acks`, an ack the server does not confirm is.
impl Handler<Settle> for JetStreamBroker {
    type Result = ResponseFuture<Settled>;
    fn handle(&mut self, settle: Settle, _: &mut Context<Self>) -> Self::Result {
        let mut sends = Vec::with_capacity(settle.0.len());
        for s in settle.0 {
            let Some(handle) = self.leases.take(&s.tag) else {
                continue;
            };
            let kind = match s.verdict {
                Verdict::Ack if self.config.confirm_acks => {
                    sends.push(Box::pin(confirmed_ack(handle, s)) as Sending);
                    continue;
                }
                Verdict::Ack => AckKind::Ack,
                Verdict::Nack { delay } => AckKind::Nak(Some(delay)),
                Verdict::Release => AckKind::Nak(None),
                Verdict::DeadLetter => match &self.conn {
                    Some((stream, _)) => {
                        let copy = dead_letter(stream.clone(), handle);
                        sends.push(Box::pin(async move {
                            copy.await;
                            None
                        }));
                        continue;
                    }
                    // Without a connection the message cannot be copied: leave it to
                    // a later delivery, which dead-letters it again.
                    None => AckKind::Nak(None),
                },
            };
            sends.push(Box::pin(async move {
                settle_one(handle, kind).await;
                None
            }));
        }
        self.room.free();
        Box::pin(async move {
            Settled {
                stale: join_all(sends).await.into_iter().flatten().collect(),
            }
        })
    }
}

/// One settlement on its way to the server; a confirmed ack that failed comes back.
type Sending = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Settlement>>>>;

/// Acks and waits for the server's confirmation; without one, the settlement is stale.
async fn confirmed_ack(handle: jetstream::Message, s: Settlement) -> Option<Settlement> {
    match handle.double_ack().await {
        Ok(()) => None,
        Err(e) => {
            warn!("The server did not confirm an ack, so it is not counted: {e}");
            Some(s)
        }
    }
}

/// Tells the server the deliveries are still being worked on.
impl Handler<Extend> for JetStreamBroker {
    type Result = ();
    fn handle(&mut self, ext: Extend, _: &mut Context<Self>) {
        for tag in ext.tags {
            if let Some(handle) = self.leases.get(&tag) {
                actix_rt::spawn(settle_one(handle.clone(), AckKind::Progress));
            }
        }
    }
}

/// Asks the server what the consumer has not yet had acked, and counts what the stream
/// stored since the last question as published.
impl Handler<Pending> for JetStreamBroker {
    type Result = ResponseActFuture<Self, Result<u64, BrokerError>>;
    fn handle(&mut self, _: Pending, _: &mut Context<Self>) -> Self::Result {
        let Some((stream, mut consumer)) = self.conn.clone() else {
            let e = BrokerError::Unavailable("not connected to JetStream".into());
            return Box::pin(fut::ready(Err(e)));
        };
        let ask = async move {
            let pending = consumer.pending().await?;
            let last = stream.state().await?.last_sequence;
            Ok::<_, JetStreamError>((pending, last))
        };
        Box::pin(ask.into_actor(self).map(|res, act, _| {
            let (pending, last) = res.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            let before = act.counted_to.replace(last).unwrap_or(last);
            Metrics::add(&act.link.metrics.published, last.saturating_sub(before));
            Ok(pending)
        }))
    }
}

/// Nothing to let go of at shutdown: the Acker releases what is in flight, and the rest
/// stays with the server.
impl Handler<Shutdown> for JetStreamBroker {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {}
}

/// Describes the adapter for the live dump.
impl Handler<Probe> for JetStreamBroker {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = match &self.conn {
            _ if self.retired => "retired",
            Some((stream, _)) if stream.connected() => "connected",
            Some(_) => "reconnecting",
            None => "connecting",
        };
        MessageResult(Probed::new(state, &[("leased", self.leases.len())]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    /// A request whose server answer never comes, as when it was lost with the
    /// connection, still ends soon after its expiry, with what was delivered before.
    #[tokio::test(start_paused = true)]
    async fn a_request_whose_answer_was_lost_ends_with_what_it_delivered() {
        let delivered = futures_util::stream::iter([1, 2]).chain(futures_util::stream::pending());
        let read = until(delivered, FETCH_EXPIRY + ANSWER_GRACE).collect::<Vec<i32>>();
        // Time is paused: the hour passes at once if the request is never given up on.
        let got = tokio::time::timeout(Duration::from_secs(3600), read).await;
        assert_eq!(got.ok(), Some(vec![1, 2]));
    }
}

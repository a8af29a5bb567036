//! Google Cloud Pub/Sub, the talk's own broker: the subscription the service consumes and
//! the publishing into its topic.
//!
//! Every instance that names the same subscription shares its work. The adapter pulls
//! synchronously, so that it leases only what the pipeline has room for, and settles
//! with `acknowledge` and `modifyAckDeadline`. A subscription's dead-letter policy is what
//! makes Pub/Sub count `deliveryAttempt`, so one is required. It uses the emulator named
//! by `PUBSUB_EMULATOR_HOST` when that is set, and Google's default credentials
//! otherwise. Everything here goes through `gcloud-pubsub`; no gRPC is written by hand.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, DeadLetterPolicy, ModifyAckDeadlineRequest, PubsubMessage, PullRequest,
};
use gcloud_pubsub::client::{Client, ClientConfig};
use gcloud_pubsub::publisher::{Awaiter, Publisher, PublisherConfig};
use gcloud_pubsub::subscription::SubscriptionConfig;
use thiserror::Error;
use tracing::{info, warn};

use super::remote::{self, screen, Leases, Unfit};
use super::{BrokerError, Extend, Outage, Pending, Publish, Pull, Room, Settle, Settled, Verdict};
use crate::faults::Injector;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{Probe, Probed, Shutdown};
use crate::supervision::{fail, guard, note_restart, Child, FailureKind, Link};

/// The most messages one pull or one publish request carries: Pub/Sub's own limit.
const MAX_BATCH: usize = 1000;

/// Pub/Sub's bounds on an ack deadline, in seconds.
const DEADLINE_BOUNDS: (i32, i32) = (10, 600);

/// Pub/Sub's bounds on a dead-letter policy's delivery attempts.
const ATTEMPT_BOUNDS: (u32, u32) = (5, 100);

/// How the report's `published` and `pending_at_exit` are taken: Pub/Sub tells a
/// subscriber neither.
pub const COUNTS: &str = "published: the first deliveries (deliveryAttempt 1) of messages \
    this instance received; pending_at_exit: the deliveries it still held. Pub/Sub tells a \
    subscriber no backlog, so they balance acked + dead_lettered only when this instance \
    saw and settled every message";

/// Why Pub/Sub could not do what was asked.
#[derive(Debug, Error)]
pub enum PubSubError {
    #[error("{flag} must be projects/PROJECT/{kind}/NAME, not {given:?}")]
    BadName {
        flag: &'static str,
        kind: &'static str,
        given: String,
    },
    #[error("cannot connect to pub/sub: {0}")]
    Connect(String),
    #[error("{0} does not exist (--create makes it)")]
    Missing(String),
    #[error(
        "subscription {0} has no dead-letter policy, so pub/sub counts no delivery attempts \
         (--create makes one)"
    )]
    NoDeadLetterPolicy(String),
    #[error("cannot create {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("cannot read {name}: {reason}")]
    Read { name: String, reason: String },
    #[error("cannot publish to {topic}: {reason}")]
    Publish { topic: String, reason: String },
    #[error("cannot pull from {subscription}: {reason}")]
    Pull {
        subscription: String,
        reason: String,
    },
    #[error("cannot settle deliveries of {subscription}: {reason}")]
    Settle {
        subscription: String,
        reason: String,
    },
}

/// A topic's or a subscription's full name: `projects/P/topics/T` or
/// `projects/P/subscriptions/S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub project: String,
    pub id: String,
    kind: &'static str,
}

impl Name {
    /// Reads a topic's full name, as `flag` gave it.
    pub fn topic(flag: &'static str, given: &str) -> Result<Self, PubSubError> {
        Self::parse(flag, "topics", given)
    }

    /// Reads a subscription's full name, as `flag` gave it.
    pub fn subscription(flag: &'static str, given: &str) -> Result<Self, PubSubError> {
        Self::parse(flag, "subscriptions", given)
    }

    fn parse(flag: &'static str, kind: &'static str, given: &str) -> Result<Self, PubSubError> {
        let bad = || PubSubError::BadName {
            flag,
            kind,
            given: given.to_string(),
        };
        let parts: Vec<&str> = given.split('/').collect();
        let [first, project, k, id] = parts[..] else {
            return Err(bad());
        };
        // Pub/Sub's own rule: three to 255 characters, starting with a letter.
        let id_ok = (3..=255).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_alphabetic())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b));
        if first != "projects" || k != kind || project.is_empty() || !id_ok {
            return Err(bad());
        }
        Ok(Self {
            project: project.to_string(),
            id: id.to_string(),
            kind,
        })
    }

    /// The topic beside this one, or under this subscription's name, with `suffix`.
    fn sibling(&self, kind: &'static str, suffix: &str) -> Self {
        Self {
            project: self.project.clone(),
            id: format!("{}{suffix}", self.id),
            kind,
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/{}/{}", self.project, self.kind, self.id)
    }
}

/// A client for `project`: the emulator's when `PUBSUB_EMULATOR_HOST` is set, Google's
/// with the default credentials otherwise.
async fn client(project: &str) -> Result<Client, PubSubError> {
    let connect = |e: &dyn fmt::Display| PubSubError::Connect(e.to_string());
    let mut config = ClientConfig {
        project_id: Some(project.to_string()),
        ..ClientConfig::default()
    };
    if std::env::var_os("PUBSUB_EMULATOR_HOST").is_none() {
        config = config.with_auth().await.map_err(|e| connect(&e))?;
    }
    Client::new(config).await.map_err(|e| connect(&e))
}

/// Whether an answer says that what was asked for exists already.
fn exists_already(status: &gcloud_gax::grpc::Status) -> bool {
    status.code() == Code::AlreadyExists
}

/// What a subscription is and how it counts deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    pub name: Name,
    /// The topic the subscription reads, when it must be created; by default the topic
    /// of the subscription's own name.
    pub topic: Option<Name>,
    /// How long a delivery is leased before Pub/Sub redelivers it.
    pub ack_deadline: Duration,
    /// Deliveries the service allows a message; the dead-letter policy allows one more
    /// (see `screen`).
    pub max_deliveries: u32,
}

impl SubscriptionSpec {
    /// The topic the subscription reads, when it is to be created.
    pub fn topic(&self) -> Name {
        self.topic
            .clone()
            .unwrap_or_else(|| self.name.sibling("topics", ""))
    }

    /// The dead-letter topic `--create` makes, and its subscription, which keeps the
    /// dead letters: a topic with no subscription drops what it is sent.
    pub fn dead_letters(&self) -> (Name, Name) {
        let topic = self.topic();
        (
            topic.sibling("topics", "-dead-letters"),
            topic.sibling("subscriptions", "-dead-letters"),
        )
    }
}

/// A topic open for publishing.
pub struct Topic {
    name: Name,
    publisher: Publisher,
}

impl Topic {
    /// Connects and finds the topic, or creates it when `create` is set. With a
    /// subscription to create as well, messages published next are kept for it.
    pub async fn open(name: Name, create: Option<&SubscriptionSpec>) -> Result<Self, PubSubError> {
        let client = client(&name.project).await?;
        let topic = client.topic(&name.to_string());
        match create {
            Some(spec) => create_all(&client, &name, spec).await?,
            None => {
                let exists = topic.exists(None).await.map_err(|e| PubSubError::Read {
                    name: name.to_string(),
                    reason: e.message().to_string(),
                })?;
                if !exists {
                    return Err(PubSubError::Missing(format!("topic {name}")));
                }
            }
        }
        // Up to a full request's worth of messages go out together, and a lone one
        // waits no longer than a few milliseconds for company.
        let publisher = topic.new_publisher(Some(PublisherConfig {
            workers: 4,
            flush_interval: Duration::from_millis(5),
            bundle_size: MAX_BATCH,
            retry_setting: None,
        }));
        Ok(Self { name, publisher })
    }

    /// Sends one message; the answer says when Pub/Sub has stored it.
    pub async fn send(&self, message: &Message) -> Result<Sent, PubSubError> {
        let data = serde_json::to_vec(message).map_err(|e| PubSubError::Publish {
            topic: self.name.to_string(),
            reason: e.to_string(),
        })?;
        let awaiter = self
            .publisher
            .publish(PubsubMessage {
                data,
                ..Default::default()
            })
            .await;
        Ok(Sent {
            awaiter,
            topic: self.name.to_string(),
        })
    }

    /// Sends what is still bundled and stops the publisher's workers.
    pub async fn close(mut self) {
        self.publisher.shutdown().await;
    }
}

/// A message sent to a topic and not yet confirmed.
pub struct Sent {
    awaiter: Awaiter,
    topic: String,
}

impl Sent {
    /// Waits for Pub/Sub's answer.
    pub async fn confirmed(self) -> Result<(), PubSubError> {
        self.awaiter
            .get()
            .await
            .map(|_| ())
            .map_err(|e| PubSubError::Publish {
                topic: self.topic,
                reason: e.message().to_string(),
            })
    }
}

/// Creates the topic, the dead-letter topic with a subscription that keeps its
/// messages, and the subscription with its dead-letter policy; what exists is left
/// alone.
async fn create_all(
    client: &Client,
    topic: &Name,
    spec: &SubscriptionSpec,
) -> Result<(), PubSubError> {
    let fail = |name: &Name, e: gcloud_gax::grpc::Status| PubSubError::Create {
        name: name.to_string(),
        reason: e.message().to_string(),
    };
    let (dlq_topic, dlq_sub) = spec.dead_letters();
    for name in [topic, &dlq_topic] {
        match client.topic(&name.to_string()).create(None, None).await {
            Err(e) if !exists_already(&e) => return Err(fail(name, e)),
            _ => {}
        }
    }
    let deadline = i32::try_from(spec.ack_deadline.as_secs())
        .unwrap_or(i32::MAX)
        .clamp(DEADLINE_BOUNDS.0, DEADLINE_BOUNDS.1);
    let keep = SubscriptionConfig {
        ack_deadline_seconds: DEADLINE_BOUNDS.1,
        ..Default::default()
    };
    let main = SubscriptionConfig {
        ack_deadline_seconds: deadline,
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: dlq_topic.to_string(),
            // One more than the service allows: a message whose lease ran out on its
            // last allowed delivery comes back once more, to be dead-lettered by the
            // service, which counts it.
            max_delivery_attempts: (spec.max_deliveries.saturating_add(1))
                .clamp(ATTEMPT_BOUNDS.0, ATTEMPT_BOUNDS.1)
                as i32,
        }),
        ..Default::default()
    };
    for (name, on, config) in [(&dlq_sub, &dlq_topic, keep), (&spec.name, topic, main)] {
        let sub = client.subscription(&name.to_string());
        match sub.create(&on.to_string(), config, None).await {
            Err(e) if !exists_already(&e) => return Err(fail(name, e)),
            _ => {}
        }
    }
    Ok(())
}

/// One delivery as Pub/Sub made it.
pub type Fetched = super::remote::Fetched<Handle>;

/// What the adapter keeps of a delivery until it is settled.
#[derive(Debug, Clone)]
pub struct Handle {
    ack_id: String,
    /// The payload as it came, for a copy to the dead letters.
    data: Vec<u8>,
    attempt: u32,
}

/// A subscription open for pulling.
#[derive(Clone)]
pub struct Subscription {
    client: Client,
    name: String,
    topic: Publisher,
    dead_letters: Publisher,
    dead_letters_name: String,
}

impl Subscription {
    /// Connects and finds the subscription, or creates it and its topics when `create`
    /// is set. It must have a dead-letter policy, or Pub/Sub counts no attempts.
    pub async fn open(spec: &SubscriptionSpec, create: bool) -> Result<Self, PubSubError> {
        let client = client(&spec.name.project).await?;
        if create {
            create_all(&client, &spec.topic(), spec).await?;
        }
        let name = spec.name.to_string();
        let sub = client.subscription(&name);
        let (topic, config) = match sub.config(None).await {
            Ok(c) => c,
            Err(e) if e.code() == Code::NotFound => {
                return Err(PubSubError::Missing(format!("subscription {name}")))
            }
            Err(e) => {
                return Err(PubSubError::Read {
                    name,
                    reason: e.message().to_string(),
                })
            }
        };
        let Some(policy) = config.dead_letter_policy else {
            return Err(PubSubError::NoDeadLetterPolicy(name));
        };
        // Publishers for the topic, and for the dead letters, which get one request each
        // time, awaited; neither bundles.
        let publisher = |topic: &str| client.topic(topic).new_publisher(None);
        Ok(Self {
            topic: publisher(&topic),
            dead_letters: publisher(&policy.dead_letter_topic),
            dead_letters_name: policy.dead_letter_topic,
            client,
            name,
        })
    }

    /// Takes up to `max` deliveries that are there now, without waiting.
    pub async fn pull(&self, max: usize) -> Result<Vec<Fetched>, PubSubError> {
        #[allow(deprecated)]
        let request = PullRequest {
            subscription: self.name.clone(),
            // A pull that waited would hold whatever arrived for it even after the
            // caller gave up on it; the adapter naps between empty pulls instead.
            return_immediately: true,
            max_messages: max.min(MAX_BATCH) as i32,
        };
        let got = self
            .client
            .subscription(&self.name)
            .get_client()
            .pull(request, None)
            .await
            .map_err(|e| PubSubError::Pull {
                subscription: self.name.clone(),
                reason: e.message().to_string(),
            })?
            .into_inner()
            .received_messages;
        Ok(got
            .into_iter()
            .filter_map(|r| {
                let m = r.message?;
                let attempt = u32::try_from(r.delivery_attempt).unwrap_or(0).max(1);
                let published_at = m.publish_time.map_or(SystemTime::now(), |t| {
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(t.seconds).unwrap_or(0),
                            u32::try_from(t.nanos).unwrap_or(0),
                        )
                });
                Some(Fetched {
                    message: crate::message::parse_line(&m.data).map_err(|e| e.to_string()),
                    attempt,
                    published_at,
                    handle: Handle {
                        ack_id: r.ack_id,
                        data: m.data,
                        attempt,
                    },
                })
            })
            .collect())
    }

    /// Acknowledges deliveries: Pub/Sub removes their messages.
    pub async fn ack(&self, ack_ids: Vec<String>) -> Result<(), PubSubError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let request = AcknowledgeRequest {
            subscription: self.name.clone(),
            ack_ids,
        };
        let sub = self.client.subscription(&self.name);
        sub.get_client()
            .acknowledge(request, None)
            .await
            .map(|_| ())
            .map_err(|e| self.settle_error(&e))
    }

    /// Moves the deliveries' deadlines to `seconds` from now: 0 redelivers them at once.
    pub async fn modify(&self, ack_ids: Vec<String>, seconds: i32) -> Result<(), PubSubError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let request = ModifyAckDeadlineRequest {
            subscription: self.name.clone(),
            ack_ids,
            ack_deadline_seconds: seconds.clamp(0, DEADLINE_BOUNDS.1),
        };
        let sub = self.client.subscription(&self.name);
        sub.get_client()
            .modify_ack_deadline(request, None)
            .await
            .map(|_| ())
            .map_err(|e| self.settle_error(&e))
    }

    /// Publishes copies of the deliveries to the dead-letter topic and waits until they
    /// are stored, then acknowledges the originals. A copy that fails leaves the
    /// originals to a later delivery instead: acknowledged first, they would be lost.
    pub async fn dead_letter(&self, handles: Vec<Handle>) -> Result<(), PubSubError> {
        if handles.is_empty() {
            return Ok(());
        }
        let copies = handles
            .iter()
            .map(|h| PubsubMessage {
                data: h.data.clone(),
                attributes: HashMap::from([
                    ("mandrill_subscription".to_string(), self.name.clone()),
                    (
                        "mandrill_delivery_attempt".to_string(),
                        h.attempt.to_string(),
                    ),
                ]),
                ..Default::default()
            })
            .collect();
        self.dead_letters
            .publish_immediately(copies, None)
            .await
            .map_err(|e| PubSubError::Publish {
                topic: self.dead_letters_name.clone(),
                reason: e.message().to_string(),
            })?;
        self.ack(handles.into_iter().map(|h| h.ack_id).collect())
            .await
    }

    fn settle_error(&self, e: &gcloud_gax::grpc::Status) -> PubSubError {
        PubSubError::Settle {
            subscription: self.name.clone(),
            reason: e.message().to_string(),
        }
    }
}

impl Subscription {
    /// Publishes messages to the subscription's topic and waits until they are stored.
    pub async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        for chunk in messages.chunks(MAX_BATCH) {
            let batch = chunk
                .iter()
                .map(|m| PubsubMessage {
                    data: serde_json::to_vec(m).unwrap_or_default(),
                    ..Default::default()
                })
                .collect();
            self.topic
                .publish_immediately(batch, None)
                .await
                .map_err(|e| PubSubError::Publish {
                    topic: format!("the topic of {}", self.name),
                    reason: e.message().to_string(),
                })?;
        }
        Ok(())
    }
}

/// How long an empty pull, or one made while connecting or with no room, naps before it
/// answers; the Consumer pulls again at once.
const NAP: Duration = Duration::from_millis(50);

/// What the Pub/Sub adapter connects to and how much it leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    pub subscription: SubscriptionSpec,
    /// Create the topics and the subscription when they are missing.
    pub create: bool,
    /// Deliveries this instance holds at once: Pub/Sub's flow control is the client's.
    pub max_in_flight: usize,
    /// How long Pub/Sub may stay unreachable before the adapter fails with
    /// `broker-down`.
    pub down_timeout: Duration,
}

/// The adapter: pulls from a subscription, settles with Pub/Sub, and keeps each
/// delivery's ack id under an `AckId` until it is settled.
///
/// The messages and the count of their deliveries are Pub/Sub's; a restart of this actor
/// keeps the client and the handles, and the client wins a lost connection back itself.
pub struct PubSubBroker {
    link: Link,
    config: PubSubConfig,
    injector: Injector,
    retired: bool,
    conn: Option<Subscription>,
    connecting: bool,
    leases: Leases<Handle>,
    outage: Outage,
    room: Room,
}

impl PubSubBroker {
    pub fn new(link: Link, config: PubSubConfig, injector: Injector) -> Self {
        Self {
            outage: Outage::new(config.down_timeout),
            room: Room::default(),
            link,
            config,
            injector,
            retired: false,
            conn: None,
            connecting: false,
            leases: Leases::default(),
        }
    }

    /// Opens the subscription, once at a time; a failure is tried again on the next pull.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.conn.is_some() || self.connecting {
            return;
        }
        self.connecting = true;
        let spec = self.config.subscription.clone();
        let create = self.config.create;
        let open = async move { Subscription::open(&spec, create).await };
        ctx.spawn(open.into_actor(self).map(|res, act, ctx| {
            act.connecting = false;
            match res {
                Ok(sub) => {
                    info!("Consuming {}", act.config.subscription.name);
                    act.conn = Some(sub);
                }
                Err(e) => {
                    warn!("Cannot reach Pub/Sub: {e}");
                    act.note_reach(false, ctx);
                }
            }
        }));
    }

    /// Notes whether Pub/Sub answered, and fails with `broker-down` once it has not for
    /// too long.
    fn note_reach(&mut self, reachable: bool, ctx: &mut Context<Self>) {
        if let Some(down) = self.outage.note(reachable) {
            let reason = format!("Pub/Sub unreachable for {}s", down.as_secs());
            fail(self, ctx, FailureKind::BrokerDown, &reason);
        }
    }
}

/// Dead-letters what `screen` took out of a pull, and says what it was; if the copy
/// fails, nothing was taken, and the deliveries come back when their leases run out.
async fn dead_letter_unfit(sub: &Subscription, unfit: Vec<(Unfit, Handle)>) -> Vec<Unfit> {
    let (why, handles): (Vec<_>, Vec<_>) = unfit.into_iter().unzip();
    match sub.dead_letter(handles).await {
        Ok(()) => why,
        Err(e) => {
            warn!("Cannot dead-letter Pub/Sub deliveries, so they stay for redelivery: {e}");
            Vec::new()
        }
    }
}

/// Whole seconds, rounded up: Pub/Sub's deadlines are in seconds, and a shorter one than
/// asked would redeliver early.
fn seconds(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

impl Actor for PubSubBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        self.connect(ctx);
    }
}

impl Child for PubSubBroker {
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

crate::restart_on_request!(PubSubBroker);

impl Supervised for PubSubBroker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A restart drops the context's futures, a connection attempt among them.
        self.connecting = false;
        note_restart(self);
    }
}

/// Publishes into the subscription's topic, for the stdin source.
impl Handler<Publish> for PubSubBroker {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        self.connect(ctx);
        let sub = self.conn.clone();
        Box::pin(
            async move {
                let Some(sub) = sub else {
                    return Err(format!(
                        "{} messages not published: not connected",
                        msg.0.len()
                    ));
                };
                sub.publish(&msg.0).await.map_err(|e| e.to_string())
            }
            .into_actor(self)
            .map(|res, _, _| {
                if let Err(e) = res {
                    warn!("Cannot publish to Pub/Sub: {e}");
                }
            }),
        )
    }
}

impl Handler<Pull> for PubSubBroker {
    type Result = ResponseActFuture<Self, Result<Vec<Delivery>, BrokerError>>;
    fn handle(&mut self, pull: Pull, ctx: &mut Context<Self>) -> Self::Result {
        if self.retired {
            return Box::pin(fut::ready(Err(BrokerError::Closed)));
        }
        guard(self, ctx, "Pull", |act, _| act.injector.maybe_fail());
        self.connect(ctx);
        let room = self.leases.room(self.config.max_in_flight);
        let nap = tokio::time::sleep(pull.wait.min(NAP));
        let Some(sub) = self.conn.clone() else {
            if !self.connecting {
                let e = BrokerError::Unavailable("not connected to Pub/Sub".into());
                return Box::pin(fut::ready(Err(e)));
            }
            // Still connecting: wait a little, as a pull waits for messages, rather than
            // report an error.
            return Box::pin(
                async move {
                    nap.await;
                    Ok(Vec::new())
                }
                .into_actor(self),
            );
        };
        if room == 0 {
            // Every lease this instance may hold is out: wait for a settlement to free
            // one.
            let freed = self.room.freed(pull.wait);
            return Box::pin(
                async move {
                    freed.await;
                    Ok(Vec::new())
                }
                .into_actor(self),
            );
        }
        let max_deliveries = self.config.subscription.max_deliveries;
        let max = pull.max.min(room);
        let fetch = async move {
            let mut fetched = sub.pull(max).await?;
            // Pub/Sub tells a subscriber no backlog: what it published, as far as this
            // instance can tell, is what it delivered here for the first time.
            let firsts = fetched.iter().filter(|f| f.attempt == 1).count() as u64;
            let unfit = screen(&mut fetched, max_deliveries);
            let unfit = dead_letter_unfit(&sub, unfit).await;
            if fetched.is_empty() && unfit.is_empty() {
                nap.await;
            }
            Ok::<_, PubSubError>((fetched, unfit, firsts))
        };
        Box::pin(fetch.into_actor(self).map(|res, act, ctx| {
            act.note_reach(res.is_ok(), ctx);
            match res {
                Ok((fetched, unfit, firsts)) => {
                    let m = &act.link.metrics;
                    Metrics::add(&m.published, firsts);
                    remote::count("Pub/Sub", m, &unfit);
                    Ok(act.leases.admit(fetched))
                }
                Err(e) => {
                    warn!("{e}");
                    Err(BrokerError::Unavailable(e.to_string()))
                }
            }
        }))
    }
}

/// Sends the verdicts to Pub/Sub, one request per kind, and answers once every one is
/// answered, so that the shutdown's wait for the Acker covers them. An ack of a delivery
/// whose deadline passed is accepted and may still be redelivered, so none is reported
/// stale: the save is idempotent, and the restart guard decides a second restart.
impl Handler<Settle> for PubSubBroker {
    type Result = ResponseFuture<Settled>;
    fn handle(&mut self, settle: Settle, _: &mut Context<Self>) -> Self::Result {
        let mut acks = Vec::new();
        let mut deadlines: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        let mut dead = Vec::new();
        for s in settle.0 {
            let Some(handle) = self.leases.take(&s.tag) else {
                continue;
            };
            match s.verdict {
                Verdict::Ack => acks.push(handle.ack_id),
                Verdict::Nack { delay } => deadlines
                    .entry(seconds(delay))
                    .or_default()
                    .push(handle.ack_id),
                Verdict::Release => deadlines.entry(0).or_default().push(handle.ack_id),
                Verdict::DeadLetter => dead.push(handle),
            }
        }
        self.room.free();
        let Some(sub) = self.conn.clone() else {
            // Handles exist only once connected, and the connection is kept.
            return Box::pin(async { Settled::default() });
        };
        Box::pin(async move {
            use futures_util::FutureExt;
            let mut sends = vec![
                FutureExt::boxed_local(sub.ack(acks)),
                FutureExt::boxed_local(sub.dead_letter(dead)),
            ];
            for (secs, ids) in deadlines {
                sends.push(FutureExt::boxed_local(sub.modify(ids, secs)));
            }
            for res in futures_util::future::join_all(sends).await {
                if let Err(e) = res {
                    // The deliveries' deadlines run out and Pub/Sub redelivers them.
                    warn!("{e}");
                }
            }
            Settled::default()
        })
    }
}

/// Tells Pub/Sub the deliveries are still being worked on.
impl Handler<Extend> for PubSubBroker {
    type Result = ();
    fn handle(&mut self, ext: Extend, _: &mut Context<Self>) {
        let Some(sub) = self.conn.clone() else { return };
        let ids: Vec<String> = ext
            .tags
            .iter()
            .filter_map(|t| self.leases.get(t).map(|h| h.ack_id.clone()))
            .collect();
        actix_rt::spawn(async move {
            if let Err(e) = sub.modify(ids, seconds(ext.by)).await {
                warn!("Cannot extend Pub/Sub leases: {e}");
            }
        });
    }
}

/// The deliveries this instance holds: Pub/Sub tells a subscriber no backlog.
impl Handler<Pending> for PubSubBroker {
    type Result = Result<u64, BrokerError>;
    fn handle(&mut self, _: Pending, _: &mut Context<Self>) -> Self::Result {
        Ok(self.leases.len() as u64)
    }
}

/// Nothing to let go of at shutdown: the Acker releases what is in flight, and the rest
/// stays with Pub/Sub.
impl Handler<Shutdown> for PubSubBroker {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {}
}

/// Describes the adapter for the live dump.
impl Handler<Probe> for PubSubBroker {
    type Result = MessageResult<Probe>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let state = match () {
            _ if self.retired => "retired",
            _ if self.conn.is_some() => "connected",
            _ => "connecting",
        };
        MessageResult(Probed::new(state, &[("leased", self.leases.len())]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_whole_or_refused() {
        let n = Name::subscription("--subscription", "projects/p1/subscriptions/mayhem").unwrap();
        assert_eq!((n.project.as_str(), n.id.as_str()), ("p1", "mayhem"));
        assert_eq!(n.to_string(), "projects/p1/subscriptions/mayhem");
        for bad in [
            "mayhem",
            "projects/p1/topics/mayhem",
            "projects//subscriptions/mayhem",
            "projects/p1/subscriptions/ab",
            "projects/p1/subscriptions/1abc",
            "projects/p1/subscriptions/a b c",
            "projects/p1/subscriptions/mayhem/extra",
        ] {
            let e = Name::subscription("--subscription", bad).unwrap_err();
            assert!(e.to_string().starts_with("--subscription must be"), "{e}");
        }
    }

    #[test]
    fn created_names_follow_the_subscription() {
        let spec = SubscriptionSpec {
            name: Name::subscription("s", "projects/p/subscriptions/work").unwrap(),
            topic: None,
            ack_deadline: Duration::from_secs(10),
            max_deliveries: 5,
        };
        assert_eq!(spec.topic().to_string(), "projects/p/topics/work");
        let (t, s) = spec.dead_letters();
        assert_eq!(t.to_string(), "projects/p/topics/work-dead-letters");
        assert_eq!(s.to_string(), "projects/p/subscriptions/work-dead-letters");
    }

    #[test]
    fn deadlines_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_secs(2)), 2);
        assert_eq!(seconds(Duration::from_millis(2500)), 3);
    }
}

//! Collaborators for actor unit tests: sinks that record what an actor sends, a fake
//! store that answers on the event loop (so paused time stays deterministic), and
//! builders for deliveries and links.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use crate::actors::acker::Outcomes;
use crate::actors::protocol::StepError;
use crate::message::{AckId, Delivery, InstanceName, Message as PubSubMessage};
use crate::metrics::Metrics;
use crate::store::{
    memory::MemoryStore, Attempt, AttemptOutcome, ClaimRestarts, Claimed, CloseStore, LoadRestarts,
    RecordAttempts, ReleaseClaims, SaveBatch, Store, StoreError,
};
use crate::supervision::policy::{ChildPolicy, RestartType};
use crate::supervision::{BackoffFor, ChildExited, ChildFailed, Link};

/// Records every `M` it receives.
pub struct Sink<M> {
    got: Arc<Mutex<Vec<M>>>,
}

impl<M: Unpin + 'static> Actor for Sink<M> {
    type Context = Context<Self>;
}

/// Records the message and answers with the default answer, `()` for most.
impl<M> Handler<M> for Sink<M>
where
    M: Message + Send + Unpin + 'static,
    M::Result: Default + Send,
{
    type Result = MessageResult<M>;
    fn handle(&mut self, msg: M, _: &mut Context<Self>) -> Self::Result {
        self.got.lock().unwrap().push(msg);
        MessageResult(M::Result::default())
    }
}

/// What a sink has received so far.
pub struct Got<M>(Arc<Mutex<Vec<M>>>);

impl<M> Got<M> {
    pub fn take(&self) -> Vec<M> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub fn sink<M>() -> (Recipient<M>, Got<M>)
where
    M: Message + Send + Unpin + 'static,
    M::Result: Default + Send,
{
    let got = Arc::new(Mutex::new(Vec::new()));
    let addr = Sink { got: got.clone() }.start();
    (addr.recipient(), Got(got))
}

/// Answers every backoff question with no delay.
pub struct NoBackoff;

impl Actor for NoBackoff {
    type Context = Context<Self>;
}

impl Handler<BackoffFor> for NoBackoff {
    type Result = MessageResult<BackoffFor>;
    fn handle(&mut self, _: BackoffFor, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Duration::ZERO)
    }
}

/// A link whose supervisor is a sink, so tests can see `ChildFailed` reports, and which
/// owes no backoff. The policy is the default one, for a permanent child.
pub fn link() -> (Link, Got<ChildFailed>, Arc<Metrics>) {
    let (link, failed, _) = link_with(ChildPolicy {
        decider: Default::default(),
        restart: RestartType::Permanent,
    });
    let metrics = link.metrics.clone();
    (link, failed, metrics)
}

/// A link with `policy`, whose supervisor is a pair of sinks, and a deadline of one second.
pub fn link_with(policy: ChildPolicy) -> (Link, Got<ChildFailed>, Got<ChildExited>) {
    let (supervisor, failed) = sink();
    let (exited, exits) = sink();
    let link = Link {
        supervisor,
        exited,
        backoff: NoBackoff.start().recipient(),
        metrics: Arc::new(Metrics::default()),
        policy,
        failures: Default::default(),
        deadline: Duration::from_secs(1),
        slow: Duration::from_millis(100),
        panicked_at: Default::default(),
    };
    (link, failed, exits)
}

pub fn name(s: &str) -> InstanceName {
    InstanceName::parse(s).unwrap()
}

/// A first delivery of a fresh message for `host`, with tag `tag`.
pub fn delivery(tag: u64, host: &str) -> Delivery {
    Delivery {
        tag: AckId(tag),
        message: PubSubMessage::new(name(host)),
        attempt: 1,
        published_at: std::time::SystemTime::now(),
    }
}

/// A store on the event loop, optionally failing every call.
pub struct FakeStore {
    pub inner: MemoryStore,
    pub fail: Option<StoreError>,
    pub batches: Arc<Mutex<Vec<usize>>>,
    /// The successful restarts it was asked to record.
    pub restarts: Arc<Mutex<Vec<Attempt>>>,
}

impl FakeStore {
    pub fn new(fail: Option<StoreError>) -> Self {
        FakeStore {
            inner: MemoryStore::default(),
            fail,
            batches: Default::default(),
            restarts: Default::default(),
        }
    }

    /// Starts a fake store; returns it with the sizes of the batches it is asked to save.
    pub fn start(fail: Option<StoreError>) -> (Addr<FakeStore>, Arc<Mutex<Vec<usize>>>) {
        let store = Self::new(fail);
        let batches = store.batches.clone();
        (store.start(), batches)
    }

    fn check(&self) -> Result<(), StoreError> {
        self.fail.clone().map_or(Ok(()), Err)
    }
}

impl Actor for FakeStore {
    type Context = Context<Self>;
}

impl Handler<SaveBatch> for FakeStore {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, msg: SaveBatch, _: &mut Context<Self>) -> Self::Result {
        self.batches.lock().unwrap().push(msg.0.len());
        self.check()?;
        self.inner.save(&msg.0)
    }
}

impl Handler<RecordAttempts> for FakeStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: RecordAttempts, _: &mut Context<Self>) -> Self::Result {
        self.check()?;
        let restarted = msg
            .rows
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Restarted);
        self.restarts.lock().unwrap().extend(restarted.cloned());
        self.inner.record_attempts(&msg.context, &msg.rows)
    }
}

impl Handler<LoadRestarts> for FakeStore {
    type Result = Result<Vec<(InstanceName, i64)>, StoreError>;
    fn handle(&mut self, msg: LoadRestarts, _: &mut Context<Self>) -> Self::Result {
        self.check()?;
        self.inner.restarts_since(msg.since_ms, msg.now_ms)
    }
}

impl Handler<ClaimRestarts> for FakeStore {
    type Result = Result<Vec<Claimed>, StoreError>;
    fn handle(&mut self, msg: ClaimRestarts, _: &mut Context<Self>) -> Self::Result {
        self.check()?;
        self.inner.claim_restarts(&msg.claims, &msg.terms())
    }
}

impl Handler<ReleaseClaims> for FakeStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: ReleaseClaims, _: &mut Context<Self>) -> Self::Result {
        self.check()?;
        self.inner.release_claims(&msg.service, &msg.claims)
    }
}

/// Makes every later call fail with this error, or none.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FailWith(pub Option<StoreError>);

impl Handler<FailWith> for FakeStore {
    type Result = ();
    fn handle(&mut self, msg: FailWith, _: &mut Context<Self>) {
        self.fail = msg.0;
    }
}

impl Handler<CloseStore> for FakeStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: CloseStore, _: &mut Context<Self>) -> Self::Result {
        self.inner.close()
    }
}

/// Starts a supervised Saver over a fake store, with `injector` and seed 1.
pub fn start_saver(
    link: Link,
    acker: Recipient<Outcomes>,
    store: Addr<FakeStore>,
    config: crate::actors::saver::SaverConfig,
    injector: crate::faults::Injector,
) -> Addr<crate::actors::saver::Saver> {
    let rng = crate::faults::rng_for(Some(1), crate::faults::Purpose::SaveIo);
    actix::Supervisor::start(move |_| {
        crate::actors::saver::Saver::new(
            link,
            acker,
            store.clone().recipient(),
            store.recipient(),
            config,
            rng,
            injector,
        )
    })
}

/// The results of every outcome a sink of `Outcomes` has received, in order.
pub fn results(got: &Got<Outcomes>) -> Vec<Result<(), StepError>> {
    got.take()
        .into_iter()
        .flat_map(|o| o.outcomes)
        .map(|o| o.result.map_err(|e| *e))
        .collect()
}

/// The results of every outcome a sink of `Outcomes` has received, by delivery.
pub fn by_tag(got: &Got<Outcomes>) -> Vec<(AckId, Result<(), StepError>)> {
    let mut all: Vec<_> = got
        .take()
        .into_iter()
        .flat_map(|o| o.outcomes)
        .map(|o| (o.tag, o.result.map_err(|e| *e)))
        .collect();
    all.sort_by_key(|(tag, _)| *tag);
    all
}

/// Lets every ready actor run, under paused or real time alike.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

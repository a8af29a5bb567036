//! `Publisher`: the talk's simulated publisher.
//!
//! It makes messages for hosts named `cattle-` plus four random characters and hands them
//! to the subscription without ever waiting on their consumption. It stops after
//! `--messages N` or when the shutdown begins, and then closes the subscription's input.

use std::time::Duration;

use actix::prelude::*;
use rand::{rngs::SmallRng, Rng};
use tracing::info;

use crate::actors::protocol::StopIntake;
use crate::config::Injector;
use crate::message::{InstanceName, Message};
use crate::subscription::memory::{InputClosed, Publish};
use crate::supervision::{guard, note_restart, Child, Link};
use crate::FLOW;

/// How many messages an unpaced publisher makes before it yields to the event loop.
const CHUNK: u64 = 1024;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The publisher's pace and limit.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Zero publishes as fast as possible, yielding to the loop between chunks.
    pub delay: Duration,
    /// When set, each delay is `random() * delay`.
    pub jitter: bool,
    pub limit: Option<u64>,
}

pub struct Publisher {
    link: Link,
    publish: Recipient<Publish>,
    input_closed: Recipient<InputClosed>,
    config: PublisherConfig,
    rng: SmallRng,
    injector: Injector,
    /// Survive restarts: a restarted publisher must not publish its quota twice.
    sent: u64,
    stopped: bool,
}

impl Publisher {
    pub fn new(
        link: Link,
        publish: Recipient<Publish>,
        input_closed: Recipient<InputClosed>,
        config: PublisherConfig,
        rng: SmallRng,
        injector: Injector,
    ) -> Self {
        Self {
            link,
            publish,
            input_closed,
            config,
            rng,
            injector,
            sent: 0,
            stopped: false,
        }
    }

    fn make(&mut self) -> Message {
        let mut name = *b"cattle-xxxx";
        for c in &mut name[7..] {
            *c = ALPHABET[self.rng.random_range(0..ALPHABET.len())];
        }
        let name = std::str::from_utf8(&name).expect("ascii");
        // Ids come from the seeded stream too, so that `--seed` reproduces a whole run.
        Message {
            message_id: uuid::Builder::from_random_bytes(self.rng.random()).into_uuid(),
            instance_name: InstanceName::parse(name).expect("generated names are valid"),
        }
    }

    fn remaining(&self) -> u64 {
        self.config.limit.map_or(u64::MAX, |n| n - self.sent)
    }

    fn finish(&mut self) {
        if !self.stopped {
            self.stopped = true;
            info!("Publisher stopped after {} messages", self.sent);
            self.input_closed.do_send(InputClosed);
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        if self.remaining() == 0 {
            return self.finish();
        }
        self.injector.maybe_panic();
        let n = if self.config.delay.is_zero() {
            CHUNK.min(self.remaining())
        } else {
            1
        };
        let batch: Vec<Message> = (0..n).map(|_| self.make()).collect();
        for m in &batch {
            info!(target: FLOW, "Published {m}");
        }
        self.sent += n;
        self.publish.do_send(Publish(batch));
        self.schedule(ctx);
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let delay = if self.config.jitter {
            self.config.delay.mul_f64(self.rng.random::<f64>())
        } else {
            self.config.delay
        };
        if delay.is_zero() {
            // Yield, so that the rest of the pipeline runs between chunks.
            ctx.spawn(
                tokio::task::yield_now()
                    .into_actor(self)
                    .map(|_, act, ctx| act.guarded_tick(ctx)),
            );
        } else {
            ctx.run_later(delay, |act, ctx| act.guarded_tick(ctx));
        }
    }

    fn guarded_tick(&mut self, ctx: &mut Context<Self>) {
        guard(self, ctx, |act, ctx| act.tick(ctx));
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::supervision::hold_for_backoff(self, ctx);
        crate::supervision::after_backoff(ctx, |act, ctx| act.guarded_tick(ctx));
    }
}

impl Child for Publisher {
    const NAME: &'static str = "publisher";
    fn link(&self) -> &Link {
        &self.link
    }
}

crate::restart_on_request!(Publisher);

impl Supervised for Publisher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        note_restart(self);
    }
}

impl Handler<StopIntake> for Publisher {
    type Result = ();
    fn handle(&mut self, _: StopIntake, _: &mut Context<Self>) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{link, settle, sink, Got};

    struct Rig {
        published: Got<Publish>,
        closed: Got<InputClosed>,
        publisher: Addr<Publisher>,
    }

    fn rig(delay: Duration, limit: Option<u64>, seed: u64) -> Rig {
        let (link, _, _) = link();
        let (publish, published) = sink();
        let (input_closed, closed) = sink();
        let config = PublisherConfig {
            delay,
            jitter: false,
            limit,
        };
        let rng = crate::config::rng_for(Some(seed), "publisher");
        let injector = crate::config::Faults::default().injector("publisher", None);
        let publisher = actix::Supervisor::start(move |_| {
            Publisher::new(link, publish, input_closed, config, rng, injector)
        });
        Rig {
            published,
            closed,
            publisher,
        }
    }

    fn messages(got: &Got<Publish>) -> Vec<Message> {
        got.take().into_iter().flat_map(|p| p.0).collect()
    }

    #[actix_rt::test]
    async fn publishes_exactly_the_limit_then_closes_input() {
        let r = rig(Duration::ZERO, Some(2500), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ms = messages(&r.published);
        assert_eq!(ms.len(), 2500);
        assert_eq!(r.closed.len(), 1);
        for m in &ms {
            let name = m.instance_name.as_str();
            assert!(name.starts_with("cattle-") && name.len() == 11, "{name}");
            assert_eq!(m.message_id.get_version_num(), 4);
        }
    }

    #[actix_rt::test]
    async fn the_same_seed_publishes_the_same_messages() {
        let (a, b) = (
            rig(Duration::ZERO, Some(10), 9),
            rig(Duration::ZERO, Some(10), 9),
        );
        let c = rig(Duration::ZERO, Some(10), 10);
        settle().await;
        let (a, b, c) = (
            messages(&a.published),
            messages(&b.published),
            messages(&c.published),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[actix_rt::test]
    async fn a_fixed_delay_paces_publishing() {
        tokio::time::pause();
        let r = rig(Duration::from_secs(1), None, 1);
        settle().await;
        assert_eq!(messages(&r.published).len(), 1);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(messages(&r.published).len(), 2);
        r.publisher.send(StopIntake).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(messages(&r.published).is_empty());
        assert_eq!(r.closed.len(), 1);
    }
}

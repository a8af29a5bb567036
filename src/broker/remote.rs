//! What the remote adapters share: the deliveries they hold, each under an `AckId` mapped
//! to the broker's own handle, and what they take out of a pull before the pipeline sees
//! it.

use std::time::SystemTime;

use tracing::warn;

use crate::message::{AckId, Delivery, Message};
use crate::metrics::Metrics;
use crate::FastMap;

/// One delivery as the broker made it: the message, or why its payload is not one, and
/// the handle that settles it.
pub struct Fetched<H> {
    pub message: Result<Message, String>,
    /// 1 on the first delivery; the broker counts every one.
    pub attempt: u32,
    pub published_at: SystemTime,
    pub handle: H,
}

/// The deliveries an adapter holds, by tag, until they are settled.
pub struct Leases<H> {
    handles: FastMap<AckId, H>,
    next_tag: u64,
}

impl<H> Default for Leases<H> {
    fn default() -> Self {
        Self {
            handles: FastMap::default(),
            next_tag: 0,
        }
    }
}

impl<H> Leases<H> {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// How many more this instance may hold under `max`.
    pub fn room(&self, max: usize) -> usize {
        max.saturating_sub(self.handles.len())
    }

    pub fn get(&self, tag: &AckId) -> Option<&H> {
        self.handles.get(tag)
    }

    /// Gives back a delivery's handle to settle it; a tag settled once is gone.
    pub fn take(&mut self, tag: &AckId) -> Option<H> {
        self.handles.remove(tag)
    }

    /// Turns fetched messages into deliveries, keeping each handle under a tag.
    pub fn admit(&mut self, fetched: Vec<Fetched<H>>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(fetched.len());
        for f in fetched {
            let Ok(message) = f.message else { continue };
            self.next_tag += 1;
            let tag = AckId(self.next_tag);
            self.handles.insert(tag, f.handle);
            out.push(Delivery {
                tag,
                message,
                attempt: f.attempt,
                published_at: f.published_at,
            });
        }
        out
    }
}

/// What a pull gave that the pipeline never sees.
pub enum Unfit {
    /// The payload is not a message.
    Malformed(String),
    /// Delivered once more than allowed: the last allowed delivery's lease ran out.
    Expired(Message, u32),
}

/// Takes out of `fetched` what the pipeline must not see, each with the handle that
/// dead-letters it.
pub fn screen<H>(fetched: &mut Vec<Fetched<H>>, max_deliveries: u32) -> Vec<(Unfit, H)> {
    let mut unfit = Vec::new();
    let mut kept = Vec::with_capacity(fetched.len());
    for f in fetched.drain(..) {
        let why = match &f.message {
            Err(reason) => Unfit::Malformed(reason.clone()),
            Ok(m) if f.attempt > max_deliveries => Unfit::Expired(*m, f.attempt),
            Ok(_) => {
                kept.push(f);
                continue;
            }
        };
        unfit.push((why, f.handle));
    }
    *fetched = kept;
    unfit
}

/// Logs and counts what `screen` took and the adapter dead-lettered: nobody settled those
/// deliveries, so nobody else counts them.
pub fn count(broker: &str, m: &Metrics, unfit: &[Unfit]) {
    for u in unfit {
        match u {
            Unfit::Malformed(reason) => {
                warn!("Dead-lettered a {broker} message that is not a message: {reason}");
                // It was published to the broker and is now in its dead letters.
                Metrics::inc(&m.rejected);
                Metrics::inc(&m.dead_lettered);
                m.mark_outcome();
            }
            Unfit::Expired(message, attempt) => {
                flow!(
                    warn,
                    "broker",
                    "dead_lettered",
                    message.instance_name,
                    message.message_id,
                    attempt - 1,
                    "Dead-lettered {message} after {} deliveries (lease expired)",
                    attempt - 1
                );
                Metrics::inc(&m.lease_expired);
                Metrics::inc(&m.dead_lettered);
                m.mark_outcome();
            }
        }
    }
}

//! Simulated IO that ends at many different times, waited for with one timer per actor.
//!
//! One `run_later` per message was the cost of the IO path: actix polls every future an
//! actor has spawned each time the actor wakes, so thousands of pending timers made each
//! wake-up scan thousands of entries, and the pipeline managed about 25k msgs/s at 10 ms
//! of IO. Here deliveries wait in buckets, one per millisecond (the timer's own
//! resolution), and the actor keeps a single timer armed for the earliest bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::message::DeliveryTag;

/// Deliveries waiting out their IO, by the millisecond their IO ends.
#[derive(Debug)]
pub struct IoWait {
    /// Bucket keys are milliseconds since `base`, rounded up.
    base: Instant,
    due: BTreeMap<u64, Vec<DeliveryTag>>,
    /// The buckets that pending timers were armed for.
    armed: BTreeSet<u64>,
}

impl Default for IoWait {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            due: BTreeMap::new(),
            armed: BTreeSet::new(),
        }
    }
}

impl IoWait {
    fn at(&self, key: u64) -> Instant {
        self.base + Duration::from_millis(key)
    }

    /// Adds a delivery whose IO ends `after` from now. Returns when the actor must arm a
    /// timer, if no pending timer fires early enough for it.
    pub fn add(&mut self, after: Duration, tag: DeliveryTag) -> Option<Instant> {
        let end = Instant::now() + after;
        let key = end
            .saturating_duration_since(self.base)
            .as_nanos()
            .div_ceil(1_000_000) as u64;
        self.due.entry(key).or_default().push(tag);
        self.arm_if_earlier(key)
    }

    /// A timer is needed unless one is pending for this bucket or an earlier one: that
    /// one's firing arms the next.
    fn arm_if_earlier(&mut self, key: u64) -> Option<Instant> {
        match self.armed.first() {
            Some(&armed) if armed <= key => None,
            _ => {
                self.armed.insert(key);
                Some(self.at(key))
            }
        }
    }

    /// Takes every delivery whose IO has ended. Call it when a timer fires; it also says
    /// when the next timer must fire, if one must be armed.
    pub fn take_due(&mut self) -> (Vec<DeliveryTag>, Option<Instant>) {
        let now = Instant::now();
        while self.armed.first().is_some_and(|&k| self.at(k) <= now) {
            self.armed.pop_first();
        }
        let mut out = Vec::new();
        let now_key = now.saturating_duration_since(self.base).as_millis() as u64;
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > now_key {
                break;
            }
            out.extend(entry.remove());
        }
        let next = self.due.keys().next().copied();
        (out, next.and_then(|key| self.arm_if_earlier(key)))
    }

    /// How many deliveries wait.
    pub fn len(&self) -> usize {
        self.due.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deliveries_come_due_in_order_with_one_timer_for_the_earliest() {
        tokio::time::pause();
        let mut w = IoWait::default();
        let ms = Duration::from_millis;
        let first = w.add(ms(30), DeliveryTag(1)).expect("arm for the first");
        assert_eq!(
            w.add(ms(50), DeliveryTag(2)),
            None,
            "a later one needs no timer"
        );
        let earlier = w
            .add(ms(10), DeliveryTag(3))
            .expect("an earlier one re-arms");
        assert!(earlier < first);
        assert_eq!(
            w.add(ms(10), DeliveryTag(4)),
            None,
            "same millisecond, same bucket"
        );
        assert_eq!(w.len(), 4);

        tokio::time::sleep(ms(5)).await;
        assert_eq!(w.take_due().0, vec![], "nothing due yet");
        tokio::time::sleep(ms(6)).await;
        let (due, next) = w.take_due();
        assert_eq!(due, vec![DeliveryTag(3), DeliveryTag(4)]);
        // The timer armed for 30 ms is still pending, so no new one is needed.
        assert_eq!(next, None);
        tokio::time::sleep(ms(40)).await;
        let (due, next) = w.take_due();
        assert_eq!(due, vec![DeliveryTag(1), DeliveryTag(2)]);
        assert_eq!(next, None);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn after_its_timer_fires_the_next_bucket_gets_one() {
        tokio::time::pause();
        let mut w = IoWait::default();
        let ms = Duration::from_millis;
        w.add(ms(10), DeliveryTag(1)).expect("armed");
        w.add(ms(20), DeliveryTag(2));
        tokio::time::sleep(ms(11)).await;
        let (due, next) = w.take_due();
        assert_eq!(due, vec![DeliveryTag(1)]);
        assert!(next.is_some(), "the 20 ms bucket needs a timer of its own");
    }
}

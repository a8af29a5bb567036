//! Alarms for actors, and simulated IO that ends at many different times, waited for
//! with one alarm per actor.
//!
//! One `run_later` per message was the cost of the IO path: actix polls every future an
//! actor has spawned each time the actor wakes, so thousands of pending timers made each
//! wake-up scan thousands of entries, and the pipeline managed about 25k msgs/s at 10 ms
//! of IO. Here deliveries wait in buckets, and the actor keeps a single alarm armed for
//! the earliest bucket. When it rings, the actor gets an [`Alarm`].
//!
//! The alarm is a tokio timer or the process's clock thread ([`AlarmClock`]). Tokio rounds
//! each deadline up to a millisecond tick and then waits for the loop to poll its
//! driver, so IO simulated with it lasted 1 to 2 ms longer than asked, and a paced
//! publisher sent a burst every 1 to 2 ms, whose last messages queued behind the first at
//! every step. Both were more than the rest of the pipeline's latency. The clock thread
//! sleeps to the deadline and sends the message, as a real device's completion would
//! arrive; it is what the service runs on. Tokio timers stay for tests, where
//! `tokio::time::pause` must control them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

/// An alarm the actor armed has rung.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Alarm;

/// One simulated IO's length: `random() * max`, or `max` itself without jitter.
pub fn draw_io(max: Duration, jitter: bool, rng: &mut impl rand::Rng) -> Duration {
    if jitter {
        max.mul_f64(rng.random::<f64>())
    } else {
        max
    }
}

/// What rings an actor's alarms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AlarmClock {
    /// A tokio timer: a millisecond's resolution, and paused time in tests moves it.
    #[default]
    Tokio,
    /// The clock thread: a resolution of 100 µs, in real time only.
    Thread,
}

impl AlarmClock {
    /// How finely it is worth telling times apart with this clock.
    pub fn resolution(self) -> Duration {
        match self {
            AlarmClock::Tokio => Duration::from_millis(1),
            AlarmClock::Thread => Duration::from_micros(100),
        }
    }

    /// Arms the actor's alarm for `at`; the actor gets an `Alarm` then.
    pub fn arm<A>(self, at: Instant, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>> + Handler<Alarm>,
    {
        match self {
            AlarmClock::Tokio => {
                let after = at.saturating_duration_since(Instant::now());
                ctx.run_later(after, |act, ctx| {
                    <A as Handler<Alarm>>::handle(act, Alarm, ctx);
                });
            }
            AlarmClock::Thread => {
                let to: Recipient<Alarm> = ctx.address().recipient();
                let wake = Wake {
                    at: at.into_std(),
                    ring: Box::new(move || to.do_send(Alarm)),
                };
                // The thread only ends if it panicked; a late alarm then beats none.
                if CLOCK.send(wake).is_err() {
                    AlarmClock::Tokio.arm(at, ctx);
                }
            }
        }
    }
}

impl AlarmClock {
    /// Calls `ring` at `at`: on the clock thread, which must then only send a message or
    /// do as little, or on a tokio task, which paused time moves. Must be called inside
    /// the actor system.
    pub fn call_at(self, at: Instant, ring: impl FnOnce() + Send + 'static) {
        let on_tokio = |ring: Box<dyn FnOnce() + Send>| {
            actix_rt::spawn(async move {
                tokio::time::sleep_until(at).await;
                ring();
            });
        };
        match self {
            AlarmClock::Tokio => on_tokio(Box::new(ring)),
            AlarmClock::Thread => {
                let wake = Wake {
                    at: at.into_std(),
                    ring: Box::new(ring),
                };
                // The thread only ends if it panicked; a late call then beats none.
                if let Err(mpsc::SendError(wake)) = CLOCK.send(wake) {
                    on_tokio(wake.ring);
                }
            }
        }
    }
}

/// One wake-up call: what to do, and when.
struct Wake {
    at: std::time::Instant,
    ring: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wake {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The clock thread's inbox. It is started on first use and serves every actor system
/// in the process; alarms for actors that have gone are sent nowhere.
static CLOCK: LazyLock<mpsc::Sender<Wake>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("mandrill-clock".into())
        .spawn(move || ring(rx))
        .expect("spawn the clock thread");
    tx
});

fn ring(rx: mpsc::Receiver<Wake>) {
    let mut alarms = BinaryHeap::<Reverse<Wake>>::new();
    loop {
        let next = alarms.peek().map(|a| a.0.at);
        let got = match next {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(wake) => alarms.push(Reverse(wake)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = std::time::Instant::now();
        while alarms.peek().is_some_and(|a| a.0.at <= now) {
            if let Some(Reverse(a)) = alarms.pop() {
                (a.ring)();
            }
        }
    }
}

/// Deliveries waiting out their IO, by the bucket their IO ends in. This is where an
/// actor keeps them meanwhile: a table beside it, keyed by tag, cost about 100 bytes per
/// in-flight message.
#[derive(Debug)]
pub struct IoWait<T> {
    /// Bucket keys count buckets since `base`, rounded up, so that nothing comes due
    /// early.
    base: Instant,
    bucket: Duration,
    due: BTreeMap<u64, Vec<T>>,
    /// The buckets that pending alarms were armed for.
    armed: BTreeSet<u64>,
}

impl<T> Default for IoWait<T> {
    fn default() -> Self {
        Self::new(AlarmClock::default())
    }
}

impl<T> IoWait<T> {
    pub fn new(clock: AlarmClock) -> Self {
        Self {
            base: Instant::now(),
            bucket: clock.resolution(),
            due: BTreeMap::new(),
            armed: BTreeSet::new(),
        }
    }

    fn at(&self, key: u64) -> Instant {
        self.base + Duration::from_nanos(self.bucket.as_nanos() as u64 * key)
    }

    fn key(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.base).as_nanos()
    }

    /// Adds a delivery whose IO ends `after` from now. Returns when the actor must arm an
    /// alarm, if no pending one rings early enough for it.
    pub fn add(&mut self, after: Duration, item: T) -> Option<Instant> {
        let key = self
            .key(Instant::now() + after)
            .div_ceil(self.bucket.as_nanos()) as u64;
        self.due.entry(key).or_default().push(item);
        self.arm_if_earlier(key)
    }

    /// An alarm is needed unless one is pending for this bucket or an earlier one: that
    /// one's ringing arms the next.
    fn arm_if_earlier(&mut self, key: u64) -> Option<Instant> {
        match self.armed.first() {
            Some(&armed) if armed <= key => None,
            _ => {
                self.armed.insert(key);
                Some(self.at(key))
            }
        }
    }

    /// Takes every delivery whose IO has ended. Call it on `Alarm`; it also says when the
    /// next alarm must ring, if one must be armed.
    pub fn take_due(&mut self) -> (Vec<T>, Option<Instant>) {
        let now = Instant::now();
        while self.armed.first().is_some_and(|&k| self.at(k) <= now) {
            self.armed.pop_first();
        }
        let mut out = Vec::new();
        let now_key = (self.key(now) / self.bucket.as_nanos()) as u64;
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

    /// Takes everything that waits, due or not. Alarms already armed still ring, and find
    /// nothing.
    pub fn drain(&mut self) -> impl Iterator<Item = T> {
        std::mem::take(&mut self.due).into_values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AckId;

    #[tokio::test]
    async fn deliveries_come_due_in_order_with_one_timer_for_the_earliest() {
        tokio::time::pause();
        let mut w = IoWait::default();
        let ms = Duration::from_millis;
        let first = w.add(ms(30), AckId(1)).expect("arm for the first");
        assert_eq!(w.add(ms(50), AckId(2)), None, "a later one needs no timer");
        let earlier = w.add(ms(10), AckId(3)).expect("an earlier one re-arms");
        assert!(earlier < first);
        assert_eq!(
            w.add(ms(10), AckId(4)),
            None,
            "same millisecond, same bucket"
        );
        assert_eq!(w.len(), 4);

        tokio::time::sleep(ms(5)).await;
        assert_eq!(w.take_due().0, vec![], "nothing due yet");
        tokio::time::sleep(ms(6)).await;
        let (due, next) = w.take_due();
        assert_eq!(due, vec![AckId(3), AckId(4)]);
        // The timer armed for 30 ms is still pending, so no new one is needed.
        assert_eq!(next, None);
        tokio::time::sleep(ms(40)).await;
        let (due, next) = w.take_due();
        assert_eq!(due, vec![AckId(1), AckId(2)]);
        assert_eq!(next, None);
        assert_eq!(w.len(), 0);
    }

    #[tokio::test]
    async fn after_its_timer_fires_the_next_bucket_gets_one() {
        tokio::time::pause();
        let mut w = IoWait::default();
        let ms = Duration::from_millis;
        w.add(ms(10), AckId(1)).expect("armed");
        w.add(ms(20), AckId(2));
        tokio::time::sleep(ms(11)).await;
        let (due, next) = w.take_due();
        assert_eq!(due, vec![AckId(1)]);
        assert!(next.is_some(), "the 20 ms bucket needs a timer of its own");
    }

    /// Records when each `Alarm` arrives.
    struct Sleeper(tokio::sync::mpsc::UnboundedSender<Instant>);
    impl Actor for Sleeper {
        type Context = Context<Self>;
    }
    impl Handler<Alarm> for Sleeper {
        type Result = ();
        fn handle(&mut self, _: Alarm, _: &mut Context<Self>) {
            let _ = self.0.send(Instant::now());
        }
    }
    /// Arms the clock thread from inside the actor.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct ArmAt(Instant);
    impl Handler<ArmAt> for Sleeper {
        type Result = ();
        fn handle(&mut self, m: ArmAt, ctx: &mut Context<Self>) {
            AlarmClock::Thread.arm(m.0, ctx);
        }
    }

    #[actix_rt::test]
    async fn the_clock_thread_rings_each_alarm_once_and_never_early() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let addr = Sleeper(tx).start();
        let now = Instant::now();
        // Armed out of order, as buckets are when a shorter IO arrives later.
        let ats = [30, 10, 20].map(|ms| now + Duration::from_millis(ms));
        for at in ats {
            addr.send(ArmAt(at)).await.expect("armed");
        }
        let mut rang = Vec::new();
        for _ in ats {
            let t = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("the alarm rings")
                .expect("the actor lives");
            rang.push(t);
        }
        let mut want = ats.to_vec();
        want.sort();
        for (t, at) in rang.iter().zip(&want) {
            assert!(t >= at, "rang {:?} early", *at - *t);
        }
        let extra = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
        assert!(extra.is_err(), "an alarm rang twice");
    }
}

//! How a supervisor restarts: the strategy that picks the siblings, the restart-intensity
//! window that decides when to give up, and the backoff between restarts of one child.
//! Plain data with no actor in it; the Supervisor holds one of each.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::names::ChildName;
use crate::FastMap;

/// Which children a supervisor restarts when one fails, over the children in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The failed child and every child started after it.
    RestForOne,
}

impl Strategy {
    /// Its name in flags and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one-for-one",
            Strategy::OneForAll => "one-for-all",
            Strategy::RestForOne => "rest-for-one",
        }
    }

    /// The positions, in `0..len`, of the siblings to restart along with the child at
    /// `failed`; the failed child itself is never among them.
    pub(crate) fn siblings(self, failed: usize, len: usize) -> impl Iterator<Item = usize> {
        let range = match self {
            Strategy::OneForOne => 0..0,
            Strategy::OneForAll => 0..len,
            Strategy::RestForOne => failed + 1..len,
        };
        range.filter(move |&i| i != failed)
    }
}

/// Restart intensity, in OTP's words: more than `max_restarts` within `window` gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intensity {
    pub max_restarts: u32,
    pub window: Duration,
}

/// The restarts within the last `window`, to check against the intensity limit.
#[derive(Debug)]
pub(crate) struct IntensityWindow {
    limit: Intensity,
    recent: VecDeque<Instant>,
}

impl IntensityWindow {
    pub(crate) fn new(limit: Intensity) -> Self {
        Self {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Counts a restart at `now`; returns how many fell within the window, this one
    /// included, if that exceeds the limit.
    pub(crate) fn exceeded_by(&mut self, now: Instant) -> Option<usize> {
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.limit.window)
        {
            self.recent.pop_front();
        }
        (self.recent.len() as u64 > u64::from(self.limit.max_restarts)).then_some(self.recent.len())
    }

    pub(crate) fn limit(&self) -> Intensity {
        self.limit
    }

    /// How many restarts fall within the window ending `now`.
    pub(crate) fn in_window(&self, now: Instant) -> usize {
        self.recent
            .iter()
            .filter(|t| now.duration_since(**t) <= self.limit.window)
            .count()
    }
}

/// Exponential backoff between restarts of the same child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay; zero restarts at once even under `restart-with-backoff`.
    pub min: Duration,
    /// No delay grows past this, before jitter.
    pub max: Duration,
    /// Each delay is multiplied by `1 + random() * jitter`.
    pub jitter: f64,
    /// A child that has not failed for this long starts again from `min`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the `n`th restart in a row (from 1): `min * 2^(n-1)`, capped at
    /// `max`, times `1 + r * jitter` for `r` in `[0, 1)`.
    pub fn delay(&self, n: u32, r: f64) -> Duration {
        if self.min.is_zero() || n == 0 {
            return Duration::ZERO;
        }
        let doubled = self.min.saturating_mul(1u32 << (n - 1).min(31));
        doubled.min(self.max).mul_f64(1.0 + r * self.jitter)
    }
}

/// Each child's failures in a row, which its backoff doubles on: a streak grows while
/// failures come closer together than `reset_after`, and starts over after a quiet spell.
#[derive(Debug, Default)]
pub(crate) struct Streaks(FastMap<ChildName, (u32, Instant)>);

impl Streaks {
    /// Counts a failure of `child` at `now`; returns its place in the streak, from 1.
    pub(crate) fn failed(&mut self, child: ChildName, now: Instant, reset_after: Duration) -> u32 {
        let streak = self.0.entry(child).or_insert((0, now));
        if now.duration_since(streak.1) >= reset_after {
            streak.0 = 0;
        }
        *streak = (streak.0 + 1, now);
        streak.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_on_top() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
            reset_after: Duration::from_secs(10),
        };
        let ms = |n, r| b.delay(n, r).as_millis();
        assert_eq!(
            [ms(1, 0.0), ms(2, 0.0), ms(3, 0.0), ms(4, 0.0)],
            [100, 200, 400, 800]
        );
        assert_eq!([ms(5, 0.0), ms(40, 0.0)], [1000, 1000]);
        assert_eq!(ms(1, 0.999), 149);
        assert_eq!(ms(5, 1.0), 1500);
        let off = Backoff {
            min: Duration::ZERO,
            ..b
        };
        assert_eq!(off.delay(3, 0.5), Duration::ZERO);
    }

    #[test]
    fn a_streak_grows_with_close_failures_and_resets_after_quiet() {
        let mut s = Streaks::default();
        let t0 = Instant::now();
        let reset = Duration::from_secs(60);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(s.failed(ChildName::Saver, at(0), reset), 1);
        assert_eq!(s.failed(ChildName::Saver, at(10), reset), 2);
        // Another child's streak is its own.
        assert_eq!(s.failed(ChildName::Acker, at(11), reset), 1);
        assert_eq!(s.failed(ChildName::Saver, at(69), reset), 3);
        assert_eq!(s.failed(ChildName::Saver, at(129), reset), 1);
    }

    #[test]
    fn the_window_counts_only_recent_restarts() {
        let mut w = IntensityWindow::new(Intensity {
            max_restarts: 2,
            window: Duration::from_secs(5),
        });
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(w.exceeded_by(at(0)), None);
        assert_eq!(w.exceeded_by(at(1)), None);
        assert_eq!(w.exceeded_by(at(2)), Some(3));
        // Spread out, restarts never pile up past the limit.
        let mut w = IntensityWindow::new(w.limit());
        assert!((0..10).all(|i| w.exceeded_by(at(3 * i)).is_none()));
    }

    #[test]
    fn strategies_pick_their_siblings() {
        let picked = |s: Strategy, failed| s.siblings(failed, 3).collect::<Vec<_>>();
        assert!(picked(Strategy::OneForOne, 1).is_empty());
        assert_eq!(picked(Strategy::OneForAll, 1), [0, 2]);
        assert_eq!(picked(Strategy::RestForOne, 0), [1, 2]);
        assert!(picked(Strategy::RestForOne, 2).is_empty());
    }
}

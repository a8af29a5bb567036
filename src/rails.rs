//! The safety rails a real restart must pass, as Chaos Monkey and chaoskube have them:
//! a kill switch, target filters, time windows in a time zone, a rate, and a cap on
//! restarts running at once. Plain data and pure checks: the Restarter keeps the state
//! they count (restarts started, restarts running) and asks before every restart.
//!
//! A refusal is a decision, not a failure: the message is acked and the refusal counted
//! by its rail. A rail that cannot be checked (a pause file that cannot be read) refuses
//! nothing and allows nothing: the check fails, and so does the restart, which is retried.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use thiserror::Error;

use crate::message::InstanceName;

/// A rail that refused a restart, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rail {
    /// `--pause-file` exists: every restart is refused.
    Pause,
    /// The host matches `--deny`.
    Deny,
    /// The host matches no `--allow`.
    Allow,
    /// Outside `--allowed-hours`.
    Hours,
    /// On one of `--excluded-weekdays`.
    Weekday,
    /// On one of `--excluded-days`.
    Day,
    /// `--max-host-restarts` were started within its window already.
    Rate,
}

impl Rail {
    pub const ALL: [Rail; 7] = [
        Rail::Pause,
        Rail::Deny,
        Rail::Allow,
        Rail::Hours,
        Rail::Weekday,
        Rail::Day,
        Rail::Rate,
    ];

    /// The rail's name in logs, the report and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rail::Pause => "pause",
            Rail::Deny => "deny",
            Rail::Allow => "allow",
            Rail::Hours => "hours",
            Rail::Weekday => "weekday",
            Rail::Day => "day",
            Rail::Rate => "rate",
        }
    }
}

/// Why a rail's setting is invalid.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RailSpecError {
    #[error("{0:?} is not a glob: {1}")]
    Glob(String, String),
    #[error("{0:?} is not HH:MM-HH:MM")]
    Hours(String),
    #[error("{0:?} is not a weekday such as Sat")]
    Weekday(String),
    #[error("{0:?} is not a day such as Dec24")]
    Day(String),
    #[error("{0:?} is not a time zone: {1}")]
    TimeZone(String, String),
    #[error("{0:?} is not WINDOW=N, such as 1h=10")]
    Rate(String),
}

/// Why a rail could not be checked.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RailError {
    #[error("cannot tell whether pause file {0} exists: {1}")]
    PauseFile(String, String),
    #[error("the clock reads a time the time zone cannot hold: {0}")]
    Clock(String),
}

/// Target filters: globs on instance names.
#[derive(Debug, Clone)]
pub struct Globs {
    texts: Vec<String>,
    set: GlobSet,
}

impl Globs {
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

impl Default for Globs {
    fn default() -> Self {
        Self {
            texts: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.texts == other.texts
    }
}

impl FromStr for Globs {
    type Err = RailSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let texts: Vec<String> = list(s).map(String::from).collect();
        let mut b = GlobSetBuilder::new();
        for t in &texts {
            b.add(Glob::new(t).map_err(|e| RailSpecError::Glob(t.clone(), e.to_string()))?);
        }
        let set = b
            .build()
            .map_err(|e| RailSpecError::Glob(s.to_string(), e.to_string()))?;
        Ok(Self { texts, set })
    }
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

/// The hours of the day restarts are allowed in, local time, from start up to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    start: Time,
    end: Time,
}

impl Hours {
    fn contains(&self, t: Time) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            // A window over midnight, such as 22:00-02:00.
            t >= self.start || t < self.end
        }
    }
}

impl FromStr for Hours {
    type Err = RailSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RailSpecError::Hours(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let time = |t: &str| -> Result<Time, RailSpecError> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let (h, m) = (h.parse::<i8>(), m.parse::<i8>());
            match (h, m) {
                (Ok(h), Ok(m)) => Time::new(h, m, 0, 0).map_err(|_| bad()),
                _ => Err(bad()),
            }
        };
        Ok(Hours {
            start: time(a)?,
            end: time(b)?,
        })
    }
}

/// Weekdays no restart happens on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weekdays(Vec<Weekday>);

impl FromStr for Weekdays {
    type Err = RailSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        list(s)
            .map(|d| {
                let all = [
                    ("mon", Weekday::Monday),
                    ("tue", Weekday::Tuesday),
                    ("wed", Weekday::Wednesday),
                    ("thu", Weekday::Thursday),
                    ("fri", Weekday::Friday),
                    ("sat", Weekday::Saturday),
                    ("sun", Weekday::Sunday),
                ];
                let lower = d.to_ascii_lowercase();
                all.iter()
                    .find(|(name, _)| lower.len() >= 3 && name.starts_with(&lower[..3]))
                    .filter(|(name, _)| {
                        lower.len() == 3 || full_weekday(name).starts_with(lower.as_str())
                    })
                    .map(|(_, w)| *w)
                    .ok_or_else(|| RailSpecError::Weekday(d.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Weekdays)
    }
}

fn full_weekday(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

/// Days of the year no restart happens on, as month and day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Days(Vec<(i8, i8)>);

impl FromStr for Days {
    type Err = RailSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        list(s)
            .map(|d| {
                let bad = || RailSpecError::Day(d.to_string());
                let lower = d.to_ascii_lowercase();
                let (m, day) = lower.split_at_checked(3).ok_or_else(bad)?;
                let month = MONTHS.iter().position(|x| *x == m).ok_or_else(bad)? as i8 + 1;
                let day: i8 = day.parse().map_err(|_| bad())?;
                // Checked against a leap year, so that Feb29 is a day.
                jiff::civil::Date::new(2024, month, day).map_err(|_| bad())?;
                Ok((month, day))
            })
            .collect::<Result<_, _>>()
            .map(Days)
    }
}

/// At most `max` restarts started within any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub window: Duration,
    pub max: u32,
}

impl FromStr for Rate {
    type Err = RailSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RailSpecError::Rate(s.to_string());
        let (w, n) = s.split_once('=').ok_or_else(bad)?;
        let window = crate::units::parse_duration(w.trim()).map_err(|_| bad())?;
        let max = n.trim().parse().map_err(|_| bad())?;
        if window.is_zero() {
            return Err(bad());
        }
        Ok(Rate { window, max })
    }
}

/// An IANA time zone, such as `Europe/Stockholm`.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone(pub TimeZone);

impl Default for Zone {
    fn default() -> Self {
        Zone(TimeZone::UTC)
    }
}

impl FromStr for Zone {
    type Err = RailSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeZone::get(s)
            .map(Zone)
            .map_err(|e| RailSpecError::TimeZone(s.to_string(), e.to_string()))
    }
}

/// Every rail's setting; the default lets everything through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rails {
    pub allow: Globs,
    pub deny: Globs,
    pub hours: Option<Hours>,
    pub weekdays: Weekdays,
    pub days: Days,
    pub zone: Zone,
    pub pause_file: Option<PathBuf>,
    pub rate: Option<Rate>,
    /// Restarts over this many running at once wait their turn; they are not refused.
    pub max_concurrent: Option<usize>,
}

impl Rails {
    /// Whether any rail is set; none costs nothing per restart.
    pub fn any(&self) -> bool {
        *self != Rails::default()
    }

    /// Checks every rail but the cap on restarts running at once, in the documented
    /// order, for a restart of `host` at `now_ms` (milliseconds since the epoch);
    /// `started` holds when recent restarts started, or is `None` when a store the
    /// fleet shares counts them instead. Returns the rail that refuses, if any.
    pub fn check(
        &self,
        host: InstanceName,
        now_ms: i64,
        started: Option<&mut RecentStarts>,
    ) -> Result<Option<Rail>, RailError> {
        if let Some(path) = &self.pause_file {
            match std::fs::metadata(path) {
                Ok(_) => return Ok(Some(Rail::Pause)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RailError::PauseFile(
                        path.display().to_string(),
                        e.to_string(),
                    ))
                }
            }
        }
        if !self.deny.is_empty() || !self.allow.is_empty() {
            let name = host.as_str();
            if self.deny.matches(&name) {
                return Ok(Some(Rail::Deny));
            }
            if !self.allow.is_empty() && !self.allow.matches(&name) {
                return Ok(Some(Rail::Allow));
            }
        }
        if self.hours.is_some() || !self.weekdays.0.is_empty() || !self.days.0.is_empty() {
            let now = jiff::Timestamp::from_millisecond(now_ms)
                .map_err(|e| RailError::Clock(e.to_string()))?;
            let now = self.zone.0.to_datetime(now);
            if self.hours.is_some_and(|h| !h.contains(now.time())) {
                return Ok(Some(Rail::Hours));
            }
            if self.weekdays.0.contains(&now.weekday()) {
                return Ok(Some(Rail::Weekday));
            }
            if self.days.0.contains(&(now.month(), now.day())) {
                return Ok(Some(Rail::Day));
            }
        }
        if let (Some(rate), Some(started)) = (self.rate, started) {
            if !started.admit(now_ms, rate) {
                return Ok(Some(Rail::Rate));
            }
        }
        Ok(None)
    }
}

/// When recent restarts started, for the rate rail.
#[derive(Debug, Default)]
pub struct RecentStarts(VecDeque<i64>);

impl RecentStarts {
    /// Counts a start at `now_ms` if the rate allows one; says whether it did.
    fn admit(&mut self, now_ms: i64, rate: Rate) -> bool {
        let window = rate.window.as_millis() as i64;
        while self.0.front().is_some_and(|&t| now_ms - t >= window) {
            self.0.pop_front();
        }
        if self.0.len() as u64 >= u64::from(rate.max) {
            return false;
        }
        self.0.push_back(now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> InstanceName {
        InstanceName::parse(s).unwrap()
    }

    /// Milliseconds since the epoch of a civil time in a zone.
    fn at(zone: &str, civil: &str) -> i64 {
        let dt: jiff::civil::DateTime = civil.parse().unwrap();
        dt.to_zoned_datetime(TimeZone::get(zone).unwrap())
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    fn check(r: &Rails, h: &str, now_ms: i64) -> Option<Rail> {
        r.check(host(h), now_ms, Some(&mut RecentStarts::default()))
            .unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_list_allows_all() {
        let mut r = Rails::default();
        assert_eq!(check(&r, "cattle-a", 0), None);
        r.allow = "cattle-*".parse().unwrap();
        r.deny = "cattle-db*, pet-*".parse().unwrap();
        assert_eq!(check(&r, "cattle-a", 0), None);
        assert_eq!(check(&r, "cattle-db1", 0), Some(Rail::Deny));
        assert_eq!(check(&r, "pet-fluffy", 0), Some(Rail::Deny));
        assert_eq!(check(&r, "horse-1", 0), Some(Rail::Allow));
        assert!("[".parse::<Globs>().is_err());
    }

    #[test]
    fn time_windows_are_read_in_the_time_zone() {
        let r = Rails {
            hours: Some("09:00-15:00".parse().unwrap()),
            weekdays: "Sat,sunday".parse().unwrap(),
            days: "Dec24,Jan1".parse().unwrap(),
            zone: "Europe/Stockholm".parse().unwrap(),
            ..Rails::default()
        };
        let zone = "Europe/Stockholm";
        // Tuesday 2026-12-01.
        assert_eq!(check(&r, "a", at(zone, "2026-12-01T09:00")), None);
        assert_eq!(check(&r, "a", at(zone, "2026-12-01T14:59")), None);
        assert_eq!(
            check(&r, "a", at(zone, "2026-12-01T15:00")),
            Some(Rail::Hours)
        );
        // 08:30 in UTC is 09:30 in Stockholm in winter.
        assert_eq!(check(&r, "a", at("UTC", "2026-12-01T08:30")), None);
        assert_eq!(
            check(&r, "a", at(zone, "2026-12-05T10:00")),
            Some(Rail::Weekday)
        );
        assert_eq!(
            check(&r, "a", at(zone, "2026-12-24T10:00")),
            Some(Rail::Day)
        );
        let night: Hours = "22:00-02:00".parse().unwrap();
        assert!(night.contains(Time::new(23, 0, 0, 0).unwrap()));
        assert!(!night.contains(Time::new(12, 0, 0, 0).unwrap()));
        for bad in ["9-15", "09:00", "25:00-26:00"] {
            assert!(bad.parse::<Hours>().is_err(), "{bad}");
        }
        assert!("Caturday".parse::<Weekdays>().is_err());
        assert!("Feb30".parse::<Days>().is_err());
        assert!("Mars/Olympus".parse::<Zone>().is_err());
    }

    #[test]
    fn the_rate_refuses_past_its_count_within_the_window() {
        let r = Rails {
            rate: Some("1h=2".parse().unwrap()),
            ..Rails::default()
        };
        let mut started = RecentStarts::default();
        let hour = 3_600_000;
        let mut go = |t| r.check(host("a"), t, Some(&mut started)).unwrap();
        assert_eq!([go(0), go(10)], [None, None]);
        assert_eq!(go(20), Some(Rail::Rate));
        assert_eq!(go(hour), None, "the first start left the window");
        let fleet = r.check(host("a"), hour, None).unwrap();
        assert_eq!(fleet, None, "the fleet's store counts the starts");
        assert!("1h".parse::<Rate>().is_err());
        assert!("0s=1".parse::<Rate>().is_err());
    }

    #[test]
    fn the_pause_file_refuses_everything_while_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        let r = Rails {
            pause_file: Some(path.clone()),
            ..Rails::default()
        };
        assert_eq!(check(&r, "a", 0), None);
        std::fs::write(&path, "").unwrap();
        assert_eq!(check(&r, "a", 0), Some(Rail::Pause));
        // A path that cannot be checked fails the check rather than allowing.
        let blocked = Rails {
            pause_file: Some(path.join("under-a-file")),
            ..Rails::default()
        };
        assert!(blocked
            .check(host("a"), 0, Some(&mut RecentStarts::default()))
            .is_err());
    }
}

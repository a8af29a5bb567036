//! `SimulatedRestarts`: the talk's restart, a coin flip after some simulated IO.
//!
//! Each restart takes `random() * io_delay` (or exactly `io_delay`) and fails at
//! `failure_rate`. Restarts wait in `IoWait` buckets behind one alarm, armed on the clock
//! thread, which sends each bucket's outcomes straight to the Restarter when it rings: a
//! timer per restart made every wake-up scan all of them. With no IO, outcomes are sent at
//! once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Recipient;
use rand::{rngs::SmallRng, Rng};

use super::{ActionsDone, JobDone, RestartAction, RestartError, RestartJob};
use crate::iowait::{draw_io, AlarmClock, IoWait};

/// How the simulated restarts behave.
#[derive(Debug, Clone)]
pub struct SimulatedConfig {
    /// Each restart takes `random() * io_delay`, or exactly `io_delay` without jitter.
    pub io_delay: Duration,
    pub io_jitter: bool,
    /// What ends the simulated IO.
    pub clock: AlarmClock,
    pub failure_rate: f64,
    /// Appended to instance names in the errors' hostnames.
    pub domain: Arc<str>,
}

/// A job waiting out its IO, and whether it will fail.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    job: RestartJob,
    fails: bool,
}

/// What the clock's calls and `start` share.
struct Shared {
    io: IoWait<Waiting>,
    done: Option<Recipient<ActionsDone>>,
}

/// Simulated host restarts.
pub struct SimulatedRestarts {
    config: SimulatedConfig,
    rng: SmallRng,
    shared: Arc<Mutex<Shared>>,
}

impl SimulatedRestarts {
    pub fn new(config: SimulatedConfig, rng: SmallRng) -> Self {
        let shared = Shared {
            io: IoWait::new(config.clock),
            done: None,
        };
        Self {
            config,
            rng,
            shared: Arc::new(Mutex::new(shared)),
        }
    }
}

fn outcome(w: Waiting, domain: &Arc<str>) -> JobDone {
    let result = if w.fails {
        Err(RestartError::Failed {
            host: w.job.host.hostname(domain),
            reason: "the simulated restart failed".into(),
        })
    } else {
        Ok(())
    };
    JobDone { job: w.job, result }
}

/// Sends the outcomes whose IO has ended, and arms the clock for the next bucket.
fn ring(shared: Arc<Mutex<Shared>>, clock: AlarmClock, domain: Arc<str>) {
    let mut s = shared.lock().expect("simulated restarts");
    let (due, next) = s.io.take_due();
    if let Some(at) = next {
        let (shared, domain) = (shared.clone(), domain.clone());
        clock.call_at(at, move || ring(shared, clock, domain));
    }
    if let (false, Some(done)) = (due.is_empty(), &s.done) {
        done.do_send(ActionsDone(
            due.into_iter().map(|w| outcome(w, &domain)).collect(),
        ));
    }
}

impl RestartAction for SimulatedRestarts {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn at_once(&mut self, job: &RestartJob) -> Option<Result<(), RestartError>> {
        if !self.config.io_delay.is_zero() {
            return None;
        }
        let fails = self.rng.random::<f64>() < self.config.failure_rate;
        Some(outcome(Waiting { job: *job, fails }, &self.config.domain).result)
    }

    fn start(&mut self, jobs: Vec<RestartJob>, done: &Recipient<ActionsDone>) {
        let c = &self.config;
        let waiting: Vec<Waiting> = jobs
            .into_iter()
            .map(|job| Waiting {
                job,
                fails: self.rng.random::<f64>() < c.failure_rate,
            })
            .collect();
        if c.io_delay.is_zero() {
            // Only reached when called without asking `at_once` first.
            let outcomes = waiting.into_iter().map(|w| outcome(w, &c.domain)).collect();
            done.do_send(ActionsDone(outcomes));
            return;
        }
        let mut s = self.shared.lock().expect("simulated restarts");
        if s.done.is_none() {
            s.done = Some(done.clone());
        }
        for w in waiting {
            let io = draw_io(c.io_delay, c.io_jitter, &mut self.rng);
            if let Some(at) = s.io.add(io, w) {
                let (shared, clock, domain) = (self.shared.clone(), c.clock, c.domain.clone());
                c.clock.call_at(at, move || ring(shared, clock, domain));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{rng_for, Purpose};
    use crate::message::{AckId, InstanceName};
    use crate::testkit::{settle, sink};

    fn simulated(io_delay: Duration, failure_rate: f64) -> SimulatedRestarts {
        let config = SimulatedConfig {
            io_delay,
            io_jitter: false,
            clock: AlarmClock::Tokio,
            failure_rate,
            domain: "example.net".into(),
        };
        SimulatedRestarts::new(config, rng_for(Some(1), Purpose::SimulatedRestarts))
    }

    fn jobs(n: u64) -> Vec<RestartJob> {
        (1..=n)
            .map(|i| RestartJob {
                id: AckId(i),
                message_id: uuid::Uuid::now_v7(),
                host: InstanceName::parse("cattle-a").unwrap(),
                started_ms: 0,
                attempt: 1,
            })
            .collect()
    }

    #[actix_rt::test]
    async fn every_job_has_one_outcome_after_its_io() {
        tokio::time::pause();
        let (done, got) = sink::<ActionsDone>();
        let mut action = simulated(Duration::from_secs(1), 0.0);
        action.start(jobs(3), &done);
        settle().await;
        assert_eq!(got.len(), 0, "done before the IO ended");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        settle().await;
        let ids: Vec<AckId> = got
            .take()
            .into_iter()
            .flat_map(|d| d.0)
            .map(|j| j.job.id)
            .collect();
        assert_eq!(ids, [AckId(1), AckId(2), AckId(3)]);
    }

    #[actix_rt::test]
    async fn without_io_outcomes_are_sent_at_once_and_fail_at_the_rate() {
        let (done, got) = sink::<ActionsDone>();
        let mut action = simulated(Duration::ZERO, 1.0);
        action.start(jobs(2), &done);
        settle().await;
        let results: Vec<_> = got.take().into_iter().flat_map(|d| d.0).collect();
        assert_eq!(results.len(), 2);
        let e = results[0].result.clone().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Could not restart cattle-a.example.net: the simulated restart failed"
        );
    }
}

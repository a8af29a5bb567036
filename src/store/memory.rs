//! The in-memory store, for study runs and benchmarks: same contract, no disk. Its
//! connections share one set of tables, as connections to a database do. Of the history
//! it keeps only the claims, as the contract's tests need; no other process can share it,
//! so the Restarter's own index guards it. Nothing is kept after the run, so
//! `mandrill history` has nothing to read.

use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::{
    Attempt, AttemptContext, Claim, ClaimTerms, Claimed, SaveRow, Store, StoreError, StoreOpener,
};
use crate::message::InstanceName;

/// A map that grows a little on each insert instead of all at once.
type GrowingMap<K, V> = griddle::HashMap<K, V, foldhash::fast::RandomState>;

/// Messages and restart history in hash maps.
///
/// They grow for the whole run, and a table that doubles at once held the store thread
/// for up to 50 ms at a few hundred thousand messages; every save waiting behind it was
/// late by as much, which was the p99.9 of a run's latency.
#[derive(Debug, Default)]
struct Tables {
    messages: GrowingMap<Uuid, (InstanceName, u32)>,
    /// The guard: each host's latest claim, or its latest restart.
    claims: GrowingMap<InstanceName, HostClaim>,
    /// When the restarts the fleet's rate rail counts started, oldest first.
    starts: std::collections::VecDeque<i64>,
    closed: bool,
}

/// A host's latest claim, as the SQL stores' `claims` table holds it.
#[derive(Debug, Clone)]
struct HostClaim {
    at_ms: i64,
    /// Who holds it, for which message, and until when it may be given back.
    open: Option<OpenClaim>,
}

#[derive(Debug, Clone)]
struct OpenClaim {
    by: Arc<str>,
    message_id: Uuid,
    expires_ms: i64,
    /// The host's claim before this one, which a release restores.
    previous_ms: Option<i64>,
}

impl Tables {
    /// Settles the claim `by` holds on `host` for `message_id`, if it still does: the
    /// host counts as restarted from the claim, which no longer waits for an outcome.
    fn settle(&mut self, by: &str, host: InstanceName, message_id: Uuid) {
        if let Some(c) = self.claims.get_mut(&host) {
            if c.open
                .as_ref()
                .is_some_and(|o| &*o.by == by && o.message_id == message_id)
            {
                c.open = None;
            }
        }
    }

    /// Gives back the claim `by` holds on `host` for `message_id`, if it still does.
    fn release(&mut self, by: &str, host: InstanceName, message_id: Uuid) {
        let Some(c) = self.claims.get_mut(&host) else {
            return;
        };
        match &c.open {
            Some(o) if &*o.by == by && o.message_id == message_id => match o.previous_ms {
                Some(at_ms) => *c = HostClaim { at_ms, open: None },
                None => {
                    self.claims.remove(&host);
                }
            },
            _ => {}
        }
    }
}

/// A connection to in-memory tables; its clones are connections to the same tables.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
}

impl MemoryStore {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Nothing panics while holding the lock, so a poisoned one still holds whole tables.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_tables(&self) -> Result<MutexGuard<'_, Tables>, StoreError> {
        let t = self.tables();
        if t.closed {
            return Err(StoreError::Closed);
        }
        Ok(t)
    }
}

impl StoreOpener for MemoryStore {
    fn connections(&self) -> usize {
        1
    }

    fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(self.clone()))
    }
}

impl Store for MemoryStore {
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
        let mut t = self.open_tables()?;
        let mut new = 0;
        for r in rows {
            let entry = t.messages.entry(r.message.message_id).or_insert_with(|| {
                new += 1;
                (r.message.instance_name, r.attempt)
            });
            entry.1 = entry.1.max(r.attempt);
        }
        Ok(new)
    }

    fn record_attempts(
        &mut self,
        context: &AttemptContext,
        rows: &[Attempt],
    ) -> Result<(), StoreError> {
        let mut t = self.open_tables()?;
        for r in rows.iter().filter(|_| context.claimed) {
            if r.outcome.gives_back_claim() {
                t.release(&context.service, r.host, r.message_id);
            } else {
                t.settle(&context.service, r.host, r.message_id);
            }
        }
        Ok(())
    }

    fn restarts_since(
        &mut self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        Ok(self
            .tables()
            .claims
            .iter()
            .filter(|(_, c)| {
                c.at_ms >= since_ms && c.open.as_ref().is_none_or(|o| o.expires_ms < now_ms)
            })
            .map(|(h, c)| (*h, c.at_ms))
            .collect())
    }

    fn claim_restarts(
        &mut self,
        claims: &[Claim],
        terms: &ClaimTerms,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut t = self.open_tables()?;
        let now_ms = terms.now_ms;
        let mut places = if terms.fleet.any() {
            let kept_from = now_ms - terms.fleet.starts_kept_ms();
            while t.starts.front().is_some_and(|&at| at <= kept_from) {
                t.starts.pop_front();
            }
            let running = t
                .claims
                .values()
                .filter(|c| c.open.as_ref().is_some_and(|o| o.expires_ms >= now_ms))
                .count() as u64;
            let started = terms.fleet.starts.map_or(0, |(window, _)| {
                t.starts.iter().filter(|&&at| at > now_ms - window).count() as u64
            });
            Some(terms.fleet.places(running, started))
        } else {
            None
        };
        Ok(claims
            .iter()
            .map(|claim| {
                let held = t.claims.get(&claim.host).map(|c| {
                    let expires = c.open.as_ref().map(|o| o.expires_ms);
                    (c.at_ms, terms.stopped_by(c.at_ms, expires))
                });
                if let Some((_, Some(held))) = held {
                    return held;
                }
                if let Some(no) = places.as_mut().and_then(|p| p.take()) {
                    return no;
                }
                if terms.fleet.starts.is_some() {
                    t.starts.push_back(now_ms);
                }
                let open = OpenClaim {
                    by: terms.context.service.clone(),
                    message_id: claim.message_id,
                    expires_ms: now_ms + terms.ttl_ms,
                    previous_ms: held.map(|(at, _)| at),
                };
                t.claims.insert(
                    claim.host,
                    HostClaim {
                        at_ms: now_ms,
                        open: Some(open),
                    },
                );
                Claimed::Won
            })
            .collect())
    }

    fn release_claims(&mut self, service: &str, claims: &[Claim]) -> Result<(), StoreError> {
        let mut t = self.open_tables()?;
        for c in claims {
            t.release(service, c.host, c.message_id);
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.tables().closed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn same_contract_as_sqlite() {
        let mut s = MemoryStore::default();
        let m = Message::new(InstanceName::parse("cattle-a").unwrap());
        let row = |attempt| SaveRow {
            message: m,
            attempt,
        };
        assert_eq!(s.save(&[row(1), row(2)]).unwrap(), 1);
        assert_eq!(s.tables().messages.len(), 1);
        assert_eq!(s.tables().messages[&m.message_id].1, 2);
        s.close().unwrap();
        assert_eq!(s.save(&[row(3)]).unwrap_err(), StoreError::Closed);
    }

    #[test]
    fn a_claim_is_won_once_per_interval_across_connections() {
        let mut a = MemoryStore::default();
        let mut b = a.open().unwrap();
        crate::store::claims_are_won_once_per_interval(&mut a, b.as_mut());
    }

    #[test]
    fn the_guard_loads_each_hosts_latest_claim() {
        crate::store::the_guard_loads_each_hosts_latest_claim(&mut MemoryStore::default());
    }

    #[test]
    fn raced_claims_win_each_host_once() {
        let store = MemoryStore::default();
        crate::store::raced_claims_win_each_host_once(&|| store.open().unwrap());
    }

    #[test]
    fn the_fleets_rails_count_every_connection() {
        let mut a = MemoryStore::default();
        let mut b = a.open().unwrap();
        crate::store::the_fleets_rails_count_every_connection(&mut a, b.as_mut());
    }

    #[test]
    fn raced_claims_take_each_place_once() {
        let store = MemoryStore::default();
        crate::store::raced_claims_take_each_place_once(&|| store.open().unwrap());
    }
}

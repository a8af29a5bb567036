//! The in-memory store, for study runs and benchmarks: same contract, no disk. Its
//! connections share one set of tables, as connections to a database do. Of the history
//! it keeps only each host's last restart, which the minimum interval needs; nothing is
//! kept after the run, so `mandrill history` has nothing to read.

use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::{Attempt, AttemptContext, AttemptOutcome, SaveRow, Store, StoreError, StoreOpener};
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
    last_restart: GrowingMap<InstanceName, i64>,
    /// Each host's latest claim.
    claimed: GrowingMap<InstanceName, i64>,
    closed: bool,
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

    fn record_attempts(&mut self, _: &AttemptContext, rows: &[Attempt]) -> Result<(), StoreError> {
        let mut t = self.open_tables()?;
        for r in rows
            .iter()
            .filter(|r| r.outcome == AttemptOutcome::Restarted)
        {
            let at = t.last_restart.entry(r.host).or_insert(r.finished_ms);
            *at = (*at).max(r.finished_ms);
        }
        Ok(())
    }

    fn restarts_since(&mut self, since_ms: i64) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        Ok(self
            .tables()
            .last_restart
            .iter()
            .filter(|(_, at)| **at >= since_ms)
            .map(|(h, at)| (*h, *at))
            .collect())
    }

    fn claim_restarts(
        &mut self,
        hosts: &[InstanceName],
        now_ms: i64,
        interval_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut t = self.open_tables()?;
        let recent = |at: Option<&i64>| at.is_some_and(|&at| now_ms - at < interval_ms);
        Ok(hosts
            .iter()
            .map(|host| {
                if recent(t.claimed.get(host)) || recent(t.last_restart.get(host)) {
                    return false;
                }
                t.claimed.insert(*host, now_ms);
                true
            })
            .collect())
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
}

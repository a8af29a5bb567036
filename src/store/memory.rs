//! The in-memory store, for study runs and benchmarks: same contract, no disk.

use uuid::Uuid;

use super::{RestartRow, SaveRow, Store, StoreError};
use crate::message::InstanceName;

/// A map that grows a little on each insert instead of all at once.
type GrowingMap<K, V> = griddle::HashMap<K, V, foldhash::fast::RandomState>;

/// Messages and restart history in hash maps.
///
/// They grow for the whole run, and a table that doubles at once held the store thread
/// for up to 50 ms at a few hundred thousand messages; every save waiting behind it was
/// late by as much, which was the p99.9 of a run's latency.
#[derive(Debug, Default)]
pub struct MemoryStore {
    messages: GrowingMap<Uuid, (InstanceName, u32)>,
    last_restart: GrowingMap<InstanceName, i64>,
    closed: bool,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

impl Store for MemoryStore {
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
        if self.closed {
            return Err(StoreError::Closed);
        }
        let mut new = 0;
        for r in rows {
            let entry = self
                .messages
                .entry(r.message.message_id)
                .or_insert_with(|| {
                    new += 1;
                    (r.message.instance_name, r.attempt)
                });
            entry.1 = entry.1.max(r.attempt);
        }
        Ok(new)
    }

    fn record_restarts(&mut self, rows: &[RestartRow]) -> Result<(), StoreError> {
        if self.closed {
            return Err(StoreError::Closed);
        }
        for r in rows {
            let at = self.last_restart.entry(r.host).or_insert(r.at_ms);
            *at = (*at).max(r.at_ms);
        }
        Ok(())
    }

    fn restarts_since(&mut self, since_ms: i64) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        Ok(self
            .last_restart
            .iter()
            .filter(|(_, at)| **at >= since_ms)
            .map(|(h, at)| (*h, *at))
            .collect())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.closed = true;
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
        assert_eq!(s.len(), 1);
        assert_eq!(s.messages[&m.message_id].1, 2);
        s.close().unwrap();
        assert_eq!(s.save(&[row(3)]).unwrap_err(), StoreError::Closed);
    }
}

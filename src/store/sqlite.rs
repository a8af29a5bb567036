//! The SQLite store: WAL mode, `synchronous=NORMAL`, one transaction per batch.

use std::path::Path;

use rusqlite::{params, Connection, ErrorCode};

use super::{RestartRow, SaveRow, Store, StoreError};
use crate::message::InstanceName;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    message_id    BLOB PRIMARY KEY,
    instance_name TEXT NOT NULL,
    deliveries    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restarts (
    id           INTEGER PRIMARY KEY,
    host         TEXT NOT NULL,
    restarted_at INTEGER NOT NULL,
    message_id   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS restarts_by_time ON restarts (restarted_at);
";

/// A SQLite file, opened with the schema in place.
pub struct SqliteStore {
    conn: Option<Connection>,
    checkpointer: Option<Checkpointer>,
}

/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Checkpoints the WAL from a thread and connection of its own.
///
/// With SQLite's automatic checkpoint, the commit that fills the WAL copies it all back
/// into the database before it returns: at 100k msgs/s that held a commit, and every
/// message waiting on it, for about 100 ms, the p99 of the whole run's latency. A passive
/// checkpoint on another connection runs beside the writer instead of in its way.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mandrill-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!("WAL checkpoint failed: {e}");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // Message ids are random, so every batch dirties pages all over the key index.
        // Bigger pages mean fewer WAL frames per commit, and a bigger cache keeps the
        // index off the disk; both only take effect on a new file or connection.
        conn.pragma_update(None, "page_size", 16384)
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -65536)
            .map_err(open_err)?;
        // The checkpointer thread does it, beside the writer.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let checkpointer = Checkpointer::start(path).map_err(open_err)?;
        Ok(Self {
            conn: Some(conn),
            checkpointer: Some(checkpointer),
        })
    }

    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn.as_mut().ok_or(StoreError::Closed)
    }
}

impl Store for SqliteStore {
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
        let tx = self.conn()?.transaction().map_err(classify)?;
        let mut new = 0;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages (message_id, instance_name, deliveries)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(classify)?;
            let mut bump = tx
                .prepare_cached(
                    "UPDATE messages SET deliveries = max(deliveries, ?2) WHERE message_id = ?1",
                )
                .map_err(classify)?;
            // Inserting in key order walks the index once instead of hopping around it.
            let mut sorted: Vec<&SaveRow> = rows.iter().collect();
            sorted.sort_unstable_by_key(|r| r.message.message_id);
            for r in sorted {
                let id = r.message.message_id.as_bytes();
                let n = insert
                    .execute(params![id, &*r.message.instance_name.as_str(), r.attempt])
                    .map_err(classify)?;
                if n == 1 {
                    new += 1;
                } else {
                    bump.execute(params![id, r.attempt]).map_err(classify)?;
                }
            }
        }
        tx.commit().map_err(classify)?;
        Ok(new)
    }

    fn record_restarts(&mut self, rows: &[RestartRow]) -> Result<(), StoreError> {
        let tx = self.conn()?.transaction().map_err(classify)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO restarts (host, restarted_at, message_id) VALUES (?1, ?2, ?3)",
                )
                .map_err(classify)?;
            for r in rows {
                insert
                    .execute(params![&*r.host.as_str(), r.at_ms, r.message_id.as_bytes()])
                    .map_err(classify)?;
            }
        }
        tx.commit().map_err(classify)
    }

    fn restarts_since(&mut self, since_ms: i64) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT host, max(restarted_at) FROM restarts
                 WHERE restarted_at >= ?1 GROUP BY host",
            )
            .map_err(classify)?;
        let rows = stmt
            .query_map([since_ms], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))
            .map_err(classify)?;
        let mut out = Vec::new();
        for row in rows {
            let (host, at) = row.map_err(classify)?;
            // A row that is not a valid name was not written by us; skip it, loudly.
            match InstanceName::parse(&host) {
                Ok(h) => out.push((h, at)),
                Err(e) => tracing::warn!("Skipped restart history row {host:?}: {e}"),
            }
        }
        Ok(out)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        match self.conn.take() {
            Some(conn) => conn.close().map_err(|(_, e)| classify(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn row(m: Message, attempt: u32) -> SaveRow {
        SaveRow {
            message: m,
            attempt,
        }
    }

    #[test]
    fn saving_twice_stores_once_and_raises_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let m = Message::new(InstanceName::parse("cattle-a").unwrap());
        let other = Message::new(InstanceName::parse("cattle-b").unwrap());
        assert_eq!(s.save(&[row(m, 1), row(other, 1)]).unwrap(), 2);
        assert_eq!(s.save(&[row(m, 3)]).unwrap(), 0);
        s.close().unwrap();
        let conn = Connection::open(&path).unwrap();
        let (count, deliveries): (i64, i64) = conn
            .query_row("SELECT count(*), max(deliveries) FROM messages", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, deliveries), (2, 3));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn restart_history_keeps_the_latest_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let h = InstanceName::parse("cattle-a").unwrap();
        let id = uuid::Uuid::new_v4();
        let r = |at_ms| RestartRow {
            host: h,
            at_ms,
            message_id: id,
        };
        s.record_restarts(&[r(100), r(300), r(200)]).unwrap();
        assert_eq!(s.restarts_since(0).unwrap(), vec![(h, 300)]);
        assert!(s.restarts_since(301).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let err = SqliteStore::open(&path).err().expect("refused");
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
    }

    #[test]
    fn a_closed_store_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        s.close().unwrap();
        assert_eq!(s.save(&[]).unwrap_err(), StoreError::Closed);
    }
}

//! The SQLite store: WAL mode, `synchronous=NORMAL`, one transaction per batch.

use std::path::Path;

use rusqlite::{params, Connection, ErrorCode};

use super::{RestartRow, SaveRow, Store, StoreError, StoreOpener};
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
CREATE TABLE IF NOT EXISTS claims (
    host       TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// A SQLite file, opened with the schema in place.
pub struct SqliteStore {
    conn: Option<Connection>,
    flusher: Option<WalFlusher>,
}

/// WAL pages (16 KiB each) after which a commit copies the WAL back into the database.
///
/// SQLite's default, 1000 pages, is 16 MB at this page size: a commit that checkpointed
/// that much held every message waiting on it for over 20 ms. A checkpoint thread beside
/// the writer avoided that, but the WAL only starts over when a checkpoint has caught up
/// with the last commit, which never happens while the writer commits back to back: it
/// grew by 50 MB a second at 100k msgs/s. A 4 MB WAL keeps each checkpoint short and the
/// WAL bounded, and is as fast in throughput.
const WAL_PAGES: i64 = 256;

/// How often the WAL flusher syncs the WAL file to disk.
const WAL_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// Syncs the WAL file to disk from a thread of its own, every `WAL_FLUSH_EVERY`.
///
/// With `synchronous=NORMAL`, commits do not sync; a checkpoint syncs everything written
/// to the WAL since the last one before it copies it back. On this project's machines
/// that was about 5 ms for 4 MB, on the writer's thread, and every message waiting for a
/// commit waited for it: it made the p90 and the p99 of latency at 100k msgs/s. Synced
/// here a little at a time, the WAL leaves the checkpoint almost nothing to sync. The
/// commits themselves still return without waiting for the disk.
struct WalFlusher {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl WalFlusher {
    fn start(db: &Path) -> std::io::Result<Self> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mandrill-wal".into())
            .spawn(move || {
                // SQLite creates the file on the first write and reuses it after; keep
                // one handle, opened when the file is there.
                let mut file = None;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(WAL_FLUSH_EVERY)
                {
                    if file.is_none() {
                        file = std::fs::File::open(&wal).ok();
                    }
                    if let Some(f) = &file {
                        if let Err(e) = f.sync_data() {
                            tracing::warn!("Cannot sync the WAL: {e}");
                            file = None;
                        }
                    }
                }
            })?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Opens connections to one SQLite file. SQLite has a single writer, so it takes one.
#[derive(Debug, Clone)]
pub(crate) struct SqliteOpener {
    pub path: std::path::PathBuf,
}

impl StoreOpener for SqliteOpener {
    fn connections(&self) -> usize {
        1
    }

    fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
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
        // Bigger pages mean fewer WAL frames per commit; this takes effect on a new file
        // only. SQLite's default cache of 2 MB is kept: ids are time-ordered, so a batch
        // touches the last pages of each index, and a 64 MB cache cost memory (a peak of
        // 160 MB instead of 91 MB over a million messages) for no throughput.
        conn.pragma_update(None, "page_size", 16384)
            .map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let flusher = WalFlusher::start(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot start the wal flusher: {e}"),
        })?;
        Ok(Self {
            conn: Some(conn),
            flusher: Some(flusher),
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

    fn claim_restarts(
        &mut self,
        hosts: &[InstanceName],
        now_ms: i64,
        interval_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        // One write transaction: SQLite serialises writers, so no other connection can
        // claim between the check and the claim. The history is searched without an
        // index on the host; the pipeline does not claim yet, and an index would cost
        // every recorded restart.
        let tx = self
            .conn()?
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(classify)?;
        let mut won = Vec::with_capacity(hosts.len());
        {
            let mut claim = tx
                .prepare_cached(
                    "INSERT INTO claims (host, claimed_at)
                     SELECT ?1, ?2 WHERE NOT EXISTS (
                         SELECT 1 FROM restarts WHERE host = ?1 AND restarted_at > ?2 - ?3)
                     ON CONFLICT (host) DO UPDATE SET claimed_at = excluded.claimed_at
                     WHERE claims.claimed_at <= excluded.claimed_at - ?3",
                )
                .map_err(classify)?;
            for host in hosts {
                let n = claim
                    .execute(params![&*host.as_str(), now_ms, interval_ms])
                    .map_err(classify)?;
                won.push(n == 1);
            }
        }
        tx.commit().map_err(classify)?;
        Ok(won)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        match self.conn.take() {
            Some(conn) => conn.close().map_err(|(_, e)| classify(e)),
            None => Ok(()),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.stop();
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
    fn the_wal_stays_bounded_while_the_writer_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let name = InstanceName::parse("cattle-a").unwrap();
        let wal = path.with_extension("db-wal");
        let mut largest = 0;
        // About 40 MB of WAL frames if nothing ever copied them back.
        for _ in 0..300 {
            let rows: Vec<SaveRow> = (0..1000).map(|_| row(Message::new(name), 1)).collect();
            s.save(&rows).unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        let bound = 2 * WAL_PAGES as u64 * 16384;
        assert!(largest > 0, "the store is not in WAL mode");
        assert!(largest <= bound, "the WAL grew to {largest} bytes");
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

    #[test]
    fn a_claim_is_won_once_per_interval_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut a = SqliteStore::open(&path).unwrap();
        let mut b = SqliteStore::open(&path).unwrap();
        crate::store::claims_are_won_once_per_interval(&mut a, &mut b);
    }
}

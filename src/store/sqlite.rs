//! The SQLite store: WAL mode, `synchronous=NORMAL`, one transaction per batch, and a
//! schema with a version number (`PRAGMA user_version`) that older files are migrated
//! from in place when they are opened.

use std::path::Path;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::{
    Attempt, AttemptContext, Claim, ClaimTerms, Claimed, HistoryQuery, HistoryRow, OpenClaimRow,
    Places, SaveRow, Store, StoreError, StoreOpener,
};
use crate::message::InstanceName;

/// The schema's version, kept in `PRAGMA user_version`. Version 0 is a file made before
/// versions, whose `restarts` table kept successful restarts only; version 2's claims
/// held only a time, and the guard searched the history; version 3 kept each host's
/// claim in a `claims` table keyed by host, where version 4 appends claims to
/// `claim_log`, and counts starts for the fleet's rate.
const SCHEMA_VERSION: i64 = 4;

/// The tables. `claim_log` is the guard's: every claim, and every claim given back (a
/// row whose `at` is the claim it restores, or null for none), appended in order, so
/// that a host's latest row is its claim. A table keyed by host put each new host's
/// claim on a page anywhere in it, and a claim of a few hundred new hosts wrote as
/// many pages to the WAL: the durable pipeline slowed from 400k to 40k messages a
/// second. Appends fill the last page; each connection keeps the latest row of each
/// host in memory (`ClaimIndex`), and reads what other processes appended since its
/// last claim inside the claim's own write transaction.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    message_id    BLOB PRIMARY KEY,
    instance_name TEXT NOT NULL,
    deliveries    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,
    instance    TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    action      TEXT NOT NULL,
    leashed     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    service     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS restarted_by_time ON attempts (finished_at)
    WHERE outcome = 'restarted';
CREATE TABLE IF NOT EXISTS claim_log (
    id   INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    at   INTEGER
);
CREATE TABLE IF NOT EXISTS starts (started_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS starts_by_time ON starts (started_at);
";

/// Claims waiting for their restart's outcome: who holds each, for which message, until
/// when it may be given back, and the host's claim before it, which giving it back
/// restores. The table stays as small as the restarts under way, so settling a claim
/// (deleting its row here) touches a page or two, where a column of `claims`, one row per
/// host ever restarted, would touch a page anywhere in it.
const OPEN_CLAIMS: &str = "
CREATE TABLE IF NOT EXISTS open_claims (
    host        TEXT PRIMARY KEY,
    claimed_at  INTEGER NOT NULL,
    claimed_by  TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    action      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    previous_at INTEGER
) WITHOUT ROWID;
";

/// From versions before 4: the table of each host's claim that version 3 kept, which the
/// claim log replaces.
const CLAIMS: &str = "
CREATE TABLE IF NOT EXISTS claims (
    host       TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// From versions before 4: each host's claim becomes the first entry of the log.
const CLAIM_LOG_FROM_CLAIMS: &str = "
INSERT INTO claim_log (host, at) SELECT host, claimed_at FROM claims ORDER BY claimed_at;
DROP TABLE claims;
";

/// From versions before 3: each host's latest restart, or restart that timed out,
/// becomes its claim, which the guard now reads instead of the history.
const CLAIMS_FROM_HISTORY: &str = "
INSERT INTO claims (host, claimed_at)
    SELECT instance, max(finished_at) FROM attempts
    WHERE outcome IN ('restarted', 'timed_out') GROUP BY instance
    ON CONFLICT (host) DO UPDATE SET claimed_at = max(claimed_at, excluded.claimed_at);
";

/// From version 0: every successful restart of the old `restarts` table becomes an
/// attempt; what it did not keep is marked unknown.
const FROM_V0: &str = "
INSERT INTO attempts (message_id, instance, hostname, action, leashed, started_at,
                      finished_at, outcome, reason, service)
SELECT lower(substr(hex(message_id), 1, 8) || '-' || substr(hex(message_id), 9, 4) || '-' ||
             substr(hex(message_id), 13, 4) || '-' || substr(hex(message_id), 17, 4) || '-' ||
             substr(hex(message_id), 21)),
       host, host, 'unknown', 0, restarted_at, restarted_at, 'restarted',
       'recorded before the history kept every attempt', 'unknown'
FROM restarts ORDER BY id;
DROP TABLE restarts;
";

/// The old `restarts` table, as a view of the successful attempts, so that queries
/// written for it still work.
const RESTARTS_VIEW: &str = "
CREATE VIEW IF NOT EXISTS restarts AS
    SELECT id, instance AS host, finished_at AS restarted_at, message_id
    FROM attempts WHERE outcome = 'restarted';
";

/// Brings a file's schema to `SCHEMA_VERSION`, in one transaction.
fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Ok(Err(format!(
            "its schema is version {version}, newer than this program's {SCHEMA_VERSION}"
        )));
    }
    // Begun as a writer: a read transaction that later writes cannot wait for another
    // process's writer, and processes starting together on one file would fail.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let old_restarts: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'restarts'",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(SCHEMA)?;
    if version == 0 && old_restarts {
        tx.execute_batch(FROM_V0)?;
    }
    tx.execute_batch(OPEN_CLAIMS)?;
    if version < 4 {
        tx.execute_batch(CLAIMS)?;
        if version < 3 {
            tx.execute_batch(CLAIMS_FROM_HISTORY)?;
        }
        tx.execute_batch(CLAIM_LOG_FROM_CLAIMS)?;
    }
    if version < SCHEMA_VERSION && (version > 0 || old_restarts) {
        tracing::info!("Migrated the store's schema from version {version} to {SCHEMA_VERSION}");
    }
    tx.execute_batch(RESTARTS_VIEW)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(Ok(()))
}

/// How long a connection waits for another process's lock, and how long opening a file
/// is tried again while other processes create it.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why one try at opening a file failed.
#[derive(Debug, thiserror::Error)]
enum OpenFailure {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Other(String),
}

/// A SQLite file, opened with the schema in place.
pub struct SqliteStore {
    conn: Option<Connection>,
    /// The file the connection opened. SQLite writes on into a file deleted under it, and
    /// every save would then be acked into a file that is gone.
    file: OpenedFile,
    flusher: Option<WalFlusher>,
    /// The claim log as this connection last read it; `None` until first needed, and
    /// after a failed claim, whose changes to it may not have been committed.
    claim_index: Option<ClaimIndex>,
    /// Run by the next save between its writes and its commit, where a test deletes the
    /// file that the check before the batch found still there.
    #[cfg(test)]
    before_commit: Option<Box<dyn FnOnce() + Send>>,
}

/// Each host's latest claim in `claim_log`, as of the log's row `seen`.
#[derive(Default)]
struct ClaimIndex {
    seen: i64,
    /// It grows with every new host; a table that doubles all at once would hold the
    /// store thread for tens of milliseconds at a few hundred thousand.
    at: griddle::HashMap<InstanceName, i64, foldhash::fast::RandomState>,
}

impl ClaimIndex {
    /// Reads the rows appended since `seen`, by this connection or another.
    fn catch_up(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let mut stmt = conn
            .prepare_cached("SELECT id, host, at FROM claim_log WHERE id > ?1 ORDER BY id")
            .map_err(classify)?;
        let mut rows = stmt.query([self.seen]).map_err(classify)?;
        while let Some(r) = rows.next().map_err(classify)? {
            let (id, host, at): (i64, String, Option<i64>) = (
                r.get(0).map_err(classify)?,
                r.get(1).map_err(classify)?,
                r.get(2).map_err(classify)?,
            );
            if let Some(h) = super::history_host(&host) {
                match at {
                    Some(at) => {
                        self.at.insert(h, at);
                    }
                    None => {
                        self.at.remove(&h);
                    }
                }
            }
            self.seen = id;
        }
        Ok(())
    }
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

/// The database file as it was opened: its path, and which file that was.
struct OpenedFile {
    path: std::path::PathBuf,
    /// Its device and inode; none where the platform does not say.
    id: Option<(u64, u64)>,
}

impl OpenedFile {
    fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            id: file_id(&std::fs::metadata(path)?),
        })
    }

    /// Fails when the path no longer leads to the file that was opened: it was deleted,
    /// or replaced by another. No restart mends that, so it is a corrupt store, which
    /// escalates by default.
    fn check(&self) -> Result<(), StoreError> {
        let now = match std::fs::metadata(&self.path) {
            Ok(meta) => file_id(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!(
                    "the database file {} was deleted while the service ran",
                    self.path.display()
                )))
            }
            // A path that cannot be looked at just now says nothing of the file.
            Err(_) => return Ok(()),
        };
        if now != self.id {
            return Err(StoreError::Corrupt(format!(
                "the database file {} was replaced by another while the service ran",
                self.path.display()
            )));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
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
        // Processes opening one new file at once race to create it, to turn on WAL and
        // to write the schema. SQLite answers some of those races "database is locked"
        // at once, without waiting on the busy timeout (switching the journal mode is
        // one), so the open is made again until that timeout has passed.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::open_once(path) {
                Err(OpenFailure::Sqlite(e))
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => {
                    return result.map_err(|e| StoreError::Open {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, OpenFailure> {
        let mut conn = Connection::open(path)?;
        // SQLite opens a file it may not write read-only, without a word; every save
        // would then fail, and every message go to the dead letters.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(OpenFailure::Other(
                "the file is read-only for this user".into(),
            ));
        }
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Bigger pages mean fewer WAL frames per commit; this takes effect on a new file
        // only. SQLite's default cache of 2 MB is kept: ids are time-ordered, so a batch
        // touches the last pages of each index, and a 64 MB cache cost memory (a peak of
        // 160 MB instead of 91 MB over a million messages) for no throughput.
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?.map_err(OpenFailure::Other)?;
        let flusher = WalFlusher::start(path)
            .map_err(|e| OpenFailure::Other(format!("cannot start the wal flusher: {e}")))?;
        let file = OpenedFile::of(path).map_err(|e| OpenFailure::Other(e.to_string()))?;
        Ok(Self {
            conn: Some(conn),
            file,
            flusher: Some(flusher),
            claim_index: None,
            #[cfg(test)]
            before_commit: None,
        })
    }

    /// The connection, once the file is known to be still there: one `stat` a call, and
    /// a call is a whole batch.
    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        if self.conn.is_some() {
            self.file.check()?;
        }
        self.conn.as_mut().ok_or(StoreError::Closed)
    }
}

impl Store for SqliteStore {
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
        #[cfg(test)]
        let before_commit = self.before_commit.take();
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
        #[cfg(test)]
        if let Some(hook) = before_commit {
            hook();
        }
        tx.commit().map_err(classify)?;
        // The file may have been deleted after the check before the batch: the commit then
        // went into a file that is gone, and its messages must not be acked as saved. A
        // file deleted after this check held the batch when the batch was acked.
        self.file.check()?;
        Ok(new)
    }

    fn record_attempts(
        &mut self,
        context: &AttemptContext,
        rows: &[Attempt],
    ) -> Result<(), StoreError> {
        let tx = self.conn()?.transaction().map_err(classify)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO attempts (message_id, instance, hostname, action, leashed,
                         started_at, finished_at, outcome, reason, service)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(classify)?;
            let mut settle = tx
                .prepare_cached(
                    "DELETE FROM open_claims
                     WHERE host = ?1 AND message_id = ?2 AND claimed_by = ?3",
                )
                .map_err(classify)?;
            for r in rows {
                let id = r.message_id.hyphenated().to_string();
                // The attempt's claim, if it held one, has its outcome: it stands as the
                // host's last restart, or is given back if nothing was restarted.
                if !context.claimed {
                } else if r.outcome.gives_back_claim() {
                    release(&tx, &context.service, r.host, &id)?;
                } else {
                    settle
                        .execute(params![&*r.host.as_str(), &id, &*context.service])
                        .map_err(classify)?;
                }
                insert
                    .execute(params![
                        id,
                        &*r.host.as_str(),
                        r.host.hostname(&context.domain).to_string(),
                        context.action,
                        context.leashed,
                        r.started_ms,
                        r.finished_ms,
                        &*r.outcome.text(),
                        r.reason.as_deref(),
                        &*context.service,
                    ])
                    .map_err(classify)?;
            }
        }
        tx.commit().map_err(classify)
    }

    fn restarts_since(
        &mut self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        let mut index = self.claim_index.take().unwrap_or_default();
        let conn = self.conn()?;
        index.catch_up(conn)?;
        // A claim still waiting within its ttl may yet be given back.
        let mut stmt = conn
            .prepare("SELECT host FROM open_claims WHERE expires_at >= ?1")
            .map_err(classify)?;
        let waiting: std::collections::HashSet<String> = stmt
            .query_map([now_ms], |r| r.get(0))
            .map_err(classify)?
            .collect::<Result<_, _>>()
            .map_err(classify)?;
        drop(stmt);
        let out = index
            .at
            .iter()
            .filter(|(h, &at)| at >= since_ms && !waiting.contains(&*h.as_str()))
            .map(|(h, &at)| (*h, at))
            .collect();
        self.claim_index = Some(index);
        Ok(out)
    }

    fn claim_restarts(
        &mut self,
        claims: &[Claim],
        terms: &ClaimTerms,
    ) -> Result<Vec<Claimed>, StoreError> {
        // One write transaction, begun as a writer: SQLite serialises writers, across
        // processes too, so no other connection can claim between reading the log and
        // appending to it, and the claim is on disk before the restart runs. The index
        // is put back only once the claim is committed.
        let mut index = self.claim_index.take().unwrap_or_default();
        let tx = self
            .conn()?
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(classify)?;
        index.catch_up(&tx)?;
        let mut out = Vec::with_capacity(claims.len());
        let mut places = if terms.fleet.any() {
            Some(fleet_places(&tx, terms)?)
        } else {
            None
        };
        {
            let mut expires = tx
                .prepare_cached("SELECT expires_at FROM open_claims WHERE host = ?1")
                .map_err(classify)?;
            let mut claim = tx
                .prepare_cached("INSERT INTO claim_log (host, at) VALUES (?1, ?2)")
                .map_err(classify)?;
            // A claim left open past its ttl by an instance that died goes into the
            // history as `unknown` when a new claim on its host replaces it.
            let mut lapsed = tx
                .prepare_cached(&format!(
                    "INSERT INTO attempts (message_id, instance, hostname, action, leashed,
                         started_at, finished_at, outcome, reason, service)
                     SELECT message_id, host, hostname, action, 0, claimed_at, expires_at,
                            'unknown', '{}', claimed_by
                     FROM open_claims WHERE host = ?1",
                    super::UNKNOWN
                ))
                .map_err(classify)?;
            let mut open = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO open_claims (host, claimed_at, claimed_by,
                         message_id, hostname, action, expires_at, previous_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(classify)?;
            for c in claims {
                let host = c.host.as_str();
                // Only a host with a claim can have one open.
                let prior: Option<(i64, Option<i64>)> = match index.at.get(&c.host) {
                    Some(&at) => {
                        let open = expires
                            .query_row([&*host], |r| r.get(0))
                            .optional()
                            .map_err(classify)?;
                        Some((at, open))
                    }
                    None => None,
                };
                if let Some(found) = prior.and_then(|(at, expires)| terms.stopped_by(at, expires)) {
                    out.push(found);
                    continue;
                }
                if let Some(no) = places.as_mut().and_then(|p| p.take()) {
                    out.push(no);
                    continue;
                }
                if terms.fleet.starts.is_some() {
                    tx.prepare_cached("INSERT INTO starts (started_at) VALUES (?1)")
                        .and_then(|mut s| s.execute([terms.now_ms]))
                        .map_err(classify)?;
                }
                // No other connection writes until this one commits, so the log is
                // read up to here: this claim's row need not be read back.
                index.seen = claim
                    .insert(params![&*host, terms.now_ms])
                    .map_err(classify)?;
                if prior.is_some_and(|(_, expires)| expires.is_some()) {
                    lapsed.execute([&*host]).map_err(classify)?;
                }
                open.execute(params![
                    &*host,
                    terms.now_ms,
                    &*terms.context.service,
                    c.message_id.hyphenated().to_string(),
                    c.host.hostname(&terms.context.domain).to_string(),
                    terms.context.action,
                    terms.now_ms + terms.ttl_ms,
                    prior.map(|(at, _)| at),
                ])
                .map_err(classify)?;
                index.at.insert(c.host, terms.now_ms);
                out.push(Claimed::Won);
            }
        }
        tx.commit().map_err(classify)?;
        self.claim_index = Some(index);
        Ok(out)
    }

    fn release_claims(&mut self, service: &str, claims: &[Claim]) -> Result<(), StoreError> {
        let tx = self
            .conn()?
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(classify)?;
        for c in claims {
            release(&tx, service, c.host, &c.message_id.hyphenated().to_string())?;
        }
        tx.commit().map_err(classify)
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

/// The places the fleet's rails leave, read inside a claim's write transaction, which
/// no other process's claim can interleave with; restarts started too long ago for any
/// window are forgotten first.
fn fleet_places(tx: &rusqlite::Transaction<'_>, terms: &ClaimTerms) -> Result<Places, StoreError> {
    let now = terms.now_ms;
    tx.prepare_cached("DELETE FROM starts WHERE started_at <= ?1")
        .and_then(|mut s| s.execute([now - terms.fleet.starts_kept_ms()]))
        .map_err(classify)?;
    let count = |sql: &str, at: i64| -> Result<u64, StoreError> {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.query_row([at], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(classify)
    };
    let running = match terms.fleet.running {
        Some(_) => count(
            "SELECT count(*) FROM open_claims WHERE expires_at >= ?1",
            now,
        )?,
        None => 0,
    };
    let started = match terms.fleet.starts {
        Some((window, _)) => count(
            "SELECT count(*) FROM starts WHERE started_at > ?1",
            now - window,
        )?,
        None => 0,
    };
    Ok(terms.fleet.places(running, started))
}

/// Gives back the claim `service` holds on `host` for message `id`, if it still does:
/// the host counts from its claim before, or has none.
fn release(
    tx: &rusqlite::Transaction<'_>,
    service: &str,
    host: InstanceName,
    id: &str,
) -> Result<(), StoreError> {
    let host = host.as_str();
    let previous: Option<Option<i64>> = tx
        .prepare_cached(
            "DELETE FROM open_claims WHERE host = ?1 AND message_id = ?2 AND claimed_by = ?3
             RETURNING previous_at",
        )
        .and_then(|mut s| {
            s.query_row(params![&*host, id, service], |r| r.get(0))
                .optional()
        })
        .map_err(classify)?;
    let Some(previous) = previous else {
        return Ok(());
    };
    tx.prepare_cached("INSERT INTO claim_log (host, at) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![&*host, previous]))
        .map_err(classify)?;
    Ok(())
}

/// Reads the newest attempts that match `q`, newest first. The file is opened read-only,
/// so this runs beside a service writing it. Rows are read back from the newest by their
/// id, which grows as they are written: an index by time would cost every write, and
/// the history is read far less often than it is written.
pub fn read_history(path: &Path, q: &HistoryQuery) -> Result<Vec<HistoryRow>, StoreError> {
    use rusqlite::OpenFlags;
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            reason: format!(
                "its schema is version {version}, not {SCHEMA_VERSION}; \
                 run the service on it once to migrate it"
            ),
        });
    }
    let mut stmt = conn
        .prepare(
            "SELECT started_at, finished_at, instance, hostname, action, leashed, outcome,
                    reason, service, message_id
             FROM attempts
             WHERE (?1 IS NULL OR instance GLOB ?1)
               AND (?2 IS NULL OR started_at >= ?2)
               AND (?3 IS NULL OR outcome = ?3 OR (?3 = 'refused' AND outcome LIKE 'refused:%'))
             ORDER BY id DESC
             LIMIT ?4",
        )
        .map_err(classify)?;
    let rows = stmt
        .query_map(
            params![q.host, q.since_ms, q.outcome, q.limit as i64],
            |r| {
                Ok(HistoryRow {
                    started_ms: r.get(0)?,
                    finished_ms: r.get(1)?,
                    instance: r.get(2)?,
                    hostname: r.get(3)?,
                    action: r.get(4)?,
                    leashed: r.get(5)?,
                    outcome: r.get(6)?,
                    reason: r.get(7)?,
                    service: r.get(8)?,
                    message_id: r.get(9)?,
                })
            },
        )
        .map_err(classify)?;
    let attempts = rows.collect::<Result<_, _>>().map_err(classify)?;
    let mut stmt = conn
        .prepare(
            "SELECT host, claimed_at, expires_at, claimed_by, message_id, hostname, action
             FROM open_claims
             WHERE (?1 IS NULL OR host GLOB ?1) AND (?2 IS NULL OR claimed_at >= ?2)",
        )
        .map_err(classify)?;
    let claims = stmt
        .query_map(params![q.host, q.since_ms], |r| {
            Ok(OpenClaimRow {
                instance: r.get(0)?,
                claimed_ms: r.get(1)?,
                expires_ms: r.get(2)?,
                service: r.get(3)?,
                message_id: r.get(4)?,
                hostname: r.get(5)?,
                action: r.get(6)?,
            })
        })
        .map_err(classify)?
        .collect::<Result<_, _>>()
        .map_err(classify)?;
    Ok(super::merge_history(attempts, claims, q, q.now_ms))
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
    use crate::store::FleetRails;

    fn row(m: Message, attempt: u32) -> SaveRow {
        SaveRow {
            message: m,
            attempt,
        }
    }

    #[test]
    fn a_file_deleted_or_replaced_under_the_store_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let m = || Message::new(InstanceName::parse("cattle-a").unwrap());
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.save(&[row(m(), 1)]).unwrap(), 1);
        std::fs::remove_file(&path).unwrap();
        let e = s.save(&[row(m(), 1)]).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt(why) if why.contains("deleted")),
            "{e}"
        );

        let mut s = SqliteStore::open(&path).unwrap();
        let other = dir.path().join("other.db");
        drop(SqliteStore::open(&other).unwrap());
        std::fs::rename(&other, &path).unwrap();
        let e = s.save(&[row(m(), 1)]).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt(why) if why.contains("replaced")),
            "{e}"
        );
    }

    #[test]
    fn a_file_deleted_while_a_batch_is_written_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let m = || Message::new(InstanceName::parse("cattle-a").unwrap());
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.save(&[row(m(), 1)]).unwrap(), 1);
        let gone = path.clone();
        s.before_commit = Some(Box::new(move || {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = gone.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }));
        let e = s.save(&[row(m(), 1)]).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt(why) if why.contains("deleted")),
            "{e}"
        );
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
    fn the_guard_loads_each_hosts_latest_claim() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        crate::store::the_guard_loads_each_hosts_latest_claim(&mut s);
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

    #[test]
    fn raced_claims_win_each_host_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        SqliteStore::open(&path).unwrap();
        crate::store::raced_claims_win_each_host_once(&|| {
            Box::new(SqliteStore::open(&path).unwrap())
        });
    }

    #[test]
    fn writes_in_any_order_never_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        SqliteStore::open(&path).unwrap();
        crate::store::writes_in_any_order_never_deadlock(&|| {
            Box::new(SqliteStore::open(&path).unwrap())
        });
    }

    #[test]
    fn the_fleets_rails_count_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut a = SqliteStore::open(&path).unwrap();
        let mut b = SqliteStore::open(&path).unwrap();
        crate::store::the_fleets_rails_count_every_connection(&mut a, &mut b);
    }

    #[test]
    fn raced_claims_take_each_place_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        SqliteStore::open(&path).unwrap();
        crate::store::raced_claims_take_each_place_once(&|| {
            Box::new(SqliteStore::open(&path).unwrap())
        });
    }

    #[test]
    fn a_claim_left_without_an_outcome_shows_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let context = AttemptContext::test();
        let host = InstanceName::parse("web-01").unwrap();
        let mut claim = |now_ms| {
            let terms = ClaimTerms {
                context: &context,
                now_ms,
                interval_ms: 3_600_000,
                ttl_ms: 60_000,
                fleet: FleetRails::default(),
            };
            let c = Claim {
                host,
                message_id: uuid::Uuid::new_v4(),
            };
            s.claim_restarts(&[c], &terms).unwrap()
        };
        assert_eq!(claim(1_000), [Claimed::Won]);
        let outcomes = |now_ms| -> Vec<String> {
            let q = HistoryQuery {
                limit: 10,
                now_ms,
                ..HistoryQuery::default()
            };
            let rows = read_history(&path, &q).unwrap();
            rows.into_iter().map(|r| r.outcome).collect()
        };
        assert_eq!(outcomes(2_000), ["running"]);
        assert_eq!(outcomes(70_000), ["unknown"]);
        assert_eq!(claim(3_700_000), [Claimed::Won]);
        assert_eq!(outcomes(3_700_001), ["running", "unknown"]);
    }

    /// The schema of files made before the schema had a version.
    const V0: &str = "
        CREATE TABLE messages (message_id BLOB PRIMARY KEY, instance_name TEXT NOT NULL,
                               deliveries INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE restarts (id INTEGER PRIMARY KEY, host TEXT NOT NULL,
                               restarted_at INTEGER NOT NULL, message_id BLOB NOT NULL);
        CREATE INDEX restarts_by_time ON restarts (restarted_at);
    ";

    #[test]
    fn an_old_file_is_migrated_in_place_with_nothing_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let id = uuid::Uuid::parse_str("6f1c2a9e-5b7d-4c1e-9a3f-2d8e4b6c0a17").unwrap();
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(V0).unwrap();
            old.execute(
                "INSERT INTO messages VALUES (?1, 'cattle-a', 2)",
                [id.as_bytes()],
            )
            .unwrap();
            old.execute(
                "INSERT INTO restarts (host, restarted_at, message_id) VALUES ('cattle-a', 5000, ?1)",
                [id.as_bytes()],
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let h = InstanceName::parse("cattle-a").unwrap();
        assert_eq!(s.restarts_since(0, 6000).unwrap(), vec![(h, 5000)]);
        s.close().unwrap();
        let conn = Connection::open(&path).unwrap();
        let (version, messages): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT count(*) FROM messages)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, messages), (SCHEMA_VERSION, 1));
        let (mid, outcome): (String, String) = conn
            .query_row("SELECT message_id, outcome FROM attempts", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((mid, outcome.as_str()), (id.to_string(), "restarted"));
        // Opened again, it is left as it is.
        SqliteStore::open(&path).unwrap();
    }

    #[test]
    fn a_version_3_file_keeps_its_claims_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE claims (host TEXT PRIMARY KEY, claimed_at INTEGER NOT NULL)
                     WITHOUT ROWID;
                 INSERT INTO claims VALUES ('web-01', 5000), ('web-02', 7000);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let mut since = s.restarts_since(6_000, 8_000).unwrap();
        since.sort_by_key(|(h, _)| h.as_str().to_string());
        assert_eq!(since, [(InstanceName::parse("web-02").unwrap(), 7000)]);
        let tables: i64 = s
            .conn()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'claims'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the old table is dropped");
    }

    #[test]
    fn connections_opening_a_new_file_at_once_all_open_it() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("new.db");
            let start = std::sync::Barrier::new(6);
            std::thread::scope(|s| {
                let openers: Vec<_> = (0..6)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            SqliteStore::open(&path).map(drop)
                        })
                    })
                    .collect();
                for o in openers {
                    let opened = o.join().unwrap();
                    assert!(opened.is_ok(), "{:?}", opened.err());
                }
            });
        }
    }

    #[test]
    fn a_file_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = SqliteStore::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer than this program"), "{err}");
    }
}

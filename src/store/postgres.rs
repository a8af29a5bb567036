//! The PostgreSQL store, which several instances share: one round trip a batch for saves
//! (`UNNEST` arrays, `ON CONFLICT`), restart claims won by exactly one instance, and a
//! schema with a version number, created or migrated at start under an advisory lock.
//!
//! It uses the blocking `postgres` client: the store contract is synchronous, and every
//! connection already has a writer thread of its own, so nothing blocks the event loop
//! and no second runtime is needed.

use std::collections::HashMap;

use postgres::{Client, NoTls};
use uuid::Uuid;

use super::{
    Attempt, AttemptContext, Claim, ClaimTerms, Claimed, HistoryQuery, HistoryRow, OpenClaimRow,
    SaveRow, Store, StoreError, StoreOpener,
};
use crate::message::InstanceName;

/// The schema's version, kept in `mandrill_schema`. Version 1's claims held only a
/// time, and the guard searched the history; version 2 had no `starts`.
const SCHEMA_VERSION: i32 = 3;

/// Serialises schema changes between instances starting at once.
const SCHEMA_LOCK: i64 = 0x6d61_6e64_7269_6c6c;

/// Serialises the claims of instances that share the fleet's rails, so that counting
/// the places left and taking them is one step across the fleet.
const RAILS_LOCK: i64 = 0x6d61_6e64_7261_696c;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mandrill_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    message_id    uuid PRIMARY KEY,
    instance_name text NOT NULL,
    deliveries    integer NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id          bigserial PRIMARY KEY,
    message_id  text NOT NULL,
    instance    text NOT NULL,
    hostname    text NOT NULL,
    action      text NOT NULL,
    leashed     boolean NOT NULL,
    started_at  bigint NOT NULL,
    finished_at bigint NOT NULL,
    outcome     text NOT NULL,
    reason      text,
    service     text NOT NULL
);
CREATE INDEX IF NOT EXISTS restarted_by_time ON attempts (finished_at)
    WHERE outcome = 'restarted';
CREATE TABLE IF NOT EXISTS claims (
    host       text PRIMARY KEY,
    claimed_at bigint NOT NULL
);
ALTER TABLE claims ADD COLUMN IF NOT EXISTS previous_at bigint;
CREATE TABLE IF NOT EXISTS open_claims (
    host        text PRIMARY KEY,
    claimed_at  bigint NOT NULL,
    claimed_by  text NOT NULL,
    message_id  text NOT NULL,
    hostname    text NOT NULL,
    action      text NOT NULL,
    expires_at  bigint NOT NULL,
    previous_at bigint
);
CREATE TABLE IF NOT EXISTS starts (started_at bigint NOT NULL);
CREATE INDEX IF NOT EXISTS starts_by_time ON starts (started_at);
";

/// From version 1: each host's latest restart, or restart that timed out, becomes its
/// claim, which the guard now reads instead of the history.
const CLAIMS_FROM_HISTORY: &str = "
INSERT INTO claims (host, claimed_at)
    SELECT instance, max(finished_at) FROM attempts
    WHERE outcome IN ('restarted', 'timed_out') GROUP BY instance
ON CONFLICT (host) DO UPDATE SET claimed_at = GREATEST(claims.claimed_at, excluded.claimed_at);
";

/// The open claims `$1` holds for the messages `$3` on the hosts `$2`, as `t`.
const MINE: &str = "FROM open_claims AS o USING UNNEST($2::text[], $3::text[]) AS t(host, id)
                    WHERE o.host = t.host AND o.message_id = t.id AND o.claimed_by = $1";

/// A database to connect to, read from a `postgres://` URL. It prints and compares as
/// its hosts, database and user, never its password.
#[derive(Clone)]
pub struct Database(pub Box<postgres::Config>);

impl std::str::FromStr for Database {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        url.parse::<postgres::Config>()
            .map(|c| Self(Box::new(c)))
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl PartialEq for Database {
    fn eq(&self, other: &Self) -> bool {
        describe(&self.0) == describe(&other.0) && self.0.get_user() == other.0.get_user()
    }
}

impl Eq for Database {}

/// Opens connections to one PostgreSQL database, up to `pool` at once.
pub struct PostgresOpener {
    pub database: Database,
    pub pool: usize,
}

impl StoreOpener for PostgresOpener {
    fn connections(&self) -> usize {
        self.pool.max(1)
    }

    fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(PostgresStore::open(&self.database.0)?))
    }
}

/// One connection to the shared database.
pub struct PostgresStore {
    client: Option<Client>,
}

fn classify(e: postgres::Error) -> StoreError {
    StoreError::Unavailable(why(&e))
}

/// What went wrong, in full: the client's own text for a server error is only "db
/// error", and for a failed connection only "error connecting to server".
fn why(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Where the database is, never with a password.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

/// Where a config points, for messages: the hosts and the database, never a password.
fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl PostgresStore {
    /// Connects, and creates or migrates the schema.
    pub fn open(config: &postgres::Config) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: describe(config),
            reason,
        };
        let mut client = config.connect(NoTls).map_err(|e| open_err(why(&e)))?;
        migrate(&mut client).map_err(open_err)?;
        Ok(Self {
            client: Some(client),
        })
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client.as_mut().ok_or(StoreError::Closed)
    }
}

/// Creates the schema, or checks its version, in one transaction that holds the
/// schema lock, so that instances starting together do not race.
fn migrate(client: &mut Client) -> Result<(), String> {
    // A schema already at this version is left alone, without a lock or a statement of
    // DDL: `ALTER TABLE` takes a table's strongest lock even when it changes nothing,
    // and a connection opened while other instances claim and save would wait on them
    // and make them wait on it, until the server broke the deadlock.
    if let Ok(Some(row)) = client.query_opt("SELECT version FROM mandrill_schema", &[]) {
        let v: i32 = row.get(0);
        if v == SCHEMA_VERSION {
            return Ok(());
        }
    }
    let mut tx = client.transaction().map_err(|e| why(&e))?;
    // "Already exists, skipping" is the normal case, not news for the log.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .map_err(|e| why(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(|e| why(&e))?;
    tx.batch_execute(SCHEMA).map_err(|e| why(&e))?;
    let version: Option<i32> = tx
        .query_opt("SELECT version FROM mandrill_schema", &[])
        .map_err(|e| why(&e))?
        .map(|r| r.get(0));
    match version {
        None => {
            tx.execute(
                "INSERT INTO mandrill_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(|e| why(&e))?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(format!(
                "its schema is version {v}, newer than this build's {SCHEMA_VERSION}"
            ))
        }
        Some(v) if v < SCHEMA_VERSION => {
            if v < 2 {
                tx.batch_execute(CLAIMS_FROM_HISTORY).map_err(|e| why(&e))?;
            }
            tx.execute(
                "UPDATE mandrill_schema SET version = $1",
                &[&SCHEMA_VERSION],
            )
            .map_err(|e| why(&e))?;
            tracing::info!("Migrated the store's schema from version {v} to {SCHEMA_VERSION}");
        }
        Some(_) => {}
    }
    tx.commit().map_err(|e| why(&e))
}

/// Gives back the claims `service` holds on `hosts` for the messages `ids`, if it still
/// does: each host counts from its claim before, or has none.
fn release(
    tx: &mut postgres::Transaction<'_>,
    service: &str,
    hosts: &[String],
    ids: &[String],
) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "WITH gone AS (DELETE {MINE} RETURNING o.host, o.previous_at),
             restored AS (UPDATE claims AS c SET claimed_at = g.previous_at
                          FROM gone AS g
                          WHERE c.host = g.host AND g.previous_at IS NOT NULL)
             DELETE FROM claims AS c USING gone AS g
             WHERE c.host = g.host AND g.previous_at IS NULL"
        ),
        &[&service, &hosts, &ids],
    )
    .map_err(classify)?;
    Ok(())
}

impl Store for PostgresStore {
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
        // One statement may not touch a row twice: a batch that holds a message twice
        // sends it once, at its highest delivery. Rows go in the order of their ids, so
        // that instances saving the same redelivered messages cannot deadlock.
        let mut by_id: HashMap<Uuid, (String, i32)> = HashMap::with_capacity(rows.len());
        for r in rows {
            let attempt = i32::try_from(r.attempt).unwrap_or(i32::MAX);
            let e = by_id
                .entry(r.message.message_id)
                .or_insert_with(|| (r.message.instance_name.as_str().to_string(), attempt));
            e.1 = e.1.max(attempt);
        }
        let mut ids = Vec::with_capacity(by_id.len());
        let mut names = Vec::with_capacity(by_id.len());
        let mut deliveries = Vec::with_capacity(by_id.len());
        for (id, (name, n)) in by_id {
            ids.push(id);
            names.push(name);
            deliveries.push(n);
        }
        let inserted = self
            .client()?
            .query(
                "INSERT INTO messages (message_id, instance_name, deliveries)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(id, name, n)
                 ORDER BY id
                 ON CONFLICT (message_id) DO UPDATE
                     SET deliveries = GREATEST(messages.deliveries, excluded.deliveries)
                 RETURNING (xmax = 0)",
                &[&ids, &names, &deliveries],
            )
            .map_err(classify)?;
        Ok(inserted.iter().filter(|r| r.get::<_, bool>(0)).count() as u64)
    }

    fn record_attempts(
        &mut self,
        context: &AttemptContext,
        rows: &[Attempt],
    ) -> Result<(), StoreError> {
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.message_id.hyphenated().to_string())
            .collect();
        let hosts: Vec<String> = rows.iter().map(|r| r.host.as_str().to_string()).collect();
        let hostnames: Vec<String> = rows
            .iter()
            .map(|r| r.host.hostname(&context.domain).to_string())
            .collect();
        let started: Vec<i64> = rows.iter().map(|r| r.started_ms).collect();
        let finished: Vec<i64> = rows.iter().map(|r| r.finished_ms).collect();
        let outcomes: Vec<String> = rows.iter().map(|r| r.outcome.text().into_owned()).collect();
        let reasons: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.reason.as_deref().map(str::to_string))
            .collect();
        let mut tx = self.client()?.transaction().map_err(classify)?;
        tx.execute(
            "INSERT INTO attempts (message_id, instance, hostname, action, leashed,
                     started_at, finished_at, outcome, reason, service)
                 SELECT id, host, hostname, $4, $5, started, finished, outcome, reason, $9
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $6::bigint[],
                             $7::bigint[], $8::text[], $10::text[])
                     AS t(id, host, hostname, started, finished, outcome, reason)",
            &[
                &ids,
                &hosts,
                &hostnames,
                &context.action,
                &context.leashed,
                &started,
                &finished,
                &outcomes,
                &&*context.service,
                &reasons,
            ],
        )
        .map_err(classify)?;
        // The claims the attempts held are settled in the same transaction: they stand
        // as the hosts' last restarts, or are given back if nothing was restarted.
        let (mut kept, mut gone) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (i, r) in rows.iter().enumerate().filter(|_| context.claimed) {
            let to = if r.outcome.gives_back_claim() {
                &mut gone
            } else {
                &mut kept
            };
            to.0.push(hosts[i].clone());
            to.1.push(ids[i].clone());
        }
        if !kept.0.is_empty() {
            tx.execute(
                &format!("DELETE {MINE}"),
                &[&&*context.service, &kept.0, &kept.1],
            )
            .map_err(classify)?;
        }
        if !gone.0.is_empty() {
            release(&mut tx, &context.service, &gone.0, &gone.1)?;
        }
        tx.commit().map_err(classify)
    }

    fn restarts_since(
        &mut self,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT c.host, c.claimed_at FROM claims AS c
                 LEFT JOIN open_claims AS o ON o.host = c.host
                 WHERE c.claimed_at >= $1 AND (o.expires_at IS NULL OR o.expires_at < $2)",
                &[&since_ms, &now_ms],
            )
            .map_err(classify)?;
        Ok(rows
            .iter()
            .filter_map(|row| super::history_host(row.get(0)).map(|h| (h, row.get(1))))
            .collect())
    }

    fn claim_restarts(
        &mut self,
        claims: &[Claim],
        terms: &ClaimTerms,
    ) -> Result<Vec<Claimed>, StoreError> {
        // One statement claims them all: a claim that conflicts with another instance's
        // waits for that row, then sees its claim and loses, so each host is won by one
        // instance alone. A statement may not touch a row twice, so a host named twice
        // is claimed for its first mention only; the others lose. Rows are claimed in
        // the order of their hosts: two instances that claimed overlapping hosts in
        // their own orders would each wait for a row the other holds, until the
        // server's deadlock check (a second) failed one of them.
        //
        // The open claim a won claim replaces is written to the history as `unknown`
        // only when it is the claim the host's row held, `previous_at`. The statement
        // reads `open_claims` as it stood when it began, while a claim that waited for
        // a host's row sees what committed since: an open claim given back meanwhile
        // (its restart failed) is still in the first and gone from the second, and was
        // written as a restart that may have happened beside its `failed` attempt.
        let mut tx = self.client()?.transaction().map_err(classify)?;
        // With the fleet's rails, what each claim would meet is decided first, under
        // a lock every instance with the rails takes: those the guard would let through
        // take the places left in order, and only those that got one are claimed.
        let decided: Vec<Option<Claimed>> = if terms.fleet.any() {
            fleet_decisions(&mut tx, claims, terms)?
        } else {
            vec![None; claims.len()]
        };
        let mut first = std::collections::HashSet::with_capacity(claims.len());
        let (mut hosts, mut ids, mut hostnames) = (Vec::new(), Vec::new(), Vec::new());
        let tried = claims.iter().zip(&decided).filter(|(_, d)| d.is_none());
        for (c, _) in tried.filter(|(c, _)| first.insert(c.host)) {
            hosts.push(c.host.as_str().to_string());
            ids.push(c.message_id.hyphenated().to_string());
            hostnames.push(c.host.hostname(&terms.context.domain).to_string());
        }
        if terms.fleet.starts.is_some() && !hosts.is_empty() {
            tx.execute(
                "INSERT INTO starts (started_at) SELECT $1 FROM generate_series(1, $2)",
                &[&terms.now_ms, &(hosts.len() as i32)],
            )
            .map_err(classify)?;
        }
        let won: HashMap<String, String> = tx
            .query(
                "WITH t AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
                            AS t(h, id, hn)),
                 won AS (
                     INSERT INTO claims AS c (host, claimed_at)
                     SELECT h, $4::bigint FROM t ORDER BY h
                     ON CONFLICT (host) DO UPDATE SET
                         previous_at = c.claimed_at, claimed_at = excluded.claimed_at
                     WHERE c.claimed_at <= excluded.claimed_at - $8::bigint
                       AND NOT EXISTS (SELECT 1 FROM open_claims AS r
                                       WHERE r.host = c.host AND r.expires_at >= $4)
                     RETURNING c.host, c.previous_at),
                 lapsed AS (
                     INSERT INTO attempts (message_id, instance, hostname, action, leashed,
                                           started_at, finished_at, outcome, reason, service)
                     SELECT o.message_id, o.host, o.hostname, o.action, false, o.claimed_at,
                            o.expires_at, 'unknown', $9, o.claimed_by
                     FROM open_claims AS o
                     JOIN won ON won.host = o.host AND o.claimed_at = won.previous_at)
                 INSERT INTO open_claims AS o (host, claimed_at, claimed_by, message_id,
                                               hostname, action, expires_at, previous_at)
                 SELECT won.host, $4::bigint, $5, t.id, t.hn, $6, $4::bigint + $7::bigint,
                        won.previous_at
                 FROM won JOIN t ON t.h = won.host ORDER BY won.host
                 ON CONFLICT (host) DO UPDATE SET
                     claimed_at = excluded.claimed_at, claimed_by = excluded.claimed_by,
                     message_id = excluded.message_id, hostname = excluded.hostname,
                     action = excluded.action, expires_at = excluded.expires_at,
                     previous_at = excluded.previous_at
                 RETURNING o.host, o.message_id",
                &[
                    &hosts,
                    &ids,
                    &hostnames,
                    &terms.now_ms,
                    &&*terms.context.service,
                    &terms.context.action,
                    &terms.ttl_ms,
                    &terms.interval_ms,
                    &super::UNKNOWN,
                ],
            )
            .map_err(classify)?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // What holds the hosts lost, read after the claim: each statement sees what was
        // committed before it began, the claims that beat this one included.
        let lost: Vec<&String> = hosts.iter().filter(|h| !won.contains_key(*h)).collect();
        let holders: HashMap<String, (i64, Option<i64>)> = if lost.is_empty() {
            HashMap::new()
        } else {
            tx.query(
                "SELECT c.host, c.claimed_at, o.expires_at FROM claims AS c
                 LEFT JOIN open_claims AS o ON o.host = c.host WHERE c.host = ANY($1)",
                &[&lost],
            )
            .map_err(classify)?
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect()
        };
        tx.commit().map_err(classify)?;
        let mut taken = std::collections::HashSet::with_capacity(won.len());
        Ok(claims
            .iter()
            .zip(decided)
            .map(|(c, decided)| {
                if let Some(decided) = decided {
                    return decided;
                }
                let host = c.host.as_str();
                let id = c.message_id.hyphenated().to_string();
                if won.get(&*host) == Some(&id) && taken.insert(c.host) {
                    return Claimed::Won;
                }
                match holders.get(&*host) {
                    Some(&(at, expires)) => terms.stopped_by(at, expires),
                    None => None,
                }
                .unwrap_or(Claimed::Held { restarted_ms: None })
            })
            .collect())
    }

    fn release_claims(&mut self, service: &str, claims: &[Claim]) -> Result<(), StoreError> {
        let hosts: Vec<String> = claims.iter().map(|c| c.host.as_str().to_string()).collect();
        let ids: Vec<String> = claims
            .iter()
            .map(|c| c.message_id.hyphenated().to_string())
            .collect();
        let mut tx = self.client()?.transaction().map_err(classify)?;
        release(&mut tx, service, &hosts, &ids)?;
        tx.commit().map_err(classify)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        match self.client.take() {
            Some(client) => client.close().map_err(classify),
            None => Ok(()),
        }
    }
}

/// Decides, under the rails' lock, the claims that meet the guard or the fleet's rails
/// (`Some`), leaving those that took a place (`None`) to be claimed. A claim that took
/// a place and then lost its host to an instance without the rails counts as started
/// all the same: the rails err on the side of fewer restarts.
fn fleet_decisions(
    tx: &mut postgres::Transaction<'_>,
    claims: &[Claim],
    terms: &ClaimTerms,
) -> Result<Vec<Option<Claimed>>, StoreError> {
    let now = terms.now_ms;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RAILS_LOCK])
        .map_err(classify)?;
    tx.execute(
        "DELETE FROM starts WHERE started_at <= $1",
        &[&(now - terms.fleet.starts_kept_ms())],
    )
    .map_err(classify)?;
    let window = terms.fleet.starts.map_or(0, |(w, _)| w);
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM open_claims WHERE expires_at >= $1),
                    (SELECT count(*) FROM starts WHERE started_at > $1 - $2::bigint)",
            &[&now, &window],
        )
        .map_err(classify)?;
    let (running, started): (i64, i64) = (row.get(0), row.get(1));
    let mut places = terms.fleet.places(running as u64, started as u64);
    let hosts: Vec<String> = claims.iter().map(|c| c.host.as_str().to_string()).collect();
    let holders: HashMap<String, (i64, Option<i64>)> = tx
        .query(
            "SELECT c.host, c.claimed_at, o.expires_at FROM claims AS c
             LEFT JOIN open_claims AS o ON o.host = c.host WHERE c.host = ANY($1)",
            &[&hosts],
        )
        .map_err(classify)?
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut first: HashMap<InstanceName, Option<Claimed>> = HashMap::new();
    Ok(claims
        .iter()
        .zip(&hosts)
        .map(|(c, host)| {
            // A host named twice is claimed for its first mention at most.
            if let Some(&before) = first.get(&c.host) {
                return Some(before.unwrap_or(Claimed::Held { restarted_ms: None }));
            }
            let decided = holders
                .get(host)
                .and_then(|&(at, expires)| terms.stopped_by(at, expires))
                .or_else(|| places.take());
            first.insert(c.host, decided);
            decided
        })
        .collect())
}

/// Reads the newest attempts that match `q`, newest first, and the claims still
/// waiting for an outcome, as `mandrill history` shows them.
pub fn read_history(database: &Database, q: &HistoryQuery) -> Result<Vec<HistoryRow>, StoreError> {
    let config = &database.0;
    let mut client = config.connect(NoTls).map_err(|e| StoreError::Open {
        path: describe(config),
        reason: why(&e),
    })?;
    let version: Option<i32> = client
        .query_opt("SELECT version FROM mandrill_schema", &[])
        .map_err(|e| StoreError::Open {
            path: describe(config),
            reason: format!("it holds no mandrill store: {}", why(&e)),
        })?
        .map(|r| r.get(0));
    if version != Some(SCHEMA_VERSION) {
        return Err(StoreError::Open {
            path: describe(config),
            reason: format!(
                "its schema is version {}, not {SCHEMA_VERSION}; run the service on it once \
                 to migrate it",
                version.map_or("unknown".into(), |v| v.to_string())
            ),
        });
    }
    let pattern = q.host.as_deref().map(glob_to_regex);
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let attempts = client
        .query(
            "SELECT started_at, finished_at, instance, hostname, action, leashed, outcome,
                    reason, service, message_id
             FROM attempts
             WHERE ($1::text IS NULL OR instance ~ $1)
               AND ($2::bigint IS NULL OR started_at >= $2)
               AND ($3::text IS NULL OR outcome = $3
                    OR ($3 = 'refused' AND outcome LIKE 'refused:%'))
             ORDER BY id DESC
             LIMIT $4",
            &[&pattern, &q.since_ms, &q.outcome, &limit],
        )
        .map_err(classify)?
        .iter()
        .map(|r| HistoryRow {
            started_ms: r.get(0),
            finished_ms: r.get(1),
            instance: r.get(2),
            hostname: r.get(3),
            action: r.get(4),
            leashed: r.get(5),
            outcome: r.get(6),
            reason: r.get(7),
            service: r.get(8),
            message_id: r.get(9),
        })
        .collect();
    let claims = client
        .query(
            "SELECT host, claimed_at, expires_at, claimed_by, message_id, hostname, action
             FROM open_claims
             WHERE ($1::text IS NULL OR host ~ $1)
               AND ($2::bigint IS NULL OR claimed_at >= $2)",
            &[&pattern, &q.since_ms],
        )
        .map_err(classify)?
        .iter()
        .map(|r| OpenClaimRow {
            instance: r.get(0),
            claimed_ms: r.get(1),
            expires_ms: r.get(2),
            service: r.get(3),
            message_id: r.get(4),
            hostname: r.get(5),
            action: r.get(6),
        })
        .collect();
    Ok(super::merge_history(attempts, claims, q, q.now_ms))
}

/// A `--host` glob (`*`, `?`, `[...]`, as SQLite's `GLOB` takes it) as an anchored
/// PostgreSQL regular expression.
fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^");
    let mut in_class = false;
    for ch in glob.chars() {
        match ch {
            '[' if !in_class => {
                in_class = true;
                re.push('[');
            }
            ']' if in_class => {
                in_class = false;
                re.push(']');
            }
            '^' if in_class => re.push('^'),
            '-' if in_class => re.push('-'),
            _ if in_class => {
                if !ch.is_alphanumeric() {
                    re.push('\\');
                }
                re.push(ch);
            }
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            _ if ch.is_alphanumeric() => re.push(ch),
            _ => {
                re.push('\\');
                re.push(ch);
            }
        }
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::store::FleetRails;

    /// A schema of the test's own in the test database, dropped when this is.
    struct Schema {
        config: postgres::Config,
        name: String,
    }

    impl Schema {
        /// `None` when there is no server and the test may skip; under `CI=true` a
        /// missing server fails the test instead.
        fn new() -> Option<Self> {
            let url = std::env::var("MANDRILL_TEST_PG_URL")
                .unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
            let base: postgres::Config = url.parse().expect("MANDRILL_TEST_PG_URL");
            let mut admin = match base.connect(NoTls) {
                Ok(c) => c,
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "cannot reach postgres at {url}: {e}; under CI=true a store test \
                         must run, not skip"
                    );
                    eprintln!("\n*** SKIPPED: cannot reach postgres at {url}: {e} ***\n");
                    return None;
                }
            };
            let name = format!("t_{}", Uuid::new_v4().simple());
            admin
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .expect("create schema");
            let mut config = base;
            config.options(&format!("-c search_path={name}"));
            Some(Self { config, name })
        }

        fn open(&self) -> PostgresStore {
            PostgresStore::open(&self.config).expect("open")
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            if let Ok(mut c) = self.config.connect(NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
            }
        }
    }

    fn row(host: &str, attempt: u32) -> SaveRow {
        SaveRow {
            message: Message::new(InstanceName::parse(host).unwrap()),
            attempt,
        }
    }

    #[test]
    fn saving_twice_stores_once_and_raises_deliveries() {
        let Some(schema) = Schema::new() else { return };
        let mut store = schema.open();
        let a = row("cattle-aaaa", 1);
        let b = row("cattle-bbbb", 1);
        assert_eq!(store.save(&[a, b]).unwrap(), 2);
        let again = SaveRow { attempt: 3, ..a };
        // The same message twice in one batch, and once already stored.
        assert_eq!(store.save(&[again, a]).unwrap(), 0);
        let n: i32 = store
            .client()
            .unwrap()
            .query_one(
                "SELECT deliveries FROM messages WHERE message_id = $1",
                &[&a.message.message_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 3);
        store.close().unwrap();
    }

    #[test]
    fn a_claim_is_won_once_per_interval_across_connections() {
        let Some(schema) = Schema::new() else { return };
        let (mut one, mut two) = (schema.open(), schema.open());
        crate::store::claims_are_won_once_per_interval(&mut one, &mut two);
    }

    #[test]
    fn raced_claims_win_each_host_exactly_once() {
        let Some(schema) = Schema::new() else { return };
        schema.open();
        crate::store::raced_claims_win_each_host_once(&|| Box::new(schema.open()));
    }

    #[test]
    fn writes_in_any_order_never_deadlock() {
        let Some(schema) = Schema::new() else { return };
        schema.open();
        crate::store::writes_in_any_order_never_deadlock(&|| Box::new(schema.open()));
    }

    #[test]
    fn the_fleets_rails_count_every_connection() {
        let Some(schema) = Schema::new() else { return };
        let (mut one, mut two) = (schema.open(), schema.open());
        crate::store::the_fleets_rails_count_every_connection(&mut one, &mut two);
    }

    #[test]
    fn raced_claims_take_each_place_once() {
        let Some(schema) = Schema::new() else { return };
        schema.open();
        crate::store::raced_claims_take_each_place_once(&|| Box::new(schema.open()));
    }

    #[test]
    fn a_claim_left_without_an_outcome_shows_as_unknown() {
        let Some(schema) = Schema::new() else { return };
        let mut store = schema.open();
        let context = AttemptContext::test();
        let host = InstanceName::parse("web-01").unwrap();
        let claim = Claim {
            host,
            message_id: Uuid::new_v4(),
        };
        let terms = ClaimTerms {
            context: &context,
            now_ms: 1_000,
            interval_ms: 3_600_000,
            ttl_ms: 60_000,
            fleet: FleetRails::default(),
        };
        assert_eq!(
            store.claim_restarts(&[claim], &terms).unwrap(),
            [Claimed::Won]
        );
        let database = Database(Box::new(schema.config.clone()));
        let mut q = HistoryQuery {
            host: Some("web-*".into()),
            limit: 10,
            now_ms: 2_000,
            ..HistoryQuery::default()
        };
        let outcomes = |q: &HistoryQuery| -> Vec<String> {
            let rows = read_history(&database, q).unwrap();
            rows.into_iter().map(|r| r.outcome).collect()
        };
        assert_eq!(outcomes(&q), ["running"]);
        q.now_ms = 70_000;
        assert_eq!(outcomes(&q), ["unknown"]);
        // Once the interval has passed, a new claim replaces it, and the history keeps
        // the lapsed one as an attempt whose outcome is unknown.
        let later = ClaimTerms {
            now_ms: 3_700_000,
            ..terms
        };
        let again = Claim {
            host,
            message_id: Uuid::new_v4(),
        };
        assert_eq!(
            store.claim_restarts(&[again], &later).unwrap(),
            [Claimed::Won]
        );
        q.now_ms = 3_700_001;
        assert_eq!(outcomes(&q), ["running", "unknown"]);
        q.host = Some("db-*".into());
        assert!(outcomes(&q).is_empty());
    }

    #[test]
    fn a_claim_given_back_while_the_next_waits_is_not_written_as_unknown() {
        let Some(schema) = Schema::new() else { return };
        let mut first = schema.open();
        let context = AttemptContext::test();
        let host = InstanceName::parse("web-01").unwrap();
        let held = Claim {
            host,
            message_id: Uuid::new_v4(),
        };
        let terms = ClaimTerms {
            context: &context,
            now_ms: 1_000,
            interval_ms: 1_000,
            ttl_ms: 60_000,
            fleet: FleetRails::default(),
        };
        assert_eq!(
            first.claim_restarts(&[held], &terms).unwrap(),
            [Claimed::Won]
        );
        // Its restart failed: the claim is given back in a transaction left open, so
        // that the next claim begins before it commits and waits for the host's row.
        let mut giver = schema.config.connect(NoTls).unwrap();
        let mut tx = giver.transaction().unwrap();
        let ids = [held.message_id.hyphenated().to_string()];
        release(
            &mut tx,
            &context.service,
            &[host.as_str().to_string()],
            &ids,
        )
        .unwrap();
        let mut config = schema.config.clone();
        config.application_name(&schema.name);
        let mut second = PostgresStore::open(&config).unwrap();
        let claimer = std::thread::spawn(move || {
            let context = AttemptContext::test();
            let terms = ClaimTerms {
                context: &context,
                now_ms: 1_500,
                interval_ms: 1_000,
                ttl_ms: 60_000,
                fleet: FleetRails::default(),
            };
            let next = Claim {
                host,
                message_id: Uuid::new_v4(),
            };
            second.claim_restarts(&[next], &terms)
        });
        let mut watcher = schema.config.connect(NoTls).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&schema.name],
                )
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the next claim never waited for the host's row"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        tx.commit().unwrap();
        assert_eq!(claimer.join().unwrap().unwrap(), [Claimed::Won]);
        let unknown: i64 = watcher
            .query_one(
                "SELECT count(*) FROM attempts WHERE outcome = 'unknown'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(unknown, 0, "the claim given back was written as a restart");
    }

    #[test]
    fn a_version_1_schema_is_migrated_with_its_restarts_kept() {
        let Some(schema) = Schema::new() else { return };
        let mut admin = schema.config.connect(NoTls).unwrap();
        admin.batch_execute(V1).unwrap();
        let mut store = schema.open();
        let host = InstanceName::parse("cattle-a").unwrap();
        assert_eq!(
            store.restarts_since(0, 10_000).unwrap(),
            vec![(host, 5_000)]
        );
        let version: i32 = admin
            .query_one("SELECT version FROM mandrill_schema", &[])
            .unwrap()
            .get(0);
        assert_eq!(version, SCHEMA_VERSION);
        // The guard refuses the host restarted under version 1.
        let context = AttemptContext::test();
        let terms = ClaimTerms {
            context: &context,
            now_ms: 6_000,
            interval_ms: 3_600_000,
            ttl_ms: 60_000,
            fleet: FleetRails::default(),
        };
        let claim = Claim {
            host,
            message_id: Uuid::new_v4(),
        };
        assert!(!store.claim_restarts(&[claim], &terms).unwrap()[0].won());
    }

    /// Version 1 of the schema, with one restart in its history.
    const V1: &str = "
        CREATE TABLE mandrill_schema (version integer NOT NULL);
        INSERT INTO mandrill_schema VALUES (1);
        CREATE TABLE messages (message_id uuid PRIMARY KEY, instance_name text NOT NULL,
                               deliveries integer NOT NULL);
        CREATE TABLE attempts (id bigserial PRIMARY KEY, message_id text NOT NULL,
            instance text NOT NULL, hostname text NOT NULL, action text NOT NULL,
            leashed boolean NOT NULL, started_at bigint NOT NULL, finished_at bigint NOT NULL,
            outcome text NOT NULL, reason text, service text NOT NULL);
        CREATE TABLE claims (host text PRIMARY KEY, claimed_at bigint NOT NULL);
        INSERT INTO attempts (message_id, instance, hostname, action, leashed, started_at,
                              finished_at, outcome, service)
            VALUES ('m', 'cattle-a', 'cattle-a.example.net', 'sim', false, 4900, 5000,
                    'restarted', 'old');
    ";

    #[test]
    fn host_globs_become_anchored_patterns() {
        assert_eq!(glob_to_regex("cattle-*"), "^cattle\\-.*$");
        assert_eq!(glob_to_regex("web-0?"), "^web\\-0.$");
        assert_eq!(glob_to_regex("db-[0-9]"), "^db\\-[0-9]$");
    }

    #[test]
    fn the_guard_loads_each_hosts_latest_claim() {
        let Some(schema) = Schema::new() else { return };
        crate::store::the_guard_loads_each_hosts_latest_claim(&mut schema.open());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let Some(schema) = Schema::new() else { return };
        let mut store = schema.open();
        store
            .client()
            .unwrap()
            .execute("UPDATE mandrill_schema SET version = 99", &[])
            .unwrap();
        let Err(e) = PostgresStore::open(&schema.config) else {
            panic!("a newer schema was opened")
        };
        assert!(e.to_string().contains("newer than this build"), "{e}");
    }
}

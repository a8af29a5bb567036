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

use super::{Attempt, AttemptContext, SaveRow, Store, StoreError, StoreOpener};
use crate::message::InstanceName;

/// The schema's version, kept in `mandrill_schema`.
const SCHEMA_VERSION: i32 = 1;

/// Serialises schema changes between instances starting at once.
const SCHEMA_LOCK: i64 = 0x6d61_6e64_7269_6c6c;

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
";

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
    let mut tx = client.transaction().map_err(|e| why(&e))?;
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
        Some(_) => {}
    }
    tx.commit().map_err(|e| why(&e))
}

impl Store for PostgresStore {
    fn save(&mut self, rows: &[SaveRow]) -> Result<u64, StoreError> {
        // One statement may not touch a row twice: a batch that holds a message twice
        // sends it once, at its highest delivery.
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
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[])
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
        self.client()?
            .execute(
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
        Ok(())
    }

    fn restarts_since(&mut self, since_ms: i64) -> Result<Vec<(InstanceName, i64)>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT instance, max(finished_at) FROM attempts
                 WHERE outcome = 'restarted' AND finished_at >= $1 GROUP BY instance",
                &[&since_ms],
            )
            .map_err(classify)?;
        Ok(rows
            .iter()
            .filter_map(|row| super::history_host(row.get(0)).map(|h| (h, row.get(1))))
            .collect())
    }

    fn claim_restarts(
        &mut self,
        hosts: &[InstanceName],
        now_ms: i64,
        interval_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        // One statement: a claim that conflicts with another instance's waits for that
        // row, then sees its claim and loses, so each host is won by one instance alone.
        // A host named twice in the batch is claimed once; its second mention loses.
        let mut unique: Vec<String> = hosts.iter().map(|h| h.as_str().to_string()).collect();
        unique.sort_unstable();
        unique.dedup();
        let won: std::collections::HashSet<String> = self
            .client()?
            .query(
                "INSERT INTO claims (host, claimed_at)
                 SELECT h, $2::bigint FROM UNNEST($1::text[]) AS h
                 WHERE NOT EXISTS (
                     SELECT 1 FROM attempts WHERE outcome = 'restarted'
                         AND instance = h AND finished_at > $2::bigint - $3::bigint)
                 ON CONFLICT (host) DO UPDATE SET claimed_at = excluded.claimed_at
                 WHERE claims.claimed_at <= excluded.claimed_at - $3::bigint
                 RETURNING host",
                &[&unique, &now_ms, &interval_ms],
            )
            .map_err(classify)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut seen = std::collections::HashSet::with_capacity(hosts.len());
        Ok(hosts
            .iter()
            .map(|h| {
                let name = h.as_str().to_string();
                won.contains(&name) && seen.insert(name)
            })
            .collect())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        match self.client.take() {
            Some(client) => client.close().map_err(classify),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

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
        let host = InstanceName::parse("web-01").unwrap();
        let hosts = [host, host];
        assert_eq!(
            one.claim_restarts(&hosts, 1_000, 500).unwrap(),
            [true, false]
        );
        assert_eq!(
            two.claim_restarts(&hosts[..1], 1_200, 500).unwrap(),
            [false]
        );
        assert_eq!(two.claim_restarts(&hosts[..1], 1_600, 500).unwrap(), [true]);
    }

    #[test]
    fn raced_claims_win_each_host_exactly_once() {
        let Some(schema) = Schema::new() else { return };
        let hosts: Vec<InstanceName> = (0..100)
            .map(|i| InstanceName::parse(&format!("host-{i}")).unwrap())
            .collect();
        schema.open();
        let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let mut store = schema.open();
                    let hosts = &hosts;
                    s.spawn(move || store.claim_restarts(hosts, 10_000, 3_600_000).unwrap())
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for i in 0..hosts.len() {
            let winners = wins.iter().filter(|w| w[i]).count();
            assert_eq!(winners, 1, "{} was won {winners} times", hosts[i]);
        }
    }

    #[test]
    fn the_history_gives_each_hosts_latest_restart() {
        let Some(schema) = Schema::new() else { return };
        let mut store = schema.open();
        let host = InstanceName::parse("cattle-zpsk").unwrap();
        let rows = [
            Attempt::restarted(host, 100, Uuid::new_v4()),
            Attempt::restarted(host, 300, Uuid::new_v4()),
        ];
        store
            .record_attempts(&AttemptContext::test(), &rows)
            .unwrap();
        assert_eq!(store.restarts_since(0).unwrap(), vec![(host, 300)]);
        assert!(store.restarts_since(301).unwrap().is_empty());
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

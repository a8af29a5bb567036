//! PostgreSQL goes away mid-run, as when it restarts: every connection of the service is
//! terminated, and for a while no new one is let in. The messages whose saves fail
//! meanwhile are nacked, never acked; the writers reconnect once the database is back;
//! and the run ends with every message saved once and acked or dead-lettered, and no
//! host restarted twice.

mod common;

use std::time::Duration;

use common::postgres::Schema;
use common::Mandrill;
use postgres::{Client, NoTls};

const MESSAGES: i64 = 3000;

/// A login role of the test's own, which the test can lock out of the database; dropped
/// with everything it owns.
struct Role {
    admin: Client,
    name: String,
}

impl Role {
    fn new(schema: &Schema) -> Self {
        let mut admin = Client::connect(&schema.url, NoTls).expect("connect");
        let name = format!("r_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN; GRANT ALL ON SCHEMA {} TO {name}",
                schema.name()
            ))
            .expect("create role");
        Self { admin, name }
    }

    /// Terminates every connection of the role, and keeps new ones out while `down`.
    fn outage(&mut self, down: Duration) -> usize {
        let name = &self.name;
        self.admin
            .batch_execute(&format!("ALTER ROLE {name} NOLOGIN"))
            .unwrap();
        let killed = self
            .admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[name],
            )
            .unwrap()
            .len();
        std::thread::sleep(down);
        self.admin
            .batch_execute(&format!("ALTER ROLE {name} LOGIN"))
            .unwrap();
        killed
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let name = &self.name;
        let _ = self
            .admin
            .batch_execute(&format!("DROP OWNED BY {name}; DROP ROLE {name}"));
    }
}

#[test]
fn a_database_outage_is_survived_and_nothing_is_lost() {
    let Some(schema) = Schema::new() else { return };
    let mut role = Role::new(&schema);
    let url = schema.url_as(&role.name);
    let mut m = Mandrill::spawn(&[
        "--store",
        "postgres",
        "--db-url",
        &url,
        "--messages",
        &MESSAGES.to_string(),
        "--publish-rate",
        "1000",
        "--io-delay",
        "0",
        "--failure-rate",
        "0",
        "--min-restart-interval",
        "1h",
        "--max-deliveries",
        "50",
    ]);
    m.wait_for("into database", Duration::from_secs(30));
    let killed = role.outage(Duration::from_millis(1500));
    assert!(killed > 0, "no connection of the service was found to end");
    let f = m.finish(Duration::from_secs(120));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.assert_conserved();
    assert_eq!(
        f.n("acked") + f.n("dead_lettered"),
        MESSAGES as u64,
        "{}",
        f.report
    );
    assert!(f.n("nacked") > 0, "no save failed: {}", f.report);
    // Acked only once saved: every message is in the table, once.
    assert_eq!(schema.count("SELECT count(*) FROM messages"), MESSAGES);
    // The guard held through it: no host restarted twice within the interval.
    assert_eq!(
        schema.count(
            "SELECT count(*) FROM (SELECT instance FROM attempts WHERE outcome = 'restarted'
             GROUP BY instance HAVING count(*) > 1) AS twice"
        ),
        0
    );
}

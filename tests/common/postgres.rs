//! PostgreSQL for tests: the server `MANDRILL_TEST_PG_URL` names, or the one on
//! 127.0.0.1:5432 (trust auth, database `test`), with a schema of the test's own,
//! dropped when this is.
//!
//! Without a reachable server the test skips with a loud message, except under `CI=true`,
//! where it fails.

use postgres::NoTls;

pub struct Schema {
    /// The URL the service takes, with the schema first on its search path.
    pub url: String,
    base: String,
    name: String,
}

impl Schema {
    /// A fresh schema, or `None` when the test should skip.
    pub fn new() -> Option<Self> {
        let base = std::env::var("MANDRILL_TEST_PG_URL")
            .unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
        let mut admin = match postgres::Client::connect(&base, NoTls) {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot reach postgres at {base}: {e}; under CI=true a store test must \
                     run, not skip"
                );
                eprintln!("\n*** SKIPPED: cannot reach postgres at {base}: {e} ***\n");
                return None;
            }
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(Self {
            url: format!("{base}{sep}options=-csearch_path%3D{name}"),
            base,
            name,
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's URL, logging in as `role` instead.
    pub fn url_as(&self, role: &str) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("a url");
        let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{role}@{rest}")
    }

    /// One number from a query on the test's schema.
    pub fn count(&self, sql: &str) -> i64 {
        let mut c = postgres::Client::connect(&self.url, NoTls).expect("connect");
        c.query_one(sql, &[]).expect("query").get(0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.base, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

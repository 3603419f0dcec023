//! A schema of the PostgreSQL test database for one test, dropped after it,
//! for the end-to-end tests on PostgreSQL (`tests/postgres.rs`, and
//! `server/tests/failover.rs`, which includes this file by path).
//!
//! The database is `BATON_TEST_POSTGRES` (a connection URL; `.ci/run`
//! starts a server and sets it). Without it a test says so and passes,
//! except under CI (`CI` set), where it fails.

pub struct Schema {
    admin: String,
    name: String,
    /// The test database with `search_path` set to this schema.
    pub url: String,
}

impl Schema {
    /// A fresh schema whose name starts with `prefix`; `None` when no test
    /// database is configured.
    pub fn new(prefix: &str) -> Option<Self> {
        let admin = match std::env::var("BATON_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "BATON_TEST_POSTGRES must name a PostgreSQL database under CI (.ci/run starts one)"
                );
                eprintln!("BATON_TEST_POSTGRES is not set: skipping this PostgreSQL test");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        sql(&admin, &format!("CREATE SCHEMA {name}")).expect("create the test schema");
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-c%20search_path%3D{name}");
        Some(Schema { admin, name, url })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = sql(
            &self.admin,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

/// Runs `sql` on a connection of its own, off the tokio threads (the
/// synchronous client runs a runtime of its own).
pub fn sql(url: &str, sql: &str) -> Result<(), postgres::Error> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&sql)
    })
    .join()
    .expect("sql thread")
}

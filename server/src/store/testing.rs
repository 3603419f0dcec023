//! Where the store's tests keep their store: sled in a temporary
//! directory, memory, and PostgreSQL when `BATON_TEST_POSTGRES` holds a
//! connection URL (each test in a schema of its own, so that they run in
//! parallel). With `CI` set, a missing `BATON_TEST_POSTGRES` fails the
//! tests instead of skipping PostgreSQL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Backend, MemBackend, PgBackend, Shared, SledBackend, Store};

/// The variable naming the test database.
pub(crate) const POSTGRES_VAR: &str = "BATON_TEST_POSTGRES";

/// A store's home for one test; [`Place::open`] opens it (again).
pub(crate) enum Place {
    Sled(tempfile::TempDir),
    /// The backend a reopen finds: the last one's durable copy.
    Memory(Arc<Mutex<Arc<MemBackend>>>),
    Postgres {
        /// The test database's URL, for the schema's creation and removal.
        admin: String,
        schema: String,
        /// `admin` with `search_path` set to `schema`.
        url: String,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Sled(_) => f.write_str("sled"),
            Place::Memory(_) => f.write_str("memory"),
            Place::Postgres { schema, .. } => write!(f, "postgres (schema {schema})"),
        }
    }
}

impl Place {
    /// A fresh store of each kind this machine can test.
    pub(crate) fn all() -> Vec<Place> {
        let mut places = vec![
            Place::Sled(tempfile::tempdir().expect("temp dir")),
            Place::Memory(Arc::default()),
        ];
        if let Some(place) = Place::postgres() {
            places.push(place);
        }
        places
    }

    /// A fresh schema of the test database, if there is one.
    pub(crate) fn postgres() -> Option<Place> {
        let Some(admin) = postgres_url() else {
            eprintln!("{POSTGRES_VAR} is not set: the PostgreSQL backend is not tested");
            return None;
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin_sql(&admin, &format!("CREATE SCHEMA {schema}")).expect("create the test schema");
        let url = with_search_path(&admin, &schema);
        Some(Place::Postgres { admin, schema, url })
    }

    /// Opens the store (again: what a restart finds).
    pub(crate) fn open(&self) -> Store {
        eprintln!("store over {self}");
        match self {
            Place::Sled(dir) => reopen_sled(dir.path()),
            Place::Memory(_) | Place::Postgres { .. } => {
                Store::over_backend(self.backend()).expect("open the store")
            }
        }
    }

    /// The backend alone (for writes below the store's migrations).
    pub(crate) fn backend(&self) -> Box<dyn Backend> {
        match self {
            Place::Sled(dir) => Box::new(SledBackend::open_when_unlocked(dir.path()).unwrap()),
            Place::Memory(current) => {
                let mut current = current.lock().unwrap();
                let next = Arc::new(current.after_crash());
                *current = Arc::clone(&next);
                Box::new(next)
            }
            Place::Postgres { url, .. } => Box::new(PgBackend::open(url).expect("open postgres")),
        }
    }

    /// The store shared as the broker shares it, reopened as it is.
    pub(crate) fn shared(&self) -> Shared {
        match self {
            Place::Sled(dir) => Shared::open(dir.path()).unwrap(),
            Place::Memory(current) => {
                let at = Arc::clone(current);
                let reopen = move || {
                    let mut current = at.lock().unwrap();
                    let next = Arc::new(current.after_crash());
                    *current = Arc::clone(&next);
                    Store::over_backend(next)
                };
                Shared::new(Path::new("memory"), self.open(), reopen)
            }
            Place::Postgres { url, .. } => Shared::open_postgres(url).unwrap(),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Place::Postgres { admin, schema, .. } = self {
            let _ = admin_sql(admin, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// The test database's URL; `None` when there is none (a failure under CI).
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{POSTGRES_VAR} must name a PostgreSQL database under CI (.ci/run starts one)"
            );
            None
        }
    }
}

/// `url` whose connections use `schema` for unqualified names.
pub(crate) fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// Runs `sql` on a connection of its own, on a thread of its own (the
/// synchronous client cannot run on a tokio thread).
pub(crate) fn admin_sql(url: &str, sql: &str) -> Result<(), postgres::Error> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
        client.batch_execute(&sql)
    })
    .join()
    .expect("admin thread")
}

/// Opens sled's store in `dir`: its background thread may hold the
/// directory's lock for a moment after the last handle is dropped.
pub(crate) fn reopen_sled(dir: &Path) -> Store {
    for _ in 0..100 {
        if let Ok(store) = Store::open(dir) {
            return store;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Store::open(dir).unwrap()
}

//! The PostgreSQL backend: the store's ordered bytes in one table of a
//! PostgreSQL database (`baton serve --store postgres://...`, issue 21).
//!
//! **Where things are.** Every collection's keys and values are rows of
//! `baton_kv (k bytea PRIMARY KEY, v bytea NOT NULL)`: `bytea` compares
//! bytewise, which is the order the store's prefixes and big-endian keys
//! need, so a range of keys is a range scan of the primary key. The schema's
//! version is the row `schema_version` of `baton_meta (key text PRIMARY KEY,
//! value text NOT NULL)`. [`MIGRATIONS`] brings a database up to
//! [`SCHEMA_VERSION`] when the backend opens, in one transaction under an
//! advisory lock (two brokers starting at once migrate once); a database
//! whose version is newer than this broker knows is refused
//! ([`Error::SchemaTooNew`]).
//!
//! **Applied, then durable.** [`Backend::apply`] only merges the batch into
//! an overlay in memory (key → new value or removal, each tagged with the
//! number of the batch that wrote it last); reads see the overlay laid over
//! the table. [`Backend::flush`] writes the overlay as it stands in **one
//! transaction** (one multi-row upsert from `UNNEST` of two arrays, one
//! `DELETE ... = ANY`), commits with `synchronous_commit` on, and only then
//! drops from the overlay what was not written again meanwhile. So a batch
//! is in the database whole or not at all, batches become durable in order
//! (a flush holds all of them up to its start), and group commit is the
//! committer's: one transaction per flush.
//!
//! **One thread owns the connection.** The trait is synchronous and called
//! from tokio's threads (the scheduler's task, `spawn_blocking`), where the
//! synchronous client cannot run (it drives its own runtime). So the
//! backend starts one thread of its own that owns the connection and
//! serves reads and flushes over a channel; a caller blocks on the reply as
//! it would on a disk read. Reads of keys in the overlay never reach it.
//! The thread also flushes on its own every [`FLUSH_EVERY`] while the
//! overlay holds writes (as sled does), for a broker run without durable
//! acknowledgment, whose committer never flushes.
//!
//! **Errors.** A flush that fails makes the backend refuse every later
//! apply and flush (the committer then reopens the store and replays what
//! was not durable: [`Shared::repair`](super::Shared::repair)); a read on a
//! closed connection connects again first. Disk full on the server
//! (SQLSTATE 53100) is [`Fault::Full`](super::Fault::Full), anything else
//! `Failing`.
//!
//! **Several brokers.** Migration 2 adds `baton_leader`, the leader's
//! lease (`crate::leader`). A leader's backend is opened with a [`Fence`]:
//! each flush transaction first reads the term `FOR SHARE` and rolls back
//! unless it is the leader's, so a deposed leader's writes never land. Such
//! a failure is [`PgError::is_fenced`], not disk trouble: the broker stops
//! (docs/deployment.md).
//!
//! Not here yet: TLS to the database.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use sled::IVec;

use super::{Backend, Batch, Entries, Error};

/// The schema version this broker writes, and the newest it can read.
pub const SCHEMA_VERSION: u32 = 2;

/// The migration to version `i + 1` is `MIGRATIONS[i]`; each runs in the
/// transaction that records the new version. (`baton_meta` itself is
/// created before the version is read.)
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: the store's ordered bytes.
    "CREATE TABLE baton_kv (k bytea PRIMARY KEY, v bytea NOT NULL)",
    // 2: the leader's lease and fencing term (`crate::leader`): one row,
    // absent until a broker first leads.
    "CREATE TABLE baton_leader (\
       id int PRIMARY KEY CHECK (id = 1), \
       term bigint NOT NULL, \
       holder text NOT NULL, \
       address text NOT NULL, \
       expires_at timestamptz NOT NULL)",
];

/// Key of the advisory lock held while migrating ("baton" in ASCII).
const MIGRATION_LOCK: i64 = 0x62_61_74_6f_6e;

/// Rows per read of a range: [`Store::expired`](super::Store::expired)
/// and the dead list read a few pages at most, recovery reads them all.
const PAGE: usize = 512;

/// How long writes may wait in the overlay before the backend's thread
/// flushes them unasked.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// What PostgreSQL (or the way to it) said when something failed. Cheap to
/// clone: a backend whose flush failed repeats it to every later write.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct PgError {
    message: String,
    /// SQLSTATE, when the server answered with an error.
    code: Option<String>,
}

impl PgError {
    fn new(what: &str, e: &postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut message = format!(
                    "{what}: {}: {} (SQLSTATE {})",
                    db.severity(),
                    db.message(),
                    db.code().code()
                );
                if let Some(detail) = db.detail() {
                    message.push_str(&format!("; {detail}"));
                }
                PgError {
                    message,
                    code: Some(db.code().code().to_owned()),
                }
            }
            None => PgError {
                message: format!("{what}: {e}"),
                code: e.code().map(|c| c.code().to_owned()),
            },
        }
    }

    /// An error of the backend itself, not of the server.
    pub fn other(message: impl Into<String>) -> Self {
        PgError {
            message: message.into(),
            code: None,
        }
    }

    /// Whether the server said its disk is full (SQLSTATE 53100).
    pub fn is_disk_full(&self) -> bool {
        self.code.as_deref() == Some(SqlState::DISK_FULL.code())
    }

    /// Whether a flush was refused because another broker leads now (see
    /// [`Fence`]): not disk trouble, and no repair can fix it.
    pub fn is_fenced(&self) -> bool {
        self.code.as_deref() == Some(FENCED)
    }
}

/// The code of [`PgError::is_fenced`] (not an SQLSTATE: those are five
/// characters).
const FENCED: &str = "baton-fenced";

/// The leadership a backend writes under: every flush transaction reads
/// the term of `baton_leader` `FOR SHARE` and rolls back unless it is
/// still `term`, so a deposed leader's flush fails instead of landing. A
/// broker taking over increments the term with an `UPDATE`, which waits
/// for the flushes in progress: whatever a flush committed is there before
/// the new leader reads the store. A fenced flush cancels `deposed`, for
/// the broker to stop serving (`crate::leader`).
#[derive(Clone, Debug)]
pub struct Fence {
    /// The term this broker was elected with.
    pub term: i64,
    /// Cancelled by the first flush that finds another term.
    pub deposed: tokio_util::sync::CancellationToken,
}

/// `map_err` of a driver error, naming what was being done.
fn pg(what: &'static str) -> impl Fn(postgres::Error) -> Error {
    move |e| Error::Postgres(PgError::new(what, &e))
}

/// Whether `e` says the connection is gone (SQLSTATE class 08, connection
/// exception, or 57P, the server shutting down or ending the session),
/// even before the client has noticed.
fn lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

/// `url` with its password (if any) replaced by `***`, for logs and
/// messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Writes applied but not yet flushed, shared by the callers and the
/// backend's thread.
#[derive(Default)]
struct Overlay {
    /// Key → (number of the batch that wrote it last, value or removal).
    writes: BTreeMap<IVec, (u64, Option<IVec>)>,
    /// Number of batches applied.
    applied: u64,
    /// Set by a flush that failed: every later apply and flush fails so.
    broken: Option<PgError>,
}

type Reply<T> = mpsc::SyncSender<Result<T, Error>>;

/// What the callers ask of the backend's thread.
enum Request {
    Get(Vec<u8>, Reply<Option<IVec>>),
    /// At most [`PAGE`] rows of the table with keys in `[from, to)`,
    /// in key order, or in reverse.
    Range {
        from: Vec<u8>,
        to: Vec<u8>,
        reverse: bool,
        reply: Reply<Vec<(IVec, IVec)>>,
    },
    Flush(Reply<()>),
}

/// The store's ordered bytes in a PostgreSQL table (see the module doc).
pub struct PgBackend {
    overlay: Arc<Mutex<Overlay>>,
    requests: mpsc::Sender<Request>,
}

impl PgBackend {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`,
    /// or a libpq key-value string), brings its schema up to date and
    /// starts the backend's thread.
    ///
    /// # Errors
    /// When the URL is not one, the database cannot be reached, or its
    /// schema is newer than this broker knows.
    pub fn open(url: &str) -> Result<Self, Error> {
        Self::open_fenced(url, None)
    }

    /// [`PgBackend::open`] for a leader: every flush checks `fence` (see
    /// [`Fence`]). `None`: no check (one broker alone, and tests).
    ///
    /// # Errors
    /// As [`PgBackend::open`].
    pub fn open_fenced(url: &str, fence: Option<Fence>) -> Result<Self, Error> {
        let config = connect_config(url)?;
        let overlay = Arc::new(Mutex::new(Overlay::default()));
        let (requests, received) = mpsc::channel();
        let (ready, started) = mpsc::sync_channel(1);
        let shared = Arc::clone(&overlay);
        std::thread::Builder::new()
            .name("baton-postgres".into())
            .spawn(move || match Conn::connect(config, true, fence) {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    serve(conn, &received, &shared);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| Error::Postgres(PgError::other(format!("starting its thread: {e}"))))?;
        started.recv().map_err(|_| gone())??;
        Ok(PgBackend { overlay, requests })
    }

    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        lock(&self.overlay)
    }

    /// Sends a request to the backend's thread and waits for its reply.
    fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests.send(request(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// The driver's configuration of `url`, with a connect timeout and the
/// application name `baton` unless the URL sets them.
///
/// # Errors
/// When `url` is not a PostgreSQL connection URL (the message shows it
/// without its password).
pub fn connect_config(url: &str) -> Result<postgres::Config, Error> {
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
        Error::Postgres(PgError::other(format!(
            "{} is not a PostgreSQL connection URL: {e}",
            redact(url)
        )))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("baton");
    }
    Ok(config)
}

fn lock(overlay: &Mutex<Overlay>) -> MutexGuard<'_, Overlay> {
    overlay.lock().unwrap_or_else(|e| e.into_inner())
}

fn gone() -> Error {
    Error::Postgres(PgError::other("the backend's connection thread ended"))
}

impl Backend for PgBackend {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, Error> {
        if let Some((_, value)) = self.overlay().writes.get(key) {
            return Ok(value.clone());
        }
        self.call(|reply| Request::Get(key.to_vec(), reply))
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Entries<'_> {
        Box::new(Range::new(self, from, to))
    }

    fn apply(&self, batch: &Batch) -> Result<(), Error> {
        let mut overlay = self.overlay();
        if let Some(e) = &overlay.broken {
            return Err(Error::Postgres(e.clone()));
        }
        overlay.applied += 1;
        let n = overlay.applied;
        for (key, value) in batch.writes() {
            overlay.writes.insert(key.clone(), (n, value.cloned()));
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        self.call(Request::Flush)
    }
}

/// The connection, owned by the backend's thread, with its statements.
struct Conn {
    config: postgres::Config,
    client: Client,
    statements: Statements,
    /// Checked by every flush, when this broker is one of several.
    fence: Option<Fence>,
}

struct Statements {
    get: Statement,
    forward: Statement,
    backward: Statement,
    upsert: Statement,
    delete: Statement,
    term: Statement,
}

impl Conn {
    /// Connects; `migrate`: brings the schema up to date first (at open;
    /// a connection made again after a lost one only prepares).
    fn connect(
        config: postgres::Config,
        migrate: bool,
        fence: Option<Fence>,
    ) -> Result<Self, Error> {
        let mut client = config.connect(NoTls).map_err(pg("connecting"))?;
        // Acknowledgments wait for a commit: it must be durable.
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .map_err(pg("reading synchronous_commit"))?
            .get(0);
        if sync == "off" {
            tracing::warn!(
                "the database has synchronous_commit off; Baton turns it on for its connection"
            );
            client
                .batch_execute("SET synchronous_commit TO on")
                .map_err(pg("turning synchronous_commit on"))?;
        }
        if migrate {
            migrate_schema(&mut client)?;
        }
        let statements = Statements::prepare(&mut client)?;
        Ok(Conn {
            config,
            client,
            statements,
            fence,
        })
    }

    /// Connects again when the connection was lost (the server restarted,
    /// the network broke): a read needs no repair of the store.
    fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.is_closed() {
            *self = Conn::connect(self.config.clone(), false, self.fence.clone())?;
            tracing::info!("connected to PostgreSQL again");
        }
        Ok(&mut self.client)
    }

    /// Runs a read, once more on a new connection when the connection
    /// turns out to be lost (a read needs no repair of the store).
    fn read<T>(
        &mut self,
        what: &'static str,
        read: impl Fn(&mut Client, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, Error> {
        self.client()?;
        match read(&mut self.client, &self.statements) {
            Err(e) if self.client.is_closed() || lost(&e) => {
                *self = Conn::connect(self.config.clone(), false, self.fence.clone())?;
                tracing::info!("connected to PostgreSQL again");
                read(&mut self.client, &self.statements).map_err(pg(what))
            }
            done => done.map_err(pg(what)),
        }
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<IVec>, Error> {
        let row = self.read("reading a key", |client, statements| {
            client.query_opt(&statements.get, &[&key])
        })?;
        Ok(row.map(|row| IVec::from(row.get::<_, &[u8]>(0))))
    }

    fn range(&mut self, from: &[u8], to: &[u8], reverse: bool) -> Result<Vec<(IVec, IVec)>, Error> {
        let limit = i64::try_from(PAGE).unwrap_or(i64::MAX);
        let rows = self.read("reading a range", |client, statements| {
            let statement = if reverse {
                &statements.backward
            } else {
                &statements.forward
            };
            client.query(statement, &[&from, &to, &limit])
        })?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    IVec::from(row.get::<_, &[u8]>(0)),
                    IVec::from(row.get::<_, &[u8]>(1)),
                )
            })
            .collect())
    }

    /// Writes the overlay as it stands in one transaction; once committed,
    /// drops from it what was not written again meanwhile. A failure breaks
    /// the backend (see [`Overlay::broken`]).
    fn flush(&mut self, overlay: &Mutex<Overlay>) -> Result<(), Error> {
        let (upto, writes) = {
            let overlay = lock(overlay);
            if let Some(e) = &overlay.broken {
                return Err(Error::Postgres(e.clone()));
            }
            let writes: Vec<(IVec, Option<IVec>)> = overlay
                .writes
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect();
            (overlay.applied, writes)
        };
        if writes.is_empty() {
            return Ok(());
        }
        match self.write(&writes) {
            Ok(()) => {
                lock(overlay).writes.retain(|_, (n, _)| *n > upto);
                Ok(())
            }
            Err(Error::Postgres(e)) => {
                lock(overlay).broken = Some(e.clone());
                Err(Error::Postgres(e))
            }
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, writes: &[(IVec, Option<IVec>)]) -> Result<(), Error> {
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut values: Vec<&[u8]> = Vec::new();
        let mut removed: Vec<&[u8]> = Vec::new();
        for (key, value) in writes {
            match value {
                Some(value) => {
                    keys.push(key);
                    values.push(value);
                }
                None => removed.push(key),
            }
        }
        let statements = &self.statements;
        let client = &mut self.client;
        if client.is_closed() {
            return Err(Error::Postgres(PgError::other(
                "flushing: the connection to PostgreSQL is closed",
            )));
        }
        let mut tx = client.transaction().map_err(pg("beginning a flush"))?;
        if let Some(fence) = &self.fence {
            // FOR SHARE: a takeover's UPDATE of the term waits for this
            // transaction, and this read waits for a takeover in progress
            // (then sees its new term).
            let term: Option<i64> = tx
                .query_opt(&statements.term, &[])
                .map_err(pg("reading the leader's term"))?
                .map(|row| row.get(0));
            if term != Some(fence.term) {
                fence.deposed.cancel();
                let now = term.map_or_else(|| "no term".to_owned(), |t| format!("term {t}"));
                return Err(Error::Postgres(PgError {
                    message: format!(
                        "this broker was elected with term {} but the database is at {now}: \
                         another broker leads now, so this flush is refused",
                        fence.term
                    ),
                    code: Some(FENCED.to_owned()),
                }));
            }
        }
        if !keys.is_empty() {
            tx.execute(&statements.upsert, &[&keys, &values])
                .map_err(pg("writing a flush"))?;
        }
        if !removed.is_empty() {
            tx.execute(&statements.delete, &[&removed])
                .map_err(pg("removing in a flush"))?;
        }
        tx.commit().map_err(pg("committing a flush"))
    }
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Self, Error> {
        let mut prepare = |sql: &str| client.prepare(sql).map_err(pg("preparing a statement"));
        Ok(Statements {
            get: prepare("SELECT v FROM baton_kv WHERE k = $1")?,
            forward: prepare(
                "SELECT k, v FROM baton_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3",
            )?,
            backward: prepare(
                "SELECT k, v FROM baton_kv WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT $3",
            )?,
            upsert: prepare(
                "INSERT INTO baton_kv (k, v) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            )?,
            delete: prepare("DELETE FROM baton_kv WHERE k = ANY($1::bytea[])")?,
            term: prepare("SELECT term FROM baton_leader WHERE id = 1 FOR SHARE")?,
        })
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`], or refuses a newer one.
///
/// # Errors
/// When the database fails, or its schema is newer than this broker knows.
pub fn migrate_schema(client: &mut Client) -> Result<(), Error> {
    let mut tx = client.transaction().map_err(pg("beginning a migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg("locking for a migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS baton_meta (key text PRIMARY KEY, value text NOT NULL)",
    )
    .map_err(pg("creating baton_meta"))?;
    let found = match tx
        .query_opt(
            "SELECT value FROM baton_meta WHERE key = 'schema_version'",
            &[],
        )
        .map_err(pg("reading the schema version"))?
    {
        None => 0,
        Some(row) => {
            let text: String = row.get(0);
            text.parse::<u32>().map_err(|_| {
                Error::Postgres(PgError::other(format!(
                    "baton_meta's schema_version is {text:?}, not a number"
                )))
            })?
        }
    };
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    for migration in &MIGRATIONS[found as usize..] {
        tx.batch_execute(migration)
            .map_err(pg("migrating the schema"))?;
    }
    tx.execute(
        "INSERT INTO baton_meta (key, value) VALUES ('schema_version', $1) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&SCHEMA_VERSION.to_string()],
    )
    .map_err(pg("recording the schema version"))?;
    tx.commit().map_err(pg("committing a migration"))?;
    tracing::info!(
        from = found,
        to = SCHEMA_VERSION,
        "migrated the PostgreSQL schema"
    );
    Ok(())
}

/// The backend's thread: serves requests until the backend is dropped,
/// and flushes unasked every [`FLUSH_EVERY`] while writes wait.
fn serve(mut conn: Conn, requests: &mpsc::Receiver<Request>, overlay: &Mutex<Overlay>) {
    let mut next_flush = Instant::now() + FLUSH_EVERY;
    loop {
        if Instant::now() >= next_flush {
            let waiting = {
                let overlay = lock(overlay);
                !overlay.writes.is_empty() && overlay.broken.is_none()
            };
            if waiting && let Err(e) = conn.flush(overlay) {
                tracing::error!(cause = %e, "background flush to PostgreSQL failed");
            }
            next_flush = Instant::now() + FLUSH_EVERY;
        }
        let request =
            match requests.recv_timeout(next_flush.saturating_duration_since(Instant::now())) {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
        match request {
            Request::Get(key, reply) => {
                let _ = reply.send(conn.get(&key));
            }
            Request::Range {
                from,
                to,
                reverse,
                reply,
            } => {
                let _ = reply.send(conn.range(&from, &to, reverse));
            }
            Request::Flush(reply) => {
                let done = conn.flush(overlay);
                if done.is_ok() {
                    next_flush = Instant::now() + FLUSH_EVERY;
                }
                let _ = reply.send(done);
            }
        }
    }
}

/// A range of keys read a page at a time from either end, with the
/// overlay (as it was when the range was asked for) laid over the table.
struct Range<'a> {
    backend: &'a PgBackend,
    /// The overlay's writes in the range.
    overlay: BTreeMap<IVec, Option<IVec>>,
    /// The keys not read yet: `[lo, hi)`.
    lo: Vec<u8>,
    hi: Vec<u8>,
    /// Read, not yet handed out: from the front, and from the back (each
    /// in key order).
    front: VecDeque<(IVec, IVec)>,
    back: VecDeque<(IVec, IVec)>,
}

impl<'a> Range<'a> {
    fn new(backend: &'a PgBackend, from: &[u8], to: &[u8]) -> Self {
        let overlay = if from < to {
            backend
                .overlay()
                .writes
                .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect()
        } else {
            BTreeMap::new()
        };
        Range {
            backend,
            overlay,
            lo: from.to_vec(),
            hi: to.to_vec(),
            front: VecDeque::new(),
            back: VecDeque::new(),
        }
    }

    /// Reads pages from one end until one yields an entry or none is left.
    fn fill(&mut self, reverse: bool) -> Result<(), Error> {
        while self.lo < self.hi {
            let rows = self.backend.call(|reply| Request::Range {
                from: self.lo.clone(),
                to: self.hi.clone(),
                reverse,
                reply,
            })?;
            // The keys this page settles: [covered_lo, covered_hi).
            let (covered_lo, covered_hi) = match rows.last() {
                Some((last, _)) if rows.len() == PAGE => {
                    if reverse {
                        (last.to_vec(), self.hi.clone())
                    } else {
                        // Just past `last`.
                        let mut past = last.to_vec();
                        past.push(0);
                        (self.lo.clone(), past)
                    }
                }
                _ => (self.lo.clone(), self.hi.clone()),
            };
            let mut page: BTreeMap<IVec, IVec> = rows.into_iter().collect();
            for (key, value) in self.overlay.range::<[u8], _>((
                Bound::Included(covered_lo.as_slice()),
                Bound::Excluded(covered_hi.as_slice()),
            )) {
                match value {
                    Some(value) => page.insert(key.clone(), value.clone()),
                    None => page.remove(key),
                };
            }
            if reverse {
                for entry in page.into_iter().rev() {
                    self.back.push_front(entry);
                }
                self.hi = covered_lo;
                if !self.back.is_empty() {
                    break;
                }
            } else {
                self.front.extend(page);
                self.lo = covered_hi;
                if !self.front.is_empty() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// After a failed read: nothing more is read.
    fn fail(&mut self, e: Error) -> Option<Result<(IVec, IVec), Error>> {
        self.hi = self.lo.clone();
        self.front.clear();
        self.back.clear();
        Some(Err(e))
    }
}

impl Iterator for Range<'_> {
    type Item = Result<(IVec, IVec), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty()
            && let Err(e) = self.fill(false)
        {
            return self.fail(e);
        }
        self.front
            .pop_front()
            .or_else(|| self.back.pop_front())
            .map(Ok)
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty()
            && let Err(e) = self.fill(true)
        {
            return self.fail(e);
        }
        self.back
            .pop_back()
            .or_else(|| self.front.pop_back())
            .map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Place, admin_sql, postgres_url, with_search_path};
    use super::super::{Fault, Shared};
    use super::*;

    fn put(batch: &mut Batch, key: &[u8], value: &[u8]) {
        batch.writes.insert(key.into(), Some(value.into()));
    }

    fn remove(batch: &mut Batch, key: &[u8]) {
        batch.writes.insert(key.into(), None);
    }

    fn collect(entries: Entries<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        entries
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// Ranges longer than a page, partly flushed and partly only applied,
    /// with removals hiding flushed rows, read forward, backward, and from
    /// both ends at once: every backend agrees with a map.
    #[test]
    fn ranges_lay_what_is_applied_over_what_is_flushed_on_every_backend() {
        for place in Place::all() {
            eprintln!("backend: {place}");
            let backend = place.backend();
            let mut model = BTreeMap::new();
            let key = |i: u32| {
                let mut k = vec![b'k'];
                k.extend_from_slice(&i.to_be_bytes());
                k
            };
            let mut b = Batch::new();
            for i in 0..1300 {
                put(&mut b, &key(i), &i.to_le_bytes());
                model.insert(key(i), i.to_le_bytes().to_vec());
            }
            // Outside the range read below.
            put(&mut b, b"z", b"outside");
            backend.apply(&b).unwrap();
            backend.flush().unwrap();
            let mut b = Batch::new();
            for i in (0..1300).step_by(3) {
                remove(&mut b, &key(i));
                model.remove(&key(i));
            }
            for i in (1..1300).step_by(7) {
                put(&mut b, &key(i), b"new");
                model.insert(key(i), b"new".to_vec());
            }
            for i in 2000..2010 {
                put(&mut b, &key(i), b"only applied");
                model.insert(key(i), b"only applied".to_vec());
            }
            backend.apply(&b).unwrap();
            let want: Vec<_> = model.clone().into_iter().collect();
            assert_eq!(collect(backend.range(b"k", b"l")), want);
            let mut back = collect(Box::new(backend.range(b"k", b"l").rev()));
            back.reverse();
            assert_eq!(back, want);
            // From both ends, meeting in the middle.
            let mut both = backend.range(b"k", b"l");
            let (mut front, mut rear) = (Vec::new(), Vec::new());
            loop {
                match both.next() {
                    Some(e) => front.push(e.unwrap()),
                    None => break,
                }
                match both.next_back() {
                    Some(e) => rear.push(e.unwrap()),
                    None => break,
                }
            }
            drop(both);
            front.extend(rear.into_iter().rev());
            let front: Vec<_> = front
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(front, want);
            // A window and an empty range.
            let (from, to) = (key(100), key(110));
            let window: Vec<_> = model
                .range(from.clone()..to.clone())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(collect(backend.range(&from, &to)), window);
            assert!(collect(backend.range(&to, &from)).is_empty());
            assert_eq!(backend.get(&key(0)).unwrap(), None);
            assert_eq!(backend.get(&key(1)).unwrap().as_deref(), Some(&b"new"[..]));
            assert_eq!(
                backend.get(&key(2)).unwrap().as_deref(),
                Some(&2u32.to_le_bytes()[..])
            );
            // Flushed, the same again, also after a reopen.
            backend.flush().unwrap();
            assert_eq!(collect(backend.range(b"k", b"l")), want);
            drop(backend);
            let backend = place.backend();
            assert_eq!(collect(backend.range(b"k", b"l")), want);
            assert_eq!(backend.get(b"z").unwrap().as_deref(), Some(&b"outside"[..]));
        }
    }

    #[test]
    fn a_value_written_again_during_a_flush_stays_in_the_overlay() {
        let Some(place) = Place::postgres() else {
            return;
        };
        let Place::Postgres { url, .. } = &place else {
            unreachable!()
        };
        let backend = PgBackend::open(url).unwrap();
        let mut b = Batch::new();
        put(&mut b, b"a", b"1");
        backend.apply(&b).unwrap();
        backend.flush().unwrap();
        assert!(backend.overlay().writes.is_empty());
        let mut b = Batch::new();
        put(&mut b, b"a", b"2");
        remove(&mut b, b"gone");
        backend.apply(&b).unwrap();
        assert_eq!(backend.overlay().writes.len(), 2);
        assert_eq!(backend.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
        backend.flush().unwrap();
        assert!(backend.overlay().writes.is_empty());
        assert_eq!(backend.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_naming_both_versions() {
        let Some(place) = Place::postgres() else {
            return;
        };
        let Place::Postgres { url, .. } = &place else {
            unreachable!()
        };
        drop(PgBackend::open(url).unwrap());
        admin_sql(
            url,
            "UPDATE baton_meta SET value = '99' WHERE key = 'schema_version'",
        )
        .unwrap();
        let e = PgBackend::open(url).err().expect("refused");
        assert!(
            matches!(
                e,
                Error::SchemaTooNew {
                    found: 99,
                    known: SCHEMA_VERSION
                }
            ),
            "{e}"
        );
        let message = e.to_string();
        assert!(
            message.contains("version 99")
                && message.contains(&format!("version {SCHEMA_VERSION}")),
            "{message}"
        );
    }

    /// A flush under a term that is no longer the database's rolls back,
    /// says it was fenced (not disk trouble), tells the broker it was
    /// deposed, and every later flush fails so, also after a reconnect.
    #[test]
    fn a_flush_under_an_old_term_is_refused_and_deposes_the_broker() {
        let Some(place) = Place::postgres() else {
            return;
        };
        let Place::Postgres { url, .. } = &place else {
            unreachable!()
        };
        drop(PgBackend::open(url).unwrap());
        admin_sql(
            url,
            "INSERT INTO baton_leader VALUES (1, 7, 'me', 'h:1', now() + interval '1 minute')",
        )
        .unwrap();
        let fence = Fence {
            term: 7,
            deposed: tokio_util::sync::CancellationToken::new(),
        };
        let backend = PgBackend::open_fenced(url, Some(fence.clone())).unwrap();
        let mut b = Batch::new();
        put(&mut b, b"a", b"under term 7");
        backend.apply(&b).unwrap();
        backend.flush().unwrap();
        // Another broker takes over.
        admin_sql(url, "UPDATE baton_leader SET term = 8, holder = 'other'").unwrap();
        let mut b = Batch::new();
        put(&mut b, b"a", b"after the takeover");
        backend.apply(&b).unwrap();
        let e = backend.flush().unwrap_err();
        let Error::Postgres(pg) = &e else {
            panic!("{e}")
        };
        assert!(pg.is_fenced(), "{e}");
        assert!(
            e.to_string().contains("term 7") && e.to_string().contains("term 8"),
            "{e}"
        );
        assert!(fence.deposed.is_cancelled());
        // A repair (a new backend under the same fence) is refused too.
        let again = PgBackend::open_fenced(url, Some(fence)).unwrap();
        again.apply(&b).unwrap();
        assert!(matches!(again.flush(), Err(Error::Postgres(e)) if e.is_fenced()));
        let reader = PgBackend::open(url).unwrap();
        assert_eq!(
            reader.get(b"a").unwrap().as_deref(),
            Some(&b"under term 7"[..])
        );
    }

    #[test]
    fn writes_left_applied_are_flushed_unasked() {
        let Some(place) = Place::postgres() else {
            return;
        };
        let Place::Postgres { url, .. } = &place else {
            unreachable!()
        };
        let backend = PgBackend::open(url).unwrap();
        let mut b = Batch::new();
        put(&mut b, b"a", b"1");
        backend.apply(&b).unwrap();
        let other = PgBackend::open(url).unwrap();
        let start = Instant::now();
        while other.get(b"a").unwrap().is_none() {
            assert!(start.elapsed() < FLUSH_EVERY * 20, "never flushed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server ends the broker's connection (a restart, a failover of
    /// the database, an administrator): reads connect again, a flush fails
    /// and the repair replays what was not durable.
    #[tokio::test]
    async fn a_lost_connection_is_repaired_without_losing_a_batch() {
        let Some(admin) = postgres_url() else {
            return;
        };
        let Some(place) = Place::postgres() else {
            return;
        };
        let Place::Postgres { schema, .. } = &place else {
            unreachable!()
        };
        // A name of its own, to end only this test's connections.
        let name = format!("baton_{schema}");
        let url = format!(
            "{}&application_name={name}",
            with_search_path(&admin, schema)
        );
        let kill = || {
            admin_sql(
                &admin,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
                ),
            )
            .unwrap();
        };
        let shared = Shared::open_postgres(&url).unwrap();
        let chain = |id: &str| {
            let mut b = Batch::new();
            b.put_chain(&super::super::tests::chain(id), true);
            b
        };
        shared.apply(chain("durable")).unwrap();
        shared.flush().await.unwrap();
        kill();
        // A read connects again.
        let read = tokio::task::spawn_blocking({
            let shared = shared.clone();
            move || shared.chain("durable")
        });
        assert!(read.await.unwrap().unwrap().is_some());
        shared.apply(chain("applied")).unwrap();
        kill();
        if let Err(e) = shared.flush().await {
            assert_eq!(e.fault(), Fault::Failing, "{e}");
            shared.repair().await.unwrap();
        }
        shared.apply(chain("after")).unwrap();
        shared.flush().await.unwrap();
        drop(shared);
        let again = Shared::open_postgres(&url).unwrap();
        for id in ["durable", "applied", "after"] {
            assert!(again.chain(id).unwrap().is_some(), "{id} was lost");
        }
    }

    #[test]
    fn disk_full_on_the_server_is_full_and_passwords_are_not_shown() {
        let full = Error::Postgres(PgError {
            message: "x".into(),
            code: Some("53100".into()),
        });
        assert_eq!(full.fault(), Fault::Full);
        let other = Error::Postgres(PgError {
            message: "x".into(),
            code: Some("57P01".into()),
        });
        assert_eq!(other.fault(), Fault::Failing);
        assert_eq!(
            redact("postgres://u:pw@h:5/d?x=1"),
            "postgres://u:***@h:5/d?x=1"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
    }
}

//! The durable store: Baton's collections over a key-value [`Backend`].
//!
//! Collections (each a key space: its keys start with one byte of its own,
//! see `Space`):
//! - `chains`: chain id → [`ChainRecord`] (prost), every chain ever stored;
//! - `live`: chain id → empty, the chains recovery must load (not ended, or
//!   ended with a run still out), so a restart never scans finished history;
//! - `idempotency`: idempotency key → chain id;
//! - `limits`: throttle identity → admin limit (u32, big-endian);
//! - `rates`: throttle identity → admin rate ([`RateRecord`]);
//! - `buckets`: throttle identity → the arrival time of its rate limit
//!   (µs, u64 big-endian; see `scheduler::rate`), while its bucket is not
//!   full: what keeps a rate exact across a restart;
//! - `task_defaults`: task name → default `Options` registered by workers;
//! - `dead`: (finished ms, big-endian; chain id) → empty, every failed chain
//!   not yet requeued, so the dead list is a reverse range scan. Kept by
//!   [`Batch::put_chain`] from the record itself, in the same batch;
//! - `paused`: queue name → empty, the queues whose dispatch is paused;
//! - `results`: (chain id, `/`, task id) → a step's JSON result, for results
//!   too long to keep in their chain's record (`StepRecord::result_apart`):
//!   written once, when the step succeeds;
//! - `ended`: (finished ms, big-endian; chain id) → the chain's idempotency
//!   key, every ended chain out of memory, oldest first: what retention
//!   removes once it is older than `--retention-ms` ([`Store::expired`],
//!   [`Batch::remove_chain`]);
//! - `meta`: markers of one-time migrations done.
//!
//! Who does what:
//! - [`Store`]: the collections, their key layout and encoding, and reads
//!   of them, over a [`Backend`];
//! - [`Backend`]: ordered bytes with atomic batches and a durability point,
//!   what a storage engine must give (docs/store.md); [`SledBackend`], the
//!   embedded default, is one sled tree; [`MemBackend`] keeps the data in
//!   memory with an exact crash, for the simulator;
//! - [`Batch`]: writes not applied yet, readable (a [`View`] lays them over
//!   the store);
//! - [`Shared`]: the store shared by everyone, with the writes staged for
//!   the next batch and a journal of the batches not yet durable, reopened
//!   in place after disk trouble;
//! - [`Committer`]: the one owner of durability: it applies what is staged
//!   as one batch when its flusher is free, flushes (group commit), counts
//!   what is durable and handles disk trouble.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use sled::IVec;

use crate::domain::{
    ChainRecord, ChainState, ColdSummary, Identity, Options, Phase, RateRecord, ScheduleRecord,
    Signature,
};

mod backend;
mod committer;
mod lookup;
mod mem;
mod postgres;
pub mod records;
mod shared;
mod sled_backend;
#[cfg(test)]
pub(crate) mod testing;
pub use backend::{Backend, Entries};
pub use committer::{Committer, Flushed, HOLD};
pub use lookup::Lookup;
pub use mem::MemBackend;
pub use postgres::{
    Fence, PgBackend, PgError, SCHEMA_VERSION, connect_config, migrate_schema, redact,
};
pub use shared::{Fault, Shared, inconsistency};
pub use sled_backend::SledBackend;

/// Errors of the store. All of them mean the disk or the data directory is
/// in trouble; the scheduler stops acknowledging until a flush succeeds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store is being reopened after a failure (see [`Shared::repair`]).
    #[error("the store is closed while it is repaired after a failure")]
    Closed,
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key:?} in tree {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        key: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("store i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// PostgreSQL failed or refused (see [`PgBackend`]).
    #[error("postgres: {0}")]
    Postgres(#[from] PgError),
    /// The PostgreSQL database was written by a newer Baton.
    #[error(
        "the PostgreSQL database has Baton schema version {found}, newer than this broker knows (version {known}): run a Baton at least as new as the one that last migrated it"
    )]
    SchemaTooNew { found: u32, known: u32 },
}

/// Writes to the store, applied atomically by [`Store::apply`]: tree key →
/// new value, or `None` to remove the key. A later write of a key replaces
/// an earlier one, so batches merge ([`Batch::merge`]) and can be read
/// back (`Batch::get`) before they are applied: the scheduler's rounds
/// write into one, and its reads see what they wrote (see `Shared`).
/// Values are sled's `IVec`s so that keeping a batch in the journal, and
/// handing it to sled, copies no bytes.
#[derive(Clone, Default)]
pub struct Batch {
    writes: BTreeMap<IVec, Option<IVec>>,
}

/// The collections of the store, by the first byte of their keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Space {
    Chains = b'c',
    Live = b'l',
    Idempotency = b'i',
    Limits = b'm',
    Defaults = b'd',
    Dead = b'x',
    Paused = b'p',
    Results = b'r',
    Ended = b'e',
    /// Periodic schedules, by name.
    Schedules = b's',
    /// Admin rates, by throttle identity.
    Rates = b'q',
    /// Rate limits' arrival times, by throttle identity.
    Buckets = b'b',
    /// Ended chains that succeeded or were cancelled, by state and end time
    /// (failed ones are in `Dead`): what lists them (see [`Listing`]).
    Done = b'k',
    /// Ended chains by state, task name and end time (a chain once under
    /// each task name of its steps; failed ones until requeued): what lists
    /// them by task name (see [`Store::chains`]).
    Tasks = b'n',
    /// Markers of the store itself (which one-time migrations are done).
    Meta = b'~',
}

impl Space {
    /// The tree key of `key` in this collection.
    fn key(self, key: impl AsRef<[u8]>) -> Vec<u8> {
        let key = key.as_ref();
        let mut out = Vec::with_capacity(1 + key.len());
        out.push(self as u8);
        out.extend_from_slice(key);
        out
    }

    /// The names of the trees of the former layout, one per collection.
    const FORMER_TREES: [(Space, &'static str); 7] = [
        (Space::Chains, "chains"),
        (Space::Live, "live"),
        (Space::Idempotency, "idempotency"),
        (Space::Limits, "limits"),
        (Space::Defaults, "task_defaults"),
        (Space::Dead, "dead"),
        (Space::Paused, "paused"),
    ];
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Adds `later`'s writes, which replace this batch's writes of the same
    /// keys.
    pub fn merge(&mut self, later: Batch) {
        if self.writes.is_empty() {
            self.writes = later.writes;
        } else {
            self.writes.extend(later.writes);
        }
    }

    /// What the batch writes to `key` of `space`: `None` when it does not
    /// touch it, `Some(None)` when it removes it.
    fn get(&self, space: Space, key: impl AsRef<[u8]>) -> Option<Option<&IVec>> {
        self.writes
            .get(space.key(key).as_slice())
            .map(Option::as_ref)
    }

    /// Whether the batch writes the record of this chain.
    pub fn has_chain(&self, id: &str) -> bool {
        matches!(self.get(Space::Chains, id), Some(Some(_)))
    }

    /// The chain this batch ties an idempotency key to, if it does.
    pub fn idempotent_chain(&self, key: &str) -> Option<String> {
        match self.get(Space::Idempotency, key) {
            Some(Some(id)) => Some(String::from_utf8_lossy(id).into_owned()),
            _ => None,
        }
    }

    fn insert(&mut self, space: Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.writes
            .insert(space.key(key).into(), Some(value.as_ref().into()));
    }

    fn remove(&mut self, space: Space, key: impl AsRef<[u8]>) {
        self.writes.insert(space.key(key).into(), None);
    }

    /// The writes in key order: (key, new value or `None` to remove it),
    /// for a [`Backend`] to apply.
    pub fn writes(&self) -> impl Iterator<Item = (&IVec, Option<&IVec>)> {
        self.writes.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// Stores a chain that waits cold in a queue (see `Core::cool`): its
    /// `live` entry carries where it waits, so that recovery can queue it
    /// again without reading its record.
    pub fn put_cold_chain(&mut self, chain: &ChainRecord, waits: &ColdSummary) {
        self.insert(Space::Chains, &chain.id, chain.encode_to_vec());
        self.insert(Space::Live, &chain.id, waits.encode_to_vec());
    }

    /// Stores a chain; `live` says whether recovery must load it. An ended
    /// chain that is not live is indexed for retention.
    pub fn put_chain(&mut self, chain: &ChainRecord, live: bool) {
        if live {
            self.insert(Space::Live, &chain.id, []);
        } else {
            self.remove(Space::Live, &chain.id);
            if chain.is_ended() {
                self.insert(
                    Space::Ended,
                    dead_key(chain.finished_ms, &chain.id),
                    &chain.idempotency_key,
                );
                if let Some(key) = done_key(chain.state(), chain.finished_ms, &chain.id) {
                    self.insert(Space::Done, key, []);
                    for key in task_keys(chain) {
                        self.insert(Space::Tasks, key, []);
                    }
                }
            }
        }
        self.put_chain_record(chain);
    }

    /// Removes an ended chain whose retention is over, with everything
    /// stored for it: its record, its results stored apart, its entries in
    /// the ended and dead indexes, and its idempotency key when the key
    /// still names it.
    pub fn remove_chain(&mut self, chain: &Expired) {
        let key = dead_key(chain.finished_ms, &chain.id);
        self.remove(Space::Chains, &chain.id);
        self.remove(Space::Live, &chain.id);
        self.remove(Space::Ended, &key);
        self.remove(Space::Dead, &key);
        for state in [ChainState::Succeeded, ChainState::Cancelled] {
            if let Some(key) = done_key(state, chain.finished_ms, &chain.id) {
                self.remove(Space::Done, key);
            }
        }
        for state in [
            ChainState::Succeeded,
            ChainState::Cancelled,
            ChainState::Failed,
        ] {
            for name in &chain.task_names {
                self.remove(
                    Space::Tasks,
                    task_key(state, name, chain.finished_ms, &chain.id),
                );
            }
        }
        if chain.owns_key {
            self.remove(Space::Idempotency, &chain.idempotency_key);
        }
        for task_id in &chain.results {
            self.remove(Space::Results, result_key(&chain.id, task_id));
        }
    }

    /// Stores a chain whose `live` entry says "load it, hot" already: the
    /// entry is left as it is. Most writes of a running chain are these;
    /// the sled write saved took the broker's CPU per no-op task from about
    /// 67 to 57 µs (see `Core::end_round`).
    pub fn put_chain_record(&mut self, chain: &ChainRecord) {
        self.insert(Space::Chains, &chain.id, chain.encode_to_vec());
        // Only a failed chain is (or was) in the dead index, so other
        // writes cost nothing here.
        if chain.state() == ChainState::Failed {
            let key = dead_key(chain.finished_ms, &chain.id);
            if chain.requeued_as.is_empty() {
                self.insert(Space::Dead, key, []);
                for key in task_keys(chain) {
                    self.insert(Space::Tasks, key, []);
                }
            } else {
                self.remove(Space::Dead, key);
                for key in task_keys(chain) {
                    self.remove(Space::Tasks, key);
                }
            }
        }
    }

    /// Pauses (`true`) or resumes (`false`) dispatch from a queue.
    pub fn put_paused(&mut self, queue: &str, paused: bool) {
        if paused {
            self.insert(Space::Paused, queue, []);
        } else {
            self.remove(Space::Paused, queue);
        }
    }

    pub fn put_idempotency_key(&mut self, key: &str, chain_id: &str) {
        self.insert(Space::Idempotency, key, chain_id);
    }

    /// Sets (`Some`) or clears (`None`) the admin limit of an identity.
    pub fn put_limit(&mut self, identity: &Identity, limit: Option<u32>) {
        let key = identity.encode_to_vec();
        match limit {
            Some(limit) => self.insert(Space::Limits, key, limit.to_be_bytes()),
            None => self.remove(Space::Limits, key),
        }
    }

    /// Sets (`Some`) or clears (`None`) the admin rate of an identity.
    pub fn put_rate(&mut self, identity: &Identity, rate: Option<&RateRecord>) {
        let key = identity.encode_to_vec();
        match rate {
            Some(rate) => self.insert(Space::Rates, key, rate.encode_to_vec()),
            None => self.remove(Space::Rates, key),
        }
    }

    /// Keeps (`Some`) or removes (`None`: its bucket is full) the arrival
    /// time of an identity's rate limit.
    pub fn put_bucket(&mut self, identity: &Identity, tat_us: Option<u64>) {
        let key = identity.encode_to_vec();
        match tat_us {
            Some(tat) => self.insert(Space::Buckets, key, tat.to_be_bytes()),
            None => self.remove(Space::Buckets, key),
        }
    }

    /// Stores a schedule (`Some`) or removes one (`None`, by name).
    pub fn put_schedule(&mut self, name: &str, schedule: Option<&ScheduleRecord>) {
        match schedule {
            Some(s) => self.insert(Space::Schedules, name, s.encode_to_vec()),
            None => self.remove(Space::Schedules, name),
        }
    }

    pub fn put_task_defaults(&mut self, name: &str, defaults: &Options) {
        self.insert(Space::Defaults, name, defaults.encode_to_vec());
    }

    /// Stores a step's result apart from its chain's record.
    pub fn put_result(&mut self, chain_id: &str, task_id: &str, result: &str) {
        self.insert(Space::Results, result_key(chain_id, task_id), result);
    }

    /// Stores the signature of a group or nested executor step, with its
    /// members, apart from its chain's record: the record is written again
    /// with every member that ends, and a group of 10,000 members would
    /// make each of those writes large (see the scheduler's `fanout`).
    pub fn put_members(&mut self, chain_id: &str, task_id: &str, signature: &Signature) {
        self.insert(
            Space::Results,
            members_key(chain_id, task_id),
            signature.encode_to_vec(),
        );
    }

    /// Stores the result of member `member` of a chain's group or nested
    /// executor step (whose task id is `task_id`), with the chain, so that
    /// it outlives the member's own chain (retention removes an ended
    /// member while its parent may still run).
    pub fn put_member_result(&mut self, chain_id: &str, task_id: &str, member: u32, result: &str) {
        self.insert(
            Space::Results,
            member_result_key(chain_id, task_id, member),
            result,
        );
    }
}

/// Key of the members of a group or nested executor step: under its
/// chain, as results stored apart are, so that they go with it.
fn members_key(chain_id: &str, task_id: &str) -> String {
    result_key(chain_id, &format!("{task_id}.members"))
}

/// Key of a member's result: under its parent chain.
fn member_result_key(chain_id: &str, task_id: &str, member: u32) -> String {
    result_key(chain_id, &format!("{task_id}.{member}"))
}

/// Key of a result stored apart: the chain's id first, so that a chain's
/// results sit together.
fn result_key(chain_id: &str, task_id: &str) -> String {
    format!("{chain_id}/{task_id}")
}

/// An ended chain past its retention, as [`Store::expired`] finds it: what
/// [`Batch::remove_chain`] needs to remove it without reading its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub id: String,
    pub finished_ms: u64,
    pub idempotency_key: String,
    /// Whether its idempotency key (if any) still names this chain.
    pub owns_key: bool,
    /// Task ids of its results stored apart.
    pub results: Vec<String>,
    /// The task names of its steps (its entries in the task index).
    pub task_names: Vec<String>,
}

/// Where [`Store::expired`] goes on from: after the last chain it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiryCursor(Vec<u8>);

/// What [`Store::recover`] hands the scheduler at start.
#[derive(Default)]
pub struct Recovered {
    pub live_chains: Vec<ChainRecord>,
    pub limits: Vec<(Identity, u32)>,
    /// Admin rates.
    pub rates: Vec<(Identity, RateRecord)>,
    /// Rate limits' arrival times (µs).
    pub buckets: Vec<(Identity, u64)>,
    pub task_defaults: Vec<(String, Options)>,
    /// Queues whose dispatch is paused.
    pub paused: Vec<String>,
    /// Records that could not be decoded: reported, skipped, left on disk.
    pub corrupt: Vec<String>,
    /// Chains that wait cold in a queue; their records stay on disk.
    pub cold: Vec<ColdEntry>,
    /// Periodic schedules.
    pub schedules: Vec<ScheduleRecord>,
    /// The (queue, task name) pairs that [`ColdEntry::line`] indexes.
    pub cold_lines: Vec<(String, String)>,
}

/// A recovered cold chain: its id as a number and where it waits, kept
/// small because a backlog may hold millions.
#[derive(Debug, Clone, Copy)]
pub struct ColdEntry {
    pub chain: u128,
    /// Index into [`Recovered::cold_lines`].
    pub line: u32,
    pub priority: i32,
    pub ready_ms: u64,
}

/// The store: Baton's collections (see the module doc) over a [`Backend`].
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens (or creates) the sled store in `dir`, the embedded default.
    ///
    /// # Errors
    /// When sled cannot open the directory or its data file cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Store::over_backend(SledBackend::open(dir)?)
    }

    /// The store kept by `backend`, brought up to date (one-time
    /// migrations of what earlier versions wrote).
    ///
    /// # Errors
    /// When the backend fails to read or write.
    pub fn over_backend(backend: impl Backend) -> Result<Self, Error> {
        let store = Store {
            backend: Arc::new(backend),
        };
        store.index_ended()?;
        store.index_done()?;
        store.index_tasks()?;
        Ok(store)
    }

    fn get(&self, space: Space, key: impl AsRef<[u8]>) -> Result<Option<IVec>, Error> {
        self.backend.get(&space.key(key))
    }

    /// The store as it will be once `over` is applied: reads look in `over`
    /// first.
    pub fn over<'a>(&'a self, over: &'a Batch) -> View<'a> {
        View::new(Some(self), [over, &NOTHING])
    }

    /// Ended chains that finished before `before_ms`, oldest first: at most
    /// `limit`, after `after` (the cursor this returned last time, so that
    /// chains whose removal is not applied yet are not found again). The
    /// cursor is that of the last chain found, or `after` when none was.
    ///
    /// # Errors
    /// When the backend fails to read.
    pub fn expired(
        &self,
        before_ms: u64,
        after: &ExpiryCursor,
        limit: usize,
    ) -> Result<(Vec<Expired>, ExpiryCursor), Error> {
        let mut from = Space::Ended.key(&after.0);
        if !after.0.is_empty() {
            // Just past the cursor's key.
            from.push(0);
        }
        let to = Space::Ended.key(before_ms.to_be_bytes());
        let mut found = Vec::new();
        let mut cursor = after.clone();
        for item in self.backend.range(&from, &to).take(limit) {
            let (key, value) = item?;
            let key = key.get(1..).unwrap_or_default();
            let Some((ms, id)) = key.split_first_chunk::<8>() else {
                continue;
            };
            cursor = ExpiryCursor(key.to_vec());
            let id = String::from_utf8_lossy(id).into_owned();
            let idempotency_key = String::from_utf8_lossy(&value).into_owned();
            let owns_key = !idempotency_key.is_empty()
                && self.idempotent_chain(&idempotency_key)?.as_deref() == Some(id.as_str());
            let prefix = Space::Results.key(format!("{id}/"));
            let mut end = prefix.clone();
            *end.last_mut().expect("not empty") += 1;
            let results = self
                .backend
                .range(&prefix, &end)
                .map(|item| {
                    let (key, _) = item?;
                    Ok(String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
                })
                .collect::<Result<Vec<_>, Error>>()?;
            // Its entries in the task index are named after its steps.
            let task_names = match self.chain(&id) {
                Ok(Some(chain)) => task_names(&chain).into_iter().map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            found.push(Expired {
                id,
                finished_ms: u64::from_be_bytes(*ms),
                idempotency_key,
                owns_key,
                results,
                task_names,
            });
        }
        Ok((found, cursor))
    }

    /// Indexes the ended chains of a store written before the `ended`
    /// index existed, so retention finds them too (see [`Store::index_once`]).
    fn index_ended(&self) -> Result<(), Error> {
        self.index_once("ended-indexed", "for retention", |chain| {
            chain
                .is_ended()
                .then(|| {
                    (
                        Space::Ended,
                        dead_key(chain.finished_ms, &chain.id),
                        chain.idempotency_key.clone().into_bytes(),
                    )
                })
                .into_iter()
                .collect()
        })
    }

    /// Indexes the succeeded and cancelled chains of a store written before
    /// the `done` index existed, so that they can be listed (see
    /// [`Store::index_once`]).
    fn index_done(&self) -> Result<(), Error> {
        self.index_once("done-indexed", "for listing", |chain| {
            done_key(chain.state(), chain.finished_ms, &chain.id)
                .map(|key| (Space::Done, key, Vec::new()))
                .into_iter()
                .collect()
        })
    }

    /// Indexes the ended chains of a store written before the task index
    /// existed by their task names, so that a filter by task name finds
    /// them (see [`Store::index_once`]).
    fn index_tasks(&self) -> Result<(), Error> {
        self.index_once("tasks-indexed", "by task name", |chain| {
            let listed = match chain.state() {
                ChainState::Failed => chain.requeued_as.is_empty(),
                ChainState::Succeeded | ChainState::Cancelled => true,
                _ => false,
            };
            if !listed {
                return Vec::new();
            }
            task_keys(chain)
                .into_iter()
                .map(|key| (Space::Tasks, key, Vec::new()))
                .collect()
        })
    }

    /// Adds what `entry` says to an index for every chain that is not
    /// live, once: a marker (`marker` in `Meta`) says it is done. Reads
    /// every chain record: one pass, at the first start of the version
    /// that brought the index.
    fn index_once(
        &self,
        marker: &str,
        what: &str,
        entries: impl Fn(&ChainRecord) -> Vec<(Space, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Error> {
        if self.get(Space::Meta, marker)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut indexed = 0u64;
        for item in self.scan(Space::Chains) {
            let (_, value) = item?;
            let Ok(chain) = ChainRecord::decode(value.as_ref()) else {
                continue;
            };
            let entries = entries(&chain);
            if !entries.is_empty() && self.get(Space::Live, &chain.id)?.is_none() {
                for (space, key, value) in entries {
                    batch.insert(space, key, value);
                }
                indexed += 1;
            }
            if batch.writes.len() >= 10_000 {
                self.apply(&std::mem::take(&mut batch))?;
            }
        }
        batch.insert(Space::Meta, marker, []);
        self.apply(&batch)?;
        self.backend.flush()?;
        if indexed > 0 {
            tracing::info!(chains = indexed, "indexed the stored chains {what}");
        }
        Ok(())
    }

    /// The (key without its prefix, value) pairs of a collection.
    fn scan(&self, space: Space) -> impl Iterator<Item = Result<(IVec, IVec), Error>> {
        self.backend
            .range(&[space as u8], &[space as u8 + 1])
            .map(|item| {
                let (key, value) = item?;
                Ok((key.subslice(1, key.len() - 1), value))
            })
    }

    /// Failed chains not yet requeued, newest failure first (see
    /// [`Store::chains`]).
    ///
    /// # Errors
    /// When the backend fails to read.
    pub fn dead_chains(&self, after: Option<&ListCursor>, limit: usize) -> Result<ListPage, Error> {
        self.chains(Listing::Failed, None, after, limit)
    }

    /// The chains of a listing, newest first: at most `limit` of them,
    /// starting after `after` (from the [`ListPage::next`] of an earlier
    /// call, parsed with the same listing and task). With a `task`, an
    /// ended listing is read from the task index: only chains with a step
    /// of that name, as fast for a rare name among millions of chains as
    /// for a common one; the running listing has no such index and lists
    /// every running chain (its caller filters). Each page is one index
    /// range read backwards plus a read of each record, so it costs the
    /// same with a million chains stored. Records that cannot be read are
    /// skipped, and so are chains of the live index that ended (they have
    /// a run still out).
    ///
    /// # Errors
    /// When the backend fails to read.
    pub fn chains(
        &self,
        listing: Listing,
        task: Option<&str>,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let index = listing.index(task);
        let start = index.space.key(&index.prefix);
        let end = match after {
            None => index.space.key(index.end()),
            Some(cursor) => index.space.key(&cursor.0),
        };
        let mut page = ListPage::default();
        let mut last: Option<Vec<u8>> = None;
        for item in self.backend.range(&start, &end).rev() {
            let (key, _) = item?;
            let Some(rest) = key.get(start.len()..) else {
                continue;
            };
            if page.chains.len() == limit {
                page.next = last.as_deref().map(|rest| index.token(rest));
                break;
            }
            last = Some(rest.to_vec());
            let id = String::from_utf8_lossy(index.id_in(rest)).into_owned();
            if let Ok(Some(chain)) = self.chain(&id)
                && (listing != Listing::Running || !chain.is_ended())
            {
                page.chains.push(chain);
            }
        }
        Ok(page)
    }

    /// Applies a batch atomically (visible, not yet durable).
    ///
    /// # Errors
    /// When the backend fails to write (for example the disk is full).
    pub fn apply(&self, batch: &Batch) -> Result<(), Error> {
        self.backend.apply(batch)
    }

    /// Makes every batch applied so far durable (see [`Backend::flush`]),
    /// on a blocking thread.
    ///
    /// # Errors
    /// When the backend fails to; nothing is durable past the last success.
    pub async fn flush(&self) -> Result<(), Error> {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || backend.flush())
            .await
            .map_err(|e| Error::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
    }

    /// # Errors
    /// As [`View::waits_cold`].
    pub fn waits_cold(&self, id: &str) -> Result<bool, Error> {
        self.over(&Batch::default()).waits_cold(id)
    }

    /// # Errors
    /// As [`View::chain`].
    pub fn chain(&self, id: &str) -> Result<Option<ChainRecord>, Error> {
        self.over(&Batch::default()).chain(id)
    }

    /// # Errors
    /// As [`View::result`].
    pub fn result(&self, chain_id: &str, task_id: &str) -> Result<Option<String>, Error> {
        self.over(&Batch::default()).result(chain_id, task_id)
    }

    /// # Errors
    /// As [`View::idempotent_chain`].
    pub fn idempotent_chain(&self, key: &str) -> Result<Option<String>, Error> {
        self.over(&Batch::default()).idempotent_chain(key)
    }

    /// Loads what the scheduler needs to resume: live chains, limits and task
    /// defaults. Undecodable records are listed in `corrupt`, not fatal.
    ///
    /// # Errors
    /// When sled fails to read.
    pub fn recover(&self) -> Result<Recovered, Error> {
        let mut out = Recovered::default();
        let mut lines: HashMap<(String, String), u32> = HashMap::new();
        for item in self.scan(Space::Live) {
            let (key, waits) = item?;
            let id = String::from_utf8_lossy(&key).into_owned();
            if !waits.is_empty() {
                match (
                    uuid::Uuid::parse_str(&id),
                    ColdSummary::decode(waits.as_ref()),
                ) {
                    (Ok(uuid), Ok(waits)) => {
                        let next = u32::try_from(lines.len()).unwrap_or(u32::MAX);
                        let line = *lines.entry((waits.queue, waits.name)).or_insert(next);
                        out.cold.push(ColdEntry {
                            chain: uuid.as_u128(),
                            line,
                            priority: waits.priority,
                            ready_ms: waits.ready_ms,
                        });
                    }
                    _ => out
                        .corrupt
                        .push(format!("live chain {id} has an undecodable queue entry")),
                }
                continue;
            }
            match self.chain(&id) {
                Ok(Some(chain)) => out.live_chains.push(chain),
                Ok(None) => out.corrupt.push(format!("live chain {id} has no record")),
                Err(e) => out.corrupt.push(e.to_string()),
            }
        }
        let mut cold_lines: Vec<_> = lines.into_iter().collect();
        cold_lines.sort_by_key(|(_, i)| *i);
        out.cold_lines = cold_lines.into_iter().map(|(line, _)| line).collect();
        for item in self.scan(Space::Limits) {
            let (k, v) = item?;
            match (
                Identity::decode(k.as_ref()),
                <[u8; 4]>::try_from(v.as_ref()),
            ) {
                (Ok(identity), Ok(bytes)) => out.limits.push((identity, u32::from_be_bytes(bytes))),
                _ => out.corrupt.push("undecodable throttle limit".into()),
            }
        }
        for item in self.scan(Space::Defaults) {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match Options::decode(v.as_ref()) {
                Ok(options) => out.task_defaults.push((name, options)),
                Err(e) => out.corrupt.push(format!("task defaults of {name}: {e}")),
            }
        }
        for item in self.scan(Space::Paused) {
            out.paused
                .push(String::from_utf8_lossy(&item?.0).into_owned());
        }
        for item in self.scan(Space::Schedules) {
            let (k, v) = item?;
            match ScheduleRecord::decode(v.as_ref()) {
                Ok(schedule) => out.schedules.push(schedule),
                Err(e) => out
                    .corrupt
                    .push(format!("schedule {}: {e}", String::from_utf8_lossy(&k))),
            }
        }
        for item in self.scan(Space::Rates) {
            let (k, v) = item?;
            match (Identity::decode(k.as_ref()), RateRecord::decode(v.as_ref())) {
                (Ok(identity), Ok(rate)) => out.rates.push((identity, rate)),
                _ => out.corrupt.push("undecodable throttle rate".into()),
            }
        }
        for item in self.scan(Space::Buckets) {
            let (k, v) = item?;
            match (
                Identity::decode(k.as_ref()),
                <[u8; 8]>::try_from(v.as_ref()),
            ) {
                (Ok(identity), Ok(bytes)) => {
                    out.buckets.push((identity, u64::from_be_bytes(bytes)))
                }
                _ => out.corrupt.push("undecodable rate bucket".into()),
            }
        }
        Ok(out)
    }
}

/// Reads of the store with a batch not yet applied laid over it (see
/// [`Store::over`]).
pub struct View<'a> {
    /// `None` while the store is closed (reopened after a failure): then
    /// only what the batches write can be read.
    store: Option<&'a Store>,
    /// Laid over the store, the latest first.
    over: [&'a Batch; 2],
}

/// A batch that writes nothing, for a [`View`] of fewer layers.
static NOTHING: Batch = Batch {
    writes: BTreeMap::new(),
};

impl<'a> View<'a> {
    fn new(store: Option<&'a Store>, over: [&'a Batch; 2]) -> Self {
        View { store, over }
    }

    fn get(&self, space: Space, key: impl AsRef<[u8]>) -> Result<Option<IVec>, Error> {
        let key = key.as_ref();
        if let Some(written) = self.over.iter().find_map(|b| b.get(space, key)) {
            return Ok(written.cloned());
        }
        match self.store {
            Some(store) => store.get(space, key),
            None => Err(Error::Closed),
        }
    }

    /// Whether the chain with this id waits cold in a queue (its `live`
    /// entry says where).
    ///
    /// # Errors
    /// When sled fails to read.
    pub fn waits_cold(&self, id: &str) -> Result<bool, Error> {
        Ok(self.get(Space::Live, id)?.is_some_and(|v| !v.is_empty()))
    }

    /// The chain with this id, if stored.
    ///
    /// # Errors
    /// When the record cannot be read or decoded.
    pub fn chain(&self, id: &str) -> Result<Option<ChainRecord>, Error> {
        match self.get(Space::Chains, id)? {
            None => Ok(None),
            Some(bytes) => ChainRecord::decode(bytes.as_ref())
                .map(Some)
                .map_err(|e| corrupt("chains", id, e)),
        }
    }

    /// A step's result stored apart (see [`Batch::put_result`]).
    ///
    /// # Errors
    /// When sled fails to read.
    pub fn result(&self, chain_id: &str, task_id: &str) -> Result<Option<String>, Error> {
        Ok(self
            .get(Space::Results, result_key(chain_id, task_id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The signature of a group or nested executor step, with its members
    /// (see [`Batch::put_members`]).
    ///
    /// # Errors
    /// When the store fails to read, or the signature does not decode.
    pub fn members(&self, chain_id: &str, task_id: &str) -> Result<Option<Signature>, Error> {
        let key = members_key(chain_id, task_id);
        match self.get(Space::Results, &key)? {
            None => Ok(None),
            Some(bytes) => Signature::decode(bytes.as_ref())
                .map(Some)
                .map_err(|e| corrupt("results", &key, e)),
        }
    }

    /// A member's result (see [`Batch::put_member_result`]).
    ///
    /// # Errors
    /// When the store fails to read.
    pub fn member_result(
        &self,
        chain_id: &str,
        task_id: &str,
        member: u32,
    ) -> Result<Option<String>, Error> {
        Ok(self
            .get(Space::Results, member_result_key(chain_id, task_id, member))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The chain an idempotency key was first used for.
    ///
    /// # Errors
    /// When sled fails to read.
    pub fn idempotent_chain(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .get(Space::Idempotency, key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

/// A page of [`Store::dead_chains`].
#[derive(Debug, Default)]
pub struct ListPage {
    pub chains: Vec<ChainRecord>,
    /// The token of the next page; `None` after the last.
    pub next: Option<String>,
}

/// Key of the dead index: newest last, so a reverse scan is newest first.
fn dead_key(finished_ms: u64, chain_id: &str) -> Vec<u8> {
    let mut key = finished_ms.to_be_bytes().to_vec();
    key.extend_from_slice(chain_id.as_bytes());
    key
}

/// Key of the done index: the state, then as the dead index.
fn done_key(state: ChainState, finished_ms: u64, chain_id: &str) -> Option<Vec<u8>> {
    if !matches!(state, ChainState::Succeeded | ChainState::Cancelled) {
        return None;
    }
    let mut key = done_prefix(state);
    key.extend(dead_key(finished_ms, chain_id));
    Some(key)
}

/// The start of the done index's keys of `state`: its number.
fn done_prefix(state: ChainState) -> Vec<u8> {
    vec![u8::try_from(state as i32).unwrap_or(0)]
}

/// The distinct task names of a chain's steps, callbacks included.
fn task_names(chain: &ChainRecord) -> std::collections::BTreeSet<&str> {
    [Phase::Main, Phase::OnSuccess, Phase::OnFailure]
        .into_iter()
        .flat_map(|phase| chain.steps_of(phase))
        .map(|step| step.name())
        .collect()
}

/// The start of the task index's keys of `state` and `name`: the state, the
/// name's length (two bytes) and the name.
fn task_prefix(state: ChainState, name: &str) -> Vec<u8> {
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut key = vec![u8::try_from(state as i32).unwrap_or(0)];
    key.extend(len.to_be_bytes());
    key.extend(name.as_bytes());
    key
}

/// Key of the task index: [`task_prefix`], then as the dead index.
fn task_key(state: ChainState, name: &str, finished_ms: u64, chain_id: &str) -> Vec<u8> {
    let mut key = task_prefix(state, name);
    key.extend(dead_key(finished_ms, chain_id));
    key
}

/// A chain's keys in the task index: one per task name of its steps.
fn task_keys(chain: &ChainRecord) -> Vec<Vec<u8>> {
    task_names(chain)
        .into_iter()
        .map(|name| task_key(chain.state(), name, chain.finished_ms, &chain.id))
        .collect()
}

/// Which chains [`Store::chains`] walks, newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Failed and not requeued (the dead index), by the time they failed.
    Failed,
    /// Succeeded (the done index), by the time they ended.
    Succeeded,
    /// Cancelled (the done index), by the time they ended.
    Cancelled,
    /// Not ended (the live index), by chain id: the ids brokers and SDKs
    /// make are UUIDv7, so this is by creation time (a client may choose
    /// other UUIDs; those sort where their bits say).
    Running,
}

impl Listing {
    /// The listing of chains in `state`, if there is one.
    pub fn of(state: ChainState) -> Option<Self> {
        match state {
            ChainState::Failed => Some(Listing::Failed),
            ChainState::Succeeded => Some(Listing::Succeeded),
            ChainState::Cancelled => Some(Listing::Cancelled),
            ChainState::Running => Some(Listing::Running),
            ChainState::Unspecified => None,
        }
    }

    /// The state of its chains when they ended; `None` for the running.
    fn ended_state(self) -> Option<ChainState> {
        match self {
            Listing::Failed => Some(ChainState::Failed),
            Listing::Succeeded => Some(ChainState::Succeeded),
            Listing::Cancelled => Some(ChainState::Cancelled),
            Listing::Running => None,
        }
    }

    /// Where its chains are: the task index for an ended listing with a
    /// `task`, else the listing's own index.
    fn index(self, task: Option<&str>) -> Index {
        let (space, prefix, timed) = match (self.ended_state(), task) {
            (Some(state), Some(task)) => (Space::Tasks, task_prefix(state, task), true),
            (Some(ChainState::Failed), None) => (Space::Dead, Vec::new(), true),
            (Some(state), None) => (Space::Done, done_prefix(state), true),
            (None, _) => (Space::Live, Vec::new(), false),
        };
        Index {
            space,
            prefix,
            timed,
        }
    }
}

/// One index a listing reads: its keys are `prefix`, then the end time
/// and the chain id (`timed`, the indexes of ended chains), or the chain
/// id alone (the live index).
struct Index {
    space: Space,
    prefix: Vec<u8>,
    timed: bool,
}

impl Index {
    /// Past its last key (without the space's byte): end times and ids
    /// sort below eight `0xff` bytes, ids (UUID text) below one.
    fn end(&self) -> Vec<u8> {
        let mut end = self.prefix.clone();
        end.extend([0xff; 9]);
        end
    }

    /// The chain id in a key's `rest` (the key after the space's byte and
    /// the prefix).
    fn id_in<'k>(&self, rest: &'k [u8]) -> &'k [u8] {
        let skip = if self.timed { 8 } else { 0 };
        rest.get(skip..).unwrap_or_default()
    }

    /// A page token naming a key by its `rest`: `<ms>-<chain id>` for the
    /// indexes by time, the chain id for the live one.
    fn token(&self, rest: &[u8]) -> String {
        let id = String::from_utf8_lossy(self.id_in(rest));
        if !self.timed {
            return id.into_owned();
        }
        let ms = rest
            .get(..8)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map_or(0, u64::from_be_bytes);
        format!("{ms}-{id}")
    }

    /// The key (without the space's byte) a [`Index::token`] names.
    fn key_of(&self, token: &str) -> Option<Vec<u8>> {
        let rest = if self.timed {
            let (ms, id) = token.split_once('-')?;
            dead_key(ms.parse().ok()?, id)
        } else {
            crate::ids::ChainId::parse(token)
                .ok()?
                .to_string()
                .into_bytes()
        };
        Some([self.prefix.as_slice(), &rest].concat())
    }
}

/// Where a page of the dead list continues: after the chain its token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor(Vec<u8>);

impl ListCursor {
    /// Reads a page token ([`ListPage::next`]) of `listing` with `task`
    /// (as given to [`Store::chains`]); `None` when it is not one.
    pub fn parse(listing: Listing, task: Option<&str>, token: &str) -> Option<Self> {
        listing.index(task).key_of(token).map(ListCursor)
    }
}

fn corrupt(tree: &'static str, key: &str, source: prost::DecodeError) -> Error {
    Error::Corrupt {
        tree,
        key: key.to_owned(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testing::{Place, reopen_sled};
    use super::*;
    use crate::domain::{ChainId, ChainSpec, Signature};

    /// A one-step chain record, for the store's tests.
    pub(crate) fn chain(id: &str) -> ChainRecord {
        let sig = Signature {
            name: "t".into(),
            args: "[]".into(),
            kwargs: "{}".into(),
            ..Default::default()
        };
        let spec = ChainSpec {
            steps: vec![sig],
            ..ChainSpec::default()
        };
        // The store keys chains by their text: any will do here.
        ChainRecord {
            id: id.to_owned(),
            ..ChainRecord::new(ChainId::default(), spec, 1)
        }
    }

    #[tokio::test]
    async fn batch_survives_reopen_and_live_index_tracks_state() {
        for place in Place::all() {
            {
                let store = place.open();
                let mut b = Batch::new();
                b.put_chain(&chain("a"), true);
                b.put_chain(&chain("b"), true);
                b.put_idempotency_key("k", "a");
                b.put_limit(
                    &Identity {
                        task_name: String::new(),
                        key: "x".into(),
                    },
                    Some(3),
                );
                b.put_task_defaults(
                    "t",
                    &Options {
                        heavy: true,
                        ..Default::default()
                    },
                );
                store.apply(&b).unwrap();
                let mut b = Batch::new();
                b.put_chain(&chain("b"), false);
                store.apply(&b).unwrap();
                store.flush().await.unwrap();
            }
            let store = place.open();
            let r = store.recover().unwrap();
            assert_eq!(
                r.live_chains
                    .iter()
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>(),
                ["a"]
            );
            assert_eq!(r.limits.len(), 1);
            assert_eq!(r.limits[0].1, 3);
            assert!(r.task_defaults[0].1.heavy);
            assert_eq!(store.idempotent_chain("k").unwrap().as_deref(), Some("a"));
            assert!(store.chain("b").unwrap().is_some());
            assert!(r.corrupt.is_empty());
        }
    }

    #[tokio::test]
    async fn a_record_written_alone_keeps_the_live_entry_it_had() {
        for place in Place::all() {
            const COLD: &str = "01964c1e-0000-7000-8000-000000000001";
            {
                let store = place.open();
                let mut b = Batch::new();
                b.put_chain(&chain("hot"), true);
                let waits = ColdSummary {
                    queue: "general".into(),
                    name: "t".into(),
                    ..Default::default()
                };
                // A cold chain is known by its id as a number: a UUID.
                b.put_cold_chain(&chain(COLD), &waits);
                store.apply(&b).unwrap();
                let mut b = Batch::new();
                for id in ["hot", COLD] {
                    let mut later = chain(id);
                    later.context.insert("step".into(), "2".into());
                    b.put_chain_record(&later);
                }
                store.apply(&b).unwrap();
                store.flush().await.unwrap();
            }
            let r = place.open().recover().unwrap();
            // Still loaded hot, with the record's latest version ...
            assert_eq!(r.live_chains.len(), 1);
            assert_eq!(r.live_chains[0].id, "hot");
            assert_eq!(r.live_chains[0].context["step"], "2");
            // ... and still queued cold, from its entry.
            assert_eq!(r.cold.len(), 1);
            assert_eq!(
                r.cold[0].chain,
                uuid::Uuid::parse_str(COLD).unwrap().as_u128()
            );
        }
    }

    #[test]
    fn dead_index_lists_failed_chains_newest_first_until_requeued() {
        for place in Place::all() {
            let store = place.open();
            let failed = |id: &str, at: u64| {
                let mut c = chain(id);
                c.state = ChainState::Failed as i32;
                c.finished_ms = at;
                c
            };
            let mut b = Batch::new();
            for (id, at) in [("a", 10), ("b", 30), ("c", 20)] {
                b.put_chain(&failed(id, at), false);
            }
            b.put_chain(&chain("live"), true);
            store.apply(&b).unwrap();
            let ids = |p: &ListPage| p.chains.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
            let first = store.dead_chains(None, 2).unwrap();
            assert_eq!(ids(&first), ["b", "c"]);
            let cursor =
                ListCursor::parse(Listing::Failed, None, first.next.as_deref().unwrap()).unwrap();
            let second = store.dead_chains(Some(&cursor), 2).unwrap();
            assert_eq!((ids(&second), second.next), (vec!["a".to_owned()], None));

            let mut requeued = failed("b", 30);
            requeued.requeued_as = "b2".into();
            let mut b = Batch::new();
            b.put_chain(&requeued, false);
            b.put_paused("io", true);
            store.apply(&b).unwrap();
            assert_eq!(ids(&store.dead_chains(None, 10).unwrap()), ["c", "a"]);
            assert_eq!(store.recover().unwrap().paused, ["io"]);
            assert!(ListCursor::parse(Listing::Failed, None, "nonsense").is_none());
        }
    }

    /// An ended chain record: `id`, finished at `ms`, with an idempotency
    /// key of its own.
    fn ended(id: &str, ms: u64) -> ChainRecord {
        let mut c = chain(id);
        c.state = ChainState::Succeeded as i32;
        c.finished_ms = ms;
        c.idempotency_key = format!("key-{id}");
        c
    }

    #[test]
    fn retention_finds_ended_chains_oldest_first_and_removes_all_they_left() {
        for place in Place::all() {
            let store = place.open();
            let mut b = Batch::new();
            let mut failed = ended("f", 20);
            failed.state = ChainState::Failed as i32;
            for c in [
                &ended("b", 30),
                &ended("a", 10),
                &failed,
                &ended("late", 99),
            ] {
                b.put_chain(c, false);
                b.put_idempotency_key(&c.idempotency_key, &c.id);
            }
            b.put_result("a", "t1", "big");
            b.put_result("a", "t2", "bigger");
            // A key taken anew by another chain is not "a"'s to remove.
            b.put_idempotency_key("key-b", "other");
            // Not ended: never found.
            b.put_chain(&chain("live"), true);
            store.apply(&b).unwrap();

            let (page, cursor) = store.expired(50, &ExpiryCursor::default(), 2).unwrap();
            let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["a", "f"]);
            assert_eq!(page[0].results, ["t1", "t2"]);
            assert!(page[0].owns_key);
            let (rest, end) = store.expired(50, &cursor, 2).unwrap();
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].id, "b");
            assert!(!rest[0].owns_key, "key-b names another chain now");
            assert_eq!(store.expired(50, &end, 2).unwrap().0, []);

            let mut b = Batch::new();
            for e in page.iter().chain(&rest) {
                b.remove_chain(e);
            }
            store.apply(&b).unwrap();
            for id in ["a", "f", "b"] {
                assert_eq!(store.chain(id).unwrap(), None);
            }
            assert_eq!(store.result("a", "t1").unwrap(), None);
            assert_eq!(store.idempotent_chain("key-a").unwrap(), None);
            assert_eq!(
                store.idempotent_chain("key-b").unwrap().as_deref(),
                Some("other")
            );
            assert!(store.dead_chains(None, 10).unwrap().chains.is_empty());
            assert!(store.chain("late").unwrap().is_some());
            assert!(store.chain("live").unwrap().is_some());
            let (again, _) = store
                .expired(u64::MAX, &ExpiryCursor::default(), 10)
                .unwrap();
            let ids: Vec<&str> = again.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["late"], "the live chain is not in the ended index");
        }
    }

    #[test]
    fn a_store_without_the_ended_index_is_indexed_once_when_opened() {
        for place in Place::all() {
            {
                // Written as a version without retention did: records only.
                let backend = place.backend();
                let mut b = Batch::new();
                for c in [ended("old", 5), chain("live")] {
                    b.insert(Space::Chains, &c.id, c.encode_to_vec());
                }
                b.insert(Space::Live, "live", []);
                backend.apply(&b).unwrap();
                backend.flush().unwrap();
            }
            let store = place.open();
            let (found, _) = store.expired(10, &ExpiryCursor::default(), 10).unwrap();
            let ids: Vec<&str> = found.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["old"]);
        }
    }

    #[test]
    fn chains_are_listed_by_state_newest_first_a_page_at_a_time_until_removed() {
        for place in Place::all() {
            let store = place.open();
            let in_state = |id: &str, state: ChainState, at: u64| {
                let mut c = chain(id);
                c.state = state as i32;
                c.finished_ms = at;
                c
            };
            let running = |n: u128| ChainId::from_u128(n).to_string();
            let mut b = Batch::new();
            for (id, at) in [("s1", 10), ("s2", 30), ("s3", 20)] {
                b.put_chain(&in_state(id, ChainState::Succeeded, at), false);
            }
            b.put_chain(&in_state("c1", ChainState::Cancelled, 15), false);
            b.put_chain(&in_state("f1", ChainState::Failed, 15), false);
            for n in [1, 3, 2] {
                b.put_chain(&chain(&running(n)), true);
            }
            // Ended, with a run still out: in the live index, not running.
            b.put_chain(&in_state(&running(9), ChainState::Succeeded, 40), true);
            store.apply(&b).unwrap();
            let ids = |p: &ListPage| p.chains.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
            let list = |listing, after: Option<&ListCursor>, n| {
                store.chains(listing, None, after, n).unwrap()
            };

            let first = list(Listing::Succeeded, None, 2);
            assert_eq!(ids(&first), ["s2", "s3"]);
            let next = ListCursor::parse(Listing::Succeeded, None, first.next.as_deref().unwrap())
                .unwrap();
            let second = list(Listing::Succeeded, Some(&next), 2);
            assert_eq!((ids(&second), second.next), (vec!["s1".to_owned()], None));
            assert_eq!(ids(&list(Listing::Cancelled, None, 10)), ["c1"]);
            assert_eq!(ids(&list(Listing::Failed, None, 10)), ["f1"]);
            let live = list(Listing::Running, None, 2);
            assert_eq!(
                ids(&live),
                [running(3), running(2)],
                "newest id first, ended ones skipped"
            );
            let next =
                ListCursor::parse(Listing::Running, None, live.next.as_deref().unwrap()).unwrap();
            assert_eq!(ids(&list(Listing::Running, Some(&next), 5)), [running(1)]);
            assert!(ListCursor::parse(Listing::Running, None, "nonsense").is_none());

            // Retention removes a chain from its listing.
            let mut b = Batch::new();
            let (found, _) = store.expired(25, &ExpiryCursor::default(), 10).unwrap();
            for expired in &found {
                b.remove_chain(expired);
            }
            store.apply(&b).unwrap();
            assert_eq!(ids(&list(Listing::Succeeded, None, 10)), ["s2"]);
            assert!(ids(&list(Listing::Cancelled, None, 10)).is_empty());
        }
    }

    /// An ended chain of `state` at `at` whose steps are named `names`.
    fn named(id: &str, names: &[&str], state: ChainState, at: u64) -> ChainRecord {
        let steps = names
            .iter()
            .map(|name| Signature {
                name: (*name).into(),
                args: "[]".into(),
                kwargs: "{}".into(),
                ..Default::default()
            })
            .collect();
        let spec = ChainSpec {
            steps,
            ..ChainSpec::default()
        };
        ChainRecord {
            id: id.to_owned(),
            state: state as i32,
            finished_ms: at,
            ..ChainRecord::new(ChainId::default(), spec, 1)
        }
    }

    #[test]
    fn ended_chains_are_listed_by_task_name_newest_first_until_requeued_or_removed() {
        for place in Place::all() {
            let store = place.open();
            let mut b = Batch::new();
            // Many of a common name, few of a rare one, in every state.
            for i in 0..300u64 {
                b.put_chain(
                    &named(&format!("n{i}"), &["common"], ChainState::Succeeded, i),
                    false,
                );
            }
            b.put_chain(
                &named("r1", &["common", "rare"], ChainState::Succeeded, 50),
                false,
            );
            b.put_chain(
                &named("r2", &["rare", "rare"], ChainState::Succeeded, 250),
                false,
            );
            b.put_chain(&named("r3", &["rare"], ChainState::Succeeded, 150), false);
            b.put_chain(&named("rc", &["rare"], ChainState::Cancelled, 60), false);
            b.put_chain(&named("rf", &["rare"], ChainState::Failed, 70), false);
            // A longer name that starts like it is another name.
            b.put_chain(&named("x", &["rarer"], ChainState::Succeeded, 80), false);
            store.apply(&b).unwrap();
            let ids = |p: &ListPage| p.chains.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
            let list = |listing, after: Option<&ListCursor>, n| {
                store.chains(listing, Some("rare"), after, n).unwrap()
            };

            let first = list(Listing::Succeeded, None, 2);
            assert_eq!(ids(&first), ["r2", "r3"], "newest first, once per chain");
            let token = first.next.as_deref().unwrap();
            let next = ListCursor::parse(Listing::Succeeded, Some("rare"), token).unwrap();
            let second = list(Listing::Succeeded, Some(&next), 2);
            assert_eq!((ids(&second), second.next), (vec!["r1".to_owned()], None));
            assert_eq!(ids(&list(Listing::Cancelled, None, 10)), ["rc"]);
            assert_eq!(ids(&list(Listing::Failed, None, 10)), ["rf"]);
            // The running list has no task index: every running chain,
            // for its caller to filter.
            let running = ChainId::from_u128(7).to_string();
            let mut b = Batch::new();
            b.put_chain(&named(&running, &["common"], ChainState::Running, 0), true);
            store.apply(&b).unwrap();
            assert_eq!(ids(&list(Listing::Running, None, 10)), [running]);
            let common = store
                .chains(Listing::Succeeded, Some("common"), None, 500)
                .unwrap();
            assert_eq!(common.chains.len(), 301);

            // A requeued failed chain leaves it, as it leaves the dead list.
            let mut requeued = named("rf", &["rare"], ChainState::Failed, 70);
            requeued.requeued_as = "next".into();
            let mut b = Batch::new();
            b.put_chain(&requeued, false);
            store.apply(&b).unwrap();
            assert!(ids(&list(Listing::Failed, None, 10)).is_empty());

            // Retention removes a chain from it.
            let mut b = Batch::new();
            let (found, _) = store.expired(200, &ExpiryCursor::default(), 1000).unwrap();
            for expired in &found {
                b.remove_chain(expired);
            }
            store.apply(&b).unwrap();
            assert_eq!(ids(&list(Listing::Succeeded, None, 10)), ["r2"]);
            assert!(ids(&list(Listing::Cancelled, None, 10)).is_empty());
            let common = store
                .chains(Listing::Succeeded, Some("common"), None, 500)
                .unwrap();
            assert_eq!(common.chains.len(), 100);
        }
    }

    #[test]
    fn a_store_without_the_task_index_is_indexed_once_when_opened() {
        for place in Place::all() {
            {
                // Written as a version without the index did: records only.
                let store = place.open();
                let mut b = Batch::new();
                for (id, state) in [("old", ChainState::Succeeded), ("dead", ChainState::Failed)] {
                    let chain = named(id, &["t"], state, 5);
                    b.insert(Space::Chains, &chain.id, chain.encode_to_vec());
                }
                b.remove(Space::Meta, "tasks-indexed");
                store.apply(&b).unwrap();
                store.backend.flush().unwrap();
            }
            let store = place.open();
            for (listing, id) in [(Listing::Succeeded, "old"), (Listing::Failed, "dead")] {
                let found = store.chains(listing, Some("t"), None, 10).unwrap();
                assert_eq!(
                    found
                        .chains
                        .iter()
                        .map(|c| c.id.as_str())
                        .collect::<Vec<_>>(),
                    [id]
                );
            }
        }
    }

    #[test]
    fn a_store_without_the_done_index_is_indexed_once_when_opened() {
        for place in Place::all() {
            {
                // Written as a version without the index did: records only.
                let store = place.open();
                let mut done = ended("old", 5);
                done.state = ChainState::Succeeded as i32;
                let mut b = Batch::new();
                b.insert(Space::Chains, &done.id, done.encode_to_vec());
                b.remove(Space::Meta, "done-indexed");
                store.apply(&b).unwrap();
                assert!(
                    store
                        .chains(Listing::Succeeded, None, None, 10)
                        .unwrap()
                        .chains
                        .is_empty()
                );
                store.backend.flush().unwrap();
            }
            let store = place.open();
            let found = store.chains(Listing::Succeeded, None, None, 10).unwrap();
            assert_eq!(found.chains.len(), 1);
            assert_eq!(found.chains[0].id, "old");
        }
    }

    #[test]
    fn corrupt_live_record_is_reported_not_fatal() {
        for place in Place::all() {
            let store = place.open();
            let mut b = Batch::new();
            b.insert(Space::Chains, "bad", [0xff, 0xff, 0xff]);
            b.insert(Space::Live, "bad", []);
            store.apply(&b).unwrap();
            let r = store.recover().unwrap();
            assert!(r.live_chains.is_empty());
            assert_eq!(r.corrupt.len(), 1);
        }
    }

    #[test]
    fn a_store_of_the_former_layout_is_moved_into_one_tree() {
        let dir = tempfile::tempdir().unwrap();
        let mut failed = chain("f");
        failed.state = ChainState::Failed as i32;
        failed.finished_ms = 7;
        {
            // One tree per collection, written as version 0.1 did, without
            // the dead index (older still).
            let db = sled::open(dir.path()).unwrap();
            let chains = db.open_tree("chains").unwrap();
            let live = db.open_tree("live").unwrap();
            for c in [chain("a"), failed.clone()] {
                chains.insert(c.id.as_bytes(), c.encode_to_vec()).unwrap();
            }
            live.insert("a", &[][..]).unwrap();
            db.open_tree("idempotency")
                .unwrap()
                .insert("k", "a")
                .unwrap();
            db.open_tree("paused")
                .unwrap()
                .insert("io", &[][..])
                .unwrap();
            db.flush().unwrap();
        }
        // sled's threads may hold the directory's lock a moment longer.
        let store = reopen_sled(dir.path());
        let r = store.recover().unwrap();
        assert_eq!(r.live_chains.len(), 1);
        assert_eq!(r.live_chains[0].id, "a");
        assert_eq!(r.paused, ["io"]);
        assert_eq!(store.idempotent_chain("k").unwrap().as_deref(), Some("a"));
        let dead = store.dead_chains(None, 10).unwrap();
        assert_eq!(dead.chains, [failed]);
        drop(store);
        let backend = SledBackend::open_when_unlocked(dir.path()).unwrap();
        let names = backend.db().tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"chains"));
        drop(backend);
        // Opening again finds nothing to move and the same content.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap().live_chains.len(), 1);
    }
}

//! The store as the broker shares it, and how it survives disk trouble.
//!
//! sled 0.34 makes an I/O error sticky: once a write of its log fails (disk
//! full, a read-only remount, EIO), that database refuses every later write
//! until it is opened again. And after a failed `fsync` the kernel may have
//! dropped the dirty pages it could not write, so retrying the sync proves
//! nothing (PostgreSQL's "fsyncgate"). The only sound recovery is the one a
//! crash gets: open the files again and redo what was not durable.
//!
//! [`Shared`] does that in place. It holds the one open [`Store`] behind a
//! lock, and a journal of every [`Batch`] applied since the last flush that
//! succeeded. [`Shared::repair`] closes the database, opens it again (sled's
//! own crash recovery reads the log back), re-applies the journal in order,
//! and makes it durable before anyone else may write; until then writes and
//! reads fail fast with an error, and the scheduler refuses new work (see
//! `scheduler` on its degraded mode). Nothing applied is lost: what was
//! durable is on disk, what was not is in the journal.
//!
//! Everyone shares one [`Shared`] (a cheap clone): no other handle to the
//! sled database may outlive a call, or the database could not be reopened
//! (sled locks its directory while any handle is open).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::{
    Batch, Error, ListCursor, ListPage, Listing, PgBackend, Recovered, SledBackend, Store, View,
    redact,
};
use crate::domain::ChainRecord;

/// Why the store refuses writes, while it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The disk (or the quota, or the file-size limit) has no room left.
    Full,
    /// Any other write or sync failure.
    Failing,
}

impl Error {
    /// What kind of trouble this error says the disk is in: full (no space,
    /// quota exceeded, file-size limit), or failing in some other way.
    pub fn fault(&self) -> Fault {
        let io = match self {
            Error::Sled(sled::Error::Io(e)) | Error::Io { source: e, .. } => e,
            Error::Postgres(e) if e.is_disk_full() => return Fault::Full,
            _ => return Fault::Failing,
        };
        // sled hands out copies of a sticky error that keep the kind but not
        // the OS error number; 28 is ENOSPC everywhere that matters.
        let full = matches!(
            io.kind(),
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
        ) || io.raw_os_error() == Some(28);
        if full { Fault::Full } else { Fault::Failing }
    }
}

/// The store shared by the scheduler, its flusher and readers; reopened in
/// place after a failure. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// Opens the store again, for [`Shared::repair`].
    reopen: Box<dyn Fn() -> Result<Store, Error> + Send + Sync>,
    /// The open database; `None` while [`Shared::repair`] reopens it.
    store: RwLock<Option<Store>>,
    journal: Mutex<Journal>,
}

/// Writes not yet known durable: the staged batch, not applied yet, and
/// the batches applied since the last flush, oldest first.
struct Journal {
    /// Writes handed over ([`Shared::stage`]) but not applied yet; reads
    /// see them ([`Shared::chain`] and the others).
    staged: Batch,
    /// Whether applied batches are kept at all: off when the broker
    /// acknowledges before flushing (then a failure may lose work anyway).
    keep: bool,
    /// Number of batches applied so far.
    applied: u64,
    /// (number, batch) of every batch applied after the last flush that
    /// succeeded.
    batches: VecDeque<(u64, Batch)>,
}

impl Shared {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let store = Store::open(dir)?;
        let at = dir.to_owned();
        let reopen = move || Store::over_backend(SledBackend::open_when_unlocked(&at)?);
        Ok(Self::new(dir, store, reopen))
    }

    /// Opens the store in the PostgreSQL database at `url` (see
    /// [`PgBackend`]); a repair connects again.
    ///
    /// # Errors
    /// As [`PgBackend::open`].
    pub fn open_postgres(url: &str) -> Result<Self, Error> {
        let store = Store::over_backend(PgBackend::open(url)?)?;
        let at = url.to_owned();
        let reopen = move || Store::over_backend(PgBackend::open(&at)?);
        Ok(Self::new(Path::new(&redact(url)), store, reopen))
    }

    /// Shares an open store (of `dir`, for error messages); `reopen` opens
    /// it again after a failure.
    pub fn new(
        dir: &Path,
        store: Store,
        reopen: impl Fn() -> Result<Store, Error> + Send + Sync + 'static,
    ) -> Self {
        Shared {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                reopen: Box::new(reopen),
                store: RwLock::new(Some(store)),
                journal: Mutex::new(Journal {
                    staged: Batch::new(),
                    keep: true,
                    applied: 0,
                    batches: VecDeque::new(),
                }),
            }),
        }
    }

    /// Keeps (the default) or stops keeping a journal of batches not yet
    /// durable. Without it a repair brings back only what was flushed.
    pub fn keep_journal(&self, keep: bool) {
        let mut journal = self.journal();
        journal.keep = keep;
        if !keep {
            journal.batches.clear();
        }
    }

    /// Runs `read` on the open store.
    ///
    /// # Errors
    /// What `read` returns, or an error while the store is being reopened.
    pub fn read<T>(&self, read: impl FnOnce(&Store) -> Result<T, Error>) -> Result<T, Error> {
        let guard = self.inner.store.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(store) => read(store),
            None => Err(self.closed()),
        }
    }

    /// Hands writes over, to be applied by the next
    /// [`apply_staged`](Self::apply_staged) (with every other write staged
    /// until then, in one batch). Reads see them at once.
    pub fn stage(&self, writes: Batch) {
        self.journal().staged.merge(writes);
    }

    /// The number the next batch applied will have if writes are staged,
    /// else that of the last one applied: what the writes staged so far
    /// wait for to be durable.
    pub fn next_seq(&self) -> u64 {
        let journal = self.journal();
        journal.applied + u64::from(!journal.staged.is_empty())
    }

    /// [`stage`](Self::stage), then [`next_seq`](Self::next_seq): the
    /// number of the batch that will hold `writes`.
    pub fn stage_seq(&self, writes: Batch) -> u64 {
        if !writes.is_empty() {
            self.stage(writes);
        }
        self.next_seq()
    }

    /// Whether writes are staged, not applied yet.
    pub fn has_staged(&self) -> bool {
        !self.journal().staged.is_empty()
    }

    /// Applies the staged writes as one atomic batch (visible, not yet
    /// durable) and keeps it in the journal until a flush covers it.
    /// Returns the number of batches applied so far, this one included:
    /// what a flush that starts now makes durable.
    ///
    /// # Errors
    /// When sled fails to write, or the store is being reopened: the
    /// writes stay staged, to be applied later.
    pub fn apply_staged(&self) -> Result<u64, Error> {
        self.read(|store| {
            // The journal's lock spans the write, so journal order is
            // write order.
            let mut journal = self.journal();
            if journal.staged.is_empty() {
                return Ok(journal.applied);
            }
            store.apply(&journal.staged)?;
            let batch = std::mem::take(&mut journal.staged);
            journal.applied += 1;
            if journal.keep {
                let n = journal.applied;
                journal.batches.push_back((n, batch));
            }
            Ok(journal.applied)
        })
    }

    /// Stages `batch` and applies it with whatever else is staged (see
    /// [`apply_staged`](Self::apply_staged)).
    ///
    /// # Errors
    /// As [`apply_staged`](Self::apply_staged).
    pub fn apply(&self, batch: Batch) -> Result<u64, Error> {
        self.stage(batch);
        self.apply_staged()
    }

    /// Makes every batch applied so far durable (see [`Store::flush`]).
    ///
    /// # Errors
    /// When the flush or the sync fails, or the store is being reopened.
    /// After an error only [`Shared::repair`] makes the store durable again.
    pub async fn flush(&self) -> Result<(), Error> {
        let (store, covered) = {
            let store = self.read(|s| Ok(s.clone()))?;
            (store, self.journal().applied)
        };
        store.flush().await?;
        drop(store);
        self.journal().batches.retain(|(n, _)| *n > covered);
        Ok(())
    }

    /// Recovers from a failed write or flush: closes the database, opens it
    /// again, re-applies every batch not yet durable and flushes. Writes
    /// and reads fail meanwhile, and go on failing if the repair does; call
    /// it again later (the disk may still be full).
    ///
    /// # Errors
    /// When the database cannot be opened, written or flushed.
    pub async fn repair(&self) -> Result<(), Error> {
        let old = self.take_store();
        let inner = Arc::clone(&self.inner);
        // Closing flushes what sled can and joins its threads; opening reads
        // the log back. Both block.
        let opened = tokio::task::spawn_blocking(move || {
            drop(old);
            let store = (inner.reopen)()?;
            let journal = inner.journal.lock().unwrap_or_else(|e| e.into_inner());
            for (_, batch) in &journal.batches {
                store.apply(batch)?;
            }
            Ok::<_, Error>((store, journal.applied))
        })
        .await
        .map_err(|e| self.io_error(std::io::Error::other(e)))?;
        let (store, covered) = opened?;
        if let Err(e) = store.flush().await {
            // Closing may block on sled's threads: not on this task.
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
            return Err(e);
        }
        self.journal().batches.retain(|(n, _)| *n > covered);
        *self.inner.store.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
        Ok(())
    }

    /// Closes the database as [`Shared::repair`] does first: reads and
    /// writes fail until a repair. For tests of what the scheduler does
    /// meanwhile.
    #[cfg(test)]
    pub fn close(&self) {
        drop(self.take_store());
    }

    /// Takes the open database out: reads and writes fail from here on.
    fn take_store(&self) -> Option<Store> {
        self.inner
            .store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// What the scheduler needs to resume (see [`Store::recover`]). A live
    /// chain whose record decodes but could not be run (no steps, a cursor
    /// past its steps, a step without task id or signature) is reported in
    /// `corrupt` and skipped like an undecodable one, so a damaged record
    /// never reaches the scheduler, which indexes steps by the cursor.
    ///
    /// # Errors
    /// As [`Store::recover`].
    pub fn recover(&self) -> Result<Recovered, Error> {
        let mut recovered = self.read(Store::recover)?;
        let (sound, damaged): (Vec<_>, Vec<_>) = std::mem::take(&mut recovered.live_chains)
            .into_iter()
            .map(|c| (inconsistency(&c), c))
            .partition(|(why, _)| why.is_none());
        recovered.live_chains = sound.into_iter().map(|(_, c)| c).collect();
        for (why, chain) in damaged {
            let why = why.unwrap_or_default();
            recovered
                .corrupt
                .push(format!("live chain {:?}: {why}", chain.id));
        }
        Ok(recovered)
    }

    /// # Errors
    /// As [`Store::chain`].
    pub fn chain(&self, id: &str) -> Result<Option<ChainRecord>, Error> {
        self.view(&Batch::new(), |v| v.chain(id))
    }

    /// # Errors
    /// As [`Store::result`].
    pub fn result(&self, chain_id: &str, task_id: &str) -> Result<Option<String>, Error> {
        self.view(&Batch::new(), |v| v.result(chain_id, task_id))
    }

    /// # Errors
    /// As [`Store::waits_cold`].
    pub fn waits_cold(&self, id: &str) -> Result<bool, Error> {
        self.view(&Batch::new(), |v| v.waits_cold(id))
    }

    /// # Errors
    /// As [`Store::idempotent_chain`].
    pub fn idempotent_chain(&self, key: &str) -> Result<Option<String>, Error> {
        self.view(&Batch::new(), |v| v.idempotent_chain(key))
    }

    /// Runs `read` on the store with the staged writes laid over it, and
    /// `top` (writes not even staged yet, such as the scheduler's round in
    /// progress) over those: what is written reads back, even while the
    /// store is reopened.
    ///
    /// # Errors
    /// What `read` returns; [`Error::Closed`] for a read that reaches the
    /// store while it is reopened.
    pub fn view<T>(
        &self,
        top: &Batch,
        read: impl FnOnce(View<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let guard = self.inner.store.read().unwrap_or_else(|e| e.into_inner());
        let journal = self.journal();
        read(View::new(guard.as_ref(), [top, &journal.staged]))
    }

    /// # Errors
    /// As [`Store::dead_chains`].
    pub fn dead_chains(&self, after: Option<&ListCursor>, limit: usize) -> Result<ListPage, Error> {
        self.read(|s| s.dead_chains(after, limit))
    }

    /// # Errors
    /// As [`Store::chains`].
    pub fn chains(
        &self,
        listing: Listing,
        task: Option<&str>,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        self.read(|s| s.chains(listing, task, after, limit))
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.inner.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io_error(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.inner.dir.clone(),
            source,
        }
    }

    fn closed(&self) -> Error {
        Error::Closed
    }
}

/// Why a decoded chain record cannot be run, if it cannot.
pub fn inconsistency(chain: &ChainRecord) -> Option<String> {
    if chain.id.is_empty() {
        return Some("the record has no chain id".into());
    }
    if chain.steps.is_empty() {
        return Some("the chain has no steps".into());
    }
    let phase = chain.phase();
    let len = chain.steps_of(phase).len();
    if usize::try_from(chain.cursor).map_or(true, |c| c >= len) {
        return Some(format!(
            "its cursor {} is past the {len} steps of phase {phase:?}",
            chain.cursor
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for (at, step) in chain.all_steps() {
        if step.task_id.is_empty() || step.signature.is_none() {
            return Some(format!(
                "step {} of phase {:?} lacks its task id or signature",
                at.index, at.phase
            ));
        }
        if !ids.insert(step.task_id.as_str()) {
            return Some(format!("two steps share task id {:?}", step.task_id));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::testing::Place;
    use super::super::tests::chain;
    use super::*;

    fn put(shared: &Shared, id: &str) {
        let mut b = Batch::new();
        b.put_chain(&chain(id), true);
        shared.apply(b).unwrap();
    }

    #[test]
    fn disk_full_is_told_apart_from_other_failures() {
        let io = |e: std::io::Error| Error::Io {
            path: PathBuf::new(),
            source: e,
        };
        let full = [
            io(std::io::Error::from_raw_os_error(28)),
            io(ErrorKind::StorageFull.into()),
            io(ErrorKind::QuotaExceeded.into()),
            Error::Sled(sled::Error::Io(ErrorKind::FileTooLarge.into())),
        ];
        for e in full {
            assert_eq!(e.fault(), Fault::Full, "{e}");
        }
        let failing = [
            io(ErrorKind::PermissionDenied.into()),
            Error::Sled(sled::Error::Io(std::io::Error::from_raw_os_error(5))),
            Error::Sled(sled::Error::Unsupported("x".into())),
        ];
        for e in failing {
            assert_eq!(e.fault(), Fault::Failing, "{e}");
        }
    }

    /// A repair reopens the database and brings back every batch, the ones
    /// flushed before and the ones only applied; the journal empties.
    #[tokio::test]
    async fn repair_reopens_and_replays_what_was_not_durable() {
        for place in Place::all() {
            let shared = place.shared();
            put(&shared, "flushed");
            shared.flush().await.unwrap();
            assert!(shared.journal().batches.is_empty());
            put(&shared, "applied");
            assert_eq!(shared.journal().batches.len(), 1);
            shared.repair().await.unwrap();
            assert!(shared.journal().batches.is_empty());
            let live: Vec<String> = shared
                .recover()
                .unwrap()
                .live_chains
                .into_iter()
                .map(|c| c.id)
                .collect();
            assert_eq!(live, ["applied", "flushed"]);
            put(&shared, "after");
            shared.flush().await.unwrap();
            assert!(shared.chain("after").unwrap().is_some());
        }
    }

    #[test]
    fn a_live_record_that_could_not_run_is_reported_not_loaded() {
        for place in Place::all() {
            let shared = place.shared();
            let mut past = chain("past");
            past.cursor = 7;
            let mut nameless = chain("nameless");
            nameless.steps[0].task_id.clear();
            let mut empty = chain("empty");
            empty.steps.clear();
            let mut b = Batch::new();
            for c in [&past, &nameless, &empty, &chain("fine")] {
                b.put_chain(c, true);
            }
            shared.apply(b).unwrap();
            let r = shared.recover().unwrap();
            let ids: Vec<&str> = r.live_chains.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids, ["fine"]);
            assert_eq!(r.corrupt.len(), 3, "{:?}", r.corrupt);
            assert!(r.corrupt.iter().any(|c| c.contains("cursor 7")));
        }
    }

    #[tokio::test]
    async fn without_a_journal_nothing_is_kept() {
        for place in Place::all() {
            let shared = place.shared();
            shared.keep_journal(false);
            put(&shared, "a");
            assert!(shared.journal().batches.is_empty());
            shared.flush().await.unwrap();
            assert!(shared.chain("a").unwrap().is_some());
        }
    }
}

//! The embedded default backend: one sled tree in the data directory.
//!
//! sled 0.34 (vendored with Baton's patches, vendor/sled/BATON-PATCHES.md)
//! gives atomic batches (`Tree::apply_batch`; a batch one of whose writes
//! fails is dropped whole at recovery, patch 7) and a flush. Its own flush
//! ends in `sync_file_range`, which does not flush the device's write cache
//! (sled issue #1452), so [`SledBackend::flush`] follows it with an
//! `fdatasync` of the data file; and since that `fdatasync` does all the
//! work, sled's `sync_file_range`s are turned off (patch 8,
//! `Config::range_sync`): one device wait per flush instead of three.
//! (The collections were separate trees written in a multi-tree
//! transaction until the benchmark profile showed the transaction's
//! bookkeeping taking a third of the commit; a store of that layout is
//! moved over once when opened.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use sled::IVec;

use super::{Backend, Batch, Entries, Error, Space, dead_key};
use crate::domain::{ChainRecord, ChainState};

/// sled's page cache. sled's default (1 GiB) would keep most of a large
/// backlog in memory twice, once as pages here and once as the scheduler's
/// records; the scheduler reads the store only at startup and for chains
/// no longer live, so a small cache costs little.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The store's tree.
const TREE: &str = "baton";

/// Present while a store of the former layout is being moved (see
/// [`SledBackend::move_former_layout`]); outside every collection's prefix.
const MOVED: &[u8] = b"~moved-from-trees";

/// The sled database and its one tree. Cheap to clone.
#[derive(Clone)]
pub struct SledBackend {
    db: sled::Db,
    /// Every collection, each under its key prefix ([`Space`]).
    tree: sled::Tree,
    /// sled's data file, fdatasync'ed after every flush.
    data_file: Arc<(PathBuf, File)>,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    ///
    /// # Errors
    /// When sled cannot open the directory or its data file cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .range_sync(false)
            .open()?;
        let path = dir.join("db");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        let backend = SledBackend {
            tree: db.open_tree(TREE)?,
            data_file: Arc::new((path, file)),
            db,
        };
        backend.move_former_layout()?;
        Ok(backend)
    }

    /// Opens the database, waiting a moment for the previous one's threads
    /// to let go of its lock (sled locks its directory while any handle is
    /// open): for a reopen after a failure.
    ///
    /// # Errors
    /// As [`SledBackend::open`].
    pub fn open_when_unlocked(dir: &Path) -> Result<Self, Error> {
        let mut tries = 0;
        loop {
            match Self::open(dir) {
                Err(Error::Sled(sled::Error::Io(e)))
                    if tries < 50 && e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Moves a store of the former layout (one tree per collection, the
    /// dead index possibly missing) into the one tree, then drops the old
    /// trees. Safe to interrupt: the copy is redone from the old trees
    /// until a marker says it is complete, and only then are they dropped.
    fn move_former_layout(&self) -> Result<(), Error> {
        let names = self.db.tree_names();
        let former: Vec<_> = Space::FORMER_TREES
            .iter()
            .filter(|(_, name)| names.iter().any(|n| n.as_ref() == name.as_bytes()))
            .collect();
        if former.is_empty() {
            return Ok(());
        }
        if self.tree.get(MOVED)?.is_none() {
            self.tree.clear()?;
            for (space, name) in &former {
                let old = self.db.open_tree(name)?;
                for item in old.iter() {
                    let (key, value) = item?;
                    self.tree.insert(space.key(&key), value)?;
                }
            }
            self.index_dead()?;
            self.tree.insert(MOVED, &[])?;
            self.db.flush()?;
        }
        for (_, name) in &former {
            self.db.drop_tree(name)?;
        }
        self.tree.remove(MOVED)?;
        self.db.flush()?;
        tracing::info!("moved the store to its one-tree layout");
        Ok(())
    }

    /// Builds the dead index from every stored chain (for a store of an
    /// earlier version, whose index may be missing).
    fn index_dead(&self) -> Result<(), Error> {
        for item in self.tree.scan_prefix([Space::Chains as u8]) {
            let (_, value) = item?;
            if let Ok(chain) = ChainRecord::decode(value.as_ref())
                && chain.state() == ChainState::Failed
                && chain.requeued_as.is_empty()
            {
                self.tree
                    .insert(Space::Dead.key(dead_key(chain.finished_ms, &chain.id)), &[])?;
            }
        }
        Ok(())
    }

    /// The database, for tests of the former layout.
    #[cfg(test)]
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, Error> {
        Ok(self.tree.get(key)?)
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Entries<'_> {
        Box::new(
            self.tree
                .range(from.to_vec()..to.to_vec())
                .map(|item| item.map_err(Error::from)),
        )
    }

    fn apply(&self, batch: &Batch) -> Result<(), Error> {
        let mut writes = sled::Batch::default();
        for (key, value) in batch.writes() {
            match value {
                Some(value) => writes.insert(key.clone(), value.clone()),
                None => writes.remove(key.clone()),
            }
        }
        Ok(self.tree.apply_batch(writes)?)
    }

    /// sled's flush, then an fdatasync of its data file, on the calling
    /// thread: sled's `flush_async` would hand the flush to a thread of its
    /// own and wake the caller from there, a second hop between threads on
    /// the path of every acknowledgment.
    fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        self.data_file.1.sync_data().map_err(|source| Error::Io {
            path: self.data_file.0.clone(),
            source,
        })
    }
}

//! A backend in memory, for the simulator and tests: the second
//! implementation of [`Backend`], and one whose crashes are exact.
//!
//! It keeps two copies of the data: what is applied (what reads see) and
//! what is durable (what the last [`Backend::flush`] covered). A crash is
//! [`MemBackend::after_crash`]: a backend holding only the durable copy, as
//! a machine that lost power would find its disk. [`MemBackend::set_failing`]
//! makes every write and flush fail until it is turned off, as a full or
//! failing disk does; what failed never reaches the durable copy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sled::IVec;

use super::{Backend, Batch, Entries, Error};

/// Ordered bytes in memory with a durable copy (see the module doc).
#[derive(Default)]
pub struct MemBackend {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    applied: BTreeMap<IVec, IVec>,
    durable: BTreeMap<IVec, IVec>,
    failing: bool,
    /// Batches applied and flushes done, for tests that count them.
    applies: u64,
    flushes: u64,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with only what was durable here: what a restart after a
    /// crash (or a power cut) finds.
    pub fn after_crash(&self) -> Self {
        let durable = self.lock().durable.clone();
        MemBackend {
            inner: Mutex::new(Inner {
                applied: durable.clone(),
                durable,
                ..Inner::default()
            }),
        }
    }

    /// While `failing`, every apply and flush fails and changes nothing.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Batches applied and flushes that succeeded so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.applies, inner.flushes)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn failure() -> Error {
    Error::Io {
        path: "memory".into(),
        source: std::io::Error::other("the simulated disk is failing"),
    }
}

impl Backend for MemBackend {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, Error> {
        Ok(self.lock().applied.get(key).cloned())
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Entries<'_> {
        if from >= to {
            // As sled: an empty range (BTreeMap's would panic).
            return Box::new(std::iter::empty());
        }
        // A copy: the lock is not held while the caller iterates.
        let entries: Vec<_> = self
            .lock()
            .applied
            .range::<[u8], _>((
                std::ops::Bound::Included(from),
                std::ops::Bound::Excluded(to),
            ))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(entries.into_iter())
    }

    fn apply(&self, batch: &Batch) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.failing {
            return Err(failure());
        }
        for (key, value) in batch.writes() {
            match value {
                Some(value) => inner.applied.insert(key.clone(), value.clone()),
                None => inner.applied.remove(key),
            };
        }
        inner.applies += 1;
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.failing {
            return Err(failure());
        }
        inner.durable = inner.applied.clone();
        inner.flushes += 1;
        Ok(())
    }
}

/// A shared backend is a backend: the simulator keeps a handle to the one
/// its store uses, to crash it or make it fail.
impl<B: Backend> Backend for Arc<B> {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, Error> {
        (**self).get(key)
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Entries<'_> {
        (**self).range(from, to)
    }

    fn apply(&self, batch: &Batch) -> Result<(), Error> {
        (**self).apply(batch)
    }

    fn flush(&self) -> Result<(), Error> {
        (**self).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::chain;

    #[test]
    fn a_crash_keeps_what_was_flushed_and_loses_the_rest() {
        let backend = Arc::new(MemBackend::new());
        let store = Store::over_backend(Arc::clone(&backend)).unwrap();
        let put = |id: &str| {
            let mut b = Batch::new();
            b.put_chain(&chain(id), true);
            store.apply(&b).unwrap();
        };
        put("durable");
        backend.flush().unwrap();
        put("applied");
        assert!(store.chain("applied").unwrap().is_some());
        let restarted = Store::over_backend(backend.after_crash()).unwrap();
        assert!(restarted.chain("durable").unwrap().is_some());
        assert!(restarted.chain("applied").unwrap().is_none());
    }

    #[test]
    fn a_failing_backend_changes_nothing() {
        let backend = Arc::new(MemBackend::new());
        let store = Store::over_backend(Arc::clone(&backend)).unwrap();
        backend.set_failing(true);
        let mut b = Batch::new();
        b.put_chain(&chain("x"), true);
        assert!(store.apply(&b).is_err());
        assert!(backend.flush().is_err());
        backend.set_failing(false);
        assert!(store.chain("x").unwrap().is_none());
    }
}

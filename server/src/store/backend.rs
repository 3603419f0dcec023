//! What Baton needs of the storage under its store: the boundary a new
//! backend implements (docs/store.md says more).
//!
//! The store's collections, key layout and record encoding live above this
//! line, in [`Store`](super::Store) and [`Batch`]; a backend sees only
//! ordered byte keys and byte values. It owes three things:
//!
//! - **Atomic batches.** [`Backend::apply`] makes all of a batch's writes
//!   visible to reads at once, or none of them, even if the process dies
//!   halfway: after a restart a batch is there whole or not at all.
//! - **A durability point.** [`Backend::flush`] returns once every batch
//!   applied before it was called is durable (on disk, synced; for a
//!   database server, committed). Baton acknowledges nothing before that.
//!   Batches are made durable in the order they were applied: a restart
//!   never finds a later batch without an earlier one.
//! - **Reads of what is applied.** [`Backend::get`] and [`Backend::range`]
//!   see every batch applied so far, durable or not.
//!
//! Errors are sticky as far as Baton is concerned: after a failed `apply`
//! or `flush` the store is reopened ([`Shared::repair`](super::Shared::repair))
//! and what was not durable is applied again, so a backend need not retry
//! on its own.

use sled::IVec;

use super::{Batch, Error};

/// Keys and values in key order (reversible), as [`Backend::range`] gives
/// them.
pub type Entries<'a> = Box<dyn DoubleEndedIterator<Item = Result<(IVec, IVec), Error>> + 'a>;

/// Ordered byte keys and values with atomic batches and an explicit
/// durability point (see the module doc).
pub trait Backend: Send + Sync + 'static {
    /// The value of `key`, if it has one.
    ///
    /// # Errors
    /// When the backend cannot read.
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, Error>;

    /// The entries whose keys are in `[from, to)`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Entries<'_>;

    /// Applies every write of `batch` atomically: visible to reads at
    /// once, not yet durable.
    ///
    /// # Errors
    /// When the backend cannot write; then none of the batch may survive a
    /// restart.
    fn apply(&self, batch: &Batch) -> Result<(), Error>;

    /// Blocks until every batch applied so far is durable.
    ///
    /// # Errors
    /// When that cannot be made sure of; nothing is taken as durable past
    /// the last flush that succeeded.
    fn flush(&self) -> Result<(), Error>;
}

/// A backend chosen at run time (the store's tests open each kind).
impl Backend for Box<dyn Backend> {
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

//! What the scheduler's machine may read of the store, lent for each input.
//!
//! The machine keeps no store handle: the driver lends it a [`Lookup`] with
//! every input that may need a record not in memory (a cold chain whose
//! turn came, a chain that ended and left memory, an idempotency key, the
//! ended chains that retention removes). Each read sees the store as of
//! every write staged so far, with `top` (the machine's own round, not yet
//! staged) laid over it, so what the machine wrote reads back. The reads
//! are synchronous: page-cache reads of a few microseconds, and a cold
//! chain read in the round that dispatches it keeps dispatch order exact.
//! A simulated store (the simulator's) or any backend behind [`Shared`]
//! serves them the same way.

use super::{Batch, Error, Expired, ExpiryCursor, Shared};
use crate::domain::{ChainRecord, Signature, UnixMs};

pub trait Lookup {
    /// The chain with this id, if stored.
    ///
    /// # Errors
    /// When the store cannot be read (it is reopened after disk trouble, or
    /// the record does not decode).
    fn chain(&self, top: &Batch, id: &str) -> Result<Option<ChainRecord>, Error>;

    /// A step's result stored apart (see `Batch::put_result`).
    ///
    /// # Errors
    /// As [`Lookup::chain`].
    fn result(&self, top: &Batch, chain_id: &str, task_id: &str) -> Result<Option<String>, Error>;

    /// The members of a group or nested executor step (see
    /// `Batch::put_members`).
    ///
    /// # Errors
    /// As [`Lookup::chain`].
    fn members(
        &self,
        top: &Batch,
        chain_id: &str,
        task_id: &str,
    ) -> Result<Option<Signature>, Error>;

    /// A member's result (see `Batch::put_member_result`).
    ///
    /// # Errors
    /// As [`Lookup::chain`].
    fn member_result(
        &self,
        top: &Batch,
        chain_id: &str,
        task_id: &str,
        member: u32,
    ) -> Result<Option<String>, Error>;

    /// The chain an idempotency key was first used for.
    ///
    /// # Errors
    /// As [`Lookup::chain`].
    fn idempotent_chain(&self, top: &Batch, key: &str) -> Result<Option<String>, Error>;

    /// Whether the chain waits cold in a queue (its `live` entry says so).
    ///
    /// # Errors
    /// As [`Lookup::chain`].
    fn waits_cold(&self, top: &Batch, id: &str) -> Result<bool, Error>;

    /// Ended chains past their retention, oldest first (see
    /// `Store::expired`).
    ///
    /// # Errors
    /// As [`Lookup::chain`].
    fn expired(
        &self,
        before_ms: UnixMs,
        after: &ExpiryCursor,
        limit: usize,
    ) -> Result<(Vec<Expired>, ExpiryCursor), Error>;
}

impl Lookup for Shared {
    fn chain(&self, top: &Batch, id: &str) -> Result<Option<ChainRecord>, Error> {
        self.view(top, |v| v.chain(id))
    }

    fn result(&self, top: &Batch, chain_id: &str, task_id: &str) -> Result<Option<String>, Error> {
        self.view(top, |v| v.result(chain_id, task_id))
    }

    fn members(
        &self,
        top: &Batch,
        chain_id: &str,
        task_id: &str,
    ) -> Result<Option<Signature>, Error> {
        self.view(top, |v| v.members(chain_id, task_id))
    }

    fn member_result(
        &self,
        top: &Batch,
        chain_id: &str,
        task_id: &str,
        member: u32,
    ) -> Result<Option<String>, Error> {
        self.view(top, |v| v.member_result(chain_id, task_id, member))
    }

    fn idempotent_chain(&self, top: &Batch, key: &str) -> Result<Option<String>, Error> {
        self.view(top, |v| v.idempotent_chain(key))
    }

    fn waits_cold(&self, top: &Batch, id: &str) -> Result<bool, Error> {
        self.view(top, |v| v.waits_cold(id))
    }

    fn expired(
        &self,
        before_ms: UnixMs,
        after: &ExpiryCursor,
        limit: usize,
    ) -> Result<(Vec<Expired>, ExpiryCursor), Error> {
        self.read(|s| s.expired(before_ms, after, limit))
    }
}

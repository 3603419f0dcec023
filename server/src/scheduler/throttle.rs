//! Throttle slots: at most `limit` holders per identity, waiters served in
//! FIFO order.
//!
//! This is pure bookkeeping, with no I/O and no clock: the scheduler says
//! who waits, who holds and who releases, and gets back the grants to act
//! on. Keeping it free of the rest makes guarantee 4 (never more holders
//! than the limit, FIFO among waiters) checkable by unit tests alone.
//!
//! A holder counts from the moment it is granted. For a declared throttle
//! that is before the task reaches a worker: the slot is reserved, then the
//! task enters its queue. So the count bounds running bodies at every
//! instant, including the hand-off between a release and the next start.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::domain::Map;

use crate::domain::{ChainId, Identity, TaskId, UnixMs};

/// Who holds (or waits for) a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    /// A task-scoped declared throttle: one run of the task.
    Task(TaskId),
    /// A chain-scoped throttle: the chain, until it ends.
    Chain(ChainId),
    /// An in-body throttle: a running attempt's request.
    InBody { task_id: TaskId, request_id: u64 },
}

impl Holder {
    pub fn kind(&self) -> &'static str {
        match self {
            Holder::Task(_) => "task",
            Holder::Chain(_) => "chain",
            Holder::InBody { .. } => "in_body",
        }
    }
}

/// Facts about a holder for inspection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HolderInfo {
    pub since: UnixMs,
    /// The worker running the holder's task, once assigned.
    pub worker: String,
}

/// A waiter: who will hold the slot, and what to do once it does.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiter<T> {
    pub holder: Holder,
    pub since: UnixMs,
    pub ticket: T,
}

/// A waiter that has just become a holder.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant<T> {
    pub identity: Identity,
    pub waiter: Waiter<T>,
}

#[derive(Debug)]
struct Slot<T> {
    /// The concurrency most recently declared for this identity.
    declared: u32,
    holders: BTreeMap<Holder, HolderInfo>,
    waiters: VecDeque<Waiter<T>>,
}

/// What inspection shows of one identity.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotInfo {
    pub identity: Identity,
    pub limit: u32,
    pub overridden: bool,
    pub holders: Vec<(Holder, HolderInfo)>,
    pub waiters: usize,
    pub oldest_waiter: Option<UnixMs>,
}

/// Whether a waiter can take its slot now. A waiter that needs a worker
/// (a declared or chain-scoped throttle) is granted only when a worker can
/// take its task at once, and the scheduler assigns it in the same
/// transition: the slot is taken atomically with the assignment. A slot
/// reserved for a task still waiting for a worker could otherwise wait
/// forever behind running bodies that wait in-body for that same slot.
/// Waiters that cannot start are passed over, not dropped: FIFO holds among
/// the waiters that can proceed.
pub type CanStart<'a, T> = &'a mut dyn FnMut(&Waiter<T>) -> bool;

/// Every identity's slots, waiters and admin limits.
#[derive(Debug)]
pub struct Throttles<T> {
    slots: Map<Identity, Slot<T>>,
    overrides: Map<Identity, u32>,
    /// Identities with a free slot whose waiters could not start when last
    /// pumped (no worker free for them): [`Throttles::repump`] retries them.
    blocked: BTreeSet<Identity>,
}

impl<T> Default for Throttles<T> {
    fn default() -> Self {
        Throttles {
            slots: Map::default(),
            overrides: Map::default(),
            blocked: BTreeSet::new(),
        }
    }
}

impl<T> Throttles<T> {
    /// The limit in force: the admin's if set, else the declared one.
    pub fn limit(&self, identity: &Identity) -> u32 {
        if let Some(limit) = self.overrides.get(identity) {
            return *limit;
        }
        self.slots.get(identity).map_or(1, |s| s.declared.max(1))
    }

    /// Queues a waiter (declaring `concurrency` for the identity) and returns
    /// whatever that makes grantable: this waiter, if it is first in line
    /// and a slot is free.
    pub fn wait(
        &mut self,
        identity: Identity,
        concurrency: u32,
        waiter: Waiter<T>,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        let slot = self.slot(&identity);
        slot.declared = concurrency.max(1);
        slot.waiters.push_back(waiter);
        self.pump(&identity, can_start)
    }

    /// Records a holder without waiting, as recovery does for slots that
    /// were held before a restart. It may push the count over the limit
    /// only if the limit was lowered meanwhile; new waiters then wait.
    pub fn hold(&mut self, identity: Identity, concurrency: u32, holder: Holder, info: HolderInfo) {
        let slot = self.slot(&identity);
        slot.declared = concurrency.max(1);
        slot.holders.insert(holder, info);
    }

    /// Releases a holder and returns the waiters that now get their slot.
    /// Releasing something that does not hold is a no-op.
    pub fn release(
        &mut self,
        identity: &Identity,
        holder: &Holder,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        let Some(slot) = self.slots.get_mut(identity) else {
            return Vec::new();
        };
        if slot.holders.remove(holder).is_none() {
            return Vec::new();
        }
        self.pump(identity, can_start)
    }

    /// Pumps again the identities whose waiters could not start last time
    /// (call it when workers may have become free).
    pub fn repump(&mut self, can_start: CanStart<'_, T>) -> Vec<Grant<T>> {
        let blocked: Vec<Identity> = self.blocked.iter().cloned().collect();
        let mut grants = Vec::new();
        for identity in blocked {
            grants.extend(self.pump(&identity, can_start));
        }
        grants
    }

    /// Whether `holder` holds a slot of `identity`.
    pub fn holds(&self, identity: &Identity, holder: &Holder) -> bool {
        self.slots
            .get(identity)
            .is_some_and(|s| s.holders.contains_key(holder))
    }

    /// Notes which worker runs a holder's task (for inspection).
    pub fn set_worker(
        &mut self,
        identity: &Identity,
        holder: &Holder,
        worker: &str,
        since: UnixMs,
    ) {
        if let Some(info) = self
            .slots
            .get_mut(identity)
            .and_then(|s| s.holders.get_mut(holder))
        {
            info.worker = worker.to_owned();
            info.since = since;
        }
    }

    /// Removes every waiter for which `unwanted` is true (a cancelled
    /// chain's tasks, a gone worker's requests) and returns them. Removing
    /// a waiter never grants anything: waiters behind it were already
    /// blocked by the limit, not by it.
    pub fn remove_waiters(
        &mut self,
        mut unwanted: impl FnMut(&Waiter<T>) -> bool,
    ) -> Vec<Waiter<T>> {
        let mut removed = Vec::new();
        for slot in self.slots.values_mut() {
            let mut kept = VecDeque::with_capacity(slot.waiters.len());
            for w in slot.waiters.drain(..) {
                if unwanted(&w) {
                    removed.push(w);
                } else {
                    kept.push_back(w);
                }
            }
            slot.waiters = kept;
        }
        self.slots
            .retain(|_, s| !s.holders.is_empty() || !s.waiters.is_empty());
        removed
    }

    /// Sets (`Some`) or clears (`None`) the admin limit; a raised limit
    /// grants waiters at once.
    pub fn set_override(
        &mut self,
        identity: Identity,
        limit: Option<u32>,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        match limit {
            Some(limit) => self.overrides.insert(identity.clone(), limit.max(1)),
            None => self.overrides.remove(&identity),
        };
        self.pump(&identity, can_start)
    }

    /// Inspection: one entry per identity with holders, waiters or a limit.
    pub fn info(&self) -> Vec<SlotInfo> {
        let mut ids: Vec<&Identity> = self.slots.keys().chain(self.overrides.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|identity| {
                let slot = self.slots.get(identity);
                SlotInfo {
                    identity: identity.clone(),
                    limit: self.limit(identity),
                    overridden: self.overrides.contains_key(identity),
                    holders: slot.map_or_else(Vec::new, |s| {
                        s.holders.iter().map(|(h, i)| (*h, i.clone())).collect()
                    }),
                    waiters: slot.map_or(0, |s| s.waiters.len()),
                    oldest_waiter: slot.and_then(|s| s.waiters.front().map(|w| w.since)),
                }
            })
            .collect()
    }

    fn slot(&mut self, identity: &Identity) -> &mut Slot<T> {
        self.slots.entry(identity.clone()).or_insert_with(|| Slot {
            declared: 1,
            holders: BTreeMap::new(),
            waiters: VecDeque::new(),
        })
    }

    /// Grants waiters from the front while a slot is free, passing over
    /// those that cannot start now (see [`CanStart`]).
    fn pump(&mut self, identity: &Identity, can_start: CanStart<'_, T>) -> Vec<Grant<T>> {
        let limit = usize::try_from(self.limit(identity)).unwrap_or(usize::MAX);
        let mut grants = Vec::new();
        let mut passed_over = false;
        if let Some(slot) = self.slots.get_mut(identity) {
            let mut i = 0;
            while slot.holders.len() < limit && i < slot.waiters.len() {
                if !can_start(&slot.waiters[i]) {
                    passed_over = true;
                    i += 1;
                    continue;
                }
                let waiter = slot.waiters.remove(i).expect("index checked");
                slot.holders.insert(
                    waiter.holder,
                    HolderInfo {
                        since: waiter.since,
                        worker: String::new(),
                    },
                );
                grants.push(Grant {
                    identity: identity.clone(),
                    waiter,
                });
            }
            passed_over &= slot.holders.len() < limit;
            if slot.holders.is_empty() && slot.waiters.is_empty() {
                self.slots.remove(identity);
            }
        }
        if passed_over {
            self.blocked.insert(identity.clone());
        } else {
            self.blocked.remove(identity);
        }
        grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str) -> Identity {
        Identity {
            task_name: "slow".into(),
            key: key.into(),
        }
    }

    fn task(n: u32) -> TaskId {
        TaskId::from_uuid(uuid::Uuid::from_u128(n.into()))
    }

    fn waiter(n: u32) -> Waiter<u32> {
        Waiter {
            holder: Holder::Task(task(n)),
            since: u64::from(n),
            ticket: n,
        }
    }

    fn yes(_: &Waiter<u32>) -> bool {
        true
    }

    fn tickets(grants: &[Grant<u32>]) -> Vec<u32> {
        grants.iter().map(|g| g.waiter.ticket).collect()
    }

    #[test]
    fn grants_up_to_limit_then_fifo_on_release() {
        let mut t = Throttles::default();
        let mut granted = Vec::new();
        for n in 0..5 {
            granted.extend(tickets(&t.wait(id("a"), 2, waiter(n), &mut yes)));
        }
        assert_eq!(granted, [0, 1]);
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(1)), &mut yes)),
            [2]
        );
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(0)), &mut yes)),
            [3]
        );
        // A release by a non-holder (a stale report) grants nothing.
        assert!(
            t.release(&id("a"), &Holder::Task(task(0)), &mut yes)
                .is_empty()
        );
        assert_eq!(t.info()[0].holders.len(), 2);
        assert_eq!(t.info()[0].waiters, 1);
    }

    #[test]
    fn identities_are_independent() {
        let mut t = Throttles::default();
        assert_eq!(tickets(&t.wait(id("a"), 1, waiter(0), &mut yes)), [0]);
        assert!(t.wait(id("a"), 1, waiter(1), &mut yes).is_empty());
        assert_eq!(tickets(&t.wait(id("b"), 1, waiter(2), &mut yes)), [2]);
    }

    #[test]
    fn raising_the_limit_grants_at_once_and_lowering_takes_nothing_away() {
        let mut t = Throttles::default();
        for n in 0..4 {
            t.wait(id("a"), 1, waiter(n), &mut yes);
        }
        assert_eq!(tickets(&t.set_override(id("a"), Some(3), &mut yes)), [1, 2]);
        assert!(t.set_override(id("a"), Some(1), &mut yes).is_empty());
        // Three hold, limit 1: releases grant nothing until under the limit.
        assert!(
            t.release(&id("a"), &Holder::Task(task(0)), &mut yes)
                .is_empty()
        );
        assert!(
            t.release(&id("a"), &Holder::Task(task(1)), &mut yes)
                .is_empty()
        );
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(2)), &mut yes)),
            [3]
        );
    }

    #[test]
    fn removed_waiters_never_get_a_slot() {
        let mut t = Throttles::default();
        for n in 0..3 {
            t.wait(id("a"), 1, waiter(n), &mut yes);
        }
        let removed = t.remove_waiters(|w| w.ticket == 1);
        assert_eq!(removed.len(), 1);
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(0)), &mut yes)),
            [2]
        );
    }

    #[test]
    fn recovered_holders_count_against_the_limit() {
        let mut t: Throttles<u32> = Throttles::default();
        t.hold(
            id("a"),
            1,
            Holder::Chain(ChainId::from_uuid(uuid::Uuid::from_u128(99))),
            HolderInfo::default(),
        );
        assert!(t.wait(id("a"), 1, waiter(0), &mut yes).is_empty());
        assert_eq!(
            tickets(&t.release(
                &id("a"),
                &Holder::Chain(ChainId::from_uuid(uuid::Uuid::from_u128(99))),
                &mut yes
            )),
            [0]
        );
    }

    #[test]
    fn waiters_that_cannot_start_are_passed_over_and_retried() {
        let mut t = Throttles::default();
        assert_eq!(tickets(&t.wait(id("a"), 1, waiter(0), &mut yes)), [0]);
        t.wait(id("a"), 1, waiter(1), &mut yes);
        t.wait(id("a"), 1, waiter(2), &mut yes);
        // Waiter 1 needs a worker and none is free: waiter 2 goes first.
        let mut only_two = |w: &Waiter<u32>| w.ticket == 2;
        let granted = t.release(&id("a"), &Holder::Task(task(0)), &mut only_two);
        assert_eq!(tickets(&granted), [2]);
        assert!(
            t.repump(&mut yes).is_empty(),
            "no free slot: nothing to retry"
        );
        let mut nobody = |_: &Waiter<u32>| false;
        assert!(
            t.release(&id("a"), &Holder::Task(task(2)), &mut nobody)
                .is_empty()
        );
        // A worker became free: the passed-over waiter gets the slot.
        assert_eq!(tickets(&t.repump(&mut yes)), [1]);
        assert!(t.repump(&mut yes).is_empty());
    }
}

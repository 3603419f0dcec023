//! Throttle slots: at most `limit` holders per identity, and at most its
//! rate of starts (`rate`), waiters served in FIFO order.
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
//!
//! An identity may also have a rate ([`Rate`]): a grant then also takes a
//! start from its bucket, and a waiter at the front of a line whose bucket
//! is empty waits until the time [`Throttles::take_rate_waits`] reports
//! (the scheduler arms a timer and calls [`Throttles::pump`] then). A rate
//! alone (no concurrency declared) allows any number of holders at once.
//! This table has no clock: every operation that may grant takes `now`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::domain::Map;

use crate::domain::{ChainId, Identity, TaskId, UnixMs};
use crate::scheduler::rate::{self, Rate};

/// The concurrency of an identity that declares a rate and no concurrency:
/// no limit on holders at once.
pub const UNLIMITED: u32 = u32::MAX;

/// What a throttle declaration asks of its identity: how many may hold it
/// at once (a rate alone: any number; else the concurrency, at least 1),
/// and its rate.
pub fn declared(throttle: &crate::domain::Throttle) -> (u32, Option<Rate>) {
    let rate = throttle.rate.as_ref().map(Rate::from);
    let concurrency = match (throttle.concurrency, rate) {
        (0, Some(_)) => UNLIMITED,
        (c, _) => c.max(1),
    };
    (concurrency, rate)
}

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
    /// The rate most recently declared for it, if any.
    rate: Option<Rate>,
    holders: BTreeMap<Holder, HolderInfo>,
    waiters: VecDeque<Waiter<T>>,
}

/// What inspection shows of one identity.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotInfo {
    pub identity: Identity,
    pub limit: u32,
    pub overridden: bool,
    /// The rate in force (the admin's, else the declared one).
    pub rate: Option<Rate>,
    pub rate_overridden: bool,
    pub holders: Vec<(Holder, HolderInfo)>,
    pub waiters: usize,
    pub oldest_waiter: Option<UnixMs>,
    /// The first [`FIRST_WAITERS`] waiters, in FIFO order, with when each
    /// began to wait.
    pub first_waiters: Vec<(Holder, UnixMs)>,
}

/// Waiters of an identity shown by [`Throttles::info`], from the front.
pub const FIRST_WAITERS: usize = 20;

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
    rate_overrides: Map<Identity, Rate>,
    /// Each rate-limited identity's arrival time (µs, see `rate`), while
    /// its bucket is not full.
    buckets: Map<Identity, u64>,
    /// Arrival times changed since [`Throttles::take_written`] (`None`: a
    /// full bucket again, nothing to keep).
    written: Map<Identity, Option<u64>>,
    /// Identities whose first waiter waits for its rate, and until when,
    /// not yet reported by [`Throttles::take_rate_waits`].
    rate_waits: Vec<(Identity, UnixMs)>,
    /// The time of the last rate wait reported for each identity: a line
    /// that many join while it waits asks for one timer, not one each.
    armed: Map<Identity, UnixMs>,
    /// Identities with a free slot whose waiters could not start when last
    /// pumped (no worker free for them): [`Throttles::repump`] retries them.
    blocked: BTreeSet<Identity>,
}

impl<T> Default for Throttles<T> {
    fn default() -> Self {
        Throttles {
            slots: Map::default(),
            overrides: Map::default(),
            rate_overrides: Map::default(),
            buckets: Map::default(),
            written: Map::default(),
            rate_waits: Vec::new(),
            armed: Map::default(),
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

    /// The rate in force: the admin's if set, else the declared one.
    pub fn rate(&self, identity: &Identity) -> Option<Rate> {
        if let Some(rate) = self.rate_overrides.get(identity) {
            return Some(*rate);
        }
        self.slots.get(identity).and_then(|s| s.rate)
    }

    /// Queues a waiter (declaring `concurrency` and `rate` for the
    /// identity) and returns whatever that makes grantable: this waiter, if
    /// it is first in line, a slot is free and its rate allows a start.
    pub fn wait(
        &mut self,
        identity: Identity,
        concurrency: u32,
        rate: Option<Rate>,
        waiter: Waiter<T>,
        now: UnixMs,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        let slot = self.slot(&identity);
        slot.declared = concurrency.max(1);
        slot.rate = rate;
        slot.waiters.push_back(waiter);
        self.pump(&identity, now, can_start)
    }

    /// Records a holder without waiting, as recovery does for slots that
    /// were held before a restart. It may push the count over the limit
    /// only if the limit was lowered meanwhile; new waiters then wait. (It
    /// takes no start from the rate: that start was taken, and its arrival
    /// time is restored with [`Throttles::restore_bucket`].)
    pub fn hold(
        &mut self,
        identity: Identity,
        concurrency: u32,
        rate: Option<Rate>,
        holder: Holder,
        info: HolderInfo,
    ) {
        let slot = self.slot(&identity);
        slot.declared = concurrency.max(1);
        slot.rate = rate.or(slot.rate);
        slot.holders.insert(holder, info);
    }

    /// Puts back an identity's arrival time as the store kept it.
    pub fn restore_bucket(&mut self, identity: Identity, tat_us: u64) {
        self.buckets.insert(identity, tat_us);
    }

    /// The arrival times changed since the last call, to be stored with
    /// the round (`None`: remove the stored one).
    pub fn take_written(&mut self) -> Vec<(Identity, Option<u64>)> {
        std::mem::take(&mut self.written).into_iter().collect()
    }

    /// The identities whose first waiter waits for its rate since the last
    /// call, and when a start is allowed: the scheduler pumps each then.
    pub fn take_rate_waits(&mut self) -> Vec<(Identity, UnixMs)> {
        std::mem::take(&mut self.rate_waits)
    }

    /// Drops the arrival times that have passed (their buckets are full
    /// again), so identities used once do not stay in memory or the store.
    pub fn forget_full_buckets(&mut self, now: UnixMs) {
        let now_us = rate::us(now);
        let full: Vec<Identity> = self
            .buckets
            .iter()
            .filter(|(_, tat)| **tat <= now_us)
            .map(|(identity, _)| identity.clone())
            .collect();
        for identity in full {
            self.buckets.remove(&identity);
            self.written.insert(identity, None);
        }
        self.armed.retain(|_, at| *at > now);
    }

    /// Releases a holder and returns the waiters that now get their slot.
    /// Releasing something that does not hold is a no-op.
    pub fn release(
        &mut self,
        identity: &Identity,
        holder: &Holder,
        now: UnixMs,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        let Some(slot) = self.slots.get_mut(identity) else {
            return Vec::new();
        };
        if slot.holders.remove(holder).is_none() {
            return Vec::new();
        }
        self.pump(identity, now, can_start)
    }

    /// Pumps again the identities whose waiters could not start last time
    /// (call it when workers may have become free).
    pub fn repump(&mut self, now: UnixMs, can_start: CanStart<'_, T>) -> Vec<Grant<T>> {
        let blocked: Vec<Identity> = self.blocked.iter().cloned().collect();
        let mut grants = Vec::new();
        for identity in blocked {
            grants.extend(self.pump(&identity, now, can_start));
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
        now: UnixMs,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        match limit {
            Some(limit) => self.overrides.insert(identity.clone(), limit.max(1)),
            None => self.overrides.remove(&identity),
        };
        self.pump(&identity, now, can_start)
    }

    /// Sets (`Some`) or clears (`None`) the admin rate; a higher rate
    /// grants waiters at once if their bucket allows.
    pub fn set_rate_override(
        &mut self,
        identity: Identity,
        rate: Option<Rate>,
        now: UnixMs,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        match rate {
            Some(rate) => self.rate_overrides.insert(identity.clone(), rate),
            None => self.rate_overrides.remove(&identity),
        };
        self.pump(&identity, now, can_start)
    }

    /// Inspection: one entry per identity with holders, waiters or a limit.
    pub fn info(&self) -> Vec<SlotInfo> {
        let mut ids: Vec<&Identity> = self
            .slots
            .keys()
            .chain(self.overrides.keys())
            .chain(self.rate_overrides.keys())
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|identity| {
                let slot = self.slots.get(identity);
                SlotInfo {
                    identity: identity.clone(),
                    limit: self.limit(identity),
                    overridden: self.overrides.contains_key(identity),
                    rate: self.rate(identity),
                    rate_overridden: self.rate_overrides.contains_key(identity),
                    holders: slot.map_or_else(Vec::new, |s| {
                        s.holders.iter().map(|(h, i)| (*h, i.clone())).collect()
                    }),
                    waiters: slot.map_or(0, |s| s.waiters.len()),
                    oldest_waiter: slot.and_then(|s| s.waiters.front().map(|w| w.since)),
                    first_waiters: slot.map_or_else(Vec::new, |s| {
                        s.waiters
                            .iter()
                            .take(FIRST_WAITERS)
                            .map(|w| (w.holder, w.since))
                            .collect()
                    }),
                }
            })
            .collect()
    }

    fn slot(&mut self, identity: &Identity) -> &mut Slot<T> {
        self.slots.entry(identity.clone()).or_insert_with(|| Slot {
            declared: 1,
            rate: None,
            holders: BTreeMap::new(),
            waiters: VecDeque::new(),
        })
    }

    /// Grants waiters from the front while a slot is free and the rate
    /// allows a start, passing over those that cannot start now (see
    /// [`CanStart`]). Call it again at the time a rate wait reported.
    pub fn pump(
        &mut self,
        identity: &Identity,
        now: UnixMs,
        can_start: CanStart<'_, T>,
    ) -> Vec<Grant<T>> {
        let limit = usize::try_from(self.limit(identity)).unwrap_or(usize::MAX);
        let rate = self.rate(identity);
        let Throttles {
            slots,
            buckets,
            written,
            rate_waits,
            armed,
            blocked,
            ..
        } = self;
        let mut grants = Vec::new();
        let mut passed_over = false;
        if let Some(slot) = slots.get_mut(identity) {
            let mut i = 0;
            while slot.holders.len() < limit && i < slot.waiters.len() {
                // The rate belongs to the line, not to a waiter: when it
                // allows no start, nobody behind may start either. It is
                // asked before `can_start`, which sets a worker aside for
                // each waiter it approves.
                let before = buckets.get(identity).copied();
                let mut tat = before;
                if let Some(rate) = rate
                    && let Err(at_us) = rate.admit(&mut tat, rate::us(now))
                {
                    // `tat` came back clamped (a clock stepped back).
                    if let Some(tat) = tat.filter(|t| Some(*t) != before) {
                        buckets.insert(identity.clone(), tat);
                        written.insert(identity.clone(), Some(tat));
                    }
                    // One timer per identity and time, however many wait.
                    let at = rate::ms_ceil(at_us);
                    if armed.insert(identity.clone(), at) != Some(at) {
                        rate_waits.push((identity.clone(), at));
                    }
                    break;
                }
                if !can_start(&slot.waiters[i]) {
                    passed_over = true;
                    i += 1;
                    continue;
                }
                // The start is taken only by the waiter granted.
                if let Some(tat) = tat.filter(|t| Some(*t) != before) {
                    buckets.insert(identity.clone(), tat);
                    written.insert(identity.clone(), Some(tat));
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
                slots.remove(identity);
            }
        }
        if passed_over {
            blocked.insert(identity.clone());
        } else {
            blocked.remove(identity);
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
            granted.extend(tickets(&t.wait(id("a"), 2, None, waiter(n), 0, &mut yes)));
        }
        assert_eq!(granted, [0, 1]);
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(1)), 0, &mut yes)),
            [2]
        );
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(0)), 0, &mut yes)),
            [3]
        );
        // A release by a non-holder (a stale report) grants nothing.
        assert!(
            t.release(&id("a"), &Holder::Task(task(0)), 0, &mut yes)
                .is_empty()
        );
        assert_eq!(t.info()[0].holders.len(), 2);
        assert_eq!(t.info()[0].waiters, 1);
    }

    #[test]
    fn identities_are_independent() {
        let mut t = Throttles::default();
        assert_eq!(
            tickets(&t.wait(id("a"), 1, None, waiter(0), 0, &mut yes)),
            [0]
        );
        assert!(t.wait(id("a"), 1, None, waiter(1), 0, &mut yes).is_empty());
        assert_eq!(
            tickets(&t.wait(id("b"), 1, None, waiter(2), 0, &mut yes)),
            [2]
        );
    }

    #[test]
    fn raising_the_limit_grants_at_once_and_lowering_takes_nothing_away() {
        let mut t = Throttles::default();
        for n in 0..4 {
            t.wait(id("a"), 1, None, waiter(n), 0, &mut yes);
        }
        assert_eq!(
            tickets(&t.set_override(id("a"), Some(3), 0, &mut yes)),
            [1, 2]
        );
        assert!(t.set_override(id("a"), Some(1), 0, &mut yes).is_empty());
        // Three hold, limit 1: releases grant nothing until under the limit.
        assert!(
            t.release(&id("a"), &Holder::Task(task(0)), 0, &mut yes)
                .is_empty()
        );
        assert!(
            t.release(&id("a"), &Holder::Task(task(1)), 0, &mut yes)
                .is_empty()
        );
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(2)), 0, &mut yes)),
            [3]
        );
    }

    #[test]
    fn removed_waiters_never_get_a_slot() {
        let mut t = Throttles::default();
        for n in 0..3 {
            t.wait(id("a"), 1, None, waiter(n), 0, &mut yes);
        }
        let removed = t.remove_waiters(|w| w.ticket == 1);
        assert_eq!(removed.len(), 1);
        assert_eq!(
            tickets(&t.release(&id("a"), &Holder::Task(task(0)), 0, &mut yes)),
            [2]
        );
    }

    #[test]
    fn recovered_holders_count_against_the_limit() {
        let mut t: Throttles<u32> = Throttles::default();
        t.hold(
            id("a"),
            1,
            None,
            Holder::Chain(ChainId::from_uuid(uuid::Uuid::from_u128(99))),
            HolderInfo::default(),
        );
        assert!(t.wait(id("a"), 1, None, waiter(0), 0, &mut yes).is_empty());
        assert_eq!(
            tickets(&t.release(
                &id("a"),
                &Holder::Chain(ChainId::from_uuid(uuid::Uuid::from_u128(99))),
                0,
                &mut yes
            )),
            [0]
        );
    }

    #[test]
    fn waiters_that_cannot_start_are_passed_over_and_retried() {
        let mut t = Throttles::default();
        assert_eq!(
            tickets(&t.wait(id("a"), 1, None, waiter(0), 0, &mut yes)),
            [0]
        );
        t.wait(id("a"), 1, None, waiter(1), 0, &mut yes);
        t.wait(id("a"), 1, None, waiter(2), 0, &mut yes);
        // Waiter 1 needs a worker and none is free: waiter 2 goes first.
        let mut only_two = |w: &Waiter<u32>| w.ticket == 2;
        let granted = t.release(&id("a"), &Holder::Task(task(0)), 0, &mut only_two);
        assert_eq!(tickets(&granted), [2]);
        assert!(
            t.repump(0, &mut yes).is_empty(),
            "no free slot: nothing to retry"
        );
        let mut nobody = |_: &Waiter<u32>| false;
        assert!(
            t.release(&id("a"), &Holder::Task(task(2)), 0, &mut nobody)
                .is_empty()
        );
        // A worker became free: the passed-over waiter gets the slot.
        assert_eq!(tickets(&t.repump(0, &mut yes)), [1]);
        assert!(t.repump(0, &mut yes).is_empty());
    }

    const TEN_A_SECOND: Rate = Rate {
        count: 10,
        period_ms: 1000,
        burst: 1,
    };

    #[test]
    fn a_rate_spaces_grants_and_reports_when_the_next_is_due() {
        let mut t = Throttles::default();
        let mut granted = Vec::new();
        for n in 0..3 {
            granted.extend(tickets(&t.wait(
                id("r"),
                UNLIMITED,
                Some(TEN_A_SECOND),
                waiter(n),
                1_000,
                &mut yes,
            )));
        }
        // One start now; the next is due 100 ms later, one timer for both
        // waiters.
        assert_eq!(granted, [0]);
        assert_eq!(t.take_rate_waits(), [(id("r"), 1_100)]);
        assert!(t.pump(&id("r"), 1_099, &mut yes).is_empty());
        assert_eq!(tickets(&t.pump(&id("r"), 1_100, &mut yes)), [1]);
        assert_eq!(tickets(&t.pump(&id("r"), 1_250, &mut yes)), [2]);
        // No concurrency limit: all three hold at once.
        assert_eq!(t.info()[0].holders.len(), 3);
        // Every arrival time is written for the store; a full bucket is
        // removed from it.
        // (The third start, 150 ms late, puts the next at 1.35 s.)
        assert_eq!(t.take_written(), [(id("r"), Some(1_350_000))]);
        t.forget_full_buckets(1_349);
        assert!(t.take_written().is_empty());
        t.forget_full_buckets(1_350);
        assert_eq!(t.take_written(), [(id("r"), None)]);
    }

    #[test]
    fn a_line_waiting_for_its_rate_sets_no_worker_aside() {
        let mut t = Throttles::default();
        t.wait(
            id("r"),
            UNLIMITED,
            Some(TEN_A_SECOND),
            waiter(0),
            0,
            &mut yes,
        );
        // The bucket is empty: `can_start`, which reserves a worker for the
        // waiter it approves, is not asked.
        let mut asked = 0;
        let mut counting = |_: &Waiter<u32>| {
            asked += 1;
            true
        };
        assert!(
            t.wait(
                id("r"),
                UNLIMITED,
                Some(TEN_A_SECOND),
                waiter(1),
                50,
                &mut counting
            )
            .is_empty()
        );
        assert_eq!(asked, 0);
        // A waiter passed over for want of a worker takes no start: the
        // next one that can start has it.
        let mut nobody = |_: &Waiter<u32>| false;
        assert!(t.pump(&id("r"), 100, &mut nobody).is_empty());
        assert_eq!(tickets(&t.pump(&id("r"), 100, &mut yes)), [1]);
    }

    #[test]
    fn a_rate_and_a_concurrency_limit_both_hold() {
        let mut t = Throttles::default();
        for n in 0..3 {
            t.wait(id("b"), 1, Some(TEN_A_SECOND), waiter(n), 0, &mut yes);
        }
        assert_eq!(t.info()[0].holders.len(), 1);
        // The slot frees at once, the rate allows the next at 100 ms.
        assert!(
            t.release(&id("b"), &Holder::Task(task(0)), 50, &mut yes)
                .is_empty()
        );
        assert_eq!(tickets(&t.pump(&id("b"), 100, &mut yes)), [1]);
        // At 300 ms the rate would allow one, but the slot is held.
        assert!(t.pump(&id("b"), 300, &mut yes).is_empty());
        assert_eq!(
            tickets(&t.release(&id("b"), &Holder::Task(task(1)), 300, &mut yes)),
            [2]
        );
    }

    #[test]
    fn a_restored_bucket_counts_the_starts_before_a_restart() {
        let mut t = Throttles::default();
        // The last start before the restart was at 1 s: the next is due at
        // 1.1 s, however soon the broker came back.
        t.restore_bucket(id("r"), 1_100_000);
        assert!(
            t.wait(
                id("r"),
                UNLIMITED,
                Some(TEN_A_SECOND),
                waiter(0),
                1_010,
                &mut yes
            )
            .is_empty()
        );
        assert_eq!(tickets(&t.pump(&id("r"), 1_100, &mut yes)), [0]);
    }

    #[test]
    fn an_admin_rate_overrides_the_declared_one() {
        let mut t = Throttles::default();
        t.wait(
            id("r"),
            UNLIMITED,
            Some(TEN_A_SECOND),
            waiter(0),
            0,
            &mut yes,
        );
        t.wait(
            id("r"),
            UNLIMITED,
            Some(TEN_A_SECOND),
            waiter(1),
            0,
            &mut yes,
        );
        let faster = Rate {
            count: 1000,
            period_ms: 1000,
            burst: 1,
        };
        // The next start was due at 100 ms; at the new rate it is due one
        // interval (1 ms) after the change.
        assert!(
            t.set_rate_override(id("r"), Some(faster), 50, &mut yes)
                .is_empty()
        );
        assert_eq!(tickets(&t.pump(&id("r"), 51, &mut yes)), [1]);
        assert_eq!(t.info()[0].rate, Some(faster));
        assert!(t.info()[0].rate_overridden);
    }
}

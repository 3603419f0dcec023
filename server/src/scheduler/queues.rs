//! Ready queues: per queue, per task name, FIFO within a priority.
//!
//! A task may go only to a worker that subscribed to its queue and
//! registered its name, so each queue keeps one ordered map per task name
//! (a *line*). Picking for a worker looks at the head of each line the
//! worker serves and takes the best: highest priority, then oldest. A
//! paused queue keeps its tasks but is skipped when picking.
//!
//! **Aging.** Strict priorities would let a steady stream of urgent work
//! starve the rest for ever. So a waiting task counts one priority higher
//! for every `aging` it has waited ([`Queues::set_aging`], `baton serve
//! --priority-aging-ms`), up to [`MAX_PRIORITY`]: a task of priority 0
//! competes as a 9 after nine agings, and among 9s the oldest goes first.
//! Within one priority the order stays FIFO. Zero turns aging off.
//!
//! An entry is *hot* (its chain is in the scheduler's memory, named by its
//! task id) or *cold* (its chain is only in the store, named by its chain
//! id as a number): a long backlog is kept cold so that a million waiting
//! tasks cost a few dozen bytes each, not their whole records (see
//! `Core::cool`). Both kinds share one order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

use crate::domain::{MAX_PRIORITY, Map, Set, TaskId, UnixMs};

/// Where a task sits: its priority (descending), then its arrival.
type Rank = (Reverse<i32>, u64);

/// How a line's head competes at a given time: its priority as raised by
/// waiting (see the module doc on aging), descending, then its arrival.
type Standing = (Reverse<i32>, u64);

/// A priority raised one level per `aging_ms` waited since `ready_ms`, up
/// to [`MAX_PRIORITY`] (a priority above it is left as it is).
fn aged(priority: i32, ready_ms: UnixMs, now: UnixMs, aging_ms: u64) -> i32 {
    if aging_ms == 0 || priority >= MAX_PRIORITY {
        return priority;
    }
    let levels = now.saturating_sub(ready_ms) / aging_ms;
    let levels = i32::try_from(levels).unwrap_or(i32::MAX);
    priority.saturating_add(levels).min(MAX_PRIORITY)
}

/// A cold chain's id as a number (the UUID's 128 bits).
pub type ChainKey = u128;

/// What a queue entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// The task id of a step whose chain is in memory.
    Hot(TaskId),
    /// A chain held only in the store; its current step is the queued one.
    Cold(ChainKey),
}

#[derive(Debug, Default)]
pub struct Queues {
    by_queue: Map<String, Map<String, Line>>,
    /// Where each hot task sits, so it can be removed (cancel, deadline)
    /// or cooled. Cold entries have no index: a backlog of millions would
    /// double its memory, and they are looked up only by rare requests
    /// (cancel, purge, new task defaults), which scan their line.
    index: Map<TaskId, (String, String, Rank)>,
    next: u64,
    /// Queues whose tasks stay put until resumed.
    paused: Set<String>,
    /// Waiting time that raises a task one priority; 0: no aging.
    aging_ms: u64,
}

/// The tasks of one (queue, task name): FIFO per priority. Slots are
/// appended in rank order, so each deque is sorted by `seq`; a removed
/// slot becomes [`Item::Gone`] and is dropped when it reaches the front.
#[derive(Debug, Default)]
struct Line {
    by_priority: BTreeMap<Reverse<i32>, VecDeque<Slot>>,
    /// Slots not gone.
    live: usize,
    /// Slots not gone, of each priority (for inspection, without walking a
    /// backlog).
    live_by_priority: BTreeMap<i32, u64>,
}

/// 40 bytes: the unit of a backlog's memory.
#[derive(Debug)]
struct Slot {
    seq: u64,
    item: Item,
    ready_ms: UnixMs,
}

/// A slot's content. Ids are kept as bytes so the enum needs no 16-byte
/// alignment (`u128` has it), which would make every slot 48 bytes.
#[derive(Debug)]
enum Item {
    Hot([u8; 16]),
    Cold([u8; 16]),
    Gone,
}

impl Item {
    fn queued(&self) -> Option<Queued> {
        match self {
            Item::Hot(task_id) => Some(Queued::Hot(hot_id(task_id))),
            Item::Cold(key) => Some(Queued::Cold(u128::from_le_bytes(*key))),
            Item::Gone => None,
        }
    }
}

fn hot_item(task_id: TaskId) -> Item {
    Item::Hot(*task_id.uuid().as_bytes())
}

fn hot_id(bytes: &[u8; 16]) -> TaskId {
    TaskId::from_uuid(uuid::Uuid::from_bytes(*bytes))
}

/// The head of a line, as [`Queues::pop_for`] shows it to its `passed`
/// check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A hot task, by task id.
    Hot(TaskId),
    /// A cold chain: picking it means reading its record from the store.
    Cold,
}

/// Where a taken entry sat, so that it can be put back in the same place
/// ([`Queues::put_back`]) when what was to follow cannot (a cold chain
/// whose record cannot be read while the store is in trouble).
#[derive(Debug)]
pub struct Place {
    queue: String,
    name: String,
    rank: Rank,
    ready_ms: UnixMs,
}

impl Place {
    /// The task name of the line.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
thread_local! {
    /// Names or lines [`Queues::pop_for`] went through, for tests of its
    /// cost.
    static EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes `line` of (`queue`, `name`) the best pick so far if its head
/// ranks before `best`'s and is not passed over.
fn consider<'a>(
    best: &mut Option<Best<'a>>,
    queue: &'a str,
    name: &'a str,
    line: &Line,
    when: (UnixMs, u64),
    passed: &impl Fn(&str, Head) -> bool,
) {
    let Some((standing, rank, front)) = line.head(when.0, when.1) else {
        return;
    };
    if best.as_ref().is_some_and(|b| b.standing <= standing) {
        return;
    }
    let head = match &front.item {
        Item::Hot(task_id) => Head::Hot(hot_id(task_id)),
        _ => Head::Cold,
    };
    if !passed(name, head) {
        *best = Some(Best {
            standing,
            rank,
            queue,
            name,
            ready_ms: front.ready_ms,
        });
    }
}

/// The best pick so far of [`Queues::pop_for`]: the head of a line.
struct Best<'a> {
    standing: Standing,
    rank: Rank,
    queue: &'a str,
    name: &'a str,
    ready_ms: UnixMs,
}

/// Counts of one queue, for inspection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Depth {
    pub ready: u64,
    pub oldest_ready_ms: Option<UnixMs>,
    /// Ready tasks of each priority (as submitted, before aging).
    pub by_priority: std::collections::BTreeMap<i32, u64>,
}

impl Line {
    fn append(&mut self, priority: i32, item: Item, seq: u64, ready_ms: UnixMs) {
        self.by_priority
            .entry(Reverse(priority))
            .or_default()
            .push_back(Slot {
                seq,
                item,
                ready_ms,
            });
        self.gained(priority);
    }

    fn gained(&mut self, priority: i32) {
        self.live += 1;
        *self.live_by_priority.entry(priority).or_default() += 1;
    }

    fn lost(&mut self, priority: i32) {
        self.live -= 1;
        if let Some(n) = self.live_by_priority.get_mut(&priority) {
            *n -= 1;
            if *n == 0 {
                self.live_by_priority.remove(&priority);
            }
        }
    }

    /// The best slot at `now`, how it stands and its rank. Every deque's
    /// front is live (see [`Line::take`]) and the oldest of its priority,
    /// so this looks at one slot per priority present.
    fn head(&self, now: UnixMs, aging_ms: u64) -> Option<(Standing, Rank, &Slot)> {
        let fronts = self
            .by_priority
            .iter()
            .filter_map(|(priority, slots)| slots.front().map(|slot| (*priority, slot)));
        if aging_ms == 0 {
            let (priority, slot) = fronts.into_iter().next()?;
            return Some(((priority, slot.seq), (priority, slot.seq), slot));
        }
        fronts
            .map(|(priority, slot)| {
                let standing = Reverse(aged(priority.0, slot.ready_ms, now, aging_ms));
                ((standing, slot.seq), (priority, slot.seq), slot)
            })
            .min_by_key(|(standing, _, _)| *standing)
    }

    fn slot_mut(&mut self, rank: Rank) -> Option<&mut Slot> {
        let slots = self.by_priority.get_mut(&rank.0)?;
        let i = slots.binary_search_by_key(&rank.1, |s| s.seq).ok()?;
        slots.get_mut(i)
    }

    /// Takes a slot's item, leaving it gone; then drops the gone slots at
    /// the front of its deque (and the deque once empty), so that fronts
    /// stay live.
    fn take(&mut self, rank: Rank) -> Option<Item> {
        let slot = self.slot_mut(rank)?;
        let item = std::mem::replace(&mut slot.item, Item::Gone);
        if matches!(item, Item::Gone) {
            return None;
        }
        self.lost(rank.0.0);
        if let Some(slots) = self.by_priority.get_mut(&rank.0) {
            while slots.front().is_some_and(|s| matches!(s.item, Item::Gone)) {
                slots.pop_front();
            }
            if slots.is_empty() {
                self.by_priority.remove(&rank.0);
            }
        }
        Some(item)
    }

    /// The cold slot of `key` and its rank (a scan of the line).
    fn find_cold(&mut self, key: ChainKey) -> Option<(Rank, &mut Slot)> {
        let bytes = key.to_le_bytes();
        self.by_priority.iter_mut().find_map(|(priority, slots)| {
            slots
                .iter_mut()
                .find(|s| matches!(&s.item, Item::Cold(k) if *k == bytes))
                .map(|slot| ((*priority, slot.seq), slot))
        })
    }

    fn items(&self) -> impl Iterator<Item = &Slot> {
        self.by_priority
            .values()
            .flat_map(|slots| slots.iter())
            .filter(|s| !matches!(s.item, Item::Gone))
    }
}

impl Queues {
    /// Sets the waiting time that raises a task one priority (see the
    /// module doc); 0 keeps priorities strict.
    pub fn set_aging(&mut self, aging_ms: u64) {
        self.aging_ms = aging_ms;
    }

    /// Queues a hot task behind the others of its priority.
    pub fn push(
        &mut self,
        queue: &str,
        name: &str,
        priority: i32,
        task_id: TaskId,
        ready_ms: UnixMs,
    ) {
        self.next += 1;
        let seq = self.next;
        self.line_mut(queue, name)
            .append(priority, hot_item(task_id), seq, ready_ms);
        let rank = (Reverse(priority), seq);
        self.index
            .insert(task_id, (queue.to_owned(), name.to_owned(), rank));
    }

    /// Queues a cold chain behind the others of its priority.
    pub fn push_cold(
        &mut self,
        queue: &str,
        name: &str,
        priority: i32,
        chain: ChainKey,
        ready_ms: UnixMs,
    ) {
        self.next += 1;
        let seq = self.next;
        self.line_mut(queue, name)
            .append(priority, Item::Cold(chain.to_le_bytes()), seq, ready_ms);
    }

    fn line_mut(&mut self, queue: &str, name: &str) -> &mut Line {
        if !self.by_queue.contains_key(queue) {
            self.by_queue.insert(queue.to_owned(), Map::default());
        }
        let by_name = self.by_queue.get_mut(queue).expect("inserted above");
        if !by_name.contains_key(name) {
            by_name.insert(name.to_owned(), Line::default());
        }
        by_name.get_mut(name).expect("inserted above")
    }

    fn existing_line(&mut self, queue: &str, name: &str) -> Option<&mut Line> {
        self.by_queue.get_mut(queue)?.get_mut(name)
    }

    /// How many tasks wait in one line.
    pub fn line_len(&self, queue: &str, name: &str) -> usize {
        self.by_queue
            .get(queue)
            .and_then(|by_name| by_name.get(name))
            .map_or(0, |line| line.live)
    }

    /// Takes the best task a worker may run, if any, and where it sat. A
    /// line whose head `passed(name, head)` passes over is left out (its
    /// tasks wait behind that head).
    ///
    /// The cost is the smaller of the worker's task names and the queue's
    /// non-empty lines (lines are dropped once empty): a backlog of many
    /// names nobody serves does not slow a worker that serves a few, and a
    /// worker that registered many names does not slow a queue of few.
    pub fn pop_for(
        &mut self,
        queues: &[String],
        names: &Set<String>,
        now: UnixMs,
        passed: impl Fn(&str, Head) -> bool,
    ) -> Option<(Queued, Place)> {
        let mut best: Option<Best<'_>> = None;
        let when = (now, self.aging_ms);
        for queue in queues {
            if !self.paused.is_empty() && self.paused.contains(queue) {
                continue;
            }
            let Some(by_name) = self.by_queue.get(queue) else {
                continue;
            };
            if names.len() < by_name.len() {
                for name in names {
                    #[cfg(test)]
                    EXAMINED.with(|n| n.set(n.get() + 1));
                    if let Some((name, line)) = by_name.get_key_value(name) {
                        consider(&mut best, queue, name, line, when, &passed);
                    }
                }
            } else {
                for (name, line) in by_name {
                    #[cfg(test)]
                    EXAMINED.with(|n| n.set(n.get() + 1));
                    if names.contains(name) {
                        consider(&mut best, queue, name, line, when, &passed);
                    }
                }
            }
        }
        let Best {
            rank,
            queue,
            name,
            ready_ms,
            ..
        } = best?;
        let (queue, name) = (queue.to_owned(), name.to_owned());
        let item = self.take(&queue, &name, rank)?;
        let queued = item.queued()?;
        if let Queued::Hot(task_id) = &queued {
            self.index.remove(task_id);
        }
        Some((
            queued,
            Place {
                queue,
                name,
                rank,
                ready_ms,
            },
        ))
    }

    /// Puts a taken entry back where it was, as if it had never been taken.
    pub fn put_back(&mut self, queued: Queued, place: Place) {
        let Place {
            queue,
            name,
            rank,
            ready_ms,
        } = place;
        let item = match &queued {
            Queued::Hot(task_id) => {
                self.index
                    .insert(*task_id, (queue.clone(), name.clone(), rank));
                hot_item(*task_id)
            }
            Queued::Cold(key) => Item::Cold(key.to_le_bytes()),
        };
        let line = self.line_mut(&queue, &name);
        let slots = line.by_priority.entry(rank.0).or_default();
        // Its slot may still be there, gone (taken from the middle of its
        // deque): then it takes that slot again, or two slots would share
        // one rank.
        match slots.binary_search_by_key(&rank.1, |s| s.seq) {
            Ok(at) => slots[at].item = item,
            Err(at) => slots.insert(
                at,
                Slot {
                    seq: rank.1,
                    item,
                    ready_ms,
                },
            ),
        }
        line.gained(rank.0.0);
    }

    /// Removes a queued hot task; false if it was not queued.
    pub fn remove(&mut self, task_id: TaskId) -> bool {
        match self.index.remove(&task_id) {
            Some((queue, name, rank)) => self.take(&queue, &name, rank).is_some(),
            None => false,
        }
    }

    /// Turns the cold entry of `chain` in line (queue, name) hot in place
    /// (same rank), now that its chain is in memory and its step has task
    /// id `task_id`. A scan of the line: for rare requests only.
    pub fn warm(&mut self, queue: &str, name: &str, chain: ChainKey, task_id: TaskId) -> bool {
        let Some(line) = self.existing_line(queue, name) else {
            return false;
        };
        let Some((rank, slot)) = line.find_cold(chain) else {
            return false;
        };
        slot.item = hot_item(task_id);
        self.index
            .insert(task_id, (queue.to_owned(), name.to_owned(), rank));
        true
    }

    /// Turns a hot entry cold in place (same rank): its chain leaves memory.
    pub fn cool(&mut self, task_id: TaskId, chain: ChainKey) -> bool {
        let Some((queue, name, rank)) = self.index.remove(&task_id) else {
            return false;
        };
        match self
            .existing_line(&queue, &name)
            .and_then(|line| line.slot_mut(rank))
        {
            Some(slot) => {
                slot.item = Item::Cold(chain.to_le_bytes());
                true
            }
            None => false,
        }
    }

    /// Takes every cold entry of the lines `which(queue, name)` selects,
    /// in one pass: for requests that bring a whole backlog back (purge,
    /// new task defaults), where warming entries one by one in place would
    /// scan the line once per entry.
    pub fn take_cold(&mut self, which: impl Fn(&str, &str) -> bool) -> Vec<(ChainKey, Place)> {
        let mut taken = Vec::new();
        for (queue, by_name) in &mut self.by_queue {
            for (name, line) in by_name.iter_mut() {
                if !which(queue, name) {
                    continue;
                }
                let mut lost = Vec::new();
                for (priority, slots) in &mut line.by_priority {
                    for slot in slots.iter_mut() {
                        if let Item::Cold(key) = slot.item {
                            let place = Place {
                                queue: queue.clone(),
                                name: name.clone(),
                                rank: (*priority, slot.seq),
                                ready_ms: slot.ready_ms,
                            };
                            taken.push((u128::from_le_bytes(key), place));
                            slot.item = Item::Gone;
                            lost.push(priority.0);
                        }
                    }
                    while slots.front().is_some_and(|s| matches!(s.item, Item::Gone)) {
                        slots.pop_front();
                    }
                }
                for priority in lost {
                    line.lost(priority);
                }
                line.by_priority.retain(|_, slots| !slots.is_empty());
            }
            by_name.retain(|_, line| line.live > 0);
        }
        self.by_queue.retain(|_, by_name| !by_name.is_empty());
        taken
    }

    /// Stops picking from `queue` (true if it was not paused yet).
    pub fn pause(&mut self, queue: &str) -> bool {
        self.paused.insert(queue.to_owned())
    }

    /// Picks from `queue` again (true if it was paused).
    pub fn resume(&mut self, queue: &str) -> bool {
        self.paused.remove(queue)
    }

    pub fn is_paused(&self, queue: &str) -> bool {
        self.paused.contains(queue)
    }

    pub fn paused(&self) -> impl Iterator<Item = &str> {
        self.paused.iter().map(String::as_str)
    }

    /// The tasks waiting in `queue`, oldest first within each task name and
    /// priority.
    pub fn entries(&self, queue: &str) -> Vec<Queued> {
        self.by_queue.get(queue).map_or_else(Vec::new, |by_name| {
            by_name
                .values()
                .flat_map(|line| line.items().filter_map(|s| s.item.queued()))
                .collect()
        })
    }

    /// Every (queue, task name) with tasks waiting in it.
    pub fn lines(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_queue.iter().flat_map(|(queue, by_name)| {
            by_name
                .iter()
                .filter(|(_, line)| line.live > 0)
                .map(move |(name, _)| (queue.as_str(), name.as_str()))
        })
    }

    pub fn depths(&self) -> Map<String, Depth> {
        self.by_queue
            .iter()
            .filter_map(|(queue, by_name)| {
                let mut d = Depth::default();
                for line in by_name.values() {
                    d.ready += line.live as u64;
                    // Each deque is in arrival order: its first live slot is
                    // its oldest.
                    for (priority, n) in &line.live_by_priority {
                        *d.by_priority.entry(*priority).or_default() += n;
                    }
                    for slots in line.by_priority.values() {
                        if let Some(first) = slots.iter().find(|s| !matches!(s.item, Item::Gone)) {
                            d.oldest_ready_ms = Some(
                                d.oldest_ready_ms
                                    .map_or(first.ready_ms, |o| o.min(first.ready_ms)),
                            );
                        }
                    }
                }
                (d.ready > 0).then(|| (queue.clone(), d))
            })
            .collect()
    }

    /// Takes the item at `rank`, and forgets the line once it is empty.
    fn take(&mut self, queue: &str, name: &str, rank: Rank) -> Option<Item> {
        let by_name = self.by_queue.get_mut(queue)?;
        let line = by_name.get_mut(name)?;
        let item = line.take(rank);
        if line.live == 0 {
            by_name.remove(name);
            if by_name.is_empty() {
                self.by_queue.remove(queue);
            }
        }
        item
    }
}

#[cfg(test)]
#[path = "queues_tests.rs"]
mod tests;

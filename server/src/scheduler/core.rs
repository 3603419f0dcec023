//! The scheduler's state and its transitions.
//!
//! [`Core`] owns every live chain, the ready queues, the throttle slots,
//! the leases, the timers and the connected workers. It is driven by one
//! task (see `mod.rs`), one command at a time, so no transition races
//! another. Each transition mutates memory, marks the chains it touched
//! dirty and queues its effects (replies, messages to workers, events).
//! [`Core::end_round`] then writes the dirty chains into the round's batch
//! and hands it over with the effects; the driver stages the batch with the
//! committer and tags the effects with the number of the batch that will
//! hold it; they leave only once that batch is durable. That single rule gives the ordering guarantees: a
//! step is assigned only after the previous step's success is on disk, a
//! client hears OK only for a stored chain, a worker is acked only for a
//! stored outcome.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::queues::{ChainKey, Head, Queued, Queues};
use super::throttle::{CanStart, Grant, Holder, HolderInfo, SlotInfo, Throttles, Waiter};
use super::{Error, Inspected, QueueStats, Submitted, WorkerStats, watchers};
use crate::domain::*;
use crate::metrics::{Metrics, TaskMetrics};
use crate::store::{Batch, ExpiryCursor, Recovered, Shared};

/// Most ended chains one sweep removes (see [`Core::sweep`]).
const SWEEP_PAGE: usize = 512;

/// Time between sweeps that found less than a full page.
const SWEEP_EVERY_MS: u64 = 1000;

/// How many times a run may be lost (lease lapsed) before the step fails
/// with "WorkerLost", so a task that kills its workers cannot loop forever.
pub const MAX_LAPSES: u32 = 10;

/// A queue line (queue, task name) longer than this keeps new chains cold:
/// their records go to the store and leave memory, and only a small queue
/// entry remains until a worker picks them (see [`Core::cool`]).
pub const COLD_AFTER: usize = 1000;

/// Something to do once the writes it depends on are durable.
pub enum Effect {
    /// Sends to a connected worker (dropped if it is gone by then).
    ToWorker { worker_id: String, msg: ToWorker },
    /// Sends an event to a chain's watchers; `last` closes their streams.
    Watch {
        chain_id: String,
        event: Arc<ChainEvent>,
        last: bool,
    },
    /// Any other deferred reply (a oneshot send, a watch snapshot).
    Run(Box<dyn FnOnce() + Send>),
    /// A write that early assignments depend on is durable now (see
    /// [`Unsettled`]).
    Settled(Settled),
}

/// What a round wrote that an early assignment must not run ahead of.
pub enum Settled {
    /// The task was made ready.
    Ready(String),
    /// A queue's dispatch was resumed.
    Resumed,
}

/// An assignment may leave before its round is durable (an *early*
/// assignment) when a crash in between could cost no more than a repeated
/// run, which at-least-once delivery allows anyway: the worker would come
/// back to a broker that knows nothing of the run, be told the run is lost
/// (`Welcome.lost`), drop it without reporting, and the task would run
/// again. That holds only if nothing the run relies on is still in
/// flight, so an assignment waits for its round like every other effect
/// when:
/// - its task was made ready in a round not yet durable (a step must not
///   start before the previous step's success is durable, guarantee 6; nor
///   may work requeued by a lapsed lease or a retry run ahead of that
///   record);
/// - a queue was resumed in a round not yet durable;
/// - it takes or relies on a throttle slot (a slot granted in memory and
///   lost in a crash could let a second holder in, guarantee 4);
/// - its worker's `Welcome` has not left yet (it must be the first message
///   on the stream).
///
/// Why bother: on the hot path of short tasks a worker ends a run, the
/// broker hands its slot to the next task in the same round, and the
/// assignment waited for a flush (about 0.8 ms) it did not need. See
/// docs/benchmarks.md, "Early assignments".
#[derive(Default)]
struct Unsettled {
    /// Tasks made ready in rounds not yet durable, with how many such
    /// rounds (a task can be made ready again before the first is).
    ready: Map<String, u32>,
    /// Queue resumptions in rounds not yet durable.
    resumed: usize,
}

impl Unsettled {
    fn settle(&mut self, settled: Settled) {
        match settled {
            Settled::Ready(task_id) => {
                if let Some(n) = self.ready.get_mut(&task_id) {
                    *n -= 1;
                    if *n == 0 {
                        self.ready.remove(&task_id);
                    }
                }
            }
            Settled::Resumed => self.resumed -= 1,
        }
    }
}

/// A result stored apart, kept in memory while its chain uses it.
#[derive(Debug, Clone)]
struct KeptResult {
    chain_id: String,
    result: Arc<str>,
}

/// Why a cold chain could not be brought back into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unwarmed {
    /// Its record is not in the store: it is lost (logged as an error).
    Missing,
    /// The store cannot be read now (it is reopened after disk trouble):
    /// its queue entry goes back where it was, to be tried again.
    Unreadable,
}

/// What a round left: its writes, the effects that wait for them to be
/// durable, and the early assignments that wait for none.
pub struct RoundEnd {
    pub writes: Batch,
    pub effects: Vec<Effect>,
    pub early: Vec<Effect>,
}

/// Why a submission was deduplicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedup {
    IdempotencyKey,
    UniqueKey,
    /// The client-chosen chain id is stored already.
    ChainId,
}

/// What the store holds for a submission, read once when it is checked.
#[derive(Debug, Default)]
struct Stored {
    /// A chain with the client-chosen id exists (the same owner's).
    chain: bool,
    /// The chain stored under the idempotency key, if any.
    idempotent: Option<String>,
}

/// One attempt out on a worker.
#[derive(Debug, Clone)]
struct Run {
    chain_id: String,
    at: StepAt,
    attempt: u32,
    /// None while its worker is disconnected (the lease still runs).
    worker: Option<String>,
    /// When its lease was last renewed, in the scheduler's awake time; it
    /// lapses once the scheduler has been awake for the lease length since
    /// (see `clock`: time the broker spent paused, with the worker's
    /// heartbeats waiting unread in its sockets, does not count). `None`
    /// until its assignment has left for the worker: an assignment waits in
    /// the outbox until its round is durable, for as long as the store is
    /// in trouble, and a lease that lapsed there would hand its throttle
    /// slot to another run while the stale assignment still left
    /// afterwards. Runs recovered or claimed have left.
    renewed: Option<u64>,
    /// The task-scoped declared throttle slot this run holds.
    declared: Option<Identity>,
    timed_out: bool,
}

/// A connected worker.
pub struct WorkerConn {
    pub name: String,
    pub queues: Vec<String>,
    pub names: Set<String>,
    pub concurrency: u32,
    /// Assignments it may hold beyond `concurrency` (they wait in the
    /// worker for a slot), so a run that ends finds the next one there.
    pub prefetch: u32,
    pub in_flight: BTreeSet<String>,
    pub draining: bool,
    pub connected_ms: UnixMs,
    /// Its `Welcome` has left: early assignments may follow it.
    welcomed: bool,
    tx: mpsc::Sender<ToWorker>,
}

impl WorkerConn {
    /// Assignments it may still take: its concurrency and its prefetch,
    /// less what it holds.
    fn free(&self) -> usize {
        if self.draining {
            return 0;
        }
        usize::try_from(self.concurrency.saturating_add(self.prefetch))
            .unwrap_or(usize::MAX)
            .saturating_sub(self.in_flight.len())
    }

    /// Run slots it has free now: an assignment it gets starts at once
    /// rather than waiting in its prefetch behind the runs it holds.
    fn idle(&self) -> usize {
        if self.draining {
            return 0;
        }
        usize::try_from(self.concurrency)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.in_flight.len())
    }
}

/// What to do when a throttle waiter is granted its slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Ticket {
    /// A declared task-scoped throttle: the task enters its queue.
    Enqueue { task_id: String },
    /// A chain-scoped throttle: the chain holds the slot, the task enters
    /// its queue.
    ChainHold { chain_id: String, task_id: String },
    /// An in-body request of a running attempt: tell its worker.
    InBody {
        worker_id: String,
        task: TaskRef,
        request_id: u64,
    },
}

impl Ticket {
    fn task_id(&self) -> &str {
        match self {
            Ticket::Enqueue { task_id } | Ticket::ChainHold { task_id, .. } => task_id,
            Ticket::InBody { task, .. } => &task.task_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A scheduled step becomes ready (stale if the step moved on).
    Ready { task_id: String, at: UnixMs },
    /// Check whether a run's lease lapsed (re-armed if it was extended).
    Lease { task_id: String, attempt: u32 },
    /// A run's time limit.
    Timeout { task_id: String, attempt: u32 },
    /// A chain's deadline.
    Deadline { chain_id: String },
}

pub struct Core {
    store: Shared,
    lease_ms: u64,
    /// Where new chain, task and worker ids come from.
    ids: Ids,
    /// Retention of ended chains (see [`Core::sweep`]); 0 keeps them.
    retention_ms: u64,
    /// Where the next sweep goes on from in the `ended` index.
    swept: ExpiryCursor,
    /// When the next sweep is due, unless the last found a full page.
    next_sweep: UnixMs,
    /// The last sweep found a full page: sweep again next round.
    sweep_more: bool,
    /// Milliseconds the scheduler has been awake, as the driver last read
    /// them (see `clock::Awake`): what leases are measured in.
    awake_ms: u64,
    chains: Map<String, ChainRecord>,
    /// task id → (chain id, position), for every step of a live chain.
    tasks: Map<String, (String, StepAt)>,
    /// unique key → chain id, for chains not ended.
    unique: Map<String, String>,
    queues: Queues,
    timers: BTreeMap<(UnixMs, u64), Timer>,
    timer_seq: u64,
    throttles: Throttles<Ticket>,
    workers: BTreeMap<String, WorkerConn>,
    /// Round-robin start for dispatch, so free workers share the work.
    rr: usize,
    /// Workers that take no prefetch work until a run slot frees: a
    /// throttle waiter whose slot is free waits for an idle run slot on
    /// one of them (see [`Core::throttle_op`]). Without this, a stream of
    /// other work would keep every prefetch full, and a slot holder, which
    /// is never prefetched, would never find an idle run slot.
    reserved: Set<String>,
    runs: Map<String, Run>,
    task_defaults: Map<String, Options>,
    /// Results stored apart (see `StepRecord::result_apart`) that chains in
    /// memory still use (`ChainRecord::results_in_use`), by task id, with
    /// their chain's id: at most two a chain, however long it is. Kept
    /// until the batch that wrote them is applied, then dropped with the
    /// chains that left memory.
    apart: Map<String, KeptResult>,
    /// Task names with new defaults whose cold chains could not be read
    /// (see [`Core::warm_names`]).
    rerouting: Set<String>,
    watchers: Map<String, Vec<watchers::Sender>>,
    /// Writes of the round in progress, handed to the committer by
    /// [`Core::end_round`]. Reads of the store look here first.
    batch: Batch,
    dirty: BTreeSet<String>,
    /// Chains in memory whose `live` entry on disk does not say "hot" (new
    /// chains, chains just warmed, chains that ended with nothing out):
    /// their next write sets it. Every other chain in memory has it set, so
    /// writing it again with each step would cost a sled write for nothing.
    live_unwritten: Set<String>,
    effects: Vec<Effect>,
    /// Assignments of the transition that need not wait for it to be
    /// durable (see [`Unsettled`]).
    early: Vec<Effect>,
    unsettled: Unsettled,
    /// Counters and histograms, shared with the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// The counters of each task name seen, so counting never allocates.
    task_metrics: TaskMetrics,
}

impl Core {
    /// Rebuilds the scheduler from what the store recovered.
    pub fn recover(
        store: Shared,
        lease_ms: u64,
        retention_ms: u64,
        recovered: Recovered,
        now: UnixMs,
    ) -> Self {
        let mut core = Core {
            store,
            lease_ms,
            retention_ms,
            ids: Ids::Time,
            swept: ExpiryCursor::default(),
            next_sweep: 0,
            sweep_more: false,
            awake_ms: 0,
            chains: Map::default(),
            tasks: Map::default(),
            unique: Map::default(),
            queues: Queues::default(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            throttles: Throttles::default(),
            workers: BTreeMap::new(),
            rr: 0,
            reserved: Set::default(),
            runs: Map::default(),
            task_defaults: recovered.task_defaults.into_iter().collect(),
            rerouting: Set::default(),
            apart: Map::default(),
            watchers: Map::default(),
            batch: Batch::new(),
            dirty: BTreeSet::new(),
            live_unwritten: Set::default(),
            effects: Vec::new(),
            early: Vec::new(),
            unsettled: Unsettled::default(),
            metrics: Arc::default(),
            task_metrics: TaskMetrics::new(Arc::default()),
        };
        core.task_metrics = TaskMetrics::new(core.metrics.clone());
        for queue in &recovered.paused {
            core.queues.pause(queue);
        }
        for (identity, limit) in recovered.limits {
            core.throttle_op(|t, cs| t.set_override(identity, Some(limit), cs));
        }
        for corrupt in &recovered.corrupt {
            tracing::error!(record = %corrupt, "skipped a corrupt record during recovery");
        }
        for chain in recovered.live_chains {
            match core.results_apart_of(&chain) {
                Ok(results) => core.apart.extend(results),
                Err(e) => {
                    tracing::error!(chain.id = %chain.id, cause = %e, "cannot read the results this chain hands on");
                }
            }
            core.index_chain(chain);
        }
        // First every slot that was held, so that waiting work re-queued
        // below cannot overtake it; then the waiting work, oldest first.
        let ids: Vec<String> = core.chains.keys().cloned().collect();
        let mut waiting = Vec::new();
        for chain_id in &ids {
            let rec = &core.chains[chain_id];
            let holds = rec.chain_holds.clone();
            let mut running = Vec::new();
            let mut scheduled = Vec::new();
            for (at, step) in rec.all_steps() {
                let current = !rec.is_ended() && rec.current() == at;
                match step.state() {
                    StepState::Running => running.push(at),
                    StepState::Throttled | StepState::Ready if current => {
                        waiting.push((step.ready_ms, step.task_id.clone(), chain_id.clone(), at));
                    }
                    StepState::Scheduled if current => {
                        scheduled.push((step.not_before_ms, step.task_id.clone()));
                    }
                    _ => {}
                }
            }
            for (when, task_id) in scheduled {
                core.add_timer(when, Timer::Ready { task_id, at: when });
            }
            for identity in holds {
                let concurrency = core.throttles.limit(&identity);
                let info = HolderInfo {
                    since: now,
                    worker: String::new(),
                };
                core.throttles
                    .hold(identity, concurrency, Holder::Chain(chain_id.clone()), info);
            }
            for at in running {
                core.restore_run(chain_id, at, now);
            }
            if !core.chains[chain_id].is_ended() && core.chains[chain_id].deadline_ms > 0 {
                let when = core.chains[chain_id].deadline_ms;
                core.add_timer(
                    when,
                    Timer::Deadline {
                        chain_id: chain_id.clone(),
                    },
                );
            }
        }
        waiting.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        // Cold chains wait only in queues; both kinds go back in the order
        // they became ready.
        let mut cold = recovered.cold;
        cold.sort_by_key(|c| (c.ready_ms, c.chain));
        let mut cold = cold.into_iter().peekable();
        for (ready_ms, _, chain_id, at) in waiting {
            while let Some(c) = cold.next_if(|c| c.ready_ms < ready_ms) {
                let (queue, name) = &recovered.cold_lines[c.line as usize];
                core.queues
                    .push_cold(queue, name, c.priority, c.chain, c.ready_ms);
            }
            core.make_ready(&chain_id, at, now);
        }
        for c in cold {
            let (queue, name) = &recovered.cold_lines[c.line as usize];
            core.queues
                .push_cold(queue, name, c.priority, c.chain, c.ready_ms);
        }
        core
    }

    /// Reads from the store the results stored apart that `chain` still
    /// uses. One missing is an error in the log: the step gets null.
    fn results_apart_of(
        &self,
        chain: &ChainRecord,
    ) -> Result<Vec<(String, KeptResult)>, crate::store::Error> {
        let mut out = Vec::new();
        for step in chain.results_in_use().filter(|s| s.result_apart) {
            match self
                .store
                .view(&self.batch, |v| v.result(&chain.id, &step.task_id))?
            {
                Some(result) => {
                    let kept = KeptResult {
                        chain_id: chain.id.clone(),
                        result: Arc::from(result),
                    };
                    out.push((step.task_id.clone(), kept));
                }
                None => tracing::error!(
                    chain.id = %chain.id,
                    task.id = %step.task_id,
                    "a result stored apart is missing"
                ),
            }
        }
        Ok(out)
    }

    /// The result of `step` of `chain_id`, kept apart in memory.
    fn kept_result(&self, step: &StepRecord) -> Option<Arc<str>> {
        self.apart.get(&step.task_id).map(|k| Arc::clone(&k.result))
    }

    /// Fills in a copy of a chain, for an answer or an event, the results
    /// stored apart that are in memory: the one carried to the current
    /// step and the chain's result. Older ones stay empty, marked apart:
    /// the view shows them as omitted, and `GetStepResult` reads them.
    fn with_results(&self, mut rec: ChainRecord) -> ChainRecord {
        for steps in [&mut rec.steps, &mut rec.on_success, &mut rec.on_failure] {
            for step in steps.iter_mut().filter(|s| s.result_apart) {
                if let Some(kept) = self.apart.get(&step.task_id) {
                    step.result = kept.result.to_string();
                }
            }
        }
        if rec.result_apart
            && let Some(last) = rec.steps.last()
        {
            rec.result = last.result.clone();
        }
        rec
    }

    /// Drops the results kept apart for `chain_id` that it no longer uses.
    fn prune_results(&mut self, chain_id: &str) {
        // Most brokers keep no result apart: nothing to walk on the path of
        // every outcome.
        if self.apart.is_empty() {
            return;
        }
        let Some(rec) = self.chains.get(chain_id) else {
            return;
        };
        // At most two steps.
        let in_use: Vec<&str> = rec.results_in_use().map(|s| s.task_id.as_str()).collect();
        for (_, step) in rec.all_steps() {
            if step.result_apart && !in_use.contains(&step.task_id.as_str()) {
                self.apart.remove(&step.task_id);
            }
        }
    }

    fn index_chain(&mut self, chain: ChainRecord) {
        for (at, step) in chain.all_steps() {
            self.tasks
                .insert(step.task_id.clone(), (chain.id.clone(), at));
        }
        if !chain.is_ended() && !chain.unique_key.is_empty() {
            self.unique
                .insert(chain.unique_key.clone(), chain.id.clone());
        }
        self.chains.insert(chain.id.clone(), chain);
    }

    /// A run that was out when the broker stopped: its slots are held again
    /// and its worker gets a fresh lease to reconnect and claim it.
    fn restore_run(&mut self, chain_id: &str, at: StepAt, now: UnixMs) {
        let rec = &self.chains[chain_id];
        let step = rec.step(at);
        let task_id = step.task_id.clone();
        let eff = self.effective(rec, at);
        let declared = eff
            .throttle
            .as_ref()
            .filter(|t| t.scope() != ThrottleScope::Chain)
            .map(|t| (Identity::of(step.name(), t), t.concurrency));
        let in_body: Vec<InBodyHold> = step.in_body.clone();
        let attempt = step.attempts;
        let info = HolderInfo {
            since: now,
            worker: step.worker.clone(),
        };
        if let Some((identity, concurrency)) = &declared {
            self.throttles.hold(
                identity.clone(),
                *concurrency,
                Holder::Task(task_id.clone()),
                info.clone(),
            );
        }
        for hold in in_body {
            if let Some(identity) = hold.identity {
                let concurrency = self.throttles.limit(&identity);
                let holder = Holder::InBody {
                    task_id: task_id.clone(),
                    request_id: hold.request_id,
                };
                self.throttles
                    .hold(identity, concurrency, holder, info.clone());
            }
        }
        self.runs.insert(
            task_id.clone(),
            Run {
                chain_id: chain_id.to_owned(),
                at,
                attempt,
                worker: None,
                renewed: Some(self.awake_ms),
                declared: declared.map(|(i, _)| i),
                timed_out: false,
            },
        );
        let deadline = self.lease_deadline(now);
        self.add_timer(deadline, Timer::Lease { task_id, attempt });
    }

    // -----------------------------------------------------------------
    // Transactions: commit and effects
    // -----------------------------------------------------------------

    /// Ends a round: writes its dirty chains into the round's batch, and
    /// returns those writes (for the committer, which gathers the rounds
    /// of one flush into one batch), its effects, which wait for those
    /// writes to be durable, and its early assignments, which wait for
    /// none.
    pub fn end_round(&mut self) -> RoundEnd {
        for chain_id in std::mem::take(&mut self.dirty) {
            if let Some(rec) = self.chains.get(&chain_id) {
                let live = !rec.is_ended() || self.has_runs(rec);
                if live && !self.live_unwritten.contains(&chain_id) {
                    // Its hot `live` entry is on disk: only the record changed.
                    self.batch.put_chain_record(rec);
                } else {
                    self.batch.put_chain(rec, live);
                    if live {
                        self.live_unwritten.remove(&chain_id);
                    } else {
                        self.live_unwritten.insert(chain_id);
                    }
                }
            }
        }
        // Results kept for chains that left memory read back from the
        // store from now on (its staged writes included).
        if !self.apart.is_empty() {
            let chains = &self.chains;
            self.apart
                .retain(|_, kept| chains.contains_key(&kept.chain_id));
        }
        RoundEnd {
            writes: std::mem::take(&mut self.batch),
            effects: std::mem::take(&mut self.effects),
            early: std::mem::take(&mut self.early),
        }
    }

    /// Ends a round and applies its writes at once (see
    /// [`end_round`](Self::end_round)), for tests that drive rounds by
    /// hand.
    #[cfg(test)]
    pub fn commit(&mut self) -> Result<RoundEnd, crate::store::Error> {
        let mut round = self.end_round();
        self.store.apply(std::mem::take(&mut round.writes))?;
        Ok(round)
    }

    /// Draws new ids from `ids` from now on (the simulator's seeded ids).
    #[cfg(test)]
    pub fn set_ids(&mut self, ids: Ids) {
        self.ids = ids;
    }

    /// Removes ended chains whose retention is over, a page at a time, so
    /// that a large backlog of them never stalls a round: at most
    /// [`SWEEP_PAGE`] a round, every round while full pages are found, else
    /// once every [`SWEEP_EVERY_MS`]. Reads only the `ended` index (and the
    /// idempotency key and results of each chain found), never a record.
    pub fn sweep(&mut self, now: UnixMs) {
        if self.retention_ms == 0 || (now < self.next_sweep && !self.sweep_more) {
            return;
        }
        self.next_sweep = now.saturating_add(SWEEP_EVERY_MS);
        let before = now.saturating_sub(self.retention_ms);
        let found = self
            .store
            .read(|s| s.expired(before, &self.swept, SWEEP_PAGE));
        let (expired, cursor) = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the ended chains to remove; trying later");
                self.sweep_more = false;
                return;
            }
        };
        self.sweep_more = expired.len() == SWEEP_PAGE;
        self.swept = cursor;
        let mut removed = 0u64;
        for chain in &expired {
            // In memory again (requeued while ended with a run out): its
            // next write indexes it again.
            if self.chains.contains_key(&chain.id) {
                continue;
            }
            self.batch.remove_chain(chain);
            removed += 1;
        }
        if removed > 0 {
            self.metrics.chains_removed.inc_by(removed);
            tracing::debug!(
                chains = removed,
                "removed ended chains past their retention"
            );
        }
    }

    fn touch(&mut self, chain_id: &str) {
        self.dirty.insert(chain_id.to_owned());
    }

    fn emit(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    fn send_worker(&mut self, worker_id: &str, msg: ToWorker) {
        self.emit(Effect::ToWorker {
            worker_id: worker_id.to_owned(),
            msg,
        });
    }

    fn event(&mut self, chain_id: &str, kind: &'static str, at: Option<StepAt>) {
        if !self.watchers.contains_key(chain_id) {
            return;
        }
        if let Some(chain) = self.chains.get(chain_id) {
            let last = chain.is_ended();
            // One copy of the chain for all of its watchers.
            let event = Arc::new(ChainEvent::new(kind, at, self.with_results(chain.clone())));
            self.emit(Effect::Watch {
                chain_id: chain_id.to_owned(),
                event,
                last,
            });
        }
    }

    /// Delivers an effect whose writes are durable.
    pub fn deliver(&mut self, effect: Effect, now: UnixMs) {
        match effect {
            Effect::Run(f) => f(),
            Effect::ToWorker { worker_id, msg } => {
                if let ToWorker::Assign(a) = &msg {
                    // Its lease starts now (see `Run::renewed`). An
                    // assignment whose run is no longer this attempt is not
                    // sent.
                    let awake = self.awake_ms;
                    match self.runs.get_mut(&a.task.task_id) {
                        Some(run) if run.attempt == a.task.attempt => run.renewed = Some(awake),
                        _ => return,
                    }
                }
                let Some(worker) = self.workers.get_mut(&worker_id) else {
                    return;
                };
                worker.welcomed |= matches!(msg, ToWorker::Welcome { .. });
                if let Err(e) = worker.tx.try_send(msg) {
                    // A worker that does not read its stream must not stall
                    // the broker: it is dropped as if its connection broke,
                    // and its leases run out unless it comes back.
                    tracing::warn!(worker.id = %worker_id, cause = %e, "worker stream full or closed; disconnecting it");
                    self.worker_gone(&worker_id, false, now);
                }
            }
            Effect::Watch {
                chain_id,
                event,
                last,
            } => {
                if let Some(list) = self.watchers.get_mut(&chain_id) {
                    // A watcher over its byte budget is dropped here; its
                    // stream ends saying it fell behind (watchers.rs).
                    list.retain(|tx| tx.offer(&event));
                    if last || list.is_empty() {
                        self.watchers.remove(&chain_id);
                    }
                }
            }
            Effect::Settled(settled) => self.unsettled.settle(settled),
        }
    }

    // -----------------------------------------------------------------
    // Timers
    // -----------------------------------------------------------------

    /// Sets the awake time the driver read (see `clock::Awake`).
    pub fn set_awake(&mut self, awake_ms: u64) {
        self.awake_ms = self.awake_ms.max(awake_ms);
    }

    /// When a lease that starts now ends on the clock of timers, if no
    /// pause intervenes (its timer checks the awake time and re-arms).
    fn lease_deadline(&self, now: UnixMs) -> UnixMs {
        now.saturating_add(self.lease_ms)
    }

    fn add_timer(&mut self, at: UnixMs, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    pub fn next_timer(&self) -> Option<UnixMs> {
        self.timers.first_key_value().map(|((at, _), _)| *at)
    }

    /// Fires every timer due by `now`.
    pub fn fire_timers(&mut self, now: UnixMs) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Timer::Ready { task_id, at } => self.on_ready_timer(&task_id, at, now),
                Timer::Lease { task_id, attempt } => self.on_lease_timer(&task_id, attempt, now),
                Timer::Timeout { task_id, attempt } => self.on_timeout(&task_id, attempt),
                Timer::Deadline { chain_id } => self.on_deadline(&chain_id, now),
            }
        }
    }

    fn on_ready_timer(&mut self, task_id: &str, at_ms: UnixMs, now: UnixMs) {
        let Some((chain_id, at)) = self.tasks.get(task_id).cloned() else {
            return;
        };
        let rec = &self.chains[&chain_id];
        let step = rec.step(at);
        if rec.is_ended() || step.state() != StepState::Scheduled || step.not_before_ms != at_ms {
            return;
        }
        self.make_ready(&chain_id, at, now);
        self.touch(&chain_id);
    }

    fn on_lease_timer(&mut self, task_id: &str, attempt: u32, now: UnixMs) {
        let Some(run) = self.runs.get(task_id) else {
            return;
        };
        if run.attempt != attempt {
            return;
        }
        // Not sent yet: the lease has not started (see `Run::renewed`).
        let awake_for = run
            .renewed
            .map_or(0, |renewed| self.awake_ms.saturating_sub(renewed));
        if awake_for < self.lease_ms {
            // Extended by a heartbeat, or the broker was paused: look again
            // when the rest of the lease would be up.
            let when = now.saturating_add(self.lease_ms - awake_for);
            self.add_timer(
                when,
                Timer::Lease {
                    task_id: task_id.to_owned(),
                    attempt,
                },
            );
            return;
        }
        tracing::warn!(task.id = %task_id, attempt, "lease lapsed; the task goes back to its queue");
        self.metrics.lease_expiries.inc();
        self.lose_run(task_id, "lease lapsed", now);
    }

    fn on_timeout(&mut self, task_id: &str, attempt: u32) {
        let Some(run) = self.runs.get_mut(task_id) else {
            return;
        };
        if run.attempt != attempt {
            return;
        }
        run.timed_out = true;
        if let Some(worker) = run.worker.clone() {
            let task = TaskRef {
                task_id: task_id.to_owned(),
                attempt,
            };
            self.send_worker(
                &worker,
                ToWorker::Cancel {
                    task,
                    reason: "time limit exceeded".into(),
                },
            );
        }
    }

    fn on_deadline(&mut self, chain_id: &str, now: UnixMs) {
        let Some(rec) = self.chains.get(chain_id) else {
            return;
        };
        if rec.is_ended() || rec.phase() != Phase::Main {
            return;
        }
        let at = rec.current();
        let attempt = rec.step(at).attempts;
        let message = format!("the chain's deadline ({}) passed", rec.deadline_ms);
        let record = self.failure_of(chain_id, at, attempt, "DeadlineExceeded", &message, "");
        self.stop_step(
            chain_id,
            at,
            "chain deadline passed",
            StepState::Failed,
            now,
        );
        self.chains
            .get_mut(chain_id)
            .expect("live chain")
            .step_mut(at)
            .failure = Some(record.clone());
        self.event(chain_id, "step_failed", Some(at));
        self.fail_chain(chain_id, record, now);
        self.touch(chain_id);
    }

    // -----------------------------------------------------------------
    // Submission and client requests
    // -----------------------------------------------------------------

    pub fn submit(
        &mut self,
        spec: ChainSpec,
        reply: oneshot::Sender<Result<Submitted, Error>>,
        now: UnixMs,
    ) {
        let result = self
            .check_admissible(&spec)
            .map(|stored| self.admit(spec, stored, now));
        self.reply(reply, result);
    }

    /// Stores a batch of chains: all of them, or none when one of them
    /// cannot be admitted. They are admitted in order, so a later chain is
    /// deduplicated against an earlier one of the same batch.
    pub fn submit_many(
        &mut self,
        specs: Vec<ChainSpec>,
        reply: oneshot::Sender<Result<Vec<Submitted>, Error>>,
        now: UnixMs,
    ) {
        let checked: Result<Vec<Stored>, Error> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                self.check_admissible(spec)
                    .map_err(|e| e.prefixed(&format!("chains[{i}]: ")))
            })
            .collect();
        let result = checked.map(|stored| {
            specs
                .into_iter()
                .zip(stored)
                .map(|(spec, stored)| self.admit(spec, stored, now))
                .collect()
        });
        self.reply(reply, result);
    }

    /// What could refuse a submission without changing anything: a
    /// client-chosen id that belongs to another owner's chain, or a store
    /// read that failed. Returns what the store holds for the submission, so
    /// that [`admit`] does not read it again.
    ///
    /// [`admit`]: Self::admit
    fn check_admissible(&self, spec: &ChainSpec) -> Result<Stored, Error> {
        let mut stored = Stored::default();
        if !spec.idempotency_key.is_empty() {
            stored.idempotent = self
                .store
                .view(&self.batch, |v| v.idempotent_chain(&spec.idempotency_key))
                .map_err(|e| Error::Store(e.to_string()))?;
            // A key must never answer with a chain nobody can read: a batch
            // torn by disk trouble and a kill may have kept the key without
            // its chain (finding 18 of docs/reliability.md). The key is
            // then taken anew by this submission.
            if let Some(id) = &stored.idempotent
                && let Err(Error::NotFound(_)) = self.chain(id)
            {
                tracing::error!(
                    idempotency_key = %spec.idempotency_key,
                    chain.id = %id,
                    "an idempotency key names a chain that is not stored; the key goes to this submission"
                );
                stored.idempotent = None;
            }
        }
        if let Some(id) = &spec.chain_id {
            match self.chain(id) {
                Ok(rec) if rec.owner != spec.owner => {
                    return Err(Error::Exists(format!(
                        "chain_id {id} is taken by another client's chain; choose a fresh UUID"
                    )));
                }
                Ok(_) => stored.chain = true,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(stored)
    }

    /// Whether a chain was stored by this round (it may have left memory
    /// already: cooled).
    fn created(&self, chain_id: &str) -> bool {
        self.chains.contains_key(chain_id) || self.batch.has_chain(chain_id)
    }

    /// Deduplicates a submission or stores it. `stored` is what
    /// [`check_admissible`] found; a chain admitted since (earlier in the
    /// same batch) is in memory.
    ///
    /// [`check_admissible`]: Self::check_admissible
    fn admit(&mut self, spec: ChainSpec, stored: Stored, now: UnixMs) -> Submitted {
        let dedup = |chain_id: String, dedup| Submitted {
            chain_id,
            dedup: Some(dedup),
        };
        if let Some(id) = spec
            .chain_id
            .as_deref()
            .filter(|id| stored.chain || self.created(id))
        {
            return dedup(id.to_owned(), Dedup::ChainId);
        }
        if !spec.idempotency_key.is_empty() {
            // A chain admitted earlier in this batch may have taken the key.
            let known = self
                .batch
                .idempotent_chain(&spec.idempotency_key)
                .or(stored.idempotent);
            if let Some(id) = known {
                return dedup(id, Dedup::IdempotencyKey);
            }
        }
        if let Some(id) = self
            .unique
            .get(&spec.unique_key)
            .filter(|_| !spec.unique_key.is_empty())
        {
            return dedup(id.clone(), Dedup::UniqueKey);
        }
        let chain_id = self.create(spec, now);
        tracing::debug!(chain.id = %chain_id, "chain submitted");
        Submitted {
            chain_id,
            dedup: None,
        }
    }

    /// Stores a new chain (deduplication already checked) and starts its
    /// first step; returns its id.
    fn create(&mut self, mut spec: ChainSpec, now: UnixMs) -> String {
        let chain_id = match spec.chain_id.take() {
            Some(id) => id,
            None => self.ids.fresh(),
        };
        if !spec.idempotency_key.is_empty() {
            self.batch
                .put_idempotency_key(&spec.idempotency_key, &chain_id);
        }
        let chain = ChainRecord::with_ids(chain_id.clone(), spec, now, &mut self.ids);
        if chain.deadline_ms > 0 {
            self.add_timer(
                chain.deadline_ms,
                Timer::Deadline {
                    chain_id: chain_id.clone(),
                },
            );
        }
        self.index_chain(chain);
        self.live_unwritten.insert(chain_id.clone());
        self.start_step(
            &chain_id,
            StepAt {
                phase: Phase::Main,
                index: 0,
            },
            now,
        );
        self.touch(&chain_id);
        self.cool(&chain_id);
        chain_id
    }

    /// Moves a new chain out of memory when its first step joins a long
    /// queue line: its record goes to the store (the pending batch) and
    /// the queue keeps a cold entry of a few dozen bytes in its place, in
    /// the same position. A backlog of millions then costs little memory,
    /// and recovery queues it again from the store's small `live` entries
    /// without reading the records. The chain comes back ([`Core::warm`])
    /// when a worker picks it, or when a request needs it (cancel, purge,
    /// new task defaults).
    ///
    /// Only a chain that nothing else refers to is cooled: its step is
    /// READY (not waiting for a slot or a timer), and it has no deadline,
    /// no unique key and no chain-scoped slot.
    fn cool(&mut self, chain_id: &str) {
        let rec = &self.chains[chain_id];
        let at = rec.current();
        let step = rec.step(at);
        if step.state() != StepState::Ready
            || rec.deadline_ms > 0
            || !rec.unique_key.is_empty()
            || !rec.chain_holds.is_empty()
            || self.queues.line_len(&step.queue, step.name()) <= COLD_AFTER
        {
            return;
        }
        let Ok(key) = uuid::Uuid::parse_str(chain_id).map(|u| u.as_u128()) else {
            return;
        };
        let waits = ColdSummary {
            queue: step.queue.clone(),
            name: step.name().to_owned(),
            priority: self.effective(rec, at).priority,
            ready_ms: step.ready_ms,
        };
        if !self.queues.cool(&step.task_id, key) {
            return;
        }
        let rec = self.chains.remove(chain_id).expect("live chain");
        for (_, step) in rec.all_steps() {
            self.tasks.remove(&step.task_id);
        }
        self.dirty.remove(chain_id);
        self.live_unwritten.remove(chain_id);
        self.batch.put_cold_chain(&rec, &waits);
    }

    /// Brings a cold chain back into memory. When it is still `queued`,
    /// its queue entry turns hot in place (a scan of its line: requests
    /// that name a chain are rare); a chain just picked from its queue has
    /// no entry left. Returns the chain's id, or why it could not: then
    /// the caller puts a picked entry back (the store may be unreadable
    /// only while it is repaired after disk trouble).
    fn warm(&mut self, key: ChainKey, queued: bool) -> Result<String, Unwarmed> {
        let chain_id = uuid::Uuid::from_u128(key).to_string();
        let rec = match self.store.view(&self.batch, |v| v.chain(&chain_id)) {
            Ok(Some(rec)) => match self.results_apart_of(&rec) {
                Ok(results) => {
                    self.apart.extend(results);
                    rec
                }
                Err(e) => {
                    tracing::warn!(chain.id = %chain_id, cause = %e, "cannot read a cold chain's results now; it stays queued");
                    return Err(Unwarmed::Unreadable);
                }
            },
            Ok(None) => {
                tracing::error!(chain.id = %chain_id, "a cold chain has no record: it is lost");
                return Err(Unwarmed::Missing);
            }
            Err(e) => {
                tracing::warn!(chain.id = %chain_id, cause = %e, "cannot read a cold chain now; it stays queued");
                return Err(Unwarmed::Unreadable);
            }
        };
        let step = rec.step(rec.current());
        let task_id = step.task_id.clone();
        if queued {
            self.queues.warm(&step.queue, step.name(), key, &task_id);
        }
        self.index_chain(rec);
        // Its `live` entry must say "hot" again.
        self.live_unwritten.insert(chain_id.clone());
        self.touch(&chain_id);
        Ok(chain_id)
    }

    /// Brings back the cold chains of the task names `names`, without
    /// queue entries, for a pass that queues them again under new task
    /// defaults. Entries that cannot be read now go back where they were,
    /// and their names into `rerouting`, for [`Core::dispatch`] to try
    /// again and to keep from picking them under the old defaults
    /// meanwhile. Returns the ids of the chains brought back.
    fn warm_names(&mut self, names: &Set<String>) -> Vec<String> {
        let mut warmed = Vec::new();
        let mut unreadable = false;
        for (key, place) in self.queues.take_cold(|_, n| names.contains(n)) {
            if !unreadable {
                match self.warm(key, false) {
                    Ok(chain_id) => {
                        warmed.push(chain_id);
                        continue;
                    }
                    Err(Unwarmed::Missing) => continue,
                    Err(Unwarmed::Unreadable) => unreadable = true,
                }
            }
            self.rerouting.insert(place.name().to_owned());
            self.queues.put_back(Queued::Cold(key), place);
        }
        warmed
    }

    /// [`Core::warm`] for a chain addressed by id, if it is cold (a store
    /// read, for requests that name a chain not in memory).
    fn warm_by_id(&mut self, chain_id: &str) {
        if self.chains.contains_key(chain_id) {
            return;
        }
        let cold = self
            .store
            .view(&self.batch, |v| v.waits_cold(chain_id))
            .unwrap_or_else(|e| {
                tracing::error!(chain.id = %chain_id, cause = %e, "cannot read the live index");
                false
            });
        if cold && let Ok(uuid) = uuid::Uuid::parse_str(chain_id) {
            // Unread, it stays cold in its queue; the request then reads
            // the store itself and fails as the store does.
            let _ = self.warm(uuid.as_u128(), true);
        }
    }

    fn reply<T: Send + 'static>(&mut self, reply: oneshot::Sender<T>, value: T) {
        self.emit(Effect::Run(Box::new(move || {
            let _ = reply.send(value);
        })));
    }

    /// A chain's record, from memory if live, else from the store.
    /// A chain as requests see it, with the results it still uses filled
    /// in (see [`Core::with_results`]); from the store when it is not in
    /// memory.
    pub fn chain(&self, chain_id: &str) -> Result<ChainRecord, Error> {
        if let Some(rec) = self.chains.get(chain_id) {
            return Ok(self.with_results(rec.clone()));
        }
        let store_error = |e: crate::store::Error| Error::Store(e.to_string());
        let mut rec = self
            .store
            .view(&self.batch, |v| v.chain(chain_id))
            .map_err(store_error)?
            .ok_or_else(|| Error::NotFound(format!("chain {chain_id} not found")))?;
        // The chain's result, shown with its step as for a chain in memory.
        if rec.result_apart
            && let Some(last) = rec.steps.last_mut()
        {
            last.result = self
                .store
                .view(&self.batch, |v| v.result(chain_id, &last.task_id))
                .map_err(store_error)?
                .unwrap_or_default();
            rec.result = last.result.clone();
        }
        Ok(rec)
    }

    /// A step's result, whether kept in its chain's record or apart.
    pub fn step_result(
        &mut self,
        chain_id: &str,
        task_id: &str,
        reply: oneshot::Sender<Result<String, Error>>,
    ) {
        let answer = self.chain(chain_id).and_then(|rec| {
            let step = rec
                .all_steps()
                .find(|(_, s)| s.task_id == task_id)
                .map(|(_, s)| s)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "chain {chain_id} has no step with task id {task_id}"
                    ))
                })?;
            if step.state() != StepState::Succeeded {
                return Err(Error::Conflict(format!(
                    "step {task_id} has no result: it is {:?}",
                    step.state()
                )));
            }
            if !step.result_apart || !step.result.is_empty() {
                return Ok(step.result.clone());
            }
            self.store
                .view(&self.batch, |v| v.result(chain_id, task_id))
                .map_err(|e| Error::Store(e.to_string()))?
                .ok_or_else(|| Error::Store(format!("the result of step {task_id} is missing")))
        });
        self.reply(reply, answer);
    }

    pub fn get(&mut self, chain_id: &str, reply: oneshot::Sender<Result<ChainRecord, Error>>) {
        let result = self.chain(chain_id);
        self.reply(reply, result);
    }

    /// [`Core::get`] with the chain's [`Core::unserved_steps`].
    pub fn inspect(&mut self, chain_id: &str, reply: oneshot::Sender<Result<Inspected, Error>>) {
        let result = self.chain(chain_id).map(|rec| {
            let unserved = self.unserved_steps(&rec);
            (rec, unserved)
        });
        self.reply(reply, result);
    }

    pub fn watch(
        &mut self,
        chain_id: &str,
        tx: watchers::Sender,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        match self.chain(chain_id) {
            Err(e) => self.reply(reply, Err(e)),
            Ok(chain) => {
                if !chain.is_ended() {
                    self.watchers
                        .entry(chain_id.to_owned())
                        .or_default()
                        .push(tx.clone());
                }
                let event = Arc::new(ChainEvent::new("snapshot", None, chain));
                self.emit(Effect::Run(Box::new(move || {
                    tx.offer(&event);
                })));
                self.reply(reply, Ok(()));
            }
        }
    }

    pub fn cancel(
        &mut self,
        chain_id: &str,
        reason: String,
        reply: oneshot::Sender<Result<ChainState, Error>>,
        now: UnixMs,
    ) {
        self.warm_by_id(chain_id);
        let rec = match self.chains.get(chain_id) {
            Some(rec) => rec,
            None => {
                let result = self.chain(chain_id).map(|c| c.state());
                return self.reply(reply, result);
            }
        };
        if rec.is_ended() {
            let state = rec.state();
            return self.reply(reply, Ok(state));
        }
        let phase = rec.phase();
        let len = rec.steps_of(phase).len();
        for index in 0..len {
            let at = StepAt { phase, index };
            let reason = format!("chain cancelled: {reason}");
            self.stop_step(chain_id, at, &reason, StepState::Cancelled, now);
        }
        let rec = self.chains.get_mut(chain_id).expect("live chain");
        rec.state = ChainState::Cancelled as i32;
        rec.cancel_reason = reason;
        rec.finished_ms = now;
        self.event(chain_id, "chain_cancelled", None);
        self.touch(chain_id);
        self.chain_ended(chain_id, now);
        tracing::info!(chain.id = %chain_id, "chain cancelled");
        self.reply(reply, Ok(ChainState::Cancelled));
    }

    /// Takes a step out of play: a waiting one leaves its queue, timer or
    /// throttle line and takes `state`; a pending one takes `state`; a
    /// running one is told to stop and keeps RUNNING (and its slots) until
    /// its run ends, so a body still running never loses its slot.
    fn stop_step(
        &mut self,
        chain_id: &str,
        at: StepAt,
        reason: &str,
        state: StepState,
        now: UnixMs,
    ) {
        let step = self.chains[chain_id].step(at);
        let task_id = step.task_id.clone();
        match step.state() {
            StepState::Running => {
                if let Some((worker, attempt)) = self
                    .runs
                    .get(&task_id)
                    .and_then(|r| r.worker.clone().map(|w| (w, r.attempt)))
                {
                    let task = TaskRef {
                        task_id: task_id.clone(),
                        attempt,
                    };
                    self.send_worker(
                        &worker,
                        ToWorker::Cancel {
                            task,
                            reason: reason.to_owned(),
                        },
                    );
                }
            }
            StepState::Succeeded | StepState::Failed | StepState::Cancelled => {}
            StepState::Ready
            | StepState::Throttled
            | StepState::Scheduled
            | StepState::Pending
            | StepState::Unspecified => {
                self.queues.remove(&task_id);
                let gone = self
                    .throttles
                    .remove_waiters(|w| w.ticket.task_id() == task_id);
                debug_assert!(gone.len() <= 1);
                // A ready step may already hold its task-scoped declared
                // slot (granted, waiting for a worker): give it back, or it
                // would stay taken with nobody left to release it.
                let rec = &self.chains[chain_id];
                if let Some(throttle) = self
                    .effective(rec, at)
                    .throttle
                    .filter(|t| t.scope() != ThrottleScope::Chain)
                {
                    let identity = Identity::of(rec.step(at).name(), &throttle);
                    let grants = self.throttle_op(|t, cs| {
                        t.release(&identity, &Holder::Task(task_id.clone()), cs)
                    });
                    self.apply_grants(grants, now);
                }
                let step = self
                    .chains
                    .get_mut(chain_id)
                    .expect("live chain")
                    .step_mut(at);
                step.state = state as i32;
                step.finished_ms = now;
            }
        }
    }

    // -----------------------------------------------------------------
    // Step lifecycle
    // -----------------------------------------------------------------

    fn effective(&self, rec: &ChainRecord, at: StepAt) -> Effective {
        let sig = rec.step(at).signature();
        Effective::resolve(
            sig.options.as_ref(),
            self.task_defaults.get(&sig.name),
            rec.heavy,
        )
    }

    /// The step's turn has come: it waits for its countdown/ETA or becomes
    /// ready.
    fn start_step(&mut self, chain_id: &str, at: StepAt, now: UnixMs) {
        let rec = self.chains.get_mut(chain_id).expect("live chain");
        rec.phase = at.phase as i32;
        rec.cursor = u32::try_from(at.index).unwrap_or(u32::MAX);
        let rec = &self.chains[chain_id];
        self.task_metrics.get(rec.step(at).name()).submitted.inc();
        let eff = self.effective(rec, at);
        let not_before = now.saturating_add(eff.countdown_ms).max(eff.eta_ms);
        if not_before > now {
            self.schedule(chain_id, at, not_before);
        } else {
            self.make_ready(chain_id, at, now);
        }
    }

    fn schedule(&mut self, chain_id: &str, at: StepAt, when: UnixMs) {
        let step = self
            .chains
            .get_mut(chain_id)
            .expect("live chain")
            .step_mut(at);
        step.state = StepState::Scheduled as i32;
        step.not_before_ms = when;
        let task_id = step.task_id.clone();
        self.add_timer(when, Timer::Ready { task_id, at: when });
    }

    /// The step may run as soon as its throttle (if any) grants a slot.
    fn make_ready(&mut self, chain_id: &str, at: StepAt, now: UnixMs) {
        let rec = &self.chains[chain_id];
        let eff = self.effective(rec, at);
        let step = rec.step(at);
        let task_id = step.task_id.clone();
        let Some(throttle) = eff.throttle else {
            return self.enqueue(chain_id, at, now);
        };
        let identity = Identity::of(step.name(), &throttle);
        let chain_scoped = throttle.scope() == ThrottleScope::Chain;
        if chain_scoped && rec.chain_holds.contains(&identity) {
            return self.enqueue(chain_id, at, now);
        }
        let step = self
            .chains
            .get_mut(chain_id)
            .expect("live chain")
            .step_mut(at);
        step.state = StepState::Throttled as i32;
        step.ready_ms = now;
        let (holder, ticket) = if chain_scoped {
            (
                Holder::Chain(chain_id.to_owned()),
                Ticket::ChainHold {
                    chain_id: chain_id.to_owned(),
                    task_id: task_id.clone(),
                },
            )
        } else {
            (Holder::Task(task_id.clone()), Ticket::Enqueue { task_id })
        };
        self.wait_for_slot(identity, throttle.concurrency, holder, ticket, now);
    }

    fn enqueue(&mut self, chain_id: &str, at: StepAt, now: UnixMs) {
        let rec = &self.chains[chain_id];
        let eff = self.effective(rec, at);
        let step = self
            .chains
            .get_mut(chain_id)
            .expect("live chain")
            .step_mut(at);
        step.state = StepState::Ready as i32;
        step.ready_ms = now;
        step.queue = eff.queue.clone();
        let name = step.name().to_owned();
        let task_id = step.task_id.clone();
        self.queues
            .push(&eff.queue, &name, eff.priority, &task_id, now);
        *self.unsettled.ready.entry(task_id.clone()).or_default() += 1;
        self.emit(Effect::Settled(Settled::Ready(task_id)));
    }

    /// Runs an operation on the throttle table with the rule of
    /// [`throttle::CanStart`]: a waiter that needs a worker is granted only
    /// if a connected worker can start its task now (its queue, its name,
    /// an idle run slot; each approval uses up that slot), and
    /// [`Core::apply_grants`] then assigns it in the same transition.
    ///
    /// An idle run slot, not a prefetch slot: a slot holder prefetched
    /// behind runs whose bodies wait in-body for that same identity would
    /// never start, and they would wait for it forever (docs/reliability.md,
    /// "Findings"). A waiter passed over for want of one reserves the
    /// least busy worker that could take it (`reserved`): it gets no more
    /// prefetch work, so its runs drain and a run slot frees.
    fn throttle_op<R>(
        &mut self,
        op: impl FnOnce(&mut Throttles<Ticket>, CanStart<'_, Ticket>) -> R,
    ) -> R {
        let Core {
            throttles,
            workers,
            tasks,
            chains,
            task_defaults,
            queues,
            reserved,
            ..
        } = self;
        let mut free: Map<&str, usize> = workers
            .iter()
            .map(|(id, w)| (id.as_str(), w.idle()))
            .collect();
        let mut can_start = |w: &Waiter<Ticket>| -> bool {
            let task_id = match &w.ticket {
                Ticket::InBody { .. } => return true,
                Ticket::Enqueue { task_id } | Ticket::ChainHold { task_id, .. } => task_id,
            };
            let Some((chain_id, at)) = tasks.get(task_id) else {
                return true;
            };
            let Some(rec) = chains.get(chain_id) else {
                return true;
            };
            let sig = rec.step(*at).signature();
            let queue = Effective::resolve(
                sig.options.as_ref(),
                task_defaults.get(&sig.name),
                rec.heavy,
            )
            .queue;
            if queues.is_paused(&queue) {
                return false;
            }
            let serves = |w: &WorkerConn| {
                w.names.contains(&sig.name) && w.queues.contains(&queue) && !w.draining
            };
            let taker = workers
                .iter()
                .find(|(id, w)| serves(w) && free[id.as_str()] > 0);
            if let Some((id, _)) = taker {
                *free.get_mut(id.as_str()).expect("every worker listed") -= 1;
                return true;
            }
            let least_busy = workers
                .iter()
                .filter(|(_, w)| serves(w))
                .min_by_key(|(_, w)| w.in_flight.len());
            if let Some((id, _)) = least_busy {
                reserved.insert(id.clone());
            }
            false
        };
        op(throttles, &mut can_start)
    }

    /// Puts `holder` in the identity's line and acts on what that grants.
    fn wait_for_slot(
        &mut self,
        identity: Identity,
        concurrency: u32,
        holder: Holder,
        ticket: Ticket,
        now: UnixMs,
    ) {
        let waiter = Waiter {
            holder,
            since: now,
            ticket,
        };
        let grants = self.throttle_op(|t, cs| t.wait(identity, concurrency, waiter, cs));
        self.apply_grants(grants, now);
    }

    /// Assigns a task that was just granted its slot to a worker that can
    /// start it now (one exists: [`Core::throttle_op`] checked).
    fn start_now(&mut self, task_id: &str, now: UnixMs) {
        let Some((chain_id, at)) = self.tasks.get(task_id).cloned() else {
            return;
        };
        let step = self.chains[&chain_id].step(at);
        let (name, queue) = (step.name().to_owned(), step.queue.clone());
        let taker = self
            .workers
            .iter()
            .find(|(_, w)| w.idle() > 0 && w.names.contains(&name) && w.queues.contains(&queue))
            .map(|(id, _)| id.clone());
        if let Some(worker_id) = taker
            && !self.queues.is_paused(&queue)
            && self.queues.remove(task_id)
        {
            self.assign(&worker_id, task_id, now);
        }
    }

    /// Acts on throttle grants, and on grants that their effects cause.
    fn apply_grants(&mut self, grants: Vec<Grant<Ticket>>, now: UnixMs) {
        let mut work: VecDeque<Grant<Ticket>> = grants.into();
        while let Some(Grant { identity, waiter }) = work.pop_front() {
            // A holder counts from its grant, not from when it began to
            // wait; an in-body holder already runs on a known worker (a
            // declared one learns its worker when assigned).
            let worker = match &waiter.ticket {
                Ticket::InBody { worker_id, .. } => self
                    .workers
                    .get(worker_id)
                    .map_or_else(String::new, |w| w.name.clone()),
                Ticket::Enqueue { .. } | Ticket::ChainHold { .. } => String::new(),
            };
            self.throttles
                .set_worker(&identity, &waiter.holder, &worker, now);
            match waiter.ticket {
                Ticket::Enqueue { task_id } => {
                    if let Some((chain_id, at)) = self.tasks.get(&task_id).cloned() {
                        self.enqueue(&chain_id, at, now);
                        self.start_now(&task_id, now);
                        self.touch(&chain_id);
                    }
                }
                Ticket::ChainHold { chain_id, task_id } => {
                    if let Some((_, at)) = self.tasks.get(&task_id).cloned() {
                        let rec = self.chains.get_mut(&chain_id).expect("live chain");
                        rec.chain_holds.push(identity);
                        self.enqueue(&chain_id, at, now);
                        self.start_now(&task_id, now);
                        self.touch(&chain_id);
                    }
                }
                Ticket::InBody {
                    worker_id,
                    task,
                    request_id,
                } => {
                    let current = self
                        .runs
                        .get(&task.task_id)
                        .filter(|r| r.attempt == task.attempt)
                        .map(|r| r.chain_id.clone());
                    if let Some(chain_id) = current {
                        let at = self.runs[&task.task_id].at;
                        let hold = InBodyHold {
                            identity: Some(identity),
                            request_id,
                        };
                        let step = self
                            .chains
                            .get_mut(&chain_id)
                            .expect("live chain")
                            .step_mut(at);
                        step.in_body.push(hold);
                        self.touch(&chain_id);
                        self.send_worker(&worker_id, ToWorker::Granted { request_id });
                    } else {
                        // The run ended while it waited: hand the slot on.
                        work.extend(
                            self.throttle_op(|t, cs| t.release(&identity, &waiter.holder, cs)),
                        );
                    }
                }
            }
        }
    }

    /// Assigns ready tasks to workers with free concurrency, round-robin.
    ///
    /// A worker whose run slots are all taken gets only tasks that hold no
    /// throttle slot into its prefetch: a slot held by a task waiting there
    /// behind the worker's runs could be the one their bodies wait for. (A
    /// cold entry holds none: chains holding slots are never cooled.)
    pub fn dispatch(&mut self, now: UnixMs) {
        // First the throttle waiters passed over for want of a worker: some
        // worker may be free now (and those still passed over reserve one).
        self.reserved.clear();
        let grants = self.throttle_op(|t, cs| t.repump(cs));
        self.apply_grants(grants, now);
        if !self.rerouting.is_empty() {
            // New task defaults whose cold chains could not be read then.
            let names = std::mem::take(&mut self.rerouting);
            for chain_id in self.warm_names(&names) {
                let at = self.chains[&chain_id].current();
                self.make_ready(&chain_id, at, now);
            }
        }
        let ids: Vec<String> = self.workers.keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        self.rr = (self.rr + 1) % ids.len();
        let mut idle = vec![false; ids.len()];
        // Set once a cold chain could not be read: the store is in
        // trouble, and other cold heads would fail the same way.
        let mut cold_unreadable = false;
        loop {
            let mut progress = false;
            for i in 0..ids.len() {
                let k = (self.rr + i) % ids.len();
                if idle[k] {
                    continue;
                }
                let worker = &self.workers[&ids[k]];
                if worker.free() == 0 {
                    idle[k] = true;
                    continue;
                }
                let prefetch_only = worker.idle() == 0;
                if prefetch_only && self.reserved.contains(&ids[k]) {
                    idle[k] = true;
                    continue;
                }
                let Core {
                    queues,
                    tasks,
                    chains,
                    task_defaults,
                    rerouting,
                    ..
                } = self;
                let picked =
                    queues.pop_for(&worker.queues, &worker.names, |name, head| match head {
                        Head::Hot(task_id) => {
                            prefetch_only && holds_a_slot(tasks, chains, task_defaults, task_id)
                        }
                        Head::Cold => cold_unreadable || rerouting.contains(name),
                    });
                let task_id = match picked {
                    Some((Queued::Hot(task_id), _)) => Some(task_id),
                    Some((Queued::Cold(key), place)) => match self.warm(key, false) {
                        Ok(chain_id) => {
                            let rec = &self.chains[&chain_id];
                            Some(rec.step(rec.current()).task_id.clone())
                        }
                        Err(Unwarmed::Missing) => None,
                        Err(Unwarmed::Unreadable) => {
                            self.queues.put_back(Queued::Cold(key), place);
                            cold_unreadable = true;
                            None
                        }
                    },
                    None => {
                        idle[k] = true;
                        continue;
                    }
                };
                if let Some(task_id) = task_id {
                    self.assign(&ids[k], &task_id, now);
                }
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    fn assign(&mut self, worker_id: &str, task_id: &str, now: UnixMs) {
        let (chain_id, at) = self.tasks[task_id].clone();
        let rec = &self.chains[&chain_id];
        let eff = self.effective(rec, at);
        let carried = if rec.step(at).signature().immutable {
            None
        } else {
            rec.carried_value(at, |s| self.kept_result(s))
        };
        let worker_name = self.workers[worker_id].name.clone();
        let lease_deadline = self.lease_deadline(now);
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        let context = rec.context.clone();
        let step = rec.step_mut(at);
        step.state = StepState::Running as i32;
        step.attempts += 1;
        step.worker = worker_name.clone();
        step.started_ms = now;
        let waited_ms = now.saturating_sub(step.ready_ms);
        self.metrics
            .assignment_latency
            .observe(crate::metrics::millis_as_seconds(waited_ms));
        step.in_body.clear();
        let attempt = step.attempts;
        let sig = step.signature().clone();
        let declared = eff
            .throttle
            .as_ref()
            .filter(|t| t.scope() != ThrottleScope::Chain)
            .map(|t| Identity::of(&sig.name, t));
        if let Some(identity) = &declared {
            self.throttles.set_worker(
                identity,
                &Holder::Task(task_id.to_owned()),
                &worker_name,
                now,
            );
        }
        let assignment = Assignment {
            task: TaskRef {
                task_id: task_id.to_owned(),
                attempt,
            },
            chain_id: chain_id.clone(),
            at,
            name: sig.name.clone(),
            args: with_carried(&sig.args, carried),
            kwargs: sig.kwargs.clone(),
            context,
            queue: eff.queue.clone(),
            lease_deadline_ms: lease_deadline,
            timeout_ms: eff.timeout_ms,
            polls: step.polls,
            retries: step.retries,
        };
        self.runs.insert(
            task_id.to_owned(),
            Run {
                chain_id: chain_id.clone(),
                at,
                attempt,
                worker: Some(worker_id.to_owned()),
                renewed: None,
                declared,
                timed_out: false,
            },
        );
        self.workers
            .get_mut(worker_id)
            .expect("connected worker")
            .in_flight
            .insert(task_id.to_owned());
        self.add_timer(
            lease_deadline,
            Timer::Lease {
                task_id: task_id.to_owned(),
                attempt,
            },
        );
        if eff.timeout_ms > 0 {
            self.add_timer(
                now.saturating_add(eff.timeout_ms),
                Timer::Timeout {
                    task_id: task_id.to_owned(),
                    attempt,
                },
            );
        }
        let early = eff.throttle.is_none()
            && self.workers[worker_id].welcomed
            && self.unsettled.resumed == 0
            && !self.unsettled.ready.contains_key(task_id);
        let send = Effect::ToWorker {
            worker_id: worker_id.to_owned(),
            msg: ToWorker::Assign(Box::new(assignment)),
        };
        self.metrics.assignments.inc();
        if early {
            self.metrics.early_assignments.inc();
            self.early.push(send);
        } else {
            self.emit(send);
        }
        self.event(&chain_id, "step_started", Some(at));
        self.touch(&chain_id);
    }

    /// Ends a run: frees its worker's concurrency and every slot it holds.
    fn end_run(&mut self, task_id: &str, now: UnixMs) -> Option<Run> {
        let run = self.runs.remove(task_id)?;
        if let Some(worker) = run.worker.as_ref().and_then(|w| self.workers.get_mut(w)) {
            worker.in_flight.remove(task_id);
        }
        let mut grants = Vec::new();
        if let Some(identity) = &run.declared {
            grants.extend(
                self.throttle_op(|t, cs| {
                    t.release(identity, &Holder::Task(task_id.to_owned()), cs)
                }),
            );
        }
        let step = self
            .chains
            .get_mut(&run.chain_id)
            .expect("live chain")
            .step_mut(run.at);
        for hold in std::mem::take(&mut step.in_body) {
            if let Some(identity) = hold.identity {
                let holder = Holder::InBody {
                    task_id: task_id.to_owned(),
                    request_id: hold.request_id,
                };
                grants.extend(self.throttle_op(|t, cs| t.release(&identity, &holder, cs)));
            }
        }
        self.throttles.remove_waiters(
            |w| matches!(&w.ticket, Ticket::InBody { task, .. } if task.task_id == task_id),
        );
        self.apply_grants(grants, now);
        self.touch(&run.chain_id.clone());
        Some(run)
    }

    /// A run was lost (lease lapsed, worker said goodbye mid-run): the step
    /// goes back to its queue with the next attempt, or fails once it was
    /// lost too often.
    fn lose_run(&mut self, task_id: &str, reason: &str, now: UnixMs) {
        let Some(run) = self.end_run(task_id, now) else {
            return;
        };
        if let Some(worker) = &run.worker {
            let task = TaskRef {
                task_id: task_id.to_owned(),
                attempt: run.attempt,
            };
            self.send_worker(
                worker,
                ToWorker::Cancel {
                    task,
                    reason: reason.to_owned(),
                },
            );
        }
        let chain_id = run.chain_id.clone();
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        let superseded = rec.is_ended() || rec.current() != run.at;
        let step = rec.step_mut(run.at);
        step.lapses += 1;
        step.worker.clear();
        if superseded {
            self.settle_superseded(&chain_id, run.at, now);
            return;
        }
        if step.lapses > MAX_LAPSES {
            let record = self.failure_of(
                &chain_id,
                run.at,
                run.attempt,
                "WorkerLost",
                &format!("the run was lost {} times ({reason})", MAX_LAPSES + 1),
                "",
            );
            let step = self
                .chains
                .get_mut(&chain_id)
                .expect("live chain")
                .step_mut(run.at);
            step.state = StepState::Failed as i32;
            step.failure = Some(record.clone());
            step.finished_ms = now;
            self.event(&chain_id, "step_failed", Some(run.at));
            self.fail_chain(&chain_id, record, now);
        } else {
            self.event(&chain_id, "step_lost", Some(run.at));
            self.make_ready(&chain_id, run.at, now);
        }
    }

    /// A run that ended after its chain moved on (cancelled, deadline):
    /// record how the step ended and retire the chain if nothing is out.
    fn settle_superseded(&mut self, chain_id: &str, at: StepAt, now: UnixMs) {
        let rec = self.chains.get_mut(chain_id).expect("live chain");
        let state = if rec.state() == ChainState::Cancelled {
            StepState::Cancelled
        } else {
            StepState::Failed
        };
        let step = rec.step_mut(at);
        if step.state() == StepState::Running {
            step.state = state as i32;
            step.finished_ms = now;
        }
        self.touch(chain_id);
        self.retire_if_done(chain_id, now);
    }

    fn failure_of(
        &self,
        chain_id: &str,
        at: StepAt,
        attempt: u32,
        error_type: &str,
        message: &str,
        traceback: &str,
    ) -> FailureRecord {
        let step = self.chains[chain_id].step(at);
        FailureRecord {
            chain_id: chain_id.to_owned(),
            phase: at.phase as i32,
            step_index: u32::try_from(at.index).unwrap_or(u32::MAX),
            task_name: step.name().to_owned(),
            task_id: step.task_id.clone(),
            attempt,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
            traceback: traceback.to_owned(),
        }
    }

    /// The step succeeded: the next step's turn, the next phase, or the end.
    fn advance(&mut self, chain_id: &str, at: StepAt, now: UnixMs) {
        let rec = &self.chains[chain_id];
        if at.index + 1 < rec.steps_of(at.phase).len() {
            return self.start_step(
                chain_id,
                StepAt {
                    phase: at.phase,
                    index: at.index + 1,
                },
                now,
            );
        }
        match at.phase {
            Phase::OnSuccess => self.finish(chain_id, ChainState::Succeeded, now),
            Phase::OnFailure => self.finish(chain_id, ChainState::Failed, now),
            _ => {
                let rec = self.chains.get_mut(chain_id).expect("live chain");
                rec.result = rec.step(at).result.clone();
                rec.result_apart = rec.step(at).result_apart;
                if rec.on_success.is_empty() {
                    self.finish(chain_id, ChainState::Succeeded, now);
                } else {
                    self.start_step(
                        chain_id,
                        StepAt {
                            phase: Phase::OnSuccess,
                            index: 0,
                        },
                        now,
                    );
                }
            }
        }
    }

    /// A step failed for good: on_failure runs once (also when on_success
    /// failed), or the chain ends failed.
    fn fail_chain(&mut self, chain_id: &str, record: FailureRecord, now: UnixMs) {
        self.task_metrics.get(&record.task_name).failed.inc();
        let rec = self.chains.get_mut(chain_id).expect("live chain");
        if rec.phase() == Phase::OnFailure {
            return self.finish(chain_id, ChainState::Failed, now);
        }
        rec.failure = Some(record);
        if rec.on_failure.is_empty() {
            self.finish(chain_id, ChainState::Failed, now);
        } else {
            self.start_step(
                chain_id,
                StepAt {
                    phase: Phase::OnFailure,
                    index: 0,
                },
                now,
            );
        }
    }

    fn finish(&mut self, chain_id: &str, state: ChainState, now: UnixMs) {
        let rec = self.chains.get_mut(chain_id).expect("live chain");
        rec.state = state as i32;
        rec.finished_ms = now;
        let kind = if state == ChainState::Succeeded {
            "chain_succeeded"
        } else {
            "chain_failed"
        };
        tracing::debug!(chain.id = %chain_id, state = kind, "chain ended");
        self.event(chain_id, kind, None);
        self.touch(chain_id);
        self.chain_ended(chain_id, now);
    }

    /// Bookkeeping common to every end: the unique key is free again and
    /// the chain retires once no run of it is out.
    fn chain_ended(&mut self, chain_id: &str, now: UnixMs) {
        let rec = &self.chains[chain_id];
        if !rec.unique_key.is_empty()
            && self
                .unique
                .get(&rec.unique_key)
                .is_some_and(|id| id == chain_id)
        {
            self.unique.remove(&rec.unique_key.clone());
        }
        self.retire_if_done(chain_id, now);
    }

    fn has_runs(&self, rec: &ChainRecord) -> bool {
        rec.all_steps()
            .any(|(_, s)| self.runs.contains_key(&s.task_id))
    }

    /// An ended chain with no run out releases its chain-scoped slots and
    /// leaves memory; its record stays in the store, no longer live.
    fn retire_if_done(&mut self, chain_id: &str, now: UnixMs) {
        let rec = &self.chains[chain_id];
        if !rec.is_ended() || self.has_runs(rec) {
            return;
        }
        let mut rec = self.chains.remove(chain_id).expect("live chain");
        let mut grants = Vec::new();
        for identity in std::mem::take(&mut rec.chain_holds) {
            grants.extend(self.throttle_op(|t, cs| {
                t.release(&identity, &Holder::Chain(chain_id.to_owned()), cs)
            }));
        }
        self.throttles.remove_waiters(
            |w| matches!(&w.ticket, Ticket::ChainHold { chain_id: c, .. } if c == chain_id),
        );
        for (_, step) in rec.all_steps() {
            self.tasks.remove(&step.task_id);
        }
        self.batch.put_chain(&rec, false);
        self.dirty.remove(chain_id);
        self.live_unwritten.remove(chain_id);
        // Watchers still get the final event: it was queued with the chain.
        self.apply_grants(grants, now);
    }

    // -----------------------------------------------------------------
    // Workers
    // -----------------------------------------------------------------

    pub fn connect(
        &mut self,
        hello: WorkerHello,
        tx: mpsc::Sender<ToWorker>,
        now: UnixMs,
    ) -> String {
        let worker_id = self.ids.fresh();
        // A worker that registers a name without defaults (a plain
        // `.task(name, f)`) leaves the defaults others declared alone.
        let mut changed = Map::default();
        for (name, defaults) in &hello.tasks {
            if *defaults != Options::default() && self.task_defaults.get(name) != Some(defaults) {
                self.batch.put_task_defaults(name, defaults);
                changed.insert(name.clone(), defaults.clone());
            }
        }
        if !changed.is_empty() {
            self.redefine(changed, now);
        }
        let mut conn = WorkerConn {
            name: hello.name.clone(),
            queues: hello.queues,
            names: hello.tasks.into_iter().map(|(n, _)| n).collect(),
            concurrency: hello.concurrency,
            prefetch: hello.prefetch,
            in_flight: BTreeSet::new(),
            draining: false,
            connected_ms: now,
            welcomed: false,
            tx,
        };
        let (mut kept, mut lost) = (Vec::new(), Vec::new());
        let awake = self.awake_ms;
        for task in hello.held {
            // A claim is for the broker's current attempt, and that attempt
            // is not out on another worker that is connected. (Attempt
            // numbers of early assignments lost in a crash are issued again:
            // the run issued since is the current one, not the claim.)
            // Only a worker that could have been assigned it may claim a
            // run: its queues hold the run's queue and it registered the
            // task name (a worker token's queues are checked at the edge).
            let claimable = self.runs.get(&task.task_id).is_some_and(|r| {
                r.attempt == task.attempt
                    && self.could_run(&conn, r)
                    && r.worker
                        .as_ref()
                        .and_then(|w| self.workers.get(w))
                        .is_none_or(|w| w.name == conn.name)
            });
            match self.runs.get_mut(&task.task_id).filter(|_| claimable) {
                Some(run) => {
                    if let Some(old) = run.worker.replace(worker_id.clone())
                        && let Some(old) = self.workers.get_mut(&old)
                    {
                        old.in_flight.remove(&task.task_id);
                    }
                    run.renewed = Some(awake);
                    if let Some(identity) = run.declared.clone() {
                        self.throttles.set_worker(
                            &identity,
                            &Holder::Task(task.task_id.clone()),
                            &conn.name,
                            now,
                        );
                    }
                    conn.in_flight.insert(task.task_id.clone());
                    kept.push(task);
                }
                None => lost.push(task),
            }
        }
        for task in &kept {
            let listed: Set<u64> = hello
                .held_slots
                .iter()
                .filter(|(t, _)| t == task)
                .map(|(_, request_id)| *request_id)
                .collect();
            self.release_unlisted_slots(&task.task_id, &listed, now);
        }
        tracing::info!(worker.id = %worker_id, worker.name = %conn.name, kept = kept.len(), lost = lost.len(), "worker connected");
        self.workers.insert(worker_id.clone(), conn);
        let lease_ms = self.lease_ms;
        self.send_worker(
            &worker_id,
            ToWorker::Welcome {
                worker_id: worker_id.clone(),
                lease_ms,
                kept,
                lost,
            },
        );
        worker_id
    }

    /// Whether `worker` could have been assigned `run`: it serves the
    /// queue the run's step was queued in, and registered its task name.
    fn could_run(&self, worker: &WorkerConn, run: &Run) -> bool {
        self.chains.get(&run.chain_id).is_some_and(|rec| {
            let step = rec.step(run.at);
            let queue = if step.queue.is_empty() {
                self.effective(rec, run.at).queue
            } else {
                step.queue.clone()
            };
            worker.names.contains(step.name()) && worker.queues.contains(&queue)
        })
    }

    /// Sets task names' defaults. Their steps already waiting for a slot or
    /// a worker were routed under the old ones (or none: submitted before
    /// any worker declared the name), so they are taken out and made ready
    /// again, oldest first: a throttle or queue declared for the name (the
    /// seed's `@throttle`) applies to them too. One pass over the chains in
    /// memory for all the names of a Hello, however many it registers.
    fn redefine(&mut self, defaults: Map<String, Options>, now: UnixMs) {
        let names: Set<String> = defaults.keys().cloned().collect();
        // Cold chains of the names come back without queue entries; the
        // pass below makes them ready again under the new defaults.
        self.warm_names(&names);
        let mut waiting: Vec<(UnixMs, String, String, StepAt)> = Vec::new();
        for (chain_id, rec) in &self.chains {
            #[cfg(test)]
            tests::CHAIN_VISITS.with(|n| n.set(n.get() + 1));
            if rec.is_ended() {
                continue;
            }
            let at = rec.current();
            let step = rec.step(at);
            if names.contains(step.name())
                && matches!(step.state(), StepState::Ready | StepState::Throttled)
            {
                waiting.push((step.ready_ms, step.task_id.clone(), chain_id.clone(), at));
            }
        }
        waiting.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut grants = Vec::new();
        for (_, task_id, chain_id, at) in &waiting {
            self.queues.remove(task_id);
            self.throttles
                .remove_waiters(|w| w.ticket.task_id() == task_id);
            // A ready step may hold its task-scoped slot: give it back.
            let rec = &self.chains[chain_id];
            if let Some(throttle) = self
                .effective(rec, *at)
                .throttle
                .filter(|t| t.scope() != ThrottleScope::Chain)
            {
                let identity = Identity::of(rec.step(*at).name(), &throttle);
                grants.extend(
                    self.throttle_op(|t, cs| {
                        t.release(&identity, &Holder::Task(task_id.clone()), cs)
                    }),
                );
            }
        }
        self.task_defaults.extend(defaults);
        for (_, _, chain_id, at) in waiting {
            self.make_ready(&chain_id, at, now);
            self.touch(&chain_id);
        }
        self.apply_grants(grants, now);
    }

    pub fn on_worker_message(&mut self, worker_id: &str, msg: FromWorker, now: UnixMs) {
        if !self.workers.contains_key(worker_id) {
            return;
        }
        match msg {
            FromWorker::Outcome { task, outcome } => self.outcome(worker_id, task, outcome, now),
            FromWorker::Heartbeat { tasks } => {
                let awake = self.awake_ms;
                let all = tasks.is_empty();
                let listed: Set<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
                for task_id in &self.workers[worker_id].in_flight {
                    if (all || listed.contains(task_id.as_str()))
                        && let Some(run) = self.runs.get_mut(task_id)
                    {
                        // An assignment not sent yet has no lease to extend.
                        if let Some(renewed) = run.renewed.as_mut() {
                            *renewed = awake;
                        }
                    }
                }
            }
            FromWorker::Acquire {
                request_id,
                task,
                throttle,
            } => self.acquire(worker_id, request_id, task, throttle, now),
            FromWorker::Release { request_id, task } => {
                self.release(worker_id, request_id, task, now)
            }
            FromWorker::Drain => {
                if let Some(w) = self.workers.get_mut(worker_id) {
                    w.draining = true;
                }
            }
            FromWorker::Goodbye => self.worker_gone(worker_id, true, now),
        }
    }

    /// The run this worker holds for `task`, if it is current.
    fn current_run(&self, worker_id: &str, task: &TaskRef) -> Option<&Run> {
        self.runs
            .get(&task.task_id)
            .filter(|r| r.attempt == task.attempt && r.worker.as_deref() == Some(worker_id))
    }

    fn outcome(&mut self, worker_id: &str, task: TaskRef, outcome: RunOutcome, now: UnixMs) {
        if self.current_run(worker_id, &task).is_none() {
            tracing::info!(task.id = %task.task_id, attempt = task.attempt, "rejected an outcome for an assignment that is not current");
            let reason =
                "the assignment is not current (lease lapsed, reassigned or finished)".into();
            return self.send_worker(
                worker_id,
                ToWorker::Ack {
                    task,
                    accepted: false,
                    reason,
                },
            );
        }
        // The ack goes first: ending the run may hand its slot (and the
        // worker's freed concurrency) straight to the next task.
        self.send_worker(
            worker_id,
            ToWorker::Ack {
                task: task.clone(),
                accepted: true,
                reason: String::new(),
            },
        );
        let run = self.end_run(&task.task_id, now).expect("current run");
        let (chain_id, at) = (run.chain_id.clone(), run.at);
        let rec = &self.chains[&chain_id];
        if rec.is_ended() || rec.current() != at {
            return self.settle_superseded(&chain_id, at, now);
        }
        let outcome = if run.timed_out && !matches!(outcome, RunOutcome::Success(_)) {
            RunOutcome::Failure {
                error_type: "TimeLimitExceeded".into(),
                message: "the run exceeded its time limit".into(),
                traceback: String::new(),
                retryable: true,
            }
        } else {
            outcome
        };
        let eff = self.effective(rec, at);
        match outcome {
            RunOutcome::Success(result) => {
                let step = self
                    .chains
                    .get_mut(&chain_id)
                    .expect("live chain")
                    .step_mut(at);
                step.state = StepState::Succeeded as i32;
                if let Some(failure) = step.failure.as_mut() {
                    shorten_superseded(failure);
                }
                let result = if result.is_empty() {
                    "null".into()
                } else {
                    result
                };
                step.result_bytes = u64::try_from(result.len()).unwrap_or(u64::MAX);
                if result.len() > RESULT_APART_AFTER {
                    // Written once, apart; the record only says so.
                    step.result_apart = true;
                    self.batch.put_result(&chain_id, &step.task_id, &result);
                    let kept = KeptResult {
                        chain_id: chain_id.clone(),
                        result: Arc::from(result),
                    };
                    self.apart.insert(step.task_id.clone(), kept);
                } else {
                    step.result = result;
                }
                step.finished_ms = now;
                let name = step.name().to_owned();
                self.task_metrics.get(&name).succeeded.inc();
                self.event(&chain_id, "step_succeeded", Some(at));
                self.advance(&chain_id, at, now);
                self.prune_results(&chain_id);
            }
            RunOutcome::Failure {
                error_type,
                message,
                traceback,
                retryable,
            } => {
                let record = self.failure_of(
                    &chain_id,
                    at,
                    run.attempt,
                    &error_type,
                    &message,
                    &traceback,
                );
                let step = self
                    .chains
                    .get_mut(&chain_id)
                    .expect("live chain")
                    .step_mut(at);
                step.failure = Some(record.clone());
                if retryable && step.retries < eff.max_retries {
                    step.retries += 1;
                    self.task_metrics.get(&record.task_name).retried.inc();
                    let delay = eff.backoff(step.retries);
                    self.schedule(&chain_id, at, now.saturating_add(delay));
                    self.event(&chain_id, "step_retrying", Some(at));
                } else {
                    step.state = StepState::Failed as i32;
                    step.finished_ms = now;
                    self.event(&chain_id, "step_failed", Some(at));
                    self.fail_chain(&chain_id, record, now);
                }
            }
            RunOutcome::RetryLater { delay_ms, message } => {
                let step = self
                    .chains
                    .get_mut(&chain_id)
                    .expect("live chain")
                    .step_mut(at);
                step.polls += 1;
                if step.polls > eff.max_polls {
                    let msg = format!(
                        "{} polls exceeded the budget of {}: {message}",
                        step.polls, eff.max_polls
                    );
                    let record = self.failure_of(
                        &chain_id,
                        at,
                        run.attempt,
                        "PollBudgetExhausted",
                        &msg,
                        "",
                    );
                    let step = self
                        .chains
                        .get_mut(&chain_id)
                        .expect("live chain")
                        .step_mut(at);
                    step.state = StepState::Failed as i32;
                    step.failure = Some(record.clone());
                    step.finished_ms = now;
                    self.event(&chain_id, "step_failed", Some(at));
                    self.fail_chain(&chain_id, record, now);
                } else {
                    self.schedule(&chain_id, at, now.saturating_add(delay_ms));
                    self.event(&chain_id, "step_polling", Some(at));
                }
            }
        }
        self.touch(&chain_id);
    }

    fn acquire(
        &mut self,
        worker_id: &str,
        request_id: u64,
        task: TaskRef,
        throttle: Throttle,
        now: UnixMs,
    ) {
        let Some(run) = self.current_run(worker_id, &task) else {
            let message = "throttle request for an assignment this worker does not hold".into();
            return self.send_worker(
                worker_id,
                ToWorker::Error {
                    request_id,
                    task: Some(task),
                    message,
                },
            );
        };
        let name = self.chains[&run.chain_id].step(run.at).name().to_owned();
        let identity = Identity::of(&name, &throttle);
        let holder = Holder::InBody {
            task_id: task.task_id.clone(),
            request_id,
        };
        if self.throttles.holds(&identity, &holder) {
            // A repeated request (after a reconnect) for a slot it holds.
            return self.send_worker(worker_id, ToWorker::Granted { request_id });
        }
        self.throttles.remove_waiters(|w| w.holder == holder);
        let ticket = Ticket::InBody {
            worker_id: worker_id.to_owned(),
            task,
            request_id,
        };
        self.wait_for_slot(identity, throttle.concurrency, holder, ticket, now);
    }

    fn release(&mut self, worker_id: &str, request_id: u64, task: TaskRef, now: UnixMs) {
        let Some(run) = self.current_run(worker_id, &task).cloned() else {
            let message = "throttle release for an assignment this worker does not hold".into();
            return self.send_worker(
                worker_id,
                ToWorker::Error {
                    request_id,
                    task: Some(task),
                    message,
                },
            );
        };
        let holder = Holder::InBody {
            task_id: task.task_id.clone(),
            request_id,
        };
        let step = self
            .chains
            .get_mut(&run.chain_id)
            .expect("live chain")
            .step_mut(run.at);
        let Some(pos) = step.in_body.iter().position(|h| h.request_id == request_id) else {
            // Not granted yet: withdraw the request.
            self.throttles.remove_waiters(|w| w.holder == holder);
            return;
        };
        let hold = step.in_body.remove(pos);
        self.touch(&run.chain_id);
        if let Some(identity) = hold.identity {
            let grants = self.throttle_op(|t, cs| t.release(&identity, &holder, cs));
            self.apply_grants(grants, now);
        }
    }

    /// Releases the in-body slots of a run that its worker no longer lists
    /// (it let go of them while disconnected).
    fn release_unlisted_slots(&mut self, task_id: &str, listed: &Set<u64>, now: UnixMs) {
        let Some(run) = self.runs.get(task_id).cloned() else {
            return;
        };
        let step = self
            .chains
            .get_mut(&run.chain_id)
            .expect("live chain")
            .step_mut(run.at);
        let (keep, release): (Vec<_>, Vec<_>) = std::mem::take(&mut step.in_body)
            .into_iter()
            .partition(|h| listed.contains(&h.request_id));
        step.in_body = keep;
        if release.is_empty() {
            return;
        }
        self.touch(&run.chain_id);
        for hold in release {
            if let Some(identity) = hold.identity {
                let holder = Holder::InBody {
                    task_id: task_id.to_owned(),
                    request_id: hold.request_id,
                };
                let grants = self.throttle_op(|t, cs| t.release(&identity, &holder, cs));
                self.apply_grants(grants, now);
            }
        }
    }

    /// The worker's stream ended. After a Goodbye (`clean`) its runs are
    /// released at once; after a broken stream they keep their leases, so
    /// a worker that reconnects in time keeps them and a crashed one loses
    /// them when the lease lapses, never earlier.
    pub fn worker_gone(&mut self, worker_id: &str, clean: bool, now: UnixMs) {
        let Some(conn) = self.workers.remove(worker_id) else {
            return;
        };
        tracing::info!(worker.id = %worker_id, worker.name = %conn.name, clean, in_flight = conn.in_flight.len(), "worker disconnected");
        self.throttles.remove_waiters(
            |w| matches!(&w.ticket, Ticket::InBody { worker_id: id, .. } if id == worker_id),
        );
        for task_id in conn.in_flight {
            if let Some(run) = self.runs.get_mut(&task_id) {
                run.worker = None;
            }
            if clean {
                self.lose_run(&task_id, "worker left", now);
            }
        }
    }

    // -----------------------------------------------------------------
    // Inspection and admin
    // -----------------------------------------------------------------

    /// Worker streams connected now.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Watch streams open now; forgets those whose client went away.
    pub fn watch_count(&mut self) -> usize {
        self.watchers.retain(|_, list| {
            list.retain(|tx| !tx.is_closed());
            !list.is_empty()
        });
        self.watchers.values().map(Vec::len).sum()
    }

    pub fn queue_stats(&self, now: UnixMs) -> Vec<QueueStats> {
        let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
        for (queue, depth) in self.queues.depths() {
            let s = stats
                .entry(queue.clone())
                .or_insert_with(|| QueueStats::named(&queue));
            s.ready = depth.ready;
            s.oldest_ready_age_ms = depth.oldest_ready_ms.map_or(0, |t| now.saturating_sub(t));
        }
        for rec in self.chains.values() {
            for (at, step) in rec.all_steps() {
                let field = match step.state() {
                    StepState::Scheduled if !rec.is_ended() => 0,
                    StepState::Throttled if !rec.is_ended() => 1,
                    StepState::Running => 2,
                    _ => continue,
                };
                let queue = if step.queue.is_empty() {
                    self.effective(rec, at).queue
                } else {
                    step.queue.clone()
                };
                let s = stats
                    .entry(queue.clone())
                    .or_insert_with(|| QueueStats::named(&queue));
                match field {
                    0 => s.delayed += 1,
                    1 => s.throttled += 1,
                    _ => s.running += 1,
                }
            }
        }
        for queue in self.queues.paused() {
            stats
                .entry(queue.to_owned())
                .or_insert_with(|| QueueStats::named(queue))
                .paused = true;
        }
        // Waiting work that no connected worker runs: the ready lines (hot
        // or cold) and the waiting steps of the chains in memory.
        let mut unserved: BTreeSet<(String, String)> = self
            .queues
            .lines()
            .filter(|(queue, name)| !self.serves(queue, name))
            .map(|(queue, name)| (queue.to_owned(), name.to_owned()))
            .collect();
        for rec in self.chains.values() {
            for (at, queue) in self.unserved_steps(rec) {
                unserved.insert((queue, rec.step(at).signature().name.clone()));
            }
        }
        for (queue, name) in unserved {
            if let Some(s) = stats.get_mut(&queue) {
                s.unserved.push(name);
            }
        }
        stats.into_values().collect()
    }

    /// Whether a connected worker subscribed to `queue` registered `name`:
    /// only such a worker is assigned that work (routing isolation).
    fn serves(&self, queue: &str, name: &str) -> bool {
        self.workers
            .values()
            .any(|w| w.names.contains(name) && w.queues.iter().any(|q| q == queue))
    }

    /// The steps of `rec` that wait (ready, delayed or throttled) for a task
    /// name that no connected worker registered for their queue, each with
    /// that queue: they wait until such a worker connects. For inspection.
    pub fn unserved_steps(&self, rec: &ChainRecord) -> Vec<(StepAt, String)> {
        if rec.is_ended() {
            return Vec::new();
        }
        rec.all_steps()
            .filter(|(_, step)| {
                matches!(
                    step.state(),
                    StepState::Ready | StepState::Scheduled | StepState::Throttled
                )
            })
            .filter_map(|(at, step)| {
                let queue = if step.queue.is_empty() {
                    self.effective(rec, at).queue
                } else {
                    step.queue.clone()
                };
                (!self.serves(&queue, &step.signature().name)).then_some((at, queue))
            })
            .collect()
    }

    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.workers
            .iter()
            .map(|(id, w)| WorkerStats {
                worker_id: id.clone(),
                name: w.name.clone(),
                queues: w.queues.clone(),
                task_names: {
                    let mut names: Vec<String> = w.names.iter().cloned().collect();
                    names.sort();
                    names
                },
                concurrency: w.concurrency,
                prefetch: w.prefetch,
                in_flight: w
                    .in_flight
                    .iter()
                    .filter_map(|t| {
                        self.runs.get(t).map(|r| TaskRef {
                            task_id: t.clone(),
                            attempt: r.attempt,
                        })
                    })
                    .collect(),
                draining: w.draining,
                connected_ms: w.connected_ms,
            })
            .collect()
    }

    pub fn throttle_info(&self) -> Vec<(SlotInfo, Vec<String>)> {
        self.throttles
            .info()
            .into_iter()
            .map(|info| {
                let chains = info
                    .holders
                    .iter()
                    .map(|(h, _)| match h {
                        Holder::Chain(c) => c.clone(),
                        Holder::Task(t) | Holder::InBody { task_id: t, .. } => self
                            .tasks
                            .get(t)
                            .map(|(c, _)| c.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
                (info, chains)
            })
            .collect()
    }

    /// Sets or clears an identity's admin limit. The answer (every
    /// identity, as [`Core::throttle_info`] has them) waits, like every
    /// admin change, until the limit is durable.
    pub fn set_limit(
        &mut self,
        identity: Identity,
        limit: Option<u32>,
        reply: oneshot::Sender<Result<Vec<super::ThrottleStats>, Error>>,
        now: UnixMs,
    ) {
        self.batch.put_limit(&identity, limit);
        let grants = self.throttle_op(|t, cs| t.set_override(identity, limit, cs));
        self.apply_grants(grants, now);
        let info = self.throttle_info();
        self.reply(reply, Ok(info));
    }

    /// Pauses or resumes dispatch from a queue. The change is stored with
    /// the round's writes; a resumed queue's tasks go out with the round's
    /// dispatch.
    pub fn pause_queue(
        &mut self,
        queue: &str,
        paused: bool,
        reply: oneshot::Sender<Result<QueueStats, Error>>,
        now: UnixMs,
    ) {
        let changed = if paused {
            self.queues.pause(queue)
        } else {
            self.queues.resume(queue)
        };
        if changed {
            self.batch.put_paused(queue, paused);
            tracing::info!(queue, paused, "queue dispatch changed");
            if !paused {
                self.unsettled.resumed += 1;
                self.emit(Effect::Settled(Settled::Resumed));
            }
        }
        let stats = self
            .queue_stats(now)
            .into_iter()
            .find(|q| q.name == queue)
            .unwrap_or_else(|| QueueStats::named(queue));
        self.reply(reply, Ok(stats));
    }

    /// Cancels, as [`Core::cancel`] does, the chain of every task READY in
    /// `queue`. Tasks running, delayed or throttled are not in the queue
    /// and stay.
    pub fn purge_queue(
        &mut self,
        queue: &str,
        reason: &str,
        reply: oneshot::Sender<Result<Vec<String>, Error>>,
        now: UnixMs,
    ) {
        // Cold chains come back without queue entries: they are cancelled
        // below like the rest. Those that cannot be read now stay queued,
        // and the answer says so.
        let mut chain_ids: Vec<String> = Vec::new();
        let mut unread = 0;
        for (key, place) in self.queues.take_cold(|q, _| q == queue) {
            if unread == 0 {
                match self.warm(key, false) {
                    Ok(chain_id) => {
                        chain_ids.push(chain_id);
                        continue;
                    }
                    Err(Unwarmed::Missing) => continue,
                    Err(Unwarmed::Unreadable) => {}
                }
            }
            unread += 1;
            self.queues.put_back(Queued::Cold(key), place);
        }
        for entry in self.queues.entries(queue) {
            if let Queued::Hot(task_id) = entry {
                chain_ids.extend(self.tasks.get(&task_id).map(|(c, _)| c.clone()));
            }
        }
        chain_ids.sort();
        chain_ids.dedup();
        let reason = if reason.is_empty() {
            format!("queue {queue} purged")
        } else {
            format!("queue {queue} purged: {reason}")
        };
        for chain_id in &chain_ids {
            // `cancel` answers through a oneshot; nobody waits on this one.
            let (cancelled, _) = oneshot::channel();
            self.cancel(chain_id, reason.clone(), cancelled, now);
        }
        tracing::info!(queue, cancelled = chain_ids.len(), unread, "queue purged");
        let answer = if unread == 0 {
            Ok(chain_ids)
        } else {
            Err(Error::Unavailable(format!(
                "{} chains of queue {queue} were cancelled, but {unread} queued chains could not \
                 be read from the store and stay queued: purge again later",
                chain_ids.len()
            )))
        };
        self.reply(reply, answer);
    }

    /// Submits a failed chain's spec again as a new chain and links the
    /// two records, in one batch.
    pub fn requeue(
        &mut self,
        chain_id: &str,
        reply: oneshot::Sender<Result<String, Error>>,
        now: UnixMs,
    ) {
        let result = self.requeue_chain(chain_id, now);
        self.reply(reply, result);
    }

    fn requeue_chain(&mut self, chain_id: &str, now: UnixMs) -> Result<String, Error> {
        let mut original = self.chain(chain_id)?;
        if original.state() != ChainState::Failed {
            return Err(Error::Conflict(format!(
                "chain {chain_id} did not fail (it is {}): only failed chains are requeued",
                original
                    .state()
                    .as_str_name()
                    .trim_start_matches("CHAIN_STATE_")
                    .to_lowercase()
            )));
        }
        if !original.requeued_as.is_empty() {
            return Err(Error::Conflict(format!(
                "chain {chain_id} was requeued already, as {}",
                original.requeued_as
            )));
        }
        if let Some(running) = self
            .unique
            .get(&original.unique_key)
            .filter(|_| !original.unique_key.is_empty())
        {
            return Err(Error::Exists(format!(
                "chain {running} with the same unique key is queued or running"
            )));
        }
        let signatures = |steps: &[StepRecord]| -> Vec<Signature> {
            steps.iter().map(|s| s.signature().clone()).collect()
        };
        let spec = ChainSpec {
            chain_id: None,
            steps: signatures(&original.steps),
            on_success: signatures(&original.on_success),
            on_failure: signatures(&original.on_failure),
            heavy: original.heavy,
            context: original.context.clone(),
            idempotency_key: String::new(),
            unique_key: original.unique_key.clone(),
            deadline_ms: if original.deadline_ms > 0 {
                now + original.deadline_ms.saturating_sub(original.created_ms)
            } else {
                0
            },
            owner: original.owner.clone(),
        };
        let new_id = self.create(spec, now);
        if let Some(rec) = self.chains.get_mut(&new_id) {
            rec.requeued_from = chain_id.to_owned();
        }
        match self.chains.get_mut(chain_id) {
            // Ended with a run still out: written with the round's dirty chains.
            Some(rec) => {
                rec.requeued_as = new_id.clone();
                self.touch(chain_id);
            }
            None => {
                original.requeued_as = new_id.clone();
                self.batch.put_chain(&original, false);
            }
        }
        tracing::info!(chain.id = %new_id, requeued_from = %chain_id, "failed chain requeued");
        Ok(new_id)
    }

    /// Marks every worker stream named `who` (or with id `who`) draining:
    /// it gets no new assignments and finishes what it runs.
    pub fn drain_workers(
        &mut self,
        who: &str,
        reply: oneshot::Sender<Result<Vec<WorkerStats>, Error>>,
    ) {
        let mut matched = Set::default();
        for (id, worker) in &mut self.workers {
            if worker.name == who || id == who {
                worker.draining = true;
                matched.insert(id.clone());
            }
        }
        let result = if matched.is_empty() {
            Err(Error::NotFound(format!("no connected worker named {who}")))
        } else {
            tracing::info!(worker.name = %who, streams = matched.len(), "worker draining (admin)");
            Ok(self
                .worker_stats()
                .into_iter()
                .filter(|w| matched.contains(&w.worker_id))
                .collect())
        };
        self.reply(reply, result);
    }
}

/// Whether a queued hot task holds a throttle slot. A throttled task is
/// queued only once it holds one (its own, or its chain's).
fn holds_a_slot(
    tasks: &Map<String, (String, StepAt)>,
    chains: &Map<String, ChainRecord>,
    task_defaults: &Map<String, Options>,
    task_id: &str,
) -> bool {
    let Some((chain_id, at)) = tasks.get(task_id) else {
        return false;
    };
    let sig = chains[chain_id].step(*at).signature();
    let throttled = |o: Option<&Options>| o.is_some_and(|o| o.throttle.is_some());
    throttled(sig.options.as_ref()) || throttled(task_defaults.get(&sig.name))
}

/// Prepends the carried value to a JSON array of arguments.
fn with_carried(args: &str, carried: Option<serde_json::Value>) -> String {
    let Some(value) = carried else {
        return args.to_owned();
    };
    let mut list: Vec<serde_json::Value> = serde_json::from_str(args).unwrap_or_default();
    list.insert(0, value);
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_step(name: &str) -> ChainSpec {
        ChainSpec {
            steps: vec![Signature {
                name: name.into(),
                args: "[]".into(),
                kwargs: "{}".into(),
                immutable: true,
                options: None,
            }],
            ..ChainSpec::default()
        }
    }

    /// A worker "w" of the general queue that runs `task`.
    fn hello(task: &str, concurrency: u32, prefetch: u32) -> WorkerHello {
        WorkerHello {
            name: "w".into(),
            queues: vec![GENERAL_QUEUE.into()],
            tasks: vec![(task.into(), Options::default())],
            concurrency,
            prefetch,
            held: Vec::new(),
            held_slots: Vec::new(),
        }
    }

    /// A scheduler on an empty store in a temporary directory (kept alive
    /// by the returned guard), at time 1.
    fn empty_core() -> (tempfile::TempDir, Shared, Core) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Shared::open(dir.path()).expect("store");
        let core = Core::recover(store.clone(), 30_000, 0, Recovered::default(), 1);
        (dir, store, core)
    }

    /// Ends a round: commits and delivers its effects (durability does not
    /// matter here).
    fn end_round(core: &mut Core) {
        let committed = core.commit().expect("commit");
        for effect in committed.early.into_iter().chain(committed.effects) {
            core.deliver(effect, 1);
        }
    }

    #[test]
    fn a_long_line_keeps_new_chains_cold_and_recovery_queues_them_in_order() {
        let (_dir, store, mut core) = empty_core();
        let total = COLD_AFTER + 10;
        let mut ids = Vec::new();
        for i in 0..total {
            let (reply, mut answer) = oneshot::channel();
            core.submit(one_step("t"), reply, 1 + i as u64);
            end_round(&mut core);
            ids.push(answer.try_recv().expect("reply").expect("stored").chain_id);
        }
        // The first COLD_AFTER stay in memory; the rest wait cold.
        assert_eq!(core.chains.len(), COLD_AFTER);
        let cold = &ids[COLD_AFTER];
        assert_eq!(
            core.chain(cold).expect("readable").state(),
            ChainState::Running
        );

        let recovered = store.recover().expect("recover");
        assert_eq!(recovered.cold.len(), total - COLD_AFTER);
        let mut core = Core::recover(store, 30_000, 0, recovered, 10_000);
        let (tx, mut rx) = mpsc::channel(4 * total);
        let concurrency = u32::try_from(total).expect("small");
        core.connect(hello("t", concurrency, 0), tx, 10_000);
        core.dispatch(10_000);
        end_round(&mut core);
        let mut order = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let ToWorker::Assign(a) = msg {
                order.push(a.chain_id);
            }
        }
        assert_eq!(order, ids);
    }

    #[test]
    fn a_batch_with_a_chain_id_of_another_owner_stores_nothing() {
        let (_dir, _, mut core) = empty_core();
        let taken = uuid::Uuid::new_v4().to_string();
        let owned_by = |owner: &str, id: Option<&str>| ChainSpec {
            owner: owner.into(),
            chain_id: id.map(str::to_owned),
            ..one_step("t")
        };
        let (reply, mut first) = oneshot::channel();
        core.submit(owned_by("alice", Some(&taken)), reply, 1);
        end_round(&mut core);
        assert!(first.try_recv().expect("reply").is_ok());

        let fresh = uuid::Uuid::new_v4().to_string();
        let batch = vec![owned_by("bob", Some(&fresh)), owned_by("bob", Some(&taken))];
        let (reply, mut answer) = oneshot::channel();
        core.submit_many(batch, reply, 2);
        end_round(&mut core);
        let err = answer.try_recv().expect("reply").expect_err("refused");
        assert!(
            matches!(&err, Error::Exists(m) if m.starts_with("chains[1]: ")),
            "{err:?}"
        );
        assert!(matches!(core.chain(&fresh), Err(Error::NotFound(_))));

        // The owner's own resend is a deduplicated repeat, within a batch too.
        let batch = vec![
            owned_by("alice", Some(&taken)),
            owned_by("alice", Some(&fresh)),
            owned_by("alice", Some(&fresh)),
        ];
        let (reply, mut answer) = oneshot::channel();
        core.submit_many(batch, reply, 3);
        end_round(&mut core);
        let answers = answer.try_recv().expect("reply").expect("stored");
        let dedups: Vec<_> = answers.iter().map(|a| a.dedup).collect();
        assert_eq!(dedups, [Some(Dedup::ChainId), None, Some(Dedup::ChainId)]);
    }

    #[test]
    fn a_chain_retired_earlier_in_the_same_round_reads_as_ended() {
        let (_dir, _, mut core) = empty_core();
        let (reply, mut submitted) = oneshot::channel();
        core.submit(one_step("t"), reply, 1);
        let (tx, mut rx) = mpsc::channel(16);
        let worker_id = core.connect(hello("t", 1, 0), tx, 1);
        core.dispatch(1);
        end_round(&mut core);
        let chain_id = submitted.try_recv().expect("reply").expect("ok").chain_id;
        let task = loop {
            if let ToWorker::Assign(a) = rx.try_recv().expect("assignment") {
                break a.task;
            }
        };
        // One round: the outcome ends the chain (it leaves memory), then a
        // read of it arrives before the round's batch is applied.
        let outcome = RunOutcome::Success("1".into());
        core.on_worker_message(&worker_id, FromWorker::Outcome { task, outcome }, 2);
        let (reply, mut got) = oneshot::channel();
        core.get(&chain_id, reply);
        end_round(&mut core);
        let chain = got.try_recv().expect("reply").expect("found");
        assert_eq!(chain.state(), ChainState::Succeeded);
    }

    #[test]
    fn a_worker_holds_its_concurrency_and_its_prefetch_and_no_more() {
        let (_dir, _, mut core) = empty_core();
        for _ in 0..6 {
            let (reply, _submitted) = oneshot::channel();
            core.submit(one_step("t"), reply, 1);
        }
        let (tx, mut rx) = mpsc::channel(16);
        let worker_id = core.connect(hello("t", 1, 2), tx, 1);
        let mut assigned = |core: &mut Core| {
            core.dispatch(1);
            end_round(core);
            let mut tasks = Vec::new();
            while let Ok(msg) = rx.try_recv() {
                if let ToWorker::Assign(a) = msg {
                    tasks.push(a.task);
                }
            }
            tasks
        };
        let first = assigned(&mut core);
        assert_eq!(first.len(), 3, "1 to run and 2 prefetched");
        assert!(assigned(&mut core).is_empty(), "the window is full");
        // Each run that ends lets exactly one more in.
        let outcome = RunOutcome::Success("1".into());
        let task = first[0].clone();
        core.on_worker_message(&worker_id, FromWorker::Outcome { task, outcome }, 2);
        assert_eq!(assigned(&mut core).len(), 1);
        let info = &core.worker_stats()[0];
        assert_eq!(
            (info.concurrency, info.prefetch, info.in_flight.len()),
            (1, 2, 3)
        );
    }

    thread_local! {
        /// Chains [`Core::redefine`] went through.
        pub static CHAIN_VISITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_hello_of_many_new_task_defaults_goes_through_the_chains_once() {
        let (_dir, _, mut core) = empty_core();
        for i in 0..500 {
            submit(&mut core, one_step(&format!("t{i}")));
        }
        let mut hello = hello("t0", 1, 0);
        let limited = Options {
            max_retries: Some(7),
            ..Default::default()
        };
        hello.tasks = (0..500)
            .map(|i| (format!("t{i}"), limited.clone()))
            .collect();
        let before = CHAIN_VISITS.with(std::cell::Cell::get);
        let (tx, _rx) = mpsc::channel(16);
        core.connect(hello, tx, 1);
        let visits = CHAIN_VISITS.with(std::cell::Cell::get) - before;
        assert_eq!(visits, 500, "one pass over the 500 chains");
        assert_eq!(core.task_defaults.len(), 500);
    }

    /// A core with `n` one-step chains of `name` submitted and applied,
    /// the last `n - COLD_AFTER` of them cold (only in the store).
    fn backlog(name: &str, n: usize) -> (tempfile::TempDir, Shared, Core) {
        let (dir, store, mut core) = empty_core();
        for _ in 0..n {
            submit(&mut core, one_step(name));
        }
        end_round(&mut core);
        assert_eq!(core.chains.len(), COLD_AFTER);
        (dir, store, core)
    }

    /// Runs assigned so far, after a dispatch (not committed: the store
    /// may be closed).
    fn dispatched(core: &mut Core) -> usize {
        core.dispatch(2);
        core.runs.len()
    }

    #[tokio::test]
    async fn a_backlog_on_disk_is_kept_while_the_store_cannot_be_read() {
        let n = COLD_AFTER + 40;
        let (_dir, store, mut core) = backlog("t", n);
        store.close();
        let (tx, _rx) = mpsc::channel(2 * n);
        let count = u32::try_from(n).unwrap();
        core.connect(hello("t", count, 0), tx, 1);
        assert_eq!(dispatched(&mut core), COLD_AFTER, "only hot ones go");
        assert_eq!(
            core.queues.line_len(GENERAL_QUEUE, "t"),
            40,
            "cold ones stay"
        );
        store.repair().await.expect("repair");
        assert_eq!(dispatched(&mut core), n, "the backlog was dropped");
    }

    #[tokio::test]
    async fn new_defaults_reach_a_backlog_on_disk_read_after_the_store_recovers() {
        let n = COLD_AFTER + 40;
        let (_dir, store, mut core) = backlog("t", n);
        store.close();
        // A worker declares a limit-1 throttle for the name: every waiting
        // step must honour it, including the cold ones not readable now.
        let mut declared = hello("t", u32::try_from(n).unwrap(), 0);
        declared.tasks[0].1 = Options {
            throttle: Some(crate::domain::Throttle {
                concurrency: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (tx, _rx) = mpsc::channel(2 * n);
        core.connect(declared, tx, 1);
        assert_eq!(
            dispatched(&mut core),
            1,
            "a cold chain ran under the old defaults"
        );
        store.repair().await.expect("repair");
        assert_eq!(dispatched(&mut core), 1);
        assert!(core.rerouting.is_empty());
        assert_eq!(core.chains.len(), n, "every chain is back in memory");
        let waiting = core
            .chains
            .values()
            .filter(|c| c.step(c.current()).state() == StepState::Throttled)
            .count();
        assert_eq!(waiting, n - 1, "all but the holder wait for the slot");
    }

    #[tokio::test]
    async fn a_purge_while_the_store_cannot_be_read_says_what_stayed() {
        let n = COLD_AFTER + 40;
        let (_dir, store, mut core) = backlog("t", n);
        store.close();
        let (reply, answer) = oneshot::channel();
        core.purge_queue(GENERAL_QUEUE, "", reply, 2);
        store.repair().await.expect("repair");
        end_round(&mut core);
        let error = answer.await.unwrap().unwrap_err().to_string();
        assert!(
            error.contains("40 queued chains could not be read"),
            "{error}"
        );
        assert_eq!(core.queues.line_len(GENERAL_QUEUE, "t"), 40);
        let (reply, answer) = oneshot::channel();
        core.purge_queue(GENERAL_QUEUE, "", reply, 3);
        end_round(&mut core);
        assert_eq!(answer.await.unwrap().unwrap().len(), 40);
    }

    #[test]
    fn an_idempotency_key_that_names_a_missing_chain_is_taken_anew() {
        let (_dir, store, mut core) = empty_core();
        let mut torn = Batch::new();
        torn.put_idempotency_key("k", "01a24203-0000-7000-8000-000000000000");
        store.apply(torn).unwrap();
        let keyed = ChainSpec {
            idempotency_key: "k".into(),
            ..one_step("t")
        };
        let (reply, mut first) = oneshot::channel();
        core.submit(keyed.clone(), reply, 1);
        end_round(&mut core);
        let first = first.try_recv().unwrap().unwrap();
        assert_eq!(
            first.dedup, None,
            "answered with a chain that is not stored"
        );
        let (reply, mut again) = oneshot::channel();
        core.submit(keyed, reply, 2);
        end_round(&mut core);
        let again = again.try_recv().unwrap().unwrap();
        assert_eq!(
            (again.chain_id, again.dedup),
            (first.chain_id, Some(Dedup::IdempotencyKey))
        );
    }

    #[test]
    fn a_lease_lapses_after_the_lease_of_awake_time_not_of_time_passed() {
        let (_dir, _, mut core) = empty_core();
        submit(&mut core, one_step("t"));
        let (tx, _rx) = mpsc::channel(16);
        core.connect(hello("t", 1, 0), tx, 1);
        core.dispatch(1);
        end_round(&mut core);
        assert_eq!(core.runs.len(), 1);
        // A minute passed on the clock of timers, but the broker was awake
        // for only a second of it (it was paused): the run stays.
        core.set_awake(1_000);
        core.fire_timers(60_000);
        assert_eq!(core.runs.len(), 1, "a pause took the run");
        // Once the broker has been awake for the whole lease, it lapses.
        core.set_awake(30_000);
        core.fire_timers(60_000 + 29_000);
        assert!(core.runs.is_empty(), "the lease never lapsed");
    }

    /// An assignment held back until its round is durable (as it is
    /// while the store is in trouble) has not reached its worker: its
    /// lease runs only from when it leaves. Before, it lapsed in the
    /// outbox, the slot went to another run, and the stale assignment then
    /// left anyway, so two bodies held a slot of limit 1 (the chaos
    /// harness, a full disk of 2 s with a lease of 2 s).
    #[test]
    fn a_held_assignment_does_not_lapse_before_it_leaves() {
        let (_dir, _, mut core) = empty_core();
        submit(&mut core, one_step("t"));
        let (tx, mut rx) = mpsc::channel(16);
        core.connect(hello("t", 1, 0), tx, 1);
        core.dispatch(1);
        let held = core.commit().expect("commit");
        assert!(held.early.is_empty());
        assert_eq!(assigned_chains(&held.effects).len(), 1);
        // Two leases of awake time pass while the round is not durable.
        core.set_awake(60_000);
        core.fire_timers(60_001);
        assert_eq!(core.runs.len(), 1, "a held assignment lapsed");
        // It leaves; its lease runs from now.
        durable(&mut core, held.effects);
        assert!(
            std::iter::from_fn(|| rx.try_recv().ok()).any(|m| matches!(m, ToWorker::Assign(_)))
        );
        core.set_awake(60_000 + 29_000);
        core.fire_timers(60_001 + 29_000);
        assert_eq!(core.runs.len(), 1, "the lease ran before it left");
        core.set_awake(60_000 + 30_000);
        core.fire_timers(60_001 + 30_000);
        assert!(core.runs.is_empty(), "the lease never lapsed");
    }

    /// Commits a round as the scheduler loop does: delivers its early
    /// assignments and returns their chain ids, with the round's other
    /// effects, which wait for it to be durable.
    fn commit_round(core: &mut Core) -> (Vec<String>, Vec<Effect>) {
        let committed = core.commit().expect("commit");
        let early = assigned_chains(&committed.early);
        assert_eq!(
            early.len(),
            committed.early.len(),
            "only assignments go early"
        );
        durable(core, committed.early);
        (early, committed.effects)
    }

    /// The worker reports `task` succeeded.
    fn succeed(core: &mut Core, worker_id: &str, task: TaskRef, now: UnixMs) {
        let outcome = RunOutcome::Success("1".into());
        core.on_worker_message(worker_id, FromWorker::Outcome { task, outcome }, now);
    }

    /// The chain ids of the assignments among held effects.
    fn assigned_chains(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::ToWorker {
                    msg: ToWorker::Assign(a),
                    ..
                } => Some(a.chain_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// The round is durable: its held effects are delivered.
    fn durable(core: &mut Core, effects: Vec<Effect>) {
        for effect in effects {
            core.deliver(effect, 1);
        }
    }

    /// Submits `spec` under a chain id of its own, returned.
    fn submit(core: &mut Core, spec: ChainSpec) -> String {
        let chain_id = uuid::Uuid::new_v4().to_string();
        let spec = ChainSpec {
            chain_id: Some(chain_id.clone()),
            ..spec
        };
        let (reply, _) = oneshot::channel();
        core.submit(spec, reply, 1);
        chain_id
    }

    /// The simulator replays a run from its seed: the same seed gives the
    /// same chain and task ids.
    #[test]
    fn seeded_ids_are_the_same_again() {
        let ids_of_a_run = || {
            let (_dir, _, mut core) = empty_core();
            core.set_ids(Ids::Seeded(7));
            let (reply, _) = oneshot::channel();
            core.submit(one_step("t"), reply, 1);
            let rec = core.chains.values().next().expect("submitted").clone();
            (rec.id, rec.steps[0].task_id.clone())
        };
        let first = ids_of_a_run();
        assert_eq!(first, ids_of_a_run());
        assert!(uuid::Uuid::parse_str(&first.0).is_ok());
    }

    #[test]
    fn rounds_before_an_apply_share_its_batch_and_number() {
        let (_dir, store, mut core) = empty_core();
        let a = submit(&mut core, one_step("t"));
        let first = store.stage_seq(core.end_round().writes);
        let b = submit(&mut core, one_step("t"));
        let second = store.stage_seq(core.end_round().writes);
        assert_eq!(
            (first, second),
            (1, 1),
            "both rounds' replies wait for the batch that will hold them"
        );
        let on_disk = |id: &str| store.read(|s| s.chain(id)).unwrap().is_some();
        assert!(!on_disk(&a), "nothing applied yet");
        assert!(
            store.chain(&a).unwrap().is_some(),
            "reads see staged writes"
        );
        assert_eq!(store.apply_staged().unwrap(), 1);
        assert!(on_disk(&a) && on_disk(&b));
        // A round that writes nothing waits for the batch applied last.
        assert_eq!(store.stage_seq(core.end_round().writes), 1);
        assert!(!store.has_staged());
        assert_eq!(
            store.apply_staged().unwrap(),
            1,
            "nothing to apply: no new batch"
        );
    }

    #[test]
    fn an_assignment_goes_early_only_when_what_it_relies_on_is_durable() {
        let (_dir, _, mut core) = empty_core();
        let (tx, mut rx) = mpsc::channel(16);
        let a = submit(&mut core, one_step("t"));
        let b = submit(&mut core, one_step("t"));
        let worker_id = core.connect(hello("t", 1, 0), tx, 1);
        core.dispatch(1);
        // `a` became ready in this very round, and the worker's welcome has
        // not left: its assignment waits for the round.
        let (early, held) = commit_round(&mut core);
        assert!(early.is_empty());
        assert_eq!(assigned_chains(&held), std::slice::from_ref(&a));
        durable(&mut core, held);
        let task_a = next_assignment(&mut rx);

        // `a` ends; `b` was ready in a durable round: it goes early. `c`,
        // submitted in this round, is not durable yet.
        succeed(&mut core, &worker_id, task_a, 2);
        let c = submit(&mut core, one_step("t"));
        core.dispatch(2);
        let (early, held_2) = commit_round(&mut core);
        assert_eq!(early, std::slice::from_ref(&b));
        let task_b = next_assignment(&mut rx);

        // `b` ends before the round that made `c` ready is durable: `c`
        // waits for its round.
        succeed(&mut core, &worker_id, task_b, 3);
        core.dispatch(3);
        let (early, held_3) = commit_round(&mut core);
        assert!(early.is_empty());
        assert_eq!(assigned_chains(&held_3), [c]);
        durable(&mut core, held_2);
        durable(&mut core, held_3);
        assert!(core.unsettled.ready.is_empty(), "every readiness settled");
    }

    /// The first assignment message among delivered ones.
    fn next_assignment(rx: &mut mpsc::Receiver<ToWorker>) -> TaskRef {
        loop {
            if let ToWorker::Assign(x) = rx.try_recv().expect("an assignment") {
                break x.task;
            }
        }
    }

    #[test]
    fn an_early_assignment_lost_in_a_crash_is_lost_to_its_worker_and_issued_again() {
        let (_dir, store, mut core) = empty_core();
        let (tx, mut rx) = mpsc::channel(16);
        let worker_id = core.connect(hello("t", 1, 0), tx, 1);
        submit(&mut core, one_step("t"));
        let x = submit(&mut core, one_step("t"));
        core.dispatch(1);
        let (_, held) = commit_round(&mut core);
        durable(&mut core, held);
        let a = next_assignment(&mut rx);
        // What a restart would find on disk now.
        let on_disk = store.recover().expect("recover");

        // `a` ends; `x` goes early. The broker dies before the round is
        // durable: its outcome and `x`'s assignment are lost.
        succeed(&mut core, &worker_id, a.clone(), 2);
        core.dispatch(2);
        let (early, _lost_with_the_crash) = commit_round(&mut core);
        assert_eq!(early, std::slice::from_ref(&x));
        let sent = next_assignment(&mut rx);
        drop(core);

        // The worker comes back holding both (`a` with its outcome not
        // acknowledged): `a` is kept, `x` is lost, and `x` runs again under
        // the same attempt number.
        let mut core = Core::recover(store, 30_000, 0, on_disk, 3);
        let (tx, mut rx) = mpsc::channel(16);
        let back = WorkerHello {
            held: vec![a.clone(), sent.clone()],
            ..hello("t", 2, 0)
        };
        core.connect(back, tx, 3);
        core.dispatch(3);
        end_round(&mut core);
        match rx.try_recv().expect("welcome") {
            ToWorker::Welcome { kept, lost, .. } => {
                assert_eq!((kept, lost), (vec![a], vec![sent.clone()]));
            }
            _ => panic!("welcome first"),
        }
        assert_eq!(next_assignment(&mut rx), sent);
    }

    #[test]
    fn a_worker_gets_no_early_assignment_before_its_welcome() {
        let (_dir, _, mut core) = empty_core();
        let ready = submit(&mut core, one_step("t"));
        let (_, held) = commit_round(&mut core);
        durable(&mut core, held);

        let (tx, mut rx) = mpsc::channel(16);
        core.connect(hello("t", 1, 0), tx, 2);
        core.dispatch(2);
        let (early, held) = commit_round(&mut core);
        assert!(early.is_empty());
        assert_eq!(assigned_chains(&held), [ready]);
        durable(&mut core, held);
        assert!(matches!(rx.try_recv(), Ok(ToWorker::Welcome { .. })));
    }

    #[test]
    fn a_resumed_queue_waits_for_its_round() {
        let (_dir, _, mut core) = empty_core();
        let (tx, _rx) = mpsc::channel(16);
        let (paused, _) = oneshot::channel();
        core.pause_queue(GENERAL_QUEUE, true, paused, 1);
        let ready = submit(&mut core, one_step("t"));
        core.connect(hello("t", 1, 0), tx, 1);
        core.dispatch(1);
        let (early, held) = commit_round(&mut core);
        assert!(
            early.is_empty() && assigned_chains(&held).is_empty(),
            "paused"
        );
        durable(&mut core, held);

        // The task was ready in a durable round, the worker is welcomed,
        // but the resumption is not durable yet.
        let (resumed, _) = oneshot::channel();
        core.pause_queue(GENERAL_QUEUE, false, resumed, 2);
        core.dispatch(2);
        let (early, held) = commit_round(&mut core);
        assert!(early.is_empty());
        assert_eq!(assigned_chains(&held), [ready]);
    }

    /// Two steps of task "t" under one chain-scoped slot (limit 1, key
    /// "tenant"): the chain holds it from its first step to its end.
    fn two_steps_under_one_chain_slot() -> ChainSpec {
        let throttled = Signature {
            options: Some(Options {
                throttle: Some(Throttle {
                    concurrency: 1,
                    key: "tenant".into(),
                    scope: ThrottleScope::Chain as i32,
                    ..Throttle::default()
                }),
                ..Options::default()
            }),
            ..one_step("t").steps[0].clone()
        };
        ChainSpec {
            steps: vec![throttled.clone(), throttled],
            ..one_step("t")
        }
    }

    #[test]
    fn a_throttled_step_waits_for_its_round() {
        let (_dir, _, mut core) = empty_core();
        let held_by_chain = two_steps_under_one_chain_slot();
        let (tx, mut rx) = mpsc::channel(16);
        let worker_id = core.connect(hello("t", 2, 0), tx, 1);
        let (_, held) = commit_round(&mut core);
        durable(&mut core, held);
        let chain = submit(&mut core, held_by_chain);
        submit(&mut core, one_step("t"));
        submit(&mut core, one_step("t"));
        core.dispatch(1);
        let (_, held) = commit_round(&mut core);
        durable(&mut core, held);
        let (step_1, plain_1) = (next_assignment(&mut rx), next_assignment(&mut rx));

        // Step 1 ends: step 2 queues behind the second plain task, which
        // takes the free slot (early: it was ready in a durable round).
        succeed(&mut core, &worker_id, step_1, 2);
        core.dispatch(2);
        let (early, held) = commit_round(&mut core);
        assert_eq!(early.len(), 1);
        durable(&mut core, held);

        // Step 2 is ready in a durable round and needs no new slot, but it
        // runs under the chain's throttle slot: it is never sent ahead.
        succeed(&mut core, &worker_id, plain_1, 3);
        core.dispatch(3);
        let (early, held) = commit_round(&mut core);
        assert!(early.is_empty());
        assert_eq!(assigned_chains(&held), [chain]);
    }

    #[test]
    fn a_step_under_its_chains_slot_waits_for_an_idle_run_slot_not_a_prefetch() {
        let (_dir, _, mut core) = empty_core();
        let held_by_chain = two_steps_under_one_chain_slot();
        // One run slot, room for two more in its prefetch.
        let (tx, mut rx) = mpsc::channel(16);
        let mut two_names = hello("t", 1, 2);
        two_names.tasks.push(("u".into(), Options::default()));
        let worker_id = core.connect(two_names, tx, 1);
        let chain = submit(&mut core, held_by_chain);
        core.dispatch(1);
        end_round(&mut core);
        let step_1 = next_assignment(&mut rx);
        let plain = submit(&mut core, one_step("t"));
        core.dispatch(1);
        end_round(&mut core);
        let plain_run = next_assignment(&mut rx);

        // Step 1 ends while the plain task runs: step 2 holds the chain's
        // slot, so it is not prefetched behind the plain run (nor is the
        // rest of its line); a task of another line that holds no slot is.
        succeed(&mut core, &worker_id, step_1, 2);
        let after = submit(&mut core, one_step("u"));
        core.dispatch(2);
        let (early, held) = commit_round(&mut core);
        let assigned: Vec<String> = early.into_iter().chain(assigned_chains(&held)).collect();
        assert_eq!(assigned, [after]);
        durable(&mut core, held);
        assert_eq!(
            core.chain(&chain).expect("live").steps[1].state(),
            StepState::Ready
        );

        // The plain run ends: the prefetched task takes its run slot. When
        // that one ends, its slot goes to step 2.
        let after_run = next_assignment(&mut rx);
        succeed(&mut core, &worker_id, plain_run, 3);
        core.dispatch(3);
        let (early, held) = commit_round(&mut core);
        assert!(early.is_empty() && assigned_chains(&held).is_empty());
        durable(&mut core, held);
        succeed(&mut core, &worker_id, after_run, 4);
        core.dispatch(4);
        let (early, held) = commit_round(&mut core);
        let assigned: Vec<String> = early.into_iter().chain(assigned_chains(&held)).collect();
        assert_eq!(assigned, [chain]);
        assert_eq!(
            core.chain(&plain).expect("readable").state(),
            ChainState::Succeeded
        );
    }

    #[test]
    fn a_claim_for_an_attempt_out_on_another_connected_worker_is_lost() {
        let (_dir, _, mut core) = empty_core();
        let (tx, mut rx) = mpsc::channel(16);
        submit(&mut core, one_step("t"));
        let owner = core.connect(hello("t", 1, 0), tx, 1);
        core.dispatch(1);
        end_round(&mut core);
        let task = next_assignment(&mut rx);

        // Another worker claims the same attempt (as one that ran an early
        // assignment before a crash would): the connected owner keeps it.
        let (tx, mut other_rx) = mpsc::channel(16);
        let other = WorkerHello {
            name: "other".into(),
            held: vec![task.clone()],
            ..hello("t", 1, 0)
        };
        core.connect(other, tx, 2);
        end_round(&mut core);
        match other_rx.try_recv().expect("welcome") {
            ToWorker::Welcome { kept, lost, .. } => {
                assert!(kept.is_empty());
                assert_eq!(lost, std::slice::from_ref(&task));
            }
            _ => panic!("welcome first"),
        }
        assert!(core.workers[&owner].in_flight.contains(&task.task_id));

        // The owner itself, reconnecting before its old stream is noticed
        // gone, keeps it.
        let (tx, mut again_rx) = mpsc::channel(16);
        let again = WorkerHello {
            held: vec![task.clone()],
            ..hello("t", 1, 0)
        };
        core.connect(again, tx, 3);
        end_round(&mut core);
        match again_rx.try_recv().expect("welcome") {
            ToWorker::Welcome { kept, lost, .. } => {
                assert_eq!(kept, [task]);
                assert!(lost.is_empty());
            }
            _ => panic!("welcome first"),
        }
    }
}

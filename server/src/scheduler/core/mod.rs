//! The scheduler's state and its transitions: the machine.
//!
//! [`Core`] owns every live chain, the ready queues, the throttle slots,
//! the leases, the timers and the connected workers (as ids; their streams
//! are the driver's). It is driven by one task (see `mod.rs`), one input at
//! a time, so no transition races another. Each transition mutates memory,
//! marks the chains it touched dirty and queues its outputs as plain data
//! ([`Output`]: a reply to request N, a message to worker W, an event of
//! chain C). [`Core::end_round`] then writes the dirty chains into the
//! round's batch and hands it over with the outputs; the driver stages the
//! batch with the committer and tags the outputs with the number of the
//! batch that will hold it; they leave only once that batch is durable,
//! through [`Core::leaving`], which keeps the books that depend on their
//! leaving (a lease starts when its assignment leaves). That single rule
//! gives the ordering guarantees: a step is assigned only after the
//! previous step's success is on disk, a client hears OK only for a stored
//! chain, a worker is acked only for a stored outcome.
//!
//! The machine keeps no store handle. It reads the store (never writes
//! it) for what is not in memory (cold chains when their turn comes,
//! chains that ended and left memory, idempotency keys, ended chains past
//! their retention) through the [`Lookup`] the driver lends with each input
//! that may need one: the store with every staged write laid over it, and
//! the machine's own round over that. The reads are synchronous: they are
//! page-cache reads of a few microseconds, and a cold chain read in the
//! round that dispatches it keeps dispatch order exact.
//!
//! Where things are:
//! - this file: the state ([`Core`] and the types it holds), recovery, the
//!   end of a round and the outputs that leave;
//! - `replies`: requests as typed numbers, answers as plain data;
//! - `admission`: submissions, deduplication, cold chains;
//! - `lifecycle`: a step's and a chain's states, from ready to retired;
//! - `dispatch`: throttle grants and assignments to workers;
//! - `fanout`: groups and nested executors, whose steps run child chains;
//! - `workers`: worker streams and what they report;
//! - `timers`: leases, ready times, time limits, deadlines, retention;
//! - `reads`: chains as clients read them;
//! - `admin`: inspection and admin changes;
//! - `tests`: unit tests that drive rounds by hand.
//!
//! No part reads a clock or draws a random id: time comes in as an
//! argument and ids from [`Ids`], so a run can be replayed (the simulator).
//! Ids are typed copies (`ChainId`, `TaskId`, `WorkerId`, see `ids.rs`);
//! their text form is made only where they leave for the store or a
//! client. A running step holds its run (`StepStatus::Running`, see
//! `step.rs`): [`Core::run`] finds it from a task id.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

pub use self::replies::{Answer, Answerable, Req, RequestId};
use super::queues::{ChainKey, Head, Queued, Queues};
use super::rate::Rate;
use super::throttle::{self, CanStart, Grant, Holder, HolderInfo, Throttles, Waiter};
use super::{Error, Inspected, QueueStats, ScheduleView, Submitted, WorkerStats};
use crate::domain::*;
use crate::metrics::{Metrics, TaskMetrics};
use crate::store::{Batch, ExpiryCursor, Lookup, Recovered};

mod admin;
mod admission;
mod dispatch;
mod fanout;
mod lifecycle;
mod periodic;
mod reads;
mod replies;
#[cfg(test)]
mod tests;
mod timers;
mod workers;

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

/// What the machine asks the driver to do, as plain data. Each waits for
/// the round that decided it to be durable (early assignments excepted);
/// the driver then hands it back through [`Core::leaving`], which keeps the
/// machine's books and says whether it still goes out.
#[derive(Debug)]
pub enum Output {
    /// Answers request `request` (boxed: some answers are large, and
    /// outputs are moved around by the thousand).
    Reply {
        request: RequestId,
        answer: Box<Answer>,
    },
    /// Sends to a connected worker (dropped if it is gone by then).
    ToWorker { worker_id: WorkerId, msg: ToWorker },
    /// An event of a watched chain, for each of its watchers; `last`
    /// closes their streams.
    Event {
        chain_id: ChainId,
        event: Arc<ChainEvent>,
        last: bool,
    },
    /// The first event of the watcher that request `request` opened;
    /// `keep` when the chain has not ended: the watcher then joins the
    /// chain's watchers, and the machine counts it until the driver says
    /// it left ([`Core::unwatched`]).
    Snapshot {
        request: RequestId,
        chain_id: ChainId,
        event: Arc<ChainEvent>,
        keep: bool,
    },
    /// A write that early assignments depend on is durable now (see
    /// [`Unsettled`]). Never leaves the machine.
    Settled(Settled),
}

/// What a round wrote that an early assignment must not run ahead of.
#[derive(Debug)]
pub enum Settled {
    /// The task was made ready.
    Ready(TaskId),
    /// A queue's dispatch was resumed.
    Resumed,
    /// An assignment that waited for its round left for this worker (see
    /// [`WorkerConn::held_back`]).
    Sent(WorkerId),
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
///   on the stream);
/// - an earlier assignment to its worker waits for its round: a worker
///   starts its assignments in the order they arrive, and one that
///   overtook a slot holder could take the holder's only run slot and wait
///   in its body for that very slot, for ever (finding F1 of the
///   simulator).
///
/// Why bother: on the hot path of short tasks a worker ends a run, the
/// broker hands its slot to the next task in the same round, and the
/// assignment waited for a flush (about 0.8 ms) it did not need. See
/// docs/benchmarks.md, "Early assignments".
#[derive(Default)]
struct Unsettled {
    /// Tasks made ready in rounds not yet durable, with how many such
    /// rounds (a task can be made ready again before the first is).
    ready: Map<TaskId, u32>,
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
            Settled::Sent(_) => {}
        }
    }
}

/// A result stored apart, kept in memory while its chain uses it.
#[derive(Debug, Clone)]
struct KeptResult {
    chain_id: ChainId,
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

/// What a round left: its writes, the outputs that wait for them to be
/// durable, the early assignments that wait for none, and the worker
/// streams to close now (their workers are gone: disconnected, said
/// goodbye, or could not be sent to).
pub struct RoundEnd {
    pub writes: Batch,
    pub effects: Vec<Output>,
    pub early: Vec<Output>,
    pub closed: Vec<WorkerId>,
}

impl RoundEnd {
    /// Whether somebody waits for the round's writes to be durable, so
    /// that they are committed at once (`in_trouble`: the store is in
    /// trouble, so early assignments wait for them too). Nobody does when
    /// the round's effects only acknowledge outcomes, for the worker goes
    /// on without the acknowledgment (it keeps the outcome, to send again
    /// until it is acknowledged), or are the machine's own bookkeeping
    /// (`Settled`). Such a round may wait a moment to share a flush (see
    /// `store::committer`).
    pub fn awaited(&self, in_trouble: bool) -> bool {
        let waits = |output: &Output| {
            !matches!(
                output,
                Output::ToWorker {
                    msg: ToWorker::Ack { .. },
                    ..
                } | Output::Settled(_)
            )
        };
        self.effects.iter().any(waits) || (in_trouble && !self.early.is_empty())
    }
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
    idempotent: Option<ChainId>,
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
    pub in_flight: BTreeSet<TaskId>,
    pub draining: bool,
    pub connected_ms: UnixMs,
    /// Its `Welcome` has left: early assignments may follow it.
    welcomed: bool,
    /// Assignments to it that wait for their round to be durable: while
    /// any does, none leaves early, so that it gets its assignments in the
    /// order they were made (see [`Unsettled`]).
    held_back: u32,
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
    Enqueue { task_id: TaskId },
    /// A chain-scoped throttle: the chain holds the slot, the task enters
    /// its queue.
    ChainHold { chain_id: ChainId, task_id: TaskId },
    /// An in-body request of a running attempt: tell its worker.
    InBody {
        worker_id: WorkerId,
        task: TaskRef,
        request_id: u64,
    },
}

impl Ticket {
    fn task_id(&self) -> TaskId {
        match self {
            Ticket::Enqueue { task_id } | Ticket::ChainHold { task_id, .. } => *task_id,
            Ticket::InBody { task, .. } => task.task_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A scheduled step becomes ready (stale if the step moved on).
    Ready { task_id: TaskId, at: UnixMs },
    /// Check whether a run's lease lapsed (re-armed if it was extended).
    Lease { task_id: TaskId, attempt: u32 },
    /// A run's time limit.
    Timeout { task_id: TaskId, attempt: u32 },
    /// A chain's deadline.
    Deadline { chain_id: ChainId },
    /// A schedule's next fire time (stale if the schedule moved on).
    Schedule { name: String, at: UnixMs },
    /// A line whose first waiter waits for its rate: pump it (stale if it
    /// was pumped meanwhile; pumping again grants nothing new).
    Rate { identity: Identity },
}

pub struct Core {
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
    /// When full rate buckets are next forgotten (see `Core::sweep`).
    next_bucket_sweep: UnixMs,
    /// Milliseconds the scheduler has been awake, as the driver last read
    /// them (see `clock::Awake`): what leases are measured in.
    awake_ms: u64,
    chains: Map<ChainId, ChainRecord>,
    /// task id → (chain id, position), for every step of a live chain.
    tasks: Map<TaskId, (ChainId, StepAt)>,
    /// unique key → chain id, for chains not ended.
    unique: Map<String, ChainId>,
    queues: Queues,
    /// Periodic schedules, by name (see `periodic`).
    schedules: BTreeMap<String, periodic::Scheduled>,
    timers: BTreeMap<(UnixMs, u64), Timer>,
    timer_seq: u64,
    throttles: Throttles<Ticket>,
    workers: BTreeMap<WorkerId, WorkerConn>,
    /// Round-robin start for dispatch, so free workers share the work.
    rr: usize,
    /// Workers that take no prefetch work until a run slot frees: a
    /// throttle waiter whose slot is free waits for an idle run slot on
    /// one of them (see [`Core::throttle_op`]). Without this, a stream of
    /// other work would keep every prefetch full, and a slot holder, which
    /// is never prefetched, would never find an idle run slot.
    reserved: Set<WorkerId>,
    task_defaults: Map<String, Options>,
    /// Results stored apart (see `StepRecord::result_apart`) that chains in
    /// memory still use (`ChainRecord::results_in_use`), by task id, with
    /// their chain's id: at most two a chain, however long it is. Kept
    /// until the batch that wrote them is applied, then dropped with the
    /// chains that left memory.
    apart: Map<TaskId, KeptResult>,
    /// Task names with new defaults whose cold chains could not be read
    /// (see [`Core::warm_names`]).
    rerouting: Set<String>,
    /// Work on child chains (groups, nested executors) left for the next
    /// rounds, and when it may go on (see `fanout`).
    follow_ups: VecDeque<fanout::FollowUp>,
    follow_up_after: UnixMs,
    /// The carried values of groups and executors stored apart (see
    /// `fanout::INPUT_APART_AFTER`), by their step's task id, while any of
    /// their children may still start.
    inputs: Map<TaskId, Arc<str>>,
    /// Chains with watchers, with how many: the driver holds their
    /// streams; the machine only needs to know whom to build events for.
    watched: Map<ChainId, usize>,
    /// Writes of the round in progress, handed to the committer by
    /// [`Core::end_round`]. Reads of the store look here first.
    batch: Batch,
    dirty: BTreeSet<ChainId>,
    /// Chains in memory whose `live` entry on disk does not say "hot" (new
    /// chains, chains just warmed, chains that ended with nothing out):
    /// their next write sets it. Every other chain in memory has it set, so
    /// writing it again with each step would cost a sled write for nothing.
    live_unwritten: Set<ChainId>,
    effects: Vec<Output>,
    /// Assignments of the transition that need not wait for it to be
    /// durable (see [`Unsettled`]).
    early: Vec<Output>,
    /// Workers gone this round, whose streams the driver closes.
    closed: Vec<WorkerId>,
    unsettled: Unsettled,
    /// What each queue did (see `metrics::QueueCounts`), by queue name.
    queue_counts: Map<String, crate::metrics::QueueCounts>,
    /// Counters and histograms, shared with the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// The counters of each task name seen, so counting never allocates.
    task_metrics: TaskMetrics,
}

impl Core {
    /// Rebuilds the scheduler from what the store recovered.
    pub fn recover(
        reads: &dyn Lookup,
        lease_ms: u64,
        retention_ms: u64,
        recovered: Recovered,
        now: UnixMs,
    ) -> Self {
        let mut core = Core {
            lease_ms,
            retention_ms,
            ids: Ids::Time,
            swept: ExpiryCursor::default(),
            next_sweep: 0,
            sweep_more: false,
            next_bucket_sweep: 0,
            awake_ms: 0,
            chains: Map::default(),
            tasks: Map::default(),
            unique: Map::default(),
            queues: Queues::default(),
            schedules: BTreeMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            throttles: Throttles::default(),
            workers: BTreeMap::new(),
            rr: 0,
            reserved: Set::default(),
            task_defaults: recovered.task_defaults.into_iter().collect(),
            rerouting: Set::default(),
            apart: Map::default(),
            follow_ups: VecDeque::new(),
            follow_up_after: 0,
            inputs: Map::default(),
            watched: Map::default(),
            closed: Vec::new(),
            batch: Batch::new(),
            dirty: BTreeSet::new(),
            live_unwritten: Set::default(),
            effects: Vec::new(),
            early: Vec::new(),
            unsettled: Unsettled::default(),
            queue_counts: Map::default(),
            metrics: Arc::default(),
            task_metrics: TaskMetrics::new(Arc::default()),
        };
        core.task_metrics = TaskMetrics::new(core.metrics.clone());
        for queue in &recovered.paused {
            core.queues.pause(queue);
        }
        for (identity, limit) in recovered.limits {
            core.throttle_op(|t, cs| t.set_override(identity, Some(limit), now, cs));
        }
        for (identity, rate) in recovered.rates {
            let rate = Rate::from(&rate);
            core.throttle_op(|t, cs| t.set_rate_override(identity, Some(rate), now, cs));
        }
        for (identity, tat) in recovered.buckets {
            core.throttles.restore_bucket(identity, tat);
        }
        core.recover_schedules(recovered.schedules);
        for corrupt in &recovered.corrupt {
            tracing::error!(record = %corrupt, "skipped a corrupt record during recovery");
        }
        for chain in recovered.live_chains {
            // The machine keys chains and tasks by typed ids; a record
            // whose ids are not UUIDs was not written by a broker.
            if let Err(e) = chain.check_ids() {
                tracing::error!(chain.id = %chain.id, cause = %e, "skipped a corrupt record during recovery");
                continue;
            }
            match core.results_apart_of(reads, &chain) {
                Ok(results) => core.apart.extend(results),
                Err(e) => {
                    tracing::error!(chain.id = %chain.id, cause = %e, "cannot read the results this chain hands on");
                }
            }
            if let Err(e) = core.load_input(reads, &chain) {
                tracing::error!(chain.id = %chain.id, cause = %e, "cannot read the value this child chain's first step receives");
            }
            core.index_chain(chain);
        }
        // First every slot that was held, so that waiting work re-queued
        // below cannot overtake it; then the waiting work, oldest first.
        let ids: Vec<ChainId> = core.chains.keys().copied().collect();
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
                        waiting.push((step.ready_ms, step.task(), *chain_id, at));
                    }
                    StepState::Scheduled if current => {
                        scheduled.push((step.not_before_ms, step.task()));
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
                    .hold(identity, concurrency, None, Holder::Chain(*chain_id), info);
            }
            for at in running {
                core.restore_run(*chain_id, at, now);
            }
            if !core.chains[chain_id].is_ended() && core.chains[chain_id].deadline_ms > 0 {
                let when = core.chains[chain_id].deadline_ms;
                core.add_timer(
                    when,
                    Timer::Deadline {
                        chain_id: *chain_id,
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
            core.make_ready(chain_id, at, now);
        }
        for c in cold {
            let (queue, name) = &recovered.cold_lines[c.line as usize];
            core.queues
                .push_cold(queue, name, c.priority, c.chain, c.ready_ms);
        }
        core.resume_fanout();
        core
    }

    pub(super) fn index_chain(&mut self, chain: ChainRecord) {
        let chain_id = chain.chain_id();
        for (at, step) in chain.all_steps() {
            self.tasks.insert(step.task(), (chain_id, at));
        }
        if !chain.is_ended() && !chain.unique_key.is_empty() {
            self.unique.insert(chain.unique_key.clone(), chain_id);
        }
        self.chains.insert(chain_id, chain);
    }

    /// A run that was out when the broker stopped: its slots are held again
    /// and its worker gets a fresh lease to reconnect and claim it.
    pub(super) fn restore_run(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let rec = &self.chains[&chain_id];
        let step = rec.step(at);
        let task_id = step.task();
        let eff = self.effective(rec, at);
        let declared = eff
            .throttle
            .as_ref()
            .filter(|t| t.scope() != ThrottleScope::Chain)
            .map(|t| (Identity::of(step.name(), t), throttle::declared(t)));
        let in_body: Vec<InBodyHold> = step.in_body.clone();
        let attempt = step.attempts;
        let info = HolderInfo {
            since: now,
            worker: step.worker.clone(),
        };
        if let Some((identity, (concurrency, rate))) = &declared {
            self.throttles.hold(
                identity.clone(),
                *concurrency,
                *rate,
                Holder::Task(task_id),
                info.clone(),
            );
        }
        for hold in in_body {
            if let Some(identity) = hold.identity {
                let concurrency = self.throttles.limit(&identity);
                let holder = Holder::InBody {
                    task_id,
                    request_id: hold.request_id,
                };
                self.throttles
                    .hold(identity, concurrency, None, holder, info.clone());
            }
        }
        let run = Run {
            chain_id,
            at,
            attempt,
            worker: None,
            renewed: Some(self.awake_ms),
            declared: declared.map(|(i, _)| i),
            timed_out: false,
        };
        self.live_step(chain_id, at).start(run);
        let deadline = self.lease_deadline(now);
        self.add_timer(deadline, Timer::Lease { task_id, attempt });
    }

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
            closed: std::mem::take(&mut self.closed),
        }
    }

    /// Draws new ids from `ids` from now on (the simulator's seeded ids).
    #[cfg(test)]
    pub fn set_ids(&mut self, ids: Ids) {
        self.ids = ids;
    }

    /// A step of a chain in memory (it must be: callers hold its id from
    /// the machine's own maps).
    pub(super) fn live_step(&mut self, chain_id: ChainId, at: StepAt) -> &mut StepRecord {
        self.chains
            .get_mut(&chain_id)
            .expect("live chain")
            .step_mut(at)
    }

    /// The run task `task_id` has out, if its step is running.
    pub(super) fn run(&self, task_id: TaskId) -> Option<&Run> {
        let (chain_id, at) = self.tasks.get(&task_id)?;
        self.chains.get(chain_id)?.step(*at).run()
    }

    pub(super) fn run_mut(&mut self, task_id: TaskId) -> Option<&mut Run> {
        let (chain_id, at) = *self.tasks.get(&task_id)?;
        self.chains.get_mut(&chain_id)?.step_mut(at).run_mut()
    }

    pub(super) fn touch(&mut self, chain_id: ChainId) {
        self.dirty.insert(chain_id);
    }

    pub(super) fn emit(&mut self, effect: Output) {
        self.effects.push(effect);
    }

    pub(super) fn send_worker(&mut self, worker_id: WorkerId, msg: ToWorker) {
        self.emit(Output::ToWorker { worker_id, msg });
    }

    /// Something happened to a chain: sent to its watchers, and when an
    /// attempt ended without ending its step, kept in its history (see
    /// [`crate::history`]; the rest of the history is in the record).
    pub(super) fn event(
        &mut self,
        chain_id: ChainId,
        kind: EventKind,
        at: Option<StepAt>,
        now: UnixMs,
    ) {
        self.event_about(chain_id, kind, at, now, "");
    }

    /// [`Core::event`] with a detail the record does not hold (a poll's
    /// message, why a run was lost).
    pub(super) fn event_about(
        &mut self,
        chain_id: ChainId,
        kind: EventKind,
        at: Option<StepAt>,
        now: UnixMs,
        detail: &str,
    ) {
        // Starts and ends are in the record already (see `history`): only
        // an attempt that ended without ending its step is kept.
        let kept = matches!(
            kind,
            EventKind::StepRetrying | EventKind::StepPolling | EventKind::StepLost
        );
        if kept
            && let Some(at) = at
            && let Some(chain) = self.chains.get_mut(&chain_id)
        {
            let end = HistoryEntry::attempt_end(kind, now, at, chain.step(at), detail);
            chain.record_attempt(at, end);
        }
        if !self.watched.contains_key(&chain_id) {
            return;
        }
        let Some(chain) = self.chains.get(&chain_id) else {
            return;
        };
        let last = chain.is_ended();
        // One copy of the chain for all of its watchers.
        let event = Arc::new(ChainEvent::new(
            kind.as_str(),
            at,
            self.with_results(chain.clone()),
        ));
        if last {
            // The driver closes their streams with this event.
            self.watched.remove(&chain_id);
        }
        self.emit(Output::Event {
            chain_id,
            event,
            last,
        });
    }

    /// An output whose round is durable (or an early assignment at the
    /// end of its round) is about to leave: keeps the books that depend on
    /// its leaving, and returns it if it still goes out.
    pub fn leaving(&mut self, output: Output) -> Option<Output> {
        match output {
            Output::ToWorker { worker_id, msg } => {
                if let ToWorker::Assign(a) = &msg {
                    // Its lease starts now (see `Run::renewed`). An
                    // assignment whose run is no longer this attempt is not
                    // sent.
                    let awake = self.awake_ms;
                    match self.run_mut(a.task.task_id) {
                        Some(run) if run.attempt == a.task.attempt => run.renewed = Some(awake),
                        _ => return None,
                    }
                }
                let worker = self.workers.get_mut(&worker_id)?;
                worker.welcomed |= matches!(msg, ToWorker::Welcome { .. });
                Some(Output::ToWorker { worker_id, msg })
            }
            Output::Settled(Settled::Sent(worker_id)) => {
                if let Some(worker) = self.workers.get_mut(&worker_id) {
                    worker.held_back = worker.held_back.saturating_sub(1);
                }
                None
            }
            Output::Settled(settled) => {
                self.unsettled.settle(settled);
                None
            }
            other => Some(other),
        }
    }

    /// `n` watchers of a chain left (their client went away, or fell
    /// behind): with none left, its events are no longer built.
    pub fn unwatched(&mut self, chain_id: ChainId, n: usize) {
        if let Some(count) = self.watched.get_mut(&chain_id) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.watched.remove(&chain_id);
            }
        }
    }

    /// Every queue's counts, by name.
    pub fn queue_counts(&self) -> Vec<(String, crate::metrics::QueueCounts)> {
        let mut out: Vec<_> = self
            .queue_counts
            .iter()
            .map(|(name, counts)| (name.clone(), *counts))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub(super) fn reply<T: Answerable>(&mut self, reply: Req<T>, value: Result<T, Error>) {
        self.emit(Output::Reply {
            request: reply.id(),
            answer: Box::new(T::wrap(value)),
        });
    }
}

/// Whether a queued hot task holds a throttle slot. A throttled task is
/// queued only once it holds one (its own, or its chain's).
fn holds_a_slot(
    tasks: &Map<TaskId, (ChainId, StepAt)>,
    chains: &Map<ChainId, ChainRecord>,
    task_defaults: &Map<String, Options>,
    task_id: TaskId,
) -> bool {
    let Some((chain_id, at)) = tasks.get(&task_id) else {
        return false;
    };
    let sig = chains[chain_id].step(*at).signature();
    let throttled = |o: Option<&Options>| o.is_some_and(|o| o.throttle.is_some());
    throttled(sig.options.as_ref()) || throttled(task_defaults.get(&sig.name))
}

/// The counts of `queue` in `counts`, created on first use (those of
/// `_other` past `metrics::MAX_COUNTED_QUEUES` queues). A free function,
/// so that a caller can hold a step of a chain meanwhile.
fn counts_of<'a>(
    counts: &'a mut Map<String, crate::metrics::QueueCounts>,
    queue: &str,
) -> &'a mut crate::metrics::QueueCounts {
    if !counts.contains_key(queue) {
        let name = if counts.len() < crate::metrics::MAX_COUNTED_QUEUES {
            queue
        } else {
            "_other"
        };
        return counts.entry(name.to_owned()).or_default();
    }
    counts.get_mut(queue).expect("checked")
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

//! The scheduler: the one place that decides what runs next.
//!
//! One task owns the state ([`core::Core`]); everybody else holds a cheap
//! [`Handle`] and sends it commands over a channel, with a oneshot for the
//! reply. The loop takes whatever commands are waiting (up to a bound),
//! applies them and dispatches ready work: a round. A second task, the
//! flusher, makes the store durable (group commit). When it is free, the
//! writes of every round since its last flush are applied as one atomic
//! batch and handed to it; while it flushes, the rounds' writes gather in
//! memory for the next batch (a chain written in several of them is
//! written once). Effects of a round (replies, assignments, acks, events)
//! are held in an outbox until the flusher reports the batch that holds
//! its writes durable; the one exception is an *early* assignment, which
//! relies on nothing that is not durable yet and leaves at the end of its
//! round (see `core::Unsettled`). The flusher reports on a channel of its
//! own, so its word never waits behind queued commands.
//!
//! Disk trouble (a full disk, a failing write or sync) puts the scheduler in
//! a degraded mode instead of losing or faking anything:
//! - requests that would store new work or change what runs (submit,
//!   cancel, requeue, pause, purge, a throttle limit, a drain) are refused
//!   at once, with [`Error::Exhausted`] when the disk is
//!   full and [`Error::Unavailable`] otherwise, and change nothing;
//! - work already accepted goes on in memory, but its effects (replies,
//!   assignments, acks, events) stay held, as always, until their batch is
//!   durable: nobody is told "done" or "stored" before it is;
//! - a write that failed stays pending and is retried; the flusher repairs
//!   the store ([`Shared::repair`](crate::store::Shared::repair): reopen,
//!   replay what was not durable, flush) with backoff until it succeeds;
//!   then the held effects leave and new work is taken again.
//!
//! [`Handle::store_fault`] tells the health service while this lasts.

mod clock;
mod core;
pub mod queues;
pub mod throttle;
pub mod watchers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::core::Dedup;
use self::core::{Core, Effect, RoundEnd};
pub use self::throttle::{Holder, HolderInfo, SlotInfo};
use crate::domain::*;
use crate::metrics::{Metrics, Snapshot};
use crate::store::{DeadCursor, DeadPage, Fault, Recovered, Shared};

/// Errors the scheduler answers with. Expected outcomes (deduplicated,
/// already ended) are values, not errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("store failure: {0}")]
    Store(String),
    #[error("broker is shutting down")]
    ShuttingDown,
    /// The request does not fit the target's state (requeue a chain that
    /// did not fail, or was requeued already).
    #[error("{0}")]
    Conflict(String),
    /// What the request would create exists already (a chain with the same
    /// unique key is queued or running).
    #[error("{0}")]
    Exists(String),
    /// A limit of the broker is reached (the message names it), or its disk
    /// is full. Nothing was changed.
    #[error("{0}")]
    Exhausted(String),
    /// The store cannot take writes for now. Nothing was changed.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// The same error with `prefix` before its message (which chain of a
    /// batch it is about).
    pub fn prefixed(self, prefix: &str) -> Self {
        let p = |m: String| format!("{prefix}{m}");
        match self {
            Error::NotFound(m) => Error::NotFound(p(m)),
            Error::Store(m) => Error::Store(p(m)),
            Error::ShuttingDown => Error::ShuttingDown,
            Error::Conflict(m) => Error::Conflict(p(m)),
            Error::Exists(m) => Error::Exists(p(m)),
            Error::Exhausted(m) => Error::Exhausted(p(m)),
            Error::Unavailable(m) => Error::Unavailable(p(m)),
        }
    }

    /// The refusal of new work while the store is in trouble.
    fn refused(fault: Fault) -> Self {
        match fault {
            Fault::Full => Error::Exhausted(
                "the broker's disk is full: new work is refused until it has room again; \
                 nothing was stored (retry later)"
                    .into(),
            ),
            Fault::Failing => Error::Unavailable(
                "the broker's store cannot write: new work is refused until it recovers; \
                 nothing was stored (retry later)"
                    .into(),
            ),
        }
    }

    /// The refusal of a chain read while the store is in trouble: what the
    /// scheduler holds may not be on disk, and only durable state is shown.
    fn unreadable(fault: Fault) -> Self {
        let why = "chain state is not shown until it is on disk (retry later)";
        match fault {
            Fault::Full => Error::Exhausted(format!("the broker's disk is full: {why}")),
            Fault::Failing => Error::Unavailable(format!("the broker's store cannot write: {why}")),
        }
    }
}

/// Answer to a submission.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub chain_id: String,
    /// Set when no new chain was stored.
    pub dedup: Option<Dedup>,
}

/// Counts of one queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub name: String,
    pub ready: u64,
    pub delayed: u64,
    pub throttled: u64,
    pub running: u64,
    pub oldest_ready_age_ms: u64,
    /// Dispatch from the queue is paused (its tasks stay READY).
    pub paused: bool,
    /// Task names of the queue's waiting work (ready, delayed or throttled)
    /// that no connected worker subscribed to the queue registered, sorted:
    /// that work waits until such a worker connects.
    pub unserved: Vec<String>,
}

/// A chain and its steps that wait for a task name no connected worker
/// runs in their queue (with that queue), for `GetChain`.
pub type Inspected = (ChainRecord, Vec<(StepAt, String)>);

impl QueueStats {
    fn named(name: &str) -> Self {
        QueueStats {
            name: name.to_owned(),
            ..Default::default()
        }
    }
}

/// A connected worker, for inspection.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerStats {
    pub worker_id: String,
    pub name: String,
    pub queues: Vec<String>,
    pub task_names: Vec<String>,
    pub concurrency: u32,
    pub prefetch: u32,
    pub in_flight: Vec<TaskRef>,
    pub draining: bool,
    pub connected_ms: UnixMs,
}

/// A throttle identity with the chain of each holder, for inspection.
pub type ThrottleStats = (SlotInfo, Vec<String>);

type Reply<T> = oneshot::Sender<Result<T, Error>>;

enum Command {
    Submit(ChainSpec, Reply<Submitted>),
    SubmitMany(Vec<ChainSpec>, Reply<Vec<Submitted>>),
    Get(String, Reply<ChainRecord>),
    /// (chain id, task id) of a step whose result to read.
    StepResult(String, String, Reply<String>),
    Inspect(String, Reply<Inspected>),
    Watch(String, watchers::Sender, Reply<()>),
    Cancel(String, String, Reply<ChainState>),
    Connect(WorkerHello, mpsc::Sender<ToWorker>, Reply<String>),
    FromWorker(String, FromWorker),
    Disconnected(String),
    Queues(oneshot::Sender<Vec<QueueStats>>),
    Workers(oneshot::Sender<Vec<WorkerStats>>),
    Throttles(oneshot::Sender<Vec<ThrottleStats>>),
    SetLimit(Identity, Option<u32>, Reply<Vec<ThrottleStats>>),
    /// Pause (true) or resume (false) a queue.
    Pause(String, bool, Reply<QueueStats>),
    /// Cancel the chains of a queue's READY tasks (queue, reason).
    Purge(String, String, Reply<Vec<String>>),
    Requeue(String, Reply<String>),
    Drain(String, Reply<Vec<WorkerStats>>),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Settings of the scheduler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lease length of an assignment.
    pub lease: Duration,
    /// When false, effects leave as soon as their batch is applied, without
    /// waiting for a flush (benchmarks only: acknowledged work may be lost).
    pub durable: bool,
    /// Most worker streams connected at once.
    pub max_workers: usize,
    /// Most WatchChain streams open at once.
    pub max_watches: usize,
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    /// The counters the scheduler updates, for the metrics endpoint.
    metrics: Arc<Metrics>,
    /// For reads of committed history that need no scheduler round (the
    /// dead list), so a long read never delays dispatch.
    store: Shared,
    /// The store's trouble while it lasts (see the module doc).
    store_fault: watch::Receiver<Option<Fault>>,
}

/// Commands applied per round before one commit.
const ROUND: usize = 512;

/// Starts the scheduler over a recovered store. Returns its handle and the
/// join handle of its loop, which ends when `shutdown` is cancelled (after a
/// last commit and flush) or every handle is dropped.
pub fn start(
    store: Shared,
    recovered: Recovered,
    settings: Settings,
    shutdown: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64 * 1024);
    let lease_ms = u64::try_from(settings.lease.as_millis()).unwrap_or(u64::MAX);
    let core = Core::recover(store.clone(), lease_ms, recovered, now_ms());
    let metrics = core.metrics.clone();
    let (flush_tx, flush_rx) = watch::channel(0u64);
    let (report_tx, reports) = mpsc::unbounded_channel();
    // Without durable acknowledgment nothing waits for a flush, so nothing
    // needs replaying after a repair either.
    store.keep_journal(settings.durable);
    // The flusher also repairs the store after a failure, so it runs in
    // both modes; without durability it is woken only by failures.
    let flusher = tokio::spawn(flusher(store.clone(), flush_rx, report_tx, metrics.clone()));
    let (fault_tx, store_fault) = watch::channel(None);
    let disk = Disk {
        durable: settings.durable,
        durable_seq: 0,
        flushing: 0,
        write_fault: None,
        flush_fault: None,
        retry_at: None,
        retry_backoff: RETRY_MIN,
        published: fault_tx,
        flusher: Some(flusher),
        reports,
    };
    let join = tokio::spawn(run_loop(
        core,
        rx,
        flush_tx,
        disk,
        settings,
        store.clone(),
        shutdown,
    ));
    (
        Handle {
            tx,
            metrics,
            store,
            store_fault,
        },
        join,
    )
}

/// First and last pause before a failed write is retried.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The loop's view of the store: what is durable, and whether it is in
/// trouble.
struct Disk {
    /// Whether effects wait for a flush (see [`Settings::durable`]).
    durable: bool,
    /// Every batch up to this number is durable.
    durable_seq: u64,
    /// The last batch handed to the flusher: it is busy until that one is
    /// durable.
    flushing: u64,
    /// Set while applying the pending batch fails; the next write that
    /// succeeds clears it.
    write_fault: Option<Fault>,
    /// Set while the flusher fails to flush or repair; its next success
    /// clears it.
    flush_fault: Option<Fault>,
    /// When to retry a failed write even if no command comes.
    retry_at: Option<tokio::time::Instant>,
    retry_backoff: Duration,
    /// What [`Handle::store_fault`] shows.
    published: watch::Sender<Option<Fault>>,
    /// The flusher task, joined when the loop ends.
    flusher: Option<tokio::task::JoinHandle<()>>,
    /// What the flusher reports.
    reports: mpsc::UnboundedReceiver<Flushed>,
}

impl Disk {
    /// The trouble in force: new work is refused while there is one. The
    /// flusher's word comes first: while it repairs, writes fail only
    /// because the store is closed, which says nothing of the disk.
    fn fault(&self) -> Option<Fault> {
        self.flush_fault.or(self.write_fault)
    }

    /// Whether the flusher would start on a new batch at once: it made the
    /// last one durable, and is not repairing the store.
    fn flusher_idle(&self) -> bool {
        self.durable_seq >= self.flushing && self.flush_fault.is_none()
    }

    fn flushed(&mut self, report: Flushed) {
        match report {
            Flushed::Durable(seq) => {
                self.durable_seq = self.durable_seq.max(seq);
                self.flush_fault = None;
            }
            Flushed::Failed(fault) => self.flush_fault = Some(fault),
        }
    }

    /// Tells the health service (and the log) when the trouble starts, ends
    /// or changes.
    fn publish(&self) {
        let fault = self.fault();
        self.published.send_if_modified(|shown| {
            if *shown == fault {
                return false;
            }
            match fault {
                Some(fault) => tracing::error!(
                    ?fault,
                    "the store is in trouble: new work is refused and acknowledgments are held until it recovers"
                ),
                None => tracing::info!("the store recovered: new work is accepted again"),
            }
            *shown = fault;
            true
        });
    }
}

/// What the flusher tells the loop, on a channel of its own so that it never
/// waits behind queued commands: the loop hands over the next batch when it
/// hears that the last one is durable.
enum Flushed {
    /// Every batch up to this number is durable.
    Durable(u64),
    /// A flush or a repair failed.
    Failed(Fault),
}

/// First and last pause before the flusher repairs the store again.
const REPAIR_MIN: Duration = Duration::from_millis(50);
const REPAIR_MAX: Duration = Duration::from_secs(2);

/// The flusher: flushes whenever new batches were applied and reports the
/// sequence number the flush covered. After a failure it repairs the store
/// instead (reopen, replay, flush; a retried flush would prove nothing),
/// with backoff, until that succeeds; nothing waiting on the flush is
/// released meanwhile. Ends when the loop drops its end of `wanted`.
///
/// The backoff (50 ms doubling to 2 s) ends only with a flush of new
/// writes, not with a repair: a repair may succeed while the trouble goes
/// on (with no descriptor left, closing the store frees enough for it to
/// open again, and the pending write that failed fails again at once), and
/// the loop, which retries that write as soon as the store is repaired,
/// wakes the flusher again for every write that fails. So a pause is never
/// cut short by `wanted`, only by its end.
async fn flusher(
    store: Shared,
    mut wanted: watch::Receiver<u64>,
    reports: mpsc::UnboundedSender<Flushed>,
    metrics: Arc<Metrics>,
) {
    // Whether the store needs a repair rather than a flush.
    let mut broken = false;
    // The pause after the next failure.
    let mut backoff = REPAIR_MIN;
    loop {
        if !broken && wanted.changed().await.is_err() {
            return;
        }
        // Every batch up to `target` was applied before this flush starts,
        // so the flush (or the repair's replay) covers it.
        let target = *wanted.borrow_and_update();
        let started = std::time::Instant::now();
        let result = if broken {
            store.repair().await
        } else {
            store.flush().await
        };
        match result {
            Ok(()) => {
                if broken {
                    broken = false;
                    tracing::info!("store repaired: reopened, replayed and flushed");
                } else {
                    backoff = REPAIR_MIN;
                    metrics.store_flush.observe(started.elapsed().as_secs_f64());
                }
                if reports.send(Flushed::Durable(target)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let fault = e.fault();
                tracing::error!(cause = %e, ?fault, repairing = broken, "store flush failed; acknowledgments wait until a repair succeeds");
                if reports.send(Flushed::Failed(fault)).is_err() {
                    return;
                }
                broken = true;
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        changed = wanted.changed() => if changed.is_err() { return },
                    }
                }
                backoff = (backoff * 2).min(REPAIR_MAX);
            }
        }
    }
}

async fn run_loop(
    mut core: Core,
    mut rx: mpsc::Receiver<Command>,
    flush_tx: watch::Sender<u64>,
    mut disk: Disk,
    limits: Settings,
    store: Shared,
    shutdown: CancellationToken,
) {
    let mut outbox: VecDeque<(u64, Effect)> = VecDeque::new();
    let mut awake = clock::Awake::start(std::time::Instant::now());
    // Recovery may have changed records (re-queued work): commit it first.
    round_end(&mut core, &mut outbox, &flush_tx, &mut disk);
    loop {
        // Never asleep longer than a tick, so that a longer gap between two
        // readings of the clock means the broker did not run (see `clock`).
        let mut sleep = match core.next_timer() {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
            None => clock::TICK,
        }
        .min(clock::TICK);
        if let Some(at) = disk.retry_at {
            sleep = sleep.min(at.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            biased;
            Some(report) = disk.reports.recv() => disk.flushed(report),
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                core.set_awake(awake.observe(std::time::Instant::now()));
                handle(&mut core, cmd, &mut disk, &limits);
                for _ in 1..ROUND {
                    match rx.try_recv() {
                        Ok(cmd) => handle(&mut core, cmd, &mut disk, &limits),
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep(sleep) => {}
            () = shutdown.cancelled() => break,
        }
        while let Ok(report) = disk.reports.try_recv() {
            disk.flushed(report);
        }
        core.set_awake(awake.observe(std::time::Instant::now()));
        core.fire_timers(now_ms());
        round_end(&mut core, &mut outbox, &flush_tx, &mut disk);
        while outbox
            .front()
            .is_some_and(|(seq, _)| *seq <= disk.durable_seq)
        {
            let (_, effect) = outbox.pop_front().expect("checked");
            core.deliver(effect);
        }
    }
    // Drain: the flusher stops first (it may be repairing), then what was
    // applied is flushed before the loop ends, so a clean shutdown loses
    // nothing even in non-durable mode.
    drop(rx);
    drop(flush_tx);
    if let Some(flusher) = disk.flusher.take() {
        let _ = flusher.await;
    }
    if let Err(e) = core.apply() {
        tracing::warn!(cause = %e, "the last writes could not be applied before stopping");
    }
    let flushed = match store.flush().await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(cause = %e, "final store flush failed; repairing the store once");
            store.repair().await
        }
    };
    if let Err(e) = flushed {
        tracing::error!(cause = %e, "final store flush failed");
    }
    tracing::info!("scheduler stopped");
}

fn round_end(
    core: &mut Core,
    outbox: &mut VecDeque<(u64, Effect)>,
    flush_tx: &watch::Sender<u64>,
    disk: &mut Disk,
) {
    core.dispatch(now_ms());
    let RoundEnd {
        seq,
        effects,
        early,
    } = core.end_round();
    // Early assignments leave now (a later flush covers their round),
    // unless the store is in trouble: then they wait like everything else.
    if disk.fault().is_none() {
        for effect in early {
            core.deliver(effect);
        }
    } else {
        outbox.extend(early.into_iter().map(|e| (seq, e)));
    }
    outbox.extend(effects.into_iter().map(|e| (seq, e)));
    // The writes of the rounds since the last flush began are applied as
    // one batch when the flusher is free to make it durable at once; while
    // it flushes, further rounds add to the pending batch. Without
    // durability nothing waits for the flusher: every round is applied.
    if core.has_pending_writes() && (!disk.durable || disk.flusher_idle()) {
        match core.apply() {
            Ok(applied) => {
                if disk.durable {
                    disk.flushing = applied;
                    flush_tx.send_replace(applied);
                } else {
                    disk.durable_seq = applied;
                }
                disk.write_fault = None;
                disk.retry_at = None;
                disk.retry_backoff = RETRY_MIN;
            }
            Err(e) => {
                // The batch stays pending; a later round retries (on a
                // timer if no command comes).
                let fault = e.fault();
                if disk.write_fault.is_none() {
                    tracing::error!(cause = %e, ?fault, "store write failed; retrying");
                }
                if disk.flush_fault.is_none() {
                    // sled refuses every write after an I/O error until the
                    // store is reopened: let the flusher find out and repair.
                    flush_tx.send_modify(|_| {});
                }
                disk.write_fault = Some(fault);
                disk.retry_at = Some(tokio::time::Instant::now() + disk.retry_backoff);
                disk.retry_backoff = (disk.retry_backoff * 2).min(RETRY_MAX);
            }
        }
    }
    disk.publish();
}

/// Answers a request with `error` instead of running it.
fn refuse<T>(reply: Reply<T>, error: Error) {
    let _ = reply.send(Err(error));
}

fn handle(core: &mut Core, cmd: Command, disk: &mut Disk, limits: &Settings) {
    let now = now_ms();
    // While the store is in trouble, requests that would store new work are
    // refused before they touch anything, and so are chain reads: their
    // answer would wait for a durable round like every effect.
    let cmd = match (disk.fault(), cmd) {
        (None, cmd) => cmd,
        (Some(f), Command::Get(_, r)) => return refuse(r, Error::unreadable(f)),
        (Some(f), Command::StepResult(_, _, r)) => return refuse(r, Error::unreadable(f)),
        (Some(f), Command::Inspect(_, r)) => return refuse(r, Error::unreadable(f)),
        (Some(f), Command::Watch(_, _, r)) => return refuse(r, Error::unreadable(f)),
        (Some(f), Command::Submit(_, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::SubmitMany(_, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::Cancel(_, _, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::Requeue(_, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::Pause(_, _, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::Purge(_, _, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::SetLimit(_, _, r)) => return refuse(r, Error::refused(f)),
        (Some(f), Command::Drain(_, r)) => return refuse(r, Error::refused(f)),
        (Some(_), cmd) => cmd,
    };
    match cmd {
        Command::Submit(spec, reply) => core.submit(spec, reply, now),
        Command::SubmitMany(specs, reply) => core.submit_many(specs, reply, now),
        Command::Get(id, reply) => core.get(&id, reply),
        Command::StepResult(id, task_id, reply) => core.step_result(&id, &task_id, reply),
        Command::Inspect(id, reply) => core.inspect(&id, reply),
        Command::Watch(id, tx, reply) => {
            // Counted only at the limit: pruning closed streams walks them all.
            if core.watch_count() >= limits.max_watches {
                let _ = reply.send(Err(Error::Exhausted(format!(
                    "too many WatchChain streams open: the limit is {} (--max-watches)",
                    limits.max_watches
                ))));
                return;
            }
            core.watch(&id, tx, reply)
        }
        Command::Cancel(id, reason, reply) => core.cancel(&id, reason, reply, now),
        Command::Connect(hello, tx, reply) => {
            if core.worker_count() >= limits.max_workers {
                let _ = reply.send(Err(Error::Exhausted(format!(
                    "too many workers connected: the limit is {} (--max-workers)",
                    limits.max_workers
                ))));
                return;
            }
            let id = core.connect(hello, tx, now);
            let _ = reply.send(Ok(id));
        }
        Command::FromWorker(id, msg) => core.on_worker_message(&id, msg, now),
        Command::Disconnected(id) => core.worker_gone(&id, false, now),
        Command::Queues(reply) => {
            let _ = reply.send(core.queue_stats(now));
        }
        Command::Workers(reply) => {
            let _ = reply.send(core.worker_stats());
        }
        Command::Throttles(reply) => {
            let _ = reply.send(core.throttle_info());
        }
        Command::SetLimit(identity, limit, reply) => core.set_limit(identity, limit, reply, now),
        Command::Pause(queue, paused, reply) => core.pause_queue(&queue, paused, reply, now),
        Command::Purge(queue, reason, reply) => core.purge_queue(&queue, &reason, reply, now),
        Command::Requeue(id, reply) => core.requeue(&id, reply, now),
        Command::Drain(worker, reply) => core.drain_workers(&worker, reply),
        Command::Snapshot(reply) => {
            let _ = reply.send(Snapshot {
                queues: core.queue_stats(now),
                throttles: core.throttle_info(),
                workers: core.worker_stats(),
            });
        }
    }
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn query<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// Stores a chain and schedules it; returns once it is durable.
    ///
    /// # Errors
    /// [`Error::Store`] when the idempotency index cannot be read,
    /// [`Error::ShuttingDown`] when the scheduler stopped.
    pub async fn submit(&self, spec: ChainSpec) -> Result<Submitted, Error> {
        self.ask(|r| Command::Submit(spec, r)).await
    }

    /// Stores a batch of chains with one commit, all or none; returns once
    /// they are durable, with one answer per chain in order.
    ///
    /// # Errors
    /// Those of [`submit`](Self::submit), for the first chain that could
    /// not be admitted (its index in the message); then nothing is stored.
    pub async fn submit_many(&self, specs: Vec<ChainSpec>) -> Result<Vec<Submitted>, Error> {
        self.ask(|r| Command::SubmitMany(specs, r)).await
    }

    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn get(&self, chain_id: String) -> Result<ChainRecord, Error> {
        self.ask(|r| Command::Get(chain_id, r)).await
    }

    /// The result of one succeeded step of a chain.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain or step,
    /// [`Error::Conflict`] for a step that has not succeeded.
    pub async fn step_result(&self, chain_id: String, task_id: String) -> Result<String, Error> {
        self.ask(|r| Command::StepResult(chain_id, task_id, r))
            .await
    }

    /// The chain, with its steps that wait for a task name no connected
    /// worker runs in their queue.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn inspect(&self, chain_id: String) -> Result<Inspected, Error> {
        self.ask(|r| Command::Inspect(chain_id, r)).await
    }

    /// Subscribes to a chain's events; the first is a snapshot, and the
    /// feed ends after the event that ends the chain, or with
    /// [`watchers::FellBehind`] once more than `budget` bytes of events
    /// wait for the reader.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn watch(&self, chain_id: String, budget: usize) -> Result<watchers::Feed, Error> {
        let (tx, feed) = watchers::channel(budget, self.metrics.watch_bytes.clone());
        self.ask(|r| Command::Watch(chain_id, tx, r)).await?;
        Ok(feed)
    }

    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn cancel(&self, chain_id: String, reason: String) -> Result<ChainState, Error> {
        self.ask(|r| Command::Cancel(chain_id, reason, r)).await
    }

    /// Registers a worker stream; returns its worker id. Messages for the
    /// worker (Welcome first) arrive on `tx`.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn connect(
        &self,
        hello: WorkerHello,
        tx: mpsc::Sender<ToWorker>,
    ) -> Result<String, Error> {
        self.ask(|r| Command::Connect(hello, tx, r)).await
    }

    /// Forwards a worker's message.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn from_worker(&self, worker_id: String, msg: FromWorker) -> Result<(), Error> {
        self.tx
            .send(Command::FromWorker(worker_id, msg))
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// The worker's stream broke (no Goodbye).
    pub async fn disconnected(&self, worker_id: String) {
        let _ = self.tx.send(Command::Disconnected(worker_id)).await;
    }

    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn queues(&self) -> Result<Vec<QueueStats>, Error> {
        self.query(Command::Queues).await
    }

    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn workers(&self) -> Result<Vec<WorkerStats>, Error> {
        self.query(Command::Workers).await
    }

    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn throttles(&self) -> Result<Vec<ThrottleStats>, Error> {
        self.query(Command::Throttles).await
    }

    /// Sets or clears an identity's admin limit; returns once it is
    /// durable.
    ///
    /// # Errors
    /// [`Error::Exhausted`] or [`Error::Unavailable`] while the store is in
    /// trouble (nothing changed), [`Error::ShuttingDown`].
    pub async fn set_limit(
        &self,
        identity: Identity,
        limit: Option<u32>,
    ) -> Result<Vec<ThrottleStats>, Error> {
        self.ask(|r| Command::SetLimit(identity, limit, r)).await
    }

    /// Pauses (`true`) or resumes (`false`) dispatch from a queue; stored,
    /// so it survives a restart. Returns the queue's counts.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn pause_queue(&self, queue: String, paused: bool) -> Result<QueueStats, Error> {
        self.ask(|r| Command::Pause(queue, paused, r)).await
    }

    /// Cancels the chain of every READY task of `queue`; returns their ids.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn purge_queue(&self, queue: String, reason: String) -> Result<Vec<String>, Error> {
        self.ask(|r| Command::Purge(queue, reason, r)).await
    }

    /// Submits a failed chain again as a new chain; returns the new id once
    /// both records are durable.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] (not failed, or requeued
    /// already), [`Error::Exists`] (its unique key is in use).
    pub async fn requeue(&self, chain_id: String) -> Result<String, Error> {
        self.ask(|r| Command::Requeue(chain_id, r)).await
    }

    /// Marks the workers named `worker` (or with that id) draining; returns
    /// them.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no connected worker matches.
    pub async fn drain_workers(&self, worker: String) -> Result<Vec<WorkerStats>, Error> {
        self.ask(|r| Command::Drain(worker, r)).await
    }

    /// Queues, throttles and workers at one instant, for the metrics.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.query(Command::Snapshot).await
    }

    /// Failed chains not yet requeued, newest first, read from the store
    /// (committed records; no scheduler round).
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be read.
    pub async fn dead_chains(
        &self,
        after: Option<DeadCursor>,
        limit: usize,
    ) -> Result<DeadPage, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.dead_chains(after.as_ref(), limit))
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// The counters and histograms the scheduler updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store's trouble while it lasts (`None` when it is well): new
    /// work is refused meanwhile. For the health service.
    pub fn store_fault(&self) -> watch::Receiver<Option<Fault>> {
        self.store_fault.clone()
    }
}

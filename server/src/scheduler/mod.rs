//! The scheduler: the one place that decides what runs next.
//!
//! Three parts, each with one job:
//! - `core::Core`, the **machine**: every decision (what to store, whom
//!   to assign what, what to answer), made from its inputs and the time it
//!   is given. It holds no channel and no store handle, and reads no clock;
//!   what it decides leaves as plain data (`core::Output`) at the end of a
//!   round.
//! - `driver::Driver`, the **driver**: the oneshot of each request, the
//!   stream of each worker and watcher, and the store's read side, lent to
//!   the machine with each input (`store::Lookup`). It turns commands into
//!   inputs of the machine and outputs into sends; a send that fails comes
//!   back to the machine as an input.
//! - the **loop** below (`run_loop`): one task that owns a driver, takes
//!   whatever commands are waiting (up to a bound), applies them and
//!   dispatches ready work: a round. Everybody else holds a cheap
//!   [`Handle`] and sends it commands over a channel.
//!
//! Each round's writes go to the [`Committer`],
//! the one owner of durability (group commit, sequence numbers, disk
//! trouble; see `store::committer`), which answers with the number of the
//! batch that will hold them. The outputs of a round (replies,
//! assignments, acks, events) wait in an outbox until the committer reports
//! that batch durable; the one exception is an *early* assignment, which
//! relies on nothing that is not durable yet and leaves at the end of its
//! round (see `core::Unsettled`).
//!
//! Disk trouble (a full disk, a failing write or sync) puts the scheduler in
//! a degraded mode instead of losing or faking anything:
//! - requests that would store new work or change what runs (submit,
//!   cancel, requeue, pause, purge, a throttle limit, a drain) are refused
//!   at once, with [`Error::Exhausted`] when the disk is
//!   full and [`Error::Unavailable`] otherwise, and change nothing;
//! - work already accepted goes on in memory, but its outputs (replies,
//!   assignments, acks, events) stay held, as always, until their batch is
//!   durable: nobody is told "done" or "stored" before it is;
//! - a write that failed stays staged and is retried; the committer's
//!   flusher repairs the store
//!   ([`Shared::repair`](crate::store::Shared::repair): reopen, replay what
//!   was not durable, flush) with backoff until it succeeds; then the held
//!   outputs leave and new work is taken again.
//!
//! [`Handle::store_fault`] tells the health service while this lasts.

mod clock;
mod core;
mod driver;
pub mod queues;
pub mod rate;
pub mod schedules;
#[cfg(test)]
mod sim;
pub mod throttle;
pub mod watchers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::core::Dedup;
use self::core::{Core, Output, RoundEnd};
use self::driver::Driver;
pub use self::throttle::{Holder, HolderInfo, SlotInfo};
use crate::domain::*;
use crate::metrics::{Metrics, Snapshot};
use crate::store::{Committer, Fault, ListCursor, ListPage, Listing, Recovered, Shared};

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
    pub chain_id: ChainId,
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
    /// Ready tasks of each priority, as submitted.
    pub ready_by_priority: std::collections::BTreeMap<i32, u64>,
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
    pub worker_id: WorkerId,
    pub name: String,
    pub queues: Vec<String>,
    pub task_names: Vec<String>,
    pub concurrency: u32,
    pub prefetch: u32,
    pub in_flight: Vec<TaskRef>,
    pub draining: bool,
    pub connected_ms: UnixMs,
}

/// A periodic schedule and its next fire times, for inspection.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleView {
    pub record: ScheduleRecord,
    /// The next fire times (a few); empty while paused.
    pub next_fires: Vec<UnixMs>,
}

/// A throttle identity with the chain of each holder and of each of its
/// first waiters (in their orders), for inspection.
pub type ThrottleStats = (SlotInfo, Vec<Option<ChainId>>, Vec<Option<ChainId>>);

type Reply<T> = oneshot::Sender<Result<T, Error>>;

enum Command {
    Submit(ChainSpec, Reply<Submitted>),
    SubmitMany(Vec<ChainSpec>, Reply<Vec<Submitted>>),
    Get(ChainId, Reply<ChainRecord>),
    /// (chain id, task id) of a step whose result to read.
    StepResult(ChainId, TaskId, Reply<String>),
    Inspect(ChainId, Reply<Inspected>),
    Watch(ChainId, watchers::Sender, Reply<()>),
    Cancel(ChainId, String, Reply<ChainState>),
    Connect(WorkerHello, mpsc::Sender<ToWorker>, Reply<WorkerId>),
    FromWorker(WorkerId, FromWorker),
    Disconnected(WorkerId),
    Queues(oneshot::Sender<Vec<QueueStats>>),
    Workers(oneshot::Sender<Vec<WorkerStats>>),
    Throttles(oneshot::Sender<Vec<ThrottleStats>>),
    SetLimit(Identity, Option<u32>, Reply<Vec<ThrottleStats>>),
    SetRate(Identity, Option<rate::Rate>, Reply<Vec<ThrottleStats>>),
    /// Pause (true) or resume (false) a queue.
    Pause(String, bool, Reply<QueueStats>),
    /// Cancel the chains of a queue's READY tasks (queue, reason).
    Purge(String, String, Reply<Vec<ChainId>>),
    Requeue(ChainId, Reply<ChainId>),
    Drain(String, Reply<Vec<WorkerStats>>),
    PutSchedule(ScheduleRecord, Reply<ScheduleView>),
    Schedules(oneshot::Sender<Vec<ScheduleView>>),
    /// Pause (true) or resume (false) a schedule.
    PauseSchedule(String, bool, Reply<ScheduleView>),
    RemoveSchedule(String, Reply<()>),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Settings of the scheduler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lease length of an assignment.
    pub lease: Duration,
    /// When false, outputs leave as soon as their batch is applied, without
    /// waiting for a flush (benchmarks only: acknowledged work may be lost).
    pub durable: bool,
    /// Most worker streams connected at once.
    pub max_workers: usize,
    /// Most WatchChain streams open at once.
    pub max_watches: usize,
    /// How long an ended chain is kept; zero keeps them forever.
    pub retention: Duration,
    /// The wait that raises a ready task one priority; zero: no aging.
    pub priority_aging: Duration,
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
    let retention_ms = u64::try_from(settings.retention.as_millis()).unwrap_or(u64::MAX);
    let mut core = Core::recover(&store, lease_ms, retention_ms, recovered, now_ms());
    core.set_priority_aging(u64::try_from(settings.priority_aging.as_millis()).unwrap_or(u64::MAX));
    let metrics = core.metrics.clone();
    let committer = Committer::start(store.clone(), settings.durable, metrics.clone());
    let store_fault = committer.faults();
    let driver = Driver::new(core, store.clone());
    let join = tokio::spawn(run_loop(driver, rx, committer, settings, shutdown));
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

async fn run_loop(
    mut driver: Driver,
    mut rx: mpsc::Receiver<Command>,
    mut committer: Committer,
    limits: Settings,
    shutdown: CancellationToken,
) {
    let mut outbox: VecDeque<(u64, Output)> = VecDeque::new();
    let mut awake = clock::Awake::start(std::time::Instant::now());
    // Recovery may have changed records (re-queued work): commit it first.
    round_end(&mut driver, &mut outbox, &mut committer);
    loop {
        // Never asleep longer than a tick, so that a longer gap between two
        // readings of the clock means the broker did not run (see `clock`).
        let mut sleep = match driver.core.next_timer() {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
            None => clock::TICK,
        }
        .min(clock::TICK);
        if let Some(at) = committer.wake_at() {
            sleep = sleep.min(at.saturating_duration_since(tokio::time::Instant::now()));
        }
        // When the round began: after the wait, before its commands.
        let woke: std::time::Instant;
        tokio::select! {
            biased;
            Some(report) = committer.report() => {
                woke = std::time::Instant::now();
                committer.heard(report);
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                woke = std::time::Instant::now();
                driver.core.set_awake(awake.observe(std::time::Instant::now()));
                let fault = committer.fault();
                driver.handle(cmd, fault, &limits, now_ms());
                for _ in 1..ROUND {
                    match rx.try_recv() {
                        Ok(cmd) => driver.handle(cmd, fault, &limits, now_ms()),
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep(sleep) => woke = std::time::Instant::now(),
            () = shutdown.cancelled() => break,
        }
        committer.catch_up();
        driver
            .core
            .set_awake(awake.observe(std::time::Instant::now()));
        driver.fire_timers(now_ms());
        driver.follow_up(now_ms());
        // Not while the store is in trouble: removals would only wait.
        if committer.fault().is_none() {
            driver.sweep(now_ms());
        }
        round_end(&mut driver, &mut outbox, &mut committer);
        driver
            .core
            .metrics
            .scheduler_round
            .observe(woke.elapsed().as_secs_f64());
        while outbox
            .front()
            .is_some_and(|(seq, _)| *seq <= committer.durable())
        {
            let (_, output) = outbox.pop_front().expect("checked");
            driver.deliver(output, now_ms());
        }
    }
    // Drain: what the rounds wrote is applied and flushed before the loop
    // ends, so a clean shutdown loses nothing even in non-durable mode.
    drop(rx);
    committer.close().await;
    tracing::info!("scheduler stopped");
}

/// Ends a round: dispatches ready work, stages the round's writes with the
/// committer, lets early assignments leave and holds the other outputs
/// until the batch that holds their writes is durable.
fn round_end(driver: &mut Driver, outbox: &mut VecDeque<(u64, Output)>, committer: &mut Committer) {
    driver.dispatch(now_ms());
    let in_trouble = committer.fault().is_some();
    let end = driver.core.end_round();
    let awaited = end.awaited(in_trouble);
    let RoundEnd {
        writes,
        effects,
        early,
        closed,
    } = end;
    driver.close(closed);
    let seq = committer.stage(writes, awaited);
    // Early assignments leave now (a later flush covers their round),
    // unless the store is in trouble: then they wait like everything else.
    if !in_trouble {
        for output in early {
            driver.deliver(output, now_ms());
        }
    } else {
        outbox.extend(early.into_iter().map(|e| (seq, e)));
    }
    outbox.extend(effects.into_iter().map(|e| (seq, e)));
    committer.commit();
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
    pub async fn get(&self, chain_id: ChainId) -> Result<ChainRecord, Error> {
        self.ask(|r| Command::Get(chain_id, r)).await
    }

    /// The result of one succeeded step of a chain.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain or step,
    /// [`Error::Conflict`] for a step that has not succeeded.
    pub async fn step_result(&self, chain_id: ChainId, task_id: TaskId) -> Result<String, Error> {
        self.ask(|r| Command::StepResult(chain_id, task_id, r))
            .await
    }

    /// The chain, with its steps that wait for a task name no connected
    /// worker runs in their queue.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn inspect(&self, chain_id: ChainId) -> Result<Inspected, Error> {
        self.ask(|r| Command::Inspect(chain_id, r)).await
    }

    /// Subscribes to a chain's events; the first is a snapshot, and the
    /// feed ends after the event that ends the chain, or with
    /// [`watchers::FellBehind`] once more than `budget` bytes of events
    /// wait for the reader.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn watch(&self, chain_id: ChainId, budget: usize) -> Result<watchers::Feed, Error> {
        let (tx, feed) = watchers::channel(budget, self.metrics.watch_bytes.clone());
        self.ask(|r| Command::Watch(chain_id, tx, r)).await?;
        Ok(feed)
    }

    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn cancel(&self, chain_id: ChainId, reason: String) -> Result<ChainState, Error> {
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
    ) -> Result<WorkerId, Error> {
        self.ask(|r| Command::Connect(hello, tx, r)).await
    }

    /// Forwards a worker's message.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn from_worker(&self, worker_id: WorkerId, msg: FromWorker) -> Result<(), Error> {
        self.tx
            .send(Command::FromWorker(worker_id, msg))
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// The worker's stream broke (no Goodbye).
    pub async fn disconnected(&self, worker_id: WorkerId) {
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

    /// Sets or clears an identity's admin rate; returns once it is durable.
    ///
    /// # Errors
    /// As [`Handle::set_limit`].
    pub async fn set_rate(
        &self,
        identity: Identity,
        rate: Option<rate::Rate>,
    ) -> Result<Vec<ThrottleStats>, Error> {
        self.ask(|r| Command::SetRate(identity, rate, r)).await
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
    pub async fn purge_queue(&self, queue: String, reason: String) -> Result<Vec<ChainId>, Error> {
        self.ask(|r| Command::Purge(queue, reason, r)).await
    }

    /// Submits a failed chain again as a new chain; returns the new id once
    /// both records are durable.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] (not failed, or requeued
    /// already), [`Error::Exists`] (its unique key is in use).
    pub async fn requeue(&self, chain_id: ChainId) -> Result<ChainId, Error> {
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

    /// Adds a schedule or replaces the one of the same name; returns once
    /// it is durable.
    ///
    /// # Errors
    /// [`Error::Exhausted`] or [`Error::Unavailable`] while the store is in
    /// trouble, [`Error::ShuttingDown`].
    pub async fn put_schedule(&self, record: ScheduleRecord) -> Result<ScheduleView, Error> {
        self.ask(|r| Command::PutSchedule(record, r)).await
    }

    /// Every schedule, by name.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, Error> {
        self.query(Command::Schedules).await
    }

    /// Pauses (`true`) or resumes a schedule.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown name.
    pub async fn pause_schedule(&self, name: String, paused: bool) -> Result<ScheduleView, Error> {
        self.ask(|r| Command::PauseSchedule(name, paused, r)).await
    }

    /// Removes a schedule.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown name.
    pub async fn remove_schedule(&self, name: String) -> Result<(), Error> {
        self.ask(|r| Command::RemoveSchedule(name, r)).await
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
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        self.chains(Listing::Failed, None, after, limit).await
    }

    /// The chains of a listing, newest first, read from the store
    /// (committed records; no scheduler round; see `Store::chains`, also
    /// for `task`).
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be read.
    pub async fn chains(
        &self,
        listing: Listing,
        task: Option<String>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.chains(listing, task.as_deref(), after.as_ref(), limit)
        })
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

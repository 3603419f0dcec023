//! The scheduler: the one place that decides what runs next.
//!
//! One task owns the state ([`core::Core`]); everybody else holds a cheap
//! [`Handle`] and sends it commands over a channel, with a oneshot for the
//! reply. The loop takes whatever commands are waiting (up to a bound),
//! applies them, dispatches ready work, and commits the whole round as one
//! atomic batch. A second task, the flusher, makes batches durable (group
//! commit): while it flushes, further rounds pile up and the next flush
//! covers them all. Effects of a round (replies, assignments, acks, events)
//! are held in an outbox until the flusher reports their batch durable.

mod core;
pub mod queues;
pub mod throttle;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::core::Dedup;
use self::core::{Core, Effect};
pub use self::throttle::{Holder, HolderInfo, SlotInfo};
use crate::domain::*;
use crate::store::{Recovered, Store};

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
}

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
    pub in_flight: Vec<TaskRef>,
    pub draining: bool,
    pub connected_ms: UnixMs,
}

/// A throttle identity with the chain of each holder, for inspection.
pub type ThrottleStats = (SlotInfo, Vec<String>);

type Reply<T> = oneshot::Sender<Result<T, Error>>;

enum Command {
    Submit(ChainSpec, Reply<Submitted>),
    Get(String, Reply<ChainRecord>),
    Watch(String, mpsc::Sender<ChainEvent>, Reply<()>),
    Cancel(String, String, Reply<ChainState>),
    Connect(WorkerHello, mpsc::Sender<ToWorker>, oneshot::Sender<String>),
    FromWorker(String, FromWorker),
    Disconnected(String),
    Queues(oneshot::Sender<Vec<QueueStats>>),
    Workers(oneshot::Sender<Vec<WorkerStats>>),
    Throttles(oneshot::Sender<Vec<ThrottleStats>>),
    SetLimit(Identity, Option<u32>, oneshot::Sender<Vec<ThrottleStats>>),
    Durable(u64),
}

/// Settings of the scheduler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lease length of an assignment.
    pub lease: Duration,
    /// When false, effects leave as soon as their batch is applied, without
    /// waiting for a flush (benchmarks only: acknowledged work may be lost).
    pub durable: bool,
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

/// Commands applied per round before one commit.
const ROUND: usize = 512;

/// Starts the scheduler over a recovered store. Returns its handle and the
/// join handle of its loop, which ends when `shutdown` is cancelled (after a
/// last commit and flush) or every handle is dropped.
pub fn start(
    store: Store,
    recovered: Recovered,
    settings: Settings,
    shutdown: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64 * 1024);
    let lease_ms = u64::try_from(settings.lease.as_millis()).unwrap_or(u64::MAX);
    let core = Core::recover(store.clone(), lease_ms, recovered, now_ms());
    let (flush_tx, flush_rx) = watch::channel(0u64);
    if settings.durable {
        tokio::spawn(flusher(store.clone(), flush_rx, tx.clone()));
    }
    let join = tokio::spawn(run_loop(
        core,
        rx,
        flush_tx,
        settings.durable,
        store,
        shutdown,
    ));
    (Handle { tx }, join)
}

/// The flusher: flushes whenever new batches were applied and reports the
/// sequence number the flush covered. Failures are retried with backoff;
/// nothing waiting on them is released meanwhile.
async fn flusher(store: Store, mut wanted: watch::Receiver<u64>, tx: mpsc::Sender<Command>) {
    let mut backoff = Duration::from_millis(10);
    while wanted.changed().await.is_ok() {
        let target = *wanted.borrow_and_update();
        loop {
            match store.flush().await {
                Ok(()) => {
                    backoff = Duration::from_millis(10);
                    break;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "store flush failed; acknowledgments wait until it succeeds");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        if tx.send(Command::Durable(target)).await.is_err() {
            return;
        }
    }
}

async fn run_loop(
    mut core: Core,
    mut rx: mpsc::Receiver<Command>,
    flush_tx: watch::Sender<u64>,
    durable: bool,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut outbox: VecDeque<(u64, Effect)> = VecDeque::new();
    let mut durable_seq = 0u64;
    // Recovery may have changed records (re-queued work): commit it first.
    round_end(&mut core, &mut outbox, &flush_tx, durable, &mut durable_seq);
    loop {
        let sleep = match core.next_timer() {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                handle(&mut core, cmd, &mut durable_seq);
                for _ in 1..ROUND {
                    match rx.try_recv() {
                        Ok(cmd) => handle(&mut core, cmd, &mut durable_seq),
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep(sleep) => {}
            () = shutdown.cancelled() => break,
        }
        core.fire_timers(now_ms());
        round_end(&mut core, &mut outbox, &flush_tx, durable, &mut durable_seq);
        while outbox.front().is_some_and(|(seq, _)| *seq <= durable_seq) {
            let (_, effect) = outbox.pop_front().expect("checked");
            core.deliver(effect);
        }
    }
    // Drain: what was applied is flushed before the loop ends, so a clean
    // shutdown loses nothing even in non-durable mode.
    if let Err(e) = store.flush().await {
        tracing::error!(cause = %e, "final store flush failed");
    }
    tracing::info!("scheduler stopped");
}

fn round_end(
    core: &mut Core,
    outbox: &mut VecDeque<(u64, Effect)>,
    flush_tx: &watch::Sender<u64>,
    durable: bool,
    durable_seq: &mut u64,
) {
    core.dispatch(now_ms());
    match core.commit() {
        Ok((seq, effects)) => {
            outbox.extend(effects.into_iter().map(|e| (seq, e)));
            if durable {
                if seq > *flush_tx.borrow() {
                    flush_tx.send_replace(seq);
                }
            } else {
                *durable_seq = seq;
            }
        }
        Err(e) => {
            // The batch and its effects stay pending; the next round retries.
            tracing::error!(cause = %e, "store write failed; retrying with the next round");
        }
    }
}

fn handle(core: &mut Core, cmd: Command, durable_seq: &mut u64) {
    let now = now_ms();
    match cmd {
        Command::Submit(spec, reply) => core.submit(spec, reply, now),
        Command::Get(id, reply) => core.get(&id, reply),
        Command::Watch(id, tx, reply) => core.watch(&id, tx, reply),
        Command::Cancel(id, reason, reply) => core.cancel(&id, reason, reply, now),
        Command::Connect(hello, tx, reply) => {
            let id = core.connect(hello, tx, now);
            let _ = reply.send(id);
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
        Command::SetLimit(identity, limit, reply) => {
            core.set_limit(identity, limit, now);
            let _ = reply.send(core.throttle_info());
        }
        Command::Durable(seq) => *durable_seq = (*durable_seq).max(seq),
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

    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn get(&self, chain_id: String) -> Result<ChainRecord, Error> {
        self.ask(|r| Command::Get(chain_id, r)).await
    }

    /// Subscribes to a chain's events; the first is a snapshot, and the
    /// channel closes after the event that ends the chain.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown chain.
    pub async fn watch(&self, chain_id: String) -> Result<mpsc::Receiver<ChainEvent>, Error> {
        let (tx, rx) = mpsc::channel(1024);
        self.ask(|r| Command::Watch(chain_id, tx, r)).await?;
        Ok(rx)
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
        self.query(|r| Command::Connect(hello, tx, r)).await
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

    /// Sets or clears an identity's admin limit.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`].
    pub async fn set_limit(
        &self,
        identity: Identity,
        limit: Option<u32>,
    ) -> Result<Vec<ThrottleStats>, Error> {
        self.query(|r| Command::SetLimit(identity, limit, r)).await
    }
}

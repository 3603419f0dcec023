//! The one owner of durability: group commit, and the store's trouble.
//!
//! The scheduler hands the writes of each round to the [`Committer`]
//! ([`Committer::stage`]) and learns the number of the batch that will
//! hold them; it holds the round's effects (replies, assignments, events)
//! until [`Committer::durable`] reaches that number. Everything about how
//! writes become durable lives here:
//!
//! - **Group commit.** When the flusher is free, every write staged since
//!   its last flush is applied as one atomic batch and handed to it; while
//!   it flushes, further rounds' writes gather in the staged batch (a chain
//!   written in several rounds is written once). sled's `apply_batch`
//!   seals its log buffer twice and hands it to an I/O thread, so one batch
//!   per flush costs far less than one per round. The flusher reports on a
//!   channel of its own, so its word never waits behind queued commands.
//! - **Sequence numbers.** [`Shared`] counts the batches applied (and
//!   keeps those not yet durable in its journal); the committer knows the
//!   last one the flusher was handed and the last one it made durable.
//! - **Disk trouble.** A write that fails stays staged and is retried with
//!   backoff ([`Committer::retry_at`]); a flush that fails turns the
//!   flusher to repairing the store ([`Shared::repair`]: reopen, replay
//!   what was not durable, flush), with backoff, until that succeeds.
//!   Meanwhile [`Committer::fault`] says what is wrong, so the scheduler
//!   refuses new work, and the health service is told
//!   ([`Committer::faults`]).
//! - **Shutdown.** [`Committer::close`] stops the flusher, applies what is
//!   staged and flushes it (repairing once if it must), so a clean stop
//!   loses nothing even without durable acknowledgment.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Batch, Fault, Shared};
use crate::metrics::Metrics;

/// First and last pause before a failed write is retried.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// First and last pause before the flusher repairs the store again.
const REPAIR_MIN: Duration = Duration::from_millis(50);
const REPAIR_MAX: Duration = Duration::from_secs(2);

/// What the flusher tells the committer: the committer hands over the next
/// batch when it hears that the last one is durable.
pub enum Flushed {
    /// Every batch up to this number is durable.
    Durable(u64),
    /// A flush or a repair failed.
    Failed(Fault),
}

/// Stages writes, applies them, has them flushed, and says what is durable
/// (see the module doc).
pub struct Committer {
    store: Shared,
    /// Whether effects wait for a flush. Without (benchmarks only), every
    /// batch counts as durable once applied, and the flusher runs only to
    /// repair the store after a failure.
    durable: bool,
    /// Every batch up to this number is durable.
    durable_seq: u64,
    /// The last batch handed to the flusher: it is busy until that one is
    /// durable.
    flushing: u64,
    /// Set while applying the staged writes fails; the next write that
    /// succeeds clears it.
    write_fault: Option<Fault>,
    /// Set while the flusher fails to flush or repair; its next success
    /// clears it.
    flush_fault: Option<Fault>,
    /// When to retry a failed write even if nothing else happens.
    retry_at: Option<Instant>,
    retry_backoff: Duration,
    /// What [`Committer::faults`] shows.
    published: watch::Sender<Option<Fault>>,
    /// Wakes the flusher with the number of the last batch applied.
    wanted: watch::Sender<u64>,
    /// What the flusher reports.
    reports: mpsc::UnboundedReceiver<Flushed>,
    /// The flusher task, joined by [`Committer::close`].
    flusher: tokio::task::JoinHandle<()>,
}

impl Committer {
    /// Starts the flusher of `store`. `durable`: whether effects wait for a
    /// flush (see [`Committer::durable`]).
    pub fn start(store: Shared, durable: bool, metrics: Arc<Metrics>) -> Self {
        // Without durable acknowledgment nothing waits for a flush, so
        // nothing needs replaying after a repair either.
        store.keep_journal(durable);
        let (wanted, wanted_rx) = watch::channel(0u64);
        let (report_tx, reports) = mpsc::unbounded_channel();
        // The flusher also repairs the store after a failure, so it runs in
        // both modes; without durability it is woken only by failures.
        let flusher = tokio::spawn(flusher(store.clone(), wanted_rx, report_tx, metrics));
        let (published, _) = watch::channel(None);
        Committer {
            store,
            durable,
            durable_seq: 0,
            flushing: 0,
            write_fault: None,
            flush_fault: None,
            retry_at: None,
            retry_backoff: RETRY_MIN,
            published,
            wanted,
            reports,
            flusher,
        }
    }

    /// Hands over a round's writes (reads of the store see them at once);
    /// returns the number of the batch that will hold them, and every
    /// write staged before them: what the round's effects wait for.
    pub fn stage(&mut self, writes: Batch) -> u64 {
        self.store.stage_seq(writes)
    }

    /// Applies the staged writes as one batch when the flusher is free to
    /// make it durable at once (without durability, always), and hands it
    /// to the flusher. A write that fails stays staged: it is retried at
    /// [`retry_at`](Self::retry_at), or at the next commit.
    pub fn commit(&mut self) {
        if self.store.has_staged() && (!self.durable || self.flusher_idle()) {
            match self.store.apply_staged() {
                Ok(applied) => {
                    if self.durable {
                        self.flushing = applied;
                        self.wanted.send_replace(applied);
                    } else {
                        self.durable_seq = applied;
                    }
                    self.write_fault = None;
                    self.retry_at = None;
                    self.retry_backoff = RETRY_MIN;
                }
                Err(e) => {
                    let fault = e.fault();
                    if self.write_fault.is_none() {
                        tracing::error!(cause = %e, ?fault, "store write failed; retrying");
                    }
                    if self.flush_fault.is_none() {
                        // sled refuses every write after an I/O error until
                        // the store is reopened: let the flusher find out
                        // and repair.
                        self.wanted.send_modify(|_| {});
                    }
                    self.write_fault = Some(fault);
                    self.retry_at = Some(Instant::now() + self.retry_backoff);
                    self.retry_backoff = (self.retry_backoff * 2).min(RETRY_MAX);
                }
            }
        }
        self.publish();
    }

    /// Every batch up to this number is durable.
    pub fn durable(&self) -> u64 {
        self.durable_seq
    }

    /// The trouble in force: new work is refused while there is one. The
    /// flusher's word comes first: while it repairs, writes fail only
    /// because the store is closed, which says nothing of the disk.
    pub fn fault(&self) -> Option<Fault> {
        self.flush_fault.or(self.write_fault)
    }

    /// The store's trouble while it lasts (`None` when it is well), for the
    /// health service.
    pub fn faults(&self) -> watch::Receiver<Option<Fault>> {
        self.published.subscribe()
    }

    /// When to retry a write that failed, if one did.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The flusher's next report (for a `select!`; hand it to
    /// [`heard`](Self::heard)).
    pub async fn report(&mut self) -> Option<Flushed> {
        self.reports.recv().await
    }

    /// Takes in a report of the flusher, and any others already waiting.
    pub fn heard(&mut self, report: Flushed) {
        let mut next = Some(report);
        while let Some(report) = next {
            match report {
                Flushed::Durable(seq) => {
                    self.durable_seq = self.durable_seq.max(seq);
                    self.flush_fault = None;
                }
                Flushed::Failed(fault) => self.flush_fault = Some(fault),
            }
            next = self.reports.try_recv().ok();
        }
    }

    /// Takes in the reports already waiting, if any.
    pub fn catch_up(&mut self) {
        if let Ok(report) = self.reports.try_recv() {
            self.heard(report);
        }
    }

    /// Stops the flusher (it may be repairing), then applies what is staged
    /// and makes it durable, repairing the store once if it must.
    pub async fn close(self) {
        let Committer {
            store,
            wanted,
            flusher,
            ..
        } = self;
        drop(wanted);
        let _ = flusher.await;
        if let Err(e) = store.apply_staged() {
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
    }

    /// Whether the flusher would start on a new batch at once: it made the
    /// last one durable, and is not repairing the store.
    fn flusher_idle(&self) -> bool {
        self.durable_seq >= self.flushing && self.flush_fault.is_none()
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

/// The flusher: flushes whenever new batches were applied and reports the
/// sequence number the flush covered. After a failure it repairs the store
/// instead (reopen, replay, flush; a retried flush would prove nothing),
/// with backoff, until that succeeds; nothing waiting on the flush is
/// released meanwhile. Ends when the committer drops its end of `wanted`.
///
/// The backoff (50 ms doubling to 2 s) ends only with a flush of new
/// writes, not with a repair: a repair may succeed while the trouble goes
/// on (with no descriptor left, closing the store frees enough for it to
/// open again, and the staged write that failed fails again at once), and
/// the committer, which retries that write as soon as the store is
/// repaired, wakes the flusher again for every write that fails. So a pause
/// is never cut short by `wanted`, only by its end.
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

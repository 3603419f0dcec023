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
//! - **Company for writes nobody waits for.** A round whose effects only
//!   acknowledge outcomes to workers (a worker does not wait for those: it
//!   keeps each outcome to send again until it is acknowledged) is not
//!   committed on its own at once: its writes wait up to [`HOLD`] for a
//!   round somebody waits for (a submission, an assignment, a reply), and
//!   share its flush. Under a steady load of short tasks that is one flush
//!   per task instead of two (the submission's and the outcome's), so a
//!   submission finds the flusher busy half as often.
//! - **Sequence numbers.** [`Shared`] counts the batches applied (and
//!   keeps those not yet durable in its journal); the committer knows the
//!   last one the flusher was handed and the last one it made durable.
//! - **Disk trouble.** A write that fails stays staged and is retried with
//!   backoff ([`Committer::wake_at`]); a flush that fails turns the
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

/// How long writes that nobody waits for may wait for company (see the
/// module doc). Short enough that a worker hears its acknowledgments
/// promptly; longer than the gap between two submissions of a moderate
/// load (740 tasks/s: 1.35 ms), which is where the flush it saves counts.
pub const HOLD: Duration = Duration::from_millis(2);

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
    /// When the first of the writes staged now was staged.
    staged_since: Option<Instant>,
    /// Whether anybody waits for the writes staged now (see
    /// [`Committer::stage`]); if not, they wait up to [`HOLD`] for company.
    staged_awaited: bool,
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
            staged_since: None,
            staged_awaited: false,
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
    /// `awaited`: whether anybody waits for one of those effects. When
    /// nobody does, the writes may wait up to [`HOLD`] to share a flush
    /// (see the module doc); a round somebody waits for ends that wait for
    /// everything staged before it, even if it writes nothing itself.
    pub fn stage(&mut self, writes: Batch, awaited: bool) -> u64 {
        if !writes.is_empty() {
            self.staged_since.get_or_insert_with(Instant::now);
        }
        self.staged_awaited |= awaited;
        self.store.stage_seq(writes)
    }

    /// Applies the staged writes as one batch when the flusher is free to
    /// make it durable at once (without durability, always), and hands it
    /// to the flusher; unless nobody waits for them and they wait for
    /// company (see [`stage`](Self::stage)), until [`wake_at`](Self::wake_at)
    /// at the latest. A write that fails stays staged: it is retried at
    /// [`wake_at`](Self::wake_at), or at the next commit.
    pub fn commit(&mut self) {
        if !self.store.has_staged() {
            // Nothing waits for a commit (a round that wrote nothing).
            self.staged_awaited = false;
        } else if !self.durable || (self.flusher_idle() && self.hold_until().is_none()) {
            match self.store.apply_staged() {
                Ok(applied) => {
                    self.staged_since = None;
                    self.staged_awaited = false;
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

    /// When to call [`commit`](Self::commit) again even if nothing else
    /// happens: to retry a write that failed, or to end the wait of writes
    /// that nobody waits for.
    pub fn wake_at(&self) -> Option<Instant> {
        match (self.retry_at, self.hold_until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Until when the staged writes wait for company, if they still do:
    /// nobody waits for them, and they were staged less than [`HOLD`] ago.
    fn hold_until(&self) -> Option<Instant> {
        if !self.durable || self.staged_awaited {
            return None;
        }
        let until = self.staged_since? + HOLD;
        (Instant::now() < until).then_some(until)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::Place;

    /// A round's writes: one queue paused.
    fn writes(queue: &str) -> Batch {
        let mut batch = Batch::default();
        batch.put_paused(queue, true);
        batch
    }

    /// The committer's next report, taken in.
    async fn hear(committer: &mut Committer) {
        let report = tokio::time::timeout(Duration::from_secs(10), committer.report())
            .await
            .expect("the flusher reports")
            .expect("the flusher runs");
        committer.heard(report);
    }

    #[tokio::test]
    async fn writes_nobody_waits_for_share_the_next_awaited_flush_or_go_alone_after_the_hold() {
        let place = Place::Memory(Arc::default());
        let store = place.shared();
        let mut committer = Committer::start(store.clone(), true, Arc::default());

        // Two rounds nobody waits for: staged, not applied, for up to HOLD.
        let first = committer.stage(writes("a"), false);
        committer.commit();
        let second = committer.stage(writes("b"), false);
        committer.commit();
        assert_eq!(first, second, "both wait for the same batch");
        assert!(store.has_staged(), "held writes are not applied at once");
        let wake = committer.wake_at().expect("the hold's end is a wake-up");
        assert!(wake <= Instant::now() + HOLD);
        assert!(committer.durable() < first);

        // A round somebody waits for, even one that writes nothing, takes
        // them along at once.
        let awaited = committer.stage(Batch::default(), true);
        assert_eq!(awaited, first);
        committer.commit();
        assert!(!store.has_staged(), "applied with the awaited round");
        assert_eq!(committer.wake_at(), None);
        hear(&mut committer).await;
        assert!(committer.durable() >= first);

        // Alone, held writes go at the hold's end, not before.
        let started = Instant::now();
        let alone = committer.stage(writes("c"), false);
        committer.commit();
        assert!(store.has_staged());
        let wake = committer.wake_at().expect("a wake-up at the hold's end");
        tokio::time::sleep_until(wake).await;
        committer.commit();
        assert!(!store.has_staged(), "applied once the hold is over");
        assert!(started.elapsed() >= HOLD);
        hear(&mut committer).await;
        assert!(committer.durable() >= alone);
        committer.close().await;
    }
}

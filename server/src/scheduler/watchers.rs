//! A chain watcher's feed of events, bounded in bytes.
//!
//! Each event carries a whole copy of its chain, and a chain record may be
//! megabytes (large arguments and results). Bounding a watcher by events
//! alone let three watchers that never read, on one 1 MB chain that polls,
//! take the broker to 3 GB (issue 19, item 9). So:
//! - one event is made once and shared by all of its chain's watchers
//!   (`Arc<ChainEvent>`): N watchers cost one copy per event, not N;
//! - each watcher has a budget of bytes (the events sent to it and not yet
//!   taken by its stream; [`DEFAULT_BUDGET`] unless the broker is told
//!   otherwise). An event that would take it over is not sent: the watcher
//!   is dropped, and its stream ends with [`FellBehind`] (the edge makes that
//!   `RESOURCE_EXHAUSTED`), so the client learns why and can watch again
//!   for a fresh snapshot instead of waiting on a stream that skipped
//!   events. An event alone is always sent to a watcher holding nothing,
//!   so a watcher that keeps up sees every event however large.
//!
//! The bytes held by all watchers together are the
//! `baton_watch_buffered_bytes` gauge.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_stream::Stream;

use crate::domain::ChainEvent;

/// Bytes of events that may wait for one watcher: 16 MiB.
pub const DEFAULT_BUDGET: usize = 16 * 1024 * 1024;
/// Events that may wait for one watcher, whatever their size.
const EVENTS: usize = 1024;

/// A watcher dropped for falling behind, as its stream reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this watcher fell behind by {bytes} bytes ({events} events) of chain updates, over the \
     broker's budget of {budget} bytes per watcher; watch again to get a fresh snapshot"
)]
pub struct FellBehind {
    /// Bytes of events waiting for it, the one refused included.
    pub bytes: usize,
    /// Events waiting for it, the one refused included.
    pub events: usize,
    pub budget: usize,
}

/// What both ends of one watcher share.
#[derive(Debug)]
struct Shared {
    /// Bytes of events sent and not yet taken by the stream.
    held: AtomicUsize,
    /// Events sent and not yet taken.
    queued: AtomicUsize,
    /// Set (with `behind`) when the scheduler dropped this watcher.
    dropped: AtomicBool,
    behind: std::sync::Mutex<Option<FellBehind>>,
    budget: usize,
    /// The broker-wide total of `held`.
    gauge: Gauge,
}

impl Shared {
    fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc_by(gauge_value(bytes));
    }

    fn sub(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec_by(gauge_value(bytes));
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Makes the two ends of a watcher: the scheduler keeps the [`Sender`],
/// the edge streams the [`Feed`].
pub fn channel(budget: usize, gauge: Gauge) -> (Sender, Feed) {
    let (tx, rx) = mpsc::channel(EVENTS);
    let shared = Arc::new(Shared {
        held: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        dropped: AtomicBool::new(false),
        behind: std::sync::Mutex::new(None),
        budget,
        gauge,
    });
    (
        Sender {
            tx,
            shared: shared.clone(),
        },
        Feed {
            rx,
            shared,
            done: false,
        },
    )
}

/// The scheduler's end of one watcher.
#[derive(Clone, Debug)]
pub struct Sender {
    tx: mpsc::Sender<Arc<ChainEvent>>,
    shared: Arc<Shared>,
}

impl Sender {
    /// Sends `event` unless that takes the watcher over its budget (or its
    /// `EVENTS`). Returns false when the watcher is to be dropped: its
    /// stream went away, or it fell behind (its stream then ends with
    /// [`FellBehind`]).
    pub fn offer(&self, event: &Arc<ChainEvent>) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let bytes = event.bytes;
        // Only the scheduler adds, so what is held can only shrink between
        // this check and the send.
        let held = self.shared.held.load(Ordering::Acquire);
        let over = held > 0 && held.saturating_add(bytes) > self.shared.budget;
        if !over {
            self.shared.add(bytes);
            match self.tx.try_send(event.clone()) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.shared.sub(bytes);
                    return false;
                }
                Err(mpsc::error::TrySendError::Full(_)) => self.shared.sub(bytes),
            }
        }
        let behind = FellBehind {
            bytes: self
                .shared
                .held
                .load(Ordering::Acquire)
                .saturating_add(bytes),
            events: self.shared.queued.load(Ordering::Acquire).saturating_add(1),
            budget: self.shared.budget,
        };
        tracing::info!(
            bytes = behind.bytes,
            events = behind.events,
            budget = behind.budget,
            "a chain watcher fell behind; its stream is ended"
        );
        if let Ok(mut slot) = self.shared.behind.lock() {
            *slot = Some(behind);
        }
        self.shared.dropped.store(true, Ordering::Release);
        false
    }

    /// The stream went away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The edge's end of one watcher: the events in order, then the end of the
/// stream, or [`FellBehind`] once if the scheduler dropped the watcher.
/// Events still waiting when it fell behind are not sent: the client has
/// to watch again anyway, and they only cost memory.
#[derive(Debug)]
pub struct Feed {
    rx: mpsc::Receiver<Arc<ChainEvent>>,
    shared: Arc<Shared>,
    done: bool,
}

impl Feed {
    fn fell_behind(&self) -> Option<FellBehind> {
        if !self.shared.dropped.load(Ordering::Acquire) {
            return None;
        }
        self.shared.behind.lock().ok().and_then(|b| b.clone())
    }

    /// Bytes of events waiting in this feed.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }
}

impl Stream for Feed {
    type Item = Result<Arc<ChainEvent>, FellBehind>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(behind) = self.fell_behind() {
            self.done = true;
            return Poll::Ready(Some(Err(behind)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                self.shared.sub(event.bytes);
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => {
                self.done = true;
                // Dropped just before the channel closed: still say why.
                Poll::Ready(self.fell_behind().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Feed {
    /// Gives back what still waits here, so the gauge counts only live
    /// feeds.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(event) = self.rx.try_recv() {
            self.shared.sub(event.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChainRecord;
    use tokio_stream::StreamExt as _;

    fn event(payload: usize) -> Arc<ChainEvent> {
        let chain = ChainRecord {
            id: "x".repeat(payload),
            ..Default::default()
        };
        Arc::new(ChainEvent::new("step_succeeded", None, chain))
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_read_is_held_to_its_budget_and_told_why() {
        let gauge = Gauge::default();
        let (tx, mut feed) = channel(10_000, gauge.clone());
        let one = event(3_000);
        assert!(tx.offer(&one) && tx.offer(&one) && tx.offer(&one));
        assert_eq!(feed.held(), 3 * one.bytes);
        assert_eq!(gauge.get(), gauge_value(3 * one.bytes));

        // The fourth would go over: not sent, and the watcher is dropped.
        assert!(!tx.offer(&one));
        assert!(feed.held() <= 10_000);
        let Some(Err(behind)) = feed.next().await else {
            panic!("the feed must end with FellBehind");
        };
        assert_eq!(behind.events, 4);
        assert_eq!(behind.bytes, 4 * one.bytes);
        assert!(behind.to_string().contains("watch again"), "{behind}");
        assert!(feed.next().await.is_none());
        drop(feed);
        assert_eq!(gauge.get(), 0, "a dropped feed gives its bytes back");
    }

    #[tokio::test]
    async fn a_watcher_that_reads_sees_every_event_even_one_over_the_budget() {
        let (tx, mut feed) = channel(1_000, Gauge::default());
        for _ in 0..5 {
            let big = event(5_000);
            assert!(tx.offer(&big), "nothing is held: it goes");
            let got = feed.next().await.unwrap().unwrap();
            assert!(Arc::ptr_eq(&got, &big), "one copy, shared");
        }
        drop(tx);
        assert!(feed.next().await.is_none(), "a plain end: no error");
    }
}

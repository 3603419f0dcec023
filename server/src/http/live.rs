//! The overview feed: what the dashboard's Overview, Queues, Workers and
//! Throttles pages show live, and an hour of history for its charts.
//!
//! While the HTTP listener runs, a sampler asks the scheduler for a
//! snapshot every [`SAMPLE_EVERY`] (the call a metrics scrape makes: a
//! scheduler round, cheap) and reads the metrics counters. Each sample
//! keeps per-queue counts and the differences of the counters since the
//! sample before; [`HISTORY`] samples (an hour) are kept, in a bounded
//! ring, with at most [`MAX_QUEUES_KEPT`] queues each, so the memory is
//! bounded whatever the broker holds. Nobody watching costs one snapshot
//! per period.
//!
//! What the scheduler does not count yet, the feed cannot show: throughput
//! and latency are broker-wide (the counters are per task name, the
//! latency histogram global), not per queue.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State as Shared;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::State;
use super::caller::AdminCaller;
use super::error::ApiError;
use super::json;
use crate::domain::now_ms;

/// How often the sampler takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: an hour.
pub const HISTORY: usize = 1800;
/// Queues kept per sample of the history (the busiest, by ready +
/// running); the current state lists them all.
pub const MAX_QUEUES_KEPT: usize = 32;

/// One queue in one sample.
#[derive(Serialize, Debug, Clone)]
pub struct QueuePoint {
    pub name: String,
    pub ready: u64,
    pub running: u64,
    pub delayed: u64,
    pub throttled: u64,
    pub oldest_ready_age_ms: u64,
}

/// One sample: counts at `t` and what happened since the sample before.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Sample {
    /// When (unix ms).
    pub t: u64,
    /// Milliseconds since the sample before (0 for the first).
    pub span_ms: u64,
    pub queues: Vec<QueuePoint>,
    /// Assignments sent to workers since the sample before (runs started).
    pub started: u64,
    pub succeeded: u64,
    /// Steps that failed for good.
    pub failed: u64,
    pub retried: u64,
    /// Mean time from entering a queue (READY) to being assigned, over the
    /// assignments since the sample before, in ms; `None` when there were
    /// none. For a chain's first step without countdown or throttle, READY
    /// is its submission: this is submit-to-start.
    pub latency_ms: Option<f64>,
    pub workers: usize,
    pub draining: usize,
    pub in_flight: usize,
}

/// The broker now: every queue, worker and throttle.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Now {
    pub t: u64,
    pub queues: Vec<json::Queue>,
    pub workers: Vec<json::Worker>,
    pub throttles: Vec<json::ThrottleInfo>,
    /// Set while the store is in trouble (new work is refused).
    pub store_fault: Option<String>,
}

/// A sample with the state it was taken from: one SSE `sample` event.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Frame {
    pub sample: Sample,
    pub now: Now,
}

/// The feed's state: the history and the latest frame.
pub struct Live {
    history: Mutex<VecDeque<Sample>>,
    latest: watch::Sender<Option<Arc<Frame>>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            latest: watch::channel(None).0,
        }
    }
}

impl Live {
    fn history(&self) -> Vec<Sample> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().cloned().collect()
    }

    fn push(&self, frame: Frame) {
        {
            let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(frame.sample.clone());
        }
        self.latest.send_replace(Some(Arc::new(frame)));
    }
}

/// Counter readings a sample takes differences of.
#[derive(Clone, Copy, Default)]
struct Readings {
    at: u64,
    totals: crate::metrics::Totals,
    assignments: u64,
    latency_sum: f64,
    latency_count: u64,
}

fn read(state: &State) -> Readings {
    let m = state.handle.metrics();
    Readings {
        at: now_ms(),
        totals: m.totals(),
        assignments: m.assignments.get(),
        latency_sum: m.assignment_latency.sum(),
        latency_count: m.assignment_latency.count(),
    }
}

/// Takes a sample every [`SAMPLE_EVERY`] until `stop`.
pub async fn sample(state: Arc<State>, stop: CancellationToken) {
    let mut before: Option<Readings> = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let Ok(snapshot) = state.handle.snapshot().await else {
            return; // the scheduler stopped
        };
        let now = read(&state);
        let frame = frame(snapshot, before, now, &state);
        before = Some(now);
        state.live.push(frame);
    }
}

fn frame(
    snapshot: crate::metrics::Snapshot,
    before: Option<Readings>,
    now: Readings,
    state: &State,
) -> Frame {
    let b = before.unwrap_or(now);
    let latency_count = now.latency_count.saturating_sub(b.latency_count);
    let mut points: Vec<QueuePoint> = snapshot
        .queues
        .iter()
        .map(|q| QueuePoint {
            name: q.name.clone(),
            ready: q.ready,
            running: q.running,
            delayed: q.delayed,
            throttled: q.throttled,
            oldest_ready_age_ms: q.oldest_ready_age_ms,
        })
        .collect();
    points.sort_by_key(|q| std::cmp::Reverse(q.ready + q.running));
    points.truncate(MAX_QUEUES_KEPT);
    points.sort_by(|a, b| a.name.cmp(&b.name));
    let sample = Sample {
        t: now.at,
        span_ms: now.at.saturating_sub(b.at),
        queues: points,
        started: now.assignments.saturating_sub(b.assignments),
        succeeded: now.totals.succeeded.saturating_sub(b.totals.succeeded),
        failed: now.totals.failed.saturating_sub(b.totals.failed),
        retried: now.totals.retried.saturating_sub(b.totals.retried),
        latency_ms: (latency_count > 0).then(|| {
            #[allow(clippy::cast_precision_loss)]
            let mean = (now.latency_sum - b.latency_sum) / latency_count as f64;
            mean * 1000.0
        }),
        workers: snapshot.workers.len(),
        draining: snapshot.workers.iter().filter(|w| w.draining).count(),
        in_flight: snapshot.workers.iter().map(|w| w.in_flight.len()).sum(),
    };
    let at = now_ms();
    let now = Now {
        t: at,
        queues: snapshot
            .queues
            .into_iter()
            .map(|q| crate::api::queue_view(q).into())
            .collect(),
        workers: snapshot
            .workers
            .into_iter()
            .map(|w| crate::api::worker_view(w).into())
            .collect(),
        throttles: snapshot
            .throttles
            .into_iter()
            .map(|t| crate::api::throttle_view(t, at).into())
            .collect(),
        store_fault: state
            .handle
            .store_fault()
            .borrow()
            .map(|f| format!("{f:?}")),
    };
    Frame { sample, now }
}

#[derive(Serialize)]
pub struct Overview {
    history: Vec<Sample>,
    now: Option<Frame>,
}

/// `GET /api/v1/overview`: the history and the latest frame.
pub async fn overview(
    Shared(state): Shared<Arc<State>>,
    _: AdminCaller,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(Overview {
        history: state.live.history(),
        now: state.live.latest.borrow().as_deref().cloned(),
    }))
}

/// `GET /api/v1/overview/events`: server-sent events: `history` first
/// (`{"samples": [...]}`), then a `sample` event ([`Frame`]) per sample.
pub async fn events(
    Shared(state): Shared<Arc<State>>,
    _: AdminCaller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    #[derive(Serialize)]
    struct History {
        samples: Vec<Sample>,
    }
    let mut rx = state.live.latest.subscribe();
    let first = SseEvent::default()
        .event("history")
        .json_data(History {
            samples: state.live.history(),
        })
        .unwrap_or_default();
    let current = rx.borrow_and_update().clone();
    let stream = async_stream(first, current, rx);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn sample_event(frame: &Frame) -> SseEvent {
    SseEvent::default()
        .event("sample")
        .json_data(frame)
        .unwrap_or_default()
}

/// The history, the current frame, then each new frame; a slow reader
/// skips frames (the watch keeps only the latest), it never piles them up.
fn async_stream(
    first: SseEvent,
    current: Option<Arc<Frame>>,
    rx: watch::Receiver<Option<Arc<Frame>>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let head = std::iter::once(first).chain(current.as_deref().map(sample_event));
    let tail = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let frame = rx.borrow_and_update().clone();
        Some((frame, rx))
    })
    .filter_map(|frame| async move { frame.as_deref().map(sample_event) });
    futures::stream::iter(head).chain(tail).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded() {
        let live = Live::default();
        for t in 0..(HISTORY as u64 + 10) {
            live.push(Frame {
                sample: Sample {
                    t,
                    ..Default::default()
                },
                now: Now::default(),
            });
        }
        let h = live.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].t, 10);
        assert_eq!(
            live.latest.borrow().as_ref().unwrap().sample.t,
            HISTORY as u64 + 9
        );
    }
}

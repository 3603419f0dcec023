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
//! Throughput and latency are shown broker-wide (from the metrics) and per
//! queue (from the scheduler's per-queue counts, `metrics::QueueCounts`).

use std::collections::{BTreeMap, VecDeque};
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
use crate::metrics::QueueCounts;

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
    /// Runs started from the queue since the sample before.
    pub started: u64,
    /// Runs from the queue that succeeded since the sample before.
    pub succeeded: u64,
    /// Their mean wait from READY to assigned, in ms; `None` when none
    /// started.
    pub latency_ms: Option<f64>,
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
    let mut counts_before = BTreeMap::new();
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
        let counts: BTreeMap<String, QueueCounts> = snapshot.queue_counts.iter().cloned().collect();
        let frame = frame(snapshot, before, now, &counts_before, &state);
        before = Some(now);
        counts_before = counts;
        state.live.push(frame);
    }
}

fn frame(
    snapshot: crate::metrics::Snapshot,
    before: Option<Readings>,
    now: Readings,
    counts_before: &BTreeMap<String, QueueCounts>,
    state: &State,
) -> Frame {
    let b = before.unwrap_or(now);
    let latency_count = now.latency_count.saturating_sub(b.latency_count);
    let points = queue_points(&snapshot, counts_before, before.is_some());
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

/// Each queue with work, or with runs started or succeeded since the
/// sample before (`counts_before`; differences are taken only once there
/// is a sample before): the busiest [`MAX_QUEUES_KEPT`], by name.
fn queue_points(
    snapshot: &crate::metrics::Snapshot,
    counts_before: &BTreeMap<String, QueueCounts>,
    differences: bool,
) -> Vec<QueuePoint> {
    let mut points: BTreeMap<&str, QueuePoint> = BTreeMap::new();
    let point = |name: &str| QueuePoint {
        name: name.to_owned(),
        ready: 0,
        running: 0,
        delayed: 0,
        throttled: 0,
        oldest_ready_age_ms: 0,
        started: 0,
        succeeded: 0,
        latency_ms: None,
    };
    for q in &snapshot.queues {
        points.insert(
            &q.name,
            QueuePoint {
                ready: q.ready,
                running: q.running,
                delayed: q.delayed,
                throttled: q.throttled,
                oldest_ready_age_ms: q.oldest_ready_age_ms,
                ..point(&q.name)
            },
        );
    }
    for (name, now) in snapshot.queue_counts.iter().filter(|_| differences) {
        let was = counts_before.get(name).copied().unwrap_or_default();
        let started = now.started.saturating_sub(was.started);
        let succeeded = now.succeeded.saturating_sub(was.succeeded);
        if started == 0 && succeeded == 0 {
            continue;
        }
        let p = points.entry(name).or_insert_with(|| point(name));
        p.started = started;
        p.succeeded = succeeded;
        #[allow(clippy::cast_precision_loss)]
        let mean = now.waited_ms.saturating_sub(was.waited_ms) as f64 / started.max(1) as f64;
        p.latency_ms = (started > 0).then_some(mean);
    }
    let mut points: Vec<QueuePoint> = points.into_values().collect();
    points.sort_by_key(|q| std::cmp::Reverse(q.ready + q.running + q.started));
    points.truncate(MAX_QUEUES_KEPT);
    points.sort_by(|a, b| a.name.cmp(&b.name));
    points
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
    fn a_queue_that_drained_still_shows_what_it_ran_and_how_long_runs_waited() {
        let counts = |started, waited_ms, succeeded| QueueCounts {
            started,
            waited_ms,
            succeeded,
        };
        let snapshot = crate::metrics::Snapshot {
            queue_counts: vec![
                ("fast".into(), counts(110, 1_200, 105)),
                ("idle".into(), counts(7, 70, 7)),
            ],
            ..Default::default()
        };
        let before = BTreeMap::from([
            ("fast".to_owned(), counts(10, 200, 5)),
            ("idle".to_owned(), counts(7, 70, 7)),
        ]);
        let points = queue_points(&snapshot, &before, true);
        assert_eq!(points.len(), 1, "a queue that did nothing is left out");
        let fast = &points[0];
        assert_eq!((fast.name.as_str(), fast.ready), ("fast", 0));
        assert_eq!((fast.started, fast.succeeded), (100, 100));
        assert_eq!(fast.latency_ms, Some(10.0));
        assert!(
            queue_points(&snapshot, &BTreeMap::new(), false).is_empty(),
            "no sample before"
        );
    }

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

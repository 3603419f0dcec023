//! Prometheus metrics: what the scheduler counts as it goes, what it
//! reports at scrape time, and the small HTTP endpoint that serves both.
//!
//! Counters and histograms ([`Metrics`]) are registered once and updated in
//! place by the scheduler: an increment is an atomic add, and the scheduler
//! keeps the counters of each task name it has seen ([`TaskMetrics`]), so
//! the hot path neither allocates a label set nor takes a lock. Gauges
//! (queue depths, throttle holders, workers) are not kept up to date at
//! all: a scrape asks the scheduler for a snapshot through its
//! [`Handle`] and renders it, so a broker nobody scrapes pays nothing.
//!
//! Every metric is named `baton_*`; docs/operations.md lists them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{Handle, QueueStats, ThrottleStats, WorkerStats};

/// Distinct task names counted one by one; further names are counted
/// together under `task="_other"`, so a client that submits random names
/// cannot grow the metrics without bound.
pub const MAX_TASK_LABELS: usize = 1000;

/// The label of a per-task-name counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    /// Empty for a shared key.
    task: String,
    key: String,
}

/// The broker's counters and histograms, shared by the scheduler (which
/// updates them) and the metrics endpoint (which renders them).
#[derive(Debug)]
pub struct Metrics {
    submitted: Family<TaskLabel, Counter>,
    succeeded: Family<TaskLabel, Counter>,
    failed: Family<TaskLabel, Counter>,
    retried: Family<TaskLabel, Counter>,
    /// Runs taken back because their lease lapsed.
    pub lease_expiries: Counter,
    /// Assignments sent to workers.
    pub assignments: Counter,
    /// Of those, the ones sent before their round was durable (see the
    /// scheduler's `Unsettled`).
    pub early_assignments: Counter,
    /// Ended chains removed once their retention was over.
    pub chains_removed: Counter,
    /// From entering its queue (READY) to being assigned, in seconds.
    pub assignment_latency: Histogram,
    /// One group commit: sled's flush and the fdatasync, in seconds.
    pub store_flush: Histogram,
    /// One round of the scheduler (its commands, timers, work on child
    /// chains, dispatch and the end of the round), in seconds: a long one
    /// delays every request and assignment behind it.
    pub scheduler_round: Histogram,
    /// Bytes of chain events waiting for WatchChain streams to take them
    /// (see `scheduler::watchers`); each watcher holds at most its budget.
    pub watch_bytes: Gauge,
    /// Every task name's counters handed out by [`Metrics::task`] (at most
    /// [`MAX_TASK_LABELS`] + 1), so [`Metrics::totals`] can add them up
    /// without walking the families, which prometheus-client does not
    /// expose.
    handed_out: std::sync::Mutex<Vec<TaskCounters>>,
}

/// The per-task-name counters added up over every task name: what the
/// dashboard's throughput and failure charts take differences of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub submitted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            submitted: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            lease_expiries: Counter::default(),
            assignments: Counter::default(),
            early_assignments: Counter::default(),
            chains_removed: Counter::default(),
            // 0.5 ms .. ~65 s.
            assignment_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            // 50 µs .. ~3 s.
            store_flush: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
            // 10 µs .. ~5 s.
            scheduler_round: Histogram::new(exponential_buckets(0.00001, 2.0, 20)),
            watch_bytes: Gauge::default(),
            handed_out: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// The counters of one task name.
#[derive(Clone, Debug)]
pub struct TaskCounters {
    /// Steps of this name whose turn came (a chain's first step at
    /// submission, a later one when its predecessor succeeded, a callback
    /// when its phase began).
    pub submitted: Counter,
    /// Runs that succeeded.
    pub succeeded: Counter,
    /// Steps that failed for good (retries, polls or leases exhausted, a
    /// fatal error, the chain's deadline).
    pub failed: Counter,
    /// Retryable failures that were retried.
    pub retried: Counter,
}

impl Metrics {
    fn task(&self, name: &str) -> TaskCounters {
        let label = TaskLabel {
            task: name.to_owned(),
        };
        let counters = TaskCounters {
            submitted: self.submitted.get_or_create_owned(&label),
            succeeded: self.succeeded.get_or_create_owned(&label),
            failed: self.failed.get_or_create_owned(&label),
            retried: self.retried.get_or_create_owned(&label),
        };
        self.handed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(counters.clone());
        counters
    }

    /// The per-task-name counters added up over every task name.
    pub fn totals(&self) -> Totals {
        let handed_out = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        handed_out.iter().fold(Totals::default(), |t, c| Totals {
            submitted: t.submitted + c.submitted.get(),
            succeeded: t.succeeded + c.succeeded.get(),
            failed: t.failed + c.failed.get(),
            retried: t.retried + c.retried.get(),
        })
    }

    /// Renders every metric in the OpenMetrics text format, with the gauges
    /// taken from a scheduler snapshot.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("baton");
        self.register(&mut registry);
        snapshot.register(&mut registry);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "tasks_submitted",
            "Steps whose turn came, by task name",
            self.submitted.clone(),
        );
        r.register(
            "tasks_succeeded",
            "Runs that succeeded, by task name",
            self.succeeded.clone(),
        );
        r.register(
            "tasks_failed",
            "Steps that failed for good, by task name",
            self.failed.clone(),
        );
        r.register(
            "tasks_retried",
            "Retryable failures that were retried, by task name",
            self.retried.clone(),
        );
        r.register(
            "lease_expiries",
            "Runs taken back because their lease lapsed",
            self.lease_expiries.clone(),
        );
        r.register(
            "assignments",
            "Assignments sent to workers",
            self.assignments.clone(),
        );
        r.register(
            "assignments_early",
            "Assignments sent before their round was durable (no throttle slot, readiness durable)",
            self.early_assignments.clone(),
        );
        r.register(
            "chains_removed",
            "Ended chains removed once their retention (--retention-ms) was over",
            self.chains_removed.clone(),
        );
        r.register(
            "assignment_latency_seconds",
            "Time from entering a queue (READY) to being assigned to a worker",
            self.assignment_latency.clone(),
        );
        r.register(
            "store_flush_seconds",
            "Duration of one group commit (sled flush + fdatasync)",
            self.store_flush.clone(),
        );
        r.register(
            "scheduler_round_seconds",
            "Duration of one scheduler round (commands, timers, work on child chains, dispatch)",
            self.scheduler_round.clone(),
        );
        r.register(
            "watch_buffered_bytes",
            "Bytes of chain events waiting for WatchChain streams to read them",
            self.watch_bytes.clone(),
        );
    }
}

/// The scheduler's per-task-name counters, created on first use and kept,
/// so counting an event is a map lookup by `&str` and an atomic add.
#[derive(Debug)]
pub struct TaskMetrics {
    metrics: Arc<Metrics>,
    by_name: HashMap<String, TaskCounters>,
    /// Created at the first name past the cap.
    other: Option<TaskCounters>,
}

impl TaskMetrics {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        TaskMetrics {
            metrics,
            by_name: HashMap::new(),
            other: None,
        }
    }

    /// The counters of `name` (those of `_other` past [`MAX_TASK_LABELS`]).
    pub fn get(&mut self, name: &str) -> &TaskCounters {
        if !self.by_name.contains_key(name) {
            if self.by_name.len() >= MAX_TASK_LABELS {
                return self
                    .other
                    .get_or_insert_with(|| self.metrics.task("_other"));
            }
            let counters = self.metrics.task(name);
            self.by_name.insert(name.to_owned(), counters);
        }
        &self.by_name[name]
    }
}

/// What a scrape asks the scheduler for.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub queues: Vec<QueueStats>,
    pub throttles: Vec<ThrottleStats>,
    pub workers: Vec<WorkerStats>,
    /// Each queue's counts since the broker started (see [`QueueCounts`]).
    pub queue_counts: Vec<(String, QueueCounts)>,
}

/// Distinct queues counted one by one (see [`QueueCounts`]); further
/// names are counted together under `_other`, so that a client naming
/// random queues cannot grow the counts without bound.
pub const MAX_COUNTED_QUEUES: usize = 1000;

/// What one queue did since the broker started: what the dashboard's
/// per-queue throughput and latency take differences of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Assignments from the queue (runs started).
    pub started: u64,
    /// Their waits, from entering the queue (READY) to being assigned, in
    /// milliseconds, added up.
    pub waited_ms: u64,
    /// Runs from the queue that succeeded.
    pub succeeded: u64,
}

impl Snapshot {
    fn register(&self, r: &mut Registry) {
        let gauge = |help: &'static str| (help, Family::<QueueLabel, Gauge>::default());
        let ready = gauge("Tasks in the queue waiting for a worker");
        let delayed = gauge("Tasks waiting for a time before entering the queue");
        let throttled = gauge("Tasks waiting for a throttle slot before entering the queue");
        let running = gauge("Tasks of the queue assigned to workers");
        let paused = gauge("1 when the queue is paused");
        let oldest = Family::<QueueLabel, Gauge<f64, AtomicU64>>::default();
        for q in &self.queues {
            let label = QueueLabel {
                queue: q.name.clone(),
            };
            let set = |family: &Family<QueueLabel, Gauge>, v: u64| {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&ready.1, q.ready);
            set(&delayed.1, q.delayed);
            set(&throttled.1, q.throttled);
            set(&running.1, q.running);
            set(&paused.1, u64::from(q.paused));
            oldest
                .get_or_create(&label)
                .set(millis_as_seconds(q.oldest_ready_age_ms));
        }
        for (name, (help, family)) in [
            ("queue_ready", ready),
            ("queue_delayed", delayed),
            ("queue_throttled", throttled),
            ("queue_running", running),
            ("queue_paused", paused),
        ] {
            r.register(name, help, family);
        }
        r.register(
            "queue_oldest_ready_age_seconds",
            "Age of the oldest task waiting in the queue",
            oldest,
        );

        let holders = Family::<IdentityLabels, Gauge>::default();
        let waiters = Family::<IdentityLabels, Gauge>::default();
        let limits = Family::<IdentityLabels, Gauge>::default();
        for (info, ..) in &self.throttles {
            let label = IdentityLabels {
                task: info.identity.task_name.clone(),
                key: info.identity.key.clone(),
            };
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            holders.get_or_create(&label).set(count(info.holders.len()));
            waiters.get_or_create(&label).set(count(info.waiters));
            limits.get_or_create(&label).set(i64::from(info.limit));
        }
        r.register(
            "throttle_holders",
            "Slots held per throttle identity (task name, key; task empty for a shared key)",
            holders,
        );
        r.register("throttle_waiters", "Waiters per throttle identity", waiters);
        r.register(
            "throttle_limit",
            "Limit in force per throttle identity",
            limits,
        );

        let connected = Gauge::<i64>::default();
        let draining = Gauge::<i64>::default();
        let in_flight = Gauge::<i64>::default();
        for w in &self.workers {
            connected.inc();
            if w.draining {
                draining.inc();
            }
            in_flight.inc_by(i64::try_from(w.in_flight.len()).unwrap_or(i64::MAX));
        }
        r.register("workers_connected", "Connected worker streams", connected);
        r.register(
            "workers_draining",
            "Connected workers that take no new work",
            draining,
        );
        r.register(
            "workers_in_flight",
            "Assignments out on connected workers",
            in_flight,
        );
    }
}

pub fn millis_as_seconds(ms: u64) -> f64 {
    // Exact below 2^53 ms (285,000 years).
    #[allow(clippy::cast_precision_loss)]
    let seconds = ms as f64 / 1000.0;
    seconds
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled. Anything
/// else gets 404; a scrape while the scheduler is stopping gets 503.
pub async fn serve(listener: TcpListener, handle: Handle, stop: CancellationToken) {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(cause = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let handle = handle.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(request, &handle).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn respond<B>(request: Request<B>, handle: &Handle) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at GET /metrics\n".into(),
        );
    }
    match handle.snapshot().await {
        Ok(snapshot) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            handle.metrics().render(&snapshot),
        ),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_snapshot_gauges() {
        let metrics = Arc::new(Metrics::default());
        let mut tasks = TaskMetrics::new(metrics.clone());
        tasks.get("demo.slow").submitted.inc();
        tasks.get("demo.slow").succeeded.inc();
        metrics.assignment_latency.observe(0.002);
        metrics.early_assignments.inc();
        let snapshot = Snapshot {
            queues: vec![QueueStats {
                name: "general".into(),
                ready: 3,
                oldest_ready_age_ms: 1500,
                paused: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = metrics.render(&snapshot);
        for line in [
            "baton_tasks_submitted_total{task=\"demo.slow\"} 1",
            "baton_tasks_succeeded_total{task=\"demo.slow\"} 1",
            "baton_assignment_latency_seconds_count 1",
            "baton_assignments_early_total 1",
            "baton_queue_ready{queue=\"general\"} 3",
            "baton_queue_paused{queue=\"general\"} 1",
            "baton_queue_oldest_ready_age_seconds{queue=\"general\"} 1.5",
            "baton_workers_connected 0",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn task_names_past_the_cap_share_one_label() {
        let mut tasks = TaskMetrics::new(Arc::new(Metrics::default()));
        for i in 0..MAX_TASK_LABELS + 5 {
            tasks.get(&format!("t{i}")).submitted.inc();
        }
        assert_eq!(tasks.by_name.len(), MAX_TASK_LABELS);
        assert_eq!(tasks.other.as_ref().unwrap().submitted.get(), 5);
        let totals = tasks.metrics.totals();
        assert_eq!(
            totals.submitted,
            u64::try_from(MAX_TASK_LABELS).unwrap() + 5
        );
    }
}

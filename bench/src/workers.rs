//! The Rust workers of the bench: no-op task bodies that count the runs
//! that finish a unit of work, so a workload knows when it is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use baton_worker::{TaskContext, Worker};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Task names of the workloads. `FINAL` runs end a unit of work: a no-op
/// task, the `fast` step of a two-step chain, the `set_ok` callback of an
/// executor.
pub const NOOP: &str = "bench.noop";
pub const SLOW: &str = "bench.slow";
pub const FAST: &str = "bench.fast";
pub const BEGIN: &str = "bench.begin_creating";
pub const CREATE: &str = "bench.create";
pub const SET_OK: &str = "bench.set_ok";
pub const SET_ERRED: &str = "bench.set_erred";
/// A probe of the latency bench: its body notes when it started.
pub const PROBE: &str = "bench.probe";
const FINAL: [&str; 3] = [NOOP, FAST, SET_OK];

/// What the task bodies report.
#[derive(Default)]
pub struct Tally {
    finished: AtomicUsize,
    goal: AtomicUsize,
    done: Notify,
    /// Start time of each probe, by its argument.
    pub probes: Mutex<HashMap<u64, Instant>>,
}

impl Tally {
    /// Waits until `goal` units of work finished since the last reset.
    pub async fn wait_for(&self, goal: usize) {
        loop {
            let notified = self.done.notified();
            if self.finished.load(Ordering::Acquire) >= goal {
                return;
            }
            self.goal.store(goal, Ordering::Release);
            if self.finished.load(Ordering::Acquire) >= goal {
                return;
            }
            notified.await;
        }
    }

    /// Units of work finished since the last reset.
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::Acquire)
    }

    pub fn reset(&self) {
        self.finished.store(0, Ordering::Release);
        self.probes.lock().expect("probes").clear();
    }

    /// Counts one unit of work as finished.
    pub fn finish_one(&self) {
        let n = self.finished.fetch_add(1, Ordering::AcqRel) + 1;
        let goal = self.goal.load(Ordering::Acquire);
        if goal > 0 && n >= goal {
            self.done.notify_waiters();
        }
    }
}

/// Worker connections running in this process.
pub struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    joins: Vec<JoinHandle<Result<(), baton_worker::Error>>>,
}

impl Workers {
    /// Connects `procs` workers of `concurrency` each, serving the general
    /// queue with every bench task.
    pub fn start(addr: &str, procs: usize, concurrency: u32, tally: &Arc<Tally>) -> Self {
        Self::run((0..procs).map(|i| {
            let mut builder = Worker::builder(addr.to_owned())
                .name(format!("bench-{i}"))
                .concurrency(concurrency);
            for name in [NOOP, SLOW, FAST, BEGIN, CREATE, SET_OK, SET_ERRED, PROBE] {
                let tally = tally.clone();
                builder = builder.task(name, move |ctx: TaskContext| {
                    let tally = tally.clone();
                    async move {
                        if ctx.name == PROBE {
                            let i: u64 = ctx.arg(0)?;
                            tally
                                .probes
                                .lock()
                                .expect("probes")
                                .insert(i, Instant::now());
                        } else if FINAL.contains(&ctx.name.as_str()) {
                            tally.finish_one();
                        }
                        Ok(Value::Null)
                    }
                });
            }
            builder.build().expect("worker settings are valid")
        }))
    }

    /// Runs these workers until [`Workers::stop`].
    pub fn run(workers: impl IntoIterator<Item = Worker>) -> Self {
        let mut stops = Vec::new();
        let mut joins = Vec::new();
        for worker in workers {
            let (stop, stopped) = oneshot::channel::<()>();
            joins.push(tokio::spawn(worker.run_until(async {
                let _ = stopped.await;
            })));
            stops.push(stop);
        }
        Workers { stops, joins }
    }

    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for join in self.joins {
            let _ = join.await;
        }
    }
}

//! End-to-end throughput: N units of work submitted and finished, timed
//! from the first submission to the last run. Units: no-op tasks, two-step
//! chains `chain(slow.si(u), fast.si(u))`, and executors (two steps, with
//! an on_success and an on_failure callback; on_success runs).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use baton::{Chain, Client, Task};

use crate::broker::Broker;
use crate::workers::{self, Tally};

/// What one unit of work is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Noop,
    TwoStepChain,
    Executor,
}

impl Unit {
    pub fn workload(self) -> &'static str {
        match self {
            Unit::Noop => "noop",
            Unit::TwoStepChain => "chains",
            Unit::Executor => "executors",
        }
    }

    pub fn per_second(self) -> &'static str {
        match self {
            Unit::Noop => "tasks/s",
            Unit::TwoStepChain => "chains/s",
            Unit::Executor => "executors/s",
        }
    }

    /// The unit's chain, for argument `u`.
    pub fn chain(self, u: u64) -> Chain {
        match self {
            Unit::Noop => Task::new(workers::NOOP).si([u]).into(),
            Unit::TwoStepChain => Chain::new([
                Task::new(workers::SLOW).si([u]),
                Task::new(workers::FAST).si([u]),
            ]),
            Unit::Executor => Chain::new([
                Task::new(workers::BEGIN).si([u]),
                Task::new(workers::CREATE).si([u]),
            ])
            .on_success(Task::new(workers::SET_OK).si([u]))
            .on_failure(Task::new(workers::SET_ERRED).s([u])),
        }
    }
}

/// How the producer submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Producer {
    /// `submit_many`, 1000 chains per call, one call after another.
    Batch,
    /// The plain loop: one `submit_pipelined` per chain, at most `WINDOW`
    /// unanswered.
    Loop,
}

impl Producer {
    pub fn name(self) -> &'static str {
        match self {
            Producer::Batch => "batch",
            Producer::Loop => "loop",
        }
    }
}

/// Chains per `SubmitChains` call (the broker's limit).
pub const BATCH: usize = 1000;
/// Unanswered pipelined submissions a producer keeps at most.
pub const WINDOW: usize = 1024;

/// Submits `n` units numbered from `first` the way `producer` does, and
/// waits for every acknowledgment.
pub async fn produce(
    client: &Client,
    unit: Unit,
    producer: Producer,
    first: u64,
    n: usize,
) -> Result<()> {
    let ids = first..first + n as u64;
    match producer {
        Producer::Batch => {
            let all: Vec<u64> = ids.collect();
            for part in all.chunks(BATCH) {
                client
                    .submit_many(part.iter().map(|&u| unit.chain(u)))
                    .await?;
            }
        }
        Producer::Loop => {
            let mut pending: VecDeque<baton::Pending> = VecDeque::with_capacity(WINDOW);
            for u in ids {
                if pending.len() == WINDOW
                    && let Some(oldest) = pending.pop_front()
                {
                    oldest.stored().await?;
                }
                pending.push_back(client.submit_pipelined(unit.chain(u)));
            }
            for p in pending {
                p.stored().await?;
            }
        }
    }
    Ok(())
}

/// One timed run: units per second, and the broker's CPU time per unit
/// in microseconds.
pub async fn run(
    broker: &Broker,
    client: &Client,
    tally: &Arc<Tally>,
    unit: Unit,
    producer: Producer,
    n: usize,
) -> Result<(f64, f64)> {
    tally.reset();
    let cpu = broker.cpu_time()?;
    let start = Instant::now();
    produce(client, unit, producer, 0, n).await?;
    tally.wait_for(n).await;
    let elapsed = start.elapsed();
    let cpu = broker.cpu_time()? - cpu;
    Ok((
        n as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
    ))
}

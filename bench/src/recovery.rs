//! Recovery: a broker holding `n` queued tasks is killed with `kill -9` and
//! started again on the same data directory. Measured:
//! - time from the new process's start until a worker's first task ran
//!   (assignments flow again);
//! - resident memory per queued task, with the tasks queued before the
//!   kill and again after the restart, over the memory of an empty broker;
//! - bytes on disk per queued task (allocated blocks of the data
//!   directory);
//! - the rate at which the batch producer stored them (no workers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt, stream};

use crate::broker::{Broker, Settings, disk_bytes};
use crate::throughput::{BATCH, Producer, Unit, produce};
use crate::workers::{Tally, Workers};

/// `SubmitChains` calls in flight while filling the queue.
const FILL_CALLS: usize = 4;

pub struct Recovery {
    pub fill_per_s: f64,
    pub flow_after_restart: Duration,
    pub rss_queued_per_task: f64,
    pub rss_recovered_per_task: f64,
    pub disk_per_task: f64,
}

pub async fn measure(settings: &Settings, n: usize) -> Result<Recovery> {
    let data = tempfile::tempdir()?;
    let broker = Broker::start(settings, data.path()).await?;
    let client = broker.client().await?;
    // An empty broker's memory, once its first requests were served.
    client.admin().list_queues().await?;
    let rss_empty = broker.rss_bytes()? as f64;

    let start = Instant::now();
    stream::iter((0..n).step_by(BATCH))
        .map(|first| {
            let client = client.clone();
            let count = BATCH.min(n - first);
            async move { produce(&client, Unit::Noop, Producer::Batch, first as u64, count).await }
        })
        .buffer_unordered(FILL_CALLS)
        .try_collect::<Vec<()>>()
        .await?;
    let fill_per_s = n as f64 / start.elapsed().as_secs_f64();
    let rss_queued = broker.rss_bytes()? as f64;
    let disk = disk_bytes(data.path())? as f64;

    let (mut broker, restarted) = broker.kill9_and_respawn().await?;
    broker.wait_ready().await?;
    let tally = Arc::new(Tally::default());
    let workers = Workers::start(&broker.addr, 1, 64, &tally);
    tally.wait_for(1).await;
    let flow_after_restart = restarted.elapsed();
    let rss_recovered = broker.rss_bytes()? as f64;
    workers.stop().await;
    broker.stop().await?;

    let per_task = |bytes: f64| (bytes - rss_empty).max(0.0) / n as f64;
    Ok(Recovery {
        fill_per_s,
        flow_after_restart,
        rss_queued_per_task: per_task(rss_queued),
        rss_recovered_per_task: per_task(rss_recovered),
        disk_per_task: disk / n as f64,
    })
}

//! Submit-to-start latency: from the moment a client calls `submit` to the
//! moment a worker's task body starts, through the durable commit of the
//! submission and of the assignment, the broker's dispatch and the stream
//! to the worker.
//!
//! At low load probes go one at a time, a few milliseconds apart, to idle
//! workers. Under load, a background producer keeps `load_rate` no-op
//! tasks per second flowing (a `submit_many` of `load_rate / 100` every
//! 10 ms) through the same queue and workers, and probes join the line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton::{Client, Task};
use tokio::sync::watch;

use crate::throughput::{Producer, Unit, produce};
use crate::workers::{self, Tally};

/// Pause between probes.
const SPACING: Duration = Duration::from_millis(5);
/// Period of the background producer.
const LOAD_TICK: Duration = Duration::from_millis(10);

/// Sends `probes` probes one after another and returns their latencies,
/// sorted.
pub async fn probe(client: &Client, tally: &Arc<Tally>, probes: u64) -> Result<Vec<Duration>> {
    tally.reset();
    let mut sent = Vec::with_capacity(probes as usize);
    for i in 0..probes {
        let start = Instant::now();
        client.submit(Task::new(workers::PROBE).si([i])).await?;
        sent.push(start);
        tokio::time::sleep(SPACING).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tally.probes.lock().expect("probes").len() == sent.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "probes did not all start within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tally.probes.lock().expect("probes");
    let mut latencies: Vec<Duration> = sent
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let began = started.get(&(i as u64)).context("a probe did not start")?;
            Ok(began.saturating_duration_since(*s))
        })
        .collect::<Result<_>>()?;
    latencies.sort_unstable();
    Ok(latencies)
}

/// The gRPC round trip alone: `rounds` standard health checks to the
/// broker at `addr` (`http://host:port`), one at a time and as far apart
/// as the probes, sorted. It involves neither the scheduler nor the disk,
/// so it is the floor under every latency figure on this machine: what a
/// unary call costs when both sides' threads are idle in between.
pub async fn grpc_round_trips(addr: &str, rounds: u64) -> Result<Vec<Duration>> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    let mut took = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let start = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        took.push(start.elapsed());
        tokio::time::sleep(SPACING).await;
    }
    took.sort_unstable();
    Ok(took)
}

/// [`probe`] while a background producer submits `load_rate` no-op tasks
/// per second.
pub async fn probe_under_load(
    client: &Client,
    tally: &Arc<Tally>,
    probes: u64,
    load_rate: usize,
) -> Result<Vec<Duration>> {
    let (stop, mut stopped) = watch::channel(false);
    let per_tick = (load_rate / 100).max(1);
    let loader = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOAD_TICK);
            let mut next = 1_000_000_000u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return Ok::<_, anyhow::Error>(()),
                }
                produce(&client, Unit::Noop, Producer::Batch, next, per_tick).await?;
                next += per_tick as u64;
            }
        })
    };
    // Let the load settle before probing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let latencies = probe(client, tally, probes).await;
    let _ = stop.send(true);
    loader.await??;
    latencies
}

//! A large group against as many separate chains (issue 26): how fast its
//! members run, and how long the scheduler's longest round gets while it
//! starts, counts and collects them.
//!
//! Each run starts a fresh broker with its metrics endpoint, and no-op Rust
//! workers. It submits one chain whose one step is a group of `members`
//! no-op members, and waits for it; then, on the same broker, as many
//! one-step chains in batches of 1,000 (what a client without groups would
//! do), and waits for them. For each it prints the time, the members (or
//! chains) a second, and the scheduler's rounds in that time from
//! `baton_scheduler_round_seconds`: their count, the 99th percentile and
//! the longest, each as the upper bound of its histogram bucket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton::{Chain, ChainOutcome, Task, group};

use crate::broker::{Broker, Settings};
use crate::workers::{NOOP, Tally, Workers};

/// The round histogram's buckets: (upper bound in seconds, cumulative count).
type Buckets = Vec<(f64, u64)>;

pub async fn run(
    settings: &Settings,
    members: usize,
    runs: usize,
    procs: usize,
    concurrency: u32,
) -> Result<()> {
    println!("groups: {members} members, {procs} worker connections x {concurrency}, {runs} runs");
    println!(
        "{:<24} {:>9} {:>12} {:>8} {:>12} {:>12}",
        "workload", "time (s)", "per second", "rounds", "p99 round", "max round"
    );
    for _ in 0..runs {
        let data = tempfile::tempdir()?;
        let metrics_port = crate::broker::free_port()?;
        let mut settings = settings.clone();
        settings.extra.extend([
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ]);
        let broker = Broker::start(&settings, data.path()).await?;
        let client = broker.client().await?;
        let tally = Arc::new(Tally::default());
        let workers = Workers::start(&broker.addr, procs, concurrency, &tally);
        let noop = Task::new(NOOP);

        let before = rounds(metrics_port).await?;
        let began = Instant::now();
        let list: Vec<_> = (0..members).map(|i| noop.si([i])).collect();
        let id = client.submit(Chain::new(group(list))).await?.chain_id;
        let outcome = client.wait_timeout(&id, Duration::from_secs(600)).await?;
        anyhow::ensure!(
            matches!(outcome, ChainOutcome::Succeeded(_)),
            "the group did not succeed: {outcome:?}"
        );
        let took = began.elapsed();
        let after = rounds(metrics_port).await?;
        report("one group", members, took, &before, &after);

        let before = after;
        tally.reset();
        let began = Instant::now();
        for start in (0..members).step_by(1000) {
            let batch = (start..(start + 1000).min(members)).map(|i| noop.si([i]));
            client.submit_many(batch).await?;
        }
        tally.wait_for(members).await;
        let took = began.elapsed();
        let after = rounds(metrics_port).await?;
        report("separate chains", members, took, &before, &after);

        workers.stop().await;
        drop(client);
        broker.stop().await?;
    }
    Ok(())
}

fn report(workload: &str, n: usize, took: Duration, before: &Buckets, after: &Buckets) {
    let delta: Buckets = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    let bound = |count: u64| {
        delta
            .iter()
            .find(|(_, c)| *c >= count)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    let p99 = bound(total - total / 100);
    let max = bound(total);
    println!(
        "{:<24} {:>9.2} {:>12.0} {:>8} {:>9.2} ms {:>9.2} ms",
        workload,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        total,
        p99 * 1000.0,
        max * 1000.0
    );
}

/// `baton_scheduler_round_seconds`'s buckets from the metrics endpoint.
async fn rounds(port: u16) -> Result<Buckets> {
    let body = crate::broker::metrics(port).await?;
    let mut buckets = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("baton_scheduler_round_seconds_bucket{le=\"") else {
            continue;
        };
        let (le, count) = rest.split_once("\"} ").context("unreadable bucket")?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().context("unreadable bound")?
        };
        buckets.push((le, count.trim().parse().context("unreadable count")?));
    }
    anyhow::ensure!(!buckets.is_empty(), "no baton_scheduler_round_seconds");
    Ok(buckets)
}

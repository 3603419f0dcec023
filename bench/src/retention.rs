//! The data directory under a steady load, with a short retention: it must
//! stop growing once the first chains are past their window (issue 20).
//!
//! One broker (`--retention-ms` of the given window), one worker process of
//! no-op tasks, and one chain submitted at a steady rate for four windows.
//! Every fifth of a window the data directory's size on disk is printed,
//! with the chains submitted so far and the `baton_chains_removed` counter
//! read from the metrics endpoint. Flat means: the last two windows' sizes
//! stay within the range of the second's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton::Task;

use crate::broker::{Broker, Settings};
use crate::workers::{NOOP, Tally, Workers};

/// Runs the figure: `rate` chains a second for four windows of `window_s`
/// seconds.
pub async fn run(settings: &Settings, rate: usize, window_s: u64) -> Result<()> {
    let data = tempfile::tempdir()?;
    let metrics_port = crate::broker::free_port()?;
    let mut settings = settings.clone();
    settings.extra.extend([
        "--retention-ms".to_owned(),
        (window_s * 1000).to_string(),
        "--metrics-listen".to_owned(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let broker = Broker::start(&settings, data.path()).await?;
    let client = broker.client().await?;
    let tally = Arc::new(Tally::default());
    let workers = Workers::start(&broker.addr, 1, 64, &tally);
    println!(
        "retention: {rate} chains/s, window {window_s} s, {} s in all",
        window_s * 4
    );
    println!(
        "{:>8} {:>10} {:>10} {:>12}",
        "t (s)", "submitted", "removed", "data (MiB)"
    );
    let start = Instant::now();
    let sample_every = Duration::from_millis(window_s * 1000 / 5);
    let mut next_sample = start + sample_every;
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1);
    let mut submitted = 0usize;
    let noop = Task::new(NOOP);
    while start.elapsed() < Duration::from_secs(window_s * 4) {
        let began = Instant::now();
        let chains = (0..per_tick).map(|i| noop.si([submitted + i]));
        client
            .submit_many(chains)
            .await
            .context("submitting the load")?;
        submitted += per_tick;
        if Instant::now() >= next_sample {
            next_sample += sample_every;
            let removed = removed(metrics_port).await.unwrap_or(0);
            println!(
                "{:>8.1} {:>10} {:>10} {:>12.1}",
                start.elapsed().as_secs_f64(),
                submitted,
                removed,
                dir_bytes(data.path()) as f64 / (1 << 20) as f64
            );
        }
        tokio::time::sleep(tick.saturating_sub(began.elapsed())).await;
    }
    workers.stop().await;
    broker.stop().await
}

/// `baton_chains_removed_total` from the metrics endpoint.
async fn removed(port: u16) -> Result<u64> {
    crate::broker::metrics(port)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("baton_chains_removed_total "))
        .context("no baton_chains_removed_total")?
        .trim()
        .parse()
        .context("unreadable counter")
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du`).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

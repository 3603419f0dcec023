//! The disk under every durable figure: what one `fdatasync` costs on this
//! machine, and what one group commit through Baton's own store costs.
//!
//! Every submit-to-start and every throttle hand-off waits for one group
//! commit (see docs/benchmarks.md, "What bounds each figure"). The commit
//! is more than the `fdatasync` floor: sled 0.34 first writes its log
//! buffers with `pwrite` (without `sync_file_range`: the store turns it
//! off, vendor/sled patch 8), the one sealed when the batch was applied on
//! one of sled's I/O threads and the last one on the flushing thread, and
//! only then does the store `fdatasync` its file.
//! Printing both in the same run shows how much of a latency figure is the
//! disk, and how much of that sled adds.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use baton_server::domain::{ChainRecord, ChainSpec, Signature};
use baton_server::store::{Batch, Store};

/// Pause between two samples, as between two latency probes: each commit
/// finds the store's threads idle, as a commit at low load does.
const SPACING: Duration = Duration::from_millis(2);

/// `samples` 4 KiB writes each followed by an `fdatasync`, sorted: the
/// least a durable commit can cost on this disk.
pub fn fdatasyncs(samples: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("probe"))?;
    let page = [7u8; 4096];
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all(&page)?;
        file.sync_data()?;
        took.push(start.elapsed());
    }
    took.sort_unstable();
    Ok(took)
}

/// `samples` group commits through the broker's store, sorted: each
/// applies a batch of two new one-step chain records (about what a round
/// writes at low load: a submission, or an outcome and the next
/// assignment) and flushes it (sled's flush, then the `fdatasync`), the
/// way the scheduler's flusher does.
pub async fn store_commits(samples: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut batch = Batch::new();
        for _ in 0..2 {
            batch.put_chain(&noop_chain(), true);
        }
        let start = Instant::now();
        store.apply(&batch)?;
        store.flush().await?;
        took.push(start.elapsed());
        tokio::time::sleep(SPACING).await;
    }
    took.sort_unstable();
    Ok(took)
}

/// The record of a one-step no-op chain, as the broker stores it.
fn noop_chain() -> ChainRecord {
    let spec = ChainSpec {
        steps: vec![Signature {
            name: "bench.noop".into(),
            args: "[1]".into(),
            kwargs: "{}".into(),
            immutable: true,
            ..Signature::default()
        }],
        ..ChainSpec::default()
    };
    ChainRecord::new(baton_server::domain::Ids::Time.chain(), spec, 1)
}

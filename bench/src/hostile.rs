//! Hostile workloads: findings 7, 8 and 10 of issue 19's adversarial
//! review (`docs/reliability.md`), as its reviewer ran them against the
//! release binary, so that a fix is measured the same way before and after.
//!
//! - **A Hello with many names** (finding 7): with `queued` one-step chains
//!   of names no worker serves, one raw worker stream says Hello with
//!   `names` task names, each with defaults (`max_retries`). Measured: the
//!   time from the Hello to its Welcome, and the longest of the GetChain
//!   calls a client makes one after another from the Hello until the
//!   Welcome (the scheduler's stall, as any client sees it).
//! - **Dispatch with many unserved names** (finding 8): one Rust worker of
//!   concurrency 8 runs no-op chains, with `unserved` queued chains of
//!   distinct names nobody serves and with none. Measured: no-op chains/s,
//!   and GetChain p50/p99 of sequential calls while the worker is idle.
//! - **Large results** (finding 10): one chain of `steps` mutable steps,
//!   each returning a JSON string of `result_bytes` and receiving its
//!   predecessor's. Measured once it ended: the broker's peak resident
//!   memory (`VmHWM`), its data directory's size (and the part in sled's
//!   `blobs/`), whether GetChain answers
//!   within a client's default 4 MiB message limit, and how large the
//!   chain's GetChain answer is.
//!
//! Every wait is bounded (`PATIENCE`, `HELLO_PATIENCE`): a broker that has
//! not answered by then is recorded at the bound and said to have been
//! given up on, so a run of the unfixed broker ends by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton::pb::{self, broker_message, worker_message};
use baton::{Client, Task};
use baton_worker::{TaskContext, Worker};
use prost::Message;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::broker::{Broker, Settings, disk_bytes};
use crate::throughput::{BATCH, Producer, Unit, produce};
use crate::workers::{Tally, Workers};

/// The longest wait for a Welcome (the reviewer's broker took 113 s).
const HELLO_PATIENCE: Duration = Duration::from_secs(180);
/// The longest wait for any other step of a run.
const PATIENCE: Duration = Duration::from_secs(60);
/// The task of the large-results chain.
const LARGE: &str = "bench.large";
/// A message limit no chain of this bench reaches, to read a chain whose
/// GetChain answer a default client refuses.
const UNLIMITED: usize = 1 << 30;

/// The sizes of the hostile workloads (the issue's, times `--scale`).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Chains queued before the Hello.
    pub queued: usize,
    /// Task names of the Hello.
    pub names: usize,
    /// Chains of distinct unserved names queued before dispatch is timed.
    pub unserved: usize,
    /// No-op chains of a dispatch run.
    pub noops: usize,
    /// Sequential GetChain calls of a dispatch run.
    pub probes: usize,
    /// Steps of the large-results chain.
    pub steps: usize,
    /// Length of each step's result (a JSON string of this many bytes, plus
    /// its quotes).
    pub result_bytes: usize,
}

/// A Hello's figures.
pub struct Hello {
    /// From the Hello sent to its Welcome received.
    pub welcome: Duration,
    /// The longest GetChain issued from the Hello on.
    pub longest_get: Duration,
    /// The Welcome did not come within [`HELLO_PATIENCE`]: `welcome` is a
    /// lower bound.
    pub gave_up: bool,
}

/// The figures of one dispatch run.
pub struct Dispatch {
    pub chains_per_s: f64,
    /// Sequential GetChain latencies, sorted.
    pub gets: Vec<Duration>,
    /// Not every no-op chain ran within [`PATIENCE`]: the rate is of those
    /// that did.
    pub gave_up: bool,
}

/// The figures of one large-results run.
pub struct Large {
    pub peak_rss_bytes: u64,
    pub disk_bytes: u64,
    /// The part of `disk_bytes` in sled's `blobs/` (records it stores in
    /// files of their own).
    pub blob_bytes: u64,
    /// The files in `blobs/`.
    pub blob_files: usize,
    /// A client with the default message limit read the chain; otherwise
    /// why not.
    pub default_get: Result<(), String>,
    /// The size of the chain's GetChain answer.
    pub get_bytes: usize,
    /// From submission to the chain's end.
    pub took: Duration,
    /// Steps after the first that received their predecessor's whole
    /// result.
    pub fed: usize,
}

/// Submits `n` one-step chains, each of its own task name that no worker
/// serves, in calls of [`BATCH`]; returns the first chain's id.
async fn queue_unserved(client: &Client, n: usize) -> Result<String> {
    let mut first = None;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let answers = client
            .submit_many((start..end).map(|i| Task::new(format!("unserved.{i}")).si([i])))
            .await?;
        if first.is_none() {
            first = answers.into_iter().next().map(|a| a.chain_id);
        }
    }
    first.context("no chain was queued")
}

/// One run of the Hello figure.
pub async fn hello(settings: &Settings, sizes: Sizes) -> Result<Hello> {
    let data = tempfile::tempdir()?;
    let broker = Broker::start(settings, data.path()).await?;
    let client = broker.client().await?;
    let probed = queue_unserved(&client, sizes.queued).await?;
    let defaults = pb::Options {
        max_retries: Some(3),
        ..Default::default()
    };
    let hello = pb::Hello {
        worker_name: "hostile-hello".into(),
        tasks: (0..sizes.names)
            .map(|i| pb::TaskDefinition {
                name: format!("h.{i}"),
                defaults: Some(defaults.clone()),
            })
            .collect(),
        concurrency: 1,
        ..Default::default()
    };
    let mut worker = pb::worker_client::WorkerClient::connect(broker.addr.clone()).await?;
    let (up, rx) = mpsc::channel(1);
    up.send(pb::WorkerMessage {
        msg: Some(worker_message::Msg::Hello(hello)),
    })
    .await?;

    let (stop, stopped) = watch::channel(false);
    let prober = tokio::spawn(longest_get(client.clone(), probed, stopped));
    let start = Instant::now();
    let welcomed = tokio::time::timeout(HELLO_PATIENCE, async {
        let mut down = worker.session(ReceiverStream::new(rx)).await?.into_inner();
        match down.message().await?.and_then(|m| m.msg) {
            Some(broker_message::Msg::Welcome(_)) => Ok(()),
            other => bail!("expected a Welcome, got {other:?}"),
        }
    })
    .await;
    let welcome = start.elapsed();
    let _ = stop.send(true);
    let gave_up = match welcomed {
        Ok(answer) => {
            answer?;
            false
        }
        Err(_) => true,
    };
    // A broker given up on may still be busy: its last GetChain is not
    // waited for.
    let longest_get = if gave_up {
        prober.abort();
        welcome
    } else {
        prober.await??
    };
    drop(up);
    broker.stop().await?;
    Ok(Hello {
        welcome,
        longest_get,
        gave_up,
    })
}

/// GetChain of `chain_id`, one call after another until `stopped`; the
/// longest.
async fn longest_get(
    client: Client,
    chain_id: String,
    stopped: watch::Receiver<bool>,
) -> Result<Duration> {
    let mut longest = Duration::ZERO;
    while !*stopped.borrow() {
        let start = Instant::now();
        client.get(&chain_id).await?;
        longest = longest.max(start.elapsed());
    }
    Ok(longest)
}

/// One run of the dispatch figure, with `unserved` chains of names nobody
/// serves queued first.
pub async fn dispatch(settings: &Settings, sizes: Sizes, unserved: usize) -> Result<Dispatch> {
    let data = tempfile::tempdir()?;
    let broker = Broker::start(settings, data.path()).await?;
    let client = broker.client().await?;
    if unserved > 0 {
        queue_unserved(&client, unserved).await?;
    }
    let tally = Arc::new(Tally::default());
    let workers = Workers::start(&broker.addr, 1, 8, &tally);
    // The worker is connected and serving once a few no-ops ran.
    let warm = 10;
    let probed = client
        .submit_many((0..warm).map(|u| Unit::Noop.chain(u)))
        .await?
        .remove(0)
        .chain_id;
    tokio::time::timeout(PATIENCE, tally.wait_for(warm as usize))
        .await
        .context("the worker ran no no-op chain in time")?;

    let mut gets = Vec::with_capacity(sizes.probes);
    for _ in 0..sizes.probes {
        let start = Instant::now();
        client.get(&probed).await?;
        gets.push(start.elapsed());
    }
    gets.sort_unstable();

    tally.reset();
    let start = Instant::now();
    produce(&client, Unit::Noop, Producer::Batch, 0, sizes.noops).await?;
    let gave_up = tokio::time::timeout(PATIENCE, tally.wait_for(sizes.noops))
        .await
        .is_err();
    let chains_per_s = tally.finished() as f64 / start.elapsed().as_secs_f64();
    workers.stop().await;
    broker.stop().await?;
    Ok(Dispatch {
        chains_per_s,
        gets,
        gave_up,
    })
}

/// One run of the large-results figure.
pub async fn large(settings: &Settings, sizes: Sizes) -> Result<Large> {
    let data = tempfile::tempdir()?;
    let broker = Broker::start(settings, data.path()).await?;
    let client = broker.client().await?;
    let tally = Arc::new(Tally::default());
    let fed = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (tally, fed) = (tally.clone(), fed.clone());
        let bytes = sizes.result_bytes;
        Worker::builder(broker.addr.clone())
            .name("hostile-large")
            .task(LARGE, move |ctx: TaskContext| {
                let (tally, fed) = (tally.clone(), fed.clone());
                async move {
                    if matches!(ctx.args.first(), Some(Value::String(s)) if s.len() == bytes) {
                        fed.fetch_add(1, Ordering::AcqRel);
                    }
                    tally.finish_one();
                    Ok(Value::String("r".repeat(bytes)))
                }
            })
            .build()?
    };
    let workers = Workers::run([worker]);

    let start = Instant::now();
    let chain = baton::Chain::new(
        (0..sizes.steps)
            .map(|_| Task::new(LARGE).s(()))
            .collect::<Vec<_>>(),
    );
    let chain_id = client.submit(chain).await?.chain_id;
    tokio::time::timeout(PATIENCE, tally.wait_for(sizes.steps))
        .await
        .context("the large-results chain did not run in time")?;
    // Its last result is stored once the broker says it ended; read with a
    // client that takes any size.
    let mut reader = pb::broker_client::BrokerClient::connect(broker.addr.clone())
        .await?
        .max_decoding_message_size(UNLIMITED);
    let get_bytes = loop {
        let chain = reader
            .get_chain(pb::GetChainRequest {
                chain_id: chain_id.clone(),
            })
            .await?
            .into_inner();
        if chain.state() != pb::ChainState::Running {
            break chain.encoded_len();
        }
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "the large-results chain did not end in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = start.elapsed();
    let default_get = client
        .get(&chain_id)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let peak_rss_bytes = broker.peak_rss_bytes()?;
    let disk = disk_bytes(data.path())?;
    let blobs = data.path().join("blobs");
    let (blob_bytes, blob_files) = if blobs.is_dir() {
        (disk_bytes(&blobs)?, std::fs::read_dir(&blobs)?.count())
    } else {
        (0, 0)
    };
    workers.stop().await;
    broker.stop().await?;
    Ok(Large {
        peak_rss_bytes,
        disk_bytes: disk,
        blob_bytes,
        blob_files,
        default_get,
        get_bytes,
        took,
        fed: fed.load(Ordering::Acquire),
    })
}

//! The seed's `demo`: `chain(slow.si(uuid), fast.si(uuid))`, scheduled twice.
//!
//! Run a broker in one terminal and this example in another:
//!
//! ```text
//! cargo run -p baton-server -- serve
//! cargo run --example demo                      # or: -- 127.0.0.1:7070, or BATON_ADDR=...
//! cargo run --example demo -- --chains 1000     # then a quick throughput figure
//! ```
//!
//! `slow` takes an in-body throttle (`with throttle(concurrency=1, key=...)`
//! in the seed) keyed by the uuid, so although the worker runs several tasks
//! at once, the two slow parts run one after the other, and each `fast` runs
//! after its own `slow`:
//!
//! ```text
//! ** Start 10
//! ** End 10
//! ** Start 10
//! ** Fast 10
//! ** End 10
//! ** Fast 10
//! ```
//!
//! The second slow part waits in the broker's queue for the slot: nothing
//! polls, and no `retry(countdown=30)` happens as it did with Celery.
//!
//! With `--chains N` it then submits N two-step chains of a trivial task (64
//! in flight at a time), waits for all of them and prints chains per second:
//! a quick figure for this machine, not a benchmark.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton::{Chain, ChainOutcome, Client, Task};
use baton_worker::{TaskContext, TaskError, Throttle, Worker};
use futures::{StreamExt, stream};
use serde_json::{Value, json};

/// The seed's uuid.
const UUID: u64 = 10;
/// The seed sleeps 50 s in `slow`; shortened.
const SLOW: Duration = Duration::from_secs(1);
/// Chains in flight at once in the throughput run.
const IN_FLIGHT: usize = 64;
/// How long the example waits for a chain before giving up.
const PATIENCE: Duration = Duration::from_secs(60);

/// `slow(uuid)`: only one at a time per uuid.
async fn slow(ctx: TaskContext) -> Result<Value, TaskError> {
    let uuid: u64 = ctx.arg(0)?;
    let per_vm = Throttle::new(1).key(format!("vm:{uuid}"));
    ctx.throttle(per_vm, async {
        println!("** Start {uuid}");
        tokio::time::sleep(SLOW).await;
        println!("** End {uuid}");
    })
    .await?;
    Ok(json!(uuid))
}

/// `fast(uuid)`.
async fn fast(ctx: TaskContext) -> Result<Value, TaskError> {
    let uuid: u64 = ctx.arg(0)?;
    println!("** Fast {uuid}");
    Ok(json!(uuid))
}

/// The throughput run's trivial step: `x + 1`.
async fn incr(ctx: TaskContext) -> Result<Value, TaskError> {
    let x: u64 = ctx.arg(0)?;
    Ok(json!(x + 1))
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // The SDKs' warnings (a deprecated variable, a lost connection), on stderr.
    let warnings = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    warnings.with_max_level(tracing::Level::WARN).init();
    let args = Args::parse()?;
    let client = match Client::connect(args.addr.clone()).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!(
                "cannot reach the broker at {} ({error}); start one with `cargo run -p baton-server -- serve`",
                args.addr
            );
            return Ok(ExitCode::FAILURE);
        }
    };

    // A worker in this process. It may run 16 tasks at once: the throttle,
    // not the worker's concurrency, keeps the slow parts apart.
    let worker = Worker::builder(endpoint(&args.addr))
        .name(format!("demo-example:{}", std::process::id()))
        .concurrency(16)
        .task("demo.slow", slow)
        .task("demo.fast", fast)
        .task("demo.incr", incr)
        .build()?;
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));

    // The seed's `demo.delay(10)`, twice: each submits the chain
    // `chain(slow.si(uuid), fast.si(uuid))`. `slow` and `fast` are now
    // handles on the task names, as in Celery.
    let (slow, fast) = (Task::new("demo.slow"), Task::new("demo.fast"));
    let mut demos = Vec::new();
    for _ in 0..2 {
        let chain = Chain::new([slow.si([UUID]), fast.si([UUID])]);
        demos.push(client.submit(chain).await?.chain_id);
    }
    let mut ok = true;
    for chain_id in &demos {
        match client.wait_timeout(chain_id, PATIENCE).await? {
            ChainOutcome::Succeeded(_) => {}
            other => {
                println!("demo chain {chain_id} did not succeed: {other:?}");
                ok = false;
            }
        }
    }

    if let Some(chains) = args.chains {
        ok &= throughput(&client, chains).await;
    }

    let _ = stop_worker.send(());
    worker.await??;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Submits `chains` chains `incr.si(0) -> incr.s()`, waits for all of them
/// and prints chains per second; whether all returned 2.
async fn throughput(client: &Client, chains: usize) -> bool {
    let incr = Task::new("demo.incr");
    let started = Instant::now();
    let results: Vec<_> = stream::iter(0..chains)
        .map(|_| {
            let chain = Chain::new([incr.si([0]), incr.s(())]);
            async move {
                let chain_id = client.submit(chain).await?.chain_id;
                client.wait_timeout(&chain_id, PATIENCE).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let succeeded = results
        .iter()
        .filter(|r| matches!(r, Ok(ChainOutcome::Succeeded(v)) if *v == json!(2)))
        .count();
    let rate = chains as f64 / elapsed.as_secs_f64();
    println!(
        "{chains} two-step chains in {:.2} s: {rate:.0} chains/s ({succeeded} succeeded)",
        elapsed.as_secs_f64()
    );
    if let Some(Err(error)) = results.iter().find(|r| r.is_err()) {
        println!("first error: {error}");
    }
    succeeded == chains
}

/// Command line: `[ADDR] [--chains N]`.
struct Args {
    /// The broker: the argument, else `$BATON_ADDR`, else `127.0.0.1:7070`.
    addr: String,
    /// Run the throughput part with this many chains.
    chains: Option<usize>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut addr = None;
        let mut chains = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--chains" {
                let n = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--chains needs a number"))?;
                chains = Some(n.parse()?);
            } else if let Some(n) = arg.strip_prefix("--chains=") {
                chains = Some(n.parse()?);
            } else if arg.starts_with('-') || addr.is_some() {
                anyhow::bail!("unexpected argument {arg:?}; usage: demo [ADDR] [--chains N]");
            } else {
                addr = Some(arg);
            }
        }
        let addr = addr.unwrap_or_else(baton::addr_from_env);
        Ok(Self { addr, chains })
    }
}

/// The worker SDK wants a URI.
fn endpoint(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

//! `baton-chaos powercut`: power cuts, simulated. The real broker runs
//! under the `powercut` shim ([`crate::powercut`]), which records how to
//! undo every change to its data directory that is not durable yet.
//! Chains are submitted concurrently, small ones and one in five over
//! sled's blob threshold (about 128 KiB); the broker is `kill -9`ed at a
//! moment drawn from the seed; the data directory is rolled back to what a
//! power cut may leave; the broker starts again without the shim, and
//! every chain it acknowledged must be there (`GetChain`). Repeated for
//! `--runs` seeds. Linux only; the shim is built with `cc`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use baton::{Client, Task};

use crate::powercut;
use crate::procs::{Broker, Store};
use crate::run::{broker_binary, free_port};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seed of the first run; run k uses seed + k.
    #[arg(long, default_value_t = 19)]
    pub seed: u64,
    /// Power cuts to simulate.
    #[arg(long, default_value_t = 3)]
    pub runs: u64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 6)]
    pub submitters: u64,
    /// The broker binary (default: `baton` beside this binary).
    #[arg(long)]
    pub broker: Option<PathBuf>,
}

/// Runs the power cuts; `Ok(false)` when an acknowledged chain was lost.
///
/// # Errors
/// When the harness cannot run (no `cc`, the broker does not start).
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let bin = broker_binary(options.broker.as_deref())?;
    let mut held = true;
    let mut undone = 0;
    for seed in options.seed..options.seed + options.runs {
        let (lost, report) = one(&bin, seed, options.submitters).await?;
        held &= lost == 0;
        undone += report.bytes + report.truncated + report.removed.len() as u64;
    }
    if undone == 0 {
        // Nothing was undone: the cuts fell where everything was durable,
        // and the runs proved nothing.
        println!("powercut: the rollbacks undid nothing");
        held = false;
    }
    println!("powercut: {}", if held { "PASS" } else { "FAIL" });
    Ok(held)
}

/// One cut; the number of acknowledged chains lost and what was undone.
async fn one(
    bin: &std::path::Path,
    seed: u64,
    submitters: u64,
) -> anyhow::Result<(usize, powercut::Report)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir()?;
    let shim = powercut::build_shim(dir.path()).context("building the powercut shim with cc")?;
    let data = dir.path().join("data");
    let undo = dir.path().join("undo.log");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs)?;
    let extra = vec!["--max-payload".to_owned(), "2000000".to_owned()];
    let mut broker = Broker::new(
        bin.to_owned(),
        0,
        free_port()?,
        Store::Sled(data.clone()),
        logs.clone(),
        2000,
        extra,
    );
    broker.env = powercut::env(&shim, &data, &undo).to_vec();
    broker.start().await?;
    let client = Client::connect(broker.addr()).await?;

    // Each submitter goes on until the broker dies, so the cut falls while
    // chains are in flight; every acknowledged id is kept.
    let acked = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let mut tasks = Vec::new();
    for s in 0..submitters {
        let client = client.clone();
        let acked = Arc::clone(&acked);
        let mut rng = fastrand::Rng::with_seed(seed * 100 + s);
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let large = rng.u8(0..5) == 0;
                let arg = if large {
                    "L".repeat(rng.usize(150_000..400_000))
                } else {
                    format!("s{s}-{n}")
                };
                match client.submit(Task::new("echo").si([arg])).await {
                    Ok(submitted) => acked.lock().unwrap().push((submitted.chain_id, large)),
                    Err(_) => return,
                }
            }
        }));
    }
    let cut = Duration::from_millis(rng.u64(300..1500));
    tokio::time::sleep(cut).await;
    broker.kill9().await;
    for task in tasks {
        let _ = task.await;
    }
    let report = powercut::rollback(&undo).context("rolling back")?;
    let acked = acked.lock().unwrap().clone();

    broker.env.clear();
    broker.start().await?;
    let client = Client::connect(broker.addr()).await?;
    let mut lost = Vec::new();
    for (id, large) in &acked {
        if let Err(e) = client.get(id).await {
            lost.push(format!("{id} (large: {large}): {e}"));
        }
    }
    broker.kill9().await;
    let errors: Vec<String> = std::fs::read_to_string(broker.log_path_now())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"ERROR\""))
        .map(str::to_owned)
        .collect();
    let large = acked.iter().filter(|(_, l)| *l).count();
    println!(
        "seed {seed}: cut after {cut:?}; {} chains acknowledged ({large} large), {} lost; rollback: {report}",
        acked.len(),
        lost.len()
    );
    for line in lost.iter().take(5).chain(errors.iter().take(5)) {
        println!("  {line}");
    }
    Ok((lost.len(), report))
}

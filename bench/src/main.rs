//! `baton-bench`: Baton's figures on this machine, with Rust workers.
//!
//! ```text
//! cargo build --release -p baton-server -p baton-bench
//! target/release/baton-bench                      # everything, 3 runs each
//! target/release/baton-bench --only noop,latency --runs 5 --out results.jsonl
//! target/release/baton-bench --only hostile       # issue 19's hostile workloads
//! ```
//!
//! Every figure is the median of `--runs` runs, printed with its min and
//! max, and appended as a JSON line to `--out` (the schema that
//! `bench/report.py` reads, shared with the Python and Celery figures of
//! `bench/python/bench.py`; `bench/run` runs both and draws the chart).
//!
//! Each run starts a fresh broker (the real `baton` binary, a child process
//! on a free loopback port with a temporary data directory) and in-process
//! Rust workers, warms it up, measures, and stops it. Durable
//! acknowledgment is on unless a figure is labelled `no-durable`. Nothing
//! here asserts a figure: this prints what the machine does.

mod broker;
mod disk;
mod groups;
mod handoff;
mod hostile;
mod latency;
mod listing;
mod recovery;
mod retention;
mod stats;
mod throughput;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use crate::broker::{Broker, Settings};
use crate::stats::{Figure, Label, Rows, Sink, ms, percentile};
use crate::throughput::{Producer, Unit};
use crate::workers::{Tally, Workers};

#[derive(Parser, Debug)]
#[command(about = "Baton's benchmark suite (Rust workers)")]
struct Args {
    /// The broker binary; default: `baton` next to this program.
    #[arg(long)]
    baton_bin: Option<PathBuf>,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Append JSON records here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated groups: disk, noop, chains, executors, latency,
    /// handoff, recovery; and, run only when named, hostile (issue 19's
    /// hostile workloads), retention (the data directory under a steady
    /// load with a short retention), fanout (one group of --members
    /// members against as many chains) and listing (the chain list's pages
    /// with --stored-chains ended chains stored). Default: all but those
    /// four.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Multiplies every workload's size (0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Queued tasks of the recovery figure (before --scale).
    #[arg(long, default_value_t = 1_000_000)]
    recovery_tasks: usize,
    /// Only durable acknowledgment (skip the no-durable figures).
    #[arg(long)]
    durable_only: bool,
    /// Worker connections of the throughput figures.
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Concurrency of each worker connection.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Background no-op tasks per second of the latency-under-load figure.
    #[arg(long, default_value_t = 5000)]
    load_rate: usize,
    /// Members of the fanout figure's group (before --scale).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Ended chains stored for the listing figure (before --scale).
    #[arg(long, default_value_t = 1_000_000)]
    stored_chains: usize,
    /// Retention window of the retention figure, in seconds (the run lasts
    /// four windows).
    #[arg(long, default_value_t = 20)]
    retention_seconds: u64,
    /// Keep each broker's store in PostgreSQL instead of sled: the server
    /// as `postgres://USER@HOST:PORT/DB`, with a user that may create
    /// databases. Each broker gets a fresh database there, dropped when it
    /// stops. Figures are labelled `durable/postgres`.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

impl Args {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.named(group)
    }

    fn named(&self, group: &str) -> bool {
        self.only.iter().any(|g| g == group)
    }

    fn size(&self, n: usize) -> usize {
        ((n as f64 * self.scale) as usize).max(10)
    }

    fn binary(&self) -> Result<PathBuf> {
        if let Some(bin) = &self.baton_bin {
            return Ok(bin.clone());
        }
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name(format!("baton{}", std::env::consts::EXE_SUFFIX));
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: build it with `cargo build --release -p baton-server`, or pass --baton-bin",
            bin.display()
        );
        Ok(bin)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let binary = args.binary()?;
    if args.store.is_some() {
        stats::set_store("postgres");
    }
    let mut sink = Sink::new(args.out.as_deref())?;
    println!(
        "{:<24} {:<6} {:<10} {:>12} {:<9} [min .. max]",
        "workload", "prod.", "ack", "median", "unit"
    );
    if args.wants("disk") {
        disk_figures(&args, &mut sink).await?;
    }
    let modes: &[bool] = if args.durable_only {
        &[true]
    } else {
        &[true, false]
    };
    for &durable in modes {
        let settings = Settings {
            binary: binary.clone(),
            durable,
            extra: Vec::new(),
            postgres: args.store.clone(),
        };
        throughput_figures(&args, &settings, &mut sink).await?;
        if args.wants("latency") {
            latency_figures(&args, &settings, &mut sink).await?;
        }
        if args.wants("handoff") {
            handoff_figures(&args, &settings, &mut sink).await?;
        }
    }
    let durable = Settings {
        binary,
        durable: true,
        extra: Vec::new(),
        postgres: args.store.clone(),
    };
    if args.wants("recovery") {
        recovery_figures(&args, &durable, &mut sink).await?;
    }
    if args.named("hostile") {
        hostile_figures(&args, &durable, &mut sink).await?;
    }
    if args.named("retention") {
        retention::run(&durable, args.size(1500), args.retention_seconds).await?;
    }
    if args.named("listing") {
        listing::run(&durable, args.size(args.stored_chains), args.runs).await?;
    }
    if args.named("fanout") {
        let members = args.size(args.members);
        groups::run(&durable, members, args.runs, args.procs, args.concurrency).await?;
    }
    Ok(())
}

/// A broker and workers for one run, warmed up.
async fn fresh(settings: &Settings, procs: usize, concurrency: u32) -> Result<Run> {
    let data = tempfile::tempdir()?;
    let broker = Broker::start(settings, data.path()).await?;
    let client = broker.client().await?;
    let tally = Arc::new(Tally::default());
    let workers = Workers::start(&broker.addr, procs, concurrency, &tally);
    throughput::run(&broker, &client, &tally, Unit::Noop, Producer::Batch, 2000).await?;
    Ok(Run {
        _data: data,
        broker,
        client,
        tally,
        workers,
    })
}

struct Run {
    _data: tempfile::TempDir,
    broker: Broker,
    client: baton::Client,
    tally: Arc<Tally>,
    workers: Workers,
}

impl Run {
    async fn end(self) -> Result<()> {
        self.workers.stop().await;
        self.broker.stop().await
    }
}

async fn throughput_figures(args: &Args, settings: &Settings, sink: &mut Sink) -> Result<()> {
    let cases = [
        (Unit::Noop, Producer::Batch, 50_000),
        (Unit::Noop, Producer::Loop, 50_000),
        (Unit::TwoStepChain, Producer::Batch, 20_000),
        (Unit::TwoStepChain, Producer::Loop, 20_000),
        (Unit::Executor, Producer::Batch, 10_000),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .filter(|(unit, _, _)| args.wants(unit.workload()))
        .collect();
    if cases.is_empty() {
        return Ok(());
    }
    let mut rates = vec![Vec::new(); cases.len()];
    let mut costs = vec![Vec::new(); cases.len()];
    for _ in 0..args.runs {
        let run = fresh(settings, args.procs, args.concurrency).await?;
        for (i, (unit, producer, n)) in cases.iter().enumerate() {
            let n = args.size(*n);
            let (rate, cpu) =
                throughput::run(&run.broker, &run.client, &run.tally, *unit, *producer, n).await?;
            rates[i].push(rate);
            costs[i].push(cpu);
        }
        run.end().await?;
    }
    for (((unit, producer, n), rates), costs) in cases.iter().zip(rates).zip(costs) {
        let label = Label {
            workload: unit.workload().into(),
            producer: producer.name(),
            durable: settings.durable,
            procs: args.procs,
            concurrency: args.concurrency,
            tasks: args.size(*n),
            unit: unit.per_second(),
        };
        sink.put(&Figure {
            label: label.clone(),
            runs: rates,
        })?;
        sink.put(&Figure {
            label: Label {
                workload: format!("{}_broker_cpu", unit.workload()),
                unit: "us/unit",
                ..label
            },
            runs: costs,
        })?;
    }
    Ok(())
}

async fn latency_figures(args: &Args, settings: &Settings, sink: &mut Sink) -> Result<()> {
    let probes = args.size(1000) as u64;
    let (procs, concurrency) = (1, 16);
    let mut figures: Vec<(String, Vec<f64>)> = [
        "latency_low_p50",
        "latency_low_p99",
        "latency_load_p50",
        "latency_load_p99",
        "grpc_round_trip_p50",
        "grpc_round_trip_p99",
    ]
    .iter()
    .map(|n| (n.to_string(), Vec::new()))
    .collect();
    for _ in 0..args.runs {
        let run = fresh(settings, procs, concurrency).await?;
        let rtt = latency::grpc_round_trips(&run.broker.addr, probes).await?;
        let low = latency::probe(&run.client, &run.tally, probes).await?;
        let load =
            latency::probe_under_load(&run.client, &run.tally, probes, args.load_rate).await?;
        for (i, sorted) in [&low, &low, &load, &load, &rtt, &rtt]
            .into_iter()
            .enumerate()
        {
            let p = if i % 2 == 0 { 50 } else { 99 };
            figures[i].1.push(ms(percentile(sorted, p)));
        }
        run.end().await?;
    }
    for (workload, runs) in figures {
        let rtt = workload.starts_with("grpc");
        sink.put(&Figure {
            label: Label {
                workload,
                producer: if rtt { "-" } else { "sync" },
                durable: settings.durable,
                procs,
                concurrency,
                tasks: probes as usize,
                unit: "ms",
            },
            runs,
        })?;
    }
    Ok(())
}

async fn handoff_figures(args: &Args, settings: &Settings, sink: &mut Sink) -> Result<()> {
    let handoffs = args.size(1000);
    for form in [handoff::Form::Declared, handoff::Form::InBody] {
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let data = tempfile::tempdir()?;
            let broker = Broker::start(settings, data.path()).await?;
            let gaps = handoff::measure(&broker.addr, form, handoffs).await?;
            broker.stop().await?;
            p50.push(ms(percentile(&gaps, 50)));
            p99.push(ms(percentile(&gaps, 99)));
        }
        for (p, runs) in [("p50", p50), ("p99", p99)] {
            sink.put(&Figure {
                label: Label {
                    workload: format!("handoff_{}_{p}", form.name().replace('-', "_")),
                    producer: "-",
                    durable: settings.durable,
                    procs: 1,
                    concurrency: 8,
                    tasks: handoffs,
                    unit: "ms",
                },
                runs,
            })?;
        }
    }
    Ok(())
}

/// The disk under the durable figures (see [`disk`]): one 4 KiB write and
/// an `fdatasync`, the floor under any durable commit on this machine, and
/// one group commit through the broker's store, which is what each
/// submit-to-start and hand-off waits for.
async fn disk_figures(args: &Args, sink: &mut Sink) -> Result<()> {
    let samples = args.size(1000);
    let (mut sync_p, mut commit_p) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..args.runs {
        let syncs = disk::fdatasyncs(samples)?;
        let commits = disk::store_commits(samples).await?;
        for (i, p) in [50, 99].into_iter().enumerate() {
            sync_p[i].push(ms(percentile(&syncs, p)));
            commit_p[i].push(ms(percentile(&commits, p)));
        }
    }
    for (name, figures) in [("disk_fdatasync", sync_p), ("store_commit", commit_p)] {
        for (p, runs) in ["p50", "p99"].into_iter().zip(figures) {
            sink.put(&Figure {
                label: Label {
                    workload: format!("{name}_{p}"),
                    producer: "-",
                    durable: true,
                    procs: 1,
                    concurrency: 1,
                    tasks: samples,
                    unit: "ms",
                },
                runs,
            })?;
        }
    }
    Ok(())
}

async fn recovery_figures(args: &Args, settings: &Settings, sink: &mut Sink) -> Result<()> {
    let n = args.size(args.recovery_tasks);
    let mut rows = Rows::new(&[
        ("recovery_fill", "tasks/s"),
        ("recovery_flow", "s"),
        ("recovery_rss_queued", "B/task"),
        ("recovery_rss_restarted", "B/task"),
        ("recovery_disk", "B/task"),
    ]);
    for _ in 0..args.runs {
        let r = recovery::measure(settings, n).await?;
        rows.push([
            r.fill_per_s,
            r.flow_after_restart.as_secs_f64(),
            r.rss_queued_per_task,
            r.rss_recovered_per_task,
            r.disk_per_task,
        ]);
    }
    rows.put(sink, |workload, unit| Label {
        workload: workload.into(),
        producer: "batch",
        durable: settings.durable,
        procs: 1,
        concurrency: 64,
        tasks: n,
        unit,
    })?;
    Ok(())
}

/// Issue 19's hostile workloads (see [`hostile`]): a Hello with many
/// names, dispatch beside many unserved names, and large results.
async fn hostile_figures(args: &Args, settings: &Settings, sink: &mut Sink) -> Result<()> {
    let sizes = hostile::Sizes {
        queued: args.size(50_000),
        names: args.size(40_000),
        unserved: args.size(100_000),
        noops: args.size(20_000),
        probes: args.size(200),
        steps: args.size(40),
        result_bytes: args.size(1_000_000),
    };
    let label = |workload: &str, producer, tasks, unit| Label {
        workload: format!("hostile_{workload}"),
        producer,
        durable: settings.durable,
        procs: 1,
        concurrency: 1,
        tasks,
        unit,
    };
    let (mut welcome, mut stall) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let h = hostile::hello(settings, sizes).await?;
        if h.gave_up {
            println!(
                "hostile_hello: no Welcome within {:.0} s, recorded at that bound",
                h.welcome.as_secs_f64()
            );
        }
        welcome.push(h.welcome.as_secs_f64());
        stall.push(ms(h.longest_get));
    }
    sink.put(&Figure {
        label: label("hello_welcome", "-", sizes.names, "s"),
        runs: welcome,
    })?;
    sink.put(&Figure {
        label: label("hello_longest_get", "sync", sizes.names, "ms"),
        runs: stall,
    })?;

    for (case, unserved) in [("none", 0), ("unserved", sizes.unserved)] {
        let (mut rate, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let d = hostile::dispatch(settings, sizes, unserved).await?;
            if d.gave_up {
                println!(
                    "hostile_dispatch_{case}: not every no-op chain ran in time; the rate is of those that did"
                );
            }
            rate.push(d.chains_per_s);
            p50.push(ms(percentile(&d.gets, 50)));
            p99.push(ms(percentile(&d.gets, 99)));
        }
        let eight = |l: Label| Label {
            concurrency: 8,
            ..l
        };
        sink.put(&Figure {
            label: eight(label(
                &format!("dispatch_{case}"),
                "batch",
                sizes.noops,
                "chains/s",
            )),
            runs: rate,
        })?;
        for (p, runs) in [("p50", p50), ("p99", p99)] {
            sink.put(&Figure {
                label: eight(label(
                    &format!("dispatch_{case}_get_{p}"),
                    "sync",
                    sizes.probes,
                    "ms",
                )),
                runs,
            })?;
        }
    }

    let mb = |bytes: u64| bytes as f64 / 1e6;
    let mut rows = Rows::new(&[
        ("large_peak_rss", "MB"),
        ("large_disk", "MB"),
        ("large_disk_blobs", "MB"),
        ("large_blob_files", "files"),
        ("large_get_bytes", "MB"),
        ("large_default_get_ok", "of 1"),
        ("large_chain", "s"),
        ("large_steps_fed", "steps"),
    ]);
    for _ in 0..args.runs {
        let l = hostile::large(settings, sizes).await?;
        if let Err(refused) = &l.default_get {
            println!("hostile_large: GetChain with the default limit failed: {refused}");
        }
        rows.push([
            mb(l.peak_rss_bytes),
            mb(l.disk_bytes),
            mb(l.blob_bytes),
            l.blob_files as f64,
            l.get_bytes as f64 / 1e6,
            if l.default_get.is_ok() { 1.0 } else { 0.0 },
            l.took.as_secs_f64(),
            l.fed as f64,
        ]);
    }
    rows.put(sink, |workload, unit| {
        label(workload, "-", sizes.steps, unit)
    })?;
    Ok(())
}

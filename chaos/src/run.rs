//! A chaos run, start to verdict.
//!
//! 1. Start the broker (`baton serve`, on a loopback port and a fresh data
//!    directory) and the worker processes. In PostgreSQL mode
//!    (`--postgres`): start a PostgreSQL server of the harness's own, then
//!    several brokers on one database of it; one leads, the others stand by.
//! 2. Submit the plan's chains at a steady pace over the first part of the
//!    run, each retried with its idempotency key until the broker
//!    acknowledges it; cancel the chains designed to be cancelled.
//! 3. Meanwhile, on a seeded schedule, `kill -9` the broker (restarting it
//!    on the same port and directory) and the workers (restarting them). In
//!    PostgreSQL mode the broker killed is the leader of the moment, and
//!    PostgreSQL itself may be crashed and restarted
//!    (`--pg-restart-every`); a leader that could not renew its lease in
//!    time stops by itself (it is deposed) and is restarted as a standby, as
//!    a supervisor would.
//! 4. When the duration is over, stop killing, and wait (bounded) until
//!    every acknowledged chain ended, as `GetChain` tells.
//! 5. Stop the workers (drain) and the broker (SIGTERM), read the journals
//!    and the broker logs, and hand everything to the checker.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton::{Client, pb};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::check::{self, Evidence};
use crate::journal::{self, now_ns};
use crate::plan::{self, Design, Expect};
use crate::postgres::Postgres;
use crate::procs::{self, Broker, Exit, Kill, Role, Store, Workers};
use crate::span::{Span, parse_duration, show};
use crate::trouble::{self, Troubles};

/// Longest wait for one RPC; a broker that died mid-call makes it fail.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two tries of a submission or a cancel.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Submissions in flight at once.
const IN_FLIGHT: usize = 32;
/// Chains submitted together: bursts make throttled work arrive at once,
/// so every identity has waiters.
const BURST: u32 = 12;
/// Part of the duration over which submissions are spread; kills go on
/// over the rest while the last chains run.
const SUBMIT_SHARE: f64 = 0.75;
/// How long workers and the broker get to stop cleanly at the end.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// How long to inject faults (submissions are spread over the first
    /// three quarters).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// How many chains to submit.
    #[arg(long, default_value_t = 300)]
    pub chains: u64,
    /// Worker processes (queues in turn: general+heavy, general, heavy).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
    /// Bodies each worker runs at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// Assignments each worker holds beyond its concurrency (prefetched,
    /// waiting for a slot).
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
    /// Time between two `kill -9`s of the broker (drawn from the range).
    #[arg(long, default_value = "8s..15s")]
    pub broker_kill_every: Span,
    /// How long the broker stays dead before its restart.
    #[arg(long, default_value = "0ms..1500ms")]
    pub broker_down: Span,
    /// Time between two `kill -9`s of a (random) worker.
    #[arg(long, default_value = "3s..6s")]
    pub worker_kill_every: Span,
    /// How long a killed worker stays dead before its restart.
    #[arg(long, default_value = "0ms..1s")]
    pub worker_down: Span,
    /// Seed of the plan and the kill schedule (default: from the clock;
    /// printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The `baton` binary [default: `baton` next to this binary, built
    /// first when run through cargo].
    #[arg(long)]
    pub broker: Option<PathBuf>,
    /// Directory for the broker's data, the journals and the logs
    /// (created; must be empty) [default: a temporary directory, removed
    /// after a passing run].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The broker's lease (--lease-ms).
    #[arg(long, default_value_t = 2000)]
    pub lease_ms: u64,
    /// How long to wait, after the faults stop, for every acknowledged
    /// chain to end.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub settle_timeout: Duration,
    /// Keep the temporary directory even after a passing run.
    #[arg(long)]
    pub keep: bool,
    /// An extra argument for `baton serve` (repeatable). For example
    /// `--broker-arg=--no-durable` shows the checker catching a broker that
    /// acknowledges before its writes are durable.
    #[arg(long, allow_hyphen_values = true)]
    pub broker_arg: Vec<String>,
    /// Route the declared steps of the mixed identity through the general
    /// queue, where in-body waiters of that identity can take every worker
    /// slot: reproduces the deadlock of docs/reliability.md ("Findings").
    #[arg(long)]
    pub mixed_on_general: bool,
    /// One chain in N carries 150 to 400 KB of arguments, past sled's blob
    /// threshold, so the broker writes blob files (0: none). The broker is
    /// then started with `--max-payload 1000000`.
    #[arg(long, default_value_t = 0)]
    pub large_every: u64,
    /// Time between two "full disk" episodes: the broker's file-size limit
    /// (RLIMIT_FSIZE) is capped with prlimit, at the store's size or at 0
    /// (off when not given).
    #[arg(long)]
    pub disk_full_every: Option<Span>,
    /// How long a full disk lasts.
    #[arg(long, default_value = "1s..4s")]
    pub disk_full_for: Span,
    /// Time between two episodes with no descriptor left: the broker's
    /// RLIMIT_NOFILE is lowered to its lowest free descriptor (off when not
    /// given).
    #[arg(long)]
    pub no_fd_every: Option<Span>,
    /// How long no descriptor is left.
    #[arg(long, default_value = "1s..3s")]
    pub no_fd_for: Span,
    /// Time between two pauses of the broker (SIGSTOP, then SIGCONT; off
    /// when not given).
    #[arg(long)]
    pub pause_every: Option<Span>,
    /// How long a pause lasts [default: 1.5 to 2.5 leases].
    #[arg(long)]
    pub pause_for: Option<Span>,
    /// Keep the store in PostgreSQL instead of sled: the harness creates a
    /// PostgreSQL cluster of its own (a temporary directory, a free
    /// loopback port), runs `--brokers` brokers on it, and kills the leader
    /// of the moment on the broker kill schedule.
    #[arg(long)]
    pub postgres: bool,
    /// PostgreSQL's `bin` directory [default: the newest
    /// /usr/lib/postgresql/*/bin, else the directory of `initdb` on the
    /// PATH].
    #[arg(long, requires = "postgres")]
    pub pg_bin: Option<PathBuf>,
    /// Brokers on the one database (with --postgres).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub brokers: u64,
    /// The leader's lease (--leader-lease-ms, with --postgres).
    #[arg(long, default_value_t = 2000)]
    pub leader_lease_ms: u64,
    /// Time between two crashes of PostgreSQL (an immediate shutdown, then
    /// a start; off when not given).
    #[arg(long, requires = "postgres")]
    pub pg_restart_every: Option<Span>,
    /// How long PostgreSQL stays down after a crash.
    #[arg(long, default_value = "0ms..2s")]
    pub pg_down: Span,
}

impl Options {
    /// Options that do not go together.
    ///
    /// # Errors
    /// A message naming them.
    fn check(&self) -> anyhow::Result<()> {
        if self.postgres
            && (self.disk_full_every.is_some()
                || self.no_fd_every.is_some()
                || self.pause_every.is_some())
        {
            bail!(
                "--disk-full-every, --no-fd-every and --pause-every act on one sled broker; \
                 they do not go with --postgres"
            );
        }
        Ok(())
    }

    /// How many brokers the run has.
    fn broker_count(&self) -> usize {
        if self.postgres {
            usize::try_from(self.brokers).unwrap_or(1)
        } else {
            1
        }
    }

    /// The episodes of faults besides kills that the options ask for.
    fn troubles(&self) -> Vec<trouble::Plan> {
        let lease = Duration::from_millis(self.lease_ms);
        let pause_for = self.pause_for.unwrap_or(Span {
            min: lease.mul_f64(1.5),
            max: lease.mul_f64(2.5),
        });
        [
            (
                trouble::Kind::DiskFull,
                self.disk_full_every,
                self.disk_full_for,
            ),
            (
                trouble::Kind::NoDescriptors,
                self.no_fd_every,
                self.no_fd_for,
            ),
            (trouble::Kind::Paused, self.pause_every, pause_for),
        ]
        .into_iter()
        .filter_map(|(kind, every, lasting)| {
            Some(trouble::Plan {
                kind,
                every: every?,
                lasting,
            })
        })
        .collect()
    }
}

/// What the harness saw from the client's side.
#[derive(Debug, Default)]
pub struct Observed {
    /// Acknowledged submissions by plan number.
    pub acked: HashMap<u64, Ack>,
    /// Plan numbers never acknowledged (gave up at the settle deadline).
    pub unacked: Vec<u64>,
    /// Submission tries that failed and were repeated.
    pub submit_retries: u64,
    /// Of those, the ones the broker refused, by status code.
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// Chains seen ended, by id: their final state.
    pub finals: HashMap<String, pb::Chain>,
    /// The last state seen of chains not ended.
    pub last_seen: HashMap<String, pb::Chain>,
    /// Acknowledged chains the broker answered NOT_FOUND for.
    pub not_found: HashSet<String>,
    /// The state CancelChain answered, by plan number.
    pub cancels: HashMap<u64, pb::ChainState>,
    /// Answers no correct broker gives (INVALID_ARGUMENT for the plan,
    /// a dedup on a first try).
    pub oddities: Vec<String>,
}

/// One acknowledged submission.
#[derive(Debug, Clone)]
pub struct Ack {
    pub chain_id: String,
    /// Tries it took.
    pub tries: u32,
    /// The broker answered with the first chain of an idempotency key: an
    /// earlier try was stored but its answer was lost.
    pub deduplicated: bool,
}

type Shared = Arc<Mutex<Observed>>;

fn lock(observed: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the harness; `Ok(true)` when the verdict is a pass.
///
/// # Errors
/// When the harness itself cannot work (no broker binary, a process that
/// cannot be started, an interrupt).
pub async fn run(options: Options) -> anyhow::Result<bool> {
    options.check()?;
    let seed = options.seed.unwrap_or_else(|| now_ns() % 1_000_000);
    let bin = broker_binary(options.broker.as_deref())?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let (dir, temp) = run_dir(options.data_dir.as_deref())?;
    let data = dir.join("data");
    let journals = dir.join("journals");
    let logs = dir.join("logs");
    for d in [&data, &journals, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    println!(
        "baton-chaos: seed {seed}, {} chains over {}, {} workers x {}, lease {} ms",
        options.chains,
        show(options.duration),
        options.workers,
        options.concurrency,
        options.lease_ms
    );
    println!(
        "  broker kill every {} (down {}), worker kill every {} (down {})",
        options.broker_kill_every,
        options.broker_down,
        options.worker_kill_every,
        options.worker_down
    );
    if options.postgres {
        println!(
            "  PostgreSQL mode: {} brokers, leader's lease {} ms, the leader killed on the broker \
             schedule; PostgreSQL crashed every {} (down {})",
            options.broker_count(),
            options.leader_lease_ms,
            options
                .pg_restart_every
                .map_or_else(|| "(never)".to_owned(), |s| s.to_string()),
            options.pg_down
        );
    }
    let troubles = options.troubles();
    for plan in &troubles {
        println!(
            "  {:?} every {} for {}",
            plan.kind, plan.every, plan.lasting
        );
    }
    if options.large_every > 0 {
        println!(
            "  one chain in {} large (150 to 400 KB)",
            options.large_every
        );
    }
    println!(
        "  broker {}, run directory {}",
        bin.display(),
        dir.display()
    );
    if options.workers < 3 && !options.mixed_on_general {
        println!(
            "  note: with fewer than 3 workers there is no heavy-only worker, so the mixed \
             identity can deadlock (docs/reliability.md, \"Findings\")"
        );
    }

    // Whatever the phase, an interrupt kills every child, then the harness.
    tokio::spawn(async {
        interrupted().await;
        procs::kill_all();
        eprintln!("baton-chaos: interrupted; every process of the run was killed");
        std::process::exit(2);
    });
    let mut broker_args = options.broker_arg.clone();
    if options.large_every > 0 && !broker_args.iter().any(|a| a.starts_with("--max-payload")) {
        broker_args.extend(["--max-payload".to_owned(), "1000000".to_owned()]);
    }
    let mut postgres = None;
    let store = if options.postgres {
        let mut server = Postgres::create(options.pg_bin.as_deref(), free_port()?)?;
        server.start()?;
        println!("  PostgreSQL {} (the harness's own)", server.url());
        let url = server.url();
        postgres = Some(server);
        Store::Postgres {
            url,
            leader_lease_ms: options.leader_lease_ms,
        }
    } else {
        Store::Sled(data.clone())
    };
    let mut brokers = Vec::new();
    for id in 0..options.broker_count() {
        let mut broker = Broker::new(
            bin.clone(),
            id,
            free_port()?,
            store.clone(),
            logs.clone(),
            options.lease_ms,
            broker_args.clone(),
        );
        // One after the other: the first leads.
        broker.start().await?;
        brokers.push(broker);
    }
    // What clients and workers are given: every broker, as a user lists
    // them in BATON_ADDR.
    let addrs = brokers
        .iter()
        .map(Broker::host_port)
        .collect::<Vec<_>>()
        .join(",");
    let workers_count = usize::try_from(options.workers).unwrap_or(1);
    let mut workers = Workers::new(
        exe,
        addrs.clone(),
        journals,
        logs.clone(),
        workers_count,
        options.concurrency,
        options.prefetch,
    );
    for slot in 0..workers_count {
        workers.start(slot)?;
    }
    let client = if brokers.len() == 1 {
        Client::new(
            tonic::transport::Endpoint::from_shared(brokers[0].addr())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(RPC_TIMEOUT)
                .connect_lazy(),
        )
    } else {
        // Follows the leader; every call is bounded by RPC_TIMEOUT below.
        Client::connect(addrs.clone()).await?
    };

    let plan = Arc::new(plan::generate(
        seed,
        options.chains,
        options.mixed_on_general,
        options.large_every,
    ));
    let observed: Shared = Arc::default();
    let started = Instant::now();
    let give_up = started + options.duration + options.settle_timeout;
    let submitter = tokio::spawn(submit_all(
        client.clone(),
        Arc::clone(&plan),
        format!("{seed}-{}", now_ns()),
        seed,
        options.duration.mul_f64(SUBMIT_SHARE),
        Arc::clone(&observed),
        give_up,
    ));
    let observer = tokio::spawn(observe(client.clone(), Arc::clone(&observed)));

    let mut seen = Seen::default();
    let quiet = Duration::from_millis(options.lease_ms + 1000);
    let mut troubles = Troubles::new(troubles, seed, started, data, quiet);
    let injected = inject(
        &options,
        seed,
        started,
        &mut brokers,
        postgres.as_mut(),
        &mut workers,
        &mut troubles,
        &mut seen,
    )
    .await;
    // Whatever happened, the broker is left without limits and running,
    // and PostgreSQL up.
    troubles.lift(&brokers[0])?;
    if let Some(server) = postgres.as_mut()
        && let Some(outage) = seen.outages.last_mut()
        && outage.end.is_none()
    {
        server.start()?;
        outage.end = Some(now_ns());
    }
    injected?;
    let chaos_ended = started.elapsed();
    println!(
        "faults stopped after {:.1}s ({} broker kills, {} worker kills{}); waiting for the chains to end",
        chaos_ended.as_secs_f64(),
        seen.kills.iter().filter(|k| k.worker.is_none()).count(),
        seen.kills.iter().filter(|k| k.worker.is_some()).count(),
        if options.postgres {
            format!(", {} PostgreSQL crashes", seen.outages.len())
        } else {
            String::new()
        }
    );

    // Settle: every process up, then wait for every chain to end.
    for slot in 0..workers.count() {
        if !workers.is_up(slot) {
            workers.start(slot)?;
        }
    }
    let settle = async {
        loop {
            seen.exits.extend(workers.exited());
            for slot in 0..workers.count() {
                if !workers.is_up(slot) {
                    workers.start(slot)?;
                }
            }
            restart_exited(&mut brokers, &mut seen).await?;
            let submitted = submitter.is_finished();
            let pending = {
                let o = lock(&observed);
                o.acked
                    .values()
                    .filter(|a| {
                        !o.finals.contains_key(&a.chain_id) && !o.not_found.contains(&a.chain_id)
                    })
                    .count()
            };
            if submitted && pending == 0 {
                return Ok::<bool, anyhow::Error>(false);
            }
            if Instant::now() > give_up {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let settle_timed_out = settle.await?;
    if settle_timed_out {
        let stuck = dir.join("stuck.txt");
        match crate::inspect::describe(&addrs).await {
            Ok(text) => {
                let _ = std::fs::write(&stuck, text);
                println!(
                    "the wait gave up; the broker's state then: {}",
                    stuck.display()
                );
            }
            Err(error) => {
                println!("the wait gave up; the broker could not be inspected: {error:#}")
            }
        }
    }
    submitter.abort();
    observer.abort();
    let settled_after = started.elapsed();

    // Stop: workers drain first (they need the broker), then the brokers,
    // standbys first (a leader stopped first would hand its lease to one).
    seen.exits.extend(workers.exited());
    let live = (0..workers.count()).filter(|s| workers.is_up(*s)).count();
    let workers_clean = workers.stop_all(STOP_GRACE).await;
    restart_exited(&mut brokers, &mut seen).await?;
    let mut order = Vec::new();
    for (i, broker) in brokers.iter().enumerate() {
        order.push((broker.role().await == Role::Leader, i));
    }
    order.sort();
    let mut broker_clean_stop = true;
    for (_, i) in order {
        broker_clean_stop &= brokers[i].terminate(STOP_GRACE).await;
    }
    if let Some(server) = postgres.as_ref() {
        server.shutdown()?;
        server.keep_logs(&logs);
    }
    let Seen {
        kills,
        exits,
        deposed,
        outages,
    } = seen;

    // Evidence.
    let mut reads = Vec::new();
    for process in &workers.history {
        let read = journal::read(&process.journal).unwrap_or_default();
        reads.push(read);
    }
    let several = brokers.len() > 1;
    let mut logged = Logged::default();
    for broker in &mut brokers {
        broker.logs_written().await;
        broker_logs(&logs, broker, several, &mut logged);
    }
    let lapses: HashSet<(String, u32)> = logged
        .lapses
        .iter()
        .map(|l| (l.task.clone(), l.attempt))
        .collect();
    // ERROR lines are expected while the disk is full or no descriptor is
    // left, while PostgreSQL is down, and while the broker repairs its
    // store after; and from a deposed leader, which says so as it stops.
    let grace = u64::try_from(trouble::REPAIR_GRACE.as_nanos()).unwrap_or(u64::MAX);
    let lease_ns = options.leader_lease_ms * 1_000_000;
    let (expected, broker_errors): (Vec<_>, Vec<_>) =
        logged.errors.into_iter().partition(|error| {
            let troubled = troubles.done.iter().any(|e| {
                e.kind != trouble::Kind::Paused
                    && error.broker == 0
                    && e.incarnation == error.incarnation
                    && (e.start..=e.end.saturating_add(grace)).contains(&error.t)
            });
            let database_down = outages.iter().any(|o| {
                let end = o.end.unwrap_or(u64::MAX);
                (o.start..=end.saturating_add(lease_ns + grace)).contains(&error.t)
            });
            troubled || database_down || error.deposed
        });
    let broker_errors: Vec<String> = broker_errors.into_iter().map(|e| e.line).collect();
    // A lease that lapsed in the incarnation that was paused, during the
    // pause or within a lease and a second of its end.
    let after = (options.lease_ms + 1000) * 1_000_000;
    let paused_lapses: Vec<check::Lapse> = logged
        .lapses
        .into_iter()
        .filter(|l| {
            troubles.done.iter().any(|e| {
                e.kind == trouble::Kind::Paused
                    && l.broker == 0
                    && e.incarnation == l.incarnation
                    && (e.start..=e.end + after).contains(&l.t)
            })
        })
        .collect();
    let observed = std::mem::take(&mut *lock(&observed));
    let evidence = Evidence {
        plan: &plan,
        observed: &observed,
        processes: &workers.history,
        journals: &reads,
        kills: &kills,
        deposed: &deposed,
        exits: &exits,
        lapses: &lapses,
        paused_lapses: &paused_lapses,
        broker_errors: &broker_errors,
        broker_clean_stop,
        workers_live_at_stop: live,
        workers_clean,
        settle_timed_out,
    };
    let mut report = check::check(&evidence);
    report.notes.extend(troubles.summary());
    if !troubles.done.is_empty() || !outages.is_empty() || !deposed.is_empty() {
        report.notes.push(format!(
            "{} broker ERROR lines during a full disk, no descriptor or PostgreSQL down, the \
             repair after, or from a deposed leader (expected)",
            expected.len()
        ));
    }
    if !outages.is_empty() {
        let ms = |o: &Outage| o.end.unwrap_or(o.start).saturating_sub(o.start) / 1_000_000;
        report.notes.push(format!(
            "PostgreSQL crashed (immediate shutdown) and restarted {} times, down {} ms in all",
            outages.len(),
            outages.iter().map(ms).sum::<u64>()
        ));
    }
    if !deposed.is_empty() {
        report.notes.push(format!(
            "{} leaders deposed themselves (their lease lapsed without a renewal) and were \
             restarted as standbys",
            deposed.len()
        ));
    }
    if !observed.refusals.is_empty() {
        report.notes.push(format!(
            "submissions refused and retried: {}",
            observed
                .refusals
                .iter()
                .map(|(code, n)| format!("{n} {code}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let large = plan.iter().filter(|d| d.pad_bytes() > 0).count();
    if large > 0 {
        let acked = plan
            .iter()
            .filter(|d| d.pad_bytes() > 0 && observed.acked.contains_key(&d.seq))
            .count();
        report.notes.push(format!(
            "{large} large chains (150 to 400 KB of arguments), {acked} acknowledged"
        ));
    }
    println!(
        "chains ended (or the wait gave up) after {:.1}s: {:.1}s after the faults stopped",
        settled_after.as_secs_f64(),
        settled_after.saturating_sub(chaos_ended).as_secs_f64()
    );
    println!();
    print!("{report}");
    let summary = dir.join("summary.txt");
    let _ = std::fs::write(&summary, report.to_string());
    let passed = report.passed();
    match temp {
        Some(temp) if passed && !options.keep => drop(temp),
        Some(temp) => {
            let kept = temp.keep();
            println!("run directory kept: {}", kept.display());
        }
        None => println!("run directory: {}", dir.display()),
    }
    Ok(passed)
}

/// What the harness did to processes, and what they did by themselves.
#[derive(Default)]
struct Seen {
    kills: Vec<Kill>,
    /// Processes that ended unasked (violations).
    exits: Vec<Exit>,
    /// Leaders that stopped because they could not renew their lease in
    /// time (PostgreSQL mode): by design, a deposed leader stops at once
    /// and its supervisor (here the harness) restarts it as a standby.
    deposed: Vec<Exit>,
    /// PostgreSQL's crashes.
    outages: Vec<Outage>,
}

/// PostgreSQL down: from its crash to its restart (journal clock).
struct Outage {
    start: u64,
    end: Option<u64>,
}

/// Restarts the brokers that ended by themselves, and records why they
/// ended: deposed (their last log line says so) or not.
async fn restart_exited(brokers: &mut [Broker], seen: &mut Seen) -> anyhow::Result<()> {
    for broker in brokers {
        let Some(exit) = broker.exited() else {
            continue;
        };
        broker.logs_written().await;
        if broker.was_deposed() {
            seen.deposed.push(exit);
        } else {
            eprintln!("broker {} exited by itself: {}", broker.id, exit.status);
            seen.exits.push(exit);
        }
        broker.start().await?;
    }
    Ok(())
}

/// The broker to kill: the only one, or the leader of the moment (none
/// while the brokers elect one).
async fn victim(brokers: &[Broker]) -> Option<usize> {
    if let [only] = brokers {
        return only.pid().map(|_| 0);
    }
    for (i, broker) in brokers.iter().enumerate() {
        if broker.role().await == Role::Leader {
            return Some(i);
        }
    }
    None
}

/// The kill schedule, until the duration is over. Processes that end by
/// themselves are recorded and restarted.
#[allow(clippy::too_many_arguments)]
async fn inject(
    options: &Options,
    seed: u64,
    started: Instant,
    brokers: &mut [Broker],
    mut postgres: Option<&mut Postgres>,
    workers: &mut Workers,
    troubles: &mut Troubles,
    seen: &mut Seen,
) -> anyhow::Result<()> {
    // Its own stream, so the plan does not change with the kill settings.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_c4a0_5000_0001);
    // And PostgreSQL's crashes their own, so the kills do not change with
    // them.
    let mut pg_rng = fastrand::Rng::with_seed(seed ^ 0x9057_9e50_0000_0021);
    let end = started + options.duration;
    let mut next_broker_kill = started + options.broker_kill_every.pick(&mut rng);
    let mut next_worker_kill = started + options.worker_kill_every.pick(&mut rng);
    let mut next_pg_crash = options
        .pg_restart_every
        .map(|every| started + every.pick(&mut pg_rng));
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        seen.exits.extend(workers.exited());
        restart_exited(brokers, seen).await?;
        if now >= next_broker_kill {
            match victim(brokers).await {
                Some(i) => {
                    if let Some(kill) = brokers[i].kill9().await {
                        seen.kills.push(kill);
                    }
                    tokio::time::sleep(options.broker_down.pick(&mut rng)).await;
                    brokers[i].start().await?;
                    next_broker_kill = Instant::now() + options.broker_kill_every.pick(&mut rng);
                }
                // No leader yet (a failover under way): ask again soon.
                None => next_broker_kill = Instant::now() + Duration::from_millis(250),
            }
        }
        if let (Some(at), Some(server), Some(every)) = (
            next_pg_crash,
            postgres.as_deref_mut(),
            options.pg_restart_every,
        ) && now >= at
        {
            // From before the crash: the brokers see it while `pg_ctl`
            // still waits for the server to stop.
            seen.outages.push(Outage {
                start: now_ns(),
                end: None,
            });
            server.crash()?;
            tokio::time::sleep(options.pg_down.pick(&mut pg_rng)).await;
            server.start()?;
            if let Some(outage) = seen.outages.last_mut() {
                outage.end = Some(now_ns());
            }
            next_pg_crash = Some(Instant::now() + every.pick(&mut pg_rng));
        }
        if now >= next_worker_kill {
            let up: Vec<usize> = (0..workers.count()).filter(|s| workers.is_up(*s)).collect();
            if let Some(&slot) = rng.choice(up.iter()) {
                if let Some(kill) = workers.kill9(slot).await {
                    seen.kills.push(kill);
                }
                restarts.push((Instant::now() + options.worker_down.pick(&mut rng), slot));
            }
            next_worker_kill = Instant::now() + options.worker_kill_every.pick(&mut rng);
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = restarts.into_iter().partition(|(at, _)| *at <= now);
        restarts = later;
        for (_, slot) in due {
            if !workers.is_up(slot) {
                workers.start(slot)?;
            }
        }
        troubles.tick(&brokers[0])?;
        // Slots of workers that exited by themselves come back at once.
        let next = [
            next_broker_kill,
            next_worker_kill,
            end,
            now + Duration::from_millis(200),
        ]
        .into_iter()
        .chain(next_pg_crash)
        .chain(troubles.next())
        .chain(restarts.iter().map(|(at, _)| *at))
        .min()
        .unwrap_or(end);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Submits the plan at a steady pace over `span`, in bursts.
async fn submit_all(
    client: Client,
    plan: Arc<Vec<Design>>,
    key: String,
    seed: u64,
    span: Duration,
    observed: Shared,
    give_up: Instant,
) {
    let start = tokio::time::Instant::now();
    let semaphore = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let count = u32::try_from(plan.len()).unwrap_or(u32::MAX).max(1);
    for (i, design) in plan.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(start + span / count * (i - i % BURST)).await;
        let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
            return;
        };
        let (client, design, key) = (client.clone(), design.clone(), key.clone());
        let observed = Arc::clone(&observed);
        tasks.spawn(async move {
            submit_one(&client, &design, &key, seed, &observed, give_up).await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Submits one chain until acknowledged (same idempotency key every try),
/// then cancels it if it is designed to be cancelled.
async fn submit_one(
    client: &Client,
    design: &Design,
    key: &str,
    seed: u64,
    observed: &Shared,
    give_up: Instant,
) {
    let mut tries = 0;
    let chain_id = loop {
        tries += 1;
        match tokio::time::timeout(RPC_TIMEOUT, client.submit(design.chain(key))).await {
            Ok(Ok(submitted)) => {
                let deduplicated = !submitted.is_new();
                let mut o = lock(observed);
                if deduplicated && tries == 1 {
                    o.oddities.push(format!(
                        "chain {}: the first submission was answered as a duplicate ({:?})",
                        design.seq, submitted.dedup
                    ));
                }
                o.acked.insert(
                    design.seq,
                    Ack {
                        chain_id: submitted.chain_id.clone(),
                        tries,
                        deduplicated,
                    },
                );
                break submitted.chain_id;
            }
            Ok(Err(error)) if error.code() == Some(tonic::Code::InvalidArgument) => {
                lock(observed)
                    .oddities
                    .push(format!("chain {} was refused: {error}", design.seq));
                return;
            }
            Ok(Err(error)) => {
                let mut o = lock(observed);
                o.submit_retries += 1;
                if let Some(code) = error.code() {
                    *o.refusals.entry(format!("{code:?}")).or_default() += 1;
                }
            }
            Err(_) => lock(observed).submit_retries += 1,
        }
        if Instant::now() > give_up {
            lock(observed).unacked.push(design.seq);
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    if design.expect != Expect::Cancel {
        return;
    }
    let mut rng = fastrand::Rng::with_seed(seed ^ design.seq.rotate_left(17));
    let delay: Span = Span {
        min: Duration::from_millis(300),
        max: Duration::from_millis(3000),
    };
    tokio::time::sleep(delay.pick(&mut rng)).await;
    loop {
        let cancelled =
            tokio::time::timeout(RPC_TIMEOUT, client.cancel(&chain_id, "chaos: by design")).await;
        if let Ok(Ok(state)) = cancelled {
            lock(observed).cancels.insert(design.seq, state);
            return;
        }
        if Instant::now() > give_up {
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Follows every acknowledged chain with GetChain until it ended.
async fn observe(client: Client, observed: Shared) {
    loop {
        let pending: Vec<String> = {
            let o = lock(&observed);
            o.acked
                .values()
                .map(|a| a.chain_id.clone())
                .filter(|id| !o.finals.contains_key(id) && !o.not_found.contains(id))
                .collect()
        };
        let mut answers = futures::stream::iter(pending)
            .map(|id| {
                let client = client.clone();
                async move {
                    let got = tokio::time::timeout(RPC_TIMEOUT, client.get(&id)).await;
                    (id, got)
                }
            })
            .buffer_unordered(16);
        while let Some((id, got)) = answers.next().await {
            let mut o = lock(&observed);
            match got {
                Ok(Ok(chain)) => {
                    let ended = !matches!(
                        chain.state(),
                        pb::ChainState::Running | pb::ChainState::Unspecified
                    );
                    if ended {
                        o.last_seen.remove(&id);
                        o.finals.insert(id, chain);
                    } else {
                        o.last_seen.insert(id, chain);
                    }
                }
                Ok(Err(error)) if error.code() == Some(tonic::Code::NotFound) => {
                    o.not_found.insert(id);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// ctrl-c or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The broker binary: as given, or `baton` next to this binary. Run through
/// cargo (`$CARGO` set) with no `--broker`, it is built first, so
/// `cargo run -p baton-chaos` and `cargo test -p baton-chaos` test the
/// broker of the working tree.
pub fn broker_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if !path.exists() {
            bail!("--broker {} does not exist", path.display());
        }
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let profile_dir = exe.parent().context("this binary has no directory")?;
    let bin = profile_dir.join(format!("baton{}", std::env::consts::EXE_SUFFIX));
    let target_dir = profile_dir
        .parent()
        .filter(|t| t.join("CACHEDIR.TAG").exists());
    if let (Some(cargo), Some(target_dir)) = (std::env::var_os("CARGO"), target_dir) {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "baton-server", "--bin", "baton"])
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        eprintln!("building the broker: {build:?}");
        let status = build.status().context("running cargo build")?;
        if !status.success() {
            bail!("building the broker failed: {status}");
        }
    }
    if !bin.exists() {
        bail!(
            "{} is missing: build it (cargo build [--release] -p baton-server) or pass --broker",
            bin.display()
        );
    }
    Ok(bin)
}

/// The run directory, and the temporary directory guard when it is one.
fn run_dir(given: Option<&Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!("--data-dir {} is not empty", dir.display());
            }
            Ok((dir.to_owned(), None))
        }
        None => {
            let temp = tempfile::Builder::new().prefix("baton-chaos-").tempdir()?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What the brokers' logs (JSON lines) said.
#[derive(Default)]
struct Logged {
    /// Every lease they saw lapse.
    lapses: Vec<check::Lapse>,
    /// Every line at ERROR.
    errors: Vec<ErrorLine>,
}

/// A line a broker logged at ERROR.
struct ErrorLine {
    broker: usize,
    incarnation: u32,
    t: u64,
    /// The line, prefixed with its file's name.
    line: String,
    /// A deposed leader's last words.
    deposed: bool,
}

/// Reads every incarnation's log of `broker` into `logged`.
fn broker_logs(logs: &Path, broker: &Broker, several: bool, logged: &mut Logged) {
    for incarnation in 1..=broker.incarnation {
        let name = Broker::log_path(logs, broker.id, several, incarnation);
        let Ok(text) = std::fs::read_to_string(&name) else {
            continue;
        };
        let file = name
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let t = entry["timestamp"]
                .as_str()
                .and_then(trouble::rfc3339_ns)
                .unwrap_or(0);
            let fields = &entry["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            if message.starts_with("lease lapsed")
                && let (Some(task), Some(attempt)) =
                    (fields["task.id"].as_str(), fields["attempt"].as_u64())
            {
                logged.lapses.push(check::Lapse {
                    task: task.to_owned(),
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    broker: broker.id,
                    incarnation,
                    t,
                });
            }
            if entry["level"].as_str() == Some("ERROR") {
                logged.errors.push(ErrorLine {
                    broker: broker.id,
                    incarnation,
                    t,
                    line: format!("{file}: {line}"),
                    deposed: message.starts_with(procs::DEPOSED),
                });
            }
        }
    }
}

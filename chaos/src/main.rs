//! `baton-chaos`: the fault-injection harness of Baton's reliability work.
//!
//! It drives the real `baton` broker and real worker processes on loopback:
//! thousands of chains (throttled identities in all three forms, heavy
//! steps, retries, retry-later polls, cancellations, callbacks) while it
//! repeatedly `kill -9`s the broker (restarting it on the same data
//! directory and port) and the workers (restarting them). At the end it
//! checks, from the task bodies' own journals, that every acknowledged
//! chain ended as designed, none was lost, callbacks fired as the
//! guarantees say and no throttle identity ever had more holders than its
//! limit; it prints the counts and exits non-zero when a guarantee broke.
//!
//! ```text
//! baton-chaos [--duration 300s --chains 5000 --seed 42 ...]   a run (see --help)
//! baton-chaos worker --addr ... --journal FILE ...            one worker process (the harness starts these)
//! baton-chaos powercut [--runs 3 --seed 19]                   simulated power cuts (see `powercut_run`)
//! ```
//!
//! Modules, in reading order:
//! - `run`: the run itself (processes, kill schedule, submissions, the wait);
//! - `plan`: the chains, drawn from the seed, and how each must end;
//! - `worker`: the worker sub-mode and its one journalling task body;
//! - `journal`: the records bodies write and the checker reads;
//! - `procs`: starting, killing and stopping the broker and the workers;
//! - `check`: the verdict;
//! - `trouble`: faults besides kills (a full disk, no descriptor left, a
//!   paused broker), each an episode with a start and an end;
//! - `span`: durations and ranges on the command line;
//! - `powercut`, `powercut_run`: the power-cut shim, its rollback, and the
//!   `powercut` mode.
//!
//! Exit codes: 0 the guarantees held, 1 they did not, 2 the harness could
//! not run.

mod check;
mod inspect;
mod journal;
mod plan;
mod postgres;
mod powercut;
mod powercut_run;
mod procs;
mod run;
mod span;
mod trouble;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton-chaos",
    version,
    about = "Kill -9 the Baton broker and its workers under load, then check the guarantees",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::Options,
}

#[derive(Subcommand)]
enum Command {
    /// One worker process of a run (started by the harness).
    Worker(worker::Options),
    /// Print a broker's queues, workers and throttles (to look into a failed
    /// run: start `baton serve --data <run dir>/data` and point this at it).
    Inspect {
        /// The broker, e.g. 127.0.0.1:7070.
        #[arg(long)]
        addr: String,
    },
    /// Simulated power cuts: submit under a shim that records what is not
    /// durable, kill -9, roll back, restart, and check every acknowledged
    /// chain is there (Linux, needs `cc`).
    Powercut(powercut_run::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton-chaos: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Some(Command::Worker(options)) => {
            init_logging();
            match runtime.block_on(worker::main(options)) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("baton-chaos worker: {error:#}");
                    2
                }
            }
        }
        Some(Command::Inspect { addr }) => match runtime.block_on(inspect::describe(&addr)) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(error) => {
                eprintln!("baton-chaos inspect: {error:#}");
                2
            }
        },
        Some(Command::Powercut(options)) => match runtime.block_on(powercut_run::run(options)) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(error) => {
                eprintln!("baton-chaos powercut: {error:#}");
                2
            }
        },
        None => match runtime.block_on(run::run(cli.run)) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(error) => {
                eprintln!("baton-chaos: {error:#}");
                2
            }
        },
    };
    // Not waiting for the runtime: a worker's stdin reader may still block.
    std::process::exit(code);
}

/// Worker logs go to stderr (a file per process, from the harness), at the
/// level `RUST_LOG` sets.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

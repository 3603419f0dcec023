//! The operator's subcommands of `baton`: everything but `serve` and
//! `token`, which live in `main.rs`.
//!
//! Each client subcommand talks to a running broker over gRPC with the
//! typed client (`baton::Client`), prints aligned tables (or `--json` for
//! scripts) on stdout, and ends with an exit code a script can act on:
//!
//! - 0: done (a waited-for chain succeeded);
//! - 1: the operation failed: the broker refused it or could not be
//!   reached (one line on stderr, `error: chain ... not found`), or a
//!   waited-for chain failed or was cancelled;
//! - 2: bad arguments (clap's own errors, and input files that do not
//!   parse), before anything was sent.
//!
//! `baton config check` validates a configuration file (see `config.rs`).

pub mod admin;
pub mod chain;
pub mod config;
pub mod output;
pub mod schedule;
pub mod submit;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

/// The operator's subcommands, flattened into `baton`'s own.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit a chain from a JSON file (or stdin), or a single task.
    Submit(submit::Args),
    /// Show, follow or cancel a chain.
    #[command(subcommand)]
    Chain(chain::Command),
    /// List queues: ready, delayed, throttled and running tasks, paused or not.
    Queues(admin::ListArgs),
    /// Pause, resume or purge a queue.
    #[command(subcommand)]
    Queue(admin::QueueCommand),
    /// List connected workers.
    Workers(admin::ListArgs),
    /// Drain a worker.
    #[command(subcommand)]
    Worker(admin::WorkerCommand),
    /// List throttles (limits, holders, waiters), or set a limit.
    Throttles(admin::ThrottlesArgs),
    /// Failed chains: list them with their failure records, requeue them.
    #[command(subcommand)]
    Dead(admin::DeadCommand),
    /// Periodic schedules: add, list, pause, resume, remove.
    #[command(subcommand)]
    Schedule(schedule::Command),
    /// Check a configuration file for `baton serve --config`.
    #[command(subcommand)]
    Config(config::Command),
}

/// How to reach the broker, and how to print: every client subcommand
/// takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The broker's address: host:port, or a URI (https://... for TLS);
    /// several brokers on one database as a comma-separated list
    /// (h1:7070,h2:7070): the leader among them is found and followed
    /// [default: 127.0.0.1:7070; the deprecated BATON_ADDRESS is read when
    /// BATON_ADDR is not set].
    #[arg(long, env = "BATON_ADDR")]
    pub addr: Option<String>,
    /// Token secret, for a broker with authentication on (admin commands
    /// need role admin).
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for a TLS broker; turns TLS on.
    #[arg(long, env = "BATON_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Print JSON for scripts instead of tables (events: one object per
    /// line).
    #[arg(long)]
    pub json: bool,
}

/// Bad input found before anything was sent: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Shorthand for a [`Usage`] error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// Runs an operator subcommand; returns its exit code.
///
/// # Errors
/// What failed, for `main` to print as one line (exit 1, or 2 for
/// [`Usage`]).
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Submit(args) => submit::run(args).await,
        Command::Chain(command) => chain::run(command).await,
        Command::Queues(args) => admin::queues(args).await,
        Command::Queue(command) => admin::queue(command).await,
        Command::Workers(args) => admin::workers(args).await,
        Command::Worker(command) => admin::worker(command).await,
        Command::Throttles(args) => admin::throttles(args).await,
        Command::Dead(command) => admin::dead(command).await,
        Command::Schedule(command) => schedule::run(command).await,
        Command::Config(command) => config::run(command),
    }
}

/// The exit code of an error: 2 for bad input, 1 for the rest.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.is::<Usage>() || error.is::<clap::Error>() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

impl Conn {
    /// The broker's address: `--addr` or `$BATON_ADDR`, else the
    /// deprecated `$BATON_ADDRESS`, else the default.
    pub fn addr(&self) -> String {
        self.addr
            .clone()
            .or_else(deprecated_addr)
            .unwrap_or_else(|| baton::DEFAULT_ADDR.to_owned())
    }

    /// Connects to the broker.
    ///
    /// # Errors
    /// When the CA file cannot be read or the broker cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<baton::Client> {
        if self.addr.is_none() && deprecated_addr().is_some() {
            eprintln!(
                "warning: ${} is deprecated, use ${}",
                baton::DEPRECATED_ADDR_VAR,
                baton::ADDR_VAR
            );
        }
        let mut options = baton::ClientOptions::new();
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| usage(format!("reading --tls-ca {}: {e}", ca.display())))?;
            options = options.tls(baton::TlsOptions::new().ca_pem(pem));
        }
        baton::Client::connect_with(self.addr(), options)
            .await
            .map_err(|e| self.error(e))
    }

    /// One line saying what went wrong with a call, in the operator's
    /// terms: the broker's own message for an answer about the request
    /// (`chain ... not found`), the address for an unreachable broker.
    pub fn error(&self, error: baton::Error) -> anyhow::Error {
        let addr = self.addr();
        let message = match &error {
            baton::Error::Transport(e) => {
                format!(
                    "cannot reach the broker at {addr}: {}",
                    root_cause(e as &dyn std::error::Error)
                )
            }
            baton::Error::Status(status) => {
                let text = status.message();
                match status.code() {
                    _ if std::error::Error::source(status.as_ref()).is_some() => {
                        format!("lost the connection to the broker at {addr}: {text}")
                    }
                    tonic::Code::Unavailable => {
                        format!("the broker at {addr} is unavailable: {text}")
                    }
                    tonic::Code::Unauthenticated => {
                        format!("{text} (give a token with --token or BATON_TOKEN)")
                    }
                    tonic::Code::DeadlineExceeded => {
                        format!("the broker at {addr} did not answer in time: {text}")
                    }
                    _ if text.is_empty() => format!("the broker answered {}", status.code()),
                    _ => text.to_owned(),
                }
            }
            other => other.to_string(),
        };
        anyhow::Error::msg(message)
    }
}

/// `$BATON_ADDRESS`, the Python SDK's name before `$BATON_ADDR`.
fn deprecated_addr() -> Option<String> {
    std::env::var(baton::DEPRECATED_ADDR_VAR)
        .ok()
        .filter(|addr| !addr.is_empty())
}

/// The innermost cause of an error ("Connection refused (os error 111)").
fn root_cause(mut e: &dyn std::error::Error) -> String {
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// Parses a duration in seconds for `--timeout` (fractions allowed).
pub fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("{text:?} is not a duration"))
}

/// Runs `work`, giving up after `timeout` (if any) with an error that says
/// the operation goes on at the broker.
///
/// # Errors
/// Those of `work`, or the timeout.
pub async fn bounded<T>(
    timeout: Option<Duration>,
    what: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match timeout {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
            anyhow::anyhow!(
                "gave up waiting after {} ({what} goes on at the broker)",
                output::duration(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
            )
        })?,
    }
}

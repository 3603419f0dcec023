//! The `baton` command: parses arguments, sets up logging, binds, and hands
//! over to [`baton_server::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "baton", version, about = "Baton task broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker on an embedded sled store.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Data directory of the store (created if missing).
    #[arg(long, env = "BATON_DATA", default_value = "./baton-data")]
    data: PathBuf,
    /// Lease length in milliseconds: a worker silent for this long loses its
    /// assignments, which are redelivered.
    #[arg(long, env = "BATON_LEASE_MS", default_value_t = 30_000)]
    lease_ms: u64,
    /// Acknowledge before the store is flushed (benchmarks only: a crash may
    /// lose acknowledged work).
    #[arg(long, env = "BATON_NO_DURABLE")]
    no_durable: bool,
    /// Largest request payload in bytes.
    #[arg(long, env = "BATON_MAX_PAYLOAD", default_value_t = 1024 * 1024)]
    max_payload: usize,
    /// Log format: "text" or "json".
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format);
    if args.lease_ms == 0 {
        anyhow::bail!("--lease-ms must be at least 1");
    }
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mut config = baton_server::Config::new(&args.data);
    config.lease = Duration::from_millis(args.lease_ms);
    config.durable = !args.no_durable;
    config.limits.max_payload_bytes = args.max_payload;
    if !config.durable {
        tracing::warn!("durable acknowledgment is OFF: a crash may lose acknowledged work");
    }
    baton_server::run(listener, config, shutdown)
        .await
        .context("broker failed")
}

/// Completes on SIGINT (ctrl-c) or SIGTERM. The handlers are installed
/// here, before the listener binds, so a signal that arrives while the
/// store is still opening starts a clean drain rather than killing the
/// process.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received; draining");
    })
}

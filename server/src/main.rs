//! The `baton` command: parses arguments, sets up logging, binds, and hands
//! over to [`baton_server::run`]. `baton token` makes and hashes secrets
//! for the token file. The operator's subcommands (submit, chain, queues,
//! workers, throttles, dead, config) live in [`cli`].
//!
//! Exit codes: 0 done, 1 failed (one `error: ...` line on stderr), 2 bad
//! arguments.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_server::{auth, settings};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc instead of the system allocator: the broker allocates many
/// small, short-lived blocks (records, messages, sled nodes), and glibc's
/// malloc took about a fifth of its CPU in the no-op benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Make and hash secrets for the token file (`serve --tokens`).
    #[command(subcommand)]
    Token(TokenCommand),
    #[command(flatten)]
    Operate(cli::Command),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh random secret (on stderr) and the `[[token]]` table
    /// to add to the token file (on stdout, so `>> tokens.toml` works).
    New {
        /// The token's name: 1 to 64 characters of A-Z a-z 0-9 _ . -
        #[arg(long)]
        name: String,
        /// client, worker or admin.
        #[arg(long, value_parser = ["client", "worker", "admin"])]
        role: String,
        /// Queues a worker token may serve, comma-separated ("*" = any).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
    },
    /// Read a secret from stdin (one line) and print its SHA-256, the
    /// `sha256` of its entry in the token file.
    Hash,
}

/// `--auth`: how callers are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AuthMode {
    /// Every call needs a token of the `--tokens` file.
    Tokens,
    /// No authentication: local development only.
    Off,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Data directory of the store (created if missing): the embedded
    /// sled store, unless --store names a database.
    #[arg(long, env = "BATON_DATA", default_value = "./baton-data")]
    data: PathBuf,
    // The help text below is also a doc comment: its `[:PASSWORD]` is not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Keep the store in a PostgreSQL database instead of --data:
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB. The schema is created or
    /// migrated at start.
    #[arg(long, env = "BATON_STORE")]
    store: Option<String>,
    /// With --store: the leader's lease in milliseconds (100 to 60000).
    /// Several brokers may share one database; one leads, the others
    /// stand by and take over within this (plus a poll) after it died.
    #[arg(long, env = "BATON_LEADER_LEASE_MS", default_value_t = 5_000)]
    leader_lease_ms: u64,
    /// With --store: the address (HOST:PORT) standbys name to clients when
    /// this broker leads. Default: the --listen address.
    #[arg(long, env = "BATON_ADVERTISE")]
    advertise: Option<String>,
    /// Lease length in milliseconds (1 to 86400000, one day): a worker
    /// silent for this long loses its assignments, which are redelivered,
    /// and its stream is ended.
    #[arg(long, env = "BATON_LEASE_MS", default_value_t = 30_000)]
    lease_ms: u64,
    /// Acknowledge before the store is flushed (benchmarks only: a crash may
    /// lose acknowledged work).
    #[arg(long, env = "BATON_NO_DURABLE")]
    no_durable: bool,
    /// Largest request payload in bytes.
    #[arg(long, env = "BATON_MAX_PAYLOAD", default_value_t = 1024 * 1024)]
    max_payload: usize,
    /// Most signatures in one chain (steps + on_success + on_failure).
    #[arg(long, env = "BATON_MAX_STEPS", default_value_t = 1000)]
    max_steps: usize,
    /// Most worker streams connected at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "BATON_MAX_WORKERS", default_value_t = 1000)]
    max_workers: usize,
    /// Most WatchChain streams open at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "BATON_MAX_WATCHES", default_value_t = 10_000)]
    max_watches: usize,
    /// Largest concurrency a worker may declare: the most assignments one
    /// worker stream holds at once.
    #[arg(long, env = "BATON_MAX_WORKER_CONCURRENCY", default_value_t = 10_000)]
    max_worker_concurrency: u32,
    /// Log format: "text" or "json".
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Authentication: "tokens" or "off". Default: tokens when --tokens is
    /// given, else off (which is refused on a non-loopback address unless
    /// --allow-insecure).
    #[arg(long, env = "BATON_AUTH", value_enum)]
    auth: Option<AuthMode>,
    /// The token file (TOML; see `baton token new`).
    #[arg(long, env = "BATON_TOKENS")]
    tokens: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address.
    #[arg(long, env = "BATON_ALLOW_INSECURE")]
    allow_insecure: bool,
    /// The server's TLS certificate chain (PEM); turns TLS on.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate(s) of client certificates (PEM): mutual TLS. Worker
    /// streams then need a client certificate it signed.
    #[arg(long, env = "BATON_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Milliseconds a new connection may take to complete its handshake
    /// (TLS and the HTTP/2 preface) before it is closed (1 to 600000).
    #[arg(long, env = "BATON_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    handshake_timeout_ms: u64,
    /// Milliseconds an ended chain (succeeded, failed or cancelled) is kept
    /// after it ended: then its record, results and idempotency key are
    /// removed in the background. 0 keeps ended chains forever. Default:
    /// seven days.
    #[arg(long, env = "BATON_RETENTION_MS", default_value_t = settings::DEFAULT_RETENTION_MS)]
    retention_ms: u64,
    /// Milliseconds of waiting that raise a ready task one priority (up to
    /// 9), so a steady stream of urgent work cannot starve the rest; within
    /// one priority the order stays first in, first out. 0 keeps priorities
    /// strict. Default: one minute.
    #[arg(long, env = "BATON_PRIORITY_AGING_MS", default_value_t = settings::DEFAULT_PRIORITY_AGING_MS)]
    priority_aging_ms: u64,
    /// Most connections open at once; more are closed as they come. Kept
    /// below the descriptor limit (`ulimit -n`) less a reserve for the store.
    #[arg(long, env = "BATON_MAX_CONNECTIONS", default_value_t = baton_server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The configuration file's `[[schedule]]` entries.
    #[arg(skip)]
    schedules: Vec<cli::config::ScheduleFile>,
    /// The HTTP listener: the dashboard, the JSON API, /metrics (role
    /// admin) and /healthz, with the tokens and TLS of the gRPC port. An
    /// address, or "off". Default: 127.0.0.1:7071, skipped with a warning
    /// when that address is in use; a given address that cannot be bound
    /// stops the broker.
    #[arg(long, env = "BATON_HTTP")]
    http: Option<String>,
    /// Deprecated (use --http): serve Prometheus metrics alone on this
    /// address (GET /metrics, plain HTTP, no authentication); off when not
    /// given.
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// A TOML configuration file: one key per flag (`lease_ms` for
    /// --lease-ms). Flags and BATON_* variables override it.
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Serve(mut args) => {
            let serve_matches = matches.subcommand_matches("serve").unwrap_or(&matches);
            match cli::config::apply(&mut args, serve_matches) {
                Ok(()) => serve(args).await.map(|()| ExitCode::SUCCESS),
                Err(e) => Err(e),
            }
        }
        Command::Token(command) => token(command).map(|()| ExitCode::SUCCESS),
        Command::Operate(command) => cli::run(command).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        cli::exit_code(&e)
    })
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::New { name, role, queues } => {
            let role: auth::Role = role.parse().map_err(anyhow::Error::msg)?;
            let queues: Vec<String> = queues
                .into_iter()
                .map(|q| q.trim().to_owned())
                .filter(|q| !q.is_empty())
                .collect();
            if role == auth::Role::Worker && queues.is_empty() {
                anyhow::bail!("a worker token needs --queues (e.g. general,heavy; \"*\" for any)");
            }
            if role != auth::Role::Worker && !queues.is_empty() {
                anyhow::bail!("--queues is only for --role worker");
            }
            let secret = auth::new_secret().context("reading the OS random source")?;
            let entry = auth::toml_entry(&name, role, &queues, &secret);
            // Checked like the broker checks the file: a bad name or queue
            // fails here, not when the broker starts.
            auth::Tokens::parse(&entry, "the new entry").map_err(anyhow::Error::msg)?;
            eprintln!("secret of token {name:?} (shown once; the broker keeps only its hash):");
            eprintln!("{secret}");
            print!("\n{entry}");
            Ok(())
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the secret from stdin")?;
            let secret = line.trim();
            if secret.is_empty() {
                anyhow::bail!("no secret on stdin");
            }
            println!("{}", auth::hex(&auth::digest(secret)));
            Ok(())
        }
    }
}

/// The broker's authentication and TLS, from the flags; refuses the
/// combinations that would serve more openly than the operator meant.
fn security(args: &ServeArgs) -> anyhow::Result<(auth::Auth, Option<auth::Tls>)> {
    let mode = args.auth.unwrap_or(if args.tokens.is_some() {
        AuthMode::Tokens
    } else {
        AuthMode::Off
    });
    let auth = match (mode, &args.tokens) {
        (AuthMode::Tokens, None) => anyhow::bail!(
            "--auth tokens needs a token file: --tokens FILE (or BATON_TOKENS); \
             make entries with `baton token new --name NAME --role client|worker|admin`"
        ),
        (AuthMode::Tokens, Some(path)) => {
            let tokens = auth::Tokens::load(path)?;
            if tokens.is_empty() {
                anyhow::bail!(
                    "{} has no [[token]] entries: every call would be refused",
                    path.display()
                );
            }
            auth::Auth::Tokens(std::sync::Arc::new(tokens))
        }
        (AuthMode::Off, Some(path)) => anyhow::bail!(
            "--auth off and --tokens {} contradict each other: drop one",
            path.display()
        ),
        (AuthMode::Off, None) => {
            if !args.listen.ip().is_loopback() && !args.allow_insecure {
                anyhow::bail!(
                    "refusing to serve without authentication on {} (not a loopback address): \
                     give --tokens FILE, or --allow-insecure to let anyone who reaches this port \
                     submit, run, inspect and cancel work",
                    args.listen
                );
            }
            auth::Auth::Off
        }
    };
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(auth::Tls {
            cert_pem: read("--tls-cert", cert)?,
            key_pem: read("--tls-key", key)?,
            client_ca_pem: args
                .tls_client_ca
                .as_ref()
                .map(|ca| read("--tls-client-ca", ca))
                .transpose()?,
        }),
        _ => None,
    };
    if tls.is_none() && matches!(auth, auth::Auth::Tokens(_)) && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "tokens travel in clear text on {}: serve TLS (--tls-cert, --tls-key) unless a proxy does",
            args.listen
        );
    }
    Ok((auth, tls))
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
    settings::LEASE_MS.check(&settings::LEASE_MS.flag(), args.lease_ms)?;
    settings::HANDSHAKE_TIMEOUT_MS.check(
        &settings::HANDSHAKE_TIMEOUT_MS.flag(),
        args.handshake_timeout_ms,
    )?;
    settings::RETENTION_MS.check(&settings::RETENTION_MS.flag(), args.retention_ms)?;
    settings::PRIORITY_AGING_MS
        .check(&settings::PRIORITY_AGING_MS.flag(), args.priority_aging_ms)?;
    settings::LEADER_LEASE_MS.check(&settings::LEADER_LEASE_MS.flag(), args.leader_lease_ms)?;
    if let Some(addr) = &args.advertise {
        baton_server::leader::check_advertise(addr)
            .map_err(|e| anyhow::anyhow!("--advertise: {e}"))?;
    }
    for (flag, value) in [
        ("--max-connections", args.max_connections),
        ("--max-payload", args.max_payload),
        ("--max-steps", args.max_steps),
        ("--max-workers", args.max_workers),
        ("--max-watches", args.max_watches),
        (
            "--max-worker-concurrency",
            usize::try_from(args.max_worker_concurrency).unwrap_or(usize::MAX),
        ),
    ] {
        if value == 0 {
            anyhow::bail!("{flag} must be at least 1");
        }
    }
    if let Some(url) = &args.store {
        cli::config::check_store(url)?;
    }
    let (auth, tls) = security(&args)?;
    let shutdown = shutdown_signal()?;
    keep_running_past_file_size_limit()?;
    no_transparent_huge_pages();
    raise_descriptor_limit();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mut config = baton_server::Config::new(&args.data);
    config.postgres = args.store.clone();
    config.lease = Duration::from_millis(args.lease_ms);
    config.durable = !args.no_durable;
    config.limits.max_payload_bytes = args.max_payload;
    config.limits.max_steps = args.max_steps;
    config.limits.max_workers = args.max_workers;
    config.limits.max_watches = args.max_watches;
    config.limits.max_worker_concurrency = args.max_worker_concurrency;
    config.auth = auth;
    config.tls = tls;
    config.metrics_listen = args.metrics_listen;
    config.http = http_listen(&args)?;
    config.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms);
    config.retention = Duration::from_millis(args.retention_ms);
    config.priority_aging = Duration::from_millis(args.priority_aging_ms);
    config.schedules = args
        .schedules
        .iter()
        .map(cli::config::ScheduleFile::to_schedule)
        .collect::<anyhow::Result<_>>()?;
    config.max_connections = args.max_connections;
    config.leader_lease = Duration::from_millis(args.leader_lease_ms);
    config.advertise = args.advertise.clone();
    if let Some(path) = &args.config {
        tracing::info!(config = %path.display(), "configuration file read");
    }
    if !config.durable {
        tracing::warn!("durable acknowledgment is OFF: a crash may lose acknowledged work");
    }
    baton_server::run(listener, config, shutdown)
        .await
        .context("broker failed")
}

/// Where the HTTP listener listens (`--http`): the default address unless
/// told otherwise, refused off loopback without authentication as the gRPC
/// address is.
fn http_listen(args: &ServeArgs) -> anyhow::Result<Option<baton_server::http::Listen>> {
    use baton_server::http::{DEFAULT_ADDR, Listen};
    let (addr, required) = match args.http.as_deref().map(str::trim) {
        Some("off") => return Ok(None),
        None => (DEFAULT_ADDR, false),
        Some(addr) => (addr, true),
    };
    let addr: std::net::SocketAddr = addr.parse().with_context(|| {
        format!("--http {addr:?} is not an address like 127.0.0.1:7071, nor \"off\"")
    })?;
    let auth_off = matches!(args.auth, Some(AuthMode::Off)) || args.tokens.is_none();
    if auth_off && !addr.ip().is_loopback() && !args.allow_insecure {
        anyhow::bail!(
            "refusing to serve the dashboard and HTTP API without authentication on {addr} \
             (not a loopback address): give --tokens FILE, or --allow-insecure"
        );
    }
    Ok(Some(Listen::Addr { addr, required }))
}

/// A write past the file-size limit (`ulimit -f`) raises SIGXFSZ, which
/// kills the process by default. With a handler installed the write fails
/// with EFBIG instead, which the store treats as a full disk: submissions
/// are refused with RESOURCE_EXHAUSTED until there is room again, and
/// nothing acknowledged is lost. tokio keeps the handler for the life of
/// the process; the signal itself needs no action.
fn keep_running_past_file_size_limit() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let kind = tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ);
        let mut signals =
            tokio::signal::unix::signal(kind).context("installing the SIGXFSZ handler")?;
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                tracing::debug!("SIGXFSZ: a store write went past the file-size limit");
            }
        });
    }
    Ok(())
}

/// Turns transparent huge pages off for this process, as Redis does for
/// itself (`disable-thp`). mimalloc asks for them on its arenas, and the
/// first touch of each 2 MiB page clears all of it while the broker waits:
/// in the no-op benchmark that clearing took about a seventh of the broker's
/// CPU, and it puts the same stalls into the latency figures. Pages of 4 KiB
/// cost a few more TLB misses, which nothing here measured. Best effort: an
/// older kernel that refuses the call leaves things as they were.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(cause = %e, "transparent huge pages stay as the system sets them");
    }
}

/// Raises the soft limit on open descriptors (`ulimit -n`) to the hard
/// limit, as nginx, PostgreSQL and most servers do: the soft limit is often
/// 1024, too few for a broker with many workers and clients, while the
/// hard limit is what the operator allows. The connection cap is then kept
/// below it (`listener::connection_cap`). Best effort: a failure leaves
/// the limit as it was.
fn raise_descriptor_limit() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::debug!(from = ?limit.current, to = ?limit.maximum, "descriptor limit raised")
                }
                Err(e) => tracing::debug!(cause = %e, "descriptor limit left as it was"),
            }
        }
    }
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

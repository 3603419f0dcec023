//! Baton's broker: a gRPC server that stores chains durably, decides what
//! runs where and when, and streams assignments to workers.
//!
//! Three layers, each in its own module:
//! - [`api`]: the gRPC edge. Decodes and validates requests, calls the
//!   scheduler, maps errors to `Status`. No decisions.
//! - [`scheduler`]: queues, throttle slots, leases, timers and workers. The
//!   one place that decides what runs next; one task owns its state.
//! - [`store`]: the collections over a key-value backend (sled in the data
//!   directory, or a PostgreSQL database), with group commit.
//!
//! [`http`] serves the dashboard, the JSON API (the same services over
//! HTTP/JSON), `/metrics` and `/healthz` on a second listener.
//!
//! [`domain`] holds the vocabulary they share; [`auth`] decides who may
//! call what (tokens, roles) and holds the listener's TLS settings. [`run`]
//! wires them together on a listener until a shutdown signal, which tests
//! drive directly.

pub mod api;
pub mod auth;
pub mod domain;
pub mod history;
pub mod http;
pub mod ids;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod scheduler;
pub mod settings;
pub mod standby;
pub mod step;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use baton::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

/// How the broker runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of the sled store; created if missing. Unused when
    /// [`Config::postgres`] is set.
    pub data_dir: PathBuf,
    /// The store in the PostgreSQL database at this URL
    /// (`postgres://USER@HOST:PORT/DB`) instead of sled; `None` (the
    /// default): sled in `data_dir`.
    pub postgres: Option<String>,
    /// Lease length of an assignment: a worker that sends no heartbeat for
    /// this long loses its assignments.
    pub lease: Duration,
    /// Wait for a flush + fdatasync before acknowledging (the default).
    /// Turning it off is for benchmarks: acknowledged work may be lost.
    pub durable: bool,
    pub limits: api::Limits,
    /// Who may call what. [`auth::Auth::Off`] (the library's default, for
    /// tests and local development) lets every call through; the broker
    /// logs a warning when it starts that way.
    pub auth: auth::Auth,
    /// TLS for the listener; `None` serves plaintext HTTP/2.
    pub tls: Option<auth::Tls>,
    /// Deprecated by [`Config::http`]: where to serve Prometheus metrics
    /// alone (`GET /metrics`, plain HTTP, no authentication); `None` (the
    /// default) serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The HTTP listener: dashboard, JSON API, `/metrics` (role admin) and
    /// `/healthz`, with the gRPC port's tokens and TLS. `None` (the
    /// library's default) serves none; `baton serve` listens on
    /// [`http::DEFAULT_ADDR`] unless told otherwise.
    pub http: Option<http::Listen>,
    /// How long a new connection may take to complete its handshake (TLS
    /// and the HTTP/2 preface) before it is closed; see [`listener`].
    pub handshake_timeout: Duration,
    /// How long an ended chain is kept before it is removed; zero keeps
    /// ended chains forever. Default: seven days.
    pub retention: Duration,
    /// The wait that raises a ready task one priority (see
    /// `scheduler::queues`); zero keeps priorities strict. Default: one
    /// minute.
    pub priority_aging: Duration,
    /// Most connections open at once; more are closed as they come. Lowered
    /// to what the descriptor limit allows ([`listener::connection_cap`]).
    pub max_connections: usize,
    /// Schedules to add (or replace, by name) at start: the configuration
    /// file's `[[schedule]]` entries.
    pub schedules: Vec<pb::Schedule>,
    /// On PostgreSQL: the length of the leader's lease ([`leader`]). A
    /// standby takes over within it (plus a poll) after the leader died.
    pub leader_lease: Duration,
    /// On PostgreSQL: the address (host:port) standbys name when this
    /// broker leads; `None`: the listener's address.
    pub advertise: Option<String>,
}

/// Default of [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Config {
    /// Defaults: 30 s leases, durable acknowledgment, 1 MiB payloads,
    /// authentication off, no TLS, 10 s handshakes, 10,000 connections,
    /// ended chains kept seven days.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            postgres: None,
            lease: Duration::from_secs(30),
            durable: true,
            limits: api::Limits::default(),
            auth: auth::Auth::Off,
            tls: None,
            metrics_listen: None,
            http: None,
            handshake_timeout: Duration::from_secs(10),
            retention: Duration::from_millis(settings::DEFAULT_RETENTION_MS),
            priority_aging: Duration::from_millis(settings::DEFAULT_PRIORITY_AGING_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            schedules: Vec::new(),
            leader_lease: leader::DEFAULT_LEASE,
            advertise: None,
        }
    }
}

/// Errors that stop the broker from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The metrics address cannot be bound.
    #[error("metrics listener on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP address cannot be bound.
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of its range.
    #[error(transparent)]
    Setting(#[from] settings::OutOfRange),
    /// The TLS certificate, key or client CA is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A schedule of the configuration cannot be added.
    #[error("{0}")]
    Schedule(String),
    /// Another broker leads now (PostgreSQL, several brokers): this one
    /// stopped serving.
    #[error(transparent)]
    Deposed(leader::Deposed),
}

/// Serves the broker on `listener` until `shutdown` completes, then drains:
/// open streams are closed, the scheduler commits and flushes, and the store
/// is flushed last.
///
/// On PostgreSQL the broker first serves as a standby ([`standby`]): it
/// refuses calls, naming the leader, until it takes the leader's lease
/// ([`leader`]); only then does it open and recover the store and start the
/// scheduler. A leader that loses the lease stops with [`Error::Deposed`],
/// at once (no drain: its writes would be refused anyway).
///
/// # Errors
/// When a setting is out of its range ([`Error::Setting`]), the TLS
/// settings are unusable ([`Error::Tls`]), the store cannot be opened or
/// recovered, the server fails, or the broker is deposed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    settings::LEASE_MS.check_duration(config.lease)?;
    settings::HANDSHAKE_TIMEOUT_MS.check_duration(config.handshake_timeout)?;
    settings::RETENTION_MS.check_duration(config.retention)?;
    settings::PRIORITY_AGING_MS.check_duration(config.priority_aging)?;
    settings::LEADER_LEASE_MS.check_duration(config.leader_lease)?;
    // TLS first: a bad certificate should stop the broker before it
    // touches the store.
    let tls = config
        .tls
        .as_ref()
        .map(auth::Tls::acceptor)
        .transpose()
        .map_err(Error::Tls)?;
    let server = tonic::transport::Server::builder();
    if config.postgres.is_none() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| store::Error::Io {
            path: config.data_dir.clone(),
            source,
        })?;
    }
    // The metrics port too: a port in use stops the broker before the store.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Metrics { addr, source })?,
        ),
        None => None,
    };
    let http_listener = match &config.http {
        Some(listen) => listen
            .bind()
            .await
            .map_err(|(addr, source)| Error::Http { addr, source })?,
        None => None,
    };
    // Who leads: this broker alone on sled; the lease on PostgreSQL.
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None::<String>);
    let lease = match &config.postgres {
        None => None,
        Some(url) => {
            let advertise = match &config.advertise {
                Some(addr) => addr.clone(),
                None => {
                    let addr = listener.local_addr().map_err(|e| {
                        store::Error::Postgres(store::PgError::other(format!(
                            "the listener's address: {e}"
                        )))
                    })?;
                    if addr.ip().is_unspecified() {
                        tracing::warn!(
                            %addr,
                            "standbys will name {addr} as the leader's address, which clients \
                             cannot dial: give --advertise HOST:PORT"
                        );
                    }
                    addr.to_string()
                }
            };
            let settings = leader::Settings {
                url: url.clone(),
                lease: config.leader_lease,
                advertise,
            };
            // Connecting blocks: not on this task's thread.
            let lease = tokio::task::spawn_blocking(move || leader::Lease::start(settings))
                .await
                .map_err(|e| {
                    store::Error::Postgres(store::PgError::other(format!(
                        "starting the lease: {e}"
                    )))
                })??;
            tokio::spawn(follow_leader(lease.view(), leader_tx));
            Some(std::sync::Arc::new(lease))
        }
    };
    let stop = CancellationToken::new();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let services = Services {
        broker: standby::Standby::new(leader_rx.clone()),
        worker: standby::Standby::new(leader_rx.clone()),
        admin: standby::Standby::new(leader_rx.clone()),
        http: Default::default(),
    };
    let accepting = listener::Settings {
        handshake_timeout: config.handshake_timeout,
        max_connections: listener::connection_cap(config.max_connections),
    };
    // Active before serving when this broker leads already (sled: always).
    let fenced = CancellationToken::new();
    let fence = |term| store::Fence {
        term,
        deposed: fenced.clone(),
    };
    let mut active = None;
    let leading = lease.as_ref().map(|lease| lease.term());
    if let None | Some(Some(_)) = leading {
        let fence = leading.flatten().map(fence);
        active = Some(activate(&config, fence, &services, &health_reporter, &stop).await?);
    } else {
        for service in ALL_SERVICES {
            health_reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
    if let Some(http_listener) = http_listener {
        let http_tls = config
            .tls
            .as_ref()
            .map(auth::Tls::http_acceptor)
            .transpose()
            .map_err(Error::Tls)?;
        tokio::spawn(http::serve(
            http_listener,
            standby::http_router(services.http.clone(), leader_rx.clone()),
            accepting.clone(),
            http_tls,
            stop.clone(),
        ));
    }
    // Reflection v1, and v1alpha for the tools that speak only that one
    // (Python's grpcio-reflection, Evans, older grpcurl).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    let mutual_tls = config
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_pem.is_some());
    match &config.auth {
        auth::Auth::Off => tracing::warn!(
            "authentication is OFF (local development only): any caller may submit, run, inspect and cancel work"
        ),
        auth::Auth::Tokens(tokens) => {
            tracing::info!(tokens = tokens.len(), "token authentication on");
        }
    }
    let gate = |service| auth::Gate::new(config.auth.clone(), service, mutual_tls);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = config.tls.is_some(),
        mutual_tls,
        standby = active.is_none(),
        "baton broker listening"
    );
    // Our own accept loop (`accepting`, above): handshake deadline,
    // connection cap, and descriptor exhaustion weathered (listener.rs).
    let router = server
        .trace_fn(request_span)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Each service behind its gate (auth.rs), outside the standby's
        // refusal, so that only a caller with a token learns where the
        // leader is; health and reflection open.
        .add_service(InterceptedService::new(
            services.broker.clone(),
            gate(auth::Service::Broker),
        ))
        .add_service(InterceptedService::new(
            services.worker.clone(),
            gate(auth::Service::Worker),
        ))
        .add_service(InterceptedService::new(
            services.admin.clone(),
            gate(auth::Service::Admin),
        ));
    let drained = {
        // Stopping the scheduler first ends every worker and watch
        // stream, which the server's graceful shutdown waits for.
        let stop = stop.clone();
        let health_reporter = health_reporter.clone();
        async move {
            shutdown.await;
            // Probes see the drain at once: "" and every service.
            for service in ALL_SERVICES {
                health_reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            stop.cancel();
        }
    };
    let serving = async {
        match tls {
            None => {
                let incoming = listener::plain(listener, accepting, stop.clone());
                router.serve_with_incoming_shutdown(incoming, drained).await
            }
            Some(acceptor) => {
                let incoming = listener::tls(listener, accepting, acceptor, stop.clone());
                router.serve_with_incoming_shutdown(incoming, drained).await
            }
        }
    };
    tokio::pin!(serving);
    // A standby: serve refusals until this broker leads, or stops.
    let active = match (active, &lease) {
        (Some(active), _) => active,
        (None, None) => unreachable!("a broker without a lease is active from the start"),
        (None, Some(lease)) => {
            let becoming = async {
                let term = lease.leading().await.map_err(Error::Deposed)?;
                activate(
                    &config,
                    Some(fence(term)),
                    &services,
                    &health_reporter,
                    &stop,
                )
                .await
            };
            tokio::select! {
                served = &mut serving => {
                    stop.cancel();
                    tracing::info!("baton broker stopped (standby)");
                    served?;
                    return Ok(());
                }
                active = becoming => active?,
            }
        }
    };
    if let Some(listener) = metrics_listener {
        tracing::warn!(
            "--metrics-listen is deprecated: /metrics is served on the HTTP listener (--http), \
             with authentication"
        );
        tokio::spawn(metrics::serve(
            listener,
            active.handle.clone(),
            stop.clone(),
        ));
    }
    // The leader (or the only broker): serve until stopped or deposed.
    let deposed = async {
        match &lease {
            None => std::future::pending().await,
            Some(lease) => tokio::select! {
                deposed = lease.deposed() => deposed,
                () = fenced.cancelled() => leader::Deposed(
                    "a flush found another broker's term in the database".into(),
                ),
            },
        }
    };
    let served = tokio::select! {
        served = &mut serving => served,
        deposed = deposed => {
            stop.cancel();
            tracing::error!(cause = %deposed, "deposed: stopping at once");
            return Err(Error::Deposed(deposed));
        }
    };
    stop.cancel();
    let _ = active.scheduler.await;
    active.store.flush().await?;
    if let Some(lease) = lease {
        let _ = tokio::task::spawn_blocking(move || lease.release()).await;
    }
    tracing::info!("baton broker stopped");
    served?;
    Ok(())
}

/// The health service's names: the server as a whole ("") and each service.
const ALL_SERVICES: [&str; 4] = ["", "baton.v1.Broker", "baton.v1.Worker", "baton.v1.Admin"];

type BrokerService = api::Oversize<pb::broker_server::BrokerServer<api::BrokerService>>;
type WorkerService = api::Oversize<pb::worker_server::WorkerServer<api::WorkerService>>;
type AdminService = pb::admin_server::AdminServer<api::AdminService>;

/// The services, served from the start, filled once the broker is active.
struct Services {
    broker: standby::Standby<BrokerService>,
    worker: standby::Standby<WorkerService>,
    admin: standby::Standby<AdminService>,
    /// The HTTP listener's real router.
    http: std::sync::Arc<std::sync::OnceLock<axum::Router>>,
}

/// What an active broker runs.
struct Active {
    handle: scheduler::Handle,
    scheduler: tokio::task::JoinHandle<()>,
    store: store::Shared,
}

/// Opens and recovers the store (over `fence` on PostgreSQL), starts the
/// scheduler, and fills the services: from here on the broker serves.
async fn activate(
    config: &Config,
    fence: Option<store::Fence>,
    services: &Services,
    health_reporter: &tonic_health::server::HealthReporter,
    stop: &CancellationToken,
) -> Result<Active, Error> {
    let (store, location) = match &config.postgres {
        None => (
            store::Shared::open(&config.data_dir)?,
            config.data_dir.display().to_string(),
        ),
        Some(url) => {
            // Connecting blocks: not on this task's thread.
            let at = url.clone();
            let shared = tokio::task::spawn_blocking(move || open_postgres(&at, fence))
                .await
                .map_err(|e| {
                    store::Error::Postgres(store::PgError::other(format!("opening the store: {e}")))
                })??;
            (shared, store::redact(url))
        }
    };
    let recovered = store.recover()?;
    tracing::info!(
        store = %location,
        live_chains = recovered.live_chains.len(),
        durable = config.durable,
        "store recovered"
    );
    let settings = scheduler::Settings {
        lease: config.lease,
        durable: config.durable,
        max_workers: config.limits.max_workers,
        max_watches: config.limits.max_watches,
        retention: config.retention,
        priority_aging: config.priority_aging,
    };
    let (handle, scheduler) = scheduler::start(store.clone(), recovered, settings, stop.clone());
    for schedule in &config.schedules {
        let name = schedule.name.clone();
        let refused = |e: String| Error::Schedule(format!("schedule {name:?}: {e}"));
        let record = api::convert::schedule(schedule.clone(), &config.limits)
            .map_err(|e| refused(e.message().to_owned()))?;
        handle
            .put_schedule(record)
            .await
            .map_err(|e| refused(e.to_string()))?;
    }

    for service in ALL_SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    tokio::spawn(report_store_health(
        health_reporter.clone(),
        handle.store_fault(),
        stop.clone(),
    ));
    let max_message = config.limits.max_payload_bytes + 64 * 1024;
    // A message over the limit is refused by tonic's codec; its status is
    // rewritten to name the limit and the option (api/oversize.rs).
    let message_limit = api::MessageLimit {
        max_message,
        max_payload: config.limits.max_payload_bytes,
    };
    let broker = pb::broker_server::BrokerServer::new(api::BrokerService {
        handle: handle.clone(),
        limits: config.limits.clone(),
    })
    .max_decoding_message_size(max_message);
    services
        .broker
        .fill(api::Oversize::new(broker, message_limit.clone()));
    let worker = pb::worker_server::WorkerServer::new(api::WorkerService {
        handle: handle.clone(),
        limits: config.limits.clone(),
        lease: config.lease,
        message_limit: message_limit.clone(),
    })
    .max_decoding_message_size(max_message);
    services
        .worker
        .fill(api::Oversize::new(worker, message_limit));
    if config.http.is_some() {
        let state = std::sync::Arc::new(http::State {
            broker: api::BrokerService {
                handle: handle.clone(),
                limits: config.limits.clone(),
            },
            admin: api::AdminService {
                handle: handle.clone(),
                limits: config.limits.clone(),
            },
            handle: handle.clone(),
            store: store.clone(),
            auth: config.auth.clone(),
            tls: config.tls.is_some(),
            live: http::live::Live::default(),
        });
        tokio::spawn(http::live::sample(state.clone(), stop.clone()));
        let _ = services.http.set(http::routes::router(state));
    }
    let admin = pb::admin_server::AdminServer::new(api::AdminService {
        handle: handle.clone(),
        limits: config.limits.clone(),
    });
    services.admin.fill(admin);
    Ok(Active {
        handle,
        scheduler,
        store,
    })
}

/// The store in PostgreSQL for a leader: every flush, and every flush
/// after a repair, checks `fence`.
fn open_postgres(url: &str, fence: Option<store::Fence>) -> Result<store::Shared, store::Error> {
    let backend = store::PgBackend::open_fenced(url, fence.clone())?;
    let store = store::Store::over_backend(backend)?;
    let at = url.to_owned();
    let reopen =
        move || store::Store::over_backend(store::PgBackend::open_fenced(&at, fence.clone())?);
    Ok(store::Shared::new(
        std::path::Path::new(&store::redact(url)),
        store,
        reopen,
    ))
}

/// Keeps the standby's refusals naming the leader the lease names.
async fn follow_leader(
    mut view: tokio::sync::watch::Receiver<leader::View>,
    leader: tokio::sync::watch::Sender<Option<String>>,
) {
    loop {
        if let leader::View::Standby { leader: known } = &*view.borrow_and_update() {
            leader.send_if_modified(|shown| {
                let changed = shown != known;
                shown.clone_from(known);
                changed
            });
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// The span of one gRPC call: its method, the caller's `x-request-id` when
/// it sent one, the chain it is about and that chain's W3C trace id
/// (recorded by the handler). Log
/// lines of the call carry them, in both log formats.
fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        method = %request.uri().path(),
        request.id = tracing::field::Empty,
        chain.id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        span.record("request.id", id);
    }
    span
}

/// Keeps health checks honest while the store is in trouble (the disk is
/// full or failing): the broker service and the server as a whole ("")
/// report NOT_SERVING, since submissions are refused, and SERVING again
/// once the store recovered. Ends with the broker.
async fn report_store_health(
    reporter: tonic_health::server::HealthReporter,
    mut fault: tokio::sync::watch::Receiver<Option<store::Fault>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = fault.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        let status = if fault.borrow_and_update().is_some() {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        };
        for service in ["", pb::broker_server::SERVICE_NAME] {
            if stop.is_cancelled() {
                return;
            }
            reporter.set_service_status(service, status).await;
        }
    }
}

//! Baton's broker: a gRPC server that stores chains durably, decides what
//! runs where and when, and streams assignments to workers.
//!
//! Three layers, each in its own module:
//! - [`api`]: the gRPC edge. Decodes and validates requests, calls the
//!   scheduler, maps errors to `Status`. No decisions.
//! - [`scheduler`]: queues, throttle slots, leases, timers and workers. The
//!   one place that decides what runs next; one task owns its state.
//! - [`store`]: sled trees behind domain operations, with group commit.
//!
//! [`domain`] holds the vocabulary they share. [`run`] wires them together
//! on a listener until a shutdown signal, which tests drive directly.

pub mod api;
pub mod domain;
pub mod scheduler;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use baton::pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// How the broker runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of the sled store; created if missing.
    pub data_dir: PathBuf,
    /// Lease length of an assignment: a worker that sends no heartbeat for
    /// this long loses its assignments.
    pub lease: Duration,
    /// Wait for a flush + fdatasync before acknowledging (the default).
    /// Turning it off is for benchmarks: acknowledged work may be lost.
    pub durable: bool,
    pub limits: api::Limits,
}

impl Config {
    /// Defaults: 30 s leases, durable acknowledgment, 1 MiB payloads.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            lease: Duration::from_secs(30),
            durable: true,
            limits: api::Limits::default(),
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
}

/// Serves the broker on `listener` until `shutdown` completes, then drains:
/// open streams are closed, the scheduler commits and flushes, and the store
/// is flushed last.
///
/// # Errors
/// When the store cannot be opened or recovered, or the server fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| store::Error::Io {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = store::Store::open(&config.data_dir)?;
    let recovered = store.recover()?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        live_chains = recovered.live_chains.len(),
        durable = config.durable,
        "store recovered"
    );
    let stop = CancellationToken::new();
    let settings = scheduler::Settings {
        lease: config.lease,
        durable: config.durable,
    };
    let (handle, scheduler) = scheduler::start(store.clone(), recovered, settings, stop.clone());

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::broker_server::BrokerServer<api::BrokerService>>()
        .await;
    health_reporter
        .set_serving::<pb::worker_server::WorkerServer<api::WorkerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let max_message = config.limits.max_payload_bytes + 64 * 1024;
    let broker = pb::broker_server::BrokerServer::new(api::BrokerService {
        handle: handle.clone(),
        limits: config.limits.clone(),
    })
    .max_decoding_message_size(max_message);
    let worker = pb::worker_server::WorkerServer::new(api::WorkerService {
        handle: handle.clone(),
        limits: config.limits.clone(),
    })
    .max_decoding_message_size(max_message);
    let admin = pb::admin_server::AdminServer::new(api::AdminService { handle });

    tracing::info!(addr = ?listener.local_addr().ok(), "baton broker listening");
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(reflection)
        .add_service(broker)
        .add_service(worker)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
            // Stopping the scheduler first ends every worker and watch
            // stream, which the server's graceful shutdown waits for.
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        })
        .await;
    stop.cancel();
    let _ = scheduler.await;
    store.flush().await?;
    tracing::info!("baton broker stopped");
    served?;
    Ok(())
}

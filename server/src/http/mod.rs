//! The HTTP listener: the dashboard, the JSON API under it, `/metrics` and
//! `/healthz`, for people with a browser and clients with no gRPC.
//!
//! Nothing here decides anything either. The JSON API calls the very
//! services the gRPC edge serves ([`api::BrokerService`],
//! [`api::AdminService`]) with a caller admitted by the same
//! [`auth::Gate`], so validation, authorization and error messages are the
//! gRPC ones; [`error`] maps a `Status` to JSON and an HTTP status. A few
//! routes read what the gRPC API has no call for (the step arguments of a
//! chain, the live overview) from the scheduler's [`Handle`] directly.
//!
//! One idea per file:
//! - [`caller`]: who calls (bearer token, or the dashboard's cookie);
//! - [`error`]: `{"code": "NOT_FOUND", "message": "..."}` and its status;
//! - [`json`]: the JSON shapes (the proto's JSON mapping, see docs/http.md);
//! - [`broker`]: chains (submit, get, watch as server-sent events, cancel,
//!   list and search);
//! - [`admin`]: queues, workers, throttles, dead chains;
//! - [`live`]: the overview feed: samples every [`live::SAMPLE_EVERY`],
//!   an hour of history;
//! - [`assets`]: the dashboard's pages, embedded in the binary;
//! - [`routes`]: the router, the one list of every route (checked against
//!   docs/openapi.yaml by a test).
//!
//! Connections come through the broker's own accept loop
//! ([`crate::listener`]): the same handshake deadline, connection cap and
//! TLS as the gRPC port; HTTP/1.1, or HTTP/2 for clients that ask.

pub mod admin;
pub mod assets;
pub mod broker;
pub mod caller;
pub mod error;
pub mod json;
pub mod live;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::auth;
use crate::scheduler::Handle;
use crate::store;

/// The address the `baton serve` command listens on for HTTP unless told
/// otherwise; loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7071";

/// Where the HTTP listener listens.
#[derive(Clone, Debug)]
pub enum Listen {
    /// Bind this address. When `required` is false (the built-in default
    /// address of `baton serve`) an address in use is logged and the broker
    /// serves gRPC without HTTP, so that brokers started side by side with
    /// their defaults (tests, a second broker on one machine) still start;
    /// an address the operator gave that cannot be bound stops the broker.
    Addr { addr: SocketAddr, required: bool },
    /// Serve on a listener already bound (tests bind `127.0.0.1:0`).
    Bound(Arc<std::net::TcpListener>),
}

impl Listen {
    /// Binds the listener; `Ok(None)` for a default address in use.
    ///
    /// # Errors
    /// When a required address cannot be bound.
    pub async fn bind(&self) -> Result<Option<TcpListener>, (SocketAddr, std::io::Error)> {
        match self {
            Listen::Addr { addr, required } => match TcpListener::bind(addr).await {
                Ok(l) => Ok(Some(l)),
                Err(e) if !required => {
                    tracing::warn!(
                        %addr, cause = %e,
                        "the dashboard's default HTTP address cannot be bound: serving without it \
                         (give --http ADDR, or --http off to silence this)"
                    );
                    Ok(None)
                }
                Err(e) => Err((*addr, e)),
            },
            Listen::Bound(l) => {
                let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
                let addr = l.local_addr().unwrap_or(unspecified);
                let l = l
                    .try_clone()
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        Ok(l)
                    })
                    .and_then(TcpListener::from_std)
                    .map_err(|e| (addr, e))?;
                Ok(Some(l))
            }
        }
    }
}

/// What every handler shares.
pub struct State {
    pub broker: api::BrokerService,
    pub admin: api::AdminService,
    pub handle: Handle,
    pub store: store::Shared,
    pub auth: auth::Auth,
    /// Cookies get `Secure` when the listener serves TLS.
    pub tls: bool,
    pub live: live::Live,
}

/// Serves `router` on `listener` until `stop` is cancelled: every
/// connection through the broker's accept loop (handshake deadline,
/// connection cap, TLS when `tls` is given), HTTP/1.1 or HTTP/2.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    accepting: crate::listener::Settings,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = tls.is_some(),
        "dashboard and HTTP API listening"
    );
    match tls {
        None => {
            let incoming = crate::listener::plain(listener, accepting, stop.clone());
            serve_incoming(incoming, router, stop).await;
        }
        Some(acceptor) => {
            let incoming = crate::listener::tls(listener, accepting, acceptor, stop.clone());
            serve_incoming(incoming, router, stop).await;
        }
    }
}

async fn serve_incoming<IO>(
    mut incoming: impl tokio_stream::Stream<Item = Result<IO, std::io::Error>> + Unpin,
    router: axum::Router,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let io = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(cause = %e, "http: connection refused");
                    continue;
                }
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            // HTTP/1.1, or HTTP/2 when the client asks (TLS's ALPN offers
            // h2 for gRPC, and browsers take it).
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

//! What a broker serves before it leads: every Broker, Worker and Admin
//! call refused with `UNAVAILABLE`, naming the leader (issue 21).
//!
//! The gRPC server starts before the store is open (a standby must answer
//! while it waits for the lease), so each service sits behind a
//! [`Standby`] whose inner service is filled once this broker leads
//! ([`Standby::fill`]). Until then a call is answered at once, without
//! reaching the service, with:
//!
//! - status `UNAVAILABLE`, "this broker is a standby; the leader is at
//!   HOST:PORT" (or "no leader is known yet");
//! - metadata `baton-leader: HOST:PORT`, the address the leader advertises
//!   (absent when none is known), for clients to go there next;
//! - metadata `baton-standby: 1`, so a client tells a standby's refusal
//!   from a broker that is down or shutting down (docs/deployment.md, "How
//!   clients find the leader").
//!
//! The HTTP listener gets the same treatment ([`http_router`]): `503
//! standby` until the real router is filled in.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::Status;
use tonic::codegen::http;
use tonic::server::NamedService;

pub use baton::failover::{LEADER_KEY, STANDBY_KEY};

/// The leader's address as a standby knows it (`None`: not known).
pub type Leader = watch::Receiver<Option<String>>;

/// The refusal of a standby (see the module doc).
pub fn refusal(leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(match leader {
        Some(addr) => format!("this broker is a standby; the leader is at {addr}"),
        None => "this broker is a standby; no leader is known yet".to_owned(),
    });
    let metadata = status.metadata_mut();
    metadata.insert(
        STANDBY_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    if let Some(value) = leader.and_then(|addr| addr.parse().ok()) {
        metadata.insert(LEADER_KEY, value);
    }
    status
}

/// A service that refuses every call until it is filled (see the module
/// doc). Cheap to clone: clones share the slot.
pub struct Standby<S> {
    inner: Arc<OnceLock<S>>,
    leader: Leader,
}

impl<S> Clone for Standby<S> {
    fn clone(&self) -> Self {
        Standby {
            inner: Arc::clone(&self.inner),
            leader: self.leader.clone(),
        }
    }
}

impl<S> Standby<S> {
    /// An empty slot, refusing with what `leader` says.
    pub fn new(leader: Leader) -> Self {
        Standby {
            inner: Arc::new(OnceLock::new()),
            leader,
        }
    }

    /// From now on calls reach `service`. A second fill is ignored.
    pub fn fill(&self, service: S) {
        let _ = self.inner.set(service);
    }
}

impl<S: NamedService> NamedService for Standby<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for Standby<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service is readied in `call`: it may not exist yet.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.inner.get() {
            Some(service) => {
                let mut service = service.clone();
                Box::pin(async move {
                    futures::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    let response = service.call(request).await?;
                    Ok(response.map(tonic::body::Body::new))
                })
            }
            None => {
                let leader = self.leader.borrow().clone();
                let response = refusal(leader.as_deref()).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// The HTTP listener's router: `503` with "standby" (and the leader's
/// address) for every path until `slot` is filled, then the real router.
pub fn http_router(slot: Arc<OnceLock<axum::Router>>, leader: Leader) -> axum::Router {
    axum::Router::new().fallback(move |request: axum::extract::Request| {
        let slot = Arc::clone(&slot);
        let leader = leader.borrow().clone();
        async move {
            use axum::response::IntoResponse;
            match slot.get() {
                Some(router) => {
                    let mut router = router.clone();
                    let result: Result<_, Infallible> =
                        tonic::codegen::Service::call(&mut router, request).await;
                    match result {
                        Ok(response) => response.into_response(),
                        Err(never) => match never {},
                    }
                }
                None => (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "status": "STANDBY",
                        "leader": leader,
                    })),
                )
                    .into_response(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_leader_when_one_is_known() {
        let status = refusal(Some("10.0.0.1:7070"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.message(),
            "this broker is a standby; the leader is at 10.0.0.1:7070"
        );
        assert_eq!(status.metadata().get(LEADER_KEY).unwrap(), "10.0.0.1:7070");
        assert_eq!(status.metadata().get(STANDBY_KEY).unwrap(), "1");
        let status = refusal(None);
        assert!(status.metadata().get(LEADER_KEY).is_none());
        assert!(status.message().contains("no leader is known"), "{status}");
    }
}

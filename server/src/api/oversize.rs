//! The status of a request message over the size limit.
//!
//! tonic refuses a message longer than the service's
//! `max_decoding_message_size` in its codec, before any handler runs, with
//! `OUT_OF_RANGE: Error, decoded message length too large: found N bytes,
//! the limit is: M bytes`. The protocol promises `RESOURCE_EXHAUSTED` for
//! a limit, and a caller should learn which setting the limit comes from.
//! tonic offers no hook for that status, so [`Oversize`] wraps a service
//! and rewrites it on the way out: a refused unary or server-streaming
//! request has its status in the response headers (a trailers-only
//! response), which is where this looks. Nothing else is touched.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http::{self, HeaderMap};
use tonic::server::NamedService;

/// The start of tonic's message for a request over the limit
/// (`tonic::codec::decode`).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// What a message over the limit is told: its size and where the limit
/// comes from.
#[derive(Clone, Debug)]
pub struct MessageLimit {
    /// The largest message a service decodes, in bytes.
    pub max_message: usize,
    /// `--max-payload`, which `max_message` is derived from.
    pub max_payload: usize,
}

impl MessageLimit {
    /// `RESOURCE_EXHAUSTED` for a message of `found` bytes (when tonic said).
    pub fn status(&self, found: Option<usize>) -> Status {
        let size = found.map_or_else(
            || "the request message is".to_owned(),
            |n| format!("the request message is {n} bytes,"),
        );
        Status::resource_exhausted(format!(
            "{size} over the limit of {} bytes per message: --max-payload ({} bytes) \
             plus 64 KiB for the rest of the request",
            self.max_message, self.max_payload
        ))
    }

    /// The status tonic put in `headers`, rewritten if it is tonic's
    /// "too large"; `None` for any other response.
    fn rewrite(&self, headers: &HeaderMap) -> Option<Status> {
        self.rewrite_status(&Status::from_header_map(headers)?)
    }

    /// `status` rewritten if it is tonic's "too large" (a stream's message
    /// up, which its handler reads); `None` for any other.
    pub fn rewrite_status(&self, status: &Status) -> Option<Status> {
        if status.code() != tonic::Code::OutOfRange
            || !status.message().starts_with(TONIC_TOO_LARGE)
        {
            return None;
        }
        Some(self.status(found_bytes(status.message())))
    }
}

/// `N` of tonic's "found N bytes".
fn found_bytes(message: &str) -> Option<usize> {
    let rest = message.split("found ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// A service whose "message too large" answers name the limit (see the
/// module doc).
#[derive(Clone, Debug)]
pub struct Oversize<S> {
    inner: S,
    limit: MessageLimit,
}

impl<S> Oversize<S> {
    pub fn new(inner: S, limit: MessageLimit) -> Self {
        Oversize { inner, limit }
    }
}

impl<S: NamedService> NamedService for Oversize<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for Oversize<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limit = self.limit.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(status) = limit.rewrite(response.headers()) {
                let headers = response.headers_mut();
                headers.remove(Status::GRPC_STATUS);
                headers.remove(Status::GRPC_MESSAGE);
                // The new status is plain text; it always fits a header.
                let _ = status.add_header(headers);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_too_large_becomes_resource_exhausted_naming_the_option() {
        let limit = MessageLimit {
            max_message: 1_114_112,
            max_payload: 1_048_576,
        };
        let mut headers = HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 2097200 bytes, the limit is: 1114112 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        let status = limit.rewrite(&headers).expect("rewritten");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request message is 2097200 bytes, over the limit of 1114112 bytes per message: \
             --max-payload (1048576 bytes) plus 64 KiB for the rest of the request"
        );

        let mut other = HeaderMap::new();
        Status::out_of_range("step 3 is out of range")
            .add_header(&mut other)
            .unwrap();
        assert!(limit.rewrite(&other).is_none());
        assert!(limit.rewrite(&HeaderMap::new()).is_none());
    }
}

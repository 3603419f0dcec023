//! The client's one error type.
//!
//! A call to the broker can fail in four ways, and a caller reacts to each
//! differently: the broker could not be reached at all, it answered with a
//! gRPC status (`INVALID_ARGUMENT` naming a field, `NOT_FOUND`, ...), it sent
//! a result that is not JSON, or the caller's own time limit passed. How a
//! chain ended (failed, cancelled) is not an error of the call; see
//! [`ChainOutcome`](crate::ChainOutcome).

use std::time::Duration;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is malformed, or no connection could be made to it.
    #[error("cannot connect to the broker: {}", transport_cause(.0))]
    Transport(#[from] tonic::transport::Error),
    /// The broker (or the transport on its behalf) answered with a non-OK
    /// gRPC status. Boxed: a `Status` is large, and errors travel often.
    #[error("the broker answered {}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// The broker sent a chain result that is not valid JSON.
    #[error("the broker sent a result of chain {chain_id} that is not JSON")]
    Json {
        /// The chain whose result it is.
        chain_id: String,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The caller's time limit passed first (the chain goes on).
    #[error("gave up waiting after {0:?}")]
    Timeout(Duration),
    /// The token given in [`ClientOptions`](crate::ClientOptions) is empty
    /// or has characters other than visible ASCII, so it cannot be sent.
    #[error("the token is empty or not visible ASCII, so it cannot be sent")]
    InvalidToken,
}

impl Error {
    /// The gRPC status, when the broker answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC status code, when the broker answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::Status(Box::new(status))
    }
}

/// The innermost cause of a transport error ("connection refused"), which
/// tonic's own message ("transport error") hides.
fn transport_cause(e: &tonic::transport::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

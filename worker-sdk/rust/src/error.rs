//! Errors of the worker itself (configuration, connection, protocol), as
//! opposed to [`TaskError`](crate::TaskError), which a task body returns.
//!
//! Transient trouble (the broker restarting, a dropped connection) is never
//! an `Error`: the worker reconnects on its own. An `Error` means the worker
//! cannot go on without someone changing something.

/// Why a worker could not be built or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker address is not a valid URI (e.g. `http://127.0.0.1:7070`).
    #[error("invalid broker endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The address as given to [`Worker::builder`](crate::Worker::builder).
        endpoint: String,
        /// What tonic found wrong with it.
        #[source]
        source: tonic::transport::Error,
    },
    /// The broker address list is empty (`""`, `" , "`).
    #[error("no broker address given (expected host:port, or a comma-separated list)")]
    NoEndpoint,
    /// The token is empty or has characters other than visible ASCII.
    #[error("the worker's token is empty or not visible ASCII")]
    InvalidToken,
    /// The worker has no task registered, so the broker could assign it nothing.
    #[error("no task registered: add at least one with .task(name, handler)")]
    NoTasks,
    /// Two handlers were registered under one task name.
    #[error("task {0:?} registered twice")]
    DuplicateTask(String),
    /// A task name is empty.
    #[error("a task name is empty")]
    EmptyTaskName,
    /// `concurrency(0)`: a worker must be able to run at least one task.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    /// The broker refused the session with a status that retrying cannot
    /// fix (invalid argument, unauthenticated, permission denied,
    /// unimplemented).
    #[error("the broker refused the session: {0}")]
    Rejected(#[source] Box<tonic::Status>),
    /// The broker broke the protocol (e.g. its first message was not a
    /// Welcome).
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
}

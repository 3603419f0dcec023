//! The error types the SDK itself reports in `Failure.error_type`, so
//! on_failure bodies and dashboards can match on them. A task body picks
//! its own with [`TaskError::with_type`](crate::TaskError::with_type).

/// The type of a [`TaskError`](crate::TaskError) built without
/// [`with_type`](crate::TaskError::with_type).
pub const DEFAULT: &str = "Error";
/// A task body panicked (fatal; the message is the panic's).
pub const PANIC: &str = "Panic";
/// The broker cancelled the run (fatal; the message is its reason).
pub const CANCELLED: &str = "Cancelled";
/// The broker assigned a task name no body is registered for (fatal).
pub const NOT_REGISTERED: &str = "NotRegistered";
/// The assignment's `args` is not a JSON array or its `kwargs` not a JSON
/// object (fatal).
pub const INVALID_ARGUMENTS: &str = "InvalidArguments";
/// [`TaskContext::arg`](crate::TaskContext::arg) found no argument at the
/// index (fatal).
pub const MISSING_ARGUMENT: &str = "MissingArgument";
/// An argument does not decode into the requested type (fatal).
pub const INVALID_ARGUMENT: &str = "InvalidArgument";
/// The broker refused an in-body throttle request (fatal; the message is
/// the broker's).
pub const THROTTLE_REFUSED: &str = "ThrottleRefused";
/// An in-body throttle request could not complete because the run is over
/// or the worker is stopping (retryable).
pub const WORKER_STOPPING: &str = "WorkerStopping";

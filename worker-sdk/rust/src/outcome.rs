//! How a run ends and how that end is reported: [`TaskError`], what a task
//! body returns when it did not succeed, and its mapping onto the protocol's
//! `Outcome` (success, failure with a retryable flag, or retry later).
//!
//! The mapping lives here, in one place, so the three kinds of "not done"
//! the broker distinguishes stay visible: a retryable failure is retried
//! within `max_retries`, a fatal one fails the chain, and a retry-later is a
//! poll that keeps the step's place and counts against `max_polls`.

use std::any::Any;
use std::time::Duration;

use baton::pb;
use serde_json::Value;

use crate::error_type::{CANCELLED, DEFAULT, PANIC};

/// Why a task body did not succeed, and what the broker should do about it.
///
/// Build one with [`TaskError::retryable`], [`TaskError::fatal`] or
/// [`TaskError::retry_later`], then refine it with [`TaskError::with_type`],
/// [`TaskError::with_traceback`] or [`TaskError::with_message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// A failure worth retrying (a timeout, a flaky backend): the broker
    /// retries the step with backoff within its `max_retries`, then fails
    /// the chain.
    #[error("{error_type}: {message}")]
    Retryable {
        /// The error's kind, shown in the failure record (e.g. `"Timeout"`).
        error_type: String,
        /// Human-readable description.
        message: String,
        /// Free-form trace of where it happened; may be empty.
        traceback: String,
    },
    /// A failure no retry can fix: the chain fails and on_failure runs.
    #[error("{error_type}: {message}")]
    Fatal {
        /// The error's kind, shown in the failure record.
        error_type: String,
        /// Human-readable description.
        message: String,
        /// Free-form trace of where it happened; may be empty.
        traceback: String,
    },
    /// "Not done yet, run me again after `delay`": the step keeps its place
    /// in its chain and the poll counts against its `max_polls`.
    #[error("retry later in {delay:?}: {message}")]
    RetryLater {
        /// How long the broker waits before running the step again.
        delay: Duration,
        /// Why the step is not done yet; may be empty.
        message: String,
    },
}

impl TaskError {
    /// A retryable failure of type
    /// [`error_type::DEFAULT`](crate::error_type::DEFAULT) with this
    /// message.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            error_type: DEFAULT.to_owned(),
            message: message.into(),
            traceback: String::new(),
        }
    }

    /// A fatal (not retryable) failure of type
    /// [`error_type::DEFAULT`](crate::error_type::DEFAULT) with this
    /// message.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal {
            error_type: DEFAULT.to_owned(),
            message: message.into(),
            traceback: String::new(),
        }
    }

    /// Asks the broker to run the step again after `delay`, with no message.
    pub fn retry_later(delay: Duration) -> Self {
        Self::RetryLater {
            delay,
            message: String::new(),
        }
    }

    /// Sets the error type of a failure (e.g. `"Timeout"`, `"NotFound"`).
    /// A retry-later has no type and is returned unchanged.
    #[must_use]
    pub fn with_type(mut self, new_type: impl Into<String>) -> Self {
        if let Self::Retryable { error_type, .. } | Self::Fatal { error_type, .. } = &mut self {
            *error_type = new_type.into();
        }
        self
    }

    /// Sets the traceback of a failure. A retry-later has none and is
    /// returned unchanged.
    #[must_use]
    pub fn with_traceback(mut self, new_traceback: impl Into<String>) -> Self {
        if let Self::Retryable { traceback, .. } | Self::Fatal { traceback, .. } = &mut self {
            *traceback = new_traceback.into();
        }
        self
    }

    /// Replaces the message of any kind of `TaskError`.
    #[must_use]
    pub fn with_message(mut self, new_message: impl Into<String>) -> Self {
        match &mut self {
            Self::Retryable { message, .. }
            | Self::Fatal { message, .. }
            | Self::RetryLater { message, .. } => *message = new_message.into(),
        }
        self
    }

    /// A fatal failure of the given type; the SDK's own failures use it.
    pub(crate) fn fatal_of(error_type: &str, message: impl Into<String>) -> Self {
        Self::fatal(message).with_type(error_type)
    }

    /// The protocol's `Outcome.result` for this error.
    fn into_result(self) -> pb::outcome::Result {
        match self {
            Self::Retryable {
                error_type,
                message,
                traceback,
            } => pb::outcome::Result::Failure(pb::Failure {
                error_type,
                message,
                traceback,
                retryable: true,
            }),
            Self::Fatal {
                error_type,
                message,
                traceback,
            } => pb::outcome::Result::Failure(pb::Failure {
                error_type,
                message,
                traceback,
                retryable: false,
            }),
            Self::RetryLater { delay, message } => {
                pb::outcome::Result::RetryLater(pb::RetryLater {
                    // A delay beyond u64 milliseconds (585 million years) is
                    // "never" in practice; saturate rather than wrap.
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    message,
                })
            }
        }
    }
}

/// How one run ended, as seen by the task that drove it.
#[derive(Debug)]
pub(crate) enum RunEnd {
    /// The body returned.
    Returned(Result<Value, TaskError>),
    /// The body panicked; the payload's text.
    Panicked(String),
    /// The run was stopped (broker's Cancel, lease lost, drain timeout)
    /// before the body returned.
    Aborted,
}

impl RunEnd {
    /// The `Outcome` to report for this end. `cancel_reason` is the
    /// broker's reason when it cancelled the run.
    pub(crate) fn into_outcome(
        self,
        task: pb::TaskRef,
        cancel_reason: Option<&str>,
    ) -> pb::Outcome {
        let result = match self {
            Self::Returned(Ok(value)) => pb::outcome::Result::Success(pb::Success {
                result: value.to_string(),
            }),
            Self::Returned(Err(error)) => error.into_result(),
            Self::Panicked(message) => TaskError::fatal_of(PANIC, message).into_result(),
            Self::Aborted => {
                TaskError::fatal_of(CANCELLED, cancel_reason.unwrap_or("cancelled")).into_result()
            }
        };
        pb::Outcome {
            task: Some(task),
            result: Some(result),
        }
    }
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a
/// `String`; anything else is described generically).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "task body panicked with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task() -> pb::TaskRef {
        pb::TaskRef {
            task_id: "t-1".into(),
            attempt: 2,
        }
    }

    fn failure(end: RunEnd, reason: Option<&str>) -> pb::Failure {
        match end.into_outcome(task(), reason).result {
            Some(pb::outcome::Result::Failure(f)) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn success_is_json_text() {
        let outcome = RunEnd::Returned(Ok(json!({"id": 7}))).into_outcome(task(), None);
        assert_eq!(outcome.task, Some(task()));
        assert_eq!(
            outcome.result,
            Some(pb::outcome::Result::Success(pb::Success {
                result: r#"{"id":7}"#.into()
            }))
        );
    }

    #[test]
    fn retryable_and_fatal_set_the_flag_type_and_traceback() {
        let f = failure(
            RunEnd::Returned(Err(TaskError::retryable("backend down")
                .with_type("IOError")
                .with_traceback("at line 3"))),
            None,
        );
        assert_eq!(
            f,
            pb::Failure {
                error_type: "IOError".into(),
                message: "backend down".into(),
                traceback: "at line 3".into(),
                retryable: true,
            }
        );
        let f = failure(
            RunEnd::Returned(Err(TaskError::fatal("no such volume"))),
            None,
        );
        assert_eq!(f.error_type, DEFAULT);
        assert!(!f.retryable);
    }

    #[test]
    fn retry_later_carries_delay_in_ms_and_saturates() {
        let outcome = RunEnd::Returned(Err(
            TaskError::retry_later(Duration::from_millis(1500)).with_message("still building")
        ))
        .into_outcome(task(), None);
        assert_eq!(
            outcome.result,
            Some(pb::outcome::Result::RetryLater(pb::RetryLater {
                delay_ms: 1500,
                message: "still building".into()
            }))
        );
        let outcome =
            RunEnd::Returned(Err(TaskError::retry_later(Duration::MAX))).into_outcome(task(), None);
        assert!(matches!(
            outcome.result,
            Some(pb::outcome::Result::RetryLater(pb::RetryLater {
                delay_ms: u64::MAX,
                ..
            }))
        ));
    }

    #[test]
    fn with_type_leaves_retry_later_alone() {
        let e = TaskError::retry_later(Duration::from_secs(1))
            .with_type("X")
            .with_traceback("y");
        assert_eq!(e, TaskError::retry_later(Duration::from_secs(1)));
    }

    #[test]
    fn panic_and_abort_are_fatal() {
        let f = failure(RunEnd::Panicked("boom".into()), None);
        assert_eq!(
            (f.error_type.as_str(), f.message.as_str(), f.retryable),
            (PANIC, "boom", false)
        );
        let f = failure(RunEnd::Aborted, Some("chain cancelled"));
        assert_eq!(
            (f.error_type.as_str(), f.message.as_str(), f.retryable),
            (CANCELLED, "chain cancelled", false)
        );
    }

    #[test]
    fn panic_payloads_are_read_as_text() {
        let payload = std::panic::catch_unwind(|| panic!("static text")).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "static text");
        let n = 3;
        let payload = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "formatted 3");
    }
}

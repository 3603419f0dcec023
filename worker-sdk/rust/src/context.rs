//! [`TaskContext`]: what a task body knows about its run (ids, arguments,
//! the chain's context, its poll and retry counts) and what it may ask of
//! the broker while it runs (in-body throttle slots).
//!
//! The arguments arrive as JSON text; they are decoded once, before the body
//! starts, so a malformed payload fails the run with a clear error type
//! instead of surfacing inside user code.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use baton::pb;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::error_type::{INVALID_ARGUMENT, INVALID_ARGUMENTS, MISSING_ARGUMENT, WORKER_STOPPING};
use crate::outcome::TaskError;
use crate::runtime::{Event, Events};
use crate::throttle::{Slot, Throttle, next_request_id};

/// One run of a task, as its body sees it.
///
/// The public fields are a snapshot of the broker's Assignment; changing
/// them changes nothing the broker sees.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Stable id of the step's task; every attempt shares it.
    pub task_id: String,
    /// Which attempt this run is (1 for the first run).
    pub attempt: u32,
    /// The chain the step belongs to.
    pub chain_id: String,
    /// The part of the chain the step belongs to.
    pub phase: pb::Phase,
    /// Index of the step within its phase.
    pub step_index: u32,
    /// The task name the body was registered under.
    pub name: String,
    /// Positional arguments, with the previous step's result (or the
    /// failure record) first for a mutable signature.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The chain's opaque context (user, request id, ...).
    pub context: HashMap<String, String>,
    /// The queue the step was routed to.
    pub queue: String,
    /// Retry-later outcomes the step reported before this run.
    pub polls: u32,
    /// Retryable failures the step retried before this run.
    pub retries: u32,
    /// Time limit of this run, if any; the broker cancels the run when it
    /// passes.
    pub timeout: Option<Duration>,
    /// The run this context belongs to; throttle requests name it.
    run: pb::TaskRef,
    /// The session task's inbox, for throttle requests and releases.
    events: Events,
}

impl TaskContext {
    /// Decodes an Assignment. Fails with a fatal
    /// [`error_type::INVALID_ARGUMENTS`](crate::error_type::INVALID_ARGUMENTS)
    /// when `args` is not a JSON array or `kwargs` not a JSON object (empty
    /// text means `[]` and `{}`).
    pub(crate) fn from_assignment(
        assignment: pb::Assignment,
        run: pb::TaskRef,
        events: Events,
    ) -> Result<Self, TaskError> {
        let phase = assignment.phase();
        let args = decode_json::<Vec<Value>>(&assignment.args, "args", "a JSON array")?;
        let kwargs =
            decode_json::<Map<String, Value>>(&assignment.kwargs, "kwargs", "a JSON object")?;
        Ok(Self {
            task_id: run.task_id.clone(),
            attempt: run.attempt,
            chain_id: assignment.chain_id,
            phase,
            step_index: assignment.step_index,
            name: assignment.name,
            args,
            kwargs,
            context: assignment.context,
            queue: assignment.queue,
            polls: assignment.polls,
            retries: assignment.retries,
            timeout: (assignment.timeout_ms > 0)
                .then(|| Duration::from_millis(assignment.timeout_ms)),
            run,
            events,
        })
    }

    /// The W3C `traceparent` the chain was submitted with (the submitter's
    /// span), the same for every step, retry and callback of the chain.
    #[must_use]
    pub fn traceparent(&self) -> Option<&str> {
        self.context
            .get(baton::trace::TRACEPARENT)
            .map(String::as_str)
    }

    /// The W3C `tracestate` that goes with [`traceparent`](Self::traceparent).
    #[must_use]
    pub fn tracestate(&self) -> Option<&str> {
        self.context
            .get(baton::trace::TRACESTATE)
            .map(String::as_str)
    }

    /// The trace id (32 hex digits) of [`traceparent`](Self::traceparent).
    #[must_use]
    pub fn trace_id(&self) -> Option<&str> {
        baton::trace::trace_id_of(self.traceparent())
    }

    /// The positional argument at `index`, decoded into `T`.
    ///
    /// # Errors
    ///
    /// A fatal [`TaskError`] of type
    /// [`error_type::MISSING_ARGUMENT`](crate::error_type::MISSING_ARGUMENT)
    /// when there is no such argument, or
    /// [`error_type::INVALID_ARGUMENT`](crate::error_type::INVALID_ARGUMENT)
    /// when it does not decode into `T`. Returning it with `?` fails the run
    /// without retries: a retry would get the same arguments.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T, TaskError> {
        let value = self.args.get(index).ok_or_else(|| {
            TaskError::fatal_of(
                MISSING_ARGUMENT,
                format!(
                    "{}: argument {index} is missing (got {})",
                    self.name,
                    self.args.len()
                ),
            )
        })?;
        T::deserialize(value).map_err(|e| {
            TaskError::fatal_of(
                INVALID_ARGUMENT,
                format!("{}: argument {index}: {e}", self.name),
            )
        })
    }

    /// The keyword argument `name` decoded into `T`, or `None` when absent.
    ///
    /// # Errors
    ///
    /// A fatal [`TaskError`] of type
    /// [`error_type::INVALID_ARGUMENT`](crate::error_type::INVALID_ARGUMENT)
    /// when the argument is present but does not decode into `T`.
    pub fn kwarg<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, TaskError> {
        self.kwargs
            .get(name)
            .map(|value| {
                T::deserialize(value).map_err(|e| {
                    TaskError::fatal_of(
                        INVALID_ARGUMENT,
                        format!("{}: keyword {name:?}: {e}", self.name),
                    )
                })
            })
            .transpose()
    }

    /// Takes an in-body throttle slot, waiting (in the broker's FIFO) until
    /// it is granted. The slot is released when the returned [`Slot`] is
    /// dropped, and in any case when the run ends.
    ///
    /// Dropping this future before the grant abandons the request: a grant
    /// that still comes is released at once.
    ///
    /// # Errors
    ///
    /// A fatal [`TaskError`] of type
    /// [`error_type::THROTTLE_REFUSED`](crate::error_type::THROTTLE_REFUSED)
    /// when the broker refused the request (e.g. an invalid key), or a
    /// retryable one of type
    /// [`error_type::WORKER_STOPPING`](crate::error_type::WORKER_STOPPING)
    /// when the run is no longer this worker's or the worker has stopped.
    pub async fn acquire(&self, throttle: Throttle) -> Result<Slot, TaskError> {
        let request_id = next_request_id();
        let (granted, grant) = oneshot::channel();
        let request = Event::Acquire {
            request: pb::ThrottleAcquire {
                request_id,
                task: Some(self.run.clone()),
                throttle: Some(throttle.into()),
            },
            granted,
        };
        if self.events.send(request).is_err() {
            return Err(stopping());
        }
        // Armed before waiting, so a drop during the wait abandons the request.
        let slot = Slot::new(request_id, self.events.clone());
        match grant.await {
            Ok(Ok(())) => Ok(slot),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(stopping()),
        }
    }

    /// Runs `body` while holding an in-body throttle slot: the
    /// `with throttle(concurrency, key):` block of the seed. The slot is
    /// taken before `body` starts and released when it ends (or is dropped).
    ///
    /// # Errors
    ///
    /// Those of [`TaskContext::acquire`]; `body` does not run then. The
    /// body's own output, fallible or not, is returned as `Ok`.
    pub async fn throttle<F: Future>(
        &self,
        throttle: Throttle,
        body: F,
    ) -> Result<F::Output, TaskError> {
        let _slot = self.acquire(throttle).await?;
        Ok(body.await)
    }
}

/// The error of a throttle request that cannot complete.
fn stopping() -> TaskError {
    TaskError::retryable("the run is over or the worker is stopping").with_type(WORKER_STOPPING)
}

/// Decodes a JSON payload field; empty text is the type's default.
fn decode_json<T: DeserializeOwned + Default>(
    text: &str,
    field: &str,
    shape: &str,
) -> Result<T, TaskError> {
    if text.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(text).map_err(|e| {
        TaskError::fatal_of(
            INVALID_ARGUMENTS,
            format!("assignment.{field} is not {shape}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::sync::mpsc;

    fn run() -> pb::TaskRef {
        pb::TaskRef {
            task_id: "t-1".into(),
            attempt: 3,
        }
    }

    fn assignment(args: &str, kwargs: &str) -> pb::Assignment {
        pb::Assignment {
            task: Some(run()),
            chain_id: "c-1".into(),
            phase: pb::Phase::OnFailure.into(),
            step_index: 2,
            name: "volume.create".into(),
            args: args.into(),
            kwargs: kwargs.into(),
            context: HashMap::from([("user".into(), "alice".into())]),
            queue: "heavy".into(),
            timeout_ms: 1500,
            polls: 4,
            retries: 1,
            ..Default::default()
        }
    }

    fn context(args: &str, kwargs: &str) -> Result<TaskContext, TaskError> {
        let (tx, _rx) = mpsc::unbounded_channel();
        TaskContext::from_assignment(assignment(args, kwargs), run(), tx)
    }

    #[test]
    fn decodes_every_field_of_the_assignment() {
        let ctx = context(r#"["vol-1", 20]"#, r#"{"size": 20}"#).unwrap();
        assert_eq!((ctx.task_id.as_str(), ctx.attempt), ("t-1", 3));
        assert_eq!(
            (ctx.chain_id.as_str(), ctx.phase, ctx.step_index),
            ("c-1", pb::Phase::OnFailure, 2)
        );
        assert_eq!(
            (ctx.name.as_str(), ctx.queue.as_str()),
            ("volume.create", "heavy")
        );
        assert_eq!(ctx.args, vec![json!("vol-1"), json!(20)]);
        assert_eq!(ctx.kwargs.get("size"), Some(&json!(20)));
        assert_eq!(ctx.context.get("user").map(String::as_str), Some("alice"));
        assert_eq!((ctx.polls, ctx.retries), (4, 1));
        assert_eq!(ctx.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn empty_payloads_mean_empty_arguments() {
        let ctx = context("", "").unwrap();
        assert!(ctx.args.is_empty() && ctx.kwargs.is_empty());
    }

    #[test]
    fn malformed_payloads_are_fatal_invalid_arguments() {
        for (args, kwargs) in [(r#"{"a": 1}"#, ""), ("[1]", "[1]"), ("not json", "")] {
            match context(args, kwargs) {
                Err(TaskError::Fatal { error_type, .. }) => {
                    assert_eq!(error_type, INVALID_ARGUMENTS)
                }
                other => panic!("expected InvalidArguments for {args} / {kwargs}, got {other:?}"),
            }
        }
    }

    #[test]
    fn arg_and_kwarg_decode_or_fail_fatally() {
        let ctx = context(r#"["vol-1", 20]"#, r#"{"force": true}"#).unwrap();
        assert_eq!(ctx.arg::<String>(0).unwrap(), "vol-1");
        assert_eq!(ctx.arg::<u32>(1).unwrap(), 20);
        assert_eq!(ctx.kwarg::<bool>("force").unwrap(), Some(true));
        assert_eq!(ctx.kwarg::<bool>("absent").unwrap(), None);
        let error_type = |e: TaskError| match e {
            TaskError::Fatal { error_type, .. } => error_type,
            other => panic!("expected a fatal error, got {other:?}"),
        };
        assert_eq!(
            error_type(ctx.arg::<String>(2).unwrap_err()),
            MISSING_ARGUMENT
        );
        assert_eq!(error_type(ctx.arg::<u32>(0).unwrap_err()), INVALID_ARGUMENT);
        assert_eq!(
            error_type(ctx.kwarg::<String>("force").unwrap_err()),
            INVALID_ARGUMENT
        );
    }

    #[tokio::test]
    async fn acquire_fails_when_the_worker_is_gone() {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let ctx = TaskContext::from_assignment(assignment("", ""), run(), tx).unwrap();
        match ctx.acquire(Throttle::new(1)).await {
            Err(TaskError::Retryable { error_type, .. }) => assert_eq!(error_type, WORKER_STOPPING),
            other => panic!("expected WorkerStopping, got {other:?}"),
        }
    }
}

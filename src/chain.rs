//! Chains: what a client submits, an executor in NodeConductor's words.
//!
//! A [`Chain`] is an ordered list of signatures (step k+1 starts only after
//! step k succeeded), an `on_success` and an `on_failure` callback (one of
//! which the broker always runs, unless the chain is cancelled) and the
//! settings of the whole submission: the heavy flag that reaches every step,
//! the context every step sees, the deduplication keys and a deadline. It
//! converts into `baton.v1.SubmitChainRequest` without validation; the broker
//! validates and answers `INVALID_ARGUMENT` naming the field.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::millis::unix_ms;
use crate::pb;
use crate::signature::Signature;

/// Signatures run one after another: the steps of a chain or a callback.
///
/// Made from one [`Signature`], an array or `Vec` of them, or collected from
/// an iterator. A callback is a list of signatures rather than a [`Chain`]
/// because a callback has no callbacks, keys or deadline of its own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Steps(Vec<Signature>);

impl Steps {
    /// The signatures, in order.
    pub fn as_slice(&self) -> &[Signature] {
        &self.0
    }

    pub(crate) fn into_pb(self) -> Vec<pb::Signature> {
        self.0.into_iter().map(pb::Signature::from).collect()
    }
}

impl From<Signature> for Steps {
    fn from(signature: Signature) -> Self {
        Self(vec![signature])
    }
}

impl From<Vec<Signature>> for Steps {
    fn from(signatures: Vec<Signature>) -> Self {
        Self(signatures)
    }
}

impl<const N: usize> From<[Signature; N]> for Steps {
    fn from(signatures: [Signature; N]) -> Self {
        Self(signatures.into())
    }
}

impl FromIterator<Signature> for Steps {
    fn from_iter<I: IntoIterator<Item = Signature>>(signatures: I) -> Self {
        Self(signatures.into_iter().collect())
    }
}

/// A chain with its callbacks and submission settings, ready for
/// [`Client::submit`](crate::Client::submit).
///
/// ```
/// use baton::{Chain, Task};
/// use serde_json::json;
///
/// // Waldur's volume CreateExecutor.
/// let (create, poll) = (Task::new("volume.create"), Task::new("volume.poll"));
/// let (set_ok, set_erred) = (Task::new("volume.set_ok"), Task::new("volume.set_erred"));
/// let executor = Chain::new([
///     create.si(["vol-1"]),
///     poll.si(["vol-1"]).countdown(std::time::Duration::from_secs(30)).max_polls(300),
/// ])
/// .on_success(set_ok.si(["vol-1"]))
/// .on_failure(set_erred.s(["vol-1"])) // receives the failure record first
/// .context("user", "alice")
/// .unique_key("volume:vol-1:create");
/// # let _ = executor;
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chain {
    steps: Steps,
    on_success: Steps,
    on_failure: Steps,
    heavy: bool,
    context: HashMap<String, String>,
    idempotency_key: String,
    unique_key: String,
    /// `None`: no deadline.
    deadline: Option<SystemTime>,
}

impl Chain {
    /// A chain of `steps`, run one after another. The broker wants at least
    /// one.
    pub fn new(steps: impl Into<Steps>) -> Self {
        Self {
            steps: steps.into(),
            ..Self::default()
        }
    }

    /// Appends one step.
    #[must_use]
    pub fn then(mut self, step: Signature) -> Self {
        self.steps.0.push(step);
        self
    }

    /// Runs after the last step succeeded; a mutable first signature
    /// receives the last step's result. Replaces an earlier `on_success`.
    #[must_use]
    pub fn on_success(mut self, callback: impl Into<Steps>) -> Self {
        self.on_success = callback.into();
        self
    }

    /// Runs once when a step (or `on_success`) failed for good; a mutable
    /// first signature receives the failure record as a JSON object.
    /// Replaces an earlier `on_failure`.
    #[must_use]
    pub fn on_failure(mut self, callback: impl Into<Steps>) -> Self {
        self.on_failure = callback.into();
        self
    }

    /// Routes every step and callback to the `heavy` queue, except those
    /// that name a queue.
    #[must_use]
    pub fn heavy(mut self) -> Self {
        self.heavy = true;
        self
    }

    /// Adds an entry to the opaque context that every step and callback
    /// sees (user, request id, ...).
    #[must_use]
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// The W3C `traceparent` the chain's runs continue
    /// (`00-<trace id>-<parent span id>-<flags>`), when the caller's trace
    /// is not the current OpenTelemetry span (with the `opentelemetry`
    /// feature, that one is taken by default). The broker refuses a
    /// malformed one; see [`crate::trace`].
    #[must_use]
    pub fn traceparent(self, traceparent: impl Into<String>) -> Self {
        self.context(crate::trace::TRACEPARENT, traceparent)
    }

    /// The W3C `tracestate` that goes with [`traceparent`](Self::traceparent).
    #[must_use]
    pub fn tracestate(self, tracestate: impl Into<String>) -> Self {
        self.context(crate::trace::TRACESTATE, tracestate)
    }

    /// A repeated submission with the same key returns the first chain's id
    /// and stores nothing.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = key.into();
        self
    }

    /// While a chain with the same key is queued or running, the submission
    /// is skipped and returns that chain's id.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = key.into();
        self
    }

    /// If the steps have not ended by `deadline`, the chain fails with
    /// `DeadlineExceeded` and `on_failure` runs.
    #[must_use]
    pub fn deadline(mut self, deadline: SystemTime) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl From<Signature> for Chain {
    /// A one-step chain.
    fn from(signature: Signature) -> Self {
        Self::new(signature)
    }
}

impl From<Chain> for pb::SubmitChainRequest {
    fn from(chain: Chain) -> Self {
        Self {
            steps: chain.steps.into_pb(),
            on_success: chain.on_success.into_pb(),
            on_failure: chain.on_failure.into_pb(),
            heavy: chain.heavy,
            context: with_current_trace(chain.context),
            idempotency_key: chain.idempotency_key,
            unique_key: chain.unique_key,
            deadline_unix_ms: chain.deadline.map_or(0, unix_ms),
            chain_id: String::new(),
        }
    }
}

/// With the `opentelemetry` feature, a chain that names no trace of its own
/// carries the current OpenTelemetry span's, so the runs of its steps are
/// its children; without the feature, the context as it is.
fn with_current_trace(context: HashMap<String, String>) -> HashMap<String, String> {
    #[cfg(feature = "opentelemetry")]
    {
        let mut context = context;
        if !context.contains_key(crate::trace::TRACEPARENT)
            && let Some((tp, ts)) = crate::trace::otel::inject(&opentelemetry::Context::current())
        {
            context.insert(crate::trace::TRACEPARENT.to_owned(), tp);
            if !ts.is_empty() {
                context.insert(crate::trace::TRACESTATE.to_owned(), ts);
            }
        }
        context
    }
    #[cfg(not(feature = "opentelemetry"))]
    context
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::signature::Task;

    fn wire(chain: impl Into<Chain>) -> pb::SubmitChainRequest {
        chain.into().into()
    }

    #[test]
    fn the_seed_demo_chain_keeps_its_order() {
        let (slow, fast) = (Task::new("demo.slow"), Task::new("demo.fast"));
        let request = wire(Chain::new([slow.si([10]), fast.si([10])]));
        let names: Vec<_> = request.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["demo.slow", "demo.fast"]);
        assert!(
            request
                .steps
                .iter()
                .all(|s| s.immutable && s.args == "[10]")
        );
        assert!(request.on_success.is_empty() && request.on_failure.is_empty());
        assert!(!request.heavy);
        assert!(request.context.is_empty());
        assert_eq!(request.idempotency_key, "");
        assert_eq!(request.unique_key, "");
        assert_eq!(request.deadline_unix_ms, 0, "no deadline is sent as 0");
    }

    #[test]
    fn a_signature_is_a_one_step_chain() {
        let signature = Task::new("demo.fast").s(json!([1]));
        let request = wire(signature.clone());
        assert_eq!(request.steps, [pb::Signature::from(signature)]);
        assert_eq!(request, wire(Chain::new(Task::new("demo.fast").s([1]))));
    }

    #[test]
    fn then_appends_a_step() {
        let task = Task::new("t");
        let request = wire(Chain::new(task.si([1])).then(task.s([2])));
        let args: Vec<_> = request.steps.iter().map(|s| s.args.as_str()).collect();
        assert_eq!(args, ["[1]", "[2]"]);
        assert!(request.steps[0].immutable && !request.steps[1].immutable);
    }

    #[test]
    fn callbacks_context_keys_heavy_and_deadline_map_to_the_request() {
        let vol = "vol-1";
        let (set_ok, set_erred) = (Task::new("set_ok"), Task::new("set_erred"));
        let deadline = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let chain = Chain::new(Task::new("create").si([vol]))
            .on_success([set_ok.si([vol]), set_ok.si(["instance-1"])])
            .on_failure(set_erred.s([vol]))
            .heavy()
            .context("user", "alice")
            .context("request_id", "r-1")
            .idempotency_key("idem-1")
            .unique_key("volume:vol-1")
            .deadline(deadline);
        let request = wire(chain);

        let on_success: Vec<_> = request.on_success.iter().map(|s| s.args.as_str()).collect();
        assert_eq!(on_success, [r#"["vol-1"]"#, r#"["instance-1"]"#]);
        assert_eq!(request.on_failure.len(), 1);
        assert_eq!(request.on_failure[0].name, "set_erred");
        assert!(
            !request.on_failure[0].immutable,
            "receives the failure record"
        );
        assert!(request.heavy, "chain-level heavy is the request's flag");
        assert_eq!(
            request.steps[0].options, None,
            "chain-level heavy is not copied onto the steps"
        );
        let context = HashMap::from([
            ("user".to_owned(), "alice".to_owned()),
            ("request_id".to_owned(), "r-1".to_owned()),
        ]);
        assert_eq!(request.context, context);
        assert_eq!(request.idempotency_key, "idem-1");
        assert_eq!(request.unique_key, "volume:vol-1");
        assert_eq!(request.deadline_unix_ms, 1_800_000_000_000);
    }

    #[test]
    fn a_later_callback_replaces_an_earlier_one() {
        let chain = Chain::new(Task::new("a").si(()))
            .on_success(Task::new("first").si(()))
            .on_success(Task::new("second").si(()));
        let request = wire(chain);
        assert_eq!(request.on_success.len(), 1);
        assert_eq!(request.on_success[0].name, "second");
    }
}

//! Signatures: one step of a chain, built the way Celery users write it.
//!
//! A [`Task`] is a named handle on a task body that lives in some worker;
//! `task.s(args)` and `task.si(args)` turn it into a [`Signature`], the task
//! name with its arguments and execution options, ready to be put into a
//! [`Chain`](crate::Chain). The builder only shapes the `baton.v1` message:
//! it validates nothing beyond what the types say, because the broker is the
//! one place that validates a submission (and names the offending field in
//! its `INVALID_ARGUMENT` answer).

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::millis::{duration_ms, unix_ms};
use crate::pb;

/// A task name, as workers register it, from which signatures are made.
///
/// ```
/// use baton::Task;
/// use serde_json::json;
///
/// let slow = Task::new("demo.slow");
/// let step = slow.si([10]).heavy();
/// // After `step` in a chain, runs with `[<step's result>, "x"]`.
/// let next = Task::new("demo.fast").s(json!(["x"]));
/// # let _ = (step, next);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Task {
    name: String,
}

impl Task {
    /// A handle on the task registered under `name` (for example
    /// `"demo.slow"`).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A mutable signature (Celery's `.s`): when it runs after another step,
    /// the previous step's result is prepended to `args` (for the first step
    /// of `on_failure`, the failure record is).
    pub fn s(&self, args: impl Into<Args>) -> Signature {
        Signature::new(self.name.clone(), args.into(), false)
    }

    /// An immutable signature (Celery's `.si`): it runs with exactly `args`.
    pub fn si(&self, args: impl Into<Args>) -> Signature {
        Signature::new(self.name.clone(), args.into(), true)
    }
}

/// Positional arguments of a signature: always a JSON array on the wire.
///
/// Built from a JSON array (`json!([10, "x"])`), a `Vec` or array of
/// anything convertible into a [`Value`], a tuple of up to eight such
/// values (`(10, "x")`), or `()` for no arguments.
///
/// A [`Value`] that is not an array is taken as the one and only argument,
/// as Celery's `task.s(x)` would: `json!(10)` means `[10]`. To pass one
/// argument that is itself an array, wrap it: `vec![json!([1, 2])]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args(Vec<Value>);

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// The arguments, in order.
    pub fn as_slice(&self) -> &[Value] {
        &self.0
    }

    /// The arguments as the JSON array text the contract carries.
    fn into_json(self) -> String {
        Value::Array(self.0).to_string()
    }
}

impl From<Value> for Args {
    fn from(value: Value) -> Self {
        match value {
            Value::Array(values) => Self(values),
            single => Self(vec![single]),
        }
    }
}

impl<T: Into<Value>> From<Vec<T>> for Args {
    fn from(values: Vec<T>) -> Self {
        values.into_iter().collect()
    }
}

impl<T: Into<Value>, const N: usize> From<[T; N]> for Args {
    fn from(values: [T; N]) -> Self {
        values.into_iter().collect()
    }
}

impl From<()> for Args {
    fn from((): ()) -> Self {
        Self::new()
    }
}

impl<T: Into<Value>> FromIterator<T> for Args {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        Self(values.into_iter().map(Into::into).collect())
    }
}

/// `From<(A, B, ..)> for Args`, each element converted into a [`Value`].
macro_rules! args_from_tuple {
    ($($ty:ident $var:ident),+) => {
        impl<$($ty: Into<Value>),+> From<($($ty,)+)> for Args {
            fn from(($($var,)+): ($($ty,)+)) -> Self {
                Self(vec![$($var.into()),+])
            }
        }
    };
}

args_from_tuple!(A a);
args_from_tuple!(A a, B b);
args_from_tuple!(A a, B b, C c);
args_from_tuple!(A a, B b, C c, D d);
args_from_tuple!(A a, B b, C c, D d, E e);
args_from_tuple!(A a, B b, C c, D d, E e, F f);
args_from_tuple!(A a, B b, C c, D d, E e, F f, G g);
args_from_tuple!(A a, B b, C c, D d, E e, F f, G g, H h);

/// A declared throttle: at most `concurrency` holders at once per identity.
///
/// The identity is (task name, key), with the key defaulting to `*` (one
/// identity for the whole task name); [`shared`](Self::shared) makes the key
/// alone the identity, across task names. The slot is held by one run of the
/// task unless [`chain_scoped`](Self::chain_scoped), in which case the chain
/// holds it through its remaining steps and callbacks.
///
/// ```
/// use baton::Throttle;
///
/// // Waldur's "at most 4 resources provisioning per tenant".
/// let per_tenant = Throttle::new(4).key("tenant:42").shared().chain_scoped();
/// // At most 10 calls a second to a cloud API, across every worker.
/// let api = Throttle::rate(10, std::time::Duration::from_secs(1)).key("api").shared();
/// // Both: 2 at once, and 100 a minute, 10 of them at once.
/// let both = Throttle::new(2).per("100/m").unwrap().burst(10);
/// # let _ = (per_tenant, api, both);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Throttle(pb::Throttle);

impl Throttle {
    /// At most `concurrency` holders at once; 0 means the broker's default,
    /// 1. An admin limit (`Admin::set_throttle_limit`) overrides it.
    pub fn new(concurrency: u32) -> Self {
        Self(pb::Throttle {
            concurrency,
            key: String::new(),
            shared: false,
            scope: pb::ThrottleScope::Task.into(),
            rate: None,
        })
    }

    /// At most `count` starts per `period` for the identity, across every
    /// worker and broker restart, evenly spaced (see
    /// [`burst`](Self::burst)); no limit on how many run at once. The
    /// period is counted in milliseconds.
    pub fn rate(count: u32, period: std::time::Duration) -> Self {
        Self::new(0).with_rate(count, period)
    }

    /// Adds a rate to this throttle: at most `count` starts per `period`.
    #[must_use]
    pub fn with_rate(mut self, count: u32, period: std::time::Duration) -> Self {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.0.rate = Some(pb::Rate {
            count,
            period_ms,
            burst: 0,
        });
        self
    }

    /// Adds a rate written as Celery writes it: `"10/s"`, `"100/m"`,
    /// `"5/h"`, `"1000/d"` (see [`crate::parse_rate`]).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the text.
    pub fn per(mut self, rate: &str) -> Result<Self, String> {
        self.0.rate = Some(crate::parse_rate(rate)?);
        Ok(self)
    }

    /// How many starts of the rate may come at once after a quiet spell
    /// (default 1: evenly spaced). In any period there are at most the
    /// count plus the burst minus one.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        if let Some(rate) = &mut self.0.rate {
            rate.burst = burst;
        }
        self
    }

    /// The throttle key (for example a tenant's id); unset means `*`.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.key = key.into();
        self
    }

    /// The identity is the key alone, shared by every task name that uses
    /// it, rather than (task name, key).
    #[must_use]
    pub fn shared(mut self) -> Self {
        self.0.shared = true;
        self
    }

    /// The slot is taken when the step is first dispatched and held by the
    /// chain until it ends (succeeded, failed, cancelled), rather than by
    /// one run of the task.
    #[must_use]
    pub fn chain_scoped(mut self) -> Self {
        self.0.scope = pb::ThrottleScope::Chain.into();
        self
    }
}

impl From<Throttle> for pb::Throttle {
    fn from(throttle: Throttle) -> Self {
        throttle.0
    }
}

/// One step: a task name, its arguments and its execution options.
///
/// Made by [`Task::s`] or [`Task::si`]; each builder method sets one field of
/// `baton.v1.Options`. An option left unset falls back to the defaults the
/// workers registered for the task name, then to the broker's.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    name: String,
    args: Args,
    /// Sent verbatim; the contract wants a JSON object.
    kwargs: Value,
    immutable: bool,
    options: pb::Options,
    /// A group's members, or a nested executor.
    children: Children,
}

/// What a step runs besides a task: child chains.
#[derive(Debug, Clone, PartialEq, Default)]
enum Children {
    #[default]
    None,
    Group(Vec<Signature>),
    Executor(Box<pb::Executor>),
}

/// A group (Celery's `group`): one step whose members run side by side,
/// each as a child chain of its own. The step succeeds once every member
/// succeeded, with their results as a JSON array in member order, which
/// the next step receives (a group followed by a step is Celery's
/// `chord`). The first member that fails fails the step with its failure
/// record (which the chain's `on_failure` receives) and the broker cancels
/// the others.
///
/// A member is a task's signature, another group, or a whole chain with
/// its own callbacks ([`Executor`]). Like `.s`, the group hands the
/// previous step's result to the first step of each member, which takes it
/// if it is mutable itself; [`Signature::immutable`] keeps it from them.
///
/// ```
/// use baton::{Chain, Task, group};
///
/// let (add, total) = (Task::new("demo.add"), Task::new("demo.total"));
/// // total receives [3, 7] first: the members' results, in order.
/// let chord = Chain::new([group([add.si((1, 2)), add.si((3, 4))]), total.s(())]);
/// # let _ = chord;
/// ```
pub fn group(members: impl IntoIterator<Item = Signature>) -> Signature {
    let mut signature = Signature::new("group".into(), Args::new(), false);
    signature.children = Children::Group(members.into_iter().collect());
    signature
}

/// A chain with its own callbacks run as one step of another chain, or as
/// a member of a group: NodeConductor's executors nested. The parent's step
/// waits for it, and succeeds with its result once it succeeded (after its
/// `on_success`), or fails with its failure record once it failed (after
/// its `on_failure`). Cancelling the parent cancels it.
///
/// ```
/// use baton::{Chain, Executor, Signature, Task};
///
/// let (create, set_ok, set_erred) = (
///     Task::new("volume.create"),
///     Task::new("volume.set_ok"),
///     Task::new("volume.set_erred"),
/// );
/// let volume = Executor::new(create.si(["vol-1"]))
///     .on_success(set_ok.si(["vol-1"]))
///     .on_failure(set_erred.s(["vol-1"]));
/// let instance = Chain::new([Task::new("vm.create").si(["vm-1"]), volume.into()]);
/// # let _ = instance;
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Executor {
    steps: crate::Steps,
    on_success: crate::Steps,
    on_failure: crate::Steps,
    name: String,
}

impl Executor {
    /// An executor of `steps`, run one after another (at least one).
    pub fn new(steps: impl Into<crate::Steps>) -> Self {
        Self {
            steps: steps.into(),
            ..Self::default()
        }
    }

    /// Runs after its last step succeeded.
    #[must_use]
    pub fn on_success(mut self, callback: impl Into<crate::Steps>) -> Self {
        self.on_success = callback.into();
        self
    }

    /// Runs once when one of its steps (or `on_success`) failed for good.
    #[must_use]
    pub fn on_failure(mut self, callback: impl Into<crate::Steps>) -> Self {
        self.on_failure = callback.into();
        self
    }

    /// The label its step shows in the parent (default "executor").
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl From<Executor> for Signature {
    fn from(executor: Executor) -> Self {
        let name = if executor.name.is_empty() {
            "executor".to_owned()
        } else {
            executor.name
        };
        let mut signature = Signature::new(name, Args::new(), false);
        signature.children = Children::Executor(Box::new(pb::Executor {
            steps: executor.steps.into_pb(),
            on_success: executor.on_success.into_pb(),
            on_failure: executor.on_failure.into_pb(),
        }));
        signature
    }
}

impl Signature {
    fn new(name: String, args: Args, immutable: bool) -> Self {
        Self {
            name,
            args,
            kwargs: Value::Object(Map::new()),
            immutable,
            options: pb::Options::default(),
            children: Children::None,
        }
    }

    /// Keeps the previous step's result from this step (Celery's `.si`):
    /// for a group or an executor, from their members' first steps.
    #[must_use]
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// The members of a group ([`group`]); empty for any other step.
    pub fn members(&self) -> &[Signature] {
        match &self.children {
            Children::Group(members) => members,
            _ => &[],
        }
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the step ignores the previous step's result (`.si`).
    pub fn is_immutable(&self) -> bool {
        self.immutable
    }

    /// Keyword arguments, a JSON object such as `json!({"force": true})`.
    /// Anything else is sent as it is, and the broker rejects it.
    #[must_use]
    pub fn kwargs(mut self, kwargs: impl Into<Value>) -> Self {
        self.kwargs = kwargs.into();
        self
    }

    /// Runs in this queue, whatever the heavy flags say.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options.queue = queue.into();
        self
    }

    /// Routes the step to the `heavy` queue (unless it names a queue).
    #[must_use]
    pub fn heavy(mut self) -> Self {
        self.options.heavy = true;
        self
    }

    /// Dispatches the step only when it can take a slot of `throttle`.
    #[must_use]
    pub fn throttle(mut self, throttle: Throttle) -> Self {
        self.options.throttle = Some(throttle.into());
        self
    }

    /// How many failures reported as retryable are retried (default 0).
    #[must_use]
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.options.max_retries = Some(retries);
        self
    }

    /// The first retry delay, doubled after each retry up to
    /// [`retry_backoff_max`](Self::retry_backoff_max) (default 1 s).
    #[must_use]
    pub fn retry_backoff(mut self, delay: Duration) -> Self {
        self.options.retry_backoff_ms = Some(duration_ms(delay));
        self
    }

    /// The upper bound of the retry delay (default 60 s).
    #[must_use]
    pub fn retry_backoff_max(mut self, delay: Duration) -> Self {
        self.options.retry_backoff_max_ms = Some(duration_ms(delay));
        self
    }

    /// How many "retry later" outcomes the step may report before it fails
    /// with `PollBudgetExhausted` (default 100).
    #[must_use]
    pub fn max_polls(mut self, polls: u32) -> Self {
        self.options.max_polls = Some(polls);
        self
    }

    /// The time limit of one run; past it the run fails (retryably) with
    /// `TimeLimitExceeded`. `Duration::ZERO` means no limit, overriding a
    /// limit the task's defaults declare.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.options.timeout_ms = Some(duration_ms(limit));
        self
    }

    /// Delay before the step becomes ready, counted from the moment its turn
    /// comes in the chain.
    #[must_use]
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.options.countdown_ms = duration_ms(delay);
        self
    }

    /// The step does not start before `eta` (the later of ETA and countdown
    /// wins).
    #[must_use]
    pub fn eta(mut self, eta: SystemTime) -> Self {
        self.options.eta_unix_ms = unix_ms(eta);
        self
    }

    /// Higher runs first among the ready tasks of one queue (default 0).
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    /// Free text shown in inspection.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.options.description = description.into();
        self
    }
}

impl From<Signature> for pb::Signature {
    fn from(signature: Signature) -> Self {
        let options = signature.options;
        let (members, executor) = match signature.children {
            Children::None => (Vec::new(), None),
            Children::Group(members) => (members.into_iter().map(Self::from).collect(), None),
            Children::Executor(executor) => (Vec::new(), Some(*executor)),
        };
        let plain = members.is_empty() && executor.is_none();
        Self {
            name: signature.name,
            // A group or executor has no arguments of its own: none sent.
            args: if plain {
                signature.args.into_json()
            } else {
                String::new()
            },
            kwargs: if plain {
                signature.kwargs.to_string()
            } else {
                String::new()
            },
            immutable: signature.immutable,
            // Nothing set: leave the message out, every field is "unset".
            options: (options != pb::Options::default()).then_some(options),
            members,
            executor,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use serde_json::json;

    use super::*;

    fn wire(signature: Signature) -> pb::Signature {
        signature.into()
    }

    #[test]
    fn s_is_mutable_and_si_is_immutable() {
        let slow = Task::new("demo.slow");
        let mutable = wire(slow.s(json!([10])));
        let immutable = wire(slow.si(json!([10])));
        assert_eq!(mutable.name, "demo.slow");
        assert!(!mutable.immutable);
        assert!(immutable.immutable);
        assert_eq!(mutable.args, "[10]");
        assert_eq!(mutable.kwargs, "{}");
        assert_eq!(mutable.options, None, "no option set, no Options sent");
    }

    #[test]
    fn args_become_a_json_array() {
        let task = Task::new("t");
        let args = |args: Args| wire(task.si(args)).args;
        assert_eq!(args(json!([10, "x"]).into()), r#"[10,"x"]"#);
        assert_eq!(
            args(vec![json!(1), json!({"a": null})].into()),
            r#"[1,{"a":null}]"#
        );
        assert_eq!(args([1, 2, 3].into()), "[1,2,3]");
        assert_eq!(args((10, "uuid", true).into()), r#"[10,"uuid",true]"#);
        assert_eq!(args(().into()), "[]");
        assert_eq!(args(Args::new()), "[]");
        // A non-array value is the single argument, as with Celery's `.s(x)`.
        assert_eq!(args(json!(10).into()), "[10]");
        assert_eq!(args(json!({"a": 1}).into()), r#"[{"a":1}]"#);
        // An array argument is passed by wrapping it.
        assert_eq!(args(vec![json!([1, 2])].into()), "[[1,2]]");
    }

    #[test]
    fn kwargs_are_sent_verbatim() {
        let signature = Task::new("t").si(()).kwargs(json!({"force": true}));
        assert_eq!(wire(signature).kwargs, r#"{"force":true}"#);
    }

    #[test]
    fn every_option_maps_to_its_field() {
        let eta = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let signature = Task::new("openstack.create_volume")
            .s(["vol-1"])
            .queue("provisioning")
            .heavy()
            .throttle(Throttle::new(4).key("tenant:42").shared().chain_scoped())
            .max_retries(3)
            .retry_backoff(Duration::from_millis(1500))
            .retry_backoff_max(Duration::from_secs(30))
            .max_polls(300)
            .timeout(Duration::from_secs(600))
            .countdown(Duration::from_secs(2))
            .eta(eta)
            .priority(-5)
            .description("Create volume vol-1");
        let expected = pb::Options {
            queue: "provisioning".into(),
            heavy: true,
            throttle: Some(pb::Throttle {
                concurrency: 4,
                key: "tenant:42".into(),
                shared: true,
                scope: pb::ThrottleScope::Chain.into(),
                rate: None,
            }),
            max_retries: Some(3),
            retry_backoff_ms: Some(1500),
            retry_backoff_max_ms: Some(30_000),
            max_polls: Some(300),
            timeout_ms: Some(600_000),
            countdown_ms: 2000,
            eta_unix_ms: 1_700_000_000_000,
            priority: -5,
            description: "Create volume vol-1".into(),
        };
        assert_eq!(wire(signature).options, Some(expected));
    }

    #[test]
    fn a_plain_throttle_is_task_scoped_on_the_task_name() {
        let throttle = pb::Throttle::from(Throttle::new(1));
        assert_eq!(throttle.concurrency, 1);
        assert_eq!(throttle.key, "");
        assert!(!throttle.shared);
        assert_eq!(throttle.scope(), pb::ThrottleScope::Task);
    }

    #[test]
    fn zero_timeout_is_sent_as_an_explicit_zero() {
        let options = wire(Task::new("t").si(()).timeout(Duration::ZERO)).options;
        assert_eq!(options.and_then(|options| options.timeout_ms), Some(0));
    }
}

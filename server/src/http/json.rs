//! The JSON shapes of the HTTP API: the proto's messages under the proto3
//! JSON mapping, with the mapping's option of keeping the proto's own
//! (snake_case) field names, and two deliberate differences, documented in
//! docs/http.md:
//! - payloads (`args`, `kwargs`, `result`) are JSON values, not JSON text
//!   in a string: `"args": [10]`, not `"args": "[10]"`;
//! - 64-bit integers (unix milliseconds, counts) are JSON numbers, not
//!   strings: every one the broker sends is below 2^53.
//!
//! Enums are their value names (`"CHAIN_STATE_RUNNING"`), as in the
//! mapping. Requests refuse unknown fields, so a misspelt option is an
//! error rather than silently ignored.

use std::collections::BTreeMap;

use baton::pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ChainRecord, Phase as DomainPhase};

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `SubmitChainRequest`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct SubmitChain {
    pub steps: Vec<Signature>,
    #[serde(default)]
    pub on_success: Vec<Signature>,
    #[serde(default)]
    pub on_failure: Vec<Signature>,
    #[serde(default)]
    pub heavy: bool,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub unique_key: String,
    #[serde(default)]
    pub deadline_unix_ms: u64,
    #[serde(default)]
    pub chain_id: String,
}

/// `SubmitChainsRequest`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SubmitChains {
    pub chains: Vec<SubmitChain>,
}

/// `Signature`; `args` a JSON array, `kwargs` a JSON object.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// A task name; for a group or an executor, a label (may be omitted).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub kwargs: Option<Value>,
    #[serde(default)]
    pub immutable: bool,
    #[serde(default)]
    pub options: Option<Options>,
    /// A group's members.
    #[serde(default)]
    pub members: Vec<Signature>,
    /// A nested executor.
    #[serde(default)]
    pub executor: Option<Executor>,
}

/// `Executor`: a chain with its own callbacks, run as one step.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Executor {
    #[serde(default)]
    pub steps: Vec<Signature>,
    #[serde(default)]
    pub on_success: Vec<Signature>,
    #[serde(default)]
    pub on_failure: Vec<Signature>,
}

/// `Options`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub heavy: bool,
    #[serde(default)]
    pub throttle: Option<Throttle>,
    pub max_retries: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    pub retry_backoff_max_ms: Option<u64>,
    pub max_polls: Option<u32>,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub countdown_ms: u64,
    #[serde(default)]
    pub eta_unix_ms: u64,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub description: String,
}

/// `Throttle`; `scope` is `THROTTLE_SCOPE_TASK` or `THROTTLE_SCOPE_CHAIN`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    #[serde(default)]
    pub concurrency: u32,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// `Rate`: at most `count` starts per `period_ms`, `burst` at once.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
    #[serde(default)]
    pub burst: u32,
}

impl From<Rate> for pb::Rate {
    fn from(r: Rate) -> Self {
        pb::Rate {
            count: r.count,
            period_ms: r.period_ms,
            burst: r.burst,
        }
    }
}

impl From<pb::Rate> for Rate {
    fn from(r: pb::Rate) -> Self {
        Rate {
            count: r.count,
            period_ms: r.period_ms,
            burst: r.burst,
        }
    }
}

/// `CancelChainRequest` less the id (in the path).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    #[serde(default)]
    pub reason: String,
}

/// `PurgeQueueRequest` less the queue (in the path).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    #[serde(default)]
    pub reason: String,
}

/// `SetThrottleLimitRequest`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SetLimit {
    pub identity: Identity,
    pub limit: u32,
}

/// `SetThrottleRateRequest`: no `rate` (or `null`) clears the override.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SetRate {
    pub identity: Identity,
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// `Schedule` (the body of `PutSchedule`): the chain as `POST
/// /api/v1/chains` takes it.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PutSchedule {
    pub name: String,
    #[serde(default)]
    pub cron: String,
    #[serde(default)]
    pub timezone: String,
    #[serde(default)]
    pub every_ms: u64,
    pub chain: SubmitChain,
    #[serde(default)]
    pub deadline_ms: u64,
    #[serde(default)]
    pub catch_up: u32,
    #[serde(default)]
    pub paused: bool,
}

impl PutSchedule {
    /// The protocol's schedule, for the Admin service to validate.
    ///
    /// # Errors
    /// A message naming the field whose enum name is unknown.
    pub fn into_pb(self) -> Result<pb::Schedule, String> {
        Ok(pb::Schedule {
            name: self.name,
            cron: self.cron,
            timezone: self.timezone,
            every_ms: self.every_ms,
            chain: Some(self.chain.into_pb().map_err(|m| format!("chain.{m}"))?),
            deadline_ms: self.deadline_ms,
            catch_up: self.catch_up,
            paused: self.paused,
        })
    }
}

/// `ThrottleIdentity`.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default)]
    pub task_name: String,
    #[serde(default)]
    pub key: String,
}

/// Requeue several dead chains at once.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RequeueMany {
    pub chain_ids: Vec<String>,
}

fn payload(value: Option<Value>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl Throttle {
    fn into_pb(self, field: &str) -> Result<pb::Throttle, String> {
        let scope = match self.scope.as_deref() {
            None | Some("") => pb::ThrottleScope::Unspecified,
            Some(name) => pb::ThrottleScope::from_str_name(name).ok_or_else(|| {
                format!(
                    "{field}.scope is {name:?}, not one of THROTTLE_SCOPE_TASK, THROTTLE_SCOPE_CHAIN"
                )
            })?,
        };
        Ok(pb::Throttle {
            concurrency: self.concurrency,
            key: self.key,
            shared: self.shared,
            scope: scope as i32,
            rate: self.rate.map(pb::Rate::from),
        })
    }
}

impl Signature {
    fn into_pb(self, field: &str) -> Result<pb::Signature, String> {
        let options = match self.options {
            None => None,
            Some(o) => Some(pb::Options {
                queue: o.queue,
                heavy: o.heavy,
                throttle: o
                    .throttle
                    .map(|t| t.into_pb(&format!("{field}.options.throttle")))
                    .transpose()?,
                max_retries: o.max_retries,
                retry_backoff_ms: o.retry_backoff_ms,
                retry_backoff_max_ms: o.retry_backoff_max_ms,
                max_polls: o.max_polls,
                timeout_ms: o.timeout_ms,
                countdown_ms: o.countdown_ms,
                eta_unix_ms: o.eta_unix_ms,
                priority: o.priority,
                description: o.description,
            }),
        };
        let executor = match self.executor {
            None => None,
            Some(e) => Some(pb::Executor {
                steps: signatures(e.steps, &format!("{field}.executor.steps"))?,
                on_success: signatures(e.on_success, &format!("{field}.executor.on_success"))?,
                on_failure: signatures(e.on_failure, &format!("{field}.executor.on_failure"))?,
            }),
        };
        Ok(pb::Signature {
            name: self.name,
            args: payload(self.args),
            kwargs: payload(self.kwargs),
            immutable: self.immutable,
            options,
            members: signatures(self.members, &format!("{field}.members"))?,
            executor,
        })
    }
}

fn signatures(list: Vec<Signature>, field: &str) -> Result<Vec<pb::Signature>, String> {
    list.into_iter()
        .enumerate()
        .map(|(i, s)| s.into_pb(&format!("{field}[{i}]")))
        .collect()
}

impl SubmitChain {
    /// The protocol's request, for the Broker service to validate.
    ///
    /// # Errors
    /// A message naming the field whose enum name is unknown.
    pub fn into_pb(self) -> Result<pb::SubmitChainRequest, String> {
        Ok(pb::SubmitChainRequest {
            steps: signatures(self.steps, "steps")?,
            on_success: signatures(self.on_success, "on_success")?,
            on_failure: signatures(self.on_failure, "on_failure")?,
            heavy: self.heavy,
            context: self.context.into_iter().collect(),
            idempotency_key: self.idempotency_key,
            unique_key: self.unique_key,
            deadline_unix_ms: self.deadline_unix_ms,
            chain_id: self.chain_id,
        })
    }
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// A JSON payload as a value; text that is not JSON (never stored, but
/// shown rather than hidden) as a string; empty as null.
pub fn value(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn enum_name<E: TryFrom<i32>>(n: i32, name: impl Fn(&E) -> &'static str) -> &'static str {
    E::try_from(n).map(|e| name(&e)).unwrap_or("UNKNOWN")
}

pub fn chain_state(n: i32) -> &'static str {
    enum_name(n, pb::ChainState::as_str_name)
}

pub fn phase(n: i32) -> &'static str {
    enum_name(n, pb::Phase::as_str_name)
}

pub fn step_state(n: i32) -> &'static str {
    enum_name(n, pb::StepState::as_str_name)
}

/// `SubmitChainResponse`.
#[derive(Serialize, Debug)]
pub struct Submitted {
    pub chain_id: String,
    pub dedup: &'static str,
}

impl From<pb::SubmitChainResponse> for Submitted {
    fn from(r: pb::SubmitChainResponse) -> Self {
        Submitted {
            chain_id: r.chain_id,
            dedup: enum_name(r.dedup, pb::Dedup::as_str_name),
        }
    }
}

/// `FailureRecord`.
#[derive(Serialize, Debug)]
pub struct Failure {
    pub chain_id: String,
    pub phase: &'static str,
    pub step_index: u32,
    pub task_name: String,
    pub task_id: String,
    pub attempt: u32,
    pub error_type: String,
    pub message: String,
    pub traceback: String,
}

impl From<pb::FailureRecord> for Failure {
    fn from(f: pb::FailureRecord) -> Self {
        Failure {
            chain_id: f.chain_id,
            phase: phase(f.phase),
            step_index: f.step_index,
            task_name: f.task_name,
            task_id: f.task_id,
            attempt: f.attempt,
            error_type: f.error_type,
            message: f.message,
            traceback: f.traceback,
        }
    }
}

/// `Step`, with the signature's `args`, `kwargs` and `immutable`, which
/// the proto's Step does not carry (the dashboard shows them).
#[derive(Serialize, Debug)]
pub struct Step {
    pub task_id: String,
    pub phase: &'static str,
    pub index: u32,
    pub name: String,
    pub state: &'static str,
    pub attempts: u32,
    pub polls: u32,
    pub retries: u32,
    pub queue: String,
    pub result: Value,
    pub result_omitted: bool,
    pub result_bytes: u64,
    pub failure: Option<Failure>,
    pub worker: String,
    pub ready_unix_ms: u64,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub description: String,
    pub unserved_queue: String,
    pub args: Value,
    pub kwargs: Value,
    pub immutable: bool,
    pub members: u32,
    pub members_succeeded: u32,
    pub child_chain_ids: Vec<String>,
}

/// `Chain`.
#[derive(Serialize, Debug)]
pub struct Chain {
    pub chain_id: String,
    pub state: &'static str,
    pub steps: Vec<Step>,
    pub on_success: Vec<Step>,
    pub on_failure: Vec<Step>,
    pub context: BTreeMap<String, String>,
    pub heavy: bool,
    pub created_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub deadline_unix_ms: u64,
    pub result: Value,
    pub failure: Option<Failure>,
    pub cancel_reason: String,
    pub requeued_from: String,
    pub requeued_as: String,
    pub parent_chain_id: String,
    pub member_index: u32,
    pub history: Vec<HistoryEntry>,
    pub history_dropped: u32,
}

/// `HistoryEntry`.
#[derive(Serialize, Debug)]
pub struct HistoryEntry {
    pub kind: String,
    pub at_unix_ms: u64,
    pub phase: &'static str,
    pub step_index: u32,
    pub attempt: u32,
    pub worker: String,
    pub detail: String,
    pub next_unix_ms: u64,
    pub repeats: u32,
}

impl From<pb::HistoryEntry> for HistoryEntry {
    fn from(e: pb::HistoryEntry) -> Self {
        HistoryEntry {
            kind: e.kind,
            at_unix_ms: e.at_unix_ms,
            phase: phase(e.phase),
            step_index: e.step_index,
            attempt: e.attempt,
            worker: e.worker,
            detail: e.detail,
            next_unix_ms: e.next_unix_ms,
            repeats: e.repeats,
        }
    }
}

impl Chain {
    /// The protocol's view of `record` (`view`, from `api::convert`) with
    /// each step's signature arguments from the record.
    pub fn new(view: pb::Chain, record: &ChainRecord) -> Self {
        let steps = |steps: Vec<pb::Step>, phase: DomainPhase| {
            let records = record.steps_of(phase);
            steps
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let sig = records.get(i).map(|r| r.signature());
                    Step {
                        task_id: s.task_id,
                        phase: self::phase(s.phase),
                        index: s.index,
                        name: s.name,
                        state: step_state(s.state),
                        attempts: s.attempts,
                        polls: s.polls,
                        retries: s.retries,
                        queue: s.queue,
                        result: value(&s.result),
                        result_omitted: s.result_omitted,
                        result_bytes: s.result_bytes,
                        failure: s.failure.map(Failure::from),
                        worker: s.worker,
                        ready_unix_ms: s.ready_unix_ms,
                        started_unix_ms: s.started_unix_ms,
                        finished_unix_ms: s.finished_unix_ms,
                        description: s.description,
                        unserved_queue: s.unserved_queue,
                        args: sig.map_or(Value::Null, |g| value(&g.args)),
                        kwargs: sig.map_or(Value::Null, |g| value(&g.kwargs)),
                        immutable: sig.is_some_and(|g| g.immutable),
                        members: s.members,
                        members_succeeded: s.members_succeeded,
                        child_chain_ids: s.child_chain_ids,
                    }
                })
                .collect()
        };
        Chain {
            chain_id: view.chain_id,
            state: chain_state(view.state),
            steps: steps(view.steps, DomainPhase::Main),
            on_success: steps(view.on_success, DomainPhase::OnSuccess),
            on_failure: steps(view.on_failure, DomainPhase::OnFailure),
            context: view.context.into_iter().collect(),
            heavy: view.heavy,
            created_unix_ms: view.created_unix_ms,
            finished_unix_ms: view.finished_unix_ms,
            deadline_unix_ms: view.deadline_unix_ms,
            result: value(&view.result),
            failure: view.failure.map(Failure::from),
            cancel_reason: view.cancel_reason,
            requeued_from: view.requeued_from,
            requeued_as: view.requeued_as,
            parent_chain_id: view.parent_chain_id,
            member_index: view.member_index,
            history: view.history.into_iter().map(HistoryEntry::from).collect(),
            history_dropped: view.history_dropped,
        }
    }

    /// A chain record as the API shows it.
    pub fn of(record: &ChainRecord) -> Self {
        Self::new(crate::api::convert::chain_view(record), record)
    }
}

/// `ChainEvent`.
#[derive(Serialize, Debug)]
pub struct Event {
    pub kind: String,
    pub phase: &'static str,
    pub step_index: u32,
    pub chain: Chain,
}

impl Event {
    pub fn of(e: &crate::domain::ChainEvent) -> Self {
        let view = crate::api::convert::event_view(e);
        Event {
            kind: view.kind,
            phase: phase(view.phase),
            step_index: view.step_index,
            chain: Chain::of(&e.chain),
        }
    }
}

/// `QueueInfo`.
#[derive(Serialize, Debug, Clone)]
pub struct Queue {
    pub name: String,
    pub ready: u64,
    pub delayed: u64,
    pub throttled: u64,
    pub running: u64,
    pub oldest_ready_age_ms: u64,
    pub paused: bool,
    pub unserved_tasks: Vec<String>,
    /// Ready tasks of each priority, as submitted (keys "0" to "9").
    pub ready_by_priority: std::collections::BTreeMap<i32, u64>,
}

impl From<pb::QueueInfo> for Queue {
    fn from(q: pb::QueueInfo) -> Self {
        Queue {
            name: q.name,
            ready: q.ready,
            delayed: q.delayed,
            throttled: q.throttled,
            running: q.running,
            oldest_ready_age_ms: q.oldest_ready_age_ms,
            paused: q.paused,
            unserved_tasks: q.unserved_tasks,
            ready_by_priority: q.ready_by_priority.into_iter().collect(),
        }
    }
}

/// `TaskRef`.
#[derive(Serialize, Debug, Clone)]
pub struct TaskRef {
    pub task_id: String,
    pub attempt: u32,
}

/// `WorkerInfo`.
#[derive(Serialize, Debug, Clone)]
pub struct Worker {
    pub worker_id: String,
    pub worker_name: String,
    pub queues: Vec<String>,
    pub task_names: Vec<String>,
    pub concurrency: u32,
    pub in_flight: Vec<TaskRef>,
    pub draining: bool,
    pub connected_unix_ms: u64,
    pub prefetch: u32,
}

impl From<pb::WorkerInfo> for Worker {
    fn from(w: pb::WorkerInfo) -> Self {
        Worker {
            worker_id: w.worker_id,
            worker_name: w.worker_name,
            queues: w.queues,
            task_names: w.task_names,
            concurrency: w.concurrency,
            in_flight: w
                .in_flight
                .into_iter()
                .map(|t| TaskRef {
                    task_id: t.task_id,
                    attempt: t.attempt,
                })
                .collect(),
            draining: w.draining,
            connected_unix_ms: w.connected_unix_ms,
            prefetch: w.prefetch,
        }
    }
}

/// `ThrottleHolder`.
#[derive(Serialize, Debug, Clone)]
pub struct Holder {
    pub kind: String,
    pub task_id: String,
    pub chain_id: String,
    pub worker: String,
    pub since_unix_ms: u64,
}

/// `ThrottleInfo` (the request's throttle is [`Throttle`]).
#[derive(Serialize, Debug, Clone)]
pub struct ThrottleInfo {
    pub identity: Identity,
    pub limit: u32,
    pub limit_overridden: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    pub rate_overridden: bool,
    pub holders: Vec<Holder>,
    pub waiters: u64,
    pub oldest_waiter_age_ms: u64,
    /// The first waiters, in the order they are served.
    pub first_waiters: Vec<Holder>,
}

impl From<pb::ThrottleHolder> for Holder {
    fn from(h: pb::ThrottleHolder) -> Self {
        Holder {
            kind: h.kind,
            task_id: h.task_id,
            chain_id: h.chain_id,
            worker: h.worker,
            since_unix_ms: h.since_unix_ms,
        }
    }
}

impl From<pb::ThrottleInfo> for ThrottleInfo {
    fn from(t: pb::ThrottleInfo) -> Self {
        let id = t.identity.unwrap_or_default();
        ThrottleInfo {
            identity: Identity {
                task_name: id.task_name,
                key: id.key,
            },
            limit: t.limit,
            limit_overridden: t.limit_overridden,
            rate: t.rate.map(Rate::from),
            rate_overridden: t.rate_overridden,
            holders: t.holders.into_iter().map(Holder::from).collect(),
            waiters: t.waiters,
            oldest_waiter_age_ms: t.oldest_waiter_age_ms,
            first_waiters: t.first_waiters.into_iter().map(Holder::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_takes_payloads_as_values_and_refuses_unknown_fields() {
        let body = r#"{"steps": [{"name": "demo.slow", "args": [10],
            "options": {"queue": "q", "throttle": {"key": "k", "scope": "THROTTLE_SCOPE_CHAIN"}}}],
            "context": {"user": "alice"}}"#;
        let req: SubmitChain = serde_json::from_str(body).unwrap();
        let pb = req.into_pb().unwrap();
        assert_eq!(pb.steps[0].args, "[10]");
        assert_eq!(pb.steps[0].kwargs, "");
        let options = pb.steps[0].options.as_ref().unwrap();
        assert_eq!(
            options.throttle.as_ref().unwrap().scope,
            pb::ThrottleScope::Chain as i32
        );
        let typo = serde_json::from_str::<SubmitChain>(r#"{"steps": [], "heavvy": true}"#);
        assert!(typo.unwrap_err().to_string().contains("heavvy"));
        let bad_scope: SubmitChain = serde_json::from_str(
            r#"{"steps": [{"name": "t", "options": {"throttle": {"scope": "X"}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            bad_scope.into_pb().unwrap_err(),
            "steps[0].options.throttle.scope is \"X\", not one of THROTTLE_SCOPE_TASK, THROTTLE_SCOPE_CHAIN"
        );
    }

    #[test]
    fn payloads_read_back_as_values() {
        assert_eq!(value(""), Value::Null);
        assert_eq!(value("[1,2]"), serde_json::json!([1, 2]));
        assert_eq!(value("not json"), Value::String("not json".into()));
        assert_eq!(chain_state(3), "CHAIN_STATE_FAILED");
        assert_eq!(chain_state(99), "UNKNOWN");
    }
}

/// `ScheduleInfo`: the schedule's chain as it was given (args and kwargs
/// as JSON).
#[derive(Serialize, Debug)]
pub struct ScheduleInfo {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub every_ms: u64,
    pub chain: Value,
    pub deadline_ms: u64,
    pub catch_up: u32,
    pub paused: bool,
    pub next_fires_unix_ms: Vec<u64>,
    pub last_fire_unix_ms: u64,
    pub last_chain_id: String,
    pub created_unix_ms: u64,
}

impl From<pb::ScheduleInfo> for ScheduleInfo {
    fn from(info: pb::ScheduleInfo) -> Self {
        let s = info.schedule.unwrap_or_default();
        ScheduleInfo {
            name: s.name,
            cron: s.cron,
            timezone: s.timezone,
            every_ms: s.every_ms,
            chain: s.chain.as_ref().map_or(Value::Null, chain_request),
            deadline_ms: s.deadline_ms,
            catch_up: s.catch_up,
            paused: s.paused,
            next_fires_unix_ms: info.next_fires_unix_ms,
            last_fire_unix_ms: info.last_fire_unix_ms,
            last_chain_id: info.last_chain_id,
            created_unix_ms: info.created_unix_ms,
        }
    }
}

/// A submission as `POST /api/v1/chains` takes it (default fields left out).
fn chain_request(c: &pb::SubmitChainRequest) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("steps".into(), signatures_json(&c.steps));
    if !c.on_success.is_empty() {
        out.insert("on_success".into(), signatures_json(&c.on_success));
    }
    if !c.on_failure.is_empty() {
        out.insert("on_failure".into(), signatures_json(&c.on_failure));
    }
    if c.heavy {
        out.insert("heavy".into(), Value::Bool(true));
    }
    if !c.context.is_empty() {
        let context: BTreeMap<_, _> = c.context.iter().collect();
        out.insert("context".into(), serde_json::json!(context));
    }
    if !c.unique_key.is_empty() {
        out.insert("unique_key".into(), c.unique_key.clone().into());
    }
    Value::Object(out)
}

fn signatures_json(list: &[pb::Signature]) -> Value {
    list.iter().map(signature_json).collect()
}

/// A signature as the API takes it (default fields left out).
fn signature_json(s: &pb::Signature) -> Value {
    let mut out = serde_json::Map::new();
    if !s.name.is_empty() {
        out.insert("name".into(), s.name.clone().into());
    }
    if !s.args.is_empty() {
        out.insert("args".into(), value(&s.args));
    }
    if !s.kwargs.is_empty() {
        out.insert("kwargs".into(), value(&s.kwargs));
    }
    if s.immutable {
        out.insert("immutable".into(), Value::Bool(true));
    }
    if let Some(o) = &s.options {
        out.insert("options".into(), options_json(o));
    }
    if !s.members.is_empty() {
        out.insert("members".into(), signatures_json(&s.members));
    }
    if let Some(e) = &s.executor {
        out.insert(
            "executor".into(),
            serde_json::json!({
                "steps": signatures_json(&e.steps),
                "on_success": signatures_json(&e.on_success),
                "on_failure": signatures_json(&e.on_failure),
            }),
        );
    }
    Value::Object(out)
}

/// Options as the API takes them (default fields left out).
fn options_json(o: &pb::Options) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |key: &str, v: Value| {
        out.insert(key.into(), v);
    };
    if !o.queue.is_empty() {
        put("queue", o.queue.clone().into());
    }
    if o.heavy {
        put("heavy", true.into());
    }
    if let Some(t) = &o.throttle {
        let mut throttle = serde_json::json!({
            "concurrency": t.concurrency, "key": t.key, "shared": t.shared,
        });
        if t.scope != pb::ThrottleScope::Unspecified as i32 {
            throttle["scope"] = enum_name(t.scope, pb::ThrottleScope::as_str_name).into();
        }
        if let Some(rate) = t.rate {
            throttle["rate"] = serde_json::json!(Rate::from(rate));
        }
        put("throttle", throttle);
    }
    let numbers = [
        ("max_retries", o.max_retries.map(u64::from)),
        ("retry_backoff_ms", o.retry_backoff_ms),
        ("retry_backoff_max_ms", o.retry_backoff_max_ms),
        ("max_polls", o.max_polls.map(u64::from)),
        ("timeout_ms", o.timeout_ms),
        ("countdown_ms", Some(o.countdown_ms).filter(|n| *n > 0)),
        ("eta_unix_ms", Some(o.eta_unix_ms).filter(|n| *n > 0)),
    ];
    for (key, n) in numbers {
        if let Some(n) = n {
            put(key, n.into());
        }
    }
    if o.priority != 0 {
        put("priority", o.priority.into());
    }
    if !o.description.is_empty() {
        put("description", o.description.clone().into());
    }
    Value::Object(out)
}

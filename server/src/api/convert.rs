//! Conversions between the protocol and the domain, with validation.
//!
//! Every check names the field it rejects (`steps[2].name is empty`), so a
//! client in any language learns exactly what to fix. Validation happens
//! here, before anything reaches the scheduler: bad input changes nothing.

use std::collections::BTreeMap;

use baton::pb;
use tonic::Status;

use crate::domain::{
    self, ChainId, ChainRecord, ChainSpec, MAX_PRIORITY, Phase, ScheduleRecord, Signature, StepAt,
    StepRecord, TaskId, ThrottleScope,
};

/// Limits on what one request or one caller may ask of the broker. Each
/// refusal names the limit (and its flag), so a caller knows what to fix.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest encoded SubmitChain request, result or failure (bytes); this
    /// bounds a signature's args and kwargs too. `INVALID_ARGUMENT` (a
    /// message past it plus 64 KiB is not even decoded:
    /// `RESOURCE_EXHAUSTED` naming `--max-payload`, see `api::oversize`).
    pub max_payload_bytes: usize,
    /// Most signatures in one chain (steps + callbacks): `INVALID_ARGUMENT`.
    pub max_steps: usize,
    /// Most worker streams connected at once: `RESOURCE_EXHAUSTED`.
    pub max_workers: usize,
    /// Most WatchChain streams open at once: `RESOURCE_EXHAUSTED`.
    pub max_watches: usize,
    /// Most bytes of chain events that may wait for one WatchChain stream
    /// to read them; a watcher further behind is ended with
    /// `RESOURCE_EXHAUSTED` (see `scheduler::watchers`).
    pub watch_budget_bytes: usize,
    /// Largest concurrency a worker may ask for in its hello, which is the
    /// most assignments it holds at once: `INVALID_ARGUMENT`.
    pub max_worker_concurrency: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_steps: 1000,
            max_workers: 1000,
            max_watches: 10_000,
            watch_budget_bytes: crate::scheduler::watchers::DEFAULT_BUDGET,
            max_worker_concurrency: 10_000,
        }
    }
}

pub const MAX_NAME_LEN: usize = 200;
/// Longest duration, and latest unix time, a request may name in
/// milliseconds: 2^48 - 1 (about 8900 years), so that the times computed
/// from them never overflow.
pub const MAX_MS: u64 = (1 << 48) - 1;
pub const MAX_KEY_LEN: usize = 200;
pub const MAX_QUEUE_LEN: usize = 64;

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// A task name: 1..=200 characters, no control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{field} is longer than {MAX_NAME_LEN} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

/// A queue name: 1..=64 characters of `[A-Za-z0-9_.:-]`.
pub fn check_queue(field: &str, queue: &str) -> Result<(), Status> {
    check_word(field, queue, MAX_QUEUE_LEN, "a queue name")
}

/// `word` is 1 to `max` characters of `[A-Za-z0-9_.:-]`, or an error
/// saying it is not `what`.
fn check_word(field: &str, word: &str, max: usize, what: &str) -> Result<(), Status> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
    if word.is_empty() || word.len() > max || !word.chars().all(ok_char) {
        return Err(invalid(format!(
            "{field} {word:?} is not {what} (1 to {max} characters of A-Z a-z 0-9 _ . : -)"
        )));
    }
    Ok(())
}

fn check_key(field: &str, key: &str) -> Result<(), Status> {
    if key.chars().count() > MAX_KEY_LEN {
        return Err(invalid(format!(
            "{field} is longer than {MAX_KEY_LEN} characters"
        )));
    }
    Ok(())
}

/// Checks the W3C trace context a chain carries in its reserved context
/// keys (see [`baton::trace`]): a chain that claims a trace must name it
/// well, or every span its workers start would hang off garbage.
fn check_trace<S: std::hash::BuildHasher>(
    context: &std::collections::HashMap<String, String, S>,
) -> Result<(), Status> {
    use baton::trace::{TRACEPARENT, TRACESTATE, TraceParent, check_tracestate};
    if let Some(tp) = context.get(TRACEPARENT) {
        TraceParent::parse(tp).map_err(|e| {
            invalid(format!(
                "context[{TRACEPARENT:?}] is not a W3C traceparent: {e}"
            ))
        })?;
    }
    if let Some(ts) = context.get(TRACESTATE) {
        if !context.contains_key(TRACEPARENT) {
            return Err(invalid(format!(
                "context[{TRACESTATE:?}] is set without context[{TRACEPARENT:?}]: \
                 a tracestate belongs to a traceparent"
            )));
        }
        check_tracestate(ts).map_err(|e| {
            invalid(format!(
                "context[{TRACESTATE:?}] is not a W3C tracestate: it {e}"
            ))
        })?;
    }
    Ok(())
}

/// Text that must be JSON of a given shape; empty text means `default`.
fn json_text(field: &str, text: &str, default: &str, want: &str) -> Result<String, Status> {
    if text.is_empty() {
        return Ok(default.to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("{field} is not valid JSON: {e}")))?;
    let shape_ok = match want {
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if !shape_ok {
        return Err(invalid(format!("{field} must be a JSON {want}")));
    }
    Ok(text.to_owned())
}

/// A JSON result reported by a worker (empty means null).
pub fn check_result(text: &str) -> Result<String, Status> {
    json_text("outcome.success.result", text, "null", "any")
}

pub fn check_throttle(field: &str, t: &pb::Throttle) -> Result<(), Status> {
    check_key(&format!("{field}.key"), &t.key)?;
    if ThrottleScope::try_from(t.scope).is_err() {
        return Err(invalid(format!(
            "{field}.scope has unknown value {}",
            t.scope
        )));
    }
    if t.shared && t.key.is_empty() {
        return Err(invalid(format!(
            "{field}.key is empty but shared is set (a shared throttle needs a key)"
        )));
    }
    if t.concurrency > 1_000_000 {
        return Err(invalid(format!(
            "{field}.concurrency is larger than 1000000"
        )));
    }
    if let Some(rate) = &t.rate {
        check_rate(&format!("{field}.rate"), rate)?;
    }
    Ok(())
}

/// The longest period of a rate: a day.
pub const MAX_RATE_PERIOD_MS: u64 = 86_400_000;

/// A rate: at least one start, in a period of 1 ms to a day, a burst of at
/// most the count.
pub fn check_rate(field: &str, r: &pb::Rate) -> Result<(), Status> {
    if r.count == 0 {
        return Err(invalid(format!(
            "{field}.count is 0: a rate allows at least 1 start per period"
        )));
    }
    if r.count > 1_000_000 {
        return Err(invalid(format!("{field}.count is larger than 1000000")));
    }
    if !(1..=MAX_RATE_PERIOD_MS).contains(&r.period_ms) {
        return Err(invalid(format!(
            "{field}.period_ms is {}: it must be between 1 and {MAX_RATE_PERIOD_MS} (a day)",
            r.period_ms
        )));
    }
    if r.burst > r.count {
        return Err(invalid(format!(
            "{field}.burst is {}, more than its count {}",
            r.burst, r.count
        )));
    }
    Ok(())
}

pub fn check_options(field: &str, o: &pb::Options) -> Result<(), Status> {
    if !o.queue.is_empty() {
        check_queue(&format!("{field}.queue"), &o.queue)?;
    }
    if let Some(t) = &o.throttle {
        check_throttle(&format!("{field}.throttle"), t)?;
    }
    if !(0..=MAX_PRIORITY).contains(&o.priority) {
        return Err(invalid(format!(
            "{field}.priority is {}: priorities run from 0 (the default, lowest) to {} (highest)",
            o.priority, MAX_PRIORITY
        )));
    }
    if o.description.chars().count() > 1000 {
        return Err(invalid(format!(
            "{field}.description is longer than 1000 characters"
        )));
    }
    let times = [
        ("retry_backoff_ms", o.retry_backoff_ms.unwrap_or(0)),
        ("retry_backoff_max_ms", o.retry_backoff_max_ms.unwrap_or(0)),
        ("timeout_ms", o.timeout_ms.unwrap_or(0)),
        ("countdown_ms", o.countdown_ms),
        ("eta_unix_ms", o.eta_unix_ms),
    ];
    for (name, ms) in times {
        check_ms(&format!("{field}.{name}"), ms)?;
    }
    Ok(())
}

/// A duration or unix time in milliseconds: at most [`MAX_MS`].
pub fn check_ms(field: &str, ms: u64) -> Result<(), Status> {
    if ms > MAX_MS {
        return Err(invalid(format!(
            "{field} is {ms}, over the limit of {MAX_MS} ms (about 8900 years)"
        )));
    }
    Ok(())
}

/// A signature: a task's, or a group's or nested executor's (whose
/// members are checked as signatures too, `depth` levels down).
fn signature(
    field: &str,
    s: pb::Signature,
    limits: &Limits,
    depth: usize,
) -> Result<Signature, Status> {
    if !s.members.is_empty() || s.executor.is_some() {
        return composite(field, s, limits, depth);
    }
    check_name(&format!("{field}.name"), &s.name)?;
    let args = json_text(&format!("{field}.args"), &s.args, "[]", "array")?;
    let kwargs = json_text(&format!("{field}.kwargs"), &s.kwargs, "{}", "object")?;
    let options = s.options.unwrap_or_default();
    check_options(&format!("{field}.options"), &options)?;
    Ok(Signature {
        name: s.name,
        args,
        kwargs,
        immutable: s.immutable,
        options: Some(options.into()),
        members: Vec::new(),
        executor: None,
    })
}

/// A group or a nested executor: a label, no arguments or options of its
/// own, and members (or an executor's lists) that are signatures.
fn composite(
    field: &str,
    s: pb::Signature,
    limits: &Limits,
    depth: usize,
) -> Result<Signature, Status> {
    let what = if s.executor.is_some() {
        "an executor"
    } else {
        "a group"
    };
    if !s.members.is_empty() && s.executor.is_some() {
        return Err(invalid(format!(
            "{field} has both members and an executor: a step is a group or an executor, not both"
        )));
    }
    if depth >= domain::MAX_NESTING {
        return Err(invalid(format!(
            "{field} nests groups and executors more than {} deep",
            domain::MAX_NESTING
        )));
    }
    let name = if s.name.is_empty() {
        if s.executor.is_some() {
            "executor"
        } else {
            "group"
        }
        .to_owned()
    } else {
        check_name(&format!("{field}.name"), &s.name)?;
        s.name
    };
    for (part, set) in [
        ("args", !matches!(s.args.trim(), "" | "[]")),
        ("kwargs", !matches!(s.kwargs.trim(), "" | "{}")),
        (
            "options",
            s.options
                .as_ref()
                .is_some_and(|o| *o != pb::Options::default()),
        ),
    ] {
        if set {
            return Err(invalid(format!(
                "{field}.{part} is set, but {field} is {what}: set them on its members' steps"
            )));
        }
    }
    if s.members.len() > domain::MAX_MEMBERS {
        return Err(invalid(format!(
            "{field}.members holds {} members, over the limit of {}",
            s.members.len(),
            domain::MAX_MEMBERS
        )));
    }
    let members = s
        .members
        .into_iter()
        .enumerate()
        .map(|(i, m)| signature(&format!("{field}.members[{i}]"), m, limits, depth + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let executor = match s.executor {
        None => None,
        Some(e) => {
            let field = format!("{field}.executor");
            if e.steps.is_empty() {
                return Err(invalid(format!(
                    "{field}.steps is empty: an executor needs at least one step"
                )));
            }
            check_step_count(
                &field,
                e.steps.len() + e.on_success.len() + e.on_failure.len(),
                limits,
            )?;
            Some(domain::Executor {
                steps: signatures(&format!("{field}.steps"), e.steps, limits, depth + 1)?,
                on_success: signatures(
                    &format!("{field}.on_success"),
                    e.on_success,
                    limits,
                    depth + 1,
                )?,
                on_failure: signatures(
                    &format!("{field}.on_failure"),
                    e.on_failure,
                    limits,
                    depth + 1,
                )?,
            })
        }
    };
    Ok(Signature {
        name,
        args: "[]".into(),
        kwargs: "{}".into(),
        immutable: s.immutable,
        options: None,
        members,
        executor,
    })
}

fn check_step_count(field: &str, total: usize, limits: &Limits) -> Result<(), Status> {
    if total > limits.max_steps {
        let of = if field.is_empty() {
            String::new()
        } else {
            format!("{field}: ")
        };
        return Err(invalid(format!(
            "{of}steps, on_success and on_failure hold {total} signatures, over the limit of {}",
            limits.max_steps
        )));
    }
    Ok(())
}

fn signatures(
    field: &str,
    sigs: Vec<pb::Signature>,
    limits: &Limits,
    depth: usize,
) -> Result<Vec<Signature>, Status> {
    sigs.into_iter()
        .enumerate()
        .map(|(i, s)| signature(&format!("{field}[{i}]"), s, limits, depth))
        .collect()
}

/// Validates a submission.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the first bad field.
pub fn chain_spec(req: pb::SubmitChainRequest, limits: &Limits) -> Result<ChainSpec, Status> {
    use prost::Message;
    let size = req.encoded_len();
    if size > limits.max_payload_bytes {
        return Err(invalid(format!(
            "request is {size} bytes, over the limit of {} bytes",
            limits.max_payload_bytes
        )));
    }
    if req.steps.is_empty() {
        return Err(invalid("steps is empty: a chain needs at least one step"));
    }
    let total = req.steps.len() + req.on_success.len() + req.on_failure.len();
    check_step_count("", total, limits)?;
    check_key("idempotency_key", &req.idempotency_key)?;
    check_key("unique_key", &req.unique_key)?;
    check_ms("deadline_unix_ms", req.deadline_unix_ms)?;
    let chain_id = if req.chain_id.is_empty() {
        None
    } else {
        Some(chain_id(&req.chain_id).map_err(|e| {
            invalid(format!(
                "{} (or leave it empty to let the broker pick one)",
                e.message()
            ))
        })?)
    };
    for (k, v) in &req.context {
        if k.is_empty() {
            return Err(invalid("context has an empty key"));
        }
        check_key(&format!("context[{k:?}] key"), k)?;
        let _ = v;
    }
    check_trace(&req.context)?;
    Ok(ChainSpec {
        steps: signatures("steps", req.steps, limits, 0)?,
        on_success: signatures("on_success", req.on_success, limits, 0)?,
        on_failure: signatures("on_failure", req.on_failure, limits, 0)?,
        heavy: req.heavy,
        context: req.context.into_iter().collect::<BTreeMap<_, _>>(),
        idempotency_key: req.idempotency_key,
        unique_key: req.unique_key,
        deadline_ms: req.deadline_unix_ms,
        owner: String::new(), // set by the caller's claim (auth)
        chain_id,
        parent: None,
        input: None,
        input_apart: false,
    })
}

/// Longest schedule name: its chains' idempotency keys add the fire time.
pub const MAX_SCHEDULE_NAME_LEN: usize = 150;

/// Most missed fire times a schedule may catch up on.
pub const MAX_CATCH_UP: u32 = 1000;

/// A schedule name: 1 to 150 characters of `[A-Za-z0-9_.:-]`.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `field`.
pub fn check_schedule_name(field: &str, name: &str) -> Result<(), Status> {
    check_word(field, name, MAX_SCHEDULE_NAME_LEN, "a schedule name")
}

/// Validates a schedule: its name, its timing and its chain (as
/// SubmitChain would).
///
/// # Errors
/// `INVALID_ARGUMENT` naming the first bad field.
pub fn schedule(s: pb::Schedule, limits: &Limits) -> Result<ScheduleRecord, Status> {
    check_schedule_name("schedule.name", &s.name)?;
    crate::scheduler::schedules::Timing::parse(&s.cron, s.every_ms, &s.timezone, 0)
        .map_err(|e| invalid(format!("schedule: {e}")))?;
    check_ms("schedule.deadline_ms", s.deadline_ms)?;
    if s.catch_up > MAX_CATCH_UP {
        return Err(invalid(format!(
            "schedule.catch_up is {}, over the limit of {MAX_CATCH_UP}",
            s.catch_up
        )));
    }
    let chain = s
        .chain
        .ok_or_else(|| invalid("schedule.chain is missing: what should each fire submit?"))?;
    for (field, set) in [
        ("idempotency_key", !chain.idempotency_key.is_empty()),
        ("chain_id", !chain.chain_id.is_empty()),
        ("deadline_unix_ms", chain.deadline_unix_ms != 0),
    ] {
        if set {
            return Err(invalid(format!(
                "schedule.chain.{field} is set: each fire sets its own (give a relative \
                 deadline in schedule.deadline_ms)"
            )));
        }
    }
    let spec = chain_spec(chain, limits)
        .map_err(|e| Status::new(e.code(), format!("schedule.chain: {}", e.message())))?;
    Ok(ScheduleRecord {
        name: s.name,
        cron: s.cron.trim().to_owned(),
        timezone: s.timezone,
        every_ms: s.every_ms,
        steps: spec.steps,
        on_success: spec.on_success,
        on_failure: spec.on_failure,
        heavy: spec.heavy,
        context: spec.context,
        unique_key: spec.unique_key,
        deadline_ms: s.deadline_ms,
        catch_up: s.catch_up,
        paused: s.paused,
        ..ScheduleRecord::default()
    })
}

/// A schedule as `ListSchedules` shows it.
pub fn schedule_view(v: crate::scheduler::ScheduleView) -> pb::ScheduleInfo {
    let r = v.record;
    let signatures = |sigs: Vec<Signature>| sigs.into_iter().map(pb_signature).collect();
    pb::ScheduleInfo {
        next_fires_unix_ms: v.next_fires,
        last_fire_unix_ms: if r.last_fire_ms == r.created_ms {
            0
        } else {
            r.last_fire_ms
        },
        last_chain_id: r.last_chain_id,
        created_unix_ms: r.created_ms,
        schedule: Some(pb::Schedule {
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            every_ms: r.every_ms,
            chain: Some(pb::SubmitChainRequest {
                steps: signatures(r.steps),
                on_success: signatures(r.on_success),
                on_failure: signatures(r.on_failure),
                heavy: r.heavy,
                context: r.context.into_iter().collect(),
                unique_key: r.unique_key,
                ..Default::default()
            }),
            deadline_ms: r.deadline_ms,
            catch_up: r.catch_up,
            paused: r.paused,
        }),
    }
}

/// Most chains in one SubmitChains call.
pub const MAX_BATCH: usize = 1000;

/// Validates a batch submission: every chain as [`chain_spec`] checks one.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the first bad chain by its index, or an empty
/// or oversized batch.
pub fn chain_specs(
    req: pb::SubmitChainsRequest,
    limits: &Limits,
) -> Result<Vec<ChainSpec>, Status> {
    if req.chains.is_empty() {
        return Err(invalid("chains is empty: a batch needs at least one chain"));
    }
    if req.chains.len() > MAX_BATCH {
        return Err(invalid(format!(
            "chains holds {} chains, over the limit of {MAX_BATCH} per call",
            req.chains.len()
        )));
    }
    req.chains
        .into_iter()
        .enumerate()
        .map(|(i, chain)| {
            chain_spec(chain, limits)
                .map_err(|e| Status::new(e.code(), format!("chains[{i}]: {}", e.message())))
        })
        .collect()
}

/// How a UUID may be spelled, for the errors that refuse one.
const UUID_SPELLING: &str = "36 characters like 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b; \
    upper case, braces and the 32 digits without hyphens are accepted";

/// A chain id from a request. A submission's id is stored in one
/// spelling (lower-case, hyphenated: [`ChainId`]'s), and every call that
/// names a chain (GetChain, WatchChain, CancelChain, RequeueChain) reads it
/// as a `ChainId` too: `0190ABCD-...`, `{0190abcd-...}` and the 32 hex
/// digits without hyphens all name the same chain.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `chain_id` when it is not a UUID.
pub fn chain_id(id: &str) -> Result<ChainId, Status> {
    ChainId::parse(id).map_err(|_| invalid(format!("chain_id is not a UUID ({UUID_SPELLING})")))
}

/// A task id from a request (see [`chain_id`]).
///
/// # Errors
/// `INVALID_ARGUMENT` naming `field` when it is not a UUID.
pub fn task_id(field: &str, id: &str) -> Result<TaskId, Status> {
    TaskId::parse(id).map_err(|_| invalid(format!("{field} is not a UUID ({UUID_SPELLING})")))
}

/// A run named by a worker. Every task id the broker hands out is a UUID,
/// so one that is not names no run of this broker: refused as malformed.
pub fn task_ref(t: Option<pb::TaskRef>) -> Result<domain::TaskRef, Status> {
    let t = t.ok_or_else(|| invalid("task is missing"))?;
    Ok(domain::TaskRef {
        task_id: task_id("task.task_id", &t.task_id)?,
        attempt: t.attempt,
    })
}

pub fn pb_task_ref(t: domain::TaskRef) -> pb::TaskRef {
    pb::TaskRef {
        task_id: t.task_id.to_string(),
        attempt: t.attempt,
    }
}

// ---------------------------------------------------------------------------
// Domain → protocol views
// ---------------------------------------------------------------------------

fn pb_signature(s: Signature) -> pb::Signature {
    let list = |sigs: Vec<Signature>| sigs.into_iter().map(pb_signature).collect();
    pb::Signature {
        name: s.name,
        args: s.args,
        kwargs: s.kwargs,
        immutable: s.immutable,
        options: s.options.map(Into::into),
        members: list(s.members),
        executor: s.executor.map(|e| pb::Executor {
            steps: list(e.steps),
            on_success: list(e.on_success),
            on_failure: list(e.on_failure),
        }),
    }
}

fn step_view(s: &StepRecord, phase: Phase, index: usize) -> pb::Step {
    let sig = s.signature();
    pb::Step {
        task_id: s.task_id.clone(),
        phase: phase as i32,
        index: u32::try_from(index).unwrap_or(u32::MAX),
        name: sig.name.clone(),
        state: s.state() as i32,
        attempts: s.attempts,
        polls: s.polls,
        retries: s.retries,
        queue: s.queue.clone(),
        result: s.result.clone(),
        result_omitted: s.result_apart && s.result.is_empty(),
        result_bytes: s.result_bytes,
        failure: s.failure.clone().map(Into::into),
        worker: s.worker.clone(),
        ready_unix_ms: s.ready_ms,
        started_unix_ms: s.started_ms,
        finished_unix_ms: s.finished_ms,
        description: sig
            .options
            .as_ref()
            .map(|o| o.description.clone())
            .unwrap_or_default(),
        unserved_queue: String::new(), // GetChain fills it in
        members: s.children,
        members_succeeded: s.members_done,
        child_chain_ids: (0..s.spawned)
            .map(|member| domain::ChainId::child(s.task(), member).to_string())
            .collect(),
    }
}

pub fn chain_view(c: &ChainRecord) -> pb::Chain {
    let steps = |phase: Phase| {
        c.steps_of(phase)
            .iter()
            .enumerate()
            .map(|(i, s)| step_view(s, phase, i))
            .collect()
    };
    pb::Chain {
        chain_id: c.id.clone(),
        state: c.state,
        steps: steps(Phase::Main),
        on_success: steps(Phase::OnSuccess),
        on_failure: steps(Phase::OnFailure),
        context: c.context.clone().into_iter().collect(),
        heavy: c.heavy,
        created_unix_ms: c.created_ms,
        finished_unix_ms: c.finished_ms,
        deadline_unix_ms: c.deadline_ms,
        result: c.result.clone(),
        failure: c.failure.clone().map(Into::into),
        cancel_reason: c.cancel_reason.clone(),
        requeued_from: c.requeued_from.clone(),
        requeued_as: c.requeued_as.clone(),
        parent_chain_id: c.parent_chain_id.clone(),
        member_index: c.member_index,
        history: crate::history::view(c).iter().map(history_entry).collect(),
        history_dropped: c.history_dropped,
    }
}

fn history_entry(e: &domain::HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        kind: domain::EventKind::try_from(e.kind)
            .unwrap_or(domain::EventKind::Unspecified)
            .as_str()
            .to_owned(),
        at_unix_ms: e.at_ms,
        phase: e.phase,
        step_index: e.index,
        attempt: e.attempt,
        worker: e.worker.clone(),
        detail: e.detail.clone(),
        next_unix_ms: e.next_ms,
        repeats: e.repeats,
    }
}

/// [`chain_view`] with `unserved_queue` set on the steps that wait for a
/// task name no connected worker runs in that queue (GetChain).
pub fn inspected_view(c: &ChainRecord, unserved: Vec<(StepAt, String)>) -> pb::Chain {
    let mut view = chain_view(c);
    for (at, queue) in unserved {
        let steps = match at.phase {
            Phase::Main => &mut view.steps,
            Phase::OnSuccess => &mut view.on_success,
            Phase::OnFailure => &mut view.on_failure,
            Phase::Unspecified => continue, // no step is in no phase
        };
        if let Some(step) = steps.get_mut(at.index) {
            step.unserved_queue = queue;
        }
    }
    view
}

pub fn event_view(e: &domain::ChainEvent) -> pb::ChainEvent {
    pb::ChainEvent {
        kind: e.kind.to_owned(),
        phase: e.at.map_or(0, |a| a.phase as i32),
        step_index: e
            .at
            .map_or(0, |a| u32::try_from(a.index).unwrap_or(u32::MAX)),
        chain: Some(chain_view(&e.chain)),
    }
}

// ---------------------------------------------------------------------------
// The store's value types and the protocol's (see `store::records`): the
// same fields, so each way is a copy.
// ---------------------------------------------------------------------------

impl From<pb::Rate> for domain::RateRecord {
    fn from(r: pb::Rate) -> Self {
        domain::RateRecord {
            count: r.count,
            period_ms: r.period_ms,
            burst: r.burst,
        }
    }
}

impl From<domain::RateRecord> for pb::Rate {
    fn from(r: domain::RateRecord) -> Self {
        pb::Rate {
            count: r.count,
            period_ms: r.period_ms,
            burst: r.burst,
        }
    }
}

impl From<pb::Throttle> for domain::Throttle {
    fn from(t: pb::Throttle) -> Self {
        domain::Throttle {
            concurrency: t.concurrency,
            key: t.key,
            shared: t.shared,
            scope: t.scope,
            rate: t.rate.map(domain::RateRecord::from),
        }
    }
}

impl From<domain::Throttle> for pb::Throttle {
    fn from(t: domain::Throttle) -> Self {
        pb::Throttle {
            concurrency: t.concurrency,
            key: t.key,
            shared: t.shared,
            scope: t.scope,
            rate: t.rate.map(pb::Rate::from),
        }
    }
}

impl From<pb::Options> for domain::Options {
    fn from(o: pb::Options) -> Self {
        domain::Options {
            queue: o.queue,
            heavy: o.heavy,
            throttle: o.throttle.map(Into::into),
            max_retries: o.max_retries,
            retry_backoff_ms: o.retry_backoff_ms,
            retry_backoff_max_ms: o.retry_backoff_max_ms,
            max_polls: o.max_polls,
            timeout_ms: o.timeout_ms,
            countdown_ms: o.countdown_ms,
            eta_unix_ms: o.eta_unix_ms,
            priority: o.priority,
            description: o.description,
        }
    }
}

impl From<domain::Options> for pb::Options {
    fn from(o: domain::Options) -> Self {
        pb::Options {
            queue: o.queue,
            heavy: o.heavy,
            throttle: o.throttle.map(Into::into),
            max_retries: o.max_retries,
            retry_backoff_ms: o.retry_backoff_ms,
            retry_backoff_max_ms: o.retry_backoff_max_ms,
            max_polls: o.max_polls,
            timeout_ms: o.timeout_ms,
            countdown_ms: o.countdown_ms,
            eta_unix_ms: o.eta_unix_ms,
            priority: o.priority,
            description: o.description,
        }
    }
}

impl From<domain::FailureRecord> for pb::FailureRecord {
    fn from(f: domain::FailureRecord) -> Self {
        pb::FailureRecord {
            chain_id: f.chain_id,
            phase: f.phase,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str) -> pb::Signature {
        pb::Signature {
            name: name.into(),
            ..Default::default()
        }
    }

    fn req(steps: Vec<pb::Signature>) -> pb::SubmitChainRequest {
        pb::SubmitChainRequest {
            steps,
            ..Default::default()
        }
    }

    fn err(r: pb::SubmitChainRequest) -> String {
        let e = chain_spec(r, &Limits::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        e.message().to_owned()
    }

    #[test]
    fn names_the_bad_field() {
        assert!(err(req(vec![])).contains("steps is empty"));
        assert!(err(req(vec![sig("a"), sig("")])).contains("steps[1].name is empty"));
        assert!(err(req(vec![sig(&"x".repeat(201))])).contains("steps[0].name is longer"));
        let mut bad = sig("a");
        bad.args = "{not json".into();
        assert!(err(req(vec![bad])).contains("steps[0].args is not valid JSON"));
        let mut obj = sig("a");
        obj.args = "{}".into();
        assert!(err(req(vec![obj])).contains("steps[0].args must be a JSON array"));
        let mut q = sig("a");
        q.options = Some(pb::Options {
            queue: "bad queue!".into(),
            ..Default::default()
        });
        assert!(err(req(vec![q])).contains("steps[0].options.queue"));
        let mut scope = sig("a");
        scope.options = Some(pb::Options {
            throttle: Some(pb::Throttle {
                scope: 9,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(
            err(req(vec![scope])).contains("steps[0].options.throttle.scope has unknown value 9")
        );
        let mut r = req(vec![sig("a")]);
        r.on_failure = vec![sig("")];
        assert!(err(r).contains("on_failure[0].name"));
    }

    #[test]
    fn payload_limit_applies_to_the_whole_request() {
        let mut big = sig("a");
        big.args = format!("[\"{}\"]", "x".repeat(2 * 1024 * 1024));
        assert!(err(req(vec![big])).contains("over the limit"));
    }

    #[test]
    fn empty_json_means_empty_collections() {
        let spec = chain_spec(req(vec![sig("a")]), &Limits::default()).unwrap();
        assert_eq!(spec.steps[0].args, "[]");
        assert_eq!(spec.steps[0].kwargs, "{}");
    }
}

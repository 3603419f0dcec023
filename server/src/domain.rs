//! The broker's own vocabulary: chains, steps, failure records, throttle
//! identities. No tonic, no sled.
//!
//! Records here are what the store persists. They derive `prost::Message` so
//! that adding a field later is a schema evolution, not a migration (every
//! field has a fixed tag; never reuse one). The value types they hold
//! (`Options`, `Throttle`, `FailureRecord` and the state enums) are the
//! store's own (`store::records`), apart from the protocol's: the gRPC edge
//! (`api::convert`) maps between the two.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::history::{EventKind, HistoryEntry};
pub use crate::ids::{ChainId, NotAnId, TaskId, WorkerId};
pub use crate::step::{RESULT_APART_AFTER, Run, StepRecord, StepStatus};
pub use crate::store::records::{
    ChainState, FailureRecord, Options, Phase, RateRecord, StepState, Throttle, ThrottleScope,
};

/// Milliseconds since the unix epoch: how every persisted time is kept.
pub type UnixMs = u64;

/// Unix milliseconds that never step: the wall clock read once, when this
/// is first called, advanced since by the monotonic clock. Timers measured
/// on it (countdowns, deadlines, time limits, leases) neither fire early
/// nor wait longer when the system clock is set forward or back; a restart
/// reads the wall clock again.
pub fn now_ms() -> UnixMs {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    // In nanoseconds until the sum, so that the result rounds as the wall
    // clock's own milliseconds would (CLOCK_MONOTONIC runs at the rate NTP
    // sets for the wall clock; only steps part them).
    static ANCHOR: OnceLock<(Instant, std::time::Duration)> = OnceLock::new();
    let (at, unix) = ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (Instant::now(), unix)
    });
    u64::try_from((*unix + at.elapsed()).as_millis()).unwrap_or(u64::MAX)
}

/// How the scheduler's hash maps hash: seeded at random in the broker (a
/// client chooses many of the keys), with fixed keys in tests, so that the
/// simulator's runs, which iterate these maps, replay exactly from a seed.
#[cfg(not(test))]
pub type Hashing = std::hash::RandomState;
#[cfg(test)]
pub type Hashing = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The scheduler's hash map (see [`Hashing`]).
pub type Map<K, V> = std::collections::HashMap<K, V, Hashing>;

/// The scheduler's hash set (see [`Hashing`]).
pub type Set<K> = std::collections::HashSet<K, Hashing>;

/// Where the scheduler's new ids (chains, tasks, worker streams) come from:
/// time-ordered UUIDs (v7) in the broker, a sequence drawn from a
/// seed in the simulator, so that a simulated run replays exactly.
#[derive(Clone, Debug)]
pub enum Ids {
    Time,
    /// The state of a splitmix64 sequence.
    Seeded(u64),
}

impl Ids {
    pub fn chain(&mut self) -> ChainId {
        ChainId::from_uuid(self.fresh())
    }

    pub fn task(&mut self) -> TaskId {
        TaskId::from_uuid(self.fresh())
    }

    pub fn worker(&mut self) -> WorkerId {
        WorkerId::from_uuid(self.fresh())
    }

    /// The next id.
    fn fresh(&mut self) -> uuid::Uuid {
        match self {
            Ids::Time => uuid::Uuid::now_v7(),
            Ids::Seeded(state) => {
                let mut bytes = [0u8; 16];
                for half in bytes.chunks_mut(8) {
                    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    half.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
                }
                uuid::Builder::from_random_bytes(bytes).into_uuid()
            }
        }
    }
}

/// One step as submitted: a task name, JSON arguments and options.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Signature {
    #[prost(string, tag = "1")]
    pub name: String,
    /// A JSON array (validated at the edge; never empty text).
    #[prost(string, tag = "2")]
    pub args: String,
    /// A JSON object (validated at the edge; never empty text).
    #[prost(string, tag = "3")]
    pub kwargs: String,
    #[prost(bool, tag = "4")]
    pub immutable: bool,
    #[prost(message, optional, tag = "5")]
    pub options: Option<Options>,
    /// Set when the step is a group: its members (see [`StepKind`]).
    #[prost(message, repeated, tag = "6")]
    pub members: Vec<Signature>,
    /// Set when the step is a nested executor.
    #[prost(message, optional, tag = "7")]
    pub executor: Option<Executor>,
}

/// A chain with its own callbacks, run as one step of another chain (a
/// nested executor), or as one member of a group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Executor {
    #[prost(message, repeated, tag = "1")]
    pub steps: Vec<Signature>,
    #[prost(message, repeated, tag = "2")]
    pub on_success: Vec<Signature>,
    #[prost(message, repeated, tag = "3")]
    pub on_failure: Vec<Signature>,
}

/// What a step runs: a task on a worker, or child chains (see the
/// scheduler's `fanout`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind<'a> {
    Task,
    /// Its members run side by side, each as a child chain; the step's
    /// result is the list of theirs.
    Group(&'a [Signature]),
    /// One child chain with its own callbacks; the step's result is the
    /// child's.
    Executor(&'a Executor),
}

/// Most members of one group.
pub const MAX_MEMBERS: usize = 100_000;

/// How deep groups and nested executors may nest.
pub const MAX_NESTING: usize = 8;

impl Signature {
    pub fn kind(&self) -> StepKind<'_> {
        if let Some(executor) = &self.executor {
            StepKind::Executor(executor)
        } else if !self.members.is_empty() {
            StepKind::Group(&self.members)
        } else {
            StepKind::Task
        }
    }

    /// How many child chains the step has: 0 for a task.
    pub fn child_count(&self) -> u32 {
        match self.kind() {
            StepKind::Task => 0,
            StepKind::Group(members) => u32::try_from(members.len()).unwrap_or(u32::MAX),
            StepKind::Executor(_) => 1,
        }
    }
}

/// The parent of a child chain: whose step it is part of, and which
/// member it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub chain_id: ChainId,
    /// The task id of the parent's group or executor step.
    pub task_id: TaskId,
    pub member: u32,
}

/// A validated submission, before it becomes a [`ChainRecord`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainSpec {
    pub steps: Vec<Signature>,
    pub on_success: Vec<Signature>,
    pub on_failure: Vec<Signature>,
    pub heavy: bool,
    pub context: BTreeMap<String, String>,
    pub idempotency_key: String,
    pub unique_key: String,
    pub deadline_ms: UnixMs,
    /// Name of the token that submitted the chain; empty when
    /// authentication is off (see `auth::Caller::claim`).
    pub owner: String,
    /// The id the client chose (a canonical UUID), or None for one the
    /// broker picks.
    pub chain_id: Option<ChainId>,
    /// Set for a child chain (a group's member, a nested executor).
    pub parent: Option<Parent>,
    /// JSON text the first step receives as the carried value (a mutable
    /// group or executor hands its previous step's result to its children).
    pub input: Option<String>,
    /// The carried value is stored once under the parent instead (see the
    /// scheduler's `fanout`): `input` is then empty.
    pub input_apart: bool,
}

/// A periodic schedule as the store keeps it: when it fires (see
/// `scheduler::schedules`), the chain each fire submits, and the last fire
/// time it handled.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScheduleRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub cron: String,
    #[prost(string, tag = "3")]
    pub timezone: String,
    #[prost(uint64, tag = "4")]
    pub every_ms: u64,
    #[prost(message, repeated, tag = "5")]
    pub steps: Vec<Signature>,
    #[prost(message, repeated, tag = "6")]
    pub on_success: Vec<Signature>,
    #[prost(message, repeated, tag = "7")]
    pub on_failure: Vec<Signature>,
    #[prost(bool, tag = "8")]
    pub heavy: bool,
    #[prost(btree_map = "string, string", tag = "9")]
    pub context: BTreeMap<String, String>,
    #[prost(string, tag = "10")]
    pub unique_key: String,
    /// Deadline of each chain, after it is submitted; 0 for none.
    #[prost(uint64, tag = "11")]
    pub deadline_ms: u64,
    #[prost(uint32, tag = "12")]
    pub catch_up: u32,
    #[prost(bool, tag = "13")]
    pub paused: bool,
    #[prost(uint64, tag = "14")]
    pub created_ms: UnixMs,
    /// The last fire time handled, fired or skipped (`created_ms` before
    /// the first).
    #[prost(uint64, tag = "15")]
    pub last_fire_ms: UnixMs,
    #[prost(string, tag = "16")]
    pub last_chain_id: String,
    /// The token that added it: its chains are that token's.
    #[prost(string, tag = "17")]
    pub owner: String,
}

impl ScheduleRecord {
    /// The idempotency key of the chain of fire time `fire_ms` (scoped to
    /// the schedule's owner as a submission's key is).
    pub fn key_of(&self, fire_ms: UnixMs) -> String {
        if self.owner.is_empty() {
            format!("schedule:{}:{fire_ms}", self.name)
        } else {
            format!("{}:schedule:{}:{fire_ms}", self.owner, self.name)
        }
    }

    /// The chain fire time `fire_ms` submits at `now`. Its context names
    /// the schedule (`baton.schedule`) and the fire time
    /// (`baton.fire_unix_ms`), so a body knows which time it runs for.
    pub fn chain_spec(&self, fire_ms: UnixMs, now: UnixMs) -> ChainSpec {
        let mut context = self.context.clone();
        context.insert("baton.schedule".into(), self.name.clone());
        context.insert("baton.fire_unix_ms".into(), fire_ms.to_string());
        ChainSpec {
            steps: self.steps.clone(),
            on_success: self.on_success.clone(),
            on_failure: self.on_failure.clone(),
            heavy: self.heavy,
            context,
            idempotency_key: self.key_of(fire_ms),
            unique_key: self.unique_key.clone(),
            deadline_ms: if self.deadline_ms == 0 {
                0
            } else {
                now.saturating_add(self.deadline_ms)
            },
            owner: self.owner.clone(),
            chain_id: None,
            parent: None,
            input: None,
            input_apart: false,
        }
    }
}

/// A throttle identity: (task name, key), or a shared key alone when
/// `task_name` is empty.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Identity {
    #[prost(string, tag = "1")]
    pub task_name: String,
    #[prost(string, tag = "2")]
    pub key: String,
}

impl Identity {
    /// The identity a throttle declaration names for a task.
    pub fn of(task_name: &str, throttle: &Throttle) -> Self {
        let key = if throttle.key.is_empty() {
            "*".to_owned()
        } else {
            throttle.key.clone()
        };
        let task_name = if throttle.shared {
            String::new()
        } else {
            task_name.to_owned()
        };
        Identity { task_name, key }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.task_name.is_empty() {
            write!(f, "key {}", self.key)
        } else {
            write!(f, "{}[{}]", self.task_name, self.key)
        }
    }
}

/// An in-body throttle slot held by a running attempt.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InBodyHold {
    #[prost(message, optional, tag = "1")]
    pub identity: Option<Identity>,
    #[prost(uint64, tag = "2")]
    pub request_id: u64,
}

/// The persisted state of one chain: its spec, its progress and the slots
/// it holds. Every transition rewrites the whole record in one batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChainRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(enumeration = "ChainState", tag = "2")]
    pub state: i32,
    #[prost(message, repeated, tag = "3")]
    pub steps: Vec<StepRecord>,
    #[prost(message, repeated, tag = "4")]
    pub on_success: Vec<StepRecord>,
    #[prost(message, repeated, tag = "5")]
    pub on_failure: Vec<StepRecord>,
    #[prost(btree_map = "string, string", tag = "6")]
    pub context: BTreeMap<String, String>,
    #[prost(bool, tag = "7")]
    pub heavy: bool,
    #[prost(uint64, tag = "8")]
    pub created_ms: UnixMs,
    #[prost(uint64, tag = "9")]
    pub finished_ms: UnixMs,
    #[prost(uint64, tag = "10")]
    pub deadline_ms: UnixMs,
    /// The phase whose step `cursor` is current.
    #[prost(enumeration = "Phase", tag = "11")]
    pub phase: i32,
    #[prost(uint32, tag = "12")]
    pub cursor: u32,
    /// The last main step's result, once all main steps succeeded.
    #[prost(string, tag = "13")]
    pub result: String,
    /// What made the chain fail (fed to on_failure).
    #[prost(message, optional, tag = "14")]
    pub failure: Option<FailureRecord>,
    #[prost(string, tag = "15")]
    pub cancel_reason: String,
    #[prost(string, tag = "16")]
    pub idempotency_key: String,
    #[prost(string, tag = "17")]
    pub unique_key: String,
    /// Chain-scoped throttle slots this chain holds until it ends.
    #[prost(message, repeated, tag = "18")]
    pub chain_holds: Vec<Identity>,
    /// Name of the token that submitted the chain; empty when
    /// authentication was off. Clients see only their own chains.
    #[prost(string, tag = "19")]
    pub owner: String,
    /// `result` is the last main step's, stored apart with that step (see
    /// [`StepRecord::result_apart`]); it is empty here.
    #[prost(bool, tag = "22")]
    pub result_apart: bool,
    /// The failed chain this one was requeued from (`Admin.RequeueChain`).
    #[prost(string, tag = "20")]
    pub requeued_from: String,
    /// Set on a failed chain once it was requeued: the new chain's id. A
    /// requeued chain leaves the store's dead index.
    #[prost(string, tag = "21")]
    pub requeued_as: String,
    /// A child chain (see [`Parent`]): its parent chain's id, the task id
    /// of the parent's step, and its member index there. Empty otherwise.
    #[prost(string, tag = "23")]
    pub parent_chain_id: String,
    #[prost(string, tag = "24")]
    pub parent_task_id: String,
    #[prost(uint32, tag = "25")]
    pub member_index: u32,
    /// Set on a child chain: what its first step receives as the carried
    /// value, as JSON text.
    #[prost(string, optional, tag = "26")]
    pub input: Option<String>,
    /// Set on a child chain whose carried value is large: it is stored
    /// once under its parent, not in every child's record (see the
    /// scheduler's `fanout`).
    #[prost(bool, tag = "27")]
    pub input_apart: bool,
    /// What happened to the chain, oldest first, bounded (see
    /// [`crate::history`]).
    #[prost(message, repeated, tag = "28")]
    pub history: Vec<HistoryEntry>,
    /// Entries left out of `history` to keep it bounded.
    #[prost(uint32, tag = "29")]
    pub history_dropped: u32,
}

/// Where a cold chain waits (see `Core::cool`): what recovery needs to
/// queue it again without reading its record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ColdSummary {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(int32, tag = "3")]
    pub priority: i32,
    #[prost(uint64, tag = "4")]
    pub ready_ms: UnixMs,
}

/// Where a step sits inside its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct StepAt {
    pub phase: Phase,
    pub index: usize,
}

impl ChainRecord {
    /// Its id (see [`StepRecord::task`]).
    pub fn chain_id(&self) -> ChainId {
        ChainId::parse(&self.id).unwrap_or_default()
    }

    /// Whether every id in the record reads as a typed id: a record read
    /// from the store that fails this is corrupt.
    ///
    /// # Errors
    /// The first id that is not a UUID.
    pub fn check_ids(&self) -> Result<(), NotAnId> {
        ChainId::parse(&self.id)?;
        for (_, step) in self.all_steps() {
            TaskId::parse(&step.task_id)?;
        }
        Ok(())
    }

    /// Builds the record of a new chain; every step gets its task id now.
    pub fn new(id: ChainId, spec: ChainSpec, now: UnixMs) -> Self {
        Self::with_ids(id, spec, now, &mut Ids::Time)
    }

    /// [`ChainRecord::new`] with task ids drawn from `ids`.
    pub fn with_ids(id: ChainId, spec: ChainSpec, now: UnixMs, ids: &mut Ids) -> Self {
        let mut steps = |sigs: Vec<Signature>| {
            sigs.into_iter()
                .map(|sig| StepRecord {
                    task_id: ids.task().to_string(),
                    signature: Some(sig),
                    status: StepStatus::Pending,
                    ..Default::default()
                })
                .collect()
        };
        ChainRecord {
            id: id.to_string(),
            state: ChainState::Running as i32,
            steps: steps(spec.steps),
            on_success: steps(spec.on_success),
            on_failure: steps(spec.on_failure),
            context: spec.context,
            heavy: spec.heavy,
            created_ms: now,
            deadline_ms: spec.deadline_ms,
            phase: Phase::Main as i32,
            cursor: 0,
            idempotency_key: spec.idempotency_key,
            unique_key: spec.unique_key,
            owner: spec.owner,
            parent_chain_id: spec
                .parent
                .as_ref()
                .map(|p| p.chain_id.to_string())
                .unwrap_or_default(),
            parent_task_id: spec
                .parent
                .as_ref()
                .map(|p| p.task_id.to_string())
                .unwrap_or_default(),
            member_index: spec.parent.as_ref().map_or(0, |p| p.member),
            input: spec.input,
            input_apart: spec.input_apart,
            ..Default::default()
        }
    }

    /// Its parent, if it is a child chain.
    pub fn parent(&self) -> Option<Parent> {
        if self.parent_chain_id.is_empty() {
            return None;
        }
        Some(Parent {
            chain_id: ChainId::parse(&self.parent_chain_id).ok()?,
            task_id: TaskId::parse(&self.parent_task_id).ok()?,
            member: self.member_index,
        })
    }

    pub fn is_ended(&self) -> bool {
        self.state() != ChainState::Running
    }

    pub fn steps_of(&self, phase: Phase) -> &[StepRecord] {
        match phase {
            Phase::OnSuccess => &self.on_success,
            Phase::OnFailure => &self.on_failure,
            _ => &self.steps,
        }
    }

    pub fn steps_of_mut(&mut self, phase: Phase) -> &mut Vec<StepRecord> {
        match phase {
            Phase::OnSuccess => &mut self.on_success,
            Phase::OnFailure => &mut self.on_failure,
            _ => &mut self.steps,
        }
    }

    pub fn step(&self, at: StepAt) -> &StepRecord {
        &self.steps_of(at.phase)[at.index]
    }

    pub fn step_mut(&mut self, at: StepAt) -> &mut StepRecord {
        &mut self.steps_of_mut(at.phase)[at.index]
    }

    /// The step whose turn it is while the chain runs.
    pub fn current(&self) -> StepAt {
        StepAt {
            phase: self.phase(),
            index: usize::try_from(self.cursor).unwrap_or(usize::MAX),
        }
    }

    /// Every step with its position, in order: main, on_success, on_failure.
    pub fn all_steps(&self) -> impl Iterator<Item = (StepAt, &StepRecord)> {
        [Phase::Main, Phase::OnSuccess, Phase::OnFailure]
            .into_iter()
            .flat_map(move |phase| {
                self.steps_of(phase)
                    .iter()
                    .enumerate()
                    .map(move |(index, s)| (StepAt { phase, index }, s))
            })
    }

    /// The steps whose results the running chain may still hand on or
    /// show: the one before the current step of its phase (carried to
    /// it), and the last main step (the chain's result) once it succeeded.
    pub fn results_in_use(&self) -> impl Iterator<Item = &StepRecord> {
        let at = self.current();
        let carried = at
            .index
            .checked_sub(1)
            .and_then(|i| self.steps_of(at.phase).get(i));
        let last_main = self
            .steps
            .last()
            .filter(|s| s.state() == StepState::Succeeded);
        carried
            .into_iter()
            .chain(last_main.filter(|l| carried.is_none_or(|c| c.task_id != l.task_id)))
    }

    /// The value a mutable (`.s`) step receives as its first argument: the
    /// previous step's result, the last main result for on_success, or the
    /// failure record for on_failure. `apart` gives the results stored
    /// apart (see [`StepRecord::result_apart`]).
    pub fn carried_value(
        &self,
        at: StepAt,
        apart: impl Fn(&StepRecord) -> Option<Arc<str>>,
    ) -> Option<serde_json::Value> {
        let parse = |step: &StepRecord| {
            let kept = step.result_apart.then(|| apart(step)).flatten();
            let text = kept.as_deref().unwrap_or(&step.result);
            if text.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
            }
        };
        if at.index > 0 {
            return Some(parse(&self.steps_of(at.phase)[at.index - 1]));
        }
        match at.phase {
            Phase::Main => self
                .input
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap_or(serde_json::Value::Null)),
            Phase::OnSuccess if self.result_apart => self.steps.last().map(parse),
            Phase::OnSuccess => Some(serde_json::from_str(&self.result).unwrap_or_default()),
            Phase::OnFailure => self.failure.as_ref().map(failure_json),
            _ => None,
        }
    }
}

/// Longest message or traceback kept in the failure of a step that later
/// succeeded (see [`shorten_superseded`]).
pub const SUPERSEDED_FAILURE_BYTES: usize = 512;

/// Shortens the failure record a step keeps once a retry of it succeeded:
/// the start of its message and the end of its traceback (where the error
/// was raised). A long chain of flaky steps would otherwise keep a full
/// traceback for every step in its record, which is written again at
/// every step and must fit one GetChain answer.
pub fn shorten_superseded(failure: &mut FailureRecord) {
    let limit = SUPERSEDED_FAILURE_BYTES;
    if failure.message.len() > limit {
        let mut end = limit;
        while !failure.message.is_char_boundary(end) {
            end -= 1;
        }
        failure.message.truncate(end);
        failure.message.push_str(" [shortened]");
    }
    let len = failure.traceback.len();
    if len > limit {
        let mut start = len - limit;
        while !failure.traceback.is_char_boundary(start) {
            start += 1;
        }
        failure.traceback = format!(
            "[{start} bytes shortened: the step succeeded later]\n{}",
            &failure.traceback[start..]
        );
    }
}

/// The failure record as the JSON object a mutable on_failure step receives.
pub fn failure_json(f: &FailureRecord) -> serde_json::Value {
    serde_json::json!({
        "chain_id": f.chain_id,
        "phase": phase_name(f.phase()),
        "step_index": f.step_index,
        "task_name": f.task_name,
        "task_id": f.task_id,
        "attempt": f.attempt,
        "error_type": f.error_type,
        "message": f.message,
        "traceback": f.traceback,
    })
}

pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::OnSuccess => "on_success",
        Phase::OnFailure => "on_failure",
        _ => "main",
    }
}

/// A task's options with every default applied: the signature's own value,
/// else the task name's registered default, else the broker's.
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    pub queue: String,
    pub throttle: Option<Throttle>,
    pub max_retries: u32,
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    pub max_polls: u32,
    pub timeout_ms: u64,
    pub countdown_ms: u64,
    pub eta_ms: UnixMs,
    pub priority: i32,
}

/// Priorities run from 0 (the default, lowest) to this (highest); the
/// API refuses others.
pub const MAX_PRIORITY: i32 = 9;

pub const GENERAL_QUEUE: &str = "general";
pub const HEAVY_QUEUE: &str = "heavy";

impl Effective {
    /// Resolves options; `chain_heavy` is the chain-level heavy flag, which
    /// applies to every step (Celery applied it to the first only).
    pub fn resolve(own: Option<&Options>, defaults: Option<&Options>, chain_heavy: bool) -> Self {
        let empty = Options::default();
        let own = own.unwrap_or(&empty);
        let def = defaults.unwrap_or(&empty);
        let heavy = own.heavy || def.heavy || chain_heavy;
        let queue = if !own.queue.is_empty() {
            own.queue.clone()
        } else if !def.queue.is_empty() {
            def.queue.clone()
        } else if heavy {
            HEAVY_QUEUE.to_owned()
        } else {
            GENERAL_QUEUE.to_owned()
        };
        Effective {
            queue,
            throttle: own.throttle.clone().or_else(|| def.throttle.clone()),
            max_retries: own.max_retries.or(def.max_retries).unwrap_or(0),
            retry_backoff_ms: own
                .retry_backoff_ms
                .or(def.retry_backoff_ms)
                .unwrap_or(1000),
            retry_backoff_max_ms: own
                .retry_backoff_max_ms
                .or(def.retry_backoff_max_ms)
                .unwrap_or(60_000),
            max_polls: own.max_polls.or(def.max_polls).unwrap_or(100),
            timeout_ms: own.timeout_ms.or(def.timeout_ms).unwrap_or(0),
            countdown_ms: if own.countdown_ms > 0 {
                own.countdown_ms
            } else {
                def.countdown_ms
            },
            eta_ms: own.eta_unix_ms,
            priority: if own.priority != 0 {
                own.priority
            } else {
                def.priority
            },
        }
    }

    /// Delay before retry number `retry` (1-based): exponential, capped.
    pub fn backoff(&self, retry: u32) -> u64 {
        let shift = retry.saturating_sub(1).min(32);
        self.retry_backoff_ms
            .saturating_mul(1u64 << shift)
            .min(self.retry_backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_precedence_explicit_then_heavy_then_general() {
        let explicit = Options {
            queue: "io".into(),
            heavy: true,
            ..Default::default()
        };
        assert_eq!(Effective::resolve(Some(&explicit), None, true).queue, "io");
        let heavy = Options {
            heavy: true,
            ..Default::default()
        };
        assert_eq!(Effective::resolve(Some(&heavy), None, false).queue, "heavy");
        assert_eq!(Effective::resolve(None, Some(&heavy), false).queue, "heavy");
        assert_eq!(Effective::resolve(None, None, true).queue, "heavy");
        assert_eq!(Effective::resolve(None, None, false).queue, "general");
    }

    #[test]
    fn signature_options_override_task_defaults() {
        let own = Options {
            max_retries: Some(0),
            ..Default::default()
        };
        let def = Options {
            max_retries: Some(5),
            max_polls: Some(7),
            ..Default::default()
        };
        let e = Effective::resolve(Some(&own), Some(&def), false);
        assert_eq!(e.max_retries, 0);
        assert_eq!(e.max_polls, 7);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut e = Effective::resolve(None, None, false);
        e.retry_backoff_ms = 100;
        e.retry_backoff_max_ms = 1000;
        assert_eq!(
            [e.backoff(1), e.backoff(2), e.backoff(3), e.backoff(5)],
            [100, 200, 400, 1000]
        );
        assert_eq!(e.backoff(200), 1000);
    }

    #[test]
    fn identity_defaults_key_and_shares_across_names() {
        let t = Throttle {
            key: String::new(),
            ..Default::default()
        };
        assert_eq!(
            Identity::of("demo.slow", &t),
            Identity {
                task_name: "demo.slow".into(),
                key: "*".into()
            }
        );
        let s = Throttle {
            key: "tenant:1".into(),
            shared: true,
            ..Default::default()
        };
        assert_eq!(Identity::of("a", &s), Identity::of("b", &s));
    }

    #[test]
    fn a_superseded_failure_keeps_the_start_of_its_message_and_the_end_of_its_traceback() {
        let mut f = FailureRecord {
            message: "é".repeat(400),
            traceback: format!("{}raise Boom", "x".repeat(2000)),
            ..Default::default()
        };
        shorten_superseded(&mut f);
        assert!(
            f.message.len() < SUPERSEDED_FAILURE_BYTES + 20,
            "{}",
            f.message.len()
        );
        assert!(f.message.ends_with("[shortened]"));
        assert!(f.traceback.ends_with("raise Boom"));
        assert!(
            f.traceback.starts_with("[1498 bytes shortened"),
            "{}",
            &f.traceback[..40]
        );
        let short = FailureRecord {
            message: "m".into(),
            traceback: "t".into(),
            ..Default::default()
        };
        let mut same = short.clone();
        shorten_superseded(&mut same);
        assert_eq!(same, short);
    }

    #[test]
    fn carried_value_follows_phase() {
        let sig = |n: &str| Signature {
            name: n.into(),
            args: "[]".into(),
            kwargs: "{}".into(),
            ..Default::default()
        };
        let spec = ChainSpec {
            steps: vec![sig("a"), sig("b")],
            on_success: vec![sig("ok")],
            on_failure: vec![sig("err")],
            ..ChainSpec::default()
        };
        let mut c = ChainRecord::new(ChainId::from_u128(1), spec, 1);
        c.steps[0].result = "41".into();
        c.result = "\"done\"".into();
        c.failure = Some(FailureRecord {
            error_type: "E".into(),
            ..Default::default()
        });
        let at = |phase, index| StepAt { phase, index };
        let none = |_: &StepRecord| None;
        assert_eq!(c.carried_value(at(Phase::Main, 0), none), None);
        assert_eq!(
            c.carried_value(at(Phase::Main, 1), none),
            Some(serde_json::json!(41))
        );
        assert_eq!(
            c.carried_value(at(Phase::OnSuccess, 0), none),
            Some(serde_json::json!("done"))
        );
        assert_eq!(
            c.carried_value(at(Phase::OnFailure, 0), none).unwrap()["error_type"],
            "E"
        );
    }
}

// ---------------------------------------------------------------------------
// The worker conversation, in domain terms (the edge maps it to protobuf).
// ---------------------------------------------------------------------------

/// One attempt of one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskRef {
    pub task_id: TaskId,
    pub attempt: u32,
}

/// What a worker says when its stream opens.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerHello {
    pub name: String,
    pub queues: Vec<String>,
    /// Task names it runs, with their default options.
    pub tasks: Vec<(String, Options)>,
    pub concurrency: u32,
    /// Assignments it may hold beyond `concurrency`, waiting for a slot.
    pub prefetch: u32,
    /// Attempts it still runs from an earlier stream.
    pub held: Vec<TaskRef>,
    /// In-body slots those attempts still hold, by (task, request id).
    pub held_slots: Vec<(TaskRef, u64)>,
}

/// How a run ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// JSON result (already validated).
    Success(String),
    Failure {
        error_type: String,
        message: String,
        traceback: String,
        retryable: bool,
    },
    RetryLater {
        delay_ms: u64,
        message: String,
    },
}

/// Which of a worker's leases a heartbeat extends.
#[derive(Clone, Debug, PartialEq)]
pub enum Leases {
    /// All of its runs (the heartbeat listed none).
    All,
    /// Only these (of its own runs); none when it named only runs that
    /// this broker never issued.
    Listed(Vec<TaskRef>),
}

/// Messages from a worker after its hello.
#[derive(Clone, Debug, PartialEq)]
pub enum FromWorker {
    Outcome {
        task: TaskRef,
        outcome: RunOutcome,
    },
    /// Extends the worker's leases.
    Heartbeat {
        leases: Leases,
    },
    Acquire {
        request_id: u64,
        task: TaskRef,
        throttle: Throttle,
    },
    Release {
        request_id: u64,
        task: TaskRef,
    },
    Drain,
    Goodbye,
    /// The worker's prefetch from now on, and the assignments it gives
    /// back unstarted.
    Window {
        prefetch: u32,
        give_back: Vec<TaskRef>,
    },
}

/// A task handed to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub task: TaskRef,
    pub chain_id: ChainId,
    pub at: StepAt,
    pub name: String,
    pub args: String,
    pub kwargs: String,
    pub context: BTreeMap<String, String>,
    pub queue: String,
    pub lease_deadline_ms: UnixMs,
    pub timeout_ms: u64,
    pub polls: u32,
    pub retries: u32,
}

/// Messages to a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum ToWorker {
    Welcome {
        worker_id: WorkerId,
        lease_ms: u64,
        kept: Vec<TaskRef>,
        lost: Vec<TaskRef>,
    },
    Assign(Box<Assignment>),
    Cancel {
        task: TaskRef,
        reason: String,
    },
    Ack {
        task: TaskRef,
        accepted: bool,
        reason: String,
    },
    Granted {
        request_id: u64,
    },
    Error {
        request_id: u64,
        task: Option<TaskRef>,
        message: String,
    },
}

/// A change of a chain, for watchers. Made once per change and shared by
/// all of the chain's watchers (`Arc`), whose buffers are bounded by
/// [`ChainEvent::bytes`] (see `scheduler::watchers`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChainEvent {
    pub kind: &'static str,
    pub at: Option<StepAt>,
    pub chain: ChainRecord,
    /// About what the event holds in memory: its chain's encoded size.
    pub bytes: usize,
}

impl ChainEvent {
    pub fn new(kind: &'static str, at: Option<StepAt>, chain: ChainRecord) -> Self {
        use prost::Message as _;
        let bytes = chain.encoded_len();
        ChainEvent {
            kind,
            at,
            chain,
            bytes,
        }
    }
}

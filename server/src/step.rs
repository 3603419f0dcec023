//! One step of a chain: its record, and its state as an enum that carries
//! what the state has (a running step holds its run).
//!
//! The record is what the store persists, in the protobuf encoding it has
//! always had (tags below). Its state, though, is not a bare number: a
//! running step holds the [`Run`] it has out (the attempt, the worker
//! stream, the lease), so "the step is running" and "its run is out" are
//! one fact, not two kept in step by hand. The run itself is not persisted
//! (a restarted broker restores it from the step, see the scheduler's
//! `restore_run`), so the record's encoding is written here by hand with
//! prost's own field encoders, in tag order, byte for byte what the
//! derived encoding wrote (a test checks it against that encoding).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::domain::{
    ChainId, FailureRecord, Identity, InBodyHold, Signature, StepAt, StepState, UnixMs, WorkerId,
};

/// Results longer than this are stored apart from their chain's record,
/// once, instead of in the record, which is written again at every step:
/// a chain of 40 steps returning 1 MB each grew a 40 MB record rewritten
/// 40 times (finding 10 of docs/reliability.md).
pub const RESULT_APART_AFTER: usize = 16 * 1024;

/// One attempt out on a worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Run {
    pub chain_id: ChainId,
    pub at: StepAt,
    pub attempt: u32,
    /// None while its worker is disconnected (the lease still runs).
    pub worker: Option<WorkerId>,
    /// When its lease was last renewed, in the scheduler's awake time; it
    /// lapses once the scheduler has been awake for the lease length since
    /// (see `clock`: time the broker spent paused, with the worker's
    /// heartbeats waiting unread in its sockets, does not count). `None`
    /// until its assignment has left for the worker: an assignment waits in
    /// the outbox until its round is durable, for as long as the store is
    /// in trouble, and a lease that lapsed there would hand its throttle
    /// slot to another run while the stale assignment still left
    /// afterwards. Runs recovered or claimed have left.
    pub renewed: Option<u64>,
    /// The task-scoped declared throttle slot this run holds.
    pub declared: Option<Identity>,
    pub timed_out: bool,
}

/// Where a step is in its life.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StepStatus {
    #[default]
    Unspecified,
    Pending,
    Scheduled,
    Throttled,
    Ready,
    /// Out on a worker: the run it has out. A step read back from the
    /// store running (the broker stopped with it out) holds a default run
    /// until the scheduler restores it.
    Running(Box<Run>),
    Succeeded,
    Failed,
    Cancelled,
    /// A group or a nested executor: its child chains run (see the
    /// scheduler's `fanout`).
    Waiting,
}

impl StepStatus {
    /// The state as the protocol and the store number it.
    pub fn state(&self) -> StepState {
        match self {
            StepStatus::Unspecified => StepState::Unspecified,
            StepStatus::Pending => StepState::Pending,
            StepStatus::Scheduled => StepState::Scheduled,
            StepStatus::Throttled => StepState::Throttled,
            StepStatus::Ready => StepState::Ready,
            StepStatus::Running(_) => StepState::Running,
            StepStatus::Succeeded => StepState::Succeeded,
            StepStatus::Failed => StepState::Failed,
            StepStatus::Cancelled => StepState::Cancelled,
            StepStatus::Waiting => StepState::Waiting,
        }
    }

    /// The status a stored state number reads as (unknown numbers as
    /// unspecified, as prost reads an unknown enum value).
    pub fn of(state: i32) -> Self {
        match StepState::try_from(state).unwrap_or(StepState::Unspecified) {
            StepState::Unspecified => StepStatus::Unspecified,
            StepState::Pending => StepStatus::Pending,
            StepState::Scheduled => StepStatus::Scheduled,
            StepState::Throttled => StepStatus::Throttled,
            StepState::Ready => StepStatus::Ready,
            StepState::Running => StepStatus::Running(Box::default()),
            StepState::Succeeded => StepStatus::Succeeded,
            StepState::Failed => StepStatus::Failed,
            StepState::Cancelled => StepStatus::Cancelled,
            StepState::Waiting => StepStatus::Waiting,
        }
    }
}

/// The persisted state of one step of a chain.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct StepRecord {
    /// Stable across attempts. (Tag 1.)
    pub task_id: String,
    /// (Tag 2.)
    pub signature: Option<Signature>,
    /// Stored as its state number. (Tag 3.)
    pub status: StepStatus,
    /// Runs started so far; the current attempt number while running.
    /// (Tag 4.)
    pub attempts: u32,
    /// (Tag 5.)
    pub polls: u32,
    /// (Tag 6.)
    pub retries: u32,
    /// Runs lost to lapsed leases (worker crash or hang). (Tag 7.)
    pub lapses: u32,
    /// (Tag 8.)
    pub queue: String,
    /// JSON result once succeeded. (Tag 9.)
    pub result: String,
    /// (Tag 10.)
    pub failure: Option<FailureRecord>,
    /// The name of the worker that runs or ran it. (Tag 11.)
    pub worker: String,
    /// (Tag 12.)
    pub ready_ms: UnixMs,
    /// (Tag 13.)
    pub started_ms: UnixMs,
    /// (Tag 14.)
    pub finished_ms: UnixMs,
    /// While SCHEDULED: when the step becomes ready. (Tag 15.)
    pub not_before_ms: UnixMs,
    /// In-body slots held by the current attempt. (Tag 16.)
    pub in_body: Vec<InBodyHold>,
    /// The result is stored apart, written once (see [`RESULT_APART_AFTER`]):
    /// `result` is empty in the store. In memory, the scheduler keeps the
    /// ones its chains still use (see `ChainRecord::results_in_use`).
    /// (Tag 17.)
    pub result_apart: bool,
    /// The result's length in bytes, once succeeded. (Tag 18.)
    pub result_bytes: u64,
    /// A group or a nested executor: how many of its child chains were
    /// started so far (they are started a slice a round, see the
    /// scheduler's `fanout`). (Tag 19.)
    pub spawned: u32,
    /// How many of its child chains succeeded so far. (Tag 20.)
    pub members_done: u32,
    /// How many of its child chains ended so far, however they ended: a
    /// chain whose step has children out stays in memory (and live) until
    /// they end, as it does for runs out. (Tag 21.)
    pub members_ended: u32,
    /// How many child chains the step has: 0 for a task. The members'
    /// signatures are stored apart from the chain's record (see the
    /// scheduler's `fanout`). (Tag 22.)
    pub children: u32,
    /// A nested executor: one child whose result is the step's (a group's
    /// result is the list of its members'). (Tag 23.)
    pub nested: bool,
}

impl StepRecord {
    pub fn state(&self) -> StepState {
        self.status.state()
    }

    /// Moves the step to a state that holds nothing. A running step is
    /// started with [`StepRecord::start`], and leaves running only through
    /// [`StepRecord::end_run`], which hands its run back.
    pub fn set_state(&mut self, state: StepState) {
        debug_assert!(state != StepState::Running, "a running step needs its run");
        debug_assert!(
            !matches!(self.status, StepStatus::Running(_)),
            "a running step ends through end_run"
        );
        self.status = StepStatus::of(state as i32);
    }

    /// The step starts running `run`.
    pub fn start(&mut self, run: Run) {
        self.status = StepStatus::Running(Box::new(run));
    }

    /// The run the step has out, if it is running.
    pub fn run(&self) -> Option<&Run> {
        match &self.status {
            StepStatus::Running(run) => Some(run),
            _ => None,
        }
    }

    pub fn run_mut(&mut self) -> Option<&mut Run> {
        match &mut self.status {
            StepStatus::Running(run) => Some(run),
            _ => None,
        }
    }

    /// Ends the step's run: it moves to `then` and the run comes back.
    pub fn end_run(&mut self, then: StepState) -> Option<Run> {
        debug_assert!(then != StepState::Running);
        match std::mem::replace(&mut self.status, StepStatus::of(then as i32)) {
            StepStatus::Running(run) => Some(*run),
            other => {
                self.status = other;
                None
            }
        }
    }

    pub fn signature(&self) -> &Signature {
        // Every stored step has a signature; the default keeps readers total.
        static EMPTY: std::sync::OnceLock<Signature> = std::sync::OnceLock::new();
        self.signature
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Signature::default))
    }

    pub fn name(&self) -> &str {
        &self.signature().name
    }

    /// Whether the step runs child chains (a group or a nested executor)
    /// rather than a task on a worker.
    pub fn has_children(&self) -> bool {
        self.children > 0
    }

    /// Child chains of the step started and not yet ended.
    pub fn children_out(&self) -> u32 {
        self.spawned.saturating_sub(self.members_ended)
    }

    /// Its task id. The store holds it as text, written by the broker from
    /// a [`TaskId`](crate::domain::TaskId); a record that does not parse
    /// was refused when it was read (see `ChainRecord::check_ids`), so the
    /// nil id never shows here.
    pub fn task(&self) -> crate::domain::TaskId {
        crate::domain::TaskId::parse(&self.task_id).unwrap_or_default()
    }
}

/// The record's plain fields by tag, for the encoder and its length (one
/// list, so the two cannot disagree).
impl StepRecord {
    fn counts(&self) -> [(u32, u32); 4] {
        [
            (4, self.attempts),
            (5, self.polls),
            (6, self.retries),
            (7, self.lapses),
        ]
    }

    fn texts(&self) -> [(u32, &String); 2] {
        [(8, &self.queue), (9, &self.result)]
    }

    fn fanout(&self) -> [(u32, u32); 4] {
        [
            (19, self.spawned),
            (20, self.members_done),
            (21, self.members_ended),
            (22, self.children),
        ]
    }

    fn times(&self) -> [(u32, UnixMs); 4] {
        [
            (12, self.ready_ms),
            (13, self.started_ms),
            (14, self.finished_ms),
            (15, self.not_before_ms),
        ]
    }
}

impl prost::Message for StepRecord {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use encoding::{bool, message, string, uint32, uint64};
        if !self.task_id.is_empty() {
            string::encode(1, &self.task_id, buf);
        }
        if let Some(signature) = &self.signature {
            message::encode(2, signature, buf);
        }
        let state = self.state() as i32;
        if state != 0 {
            encoding::int32::encode(3, &state, buf);
        }
        for (tag, value) in self.counts() {
            if value != 0 {
                uint32::encode(tag, &value, buf);
            }
        }
        for (tag, value) in self.texts() {
            if !value.is_empty() {
                string::encode(tag, value, buf);
            }
        }
        if let Some(failure) = &self.failure {
            message::encode(10, failure, buf);
        }
        if !self.worker.is_empty() {
            string::encode(11, &self.worker, buf);
        }
        for (tag, value) in self.times() {
            if value != 0 {
                uint64::encode(tag, &value, buf);
            }
        }
        message::encode_repeated(16, &self.in_body, buf);
        if self.result_apart {
            bool::encode(17, &self.result_apart, buf);
        }
        if self.result_bytes != 0 {
            uint64::encode(18, &self.result_bytes, buf);
        }
        for (tag, value) in self.fanout() {
            if value != 0 {
                uint32::encode(tag, &value, buf);
            }
        }
        if self.nested {
            bool::encode(23, &self.nested, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use encoding::{bool, message, string, uint32, uint64};
        match tag {
            1 => string::merge(wire_type, &mut self.task_id, buf, ctx),
            2 => message::merge(
                wire_type,
                self.signature.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            3 => {
                let mut state = 0;
                encoding::int32::merge(wire_type, &mut state, buf, ctx)?;
                self.status = StepStatus::of(state);
                Ok(())
            }
            4 => uint32::merge(wire_type, &mut self.attempts, buf, ctx),
            5 => uint32::merge(wire_type, &mut self.polls, buf, ctx),
            6 => uint32::merge(wire_type, &mut self.retries, buf, ctx),
            7 => uint32::merge(wire_type, &mut self.lapses, buf, ctx),
            8 => string::merge(wire_type, &mut self.queue, buf, ctx),
            9 => string::merge(wire_type, &mut self.result, buf, ctx),
            10 => message::merge(
                wire_type,
                self.failure.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            11 => string::merge(wire_type, &mut self.worker, buf, ctx),
            12 => uint64::merge(wire_type, &mut self.ready_ms, buf, ctx),
            13 => uint64::merge(wire_type, &mut self.started_ms, buf, ctx),
            14 => uint64::merge(wire_type, &mut self.finished_ms, buf, ctx),
            15 => uint64::merge(wire_type, &mut self.not_before_ms, buf, ctx),
            16 => message::merge_repeated(wire_type, &mut self.in_body, buf, ctx),
            17 => bool::merge(wire_type, &mut self.result_apart, buf, ctx),
            18 => uint64::merge(wire_type, &mut self.result_bytes, buf, ctx),
            19 => uint32::merge(wire_type, &mut self.spawned, buf, ctx),
            20 => uint32::merge(wire_type, &mut self.members_done, buf, ctx),
            21 => uint32::merge(wire_type, &mut self.members_ended, buf, ctx),
            22 => uint32::merge(wire_type, &mut self.children, buf, ctx),
            23 => bool::merge(wire_type, &mut self.nested, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use encoding::{bool, message, string, uint32, uint64};
        let mut len = 0;
        if !self.task_id.is_empty() {
            len += string::encoded_len(1, &self.task_id);
        }
        if let Some(signature) = &self.signature {
            len += message::encoded_len(2, signature);
        }
        let state = self.state() as i32;
        if state != 0 {
            len += encoding::int32::encoded_len(3, &state);
        }
        for (tag, value) in self.counts() {
            if value != 0 {
                len += uint32::encoded_len(tag, &value);
            }
        }
        for (tag, value) in self.texts() {
            if !value.is_empty() {
                len += string::encoded_len(tag, value);
            }
        }
        if let Some(failure) = &self.failure {
            len += message::encoded_len(10, failure);
        }
        if !self.worker.is_empty() {
            len += string::encoded_len(11, &self.worker);
        }
        for (tag, value) in self.times() {
            if value != 0 {
                len += uint64::encoded_len(tag, &value);
            }
        }
        len += message::encoded_len_repeated(16, &self.in_body);
        if self.result_apart {
            len += bool::encoded_len(17, &self.result_apart);
        }
        if self.result_bytes != 0 {
            len += uint64::encoded_len(18, &self.result_bytes);
        }
        for (tag, value) in self.fanout() {
            if value != 0 {
                len += uint32::encoded_len(tag, &value);
            }
        }
        if self.nested {
            len += bool::encoded_len(23, &self.nested);
        }
        len
    }

    fn clear(&mut self) {
        *self = StepRecord::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::domain::{Options, Phase, Throttle};

    /// The step record as prost derived it before its state became an
    /// enum: the reference for the encoding above.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(string, tag = "1")]
        task_id: String,
        #[prost(message, optional, tag = "2")]
        signature: Option<Signature>,
        #[prost(enumeration = "StepState", tag = "3")]
        state: i32,
        #[prost(uint32, tag = "4")]
        attempts: u32,
        #[prost(uint32, tag = "5")]
        polls: u32,
        #[prost(uint32, tag = "6")]
        retries: u32,
        #[prost(uint32, tag = "7")]
        lapses: u32,
        #[prost(string, tag = "8")]
        queue: String,
        #[prost(string, tag = "9")]
        result: String,
        #[prost(message, optional, tag = "10")]
        failure: Option<FailureRecord>,
        #[prost(string, tag = "11")]
        worker: String,
        #[prost(uint64, tag = "12")]
        ready_ms: u64,
        #[prost(uint64, tag = "13")]
        started_ms: u64,
        #[prost(uint64, tag = "14")]
        finished_ms: u64,
        #[prost(uint64, tag = "15")]
        not_before_ms: u64,
        #[prost(message, repeated, tag = "16")]
        in_body: Vec<InBodyHold>,
        #[prost(bool, tag = "17")]
        result_apart: bool,
        #[prost(uint64, tag = "18")]
        result_bytes: u64,
        #[prost(uint32, tag = "19")]
        spawned: u32,
        #[prost(uint32, tag = "20")]
        members_done: u32,
        #[prost(uint32, tag = "21")]
        members_ended: u32,
        #[prost(uint32, tag = "22")]
        children: u32,
        #[prost(bool, tag = "23")]
        nested: bool,
    }

    fn full(state: StepState) -> Derived {
        Derived {
            task_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            signature: Some(Signature {
                name: "provision".into(),
                args: "[1]".into(),
                kwargs: "{}".into(),
                immutable: true,
                options: Some(Options {
                    queue: "heavy".into(),
                    throttle: Some(Throttle {
                        concurrency: 2,
                        ..Default::default()
                    }),
                    max_retries: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            state: state as i32,
            attempts: 3,
            polls: 4,
            retries: 5,
            lapses: 6,
            queue: "heavy".into(),
            result: "\"ok\"".into(),
            failure: Some(FailureRecord {
                phase: Phase::Main as i32,
                message: "boom".into(),
                ..Default::default()
            }),
            worker: "w1".into(),
            ready_ms: 12,
            started_ms: 13,
            finished_ms: 14,
            not_before_ms: 15,
            in_body: vec![InBodyHold {
                identity: Some(Identity {
                    task_name: "t".into(),
                    key: "k".into(),
                }),
                request_id: 7,
            }],
            result_apart: true,
            result_bytes: 18,
            spawned: 19,
            members_done: 20,
            members_ended: 21,
            children: 22,
            nested: true,
        }
    }

    #[test]
    fn the_record_encodes_byte_for_byte_as_the_derived_one_did() {
        for state in [
            StepState::Unspecified,
            StepState::Pending,
            StepState::Running,
            StepState::Cancelled,
            StepState::Waiting,
        ] {
            for derived in [
                full(state),
                Derived::default(),
                Derived {
                    state: state as i32,
                    ..Derived::default()
                },
            ] {
                let bytes = derived.encode_to_vec();
                let ours = StepRecord::decode(bytes.as_slice()).unwrap();
                assert_eq!(ours.state() as i32, derived.state);
                assert_eq!(ours.encoded_len(), bytes.len());
                assert_eq!(ours.encode_to_vec(), bytes, "{state:?}");
                assert_eq!(
                    Derived::decode(ours.encode_to_vec().as_slice()).unwrap(),
                    derived
                );
            }
        }
    }

    #[test]
    fn a_running_step_holds_its_run_until_it_ends() {
        let mut step = StepRecord::default();
        step.set_state(StepState::Ready);
        assert!(step.run().is_none());
        step.start(Run {
            attempt: 2,
            ..Run::default()
        });
        assert_eq!(step.state(), StepState::Running);
        step.run_mut().unwrap().timed_out = true;
        let run = step.end_run(StepState::Succeeded).unwrap();
        assert!(run.timed_out && run.attempt == 2);
        assert_eq!(step.state(), StepState::Succeeded);
        assert!(step.end_run(StepState::Failed).is_none(), "no run out");
        assert_eq!(step.state(), StepState::Succeeded, "unchanged");
    }
}

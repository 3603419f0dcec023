//! The value types that stored records hold, defined here apart from the
//! protocol's.
//!
//! They used to be the protocol's own (`baton::pb`), reused as they were:
//! then a field added to the public API became a field of every stored
//! record, and a change of the stored format was a change of the API. Now
//! the two only meet at the edge (`api::convert`), which maps one onto the
//! other.
//!
//! The tags and the enum numbers are the ones the protocol types had, so
//! records written before this split read back unchanged (a test below
//! decodes one as the other). Never reuse a tag; add new fields with new
//! ones.

/// A chain's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChainState {
    Unspecified = 0,
    Running = 1,
    Succeeded = 2,
    Failed = 3,
    Cancelled = 4,
}

/// A step's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StepState {
    Unspecified = 0,
    Pending = 1,
    Scheduled = 2,
    Throttled = 3,
    Ready = 4,
    Running = 5,
    Succeeded = 6,
    Failed = 7,
    Cancelled = 8,
    /// A group or a nested executor whose child chains run.
    Waiting = 9,
}

/// Which list of a chain's steps: its main steps or a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Phase {
    Unspecified = 0,
    Main = 1,
    OnSuccess = 2,
    OnFailure = 3,
}

/// What a throttle's slot belongs to: one run of a task, or a chain until
/// it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ThrottleScope {
    Unspecified = 0,
    Task = 1,
    Chain = 2,
}

impl ChainState {
    /// The name the protocol gives it (`CHAIN_STATE_RUNNING`).
    pub fn as_str_name(self) -> &'static str {
        match self {
            ChainState::Unspecified => "CHAIN_STATE_UNSPECIFIED",
            ChainState::Running => "CHAIN_STATE_RUNNING",
            ChainState::Succeeded => "CHAIN_STATE_SUCCEEDED",
            ChainState::Failed => "CHAIN_STATE_FAILED",
            ChainState::Cancelled => "CHAIN_STATE_CANCELLED",
        }
    }
}

/// A throttle as a signature declares it or a body asks for it.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Throttle {
    #[prost(uint32, tag = "1")]
    pub concurrency: u32,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(bool, tag = "3")]
    pub shared: bool,
    #[prost(enumeration = "ThrottleScope", tag = "4")]
    pub scope: i32,
    /// A rate limit of the identity's starts, beside (or instead of) its
    /// concurrency.
    #[prost(message, optional, tag = "5")]
    pub rate: Option<RateRecord>,
}

/// At most `count` starts per `period_ms`, `burst` at once (0 counts as 1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct RateRecord {
    #[prost(uint32, tag = "1")]
    pub count: u32,
    #[prost(uint64, tag = "2")]
    pub period_ms: u64,
    #[prost(uint32, tag = "3")]
    pub burst: u32,
}

/// A signature's or a task name's options (each unset one falls back: see
/// `domain::Effective`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Options {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(bool, tag = "2")]
    pub heavy: bool,
    #[prost(message, optional, tag = "3")]
    pub throttle: Option<Throttle>,
    #[prost(uint32, optional, tag = "4")]
    pub max_retries: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    pub retry_backoff_ms: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub retry_backoff_max_ms: Option<u64>,
    #[prost(uint32, optional, tag = "7")]
    pub max_polls: Option<u32>,
    #[prost(uint64, optional, tag = "8")]
    pub timeout_ms: Option<u64>,
    #[prost(uint64, tag = "9")]
    pub countdown_ms: u64,
    #[prost(uint64, tag = "10")]
    pub eta_unix_ms: u64,
    #[prost(int32, tag = "11")]
    pub priority: i32,
    #[prost(string, tag = "12")]
    pub description: String,
}

/// What made a step fail for good, handed to the chain's on_failure.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FailureRecord {
    #[prost(string, tag = "1")]
    pub chain_id: String,
    #[prost(enumeration = "Phase", tag = "2")]
    pub phase: i32,
    #[prost(uint32, tag = "3")]
    pub step_index: u32,
    #[prost(string, tag = "4")]
    pub task_name: String,
    #[prost(string, tag = "5")]
    pub task_id: String,
    #[prost(uint32, tag = "6")]
    pub attempt: u32,
    #[prost(string, tag = "7")]
    pub error_type: String,
    #[prost(string, tag = "8")]
    pub message: String,
    #[prost(string, tag = "9")]
    pub traceback: String,
}

#[cfg(test)]
mod tests {
    use baton::pb;
    use prost::Message;

    use super::*;

    /// Records written while these types were the protocol's read back
    /// the same, and the other way round: the encodings agree field by
    /// field.
    #[test]
    fn the_stored_types_read_what_the_protocol_types_wrote() {
        let options = pb::Options {
            queue: "heavy".into(),
            heavy: true,
            throttle: Some(pb::Throttle {
                concurrency: 2,
                key: "tenant".into(),
                shared: true,
                scope: pb::ThrottleScope::Chain as i32,
                rate: Some(pb::Rate {
                    count: 10,
                    period_ms: 1000,
                    burst: 2,
                }),
            }),
            max_retries: Some(3),
            retry_backoff_ms: Some(10),
            retry_backoff_max_ms: Some(20),
            max_polls: Some(0),
            timeout_ms: Some(30),
            countdown_ms: 40,
            eta_unix_ms: 50,
            priority: 7,
            description: "d".into(),
        };
        let stored = Options::decode(options.encode_to_vec().as_slice()).unwrap();
        assert_eq!(stored.encode_to_vec(), options.encode_to_vec());
        assert_eq!(stored.max_polls, Some(0));
        assert_eq!(
            stored.throttle.as_ref().unwrap().scope(),
            ThrottleScope::Chain
        );

        let failure = pb::FailureRecord {
            chain_id: "c".into(),
            phase: pb::Phase::OnSuccess as i32,
            step_index: 1,
            task_name: "t".into(),
            task_id: "i".into(),
            attempt: 2,
            error_type: "E".into(),
            message: "m".into(),
            traceback: "tb".into(),
        };
        let stored = FailureRecord::decode(failure.encode_to_vec().as_slice()).unwrap();
        assert_eq!(stored.encode_to_vec(), failure.encode_to_vec());
        assert_eq!(stored.phase(), Phase::OnSuccess);
    }

    #[test]
    fn enum_numbers_are_the_protocols() {
        for (ours, theirs) in [
            (ChainState::Running as i32, pb::ChainState::Running as i32),
            (
                ChainState::Cancelled as i32,
                pb::ChainState::Cancelled as i32,
            ),
        ] {
            assert_eq!(ours, theirs);
        }
        assert_eq!(StepState::Cancelled as i32, pb::StepState::Cancelled as i32);
        assert_eq!(StepState::Running as i32, pb::StepState::Running as i32);
        assert_eq!(Phase::OnFailure as i32, pb::Phase::OnFailure as i32);
        assert_eq!(ThrottleScope::Chain as i32, pb::ThrottleScope::Chain as i32);
        assert_eq!(
            ChainState::Failed.as_str_name(),
            pb::ChainState::Failed.as_str_name()
        );
    }
}

//! How a chain ended, read from the broker's `Chain` message.
//!
//! The broker guarantees that every chain ends: succeeded, failed or
//! cancelled. [`ChainOutcome`] is that end as a Rust value, with the result
//! decoded from JSON; [`ChainOutcome::into_result`] turns it into a `Result`
//! for callers who treat anything but success as an error.

use std::fmt;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::pb;

/// The end of a chain.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainOutcome {
    /// Every step succeeded (and `on_success`, if any, ran): the last main
    /// step's result, `null` if it returned none.
    Succeeded(Value),
    /// A step failed for good (and `on_failure`, if any, ran).
    Failed(pb::FailureRecord),
    /// A client cancelled the chain, with this reason; no callback ran.
    Cancelled(String),
}

impl ChainOutcome {
    /// The outcome of `chain`, or `None` while it is still running.
    ///
    /// A failed chain without a failure record (the broker promises one)
    /// gets an empty record carrying only the chain id.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] when the chain succeeded with a result that is not
    /// valid JSON.
    pub fn from_chain(chain: &pb::Chain) -> Result<Option<Self>> {
        let outcome = match chain.state() {
            pb::ChainState::Unspecified | pb::ChainState::Running => return Ok(None),
            pb::ChainState::Succeeded => Self::Succeeded(parse_result(chain)?),
            pb::ChainState::Failed => {
                Self::Failed(chain.failure.clone().unwrap_or_else(|| pb::FailureRecord {
                    chain_id: chain.chain_id.clone(),
                    ..pb::FailureRecord::default()
                }))
            }
            pb::ChainState::Cancelled => Self::Cancelled(chain.cancel_reason.clone()),
        };
        Ok(Some(outcome))
    }

    /// The result of a succeeded chain.
    ///
    /// # Errors
    ///
    /// [`ChainError`] when the chain failed or was cancelled.
    pub fn into_result(self) -> Result<Value, ChainError> {
        match self {
            Self::Succeeded(result) => Ok(result),
            Self::Failed(failure) => Err(ChainError::Failed(Box::new(failure))),
            Self::Cancelled(reason) => Err(ChainError::Cancelled(reason)),
        }
    }
}

/// Decodes the chain's JSON result; empty means `null`.
fn parse_result(chain: &pb::Chain) -> Result<Value> {
    if chain.result.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&chain.result).map_err(|source| Error::Json {
        chain_id: chain.chain_id.clone(),
        source,
    })
}

/// A chain that did not succeed, as an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    /// A step failed for good. Boxed: the record is large, and a `Result`
    /// should stay small.
    #[error("{}", Failure(.0))]
    Failed(Box<pb::FailureRecord>),
    /// A client cancelled the chain, with this reason.
    #[error("chain cancelled: {0}")]
    Cancelled(String),
}

/// Displays a failure record as one line.
struct Failure<'a>(&'a pb::FailureRecord);

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.0;
        let phase = match record.phase() {
            pb::Phase::Unspecified | pb::Phase::Main => "step",
            pb::Phase::OnSuccess => "on_success step",
            pb::Phase::OnFailure => "on_failure step",
        };
        write!(
            f,
            "chain {} failed at {phase} {} ({}, attempt {}): {}: {}",
            record.chain_id,
            record.step_index,
            record.task_name,
            record.attempt,
            record.error_type,
            record.message
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chain(state: pb::ChainState) -> pb::Chain {
        pb::Chain {
            chain_id: "c-1".into(),
            state: state.into(),
            ..pb::Chain::default()
        }
    }

    fn record() -> pb::FailureRecord {
        pb::FailureRecord {
            chain_id: "c-1".into(),
            phase: pb::Phase::Main.into(),
            step_index: 1,
            task_name: "volume.poll".into(),
            task_id: "t-2".into(),
            attempt: 3,
            error_type: "PollBudgetExhausted".into(),
            message: "still creating".into(),
            traceback: String::new(),
        }
    }

    #[test]
    fn a_running_chain_has_no_outcome() {
        for state in [pb::ChainState::Unspecified, pb::ChainState::Running] {
            assert_eq!(ChainOutcome::from_chain(&chain(state)).unwrap(), None);
        }
    }

    #[test]
    fn a_succeeded_chain_yields_its_decoded_result() {
        let mut succeeded = chain(pb::ChainState::Succeeded);
        succeeded.result = r#"{"size":10}"#.into();
        let outcome = ChainOutcome::from_chain(&succeeded).unwrap();
        assert_eq!(outcome, Some(ChainOutcome::Succeeded(json!({"size": 10}))));

        succeeded.result.clear();
        let outcome = ChainOutcome::from_chain(&succeeded).unwrap();
        assert_eq!(outcome, Some(ChainOutcome::Succeeded(Value::Null)));
    }

    #[test]
    fn a_result_that_is_not_json_is_an_error() {
        let mut succeeded = chain(pb::ChainState::Succeeded);
        succeeded.result = "{not json".into();
        let error = ChainOutcome::from_chain(&succeeded).unwrap_err();
        assert!(matches!(error, Error::Json { ref chain_id, .. } if chain_id == "c-1"));
    }

    #[test]
    fn a_failed_chain_yields_its_failure_record() {
        let mut failed = chain(pb::ChainState::Failed);
        failed.failure = Some(record());
        let outcome = ChainOutcome::from_chain(&failed).unwrap();
        assert_eq!(outcome, Some(ChainOutcome::Failed(record())));

        failed.failure = None;
        let Some(ChainOutcome::Failed(empty)) = ChainOutcome::from_chain(&failed).unwrap() else {
            panic!("a failed chain is Failed");
        };
        assert_eq!(empty.chain_id, "c-1");
    }

    #[test]
    fn a_cancelled_chain_yields_its_reason() {
        let mut cancelled = chain(pb::ChainState::Cancelled);
        cancelled.cancel_reason = "user asked".into();
        let outcome = ChainOutcome::from_chain(&cancelled).unwrap();
        assert_eq!(outcome, Some(ChainOutcome::Cancelled("user asked".into())));
    }

    #[test]
    fn into_result_separates_success_from_the_rest() {
        assert_eq!(
            ChainOutcome::Succeeded(json!(1)).into_result(),
            Ok(json!(1))
        );
        let failed = ChainOutcome::Failed(record()).into_result().unwrap_err();
        assert_eq!(
            failed.to_string(),
            "chain c-1 failed at step 1 (volume.poll, attempt 3): \
             PollBudgetExhausted: still creating"
        );
        let cancelled = ChainOutcome::Cancelled("no".into()).into_result();
        assert_eq!(cancelled, Err(ChainError::Cancelled("no".into())));
    }
}

//! Replies to requests as plain data.
//!
//! The machine holds no channel: a request reaches it with a [`Req`], a
//! number the driver chose and typed by what the request answers with, and
//! its answer leaves as [`Output::Reply`](super::Output::Reply) carrying an
//! [`Answer`]. The driver keeps the oneshot of each number and sends the
//! answer on it once the round that decided it is durable. Tests and the
//! simulator read the same answers without any channel.

use std::marker::PhantomData;

use super::Error;
use crate::domain::{ChainId, ChainRecord, ChainState, WorkerId};
use crate::scheduler::{
    Inspected, QueueStats, ScheduleView, Submitted, ThrottleStats, WorkerStats,
};

/// The number of a request, chosen by the driver.
pub type RequestId = u64;

/// A request waiting for an answer of type `T`. The type is only a guard:
/// the machine cannot answer a submission with a chain record.
pub struct Req<T> {
    id: RequestId,
    answer: PhantomData<fn() -> T>,
}

impl<T> Req<T> {
    pub fn new(id: RequestId) -> Self {
        Req {
            id,
            answer: PhantomData,
        }
    }

    pub fn id(&self) -> RequestId {
        self.id
    }
}

impl<T> Clone for Req<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Req<T> {}

impl<T> std::fmt::Debug for Req<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Req({})", self.id)
    }
}

/// A type a request can answer with (see the `answers!` macro below).
pub trait Answerable: Sized {
    fn wrap(result: Result<Self, Error>) -> Answer;
    /// The answer back as `Self`, or `None` if it answers something else.
    fn unwrap(answer: Answer) -> Option<Result<Self, Error>>;
}

/// Declares [`Answer`] with one variant per type a request answers with,
/// and the [`Answerable`] conversions of each.
macro_rules! answers {
    ($($(#[$doc:meta])* $variant:ident($t:ty)),* $(,)?) => {
        /// The answer to a request: its result, or why it failed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Answer {
            $($(#[$doc])* $variant(Result<$t, Error>),)*
        }

        $(impl Answerable for $t {
            fn wrap(result: Result<Self, Error>) -> Answer {
                Answer::$variant(result)
            }

            fn unwrap(answer: Answer) -> Option<Result<Self, Error>> {
                match answer {
                    Answer::$variant(result) => Some(result),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        })*
    };
}

answers! {
    Submitted(Submitted),
    SubmittedMany(Vec<Submitted>),
    Chain(ChainRecord),
    Inspected(Inspected),
    /// A step's result.
    Text(String),
    /// A new chain's id (requeue).
    ChainId(ChainId),
    /// A worker stream's id.
    WorkerId(WorkerId),
    Done(()),
    State(ChainState),
    Throttles(Vec<ThrottleStats>),
    Queue(QueueStats),
    /// Chain ids (purge).
    Ids(Vec<ChainId>),
    Workers(Vec<WorkerStats>),
    Schedule(ScheduleView),
}

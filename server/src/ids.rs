//! Typed ids: a chain's, a task's and a worker stream's.
//!
//! Every id the broker hands out is a UUID (v7, so ids sort by creation
//! time), and so is a chain id a client chooses (`SubmitChain.chain_id`).
//! The scheduler keys its maps by them and copies them into timers, runs
//! and outputs by the thousand per second: as 16-byte `Copy` values that
//! costs nothing, where the text form (36 bytes on the heap) cost an
//! allocation per copy. The types also keep a task id from being passed
//! where a chain id is meant.
//!
//! The text form (lower case, hyphenated) is what the store persists and
//! what the protocol carries; it is made at those edges only.

use std::fmt;

/// The text was not a UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnId {
    /// What was given, cut to a length fit for an error message.
    pub given: String,
}

impl fmt::Display for NotAnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a UUID", self.given)
    }
}

impl std::error::Error for NotAnId {}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// Reads the text form. Upper case, braces and the 32 digits
            /// without hyphens are accepted; [`fmt::Display`] gives the one
            /// canonical spelling back.
            ///
            /// # Errors
            /// [`NotAnId`] when `text` is not a UUID.
            pub fn parse(text: &str) -> Result<Self, NotAnId> {
                uuid::Uuid::parse_str(text).map(Self).map_err(|_| NotAnId {
                    given: text.chars().take(64).collect(),
                })
            }

            pub const fn from_uuid(uuid: uuid::Uuid) -> Self {
                Self(uuid)
            }

            /// The id whose 128 bits are `n` (tests, and keys kept as
            /// numbers).
            pub const fn from_u128(n: u128) -> Self {
                Self(uuid::Uuid::from_u128(n))
            }

            pub const fn uuid(self) -> uuid::Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NotAnId;
            fn from_str(text: &str) -> Result<Self, NotAnId> {
                Self::parse(text)
            }
        }
    };
}

uuid_id!(
    /// A chain's id: the broker's, or the one its client chose.
    ChainId
);
uuid_id!(
    /// A step's task id, stable across its attempts.
    TaskId
);
uuid_id!(
    /// One stream of one worker: a worker that reconnects gets a new one.
    WorkerId
);

impl ChainId {
    /// The id of member `index` of the group (or nested executor) whose
    /// step has task id `step`: a name-based UUID (v5) of the two. The
    /// parent thus finds its children without a list of their ids, which
    /// for a group of 10,000 members would be written again with every
    /// member that ends; and a member started twice (a round replayed
    /// after a crash) is the same chain.
    pub fn child(step: TaskId, index: u32) -> Self {
        ChainId(uuid::Uuid::new_v5(&step.uuid(), &index.to_be_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_uuid_reads_as_one_id_and_prints_canonically() {
        let canonical = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        for spelling in [
            canonical,
            "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
            "{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b}",
            "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
        ] {
            let id = ChainId::parse(spelling).unwrap();
            assert_eq!(id.to_string(), canonical, "{spelling}");
        }
    }

    #[test]
    fn text_that_is_not_a_uuid_is_refused_and_named() {
        let err = TaskId::parse("t-1").unwrap_err();
        assert_eq!(err.to_string(), "\"t-1\" is not a UUID");
        assert!(WorkerId::parse(&"x".repeat(1000)).unwrap_err().given.len() <= 64);
    }

    #[test]
    fn a_child_id_is_the_same_for_the_same_step_and_member_and_differs_otherwise() {
        let step = TaskId::from_u128(7);
        assert_eq!(ChainId::child(step, 3), ChainId::child(step, 3));
        assert_ne!(ChainId::child(step, 3), ChainId::child(step, 4));
        assert_ne!(
            ChainId::child(step, 3),
            ChainId::child(TaskId::from_u128(8), 3)
        );
    }

    #[test]
    fn ids_order_as_their_text_does() {
        // The scheduler walks sets of ids in order; the text order (what a
        // store's keys sort by) and the id order must agree.
        let a = ChainId::parse("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        let b = ChainId::parse("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4aff").unwrap();
        let c = ChainId::parse("a190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
    }
}

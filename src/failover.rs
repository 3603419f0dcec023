//! Several brokers, one leader: which address a client or worker tries
//! next (docs/deployment.md, "How clients find the leader").
//!
//! Brokers sharing one PostgreSQL database elect a leader; the others are
//! standbys, which refuse every call with `UNAVAILABLE`, the metadata
//! `baton-standby: 1` and, when they know it, `baton-leader: HOST:PORT`.
//! [`Brokers`] is the rule every SDK follows, as plain data (no sockets, no
//! clock), so that it is tested alone and the client and the worker
//! runtime share it:
//!
//! 1. Try the addresses in order, starting with the last one that worked.
//! 2. On a connection failure or `UNAVAILABLE`: if the answer carries
//!    `baton-leader` and that address was not tried in this round, try it
//!    next, at once (even if it is not in the list); else the next address
//!    of the list not tried in this round, at once.
//! 3. When every address of the list was tried, the round ends: pause with
//!    the SDK's backoff, then start a new round. A round in which a standby
//!    answered pauses only the first step of the backoff and does not grow
//!    it: a standby takes over within its lease, and asking it costs one
//!    refused call.
//! 4. A success ends the round and resets the backoff.

use std::collections::HashSet;

/// The metadata key of a standby's refusal that names the leader.
pub const LEADER_KEY: &str = "baton-leader";
/// The metadata key that marks a standby's refusal.
pub const STANDBY_KEY: &str = "baton-standby";

/// The addresses of a comma-separated list (`"h1:7070,h2:7070"`), trimmed,
/// empty items dropped.
#[must_use]
pub fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a refusal said about where the leader is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// The refusal came from a standby (`baton-standby`).
    pub standby: bool,
    /// The leader's address (`baton-leader`), if the answer named one.
    pub leader: Option<String>,
}

impl Refusal {
    /// What `status` says: a standby's marks, if any (a connection failure
    /// has none).
    #[must_use]
    pub fn of(status: &tonic::Status) -> Self {
        let metadata = status.metadata();
        Refusal {
            standby: metadata.get(STANDBY_KEY).is_some(),
            leader: metadata
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        }
    }
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try [`Brokers::current`] at once.
    Now,
    /// The round ended: pause, then try [`Brokers::current`]. `standby`:
    /// a standby answered in the round (pause the first backoff step only).
    Pause {
        /// Whether a standby answered in the round that ended.
        standby: bool,
    },
}

/// The rotation over a list of broker addresses (see the module doc).
#[derive(Clone, Debug)]
pub struct Brokers {
    list: Vec<String>,
    /// The address to try now: one of `list`, or a leader named by a
    /// standby.
    current: String,
    /// Tried in this round.
    tried: HashSet<String>,
    /// A standby answered in this round.
    standby_seen: bool,
}

impl Brokers {
    /// A rotation over `list` (as given, in order), starting at its first
    /// address. `None` when the list is empty.
    #[must_use]
    pub fn new(list: Vec<String>) -> Option<Self> {
        let current = list.first()?.clone();
        Some(Brokers {
            list,
            current,
            tried: HashSet::new(),
            standby_seen: false,
        })
    }

    /// The address to try now.
    #[must_use]
    pub fn current(&self) -> &str {
        &self.current
    }

    /// The addresses as configured.
    #[must_use]
    pub fn list(&self) -> &[String] {
        &self.list
    }

    /// The current address worked: it stays current, the round ends.
    pub fn succeeded(&mut self) {
        self.tried.clear();
        self.standby_seen = false;
    }

    /// The current address failed to connect, or refused (`refusal`: what
    /// its answer said; default for a connection failure). Moves to the
    /// address to try next.
    pub fn failed(&mut self, refusal: &Refusal) -> Next {
        self.tried.insert(self.current.clone());
        self.standby_seen |= refusal.standby;
        if let Some(leader) = &refusal.leader
            && !self.tried.contains(leader)
        {
            self.current.clone_from(leader);
            return Next::Now;
        }
        if let Some(next) = self.list.iter().find(|a| !self.tried.contains(*a)) {
            self.current.clone_from(next);
            return Next::Now;
        }
        let standby = std::mem::take(&mut self.standby_seen);
        self.tried.clear();
        self.current.clone_from(&self.list[0]);
        Next::Pause { standby }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(list: &str) -> Brokers {
        Brokers::new(split_addrs(list)).unwrap()
    }

    fn standby(leader: Option<&str>) -> Refusal {
        Refusal {
            standby: true,
            leader: leader.map(str::to_owned),
        }
    }

    #[test]
    fn lists_split_on_commas_and_ignore_blanks() {
        assert_eq!(split_addrs(" a:1, b:2 ,,"), vec!["a:1", "b:2"]);
        assert!(split_addrs(" , ").is_empty());
        assert!(Brokers::new(Vec::new()).is_none());
    }

    #[test]
    fn down_brokers_are_skipped_and_a_round_ends_with_a_pause() {
        let mut b = brokers("a:1,b:2,c:3");
        assert_eq!(b.current(), "a:1");
        assert_eq!(b.failed(&Refusal::default()), Next::Now);
        assert_eq!(b.current(), "b:2");
        assert_eq!(b.failed(&Refusal::default()), Next::Now);
        assert_eq!(b.current(), "c:3");
        assert_eq!(
            b.failed(&Refusal::default()),
            Next::Pause { standby: false }
        );
        assert_eq!(b.current(), "a:1");
    }

    #[test]
    fn a_standby_sends_the_client_to_the_leader_even_outside_the_list() {
        let mut b = brokers("a:1,b:2");
        assert_eq!(b.failed(&standby(Some("z:9"))), Next::Now);
        assert_eq!(b.current(), "z:9");
        b.succeeded();
        assert_eq!(b.current(), "z:9");
        // The leader dies: z refuses, then the list, where a standby still
        // names the dead leader (already tried): the round ends.
        assert_eq!(b.failed(&Refusal::default()), Next::Now);
        assert_eq!(b.current(), "a:1");
        assert_eq!(b.failed(&standby(Some("z:9"))), Next::Now);
        assert_eq!(b.current(), "b:2");
        assert_eq!(b.failed(&standby(None)), Next::Pause { standby: true });
        // A round of standbys alone: after it, a round of nothing.
        assert_eq!(b.failed(&Refusal::default()), Next::Now);
        assert_eq!(
            b.failed(&Refusal::default()),
            Next::Pause { standby: false }
        );
    }

    #[test]
    fn metadata_of_a_status_is_read() {
        let mut status = tonic::Status::unavailable("standby");
        status.metadata_mut().insert(
            STANDBY_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        status.metadata_mut().insert(
            LEADER_KEY,
            tonic::metadata::MetadataValue::from_static("h:7070"),
        );
        assert_eq!(Refusal::of(&status), standby(Some("h:7070")));
        assert_eq!(
            Refusal::of(&tonic::Status::unavailable("down")),
            Refusal::default()
        );
    }
}

//! Periodic schedules, built the way chains are.
//!
//! ```no_run
//! use baton::{Client, Schedule, Task};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("127.0.0.1:7070").await?;
//! let backup = Task::new("backup.run");
//! let nightly = Schedule::cron("nightly-backup", "30 2 * * *", backup.si(["all"]))
//!     .timezone("Europe/Berlin")
//!     .catch_up(1);
//! client.admin().schedule(nightly).await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::chain::Chain;
use crate::pb;

/// A periodic schedule: the chain it submits at each fire time, and when.
/// The broker submits each fire time's chain once, and keeps the schedule
/// across restarts (see the `PutSchedule` RPC).
#[derive(Debug, Clone)]
pub struct Schedule {
    inner: pb::Schedule,
}

impl Schedule {
    /// Fires at the times a cron expression matches (five fields, or six
    /// with seconds first), in UTC unless [`timezone`](Self::timezone)
    /// says otherwise.
    pub fn cron(name: impl Into<String>, cron: impl Into<String>, chain: impl Into<Chain>) -> Self {
        Self::new(name, chain, |s| s.cron = cron.into())
    }

    /// Fires every `period` (at least a second) after the schedule is first
    /// added.
    pub fn every(name: impl Into<String>, period: Duration, chain: impl Into<Chain>) -> Self {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        Self::new(name, chain, |s| s.every_ms = ms)
    }

    fn new(
        name: impl Into<String>,
        chain: impl Into<Chain>,
        when: impl FnOnce(&mut pb::Schedule),
    ) -> Self {
        let mut inner = pb::Schedule {
            name: name.into(),
            chain: Some(pb::SubmitChainRequest::from(chain.into())),
            ..pb::Schedule::default()
        };
        when(&mut inner);
        Schedule { inner }
    }

    /// The IANA time zone of a cron schedule ("Europe/Berlin").
    #[must_use]
    pub fn timezone(mut self, zone: impl Into<String>) -> Self {
        self.inner.timezone = zone.into();
        self
    }

    /// Fire times missed while the broker was down: the latest `n` of them
    /// still fire (0, the default, skips them).
    #[must_use]
    pub fn catch_up(mut self, n: u32) -> Self {
        self.inner.catch_up = n;
        self
    }

    /// Each chain's deadline, after it is submitted.
    #[must_use]
    pub fn deadline(mut self, after: Duration) -> Self {
        self.inner.deadline_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Adds it paused: it fires nothing until resumed.
    #[must_use]
    pub fn paused(mut self) -> Self {
        self.inner.paused = true;
        self
    }
}

impl From<Schedule> for pb::Schedule {
    fn from(schedule: Schedule) -> Self {
        schedule.inner
    }
}

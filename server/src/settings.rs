//! The ranges of the broker's duration settings.
//!
//! Every duration an operator sets is bounded when the broker starts: a
//! value past its range is refused with an error that names the setting,
//! its value and the range. Why: the scheduler computes deadlines as
//! `now + lease` in unix milliseconds, and `--lease-ms
//! 18446744073709551615` wrapped that sum, so every assignment lapsed the
//! moment it was made. Bounding at the edge keeps that arithmetic plain;
//! durations that come in requests are bounded the same way by
//! [`crate::api::convert::check_ms`].

use std::time::Duration;

/// A duration setting in milliseconds and the range the broker accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis {
    /// The key in the configuration file; the flag is the same with `-`
    /// for `_` (`lease_ms`, `--lease-ms`).
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
}

/// `--lease-ms`: 1 ms to one day. A worker extends its leases with a
/// heartbeat every third of the lease, so a longer lease only delays the
/// redelivery of a crashed worker's runs.
pub const LEASE_MS: Millis = Millis {
    key: "lease_ms",
    min: 1,
    max: 24 * 60 * 60 * 1000,
};

/// `--leader-lease-ms` (PostgreSQL, several brokers): 100 ms to one
/// minute; default 5 s. A standby takes over within the lease after the
/// leader died, so a longer one only slows failover, and a shorter one
/// than the database's usual latency deposes healthy leaders.
pub const LEADER_LEASE_MS: Millis = Millis {
    key: "leader_lease_ms",
    min: 100,
    max: 60 * 1000,
};

/// `--handshake-timeout-ms`: 1 ms to ten minutes.
pub const HANDSHAKE_TIMEOUT_MS: Millis = Millis {
    key: "handshake_timeout_ms",
    min: 1,
    max: 10 * 60 * 1000,
};

/// `--retention-ms`: how long an ended chain is kept; 0 keeps them
/// forever, else one second to ten years. Default: seven days.
pub const RETENTION_MS: Millis = Millis {
    key: "retention_ms",
    min: 0,
    max: 10 * 366 * 24 * 60 * 60 * 1000,
};

/// Default of `--retention-ms`: seven days.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// `--priority-aging-ms`: the wait that raises a ready task one priority,
/// so that low priorities are not starved (see `scheduler::queues`); 0
/// keeps priorities strict, else one millisecond to one day.
pub const PRIORITY_AGING_MS: Millis = Millis {
    key: "priority_aging_ms",
    min: 0,
    max: 24 * 60 * 60 * 1000,
};

/// Default of `--priority-aging-ms`: one minute. A task of priority 0
/// behind a steady stream of 9s goes after nine minutes at most.
pub const DEFAULT_PRIORITY_AGING_MS: u64 = 60 * 1000;

/// A duration setting out of its range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name} is {value}: it must be between {min} and {max} ms")]
pub struct OutOfRange {
    /// The setting as the operator wrote it: a flag or a file key.
    pub name: String,
    /// The value given, in milliseconds ("more than 18446744073709551615"
    /// for a [`Duration`] past `u64` milliseconds).
    pub value: String,
    pub min: u64,
    pub max: u64,
}

impl Millis {
    /// The command-line flag of this setting (`--lease-ms`).
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// Checks a value given as `name` (the flag or the file key).
    ///
    /// # Errors
    /// [`OutOfRange`] when `ms` is outside `min..=max`.
    pub fn check(&self, name: &str, ms: u64) -> Result<(), OutOfRange> {
        if (self.min..=self.max).contains(&ms) {
            return Ok(());
        }
        Err(self.out_of_range(name, ms.to_string()))
    }

    /// Checks a [`Duration`] of the library's [`crate::Config`], named by
    /// its flag.
    ///
    /// # Errors
    /// [`OutOfRange`] when it is outside `min..=max` milliseconds (a
    /// fraction of a millisecond counts as the millisecond below).
    pub fn check_duration(&self, value: Duration) -> Result<(), OutOfRange> {
        match u64::try_from(value.as_millis()) {
            Ok(ms) => self.check(&self.flag(), ms),
            Err(_) => Err(self.out_of_range(&self.flag(), format!("more than {}", u64::MAX))),
        }
    }

    fn out_of_range(&self, name: &str, value: String) -> OutOfRange {
        OutOfRange {
            name: name.to_owned(),
            value,
            min: self.min,
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_is_named_with_its_range() {
        assert_eq!(LEASE_MS.check("--lease-ms", 30_000), Ok(()));
        let e = LEASE_MS.check("--lease-ms", u64::MAX).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--lease-ms is 18446744073709551615: it must be between 1 and 86400000 ms"
        );
        assert!(LEASE_MS.check("lease_ms", 0).is_err());
        let e = LEASE_MS.check_duration(Duration::MAX).unwrap_err();
        assert!(e.to_string().starts_with("--lease-ms is more than"), "{e}");
        assert_eq!(LEASE_MS.flag(), "--lease-ms");
    }
}

//! Durations and instants as the contract's milliseconds.
//!
//! `baton.v1` carries durations as milliseconds and times as unix
//! milliseconds, and reads 0 as "unset" (no timeout, no deadline, no ETA).
//! Callers of this crate use `std::time` types instead; these two functions
//! are the only place where they become numbers, so the rounding rule is
//! stated once: values are rounded *up* to a whole millisecond, so a wait is
//! never shortened and a value the caller set is never read as "unset".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `duration` in whole milliseconds, rounded up; saturates at `u64::MAX`.
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    let rounded_up = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(rounded_up).unwrap_or(u64::MAX)
}

/// `time` as unix milliseconds, rounded up, and at least 1: a time at or
/// before the epoch is long past, and must not read as 0 ("unset").
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => duration_ms(since_epoch).max(1),
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(duration_ms(Duration::ZERO), 0);
        assert_eq!(duration_ms(Duration::from_nanos(1)), 1);
        assert_eq!(duration_ms(Duration::from_micros(1500)), 2);
        assert_eq!(duration_ms(Duration::from_millis(30)), 30);
        assert_eq!(duration_ms(Duration::from_secs(60)), 60_000);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn times_are_unix_milliseconds_never_zero() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(time), 1_700_000_000_123);
        assert_eq!(unix_ms(time + Duration::from_micros(1)), 1_700_000_000_124);
        assert_eq!(unix_ms(UNIX_EPOCH), 1);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 1);
    }
}

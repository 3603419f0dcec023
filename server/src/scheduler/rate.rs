//! Rate limits: at most `count` starts of a throttle identity per period,
//! in bursts of at most `burst`.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a token bucket
//! that keeps no counter): an identity has one number, its *theoretical
//! arrival time* (`tat`), the time at which its bucket is full again. A
//! start is allowed at `now` when `tat <= now + tolerance`, where the
//! tolerance is `(burst - 1)` intervals; it moves `tat` one interval past
//! `max(tat, now)`. One number per identity is what makes the limit exact
//! across restarts: the store keeps it with the round that started the
//! task, and the broker that recovers reads it back.
//!
//! Times are microseconds of the broker's wall clock, so that a rate of
//! thousands a second is still exact. A clock stepped back would leave a
//! `tat` far ahead of `now`; it is clamped to the furthest a start can put
//! it (`now + tolerance + interval`), so a step costs at most one interval
//! of waiting, never the length of the step.

use crate::domain::{RateRecord, UnixMs};

/// A rate: at most `count` starts per `period_ms`, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
    /// Starts allowed at once after a quiet spell; at least 1 (evenly
    /// spaced starts, as Celery's `rate_limit`).
    pub burst: u32,
}

impl Rate {
    /// Microseconds between two starts at the steady rate, rounded up: with
    /// `count` starts per period, never `count + 1` in one period.
    pub fn interval_us(&self) -> u64 {
        let period_us = self.period_ms.saturating_mul(1000);
        period_us.div_ceil(u64::from(self.count.max(1))).max(1)
    }

    /// How far `tat` may run ahead of now: the burst beyond the first start.
    fn tolerance_us(&self) -> u64 {
        self.interval_us()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }

    /// Takes a start at `now_us` if the arrival time `tat` (`None`: a full
    /// bucket) allows one, moving `tat` on; else `Err` with the first time
    /// one is allowed, in microseconds. Either way `tat` comes back clamped
    /// (see the module doc), so the caller keeps it as it is.
    pub fn admit(&self, tat: &mut Option<u64>, now_us: u64) -> Result<(), u64> {
        let interval = self.interval_us();
        let tolerance = self.tolerance_us();
        let ceiling = now_us.saturating_add(tolerance).saturating_add(interval);
        let arrival = tat.unwrap_or(now_us).min(ceiling);
        if arrival <= now_us.saturating_add(tolerance) {
            *tat = Some(arrival.max(now_us).saturating_add(interval));
            Ok(())
        } else {
            *tat = Some(arrival);
            Err(arrival - tolerance)
        }
    }
}

impl From<&RateRecord> for Rate {
    fn from(r: &RateRecord) -> Self {
        Rate {
            count: r.count,
            period_ms: r.period_ms,
            burst: r.burst.max(1),
        }
    }
}

impl From<Rate> for RateRecord {
    fn from(r: Rate) -> Self {
        RateRecord {
            count: r.count,
            period_ms: r.period_ms,
            burst: r.burst,
        }
    }
}

/// `now` in the microseconds rate state is kept in.
pub fn us(now: UnixMs) -> u64 {
    now.saturating_mul(1000)
}

/// The first millisecond at or after `at_us`.
pub fn ms_ceil(at_us: u64) -> UnixMs {
    at_us.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn rate(count: u32, period_ms: u64, burst: u32) -> Rate {
        Rate {
            count,
            period_ms,
            burst,
        }
    }

    /// The times (µs) at which a caller asking every `step_us` from 0 to
    /// `until_us` gets a start.
    fn starts(r: Rate, step_us: u64, until_us: u64) -> Vec<u64> {
        let mut tat = None;
        let mut out = Vec::new();
        let mut now = 0;
        while now <= until_us {
            if r.admit(&mut tat, now).is_ok() {
                out.push(now);
            }
            now += step_us;
        }
        out
    }

    /// The most starts in any window of `period_us` (half-open).
    fn most_in_a_window(times: &[u64], period_us: u64) -> usize {
        times
            .iter()
            .map(|&t| {
                times
                    .iter()
                    .filter(|&&u| u >= t && u < t + period_us)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn evenly_spaced_without_a_burst() {
        let times = starts(rate(10, 1000, 1), 1000, 3 * S);
        // 10 a second over 3 s, asked every millisecond: one every 100 ms.
        assert_eq!(times.len(), 31);
        assert!(times.windows(2).all(|w| w[1] - w[0] == 100_000));
        assert_eq!(most_in_a_window(&times, S), 10);
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let times = starts(rate(10, 1000, 5), 1000, 3 * S);
        // Five at once (one per request, a request a millisecond), then one
        // every 100 ms.
        assert_eq!(times[..5], [0, 1000, 2000, 3000, 4000]);
        assert_eq!(times[5], 100_000);
        // In any second: the count, plus the burst beyond the first.
        assert!(most_in_a_window(&times, S) <= 10 + 4);
        assert_eq!(times.len(), 5 + 30);
    }

    #[test]
    fn a_rate_that_does_not_divide_the_period_never_exceeds_its_count() {
        // 3 a second: 333,334 µs apart, never 4 in one second.
        let times = starts(rate(3, 1000, 1), 1, 4 * S);
        assert_eq!(most_in_a_window(&times, S), 3);
        let times = starts(rate(7, 60_000, 1), 1000, 180 * S);
        assert_eq!(most_in_a_window(&times, 60 * S), 7);
    }

    #[test]
    fn a_refusal_names_the_first_time_allowed() {
        let r = rate(2, 1000, 1);
        let mut tat = None;
        assert_eq!(r.admit(&mut tat, 0), Ok(()));
        assert_eq!(tat, Some(500_000));
        assert_eq!(r.admit(&mut tat, 1), Err(500_000));
        assert_eq!(r.admit(&mut tat, 500_000), Ok(()));
        assert_eq!(tat, Some(1_000_000));
    }

    #[test]
    fn a_clock_stepped_back_costs_one_interval_not_the_step() {
        let r = rate(10, 1000, 1);
        // The arrival time was set an hour ahead of the clock now.
        let mut tat = Some(3600 * S);
        assert_eq!(r.admit(&mut tat, 0), Err(100_000));
        assert_eq!(r.admit(&mut tat, 100_000), Ok(()));
    }

    #[test]
    fn huge_values_saturate() {
        let r = rate(u32::MAX, u64::MAX, u32::MAX);
        assert!(r.admit(&mut Some(u64::MAX), u64::MAX).is_ok());
        let r = rate(1, u64::MAX, 1);
        let mut tat = None;
        assert!(r.admit(&mut tat, 0).is_ok());
        assert!(r.admit(&mut tat, 0).is_err());
        assert_eq!(ms_ceil(1), 1);
        assert_eq!(us(u64::MAX), u64::MAX);
    }
}

//! How the scheduler tells time, so that neither a step of the wall clock
//! nor a pause of the broker takes a lease from a live worker.
//!
//! Two readings:
//! - [`crate::domain::now_ms`] is unix milliseconds that never step: the
//!   wall clock read once at start, advanced by a monotonic clock. Every
//!   countdown, deadline and time limit is measured on it, so setting the
//!   system clock forward or back neither fires nor delays them.
//! - [`Awake`] counts only the time the scheduler was running. A lease
//!   lapses when the scheduler has been *awake* for the lease length since
//!   the worker's last heartbeat, not merely when that much time passed.
//!   After a pause (SIGSTOP, a VM frozen for a snapshot, a machine starved
//!   for seconds) the heartbeats a live worker sent meanwhile still wait in
//!   the broker's sockets; the timers would fire before they are read, and
//!   the run (with its throttle slot) would go to a second worker while the
//!   first one still runs it. Counting a gap between two readings as at
//!   most [`MAX_GAP`] keeps such a pause from counting against a lease.
//!
//! The driver reads the clock at least every [`TICK`] while it waits, so a
//! gap longer than [`MAX_GAP`] means the broker itself did not run, never
//! that it slept.

use std::time::{Duration, Instant};

/// The longest the scheduler's loop sleeps between two readings.
pub const TICK: Duration = Duration::from_millis(100);

/// The most a gap between two readings counts as awake time. Must be well
/// below a lease less its heartbeat period (a third of it), for the
/// shortest lease the broker accepts.
pub const MAX_GAP: Duration = Duration::from_millis(250);

/// Time the scheduler has been awake, in milliseconds since it started.
#[derive(Debug)]
pub struct Awake {
    last: Instant,
    awake: Duration,
}

impl Awake {
    pub fn start(now: Instant) -> Self {
        Awake {
            last: now,
            awake: Duration::ZERO,
        }
    }

    /// Reads the clock at `now`: the gap since the last reading counts in
    /// full up to [`MAX_GAP`]. Returns the awake milliseconds.
    pub fn observe(&mut self, now: Instant) -> u64 {
        let gap = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.awake += gap.min(MAX_GAP);
        self.ms()
    }

    pub fn ms(&self) -> u64 {
        u64::try_from(self.awake.as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_at_the_tick_count_in_full() {
        let t0 = Instant::now();
        let mut awake = Awake::start(t0);
        for i in 1..=50 {
            awake.observe(t0 + TICK * i);
        }
        assert_eq!(awake.ms(), 5_000);
    }

    #[test]
    fn a_pause_counts_as_one_gap_at_most() {
        let t0 = Instant::now();
        let mut awake = Awake::start(t0);
        awake.observe(t0 + Duration::from_secs(1));
        assert_eq!(awake.ms(), 250);
        // An 8 s pause after a second of ticks: one capped gap.
        let mut at = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            at += TICK;
            awake.observe(at);
        }
        assert_eq!(awake.ms(), 1_250);
        awake.observe(at + Duration::from_secs(8));
        assert_eq!(awake.ms(), 1_500);
    }

    #[test]
    fn a_reading_from_the_past_counts_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut awake = Awake::start(t0);
        awake.observe(t0 - Duration::from_secs(5));
        assert_eq!(awake.ms(), 0);
        awake.observe(t0 + TICK);
        assert_eq!(awake.ms(), 100);
    }
}

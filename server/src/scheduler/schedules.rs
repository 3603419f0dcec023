//! When a periodic schedule fires: cron expressions in a time zone, or a
//! fixed interval. Pure arithmetic on unix milliseconds, so the machine
//! stays deterministic (the time is an argument).
//!
//! Cron expressions are parsed and stepped by `croner`: five fields, or
//! six with seconds first, in an IANA time zone (UTC by default). Daylight
//! saving is handled as Vixie cron does: a fixed-time job whose time falls
//! in the hour skipped in spring runs right after the jump, and one in the
//! hour repeated in autumn runs once; jobs that repeat within the hour
//! (`*/15 * * * *`) follow the wall clock through both.
//!
//! **Which fire times fire** ([`Timing::due`]). When a schedule's timer
//! fires, the latest fire time passed fires if it is at most
//! [`ON_TIME_MS`] old (a busy or briefly paused broker is still on time).
//! Every other fire time passed since the last one handled is *missed*
//! (the broker was down, or stalled past a fire time): the schedule's
//! `catch_up` says how many of the latest missed times still fire, oldest
//! first; the rest are skipped, as a cron daemon that was not running
//! skips them. A paused schedule fires nothing, and its fire times while
//! paused are skipped.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::domain::UnixMs;

/// How late a fire time may be reached and still count as on time.
pub const ON_TIME_MS: u64 = 60_000;

/// Shortest interval of an interval schedule.
pub const MIN_EVERY_MS: u64 = 1000;

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    /// At the times a cron expression matches, on the wall clock of `tz`.
    Cron { cron: Box<Cron>, tz: Tz },
    /// Every `every_ms` after `anchor_ms` (the schedule's creation).
    Every { every_ms: u64, anchor_ms: UnixMs },
}

impl Timing {
    /// Parses a schedule's timing: `cron` (with `timezone`, empty for UTC)
    /// or `every_ms`, exactly one of them.
    ///
    /// # Errors
    /// A message naming what is wrong, for the client.
    pub fn parse(
        cron: &str,
        every_ms: u64,
        timezone: &str,
        anchor_ms: UnixMs,
    ) -> Result<Timing, String> {
        match (cron.trim().is_empty(), every_ms) {
            (true, 0) => Err("neither cron nor every_ms is set: a schedule needs one".into()),
            (false, n) if n > 0 => Err("both cron and every_ms are set: give one".into()),
            (false, _) => {
                let tz = if timezone.is_empty() {
                    Tz::UTC
                } else {
                    Tz::from_str(timezone).map_err(|_| {
                        format!(
                            "timezone {timezone:?} is not an IANA time zone (like Europe/Berlin \
                             or America/New_York)"
                        )
                    })?
                };
                let parsed = Cron::from_str(cron)
                    .map_err(|e| format!("cron {cron:?} is not a cron expression: {e}"))?;
                Ok(Timing::Cron {
                    cron: Box::new(parsed),
                    tz,
                })
            }
            (true, n) => {
                if !timezone.is_empty() {
                    return Err("timezone is set with every_ms: it applies to cron only".into());
                }
                if n < MIN_EVERY_MS {
                    return Err(format!(
                        "every_ms is {n}: the shortest interval is {MIN_EVERY_MS} ms"
                    ));
                }
                Ok(Timing::Every {
                    every_ms: n,
                    anchor_ms,
                })
            }
        }
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: UnixMs) -> Option<UnixMs> {
        match self {
            Timing::Cron { cron, tz } => {
                let at = local(after, *tz)?;
                let next = cron.find_next_occurrence(&at, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
            Timing::Every {
                every_ms,
                anchor_ms,
            } => {
                let periods = after.saturating_sub(*anchor_ms) / every_ms;
                anchor_ms.checked_add((periods + 1).checked_mul(*every_ms)?)
            }
        }
    }

    /// The last fire time at or before `at`, if any is after `since`.
    fn latest(&self, at: UnixMs, since: UnixMs) -> Option<UnixMs> {
        let found = match self {
            Timing::Cron { cron, tz } => {
                let local_at = local(at, *tz)?;
                let prev = cron.find_previous_occurrence(&local_at, true).ok()?;
                u64::try_from(prev.timestamp_millis()).ok()?
            }
            Timing::Every {
                every_ms,
                anchor_ms,
            } => {
                let periods = at.checked_sub(*anchor_ms)? / every_ms;
                anchor_ms + periods * every_ms
            }
        };
        (found > since).then_some(found)
    }

    /// The fire times after `last` (the last one handled) up to `now` that
    /// fire: the latest if it is on time, and the latest `catch_up` of those
    /// missed; oldest first. Also returns the latest fire time at or before
    /// `now`, handled from here on whether it fired or was skipped.
    pub fn due(&self, last: UnixMs, now: UnixMs, catch_up: u32) -> (Vec<UnixMs>, UnixMs) {
        let mut fire = Vec::new();
        let Some(latest) = self.latest(now, last) else {
            return (fire, last);
        };
        let mut missed = None;
        if latest > now.saturating_sub(ON_TIME_MS) {
            fire.push(latest);
            missed = latest.checked_sub(1).and_then(|t| self.latest(t, last));
        } else {
            missed = missed.or(Some(latest));
        }
        let mut caught_up = 0;
        while let Some(t) = missed.filter(|_| caught_up < catch_up) {
            fire.push(t);
            caught_up += 1;
            missed = t
                .checked_sub(1)
                .and_then(|before| self.latest(before, last));
        }
        fire.reverse();
        (fire, latest)
    }
}

fn local(ms: UnixMs, tz: Tz) -> Option<DateTime<Tz>> {
    let utc = Utc.timestamp_millis_opt(i64::try_from(ms).ok()?).single()?;
    Some(utc.with_timezone(&tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC wall time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> UnixMs {
        let t = Utc
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid");
        u64::try_from(t.timestamp_millis()).expect("after 1970")
    }

    #[test]
    fn bad_timings_are_refused_with_what_is_wrong() {
        let err = |c: &str, e: u64, tz: &str| Timing::parse(c, e, tz, 0).unwrap_err();
        assert!(err("", 0, "").contains("neither cron nor every_ms"));
        assert!(err("* * * * *", 5000, "").contains("both cron and every_ms"));
        assert!(err("61 * * * *", 0, "").contains("is not a cron expression"));
        assert!(err("* * * * *", 0, "Mars/Olympus").contains("not an IANA time zone"));
        assert!(err("", 500, "").contains("shortest interval is 1000 ms"));
        assert!(err("", 5000, "UTC").contains("applies to cron only"));
    }

    #[test]
    fn a_cron_fires_on_the_wall_clock_of_its_time_zone() {
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 in summer.
        let t = Timing::parse("0 9 * * *", 0, "Europe/Berlin", 0).unwrap();
        let jan = t.next_after(utc(2026, 1, 10, 0, 0)).unwrap();
        assert_eq!(jan, utc(2026, 1, 10, 8, 0));
        let jul = t.next_after(utc(2026, 7, 10, 0, 0)).unwrap();
        assert_eq!(jul, utc(2026, 7, 10, 7, 0));
    }

    #[test]
    fn daylight_saving_days_fire_a_fixed_time_job_once() {
        // Berlin: 2026-03-29 02:00 -> 03:00 (02:30 does not exist);
        // 2026-10-25 03:00 -> 02:00 (02:30 happens twice).
        let t = Timing::parse("30 2 * * *", 0, "Europe/Berlin", 0).unwrap();
        let fires = |from: UnixMs, to: UnixMs| {
            let mut out = Vec::new();
            let mut at = from;
            while let Some(next) = t.next_after(at).filter(|n| *n < to) {
                out.push(next);
                at = next;
            }
            out
        };
        let spring = fires(utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 12, 0));
        // Right after the jump: 03:00 CEST is 01:00 UTC.
        assert_eq!(spring, [utc(2026, 3, 29, 1, 0)]);
        let autumn = fires(utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 12, 0));
        assert_eq!(autumn.len(), 1, "{autumn:?}");
    }

    #[test]
    fn missed_times_fire_up_to_catch_up_and_on_time_ones_always() {
        let t = Timing::parse("", 60_000, "", 0).unwrap();
        let now = 10 * 60_000 + 5;
        // Down since minute 2: minutes 3..=10 passed; minute 10 is on time.
        let (fire, latest) = t.due(2 * 60_000, now, 0);
        assert_eq!(fire, [10 * 60_000]);
        assert_eq!(latest, 10 * 60_000);
        let (fire, _) = t.due(2 * 60_000, now, 2);
        assert_eq!(fire, [8 * 60_000, 9 * 60_000, 10 * 60_000]);
        let (fire, _) = t.due(2 * 60_000, now, 100);
        assert_eq!(fire.len(), 8);
        // Nothing new since the last handled time.
        assert_eq!(t.due(10 * 60_000, now, 5), (vec![], 10 * 60_000));
        // A fire time found two minutes late is missed too.
        let t = Timing::parse("", 300_000, "", 0).unwrap();
        let late = 300_000 + 120_000;
        assert_eq!(t.due(0, late, 0), (vec![], 300_000));
        assert_eq!(t.due(0, late, 1), (vec![300_000], 300_000));
    }

    #[test]
    fn an_interval_counts_from_its_anchor() {
        let t = Timing::parse("", 5000, "", 1_000).unwrap();
        assert_eq!(t.next_after(0), Some(6_000));
        assert_eq!(t.next_after(6_000), Some(11_000));
        assert_eq!(t.next_after(6_001), Some(11_000));
    }
}

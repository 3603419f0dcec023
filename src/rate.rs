//! Rates as people write them: `"10/s"`, `"100/m"`, `"5/h"`, `"1000/d"`,
//! and `"3/10s"` (3 per 10 seconds): Celery's `rate_limit` spelling, with
//! a period that may carry a number. Shared by the Rust SDK
//! ([`crate::Throttle::per`]) and the `baton` command.

use crate::pb;

/// Reads a rate: `COUNT/PERIOD`, where PERIOD is a unit (`ms`, `s`, `m`,
/// `h`, `d`), optionally after a number (`10s`). The burst is left at its
/// default (evenly spaced starts).
///
/// # Errors
///
/// A message naming what is wrong: `"10/x": the period "x" is not a unit
/// (ms, s, m, h, d)`, a count of 0, a period over a day.
pub fn parse_rate(text: &str) -> Result<pb::Rate, String> {
    let bad = |why: String| format!("rate {text:?}: {why}");
    let (count, period) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("expected COUNT/PERIOD, such as 10/s or 100/m".into()))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| bad(format!("the count {count:?} is not a whole number")))?;
    if count == 0 {
        return Err(bad("the count is 0: a rate allows at least 1 start".into()));
    }
    let period = period.trim();
    let digits = period
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(period.len());
    let (number, unit) = period.split_at(digits);
    let number: u64 = if number.is_empty() {
        1
    } else {
        number
            .parse()
            .map_err(|_| bad(format!("the period {period:?} is too long")))?
    };
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" | "sec" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(bad(format!(
                "the period {other:?} is not a unit (ms, s, m, h, d)"
            )));
        }
    };
    let period_ms = number.saturating_mul(unit_ms);
    if !(1..=86_400_000).contains(&period_ms) {
        return Err(bad("the period must be between 1 ms and a day".into()));
    }
    Ok(pb::Rate {
        count,
        period_ms,
        burst: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (u32, u64) {
        let r = parse_rate(text).unwrap();
        (r.count, r.period_ms)
    }

    #[test]
    fn celerys_spellings_and_a_numbered_period() {
        assert_eq!(ok("10/s"), (10, 1000));
        assert_eq!(ok("100/m"), (100, 60_000));
        assert_eq!(ok("5/h"), (5, 3_600_000));
        assert_eq!(ok("1000/d"), (1000, 86_400_000));
        assert_eq!(ok(" 3 / 10s "), (3, 10_000));
        assert_eq!(ok("1/250ms"), (1, 250));
    }

    #[test]
    fn bad_rates_say_what_is_wrong() {
        for (text, says) in [
            ("10", "expected COUNT/PERIOD"),
            ("ten/s", "is not a whole number"),
            ("0/s", "the count is 0"),
            ("10/x", "is not a unit"),
            ("10/2d", "between 1 ms and a day"),
            ("10/0s", "between 1 ms and a day"),
            ("10/99999999999999999999s", "too long"),
        ] {
            let error = parse_rate(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}

//! Durations as the command line writes them (`300s`, `1500ms`, `5m`) and
//! ranges of them (`8s..15s`), from which the seeded schedule draws.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; a bare number
/// is seconds.
///
/// # Errors
/// A message naming what is wrong, for clap to show.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 300s, 1500ms or 5m"))?;
    let millis = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (ms, s, m or h)")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Writes a duration the way [`parse_duration`] reads it.
pub fn show(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A range of durations `min..max` (inclusive), or one duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub min: Duration,
    /// At least `min`.
    pub max: Duration,
}

impl Span {
    /// A uniformly drawn duration within the range, to the millisecond.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Duration {
        let min = u64::try_from(self.min.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(self.max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.u64(min..=max))
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
            None => {
                let one = parse_duration(text)?;
                (one, one)
            }
        };
        if max < min {
            return Err(format!("{text:?}: the upper bound is below the lower"));
        }
        Ok(Span { min, max })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", show(self.min))
        } else {
            write!(f, "{}..{}", show(self.min), show(self.max))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(show(Duration::from_secs(8)), "8s");
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn spans_draw_within_their_bounds() {
        let span: Span = "8s..15s".parse().unwrap();
        assert_eq!(span.to_string(), "8s..15s");
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let d = span.pick(&mut rng);
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(15));
        }
        let fixed: Span = "2s".parse().unwrap();
        assert_eq!(fixed.pick(&mut rng), Duration::from_secs(2));
        assert!("3s..1s".parse::<Span>().is_err());
    }
}

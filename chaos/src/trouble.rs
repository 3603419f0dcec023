//! Faults besides kills, each an episode with a start and an end, drawn
//! from the seed like the kills (see `run`): a full disk (the broker's
//! RLIMIT_FSIZE capped with `prlimit`), no descriptor left (its
//! RLIMIT_NOFILE lowered to its lowest free descriptor) and a pause (SIGSTOP
//! for longer than the lease, then SIGCONT). One episode at a time, a
//! lease and a second apart; a broker killed during one ends it (the next
//! incarnation starts without the limit). The checker is told when each one lasted: the broker's
//! ERROR lines during a full disk or no descriptor (and a few seconds
//! after, while it repairs) are expected, and a lease that lapsed right
//! after a pause while its worker was alive is a violation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::journal::now_ns;
use crate::procs::{self, Broker};
use crate::span::{Span, show};

/// After a full disk or no descriptor, how long the broker's ERROR lines
/// are still expected: its next repair may come 2 s after the trouble ends
/// (the backoff's longest pause), and takes a moment.
pub const REPAIR_GRACE: Duration = Duration::from_secs(5);

/// What an episode does to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DiskFull,
    NoDescriptors,
    Paused,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DiskFull => "disk full",
            Kind::NoDescriptors => "no descriptor left",
            Kind::Paused => "paused",
        }
    }
}

/// One episode, as the checker needs it (journal clock, nanoseconds).
#[derive(Clone, Debug)]
pub struct Episode {
    pub kind: Kind,
    /// The broker's incarnation it hit.
    pub incarnation: u32,
    pub pid: u32,
    pub start: u64,
    /// When it was lifted (or its broker killed); the end of the run's
    /// fault phase at the latest.
    pub end: u64,
    /// How it was set: the limit, or the pause's length.
    pub detail: String,
}

/// How often, and for how long, each kind comes.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub kind: Kind,
    pub every: Span,
    pub lasting: Span,
}

/// The episodes of a run: those over, and the one under way.
pub struct Troubles {
    plans: Vec<(Plan, Instant)>,
    rng: fastrand::Rng,
    /// The broker's data directory.
    data: PathBuf,
    /// The episode under way, until when, and the limit to put back.
    current: Option<(Episode, Instant, Option<u64>)>,
    /// How long after an episode the next may start, and when that is.
    quiet: Duration,
    quiet_until: Instant,
    pub done: Vec<Episode>,
}

impl Troubles {
    /// `quiet`: how long after an episode the next may start, so that
    /// what follows one (a lease that lapses after a pause, a repair after
    /// a full disk) is not taken for the effect of the next.
    pub fn new(
        plans: Vec<Plan>,
        seed: u64,
        started: Instant,
        data: PathBuf,
        quiet: Duration,
    ) -> Self {
        // A stream of its own, so the plan and the kills do not change
        // with these settings.
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x7e0b_1e00_0000_0019);
        let plans = plans
            .into_iter()
            .map(|p| {
                let first = started + p.every.pick(&mut rng);
                (p, first)
            })
            .collect();
        Troubles {
            plans,
            rng,
            data,
            current: None,
            quiet,
            quiet_until: started,
            done: Vec::new(),
        }
    }

    /// When something is due next.
    pub fn next(&self) -> Option<Instant> {
        match &self.current {
            Some((_, until, _)) => Some(*until),
            None => self
                .plans
                .iter()
                .map(|(_, at)| *at)
                .min()
                .map(|at| at.max(self.quiet_until)),
        }
    }

    /// Ends the episode under way when it is over (or its broker died) and
    /// starts one that is due.
    ///
    /// # Errors
    /// When a limit or a signal cannot be set on a live broker.
    pub fn tick(&mut self, broker: &Broker) -> anyhow::Result<()> {
        let now = Instant::now();
        if let Some((episode, until, _)) = &self.current
            && (now >= *until || broker.pid() != Some(episode.pid))
        {
            self.lift(broker)?;
        }
        if self.current.is_some() || now < self.quiet_until {
            return Ok(());
        }
        let Some(i) = (0..self.plans.len()).find(|i| self.plans[*i].1 <= now) else {
            return Ok(());
        };
        let plan = self.plans[i].0;
        let lasting = plan.lasting.pick(&mut self.rng);
        self.plans[i].1 = now + lasting + plan.every.pick(&mut self.rng);
        let Some(pid) = broker.pid() else {
            return Ok(());
        };
        let (restore, detail) = match plan.kind {
            Kind::DiskFull => {
                // Half the episodes let no file grow past its size (writes
                // over old bytes still succeed, new blob files get up to
                // the store's size); half let nothing be written at all.
                let cap = if self.rng.bool() {
                    std::fs::metadata(self.data.join("db")).map_or(0, |m| m.len())
                } else {
                    0
                };
                procs::set_limit(pid, "fsize", Some(cap))?;
                (None, format!("file size capped at {cap} bytes"))
            }
            Kind::NoDescriptors => {
                let soft = procs::soft_limit(pid, "nofile")?;
                let free = procs::lowest_free_fd(pid)?;
                procs::set_limit(pid, "nofile", Some(free))?;
                (soft, format!("descriptors capped at {free}"))
            }
            Kind::Paused => {
                procs::signal(pid, "STOP")?;
                (None, format!("stopped for {}", show(lasting)))
            }
        };
        let episode = Episode {
            kind: plan.kind,
            incarnation: broker.incarnation,
            pid,
            start: now_ns(),
            end: 0,
            detail,
        };
        self.current = Some((episode, now + lasting, restore));
        Ok(())
    }

    /// Ends the episode under way, if any: the limit goes back (or the
    /// broker continues) unless that broker is gone.
    ///
    /// # Errors
    /// When a limit or a signal cannot be set on a live broker.
    pub fn lift(&mut self, broker: &Broker) -> anyhow::Result<()> {
        let Some((mut episode, _, restore)) = self.current.take() else {
            return Ok(());
        };
        if broker.pid() == Some(episode.pid) {
            match episode.kind {
                Kind::DiskFull => procs::set_limit(episode.pid, "fsize", None)?,
                Kind::NoDescriptors => procs::set_limit(episode.pid, "nofile", restore)?,
                Kind::Paused => procs::signal(episode.pid, "CONT")?,
            }
        }
        episode.end = now_ns();
        self.done.push(episode);
        self.quiet_until = Instant::now() + self.quiet;
        Ok(())
    }

    /// One line per kind: how many episodes, and how long in all.
    pub fn summary(&self) -> Vec<String> {
        [Kind::DiskFull, Kind::NoDescriptors, Kind::Paused]
            .into_iter()
            .filter_map(|kind| {
                let of: Vec<&Episode> = self.done.iter().filter(|e| e.kind == kind).collect();
                if of.is_empty() {
                    return None;
                }
                let ms = |e: &Episode| e.end.saturating_sub(e.start) / 1_000_000;
                let total: u64 = of.iter().map(|e| ms(e)).sum();
                let longest = of.iter().map(|e| ms(e)).max().unwrap_or(0);
                Some(format!(
                    "{}: {} episodes, {total} ms in all, the longest {longest} ms ({})",
                    kind.name(),
                    of.len(),
                    of.iter()
                        .map(|e| e.detail.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            })
            .collect()
    }
}

/// Nanoseconds since the epoch of an RFC 3339 UTC time as tracing's JSON
/// logs write it (`2026-12-04T16:23:19.917519Z`).
pub fn rfc3339_ns(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 24 + h) * 60 + min) * 60 * 1_000_000_000 + s * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_read_as_journal_times() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ns("2026-12-04T16:23:19.917519Z"),
            Some(1_796_401_399_917_519_000)
        );
        assert_eq!(
            rfc3339_ns("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(rfc3339_ns("not a time"), None);
    }
}

//! A chain's history: what happened to it and when.
//!
//! Watchers see events as they happen; an operator who opens a chain later
//! (why did it take an hour? which worker lost it?) needs them afterwards.
//! Most of that is in the chain's record already: each step's last start,
//! its worker, its end and its failure, the chain's end. What a record
//! loses is an attempt that ended without ending its step (a retry, a
//! poll, a run lost to a lapsed lease): the next attempt overwrites it. So
//! the scheduler keeps only those in the record ([`ChainRecord::history`]),
//! and [`view`] rebuilds the whole history from the record when a client
//! reads it. A chain whose steps run once costs no history bytes in its
//! record and no work on the hot path.
//!
//! It is bounded, whatever a task does: a task that polls every 5 ms for a
//! day, or retries a thousand times, must not grow its record without end.
//! Consecutive polls of one step fold into one entry with a count, and past
//! [`HISTORY_KEPT`] kept entries the oldest ones after the first
//! [`HISTORY_HEAD`] are dropped (and counted): the start and the latest
//! events are what an operator reads.

use crate::domain::{
    ChainRecord, ChainState, FailureRecord, Phase, StepAt, StepRecord, StepState, UnixMs,
};

/// Entries a chain keeps in its record at most.
pub const HISTORY_KEPT: usize = 100;

/// The first kept entries, kept however long the history grows.
pub const HISTORY_HEAD: usize = 10;

/// Longest detail kept in an entry, in bytes (an error's type and the start
/// of its message; the full last failure is the step's failure record).
pub const DETAIL_MAX: usize = 200;

/// What happened. The names are the watch stream's event kinds
/// (`ChainEvent.kind`) plus "requeued".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum EventKind {
    Unspecified = 0,
    /// An attempt was assigned to a worker.
    StepStarted = 1,
    StepSucceeded = 2,
    /// A retryable failure; a retry is scheduled.
    StepRetrying = 3,
    /// A retry-later outcome.
    StepPolling = 4,
    /// For good: retries or polls exhausted, a fatal failure, a time limit.
    StepFailed = 5,
    /// Its worker's lease lapsed; the step went back to its queue.
    StepLost = 6,
    /// A group or a nested executor started its child chains.
    StepWaiting = 7,
    ChainSucceeded = 8,
    ChainFailed = 9,
    ChainCancelled = 10,
    /// A failed chain was submitted again as a new chain (`Admin.RequeueChain`).
    Requeued = 11,
}

impl EventKind {
    /// The name clients see (`ChainEvent.kind`, `HistoryEntry.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Unspecified => "unspecified",
            EventKind::StepStarted => "step_started",
            EventKind::StepSucceeded => "step_succeeded",
            EventKind::StepRetrying => "step_retrying",
            EventKind::StepPolling => "step_polling",
            EventKind::StepFailed => "step_failed",
            EventKind::StepLost => "step_lost",
            EventKind::StepWaiting => "step_waiting",
            EventKind::ChainSucceeded => "chain_succeeded",
            EventKind::ChainFailed => "chain_failed",
            EventKind::ChainCancelled => "chain_cancelled",
            EventKind::Requeued => "requeued",
        }
    }
}

/// One event in a chain's record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryEntry {
    #[prost(enumeration = "EventKind", tag = "1")]
    pub kind: i32,
    /// When it happened (for folded polls: the latest).
    #[prost(uint64, tag = "2")]
    pub at_ms: UnixMs,
    /// The step it is about; UNSPECIFIED for the chain's own events.
    #[prost(enumeration = "Phase", tag = "3")]
    pub phase: i32,
    #[prost(uint32, tag = "4")]
    pub index: u32,
    /// The step's attempt number then.
    #[prost(uint32, tag = "5")]
    pub attempt: u32,
    /// The worker, on a start and on a lost run (the other events of an
    /// attempt happened on the worker that started it).
    #[prost(string, tag = "6")]
    pub worker: String,
    /// An error's type and the start of its message, a poll's message, a
    /// cancellation's reason, the new chain's id for "requeued".
    #[prost(string, tag = "7")]
    pub detail: String,
    /// Retrying and polling: when the step is due again.
    #[prost(uint64, tag = "8")]
    pub next_ms: UnixMs,
    /// Polling: how many more polls of the same step were folded into this
    /// entry (their runs' starts included).
    #[prost(uint32, tag = "9")]
    pub repeats: u32,
}

impl HistoryEntry {
    /// An entry about the chain itself.
    pub fn chain(kind: EventKind, at_ms: UnixMs, detail: &str) -> Self {
        HistoryEntry {
            kind: kind as i32,
            at_ms,
            detail: shorten(detail),
            ..HistoryEntry::default()
        }
    }

    /// An entry about the step at `at`.
    pub fn step(kind: EventKind, at_ms: UnixMs, at: StepAt, attempt: u32) -> Self {
        HistoryEntry {
            kind: kind as i32,
            at_ms,
            phase: at.phase as i32,
            index: u32::try_from(at.index).unwrap_or(u32::MAX),
            attempt,
            ..HistoryEntry::default()
        }
    }

    /// The end of an attempt of `step` (at `at`) that did not end it:
    /// `kind` is retrying (with its failure), polling (with the poll's
    /// `detail`) or lost (with the worker that lost it and why, `detail`),
    /// and when the step is due again.
    pub fn attempt_end(
        kind: EventKind,
        now: UnixMs,
        at: StepAt,
        step: &StepRecord,
        detail: &str,
    ) -> Self {
        let end = HistoryEntry::step(kind, now, at, step.attempts);
        match kind {
            EventKind::StepRetrying => end
                .with_detail(&summary(step.failure.as_ref()))
                .with_next(step.not_before_ms),
            EventKind::StepPolling => end.with_detail(detail).with_next(step.not_before_ms),
            _ => end.with_worker(&step.worker).with_detail(detail),
        }
    }

    pub fn with_worker(mut self, worker: &str) -> Self {
        self.worker = worker.to_owned();
        self
    }

    pub fn with_detail(mut self, detail: &str) -> Self {
        self.detail = shorten(detail);
        self
    }

    pub fn with_next(mut self, next_ms: UnixMs) -> Self {
        self.next_ms = next_ms;
        self
    }

    fn is(&self, kind: EventKind, phase: i32, index: u32) -> bool {
        self.kind == kind as i32 && self.phase == phase && self.index == index
    }
}

/// "ErrorType: message" of a failure; empty for none.
fn summary(failure: Option<&FailureRecord>) -> String {
    failure.map_or(String::new(), |f| {
        format!("{}: {}", f.error_type, f.message)
    })
}

/// `detail` cut to [`DETAIL_MAX`] bytes at a character boundary.
fn shorten(detail: &str) -> String {
    if detail.len() <= DETAIL_MAX {
        return detail.to_owned();
    }
    let mut end = DETAIL_MAX;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &detail[..end])
}

impl ChainRecord {
    /// An attempt of the step at `at` ended without ending the step
    /// (`end`: retrying, polling or lost): keeps its start and its end,
    /// which the next attempt overwrites in the step's record. A poll
    /// right after a poll of the same step folds into it (see the module's
    /// doc).
    pub fn record_attempt(&mut self, at: StepAt, end: HistoryEntry) {
        let step = self.step(at);
        let started = HistoryEntry::step(EventKind::StepStarted, step.started_ms, at, end.attempt)
            .with_worker(&step.worker);
        if let Some(last) = self.history.last_mut() {
            let folds = end.kind == EventKind::StepPolling as i32
                && last.is(EventKind::StepPolling, end.phase, end.index);
            if folds {
                let repeats = last.repeats.saturating_add(1);
                *last = HistoryEntry { repeats, ..end };
                return;
            }
        }
        self.record(started);
        self.record(end);
    }

    /// Keeps `entry` (bounded: see the module's doc).
    pub fn record(&mut self, entry: HistoryEntry) {
        if self.history.len() >= HISTORY_KEPT {
            self.history.remove(HISTORY_HEAD);
            self.history_dropped = self.history_dropped.saturating_add(1);
        }
        self.history.push(entry);
    }
}

/// The chain's whole history, oldest first: the entries its record keeps
/// and the ones its record says otherwise (each step's current or last
/// attempt and its end, the chain's end).
pub fn view(chain: &ChainRecord) -> Vec<HistoryEntry> {
    let mut out = chain.history.clone();
    let summary = |f: Option<&crate::domain::FailureRecord>| {
        f.map_or(String::new(), |f| {
            format!("{}: {}", f.error_type, f.message)
        })
    };
    for phase in [Phase::Main, Phase::OnSuccess, Phase::OnFailure] {
        for (index, step) in chain.steps_of(phase).iter().enumerate() {
            let at = StepAt { phase, index };
            if (step.attempts == 0 && !step.has_children()) || step.started_ms == 0 {
                continue;
            }
            // Its current or last attempt, unless kept already (it ended
            // in a retry, a poll or a loss and the next has not started).
            let kept = chain.history.iter().any(|e| {
                e.phase == phase as i32
                    && e.index == u32::try_from(index).unwrap_or(u32::MAX)
                    && e.attempt == step.attempts
                    && e.kind != EventKind::StepStarted as i32
            });
            if step.has_children() {
                out.push(HistoryEntry::step(
                    EventKind::StepWaiting,
                    step.started_ms,
                    at,
                    0,
                ));
            } else if !kept {
                out.push(
                    HistoryEntry::step(EventKind::StepStarted, step.started_ms, at, step.attempts)
                        .with_worker(&step.worker),
                );
            }
            let attempt = step.attempts;
            match step.state() {
                StepState::Succeeded => out.push(HistoryEntry::step(
                    EventKind::StepSucceeded,
                    step.finished_ms,
                    at,
                    attempt,
                )),
                StepState::Failed => out.push(
                    HistoryEntry::step(EventKind::StepFailed, step.finished_ms, at, attempt)
                        .with_detail(&summary(step.failure.as_ref())),
                ),
                _ => {}
            }
        }
    }
    let end = match chain.state() {
        ChainState::Succeeded => Some((EventKind::ChainSucceeded, String::new())),
        ChainState::Failed => Some((EventKind::ChainFailed, summary(chain.failure.as_ref()))),
        ChainState::Cancelled => Some((EventKind::ChainCancelled, chain.cancel_reason.clone())),
        _ => None,
    };
    if let Some((kind, detail)) = end {
        out.push(HistoryEntry::chain(kind, chain.finished_ms, &detail));
    }
    // In time; within a millisecond, in the order they happen: main steps
    // before callbacks, a step before the next, an attempt before the
    // next, a start before its end, the chain's own events last.
    out.sort_by_key(|e| {
        let phase = match Phase::try_from(e.phase) {
            Ok(Phase::Main) => 0,
            Ok(Phase::OnSuccess) => 1,
            Ok(Phase::OnFailure) => 2,
            _ => 3,
        };
        (e.at_ms, phase, e.index, e.attempt, e.kind)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StepRecord;

    fn at(index: usize) -> StepAt {
        StepAt {
            phase: Phase::Main,
            index,
        }
    }

    fn kinds(entries: &[HistoryEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let kind = EventKind::try_from(e.kind).unwrap().as_str();
                if e.phase == Phase::Unspecified as i32 {
                    kind.to_owned()
                } else {
                    format!("{kind} #{} a{}", e.index, e.attempt)
                }
            })
            .collect()
    }

    /// A running chain of `steps` tasks, none started.
    fn chain(steps: usize) -> ChainRecord {
        ChainRecord {
            state: ChainState::Running as i32,
            steps: (0..steps).map(|_| StepRecord::default()).collect(),
            ..ChainRecord::default()
        }
    }

    fn start(rec: &mut ChainRecord, i: usize, t: UnixMs, worker: &str) {
        let step = rec.step_mut(at(i));
        step.attempts += 1;
        step.started_ms = t;
        step.worker = worker.into();
    }

    fn succeed(rec: &mut ChainRecord, i: usize, t: UnixMs) {
        let step = rec.step_mut(at(i));
        step.finished_ms = t;
        step.set_state(StepState::Succeeded);
    }

    #[test]
    fn a_chain_whose_steps_ran_once_keeps_nothing_and_shows_everything() {
        let mut rec = chain(2);
        start(&mut rec, 0, 10, "w1");
        succeed(&mut rec, 0, 11);
        start(&mut rec, 1, 11, "w2");
        succeed(&mut rec, 1, 11);
        rec.state = ChainState::Succeeded as i32;
        rec.finished_ms = 11;
        assert!(rec.history.is_empty());
        let v = view(&rec);
        assert_eq!(
            kinds(&v),
            [
                "step_started #0 a1",
                "step_succeeded #0 a1",
                "step_started #1 a1",
                "step_succeeded #1 a1",
                "chain_succeeded"
            ]
        );
        assert_eq!((v[0].worker.as_str(), v[2].worker.as_str()), ("w1", "w2"));
    }

    #[test]
    fn retries_keep_each_ended_attempt_and_show_the_current_one() {
        let mut rec = chain(1);
        for attempt in 1..=2 {
            start(&mut rec, 0, attempt * 10, &format!("w{attempt}"));
            let end = HistoryEntry::step(
                EventKind::StepRetrying,
                attempt * 10 + 1,
                at(0),
                u32::try_from(attempt).unwrap(),
            )
            .with_detail("Flaky: no")
            .with_next(attempt * 10 + 5);
            rec.record_attempt(at(0), end);
        }
        // Between attempts: nothing running, nothing to derive.
        assert_eq!(
            kinds(&view(&rec)),
            [
                "step_started #0 a1",
                "step_retrying #0 a1",
                "step_started #0 a2",
                "step_retrying #0 a2"
            ]
        );
        start(&mut rec, 0, 30, "w3");
        let v = view(&rec);
        assert_eq!(kinds(&v)[4..], ["step_started #0 a3"]);
        assert_eq!(
            (
                v[0].worker.as_str(),
                v[2].worker.as_str(),
                v[4].worker.as_str()
            ),
            ("w1", "w2", "w3")
        );
    }

    #[test]
    fn polls_of_one_step_fold_into_one_entry_with_a_count() {
        let mut rec = chain(1);
        for attempt in 1..=50u32 {
            start(&mut rec, 0, attempt.into(), "w");
            rec.record_attempt(
                at(0),
                HistoryEntry::step(EventKind::StepPolling, attempt.into(), at(0), attempt)
                    .with_detail(&format!("not yet {attempt}")),
            );
        }
        start(&mut rec, 0, 51, "w");
        succeed(&mut rec, 0, 52);
        assert_eq!(
            kinds(&view(&rec)),
            [
                "step_started #0 a1",
                "step_polling #0 a50",
                "step_started #0 a51",
                "step_succeeded #0 a51"
            ]
        );
        let polled = &rec.history[1];
        assert_eq!((polled.repeats, polled.at_ms), (49, 50));
        assert_eq!(polled.detail, "not yet 50");
        assert_eq!(rec.history_dropped, 0);
    }

    #[test]
    fn a_long_history_keeps_its_start_and_its_latest_entries() {
        let mut rec = chain(1);
        for attempt in 1..=1000u32 {
            start(&mut rec, 0, attempt.into(), "w");
            rec.record_attempt(
                at(0),
                HistoryEntry::step(EventKind::StepLost, attempt.into(), at(0), attempt),
            );
        }
        assert_eq!(rec.history.len(), HISTORY_KEPT);
        assert_eq!(rec.history_dropped, 2000 - 100);
        let attempts: Vec<u32> = rec.history.iter().map(|e| e.attempt).collect();
        assert_eq!(attempts[..HISTORY_HEAD], [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        assert_eq!(attempts[HISTORY_HEAD..HISTORY_HEAD + 2], [956, 956]);
        assert_eq!(attempts.last(), Some(&1000));
    }

    #[test]
    fn within_a_millisecond_the_order_is_the_order_things_happen() {
        // A main step fails, on_failure runs, the chain fails: all at 7.
        let mut rec = chain(1);
        rec.on_failure.push(StepRecord::default());
        start(&mut rec, 0, 7, "w");
        let step = rec.step_mut(at(0));
        step.finished_ms = 7;
        step.set_state(StepState::Failed);
        let handler = StepAt {
            phase: Phase::OnFailure,
            index: 0,
        };
        let step = rec.step_mut(handler);
        step.attempts = 1;
        step.started_ms = 7;
        step.finished_ms = 7;
        step.set_state(StepState::Succeeded);
        rec.state = ChainState::Failed as i32;
        rec.finished_ms = 7;
        rec.record(HistoryEntry::chain(EventKind::Requeued, 7, "next"));
        assert_eq!(
            kinds(&view(&rec)),
            [
                "step_started #0 a1",
                "step_failed #0 a1",
                "step_started #0 a1",
                "step_succeeded #0 a1",
                "chain_failed",
                "requeued"
            ]
        );
        assert_eq!(view(&rec)[2].phase, Phase::OnFailure as i32);
    }

    #[test]
    fn details_are_cut_at_a_character_boundary() {
        let long = "é".repeat(DETAIL_MAX);
        let entry = HistoryEntry::chain(EventKind::ChainCancelled, 1, &long);
        assert!(entry.detail.len() <= DETAIL_MAX + "…".len());
        assert!(entry.detail.ends_with('…'));
        assert_eq!(
            HistoryEntry::chain(EventKind::ChainCancelled, 1, "short").detail,
            "short"
        );
    }
}

//! A chain's history: what happened to it and when, kept in its record.
//!
//! Watchers see events as they happen; an operator who opens a chain later
//! (why did it take an hour? which worker lost it?) needs them afterwards.
//! The scheduler appends one [`HistoryEntry`] per event to the chain's
//! record, which it rewrites at that transition anyway, so history costs
//! bytes in the record but no extra write.
//!
//! It is bounded, whatever a task does: a task that polls every 5 ms for a
//! day, or retries a thousand times, must not grow its record without end.
//! Consecutive polls of one step fold into one entry with a count, and past
//! [`HISTORY_KEPT`] entries the oldest ones after the first
//! [`HISTORY_HEAD`] are dropped (and counted): the start and the latest
//! events are what an operator reads.

use crate::domain::{ChainRecord, Phase, StepAt, UnixMs};

/// Entries a chain keeps at most.
pub const HISTORY_KEPT: usize = 100;

/// The first entries kept however long the history grows.
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
    /// Appends `entry` to the chain's history, folding a poll into the
    /// previous poll of the same step and keeping the history bounded (see
    /// the module's doc).
    pub fn record(&mut self, entry: HistoryEntry) {
        let history = &mut self.history;
        if entry.kind == EventKind::StepPolling as i32 {
            // [.., polling, started] of this step, then polling again: one
            // entry that says how many times.
            let n = history.len();
            let folds = n >= 2
                && history[n - 1].is(EventKind::StepStarted, entry.phase, entry.index)
                && history[n - 2].is(EventKind::StepPolling, entry.phase, entry.index);
            if folds {
                history.pop();
                let last = history.last_mut().expect("two entries");
                let repeats = last.repeats.saturating_add(1);
                *last = HistoryEntry { repeats, ..entry };
                return;
            }
        }
        if history.len() >= HISTORY_KEPT {
            history.remove(HISTORY_HEAD);
            self.history_dropped = self.history_dropped.saturating_add(1);
        }
        history.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: usize) -> StepAt {
        StepAt {
            phase: Phase::Main,
            index,
        }
    }

    fn kinds(rec: &ChainRecord) -> Vec<&'static str> {
        rec.history
            .iter()
            .map(|e| EventKind::try_from(e.kind).unwrap().as_str())
            .collect()
    }

    #[test]
    fn polls_of_one_step_fold_into_one_entry_with_a_count() {
        let mut rec = ChainRecord::default();
        for attempt in 1..=50 {
            rec.record(
                HistoryEntry::step(EventKind::StepStarted, attempt.into(), at(0), attempt)
                    .with_worker("w"),
            );
            rec.record(
                HistoryEntry::step(EventKind::StepPolling, attempt.into(), at(0), attempt)
                    .with_detail(&format!("not yet {attempt}")),
            );
        }
        rec.record(HistoryEntry::step(EventKind::StepStarted, 51, at(0), 51));
        rec.record(HistoryEntry::step(EventKind::StepSucceeded, 52, at(0), 51));
        assert_eq!(
            kinds(&rec),
            [
                "step_started",
                "step_polling",
                "step_started",
                "step_succeeded"
            ]
        );
        let polled = &rec.history[1];
        assert_eq!(polled.repeats, 49);
        assert_eq!((polled.at_ms, polled.attempt), (50, 50));
        assert_eq!(polled.detail, "not yet 50");
        assert_eq!(rec.history_dropped, 0);
    }

    #[test]
    fn polls_of_different_steps_do_not_fold() {
        let mut rec = ChainRecord::default();
        rec.record(HistoryEntry::step(EventKind::StepStarted, 1, at(0), 1));
        rec.record(HistoryEntry::step(EventKind::StepPolling, 2, at(0), 1));
        rec.record(HistoryEntry::step(EventKind::StepStarted, 3, at(1), 1));
        rec.record(HistoryEntry::step(EventKind::StepPolling, 4, at(1), 1));
        assert_eq!(rec.history.len(), 4);
    }

    #[test]
    fn a_long_history_keeps_its_start_and_its_latest_entries() {
        let mut rec = ChainRecord::default();
        for attempt in 1..=1000u32 {
            rec.record(HistoryEntry::step(
                EventKind::StepRetrying,
                attempt.into(),
                at(0),
                attempt,
            ));
        }
        assert_eq!(rec.history.len(), HISTORY_KEPT);
        assert_eq!(rec.history_dropped, 1000 - 100);
        let attempts: Vec<u32> = rec.history.iter().map(|e| e.attempt).collect();
        assert_eq!(attempts[..HISTORY_HEAD], (1..=10).collect::<Vec<_>>());
        assert_eq!(attempts[HISTORY_HEAD..], (911..=1000).collect::<Vec<_>>());
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

//! The worker's own record of what it holds: runs (still running, or
//! finished with an outcome the broker has not acknowledged yet), granted
//! in-body throttle slots, and throttle requests not answered yet.
//!
//! It is what outlives a connection. The next Hello is built from it
//! (`held`, `held_slots`); the Welcome is reconciled against it (kept runs
//! get their unacknowledged outcomes, slot releases and pending requests
//! re-sent, the others are aborted); a run whose lease lapsed while
//! disconnected is dropped from it. It does no I/O: its methods return the messages to send and the
//! session task sends them, so the bookkeeping can be tested on its own.
//!
//! Every message it hands out is remembered with the id of the link (one
//! connection) it goes out on, so a reconnect re-sends exactly what the new
//! link has not carried yet.

use std::collections::{BTreeMap, HashMap, HashSet};

use baton::pb;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error_type::THROTTLE_REFUSED;
use crate::outcome::{RunEnd, TaskError};

/// Identifies one connection to the broker; increases with every attempt.
pub(crate) type LinkId = u64;

/// Identifies one run in this worker. A task ref is not enough: a broker
/// killed before an assignment was durable forgets it and may assign the
/// same attempt again, to this worker too, while the end of the forgotten
/// run (aborted when the Welcome said it was lost) is still on its way.
pub(crate) type RunId = u64;

/// Answers a pending throttle request: `Ok` once granted, the refusal
/// otherwise.
pub(crate) type GrantReply = oneshot::Sender<Result<(), TaskError>>;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Every assignment this worker is responsible for, by task ref.
    runs: HashMap<pb::TaskRef, Run>,
    /// Throttle requests not answered yet, by request id. Each belongs to a
    /// run in `runs` that is still running.
    requests: BTreeMap<u64, Request>,
    /// Granted in-body slots, by request id, with their run. Each belongs
    /// to a run in `runs` that is still running.
    slots: BTreeMap<u64, pb::TaskRef>,
    /// Slots given back while their run goes on, by request id. A release
    /// has no acknowledgment, so one that went out on a link that broke may
    /// never have arrived: each new link carries them again (releasing is
    /// idempotent). Each belongs to a run in `runs` that is still running.
    released: BTreeMap<u64, Released>,
    /// The id of the last run started.
    last_run: RunId,
}

#[derive(Debug)]
struct Released {
    task: pb::TaskRef,
    /// The link that carried the release last, if any.
    sent_on: Option<LinkId>,
}

#[derive(Debug)]
struct Run {
    id: RunId,
    /// Local estimate of when the broker takes the run back: the later of
    /// its arrival and the last heartbeat sent, plus the lease. `None` when
    /// the broker announced no lease.
    leased_until: Option<Instant>,
    state: RunState,
}

#[derive(Debug)]
enum RunState {
    /// The body is running; cancelling the token stops it.
    Running {
        cancel: CancellationToken,
        /// Set when the broker sent Cancel; reported as the message of the
        /// "Cancelled" failure.
        cancel_reason: Option<String>,
    },
    /// The body ended; the outcome waits for its OutcomeAck.
    Finished {
        outcome: pb::Outcome,
        /// The link that carried it last, if any.
        sent_on: Option<LinkId>,
    },
}

#[derive(Debug)]
struct Request {
    message: pb::ThrottleAcquire,
    /// Where the grant goes; `None` once the requester gave up (its guard
    /// was dropped), in which case a grant is released at once.
    reply: Option<GrantReply>,
    /// The link that carried it last, if any.
    sent_on: Option<LinkId>,
}

/// What a Welcome changes.
#[derive(Debug, Default)]
pub(crate) struct Reconciled {
    /// Runs the broker no longer gives this worker; they were aborted.
    pub(crate) lost: Vec<pb::TaskRef>,
    /// Outcomes and throttle requests the new link must carry.
    pub(crate) resend: Vec<pb::worker_message::Msg>,
}

impl Ledger {
    /// Whether the worker holds nothing: no run, running or unacknowledged.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// How many runs the worker holds.
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }

    /// How many runs are still running (not finished).
    pub(crate) fn running(&self) -> usize {
        self.runs
            .values()
            .filter(|run| matches!(run.state, RunState::Running { .. }))
            .count()
    }

    /// Records a new run and returns its id. Returns `None` (and records
    /// nothing) when the worker already holds this attempt of this task.
    pub(crate) fn start(
        &mut self,
        task: pb::TaskRef,
        cancel: CancellationToken,
        leased_until: Option<Instant>,
    ) -> Option<RunId> {
        if self.runs.contains_key(&task) {
            return None;
        }
        self.last_run += 1;
        let state = RunState::Running {
            cancel,
            cancel_reason: None,
        };
        self.runs.insert(
            task,
            Run {
                id: self.last_run,
                leased_until,
                state,
            },
        );
        Some(self.last_run)
    }

    /// Stops a running run on the broker's request. Returns false when the
    /// run is not running here (unknown, or already finished).
    pub(crate) fn cancel(&mut self, task: &pb::TaskRef, reason: String) -> bool {
        match self.runs.get_mut(task).map(|run| &mut run.state) {
            Some(RunState::Running {
                cancel,
                cancel_reason,
            }) => {
                *cancel_reason = Some(reason);
                cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Records the end of run `id` of `task` and returns the outcome to
    /// report on `link` (or later, on the next link, when `link` is
    /// `None`). Returns `None` when the run is no longer this worker's
    /// (lost, expired, aborted), even if a newer run of the same task ref
    /// is.
    ///
    /// The run's slots and requests are dropped: the broker frees them when
    /// the run ends.
    pub(crate) fn finish(
        &mut self,
        task: &pb::TaskRef,
        id: RunId,
        end: RunEnd,
        link: Option<LinkId>,
    ) -> Option<pb::Outcome> {
        let run = self.runs.get_mut(task).filter(|run| run.id == id)?;
        let RunState::Running { cancel_reason, .. } = &run.state else {
            return None;
        };
        let outcome = end.into_outcome(task.clone(), cancel_reason.as_deref());
        run.state = RunState::Finished {
            outcome: outcome.clone(),
            sent_on: link,
        };
        self.drop_throttles_of(task);
        Some(outcome)
    }

    /// Forgets a run whose outcome the broker acknowledged. Returns false
    /// when there was no finished run to forget.
    pub(crate) fn acknowledged(&mut self, task: &pb::TaskRef) -> bool {
        match self.runs.get(task) {
            Some(Run {
                state: RunState::Finished { .. },
                ..
            }) => {
                self.runs.remove(task);
                true
            }
            _ => false,
        }
    }

    /// Records a throttle request of a running run and returns it, to be
    /// sent on `link` (or on the next link). When the run is not running,
    /// the requester is told so and nothing is recorded.
    pub(crate) fn request(
        &mut self,
        message: pb::ThrottleAcquire,
        reply: GrantReply,
        link: Option<LinkId>,
    ) -> Option<pb::ThrottleAcquire> {
        if !self.is_running(message.task.as_ref()) {
            // Dropping the reply tells the requester the run is over.
            return None;
        }
        let request = Request {
            message: message.clone(),
            reply: Some(reply),
            sent_on: link,
        };
        self.requests.insert(message.request_id, request);
        Some(message)
    }

    /// The broker granted a request (on `link`). Returns a release to send
    /// at once when the requester gave up meanwhile.
    pub(crate) fn granted(&mut self, request_id: u64, link: LinkId) -> Option<pb::ThrottleRelease> {
        let request = self.requests.remove(&request_id)?;
        let task = request.message.task.unwrap_or_default();
        match request.reply {
            Some(reply) => {
                // A failed send means the requester was dropped just now;
                // its guard's release is already queued and finds the slot.
                let _ = reply.send(Ok(()));
                self.slots.insert(request_id, task);
                None
            }
            None => Some(self.give_back(request_id, task, Some(link))),
        }
    }

    /// The broker refused a request (WorkerError). Returns false when no
    /// such request was pending.
    pub(crate) fn refused(&mut self, request_id: u64, message: &str) -> bool {
        let Some(request) = self.requests.remove(&request_id) else {
            return false;
        };
        if let Some(reply) = request.reply {
            let error = TaskError::fatal_of(THROTTLE_REFUSED, message);
            // The requester may be gone; then nobody needs the answer.
            let _ = reply.send(Err(error));
        }
        true
    }

    /// A slot guard was dropped. Returns the release to send on `link` (or
    /// on the next link) when the slot was granted; a request still pending
    /// is marked abandoned instead.
    pub(crate) fn release(
        &mut self,
        request_id: u64,
        link: Option<LinkId>,
    ) -> Option<pb::ThrottleRelease> {
        if let Some(task) = self.slots.remove(&request_id) {
            return Some(self.give_back(request_id, task, link));
        }
        if let Some(request) = self.requests.get_mut(&request_id) {
            request.reply = None;
        }
        None
    }

    /// Records a slot as given back and builds its release.
    fn give_back(
        &mut self,
        request_id: u64,
        task: pb::TaskRef,
        link: Option<LinkId>,
    ) -> pb::ThrottleRelease {
        let released = Released {
            task: task.clone(),
            sent_on: link,
        };
        self.released.insert(request_id, released);
        pb::ThrottleRelease {
            request_id,
            task: Some(task),
        }
    }

    /// Hello's `held` (every run, sorted) and `held_slots`.
    pub(crate) fn held(&self) -> (Vec<pb::TaskRef>, Vec<pb::HeldSlot>) {
        let mut held: Vec<pb::TaskRef> = self.runs.keys().cloned().collect();
        held.sort_by(|a, b| (&a.task_id, a.attempt).cmp(&(&b.task_id, b.attempt)));
        let slots = self
            .slots
            .iter()
            .map(|(&request_id, task)| pb::HeldSlot {
                task: Some(task.clone()),
                request_id,
            })
            .collect();
        (held, slots)
    }

    /// Applies a Welcome received on `link`: runs in `kept` stay, with their
    /// lease renewed to `leased_until`; every other run is aborted and
    /// forgotten. Returns the lost runs and what `link` must carry: the
    /// unacknowledged outcomes, the slot releases and the pending requests
    /// of kept runs that it has not carried yet, in that order (slots are
    /// given back before new ones are asked for).
    pub(crate) fn reconcile(
        &mut self,
        kept: &[pb::TaskRef],
        link: LinkId,
        leased_until: Option<Instant>,
    ) -> Reconciled {
        let kept: HashSet<&pb::TaskRef> = kept.iter().collect();
        let mut reconciled = Reconciled::default();
        let lost: Vec<pb::TaskRef> = self
            .runs
            .keys()
            .filter(|t| !kept.contains(t))
            .cloned()
            .collect();
        for task in &lost {
            self.forget(task);
        }
        reconciled.lost = lost;
        let mut outcomes: Vec<&mut Run> = self.runs.values_mut().collect();
        outcomes.sort_by(|a, b| outcome_order(a).cmp(&outcome_order(b)));
        for run in outcomes {
            run.leased_until = leased_until;
            if let RunState::Finished { outcome, sent_on } = &mut run.state
                && *sent_on != Some(link)
            {
                *sent_on = Some(link);
                reconciled
                    .resend
                    .push(pb::worker_message::Msg::Outcome(outcome.clone()));
            }
        }
        for (&request_id, released) in &mut self.released {
            if released.sent_on != Some(link) {
                released.sent_on = Some(link);
                let release = pb::ThrottleRelease {
                    request_id,
                    task: Some(released.task.clone()),
                };
                reconciled
                    .resend
                    .push(pb::worker_message::Msg::ThrottleRelease(release));
            }
        }
        for request in self.requests.values_mut() {
            if request.reply.is_some() && request.sent_on != Some(link) {
                request.sent_on = Some(link);
                reconciled
                    .resend
                    .push(pb::worker_message::Msg::ThrottleAcquire(
                        request.message.clone(),
                    ));
            }
        }
        reconciled
    }

    /// A heartbeat went out: every run's lease now lasts until `until`.
    pub(crate) fn extend_leases(&mut self, until: Instant) {
        for run in self.runs.values_mut() {
            run.leased_until = Some(until);
        }
    }

    /// The earliest local lease end, if any run has one.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.runs.values().filter_map(|run| run.leased_until).min()
    }

    /// Aborts and forgets every run whose lease ended by `now` (the broker
    /// has taken it back). Returns them.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<pb::TaskRef> {
        let expired: Vec<pb::TaskRef> = self
            .runs
            .iter()
            .filter(|(_, run)| run.leased_until.is_some_and(|until| until <= now))
            .map(|(task, _)| task.clone())
            .collect();
        for task in &expired {
            self.forget(task);
        }
        expired
    }

    /// Aborts and forgets every run. Returns how many there were.
    pub(crate) fn abort_all(&mut self) -> usize {
        let all: Vec<pb::TaskRef> = self.runs.keys().cloned().collect();
        for task in &all {
            self.forget(task);
        }
        all.len()
    }

    /// Whether `task` names a run that is still running.
    fn is_running(&self, task: Option<&pb::TaskRef>) -> bool {
        task.and_then(|t| self.runs.get(t))
            .is_some_and(|run| matches!(run.state, RunState::Running { .. }))
    }

    /// Removes a run, stopping its body if it still runs, with its slots
    /// and requests; whatever it still reports is ignored.
    fn forget(&mut self, task: &pb::TaskRef) {
        if let Some(Run {
            state: RunState::Running { cancel, .. },
            ..
        }) = self.runs.remove(task)
        {
            cancel.cancel();
        }
        self.drop_throttles_of(task);
    }

    fn drop_throttles_of(&mut self, task: &pb::TaskRef) {
        self.requests
            .retain(|_, request| request.message.task.as_ref() != Some(task));
        self.slots.retain(|_, holder| holder != task);
        self.released.retain(|_, released| released.task != *task);
    }
}

/// Re-sent outcomes go out in task order, so a reconnect is reproducible.
fn outcome_order(run: &Run) -> Option<(&str, u32)> {
    match &run.state {
        RunState::Finished { outcome, .. } => outcome
            .task
            .as_ref()
            .map(|task| (task.task_id.as_str(), task.attempt)),
        RunState::Running { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn task(id: &str) -> pb::TaskRef {
        pb::TaskRef {
            task_id: id.into(),
            attempt: 1,
        }
    }

    fn acquire(request_id: u64, of: &str) -> pb::ThrottleAcquire {
        pb::ThrottleAcquire {
            request_id,
            task: Some(task(of)),
            throttle: Some(pb::Throttle::default()),
        }
    }

    fn success() -> RunEnd {
        RunEnd::Returned(Ok(json!(1)))
    }

    #[test]
    fn a_run_lives_until_its_outcome_is_acknowledged() {
        let mut ledger = Ledger::default();
        let run_a = ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        assert!(
            ledger
                .start(task("a"), CancellationToken::new(), None)
                .is_none(),
            "duplicate"
        );
        assert!(!ledger.acknowledged(&task("a")), "no outcome yet");
        let outcome = ledger
            .finish(&task("a"), run_a, success(), Some(1))
            .unwrap();
        assert_eq!(outcome.task, Some(task("a")));
        assert!(
            ledger
                .finish(&task("a"), run_a, success(), Some(1))
                .is_none(),
            "reported once"
        );
        assert_eq!((ledger.len(), ledger.running()), (1, 0));
        assert!(ledger.acknowledged(&task("a")));
        assert!(ledger.is_empty());
    }

    #[test]
    fn cancel_stops_the_body_and_names_the_reason() {
        let mut ledger = Ledger::default();
        let token = CancellationToken::new();
        let run_a = ledger
            .start(task("a"), token.clone(), None)
            .expect("started");
        assert!(ledger.cancel(&task("a"), "chain cancelled".into()));
        assert!(token.is_cancelled());
        let outcome = ledger
            .finish(&task("a"), run_a, RunEnd::Aborted, None)
            .unwrap();
        match outcome.result {
            Some(pb::outcome::Result::Failure(f)) => {
                assert_eq!(
                    (f.error_type.as_str(), f.message.as_str()),
                    ("Cancelled", "chain cancelled")
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(
            !ledger.cancel(&task("a"), "again".into()),
            "finished runs are not cancelled"
        );
    }

    #[test]
    fn grants_become_slots_and_releases_free_them() {
        let mut ledger = Ledger::default();
        ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        let (reply, mut granted) = oneshot::channel();
        assert!(ledger.request(acquire(7, "a"), reply, Some(1)).is_some());
        assert!(ledger.granted(7, 1).is_none());
        assert_eq!(granted.try_recv().unwrap(), Ok(()));
        let (_, slots) = ledger.held();
        assert_eq!(
            slots,
            vec![pb::HeldSlot {
                task: Some(task("a")),
                request_id: 7
            }]
        );
        let release = ledger.release(7, Some(1)).unwrap();
        assert_eq!((release.request_id, release.task), (7, Some(task("a"))));
        assert!(ledger.release(7, Some(1)).is_none(), "released once");
    }

    #[test]
    fn an_abandoned_request_is_released_when_granted() {
        let mut ledger = Ledger::default();
        ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        let (reply, _granted) = oneshot::channel();
        ledger.request(acquire(7, "a"), reply, Some(1));
        assert!(
            ledger.release(7, Some(1)).is_none(),
            "nothing to release before the grant"
        );
        assert_eq!(ledger.granted(7, 1).map(|r| r.request_id), Some(7));
        assert!(ledger.held().1.is_empty());
    }

    #[test]
    fn refusals_reach_the_requester() {
        let mut ledger = Ledger::default();
        ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        let (reply, mut granted) = oneshot::channel();
        ledger.request(acquire(7, "a"), reply, None);
        assert!(ledger.refused(7, "bad key"));
        match granted.try_recv().unwrap() {
            Err(TaskError::Fatal {
                error_type,
                message,
                ..
            }) => {
                assert_eq!(
                    (error_type.as_str(), message.as_str()),
                    (THROTTLE_REFUSED, "bad key")
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!ledger.refused(7, "again"));
    }

    #[test]
    fn requests_of_runs_that_are_not_running_are_turned_down() {
        let mut ledger = Ledger::default();
        let (reply, mut granted) = oneshot::channel();
        assert!(ledger.request(acquire(1, "ghost"), reply, None).is_none());
        assert!(granted.try_recv().is_err(), "reply dropped");
    }

    #[test]
    fn finishing_drops_the_runs_throttles() {
        let mut ledger = Ledger::default();
        let run_a = ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        let (reply, _g1) = oneshot::channel();
        ledger.request(acquire(1, "a"), reply, None);
        ledger.granted(1, 1);
        let (reply, _g2) = oneshot::channel();
        ledger.request(acquire(2, "a"), reply, None);
        ledger.finish(&task("a"), run_a, success(), None);
        assert!(ledger.held().1.is_empty());
        assert!(
            ledger.release(1, Some(1)).is_none(),
            "the broker frees it with the run"
        );
        assert!(ledger.granted(2, 1).is_none());
    }

    #[test]
    fn welcome_keeps_resends_and_aborts() {
        let mut ledger = Ledger::default();
        let lost_token = CancellationToken::new();
        let run_done = ledger
            .start(task("done"), CancellationToken::new(), None)
            .expect("started");
        let run_sent_on_2 = ledger
            .start(task("sent-on-2"), CancellationToken::new(), None)
            .expect("started");
        ledger
            .start(task("running"), CancellationToken::new(), None)
            .expect("started");
        ledger
            .start(task("lost"), lost_token.clone(), None)
            .expect("started");
        ledger.finish(&task("done"), run_done, success(), Some(1));
        ledger.finish(&task("sent-on-2"), run_sent_on_2, success(), Some(2));
        let (reply, _granted) = oneshot::channel();
        ledger.request(acquire(5, "running"), reply, Some(1));
        let (reply, _granted2) = oneshot::channel();
        ledger.request(acquire(6, "running"), reply, Some(1));
        ledger.release(6, Some(1)); // abandoned: not re-sent
        let (reply, _granted3) = oneshot::channel();
        ledger.request(acquire(8, "lost"), reply, Some(1));

        let (held, _) = ledger.held();
        assert_eq!(
            held,
            vec![
                task("done"),
                task("lost"),
                task("running"),
                task("sent-on-2")
            ]
        );

        let until = Instant::now() + Duration::from_secs(1);
        let kept = [task("done"), task("sent-on-2"), task("running")];
        let reconciled = ledger.reconcile(&kept, 2, Some(until));
        assert_eq!(reconciled.lost, vec![task("lost")]);
        assert!(lost_token.is_cancelled());
        let outcome = ledger.finish(&task("done"), run_done, success(), None);
        assert!(outcome.is_none());
        match reconciled.resend.as_slice() {
            [
                pb::worker_message::Msg::Outcome(o),
                pb::worker_message::Msg::ThrottleAcquire(a),
            ] => {
                assert_eq!(o.task, Some(task("done")));
                assert_eq!(a.request_id, 5);
            }
            other => panic!("unexpected resend {other:?}"),
        }
        assert_eq!(ledger.next_expiry(), Some(until));
        assert!(
            ledger.reconcile(&kept, 2, None).resend.is_empty(),
            "nothing twice on one link"
        );
    }

    #[test]
    fn the_end_of_a_lost_run_does_not_finish_a_new_run_of_the_same_attempt() {
        let mut ledger = Ledger::default();
        let forgotten = ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        assert_eq!(ledger.reconcile(&[], 2, None).lost, vec![task("a")]);
        // The broker assigns the same attempt again before the aborted
        // body's end arrives.
        let again = ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("a new run");
        assert!(
            ledger
                .finish(&task("a"), forgotten, RunEnd::Aborted, Some(2))
                .is_none()
        );
        let outcome = ledger.finish(&task("a"), again, success(), Some(2));
        assert!(matches!(
            outcome.and_then(|o| o.result),
            Some(pb::outcome::Result::Success(_))
        ));
    }

    #[test]
    fn runs_whose_lease_lapsed_are_aborted() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let stale = CancellationToken::new();
        ledger
            .start(task("stale"), stale.clone(), Some(now))
            .expect("started");
        ledger.start(
            task("fresh"),
            CancellationToken::new(),
            Some(now + Duration::from_secs(5)),
        );
        ledger
            .start(task("unleased"), CancellationToken::new(), None)
            .expect("started");
        assert_eq!(ledger.next_expiry(), Some(now));
        assert_eq!(ledger.expire(now), vec![task("stale")]);
        assert!(stale.is_cancelled());
        ledger.extend_leases(now + Duration::from_secs(10));
        assert!(ledger.expire(now + Duration::from_secs(6)).is_empty());
        assert_eq!(ledger.abort_all(), 2);
        assert!(ledger.is_empty());
    }

    #[test]
    fn releases_are_carried_again_by_each_new_link_while_the_run_goes_on() {
        let mut ledger = Ledger::default();
        let run_a = ledger
            .start(task("a"), CancellationToken::new(), None)
            .expect("started");
        let (reply, _granted) = oneshot::channel();
        ledger.request(acquire(3, "a"), reply, Some(1));
        ledger.granted(3, 1);
        // Released while disconnected: nothing sent, nothing held any more.
        let release = ledger.release(3, None).unwrap();
        assert!(ledger.held().1.is_empty());
        let resent = ledger.reconcile(&[task("a")], 2, None).resend;
        assert_eq!(
            resent,
            vec![pb::worker_message::Msg::ThrottleRelease(release.clone())]
        );
        assert!(ledger.reconcile(&[task("a")], 2, None).resend.is_empty());
        // It may not have arrived on link 2 either: link 3 carries it again.
        assert_eq!(ledger.reconcile(&[task("a")], 3, None).resend.len(), 1);
        // Once the run ends the broker frees everything it held.
        ledger.finish(&task("a"), run_a, success(), Some(3));
        assert_eq!(
            ledger.reconcile(&[task("a")], 4, None).resend.len(),
            1,
            "only the outcome"
        );
    }
}

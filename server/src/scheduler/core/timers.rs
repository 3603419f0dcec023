//! Timers: leases measured in awake time, ready times, time limits, deadlines, and the retention sweep.

use super::*;

impl Core {
    /// Sets the wait that raises a ready task one priority (see
    /// `queues`); 0 keeps priorities strict.
    pub fn set_priority_aging(&mut self, aging_ms: u64) {
        self.queues.set_aging(aging_ms);
    }

    /// Sets the awake time the driver read (see `clock::Awake`).
    pub fn set_awake(&mut self, awake_ms: u64) {
        self.awake_ms = self.awake_ms.max(awake_ms);
    }

    /// When a lease that starts now ends on the clock of timers, if no
    /// pause intervenes (its timer checks the awake time and re-arms).
    pub(super) fn lease_deadline(&self, now: UnixMs) -> UnixMs {
        now.saturating_add(self.lease_ms)
    }

    pub(super) fn add_timer(&mut self, at: UnixMs, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// When the next timer is due, or work on child chains may go on
    /// (see `fanout`).
    pub fn next_timer(&self) -> Option<UnixMs> {
        let timer = self.timers.first_key_value().map(|((at, _), _)| *at);
        match (timer, self.follow_up_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer due by `now`.
    pub fn fire_timers(&mut self, reads: &dyn Lookup, now: UnixMs) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Timer::Ready { task_id, at } => self.on_ready_timer(task_id, at, now),
                Timer::Lease { task_id, attempt } => self.on_lease_timer(task_id, attempt, now),
                Timer::Timeout { task_id, attempt } => self.on_timeout(task_id, attempt),
                Timer::Deadline { chain_id } => self.on_deadline(chain_id, now),
                Timer::Schedule { name, at } => self.on_schedule_timer(reads, &name, at, now),
                Timer::Rate { identity } => {
                    let grants = self.throttle_op(|t, cs| t.pump(&identity, now, cs));
                    self.apply_grants(grants, now);
                }
            }
        }
    }

    pub(super) fn on_ready_timer(&mut self, task_id: TaskId, at_ms: UnixMs, now: UnixMs) {
        let Some((chain_id, at)) = self.tasks.get(&task_id).cloned() else {
            return;
        };
        let rec = &self.chains[&chain_id];
        let step = rec.step(at);
        if rec.is_ended() || step.state() != StepState::Scheduled || step.not_before_ms != at_ms {
            return;
        }
        self.make_ready(chain_id, at, now);
        self.touch(chain_id);
    }

    pub(super) fn on_lease_timer(&mut self, task_id: TaskId, attempt: u32, now: UnixMs) {
        let Some(run) = self.run(task_id) else {
            return;
        };
        if run.attempt != attempt {
            return;
        }
        // Not sent yet: the lease has not started (see `Run::renewed`).
        let awake_for = run
            .renewed
            .map_or(0, |renewed| self.awake_ms.saturating_sub(renewed));
        if awake_for < self.lease_ms {
            // Extended by a heartbeat, or the broker was paused: look again
            // when the rest of the lease would be up.
            let when = now.saturating_add(self.lease_ms - awake_for);
            self.add_timer(when, Timer::Lease { task_id, attempt });
            return;
        }
        tracing::warn!(task.id = %task_id, attempt, "lease lapsed; the task goes back to its queue");
        self.metrics.lease_expiries.inc();
        self.lose_run(task_id, "lease lapsed", now);
    }

    pub(super) fn on_timeout(&mut self, task_id: TaskId, attempt: u32) {
        let Some(run) = self.run_mut(task_id) else {
            return;
        };
        if run.attempt != attempt {
            return;
        }
        run.timed_out = true;
        if let Some(worker) = run.worker {
            let task = TaskRef { task_id, attempt };
            self.send_worker(
                worker,
                ToWorker::Cancel {
                    task,
                    reason: "time limit exceeded".into(),
                },
            );
        }
    }

    pub(super) fn on_deadline(&mut self, chain_id: ChainId, now: UnixMs) {
        let Some(rec) = self.chains.get(&chain_id) else {
            return;
        };
        if rec.is_ended() || rec.phase() != Phase::Main {
            return;
        }
        let at = rec.current();
        let attempt = rec.step(at).attempts;
        let message = format!("the chain's deadline ({}) passed", rec.deadline_ms);
        let record = self.failure_of(chain_id, at, attempt, "DeadlineExceeded", &message, "");
        self.stop_step(
            chain_id,
            at,
            "chain deadline passed",
            StepState::Failed,
            now,
        );
        self.live_step(chain_id, at).failure = Some(record.clone());
        self.event(chain_id, EventKind::StepFailed, Some(at), now);
        self.fail_chain(chain_id, record, now);
        self.touch(chain_id);
    }

    /// Removes ended chains whose retention is over, a page at a time, so
    /// that a large backlog of them never stalls a round: at most
    /// [`SWEEP_PAGE`] a round, every round while full pages are found, else
    /// once every [`SWEEP_EVERY_MS`]. Reads only the `ended` index (and the
    /// idempotency key and results of each chain found), never a record.
    pub fn sweep(&mut self, reads: &dyn Lookup, now: UnixMs) {
        if now >= self.next_bucket_sweep {
            // Rate buckets that are full again need no state, here or in
            // the store.
            self.next_bucket_sweep = now.saturating_add(SWEEP_EVERY_MS);
            self.throttles.forget_full_buckets(now);
            for (identity, tat) in self.throttles.take_written() {
                self.batch.put_bucket(&identity, tat);
            }
        }
        if self.retention_ms == 0 || (now < self.next_sweep && !self.sweep_more) {
            return;
        }
        self.next_sweep = now.saturating_add(SWEEP_EVERY_MS);
        let before = now.saturating_sub(self.retention_ms);
        let found = reads.expired(before, &self.swept, SWEEP_PAGE);
        let (expired, cursor) = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the ended chains to remove; trying later");
                self.sweep_more = false;
                return;
            }
        };
        self.sweep_more = expired.len() == SWEEP_PAGE;
        self.swept = cursor;
        let mut removed = 0u64;
        for chain in &expired {
            // In memory again (requeued while ended with a run out): its
            // next write indexes it again.
            if ChainId::parse(&chain.id).is_ok_and(|id| self.chains.contains_key(&id)) {
                continue;
            }
            self.batch.remove_chain(chain);
            removed += 1;
        }
        if removed > 0 {
            self.metrics.chains_removed.inc_by(removed);
            tracing::debug!(
                chains = removed,
                "removed ended chains past their retention"
            );
        }
    }
}

//! The life of a step and its chain: ready, scheduled, throttled, advanced on success, failed into on_failure, cancelled, ended and retired from memory.

use super::*;

impl Core {
    pub fn cancel(
        &mut self,
        reads: &dyn Lookup,
        chain_id: ChainId,
        reason: String,
        reply: Req<ChainState>,
        now: UnixMs,
    ) {
        let result = self.cancel_chain(reads, chain_id, reason, now);
        self.reply(reply, result);
    }

    /// Cancels a chain; returns its state (an ended chain keeps its own).
    pub(super) fn cancel_chain(
        &mut self,
        reads: &dyn Lookup,
        chain_id: ChainId,
        reason: String,
        now: UnixMs,
    ) -> Result<ChainState, Error> {
        self.warm_by_id(reads, chain_id);
        let rec = match self.chains.get(&chain_id) {
            Some(rec) => rec,
            None => return self.chain(reads, chain_id).map(|c| c.state()),
        };
        if rec.is_ended() {
            return Ok(rec.state());
        }
        let phase = rec.phase();
        let len = rec.steps_of(phase).len();
        for index in 0..len {
            let at = StepAt { phase, index };
            let reason = format!("chain cancelled: {reason}");
            self.stop_step(chain_id, at, &reason, StepState::Cancelled, now);
        }
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        rec.state = ChainState::Cancelled as i32;
        rec.cancel_reason = reason;
        rec.finished_ms = now;
        self.event(chain_id, EventKind::ChainCancelled, None, now);
        self.touch(chain_id);
        self.chain_ended(chain_id, now);
        tracing::info!(chain.id = %chain_id, "chain cancelled");
        Ok(ChainState::Cancelled)
    }

    /// Takes a step out of play: a waiting one leaves its queue, timer or
    /// throttle line and takes `state`; a pending one takes `state`; a
    /// running one is told to stop and keeps RUNNING (and its slots) until
    /// its run ends, so a body still running never loses its slot.
    pub(super) fn stop_step(
        &mut self,
        chain_id: ChainId,
        at: StepAt,
        reason: &str,
        state: StepState,
        now: UnixMs,
    ) {
        let step = self.chains[&chain_id].step(at);
        let task_id = step.task();
        match step.state() {
            StepState::Running => {
                if let Some((worker, attempt)) =
                    step.run().and_then(|r| r.worker.map(|w| (w, r.attempt)))
                {
                    let task = TaskRef { task_id, attempt };
                    self.send_worker(
                        worker,
                        ToWorker::Cancel {
                            task,
                            reason: reason.to_owned(),
                        },
                    );
                }
            }
            StepState::Succeeded | StepState::Failed | StepState::Cancelled => {}
            StepState::Waiting => {
                let reason = format!("its parent chain {chain_id} stopped: {reason}");
                self.cancel_children(chain_id, at, reason);
                let step = self.live_step(chain_id, at);
                step.set_state(state);
                step.finished_ms = now;
            }
            StepState::Ready
            | StepState::Throttled
            | StepState::Scheduled
            | StepState::Pending
            | StepState::Unspecified => {
                self.queues.remove(task_id);
                let gone = self
                    .throttles
                    .remove_waiters(|w| w.ticket.task_id() == task_id);
                debug_assert!(gone.len() <= 1);
                // A ready step may already hold its task-scoped declared
                // slot (granted, waiting for a worker): give it back, or it
                // would stay taken with nobody left to release it.
                let rec = &self.chains[&chain_id];
                if let Some(throttle) = self
                    .effective(rec, at)
                    .throttle
                    .filter(|t| t.scope() != ThrottleScope::Chain)
                {
                    let identity = Identity::of(rec.step(at).name(), &throttle);
                    let grants = self
                        .throttle_op(|t, cs| t.release(&identity, &Holder::Task(task_id), now, cs));
                    self.apply_grants(grants, now);
                }
                let step = self.live_step(chain_id, at);
                step.set_state(state);
                step.finished_ms = now;
            }
        }
    }

    pub(super) fn effective(&self, rec: &ChainRecord, at: StepAt) -> Effective {
        let sig = rec.step(at).signature();
        Effective::resolve(
            sig.options.as_ref(),
            self.task_defaults.get(&sig.name),
            rec.heavy,
        )
    }

    /// The step's turn has come: it waits for its countdown/ETA or becomes
    /// ready.
    pub(super) fn start_step(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        rec.phase = at.phase as i32;
        rec.cursor = u32::try_from(at.index).unwrap_or(u32::MAX);
        let rec = &self.chains[&chain_id];
        if rec.step(at).has_children() {
            return self.start_children(chain_id, at, now);
        }
        self.task_metrics.get(rec.step(at).name()).submitted.inc();
        let eff = self.effective(rec, at);
        let not_before = now.saturating_add(eff.countdown_ms).max(eff.eta_ms);
        if not_before > now {
            self.schedule(chain_id, at, not_before);
        } else {
            self.make_ready(chain_id, at, now);
        }
    }

    pub(super) fn schedule(&mut self, chain_id: ChainId, at: StepAt, when: UnixMs) {
        let step = self.live_step(chain_id, at);
        step.set_state(StepState::Scheduled);
        step.not_before_ms = when;
        let task_id = step.task();
        self.add_timer(when, Timer::Ready { task_id, at: when });
    }

    /// The step may run as soon as its throttle (if any) grants a slot.
    pub(super) fn make_ready(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let rec = &self.chains[&chain_id];
        let eff = self.effective(rec, at);
        let step = rec.step(at);
        let task_id = step.task();
        let Some(throttle) = eff.throttle else {
            return self.enqueue(chain_id, at, now);
        };
        let identity = Identity::of(step.name(), &throttle);
        let chain_scoped = throttle.scope() == ThrottleScope::Chain;
        if chain_scoped && self.chain_holds(rec, &identity) {
            return self.enqueue(chain_id, at, now);
        }
        let step = self.live_step(chain_id, at);
        step.set_state(StepState::Throttled);
        step.ready_ms = now;
        let (holder, ticket) = if chain_scoped {
            (
                Holder::Chain(chain_id),
                Ticket::ChainHold { chain_id, task_id },
            )
        } else {
            (Holder::Task(task_id), Ticket::Enqueue { task_id })
        };
        self.wait_for_slot(identity, &throttle, holder, ticket, now);
    }

    /// Whether a chain holds the chain-scoped slot of `identity`: itself,
    /// or the chain whose group or executor it is part of (a member runs
    /// under its parent's slots; waiting for a second slot of the same
    /// identity, it could wait for ever on the parent that waits for it).
    fn chain_holds(&self, rec: &ChainRecord, identity: &Identity) -> bool {
        let mut rec = rec;
        loop {
            if rec.chain_holds.contains(identity) {
                return true;
            }
            let parent = rec
                .parent()
                .and_then(|p| self.tasks.get(&p.task_id))
                .and_then(|(chain_id, _)| self.chains.get(chain_id));
            match parent {
                Some(parent) => rec = parent,
                None => return false,
            }
        }
    }

    pub(super) fn enqueue(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let rec = &self.chains[&chain_id];
        let eff = self.effective(rec, at);
        let step = self.live_step(chain_id, at);
        step.set_state(StepState::Ready);
        step.ready_ms = now;
        step.queue = eff.queue.clone();
        let name = step.name().to_owned();
        let task_id = step.task();
        self.queues
            .push(&eff.queue, &name, eff.priority, task_id, now);
        *self.unsettled.ready.entry(task_id).or_default() += 1;
        self.emit(Output::Settled(Settled::Ready(task_id)));
    }

    /// A run that ended after its chain moved on (cancelled, deadline):
    /// record how the step ended (its run just ended: see
    /// [`Core::end_run`]) and retire the chain if nothing is out.
    pub(super) fn settle_superseded(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        let state = if rec.state() == ChainState::Cancelled {
            StepState::Cancelled
        } else {
            StepState::Failed
        };
        let step = rec.step_mut(at);
        step.set_state(state);
        step.finished_ms = now;
        self.touch(chain_id);
        self.retire_if_done(chain_id, now);
    }

    pub(super) fn failure_of(
        &self,
        chain_id: ChainId,
        at: StepAt,
        attempt: u32,
        error_type: &str,
        message: &str,
        traceback: &str,
    ) -> FailureRecord {
        let step = self.chains[&chain_id].step(at);
        FailureRecord {
            chain_id: chain_id.to_string(),
            phase: at.phase as i32,
            step_index: u32::try_from(at.index).unwrap_or(u32::MAX),
            task_name: step.name().to_owned(),
            task_id: step.task_id.clone(),
            attempt,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
            traceback: traceback.to_owned(),
        }
    }

    /// The step succeeded: the next step's turn, the next phase, or the end.
    pub(super) fn advance(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let rec = &self.chains[&chain_id];
        if at.index + 1 < rec.steps_of(at.phase).len() {
            return self.start_step(
                chain_id,
                StepAt {
                    phase: at.phase,
                    index: at.index + 1,
                },
                now,
            );
        }
        match at.phase {
            Phase::OnSuccess => self.finish(chain_id, ChainState::Succeeded, now),
            Phase::OnFailure => self.finish(chain_id, ChainState::Failed, now),
            _ => {
                let rec = self.chains.get_mut(&chain_id).expect("live chain");
                rec.result = rec.step(at).result.clone();
                rec.result_apart = rec.step(at).result_apart;
                if rec.on_success.is_empty() {
                    self.finish(chain_id, ChainState::Succeeded, now);
                } else {
                    self.start_step(
                        chain_id,
                        StepAt {
                            phase: Phase::OnSuccess,
                            index: 0,
                        },
                        now,
                    );
                }
            }
        }
    }

    /// A step that holds no run failed for good with `record`: its chain
    /// fails (see [`Core::fail_chain`]).
    pub(super) fn fail_step(
        &mut self,
        chain_id: ChainId,
        at: StepAt,
        record: FailureRecord,
        now: UnixMs,
    ) {
        let step = self.live_step(chain_id, at);
        step.set_state(StepState::Failed);
        step.failure = Some(record.clone());
        step.finished_ms = now;
        self.event(chain_id, EventKind::StepFailed, Some(at), now);
        self.fail_chain(chain_id, record, now);
        self.touch(chain_id);
    }

    /// A step failed for good: on_failure runs once (also when on_success
    /// failed), or the chain ends failed.
    pub(super) fn fail_chain(&mut self, chain_id: ChainId, record: FailureRecord, now: UnixMs) {
        self.task_metrics.get(&record.task_name).failed.inc();
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        if rec.phase() == Phase::OnFailure {
            return self.finish(chain_id, ChainState::Failed, now);
        }
        rec.failure = Some(record);
        if rec.on_failure.is_empty() {
            self.finish(chain_id, ChainState::Failed, now);
        } else {
            self.start_step(
                chain_id,
                StepAt {
                    phase: Phase::OnFailure,
                    index: 0,
                },
                now,
            );
        }
    }

    pub(super) fn finish(&mut self, chain_id: ChainId, state: ChainState, now: UnixMs) {
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        rec.state = state as i32;
        rec.finished_ms = now;
        let kind = if state == ChainState::Succeeded {
            EventKind::ChainSucceeded
        } else {
            EventKind::ChainFailed
        };
        tracing::debug!(chain.id = %chain_id, state = kind.as_str(), "chain ended");
        self.event(chain_id, kind, None, now);
        self.touch(chain_id);
        self.chain_ended(chain_id, now);
    }

    /// Bookkeeping common to every end: the unique key is free again and
    /// the chain retires once no run of it is out.
    pub(super) fn chain_ended(&mut self, chain_id: ChainId, now: UnixMs) {
        self.child_ended(chain_id, now);
        let rec = &self.chains[&chain_id];
        if !rec.unique_key.is_empty()
            && self
                .unique
                .get(&rec.unique_key)
                .is_some_and(|id| *id == chain_id)
        {
            self.unique.remove(&rec.unique_key.clone());
        }
        self.retire_if_done(chain_id, now);
    }

    /// Whether the chain has a run out, or child chains not ended: it
    /// stays in memory (and live) until they end.
    pub(super) fn has_runs(&self, rec: &ChainRecord) -> bool {
        rec.all_steps()
            .any(|(_, s)| s.run().is_some() || s.children_out() > 0)
    }

    /// An ended chain with no run out releases its chain-scoped slots and
    /// leaves memory; its record stays in the store, no longer live.
    pub(super) fn retire_if_done(&mut self, chain_id: ChainId, now: UnixMs) {
        let rec = &self.chains[&chain_id];
        if !rec.is_ended() || self.has_runs(rec) {
            return;
        }
        let mut rec = self.chains.remove(&chain_id).expect("live chain");
        let mut grants = Vec::new();
        for identity in std::mem::take(&mut rec.chain_holds) {
            grants.extend(
                self.throttle_op(|t, cs| t.release(&identity, &Holder::Chain(chain_id), now, cs)),
            );
        }
        self.throttles.remove_waiters(
            |w| matches!(&w.ticket, Ticket::ChainHold { chain_id: c, .. } if *c == chain_id),
        );
        for (_, step) in rec.all_steps() {
            self.tasks.remove(&step.task());
        }
        self.batch.put_chain(&rec, false);
        self.dirty.remove(&chain_id);
        self.live_unwritten.remove(&chain_id);
        // Watchers still get the final event: it was queued with the chain.
        self.apply_grants(grants, now);
    }
}

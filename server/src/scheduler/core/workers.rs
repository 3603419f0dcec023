//! Worker streams: Hello (with held runs and slots), task defaults, outcomes fenced by attempt, in-body throttle requests, and streams that end.

use super::*;

impl Core {
    /// A worker stream opened with `hello`: returns the worker's new id,
    /// under which the driver keeps its stream. Its `Welcome` (the runs it
    /// keeps and those it lost) is the first output for it.
    pub fn connect(&mut self, reads: &dyn Lookup, hello: WorkerHello, now: UnixMs) -> WorkerId {
        let worker_id = self.ids.worker();
        // A worker that registers a name without defaults (a plain
        // `.task(name, f)`) leaves the defaults others declared alone.
        let mut changed = Map::default();
        for (name, defaults) in &hello.tasks {
            if *defaults != Options::default() && self.task_defaults.get(name) != Some(defaults) {
                self.batch.put_task_defaults(name, defaults);
                changed.insert(name.clone(), defaults.clone());
            }
        }
        if !changed.is_empty() {
            self.redefine(reads, changed, now);
        }
        let mut conn = WorkerConn {
            name: hello.name.clone(),
            queues: hello.queues,
            names: hello.tasks.into_iter().map(|(n, _)| n).collect(),
            concurrency: hello.concurrency,
            prefetch: hello.prefetch,
            in_flight: BTreeSet::new(),
            draining: false,
            connected_ms: now,
            welcomed: false,
            held_back: 0,
        };
        let (mut kept, mut lost) = (Vec::new(), Vec::new());
        let awake = self.awake_ms;
        for task in hello.held {
            // A claim is for the broker's current attempt, and that attempt
            // is not out on another worker that is connected. (Attempt
            // numbers of early assignments lost in a crash are issued again:
            // the run issued since is the current one, not the claim.)
            // Only a worker that could have been assigned it may claim a
            // run: its queues hold the run's queue and it registered the
            // task name (a worker token's queues are checked at the edge).
            // And only the worker it was assigned to, by name: the stream
            // holding it, or, when none does (its stream ended, or the
            // broker restarted), the worker the step's record names, so
            // that another worker serving the same name cannot take it
            // (finding F2 of the simulator).
            let claimable = self.run(task.task_id).is_some_and(|r| {
                let owner = match r.worker.as_ref().and_then(|w| self.workers.get(w)) {
                    Some(holder) => holder.name.as_str(),
                    None => self
                        .chains
                        .get(&r.chain_id)
                        .map_or("", |rec| rec.step(r.at).worker.as_str()),
                };
                r.attempt == task.attempt
                    && self.could_run(&conn, r)
                    && (owner.is_empty() || owner == conn.name)
            });
            let claimed = self.run_mut(task.task_id).filter(|_| claimable).map(|run| {
                run.renewed = Some(awake);
                (run.worker.replace(worker_id), run.declared.clone())
            });
            match claimed {
                Some((old, declared)) => {
                    if let Some(old) = old
                        && let Some(old) = self.workers.get_mut(&old)
                    {
                        old.in_flight.remove(&task.task_id);
                    }
                    if let Some(identity) = declared {
                        self.throttles.set_worker(
                            &identity,
                            &Holder::Task(task.task_id),
                            &conn.name,
                            now,
                        );
                    }
                    conn.in_flight.insert(task.task_id);
                    kept.push(task);
                }
                None => lost.push(task),
            }
        }
        for task in &kept {
            let listed: Set<u64> = hello
                .held_slots
                .iter()
                .filter(|(t, _)| t == task)
                .map(|(_, request_id)| *request_id)
                .collect();
            self.release_unlisted_slots(task.task_id, &listed, now);
        }
        tracing::info!(worker.id = %worker_id, worker.name = %conn.name, kept = kept.len(), lost = lost.len(), "worker connected");
        self.workers.insert(worker_id, conn);
        let lease_ms = self.lease_ms;
        self.send_worker(
            worker_id,
            ToWorker::Welcome {
                worker_id,
                lease_ms,
                kept,
                lost,
            },
        );
        worker_id
    }

    /// Whether `worker` could have been assigned `run`: it serves the
    /// queue the run's step was queued in, and registered its task name.
    pub(super) fn could_run(&self, worker: &WorkerConn, run: &Run) -> bool {
        self.chains.get(&run.chain_id).is_some_and(|rec| {
            let step = rec.step(run.at);
            let queue = if step.queue.is_empty() {
                self.effective(rec, run.at).queue
            } else {
                step.queue.clone()
            };
            worker.names.contains(step.name()) && worker.queues.contains(&queue)
        })
    }

    /// Sets task names' defaults. Their steps already waiting for a slot or
    /// a worker were routed under the old ones (or none: submitted before
    /// any worker declared the name), so they are taken out and made ready
    /// again, oldest first: a throttle or queue declared for the name (the
    /// seed's `@throttle`) applies to them too. One pass over the chains in
    /// memory for all the names of a Hello, however many it registers.
    pub(super) fn redefine(
        &mut self,
        reads: &dyn Lookup,
        defaults: Map<String, Options>,
        now: UnixMs,
    ) {
        let names: Set<String> = defaults.keys().cloned().collect();
        // Cold chains of the names come back without queue entries; the
        // pass below makes them ready again under the new defaults.
        self.warm_names(reads, &names);
        let mut waiting: Vec<(UnixMs, TaskId, ChainId, StepAt)> = Vec::new();
        for (chain_id, rec) in &self.chains {
            #[cfg(test)]
            tests::CHAIN_VISITS.with(|n| n.set(n.get() + 1));
            if rec.is_ended() {
                continue;
            }
            let at = rec.current();
            let step = rec.step(at);
            if names.contains(step.name())
                && matches!(step.state(), StepState::Ready | StepState::Throttled)
            {
                waiting.push((step.ready_ms, step.task(), *chain_id, at));
            }
        }
        waiting.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut grants = Vec::new();
        for &(_, task_id, chain_id, at) in &waiting {
            self.queues.remove(task_id);
            self.throttles
                .remove_waiters(|w| w.ticket.task_id() == task_id);
            // A ready step may hold its task-scoped slot: give it back.
            let rec = &self.chains[&chain_id];
            if let Some(throttle) = self
                .effective(rec, at)
                .throttle
                .filter(|t| t.scope() != ThrottleScope::Chain)
            {
                let identity = Identity::of(rec.step(at).name(), &throttle);
                grants.extend(
                    self.throttle_op(|t, cs| t.release(&identity, &Holder::Task(task_id), now, cs)),
                );
            }
        }
        self.task_defaults.extend(defaults);
        for (_, _, chain_id, at) in waiting {
            self.make_ready(chain_id, at, now);
            self.touch(chain_id);
        }
        self.apply_grants(grants, now);
    }

    pub fn on_worker_message(&mut self, worker_id: WorkerId, msg: FromWorker, now: UnixMs) {
        if !self.workers.contains_key(&worker_id) {
            return;
        }
        match msg {
            FromWorker::Outcome { task, outcome } => self.outcome(worker_id, task, outcome, now),
            FromWorker::Heartbeat { leases } => {
                let awake = self.awake_ms;
                let (all, listed): (bool, Set<TaskId>) = match leases {
                    Leases::All => (true, Set::default()),
                    Leases::Listed(tasks) => (false, tasks.iter().map(|t| t.task_id).collect()),
                };
                let Core {
                    workers,
                    tasks,
                    chains,
                    ..
                } = self;
                for task_id in &workers[&worker_id].in_flight {
                    if (all || listed.contains(task_id))
                        && let Some((chain_id, at)) = tasks.get(task_id)
                        && let Some(run) = chains
                            .get_mut(chain_id)
                            .and_then(|rec| rec.step_mut(*at).run_mut())
                    {
                        // An assignment not sent yet has no lease to extend.
                        if let Some(renewed) = run.renewed.as_mut() {
                            *renewed = awake;
                        }
                    }
                }
            }
            FromWorker::Acquire {
                request_id,
                task,
                throttle,
            } => self.acquire(worker_id, request_id, task, throttle, now),
            FromWorker::Release { request_id, task } => {
                self.release(worker_id, request_id, task, now)
            }
            FromWorker::Drain => {
                if let Some(w) = self.workers.get_mut(&worker_id) {
                    w.draining = true;
                }
            }
            FromWorker::Goodbye => self.worker_gone(worker_id, true, now),
            FromWorker::Window {
                prefetch,
                give_back,
            } => {
                if let Some(w) = self.workers.get_mut(&worker_id) {
                    w.prefetch = prefetch;
                }
                for task in give_back {
                    if self.current_run(worker_id, &task).is_some() {
                        self.give_back(task.task_id, now);
                    }
                }
            }
        }
    }

    /// The run this worker holds for `task`, if it is current.
    pub(super) fn current_run(&self, worker_id: WorkerId, task: &TaskRef) -> Option<&Run> {
        self.run(task.task_id)
            .filter(|r| r.attempt == task.attempt && r.worker == Some(worker_id))
    }

    pub(super) fn outcome(
        &mut self,
        worker_id: WorkerId,
        task: TaskRef,
        outcome: RunOutcome,
        now: UnixMs,
    ) {
        if self.current_run(worker_id, &task).is_none() {
            tracing::info!(task.id = %task.task_id, attempt = task.attempt, "rejected an outcome for an assignment that is not current");
            let reason =
                "the assignment is not current (lease lapsed, reassigned or finished)".into();
            return self.send_worker(
                worker_id,
                ToWorker::Ack {
                    task,
                    accepted: false,
                    reason,
                },
            );
        }
        // The ack goes first: ending the run may hand its slot (and the
        // worker's freed concurrency) straight to the next task.
        self.send_worker(
            worker_id,
            ToWorker::Ack {
                task,
                accepted: true,
                reason: String::new(),
            },
        );
        let run = self.end_run(task.task_id, now).expect("current run");
        let (chain_id, at) = (run.chain_id, run.at);
        let rec = &self.chains[&chain_id];
        log_outcome(chain_id, rec, &task, &outcome);
        if rec.is_ended() || rec.current() != at {
            return self.settle_superseded(chain_id, at, now);
        }
        let outcome = if run.timed_out && !matches!(outcome, RunOutcome::Success(_)) {
            RunOutcome::Failure {
                error_type: "TimeLimitExceeded".into(),
                message: "the run exceeded its time limit".into(),
                traceback: String::new(),
                retryable: true,
            }
        } else {
            outcome
        };
        let eff = self.effective(rec, at);
        match outcome {
            RunOutcome::Success(result) => self.succeed_step(chain_id, at, result, now),
            RunOutcome::Failure {
                error_type,
                message,
                traceback,
                retryable,
            } => {
                let record =
                    self.failure_of(chain_id, at, run.attempt, &error_type, &message, &traceback);
                let step = self.live_step(chain_id, at);
                step.failure = Some(record.clone());
                if retryable && step.retries < eff.max_retries {
                    step.retries += 1;
                    let delay = eff.backoff(step.retries);
                    self.task_metrics.get(&record.task_name).retried.inc();
                    self.schedule(chain_id, at, now.saturating_add(delay));
                    self.event(chain_id, EventKind::StepRetrying, Some(at), now);
                } else {
                    self.fail_step(chain_id, at, record, now);
                }
            }
            RunOutcome::RetryLater { delay_ms, message } => {
                let step = self.live_step(chain_id, at);
                step.polls += 1;
                if step.polls > eff.max_polls {
                    let msg = format!(
                        "{} polls exceeded the budget of {}: {message}",
                        step.polls, eff.max_polls
                    );
                    let record =
                        self.failure_of(chain_id, at, run.attempt, "PollBudgetExhausted", &msg, "");
                    self.fail_step(chain_id, at, record, now);
                } else {
                    self.schedule(chain_id, at, now.saturating_add(delay_ms));
                    self.event_about(chain_id, EventKind::StepPolling, Some(at), now, &message);
                }
            }
        }
        self.touch(chain_id);
    }

    /// A step succeeded with `result` (JSON text; empty reads as null):
    /// a run's, or a group's or nested executor's (see `fanout`). The next
    /// step's turn, the next phase, or the chain's end.
    pub(super) fn succeed_step(
        &mut self,
        chain_id: ChainId,
        at: StepAt,
        result: String,
        now: UnixMs,
    ) {
        // Split borrows: the step, the batch, the kept results, the counts.
        let Core {
            chains,
            batch,
            apart,
            task_metrics,
            queue_counts,
            ..
        } = self;
        let step = chains.get_mut(&chain_id).expect("live chain").step_mut(at);
        step.set_state(StepState::Succeeded);
        if let Some(failure) = step.failure.as_mut() {
            shorten_superseded(failure);
        }
        let result = if result.is_empty() {
            "null".into()
        } else {
            result
        };
        step.result_bytes = u64::try_from(result.len()).unwrap_or(u64::MAX);
        if result.len() > RESULT_APART_AFTER {
            // Written once, apart; the record only says so.
            step.result_apart = true;
            batch.put_result(&chain_id.to_string(), &step.task_id, &result);
            let kept = KeptResult {
                chain_id,
                result: Arc::from(result),
            };
            apart.insert(step.task(), kept);
        } else {
            step.result = result;
        }
        step.finished_ms = now;
        if !step.has_children() {
            task_metrics.get(step.name()).succeeded.inc();
            counts_of(queue_counts, &step.queue).succeeded += 1;
        }
        self.event(chain_id, EventKind::StepSucceeded, Some(at), now);
        self.advance(chain_id, at, now);
        self.prune_results(chain_id);
        self.touch(chain_id);
    }

    pub(super) fn acquire(
        &mut self,
        worker_id: WorkerId,
        request_id: u64,
        task: TaskRef,
        throttle: Throttle,
        now: UnixMs,
    ) {
        let Some(run) = self.current_run(worker_id, &task) else {
            let message = "throttle request for an assignment this worker does not hold".into();
            return self.send_worker(
                worker_id,
                ToWorker::Error {
                    request_id,
                    task: Some(task),
                    message,
                },
            );
        };
        let name = self.chains[&run.chain_id].step(run.at).name().to_owned();
        let identity = Identity::of(&name, &throttle);
        let holder = Holder::InBody {
            task_id: task.task_id,
            request_id,
        };
        if self.throttles.holds(&identity, &holder) {
            // A repeated request (after a reconnect) for a slot it holds.
            return self.send_worker(worker_id, ToWorker::Granted { request_id });
        }
        self.throttles.remove_waiters(|w| w.holder == holder);
        let ticket = Ticket::InBody {
            worker_id,
            task,
            request_id,
        };
        self.wait_for_slot(identity, &throttle, holder, ticket, now);
    }

    pub(super) fn release(
        &mut self,
        worker_id: WorkerId,
        request_id: u64,
        task: TaskRef,
        now: UnixMs,
    ) {
        let Some(run) = self.current_run(worker_id, &task).cloned() else {
            let message = "throttle release for an assignment this worker does not hold".into();
            return self.send_worker(
                worker_id,
                ToWorker::Error {
                    request_id,
                    task: Some(task),
                    message,
                },
            );
        };
        let holder = Holder::InBody {
            task_id: task.task_id,
            request_id,
        };
        let step = self.live_step(run.chain_id, run.at);
        let Some(pos) = step.in_body.iter().position(|h| h.request_id == request_id) else {
            // Not granted yet: withdraw the request.
            self.throttles.remove_waiters(|w| w.holder == holder);
            return;
        };
        let hold = step.in_body.remove(pos);
        self.touch(run.chain_id);
        if let Some(identity) = hold.identity {
            let grants = self.throttle_op(|t, cs| t.release(&identity, &holder, now, cs));
            self.apply_grants(grants, now);
        }
    }

    /// Releases the in-body slots of a run that its worker no longer lists
    /// (it let go of them while disconnected).
    pub(super) fn release_unlisted_slots(
        &mut self,
        task_id: TaskId,
        listed: &Set<u64>,
        now: UnixMs,
    ) {
        let Some(run) = self.run(task_id).cloned() else {
            return;
        };
        let step = self.live_step(run.chain_id, run.at);
        let (keep, release): (Vec<_>, Vec<_>) = std::mem::take(&mut step.in_body)
            .into_iter()
            .partition(|h| listed.contains(&h.request_id));
        step.in_body = keep;
        if release.is_empty() {
            return;
        }
        self.touch(run.chain_id);
        for hold in release {
            if let Some(identity) = hold.identity {
                let holder = Holder::InBody {
                    task_id,
                    request_id: hold.request_id,
                };
                let grants = self.throttle_op(|t, cs| t.release(&identity, &holder, now, cs));
                self.apply_grants(grants, now);
            }
        }
    }

    /// The worker's stream ended. After a Goodbye (`clean`) its runs are
    /// released at once; after a broken stream they keep their leases, so
    /// a worker that reconnects in time keeps them and a crashed one loses
    /// them when the lease lapses, never earlier.
    pub fn worker_gone(&mut self, worker_id: WorkerId, clean: bool, now: UnixMs) {
        let Some(conn) = self.workers.remove(&worker_id) else {
            return;
        };
        tracing::info!(worker.id = %worker_id, worker.name = %conn.name, clean, in_flight = conn.in_flight.len(), "worker disconnected");
        self.closed.push(worker_id);
        self.throttles.remove_waiters(
            |w| matches!(&w.ticket, Ticket::InBody { worker_id: id, .. } if *id == worker_id),
        );
        for task_id in conn.in_flight {
            if let Some(run) = self.run_mut(task_id) {
                run.worker = None;
            }
            if clean {
                self.lose_run(task_id, "worker left", now);
            }
        }
    }
}

/// The line about an accepted outcome, with its chain's trace id (W3C
/// `traceparent` in the chain's context) when it has one. Its fields are
/// computed only when the line is logged.
fn log_outcome(chain_id: ChainId, rec: &ChainRecord, task: &TaskRef, outcome: &RunOutcome) {
    let trace_id = || {
        baton::trace::trace_id_of(
            rec.context
                .get(baton::trace::TRACEPARENT)
                .map(String::as_str),
        )
        .map(tracing::field::display)
    };
    match outcome {
        RunOutcome::Failure { error_type, .. } => tracing::info!(
            chain.id = %chain_id,
            task.id = %task.task_id,
            attempt = task.attempt,
            trace_id = trace_id(),
            error_type = %error_type,
            "task failed"
        ),
        RunOutcome::Success(_) => tracing::debug!(
            chain.id = %chain_id,
            task.id = %task.task_id,
            attempt = task.attempt,
            trace_id = trace_id(),
            "task succeeded"
        ),
        RunOutcome::RetryLater { delay_ms, .. } => tracing::debug!(
            chain.id = %chain_id,
            task.id = %task.task_id,
            attempt = task.attempt,
            trace_id = trace_id(),
            delay_ms,
            "task asked to retry later"
        ),
    }
}

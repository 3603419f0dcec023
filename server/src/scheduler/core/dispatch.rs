//! Dispatch: throttle slots granted in FIFO order, ready work assigned to the workers that may run it, runs ended or lost.

use super::*;

impl Core {
    /// Runs an operation on the throttle table with the rule of
    /// [`throttle::CanStart`]: a waiter that needs a worker is granted only
    /// if a connected worker can start its task now (its queue, its name,
    /// an idle run slot; each approval uses up that slot), and
    /// [`Core::apply_grants`] then assigns it in the same transition.
    ///
    /// An idle run slot, not a prefetch slot: a slot holder prefetched
    /// behind runs whose bodies wait in-body for that same identity would
    /// never start, and they would wait for it forever (docs/reliability.md,
    /// "Findings"). A waiter passed over for want of one reserves the
    /// least busy worker that could take it (`reserved`): it gets no more
    /// prefetch work, so its runs drain and a run slot frees.
    pub(super) fn throttle_op<R>(
        &mut self,
        op: impl FnOnce(&mut Throttles<Ticket>, CanStart<'_, Ticket>) -> R,
    ) -> R {
        let Core {
            throttles,
            workers,
            tasks,
            chains,
            task_defaults,
            queues,
            reserved,
            ..
        } = self;
        let mut free: Map<WorkerId, usize> =
            workers.iter().map(|(id, w)| (*id, w.idle())).collect();
        let mut can_start = |w: &Waiter<Ticket>| -> bool {
            let task_id = match &w.ticket {
                Ticket::InBody { .. } => return true,
                Ticket::Enqueue { task_id } | Ticket::ChainHold { task_id, .. } => task_id,
            };
            let Some((chain_id, at)) = tasks.get(task_id) else {
                return true;
            };
            let Some(rec) = chains.get(chain_id) else {
                return true;
            };
            let sig = rec.step(*at).signature();
            let queue = Effective::resolve(
                sig.options.as_ref(),
                task_defaults.get(&sig.name),
                rec.heavy,
            )
            .queue;
            if queues.is_paused(&queue) {
                return false;
            }
            let serves = |w: &WorkerConn| {
                w.names.contains(&sig.name) && w.queues.contains(&queue) && !w.draining
            };
            let taker = workers.iter().find(|(id, w)| serves(w) && free[*id] > 0);
            if let Some((id, _)) = taker {
                *free.get_mut(id).expect("every worker listed") -= 1;
                return true;
            }
            let least_busy = workers
                .iter()
                .filter(|(_, w)| serves(w))
                .min_by_key(|(_, w)| w.in_flight.len());
            if let Some((id, _)) = least_busy {
                reserved.insert(*id);
            }
            false
        };
        let out = op(throttles, &mut can_start);
        // What the operation changed in rate limits: arrival times to
        // store with the round (the grant's assignment waits for them), and
        // lines that wait for their rate, pumped again when it allows.
        for (identity, tat) in self.throttles.take_written() {
            self.batch.put_bucket(&identity, tat);
        }
        for (identity, at) in self.throttles.take_rate_waits() {
            self.add_timer(at, Timer::Rate { identity });
        }
        out
    }

    /// Puts `holder` in the identity's line (as `throttle` declares it)
    /// and acts on what that grants.
    pub(super) fn wait_for_slot(
        &mut self,
        identity: Identity,
        throttle: &Throttle,
        holder: Holder,
        ticket: Ticket,
        now: UnixMs,
    ) {
        let waiter = Waiter {
            holder,
            since: now,
            ticket,
        };
        let (concurrency, rate) = throttle::declared(throttle);
        let grants = self.throttle_op(|t, cs| t.wait(identity, concurrency, rate, waiter, now, cs));
        self.apply_grants(grants, now);
    }

    /// Assigns a task that was just granted its slot to a worker that can
    /// start it now (one exists: [`Core::throttle_op`] checked).
    pub(super) fn start_now(&mut self, task_id: TaskId, now: UnixMs) {
        let Some((chain_id, at)) = self.tasks.get(&task_id).cloned() else {
            return;
        };
        let step = self.chains[&chain_id].step(at);
        let (name, queue) = (step.name().to_owned(), step.queue.clone());
        let taker = self
            .workers
            .iter()
            .find(|(_, w)| w.idle() > 0 && w.names.contains(&name) && w.queues.contains(&queue))
            .map(|(id, _)| *id);
        if let Some(worker_id) = taker
            && !self.queues.is_paused(&queue)
            && self.queues.remove(task_id)
        {
            self.assign(worker_id, task_id, now);
        }
    }

    /// Acts on throttle grants, and on grants that their effects cause.
    pub(super) fn apply_grants(&mut self, grants: Vec<Grant<Ticket>>, now: UnixMs) {
        let mut work: VecDeque<Grant<Ticket>> = grants.into();
        while let Some(Grant { identity, waiter }) = work.pop_front() {
            // A holder counts from its grant, not from when it began to
            // wait; an in-body holder already runs on a known worker (a
            // declared one learns its worker when assigned).
            let worker = match &waiter.ticket {
                Ticket::InBody { worker_id, .. } => self
                    .workers
                    .get(worker_id)
                    .map_or_else(String::new, |w| w.name.clone()),
                Ticket::Enqueue { .. } | Ticket::ChainHold { .. } => String::new(),
            };
            self.throttles
                .set_worker(&identity, &waiter.holder, &worker, now);
            match waiter.ticket {
                Ticket::Enqueue { task_id } => {
                    if let Some((chain_id, at)) = self.tasks.get(&task_id).cloned() {
                        self.enqueue(chain_id, at, now);
                        self.start_now(task_id, now);
                        self.touch(chain_id);
                    }
                }
                Ticket::ChainHold { chain_id, task_id } => {
                    if let Some((_, at)) = self.tasks.get(&task_id).cloned() {
                        let rec = self.chains.get_mut(&chain_id).expect("live chain");
                        rec.chain_holds.push(identity);
                        self.enqueue(chain_id, at, now);
                        self.start_now(task_id, now);
                        self.touch(chain_id);
                    }
                }
                Ticket::InBody {
                    worker_id,
                    task,
                    request_id,
                } => {
                    let current = self
                        .run(task.task_id)
                        .filter(|r| r.attempt == task.attempt)
                        .map(|r| (r.chain_id, r.at));
                    if let Some((chain_id, at)) = current {
                        let hold = InBodyHold {
                            identity: Some(identity),
                            request_id,
                        };
                        let step = self.live_step(chain_id, at);
                        step.in_body.push(hold);
                        self.touch(chain_id);
                        self.send_worker(worker_id, ToWorker::Granted { request_id });
                    } else {
                        // The run ended while it waited: hand the slot on.
                        work.extend(
                            self.throttle_op(|t, cs| t.release(&identity, &waiter.holder, now, cs)),
                        );
                    }
                }
            }
        }
    }

    /// Assigns ready tasks to workers with free concurrency, round-robin.
    ///
    /// A worker whose run slots are all taken gets only tasks that hold no
    /// throttle slot into its prefetch: a slot held by a task waiting there
    /// behind the worker's runs could be the one their bodies wait for. (A
    /// cold entry holds none: chains holding slots are never cooled.)
    pub fn dispatch(&mut self, reads: &dyn Lookup, now: UnixMs) {
        // First the throttle waiters passed over for want of a worker: some
        // worker may be free now (and those still passed over reserve one).
        self.reserved.clear();
        let grants = self.throttle_op(|t, cs| t.repump(now, cs));
        self.apply_grants(grants, now);
        if !self.rerouting.is_empty() {
            // New task defaults whose cold chains could not be read then.
            let names = std::mem::take(&mut self.rerouting);
            for chain_id in self.warm_names(reads, &names) {
                let at = self.chains[&chain_id].current();
                self.make_ready(chain_id, at, now);
            }
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        self.rr = (self.rr + 1) % ids.len();
        let mut idle = vec![false; ids.len()];
        // Set once a cold chain could not be read: the store is in
        // trouble, and other cold heads would fail the same way.
        let mut cold_unreadable = false;
        loop {
            let mut progress = false;
            for i in 0..ids.len() {
                let k = (self.rr + i) % ids.len();
                if idle[k] {
                    continue;
                }
                let worker = &self.workers[&ids[k]];
                if worker.free() == 0 {
                    idle[k] = true;
                    continue;
                }
                let prefetch_only = worker.idle() == 0;
                if prefetch_only && self.reserved.contains(&ids[k]) {
                    idle[k] = true;
                    continue;
                }
                let Core {
                    queues,
                    tasks,
                    chains,
                    task_defaults,
                    rerouting,
                    ..
                } = self;
                let picked =
                    queues.pop_for(
                        &worker.queues,
                        &worker.names,
                        now,
                        |name, head| match head {
                            Head::Hot(task_id) => {
                                prefetch_only && holds_a_slot(tasks, chains, task_defaults, task_id)
                            }
                            Head::Cold => cold_unreadable || rerouting.contains(name),
                        },
                    );
                let task_id = match picked {
                    Some((Queued::Hot(task_id), _)) => Some(task_id),
                    Some((Queued::Cold(key), place)) => match self.warm(reads, key, false) {
                        Ok(chain_id) => {
                            let rec = &self.chains[&chain_id];
                            Some(rec.step(rec.current()).task())
                        }
                        Err(Unwarmed::Missing) => None,
                        Err(Unwarmed::Unreadable) => {
                            self.queues.put_back(Queued::Cold(key), place);
                            cold_unreadable = true;
                            None
                        }
                    },
                    None => {
                        idle[k] = true;
                        continue;
                    }
                };
                if let Some(task_id) = task_id {
                    self.assign(ids[k], task_id, now);
                }
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    pub(super) fn assign(&mut self, worker_id: WorkerId, task_id: TaskId, now: UnixMs) {
        let (chain_id, at) = self.tasks[&task_id];
        let rec = &self.chains[&chain_id];
        let eff = self.effective(rec, at);
        let carried = if rec.step(at).signature().immutable {
            None
        } else {
            self.carried(rec, at)
        };
        let worker_name = self.workers[&worker_id].name.clone();
        let lease_deadline = self.lease_deadline(now);
        let rec = self.chains.get_mut(&chain_id).expect("live chain");
        let context = rec.context.clone();
        let step = rec.step_mut(at);
        step.attempts += 1;
        step.worker = worker_name.clone();
        step.started_ms = now;
        let waited_ms = now.saturating_sub(step.ready_ms);
        self.metrics
            .assignment_latency
            .observe(crate::metrics::millis_as_seconds(waited_ms));
        let counts = counts_of(&mut self.queue_counts, &eff.queue);
        counts.started += 1;
        counts.waited_ms = counts.waited_ms.saturating_add(waited_ms);
        step.in_body.clear();
        let attempt = step.attempts;
        let sig = step.signature().clone();
        let declared = eff
            .throttle
            .as_ref()
            .filter(|t| t.scope() != ThrottleScope::Chain)
            .map(|t| Identity::of(&sig.name, t));
        if let Some(identity) = &declared {
            self.throttles
                .set_worker(identity, &Holder::Task(task_id), &worker_name, now);
        }
        let assignment = Assignment {
            task: TaskRef { task_id, attempt },
            chain_id,
            at,
            name: sig.name.clone(),
            args: with_carried(&sig.args, carried),
            kwargs: sig.kwargs.clone(),
            context,
            queue: eff.queue.clone(),
            lease_deadline_ms: lease_deadline,
            timeout_ms: eff.timeout_ms,
            polls: step.polls,
            retries: step.retries,
        };
        let run = Run {
            chain_id,
            at,
            attempt,
            worker: Some(worker_id),
            renewed: None,
            declared,
            timed_out: false,
        };
        self.live_step(chain_id, at).start(run);
        self.workers
            .get_mut(&worker_id)
            .expect("connected worker")
            .in_flight
            .insert(task_id);
        self.add_timer(lease_deadline, Timer::Lease { task_id, attempt });
        if eff.timeout_ms > 0 {
            self.add_timer(
                now.saturating_add(eff.timeout_ms),
                Timer::Timeout { task_id, attempt },
            );
        }
        let early = eff.throttle.is_none()
            && self.workers[&worker_id].welcomed
            && self.workers[&worker_id].held_back == 0
            && self.unsettled.resumed == 0
            && !self.unsettled.ready.contains_key(&task_id);
        let send = Output::ToWorker {
            worker_id,
            msg: ToWorker::Assign(Box::new(assignment)),
        };
        self.metrics.assignments.inc();
        if early {
            self.metrics.early_assignments.inc();
            self.early.push(send);
        } else {
            self.emit(send);
            // Delivered right after it, in order: early ones may follow.
            self.emit(Output::Settled(Settled::Sent(worker_id)));
            if let Some(worker) = self.workers.get_mut(&worker_id) {
                worker.held_back += 1;
            }
        }
        self.event(chain_id, EventKind::StepStarted, Some(at), now);
        self.touch(chain_id);
    }

    /// Ends a run: frees its worker's concurrency and every slot it holds.
    /// Its step is left pending: the caller moves it on in the same
    /// transition (done, failed, again, or settled if its chain moved on).
    pub(super) fn end_run(&mut self, task_id: TaskId, now: UnixMs) -> Option<Run> {
        let (chain_id, at) = *self.tasks.get(&task_id)?;
        let step = self.chains.get_mut(&chain_id)?.step_mut(at);
        let run = step.end_run(StepState::Pending)?;
        let in_body = std::mem::take(&mut step.in_body);
        if let Some(worker) = run.worker.as_ref().and_then(|w| self.workers.get_mut(w)) {
            worker.in_flight.remove(&task_id);
        }
        let mut grants = Vec::new();
        if let Some(identity) = &run.declared {
            grants.extend(
                self.throttle_op(|t, cs| t.release(identity, &Holder::Task(task_id), now, cs)),
            );
        }
        for hold in in_body {
            if let Some(identity) = hold.identity {
                let holder = Holder::InBody {
                    task_id,
                    request_id: hold.request_id,
                };
                grants.extend(self.throttle_op(|t, cs| t.release(&identity, &holder, now, cs)));
            }
        }
        self.throttles.remove_waiters(
            |w| matches!(&w.ticket, Ticket::InBody { task, .. } if task.task_id == task_id),
        );
        self.apply_grants(grants, now);
        self.touch(run.chain_id);
        Some(run)
    }

    /// A worker gave back a run it had not started (`FromWorker::Window`):
    /// the step goes back to its queue, as if the run had never been sent.
    /// Nothing is counted against it (no lapse, retry or poll), and the
    /// history keeps nothing of it: no body ran.
    pub(super) fn give_back(&mut self, task_id: TaskId, now: UnixMs) {
        let Some(run) = self.end_run(task_id, now) else {
            return;
        };
        if self.still_current(&run, now) {
            self.live_step(run.chain_id, run.at).worker.clear();
            self.make_ready(run.chain_id, run.at, now);
        }
    }

    /// Whether an ended run's step is still its chain's current one, for
    /// the caller (a run given back, a run lost) to queue it again or fail
    /// it. A superseded step (the chain ended or moved past it meanwhile)
    /// is freed of its worker and settled here.
    fn still_current(&mut self, run: &Run, now: UnixMs) -> bool {
        let rec = self.chains.get_mut(&run.chain_id).expect("live chain");
        let superseded = rec.is_ended() || rec.current() != run.at;
        if superseded {
            rec.step_mut(run.at).worker.clear();
            self.settle_superseded(run.chain_id, run.at, now);
        }
        !superseded
    }

    /// A run was lost (lease lapsed, worker said goodbye mid-run): the step
    /// goes back to its queue with the next attempt, or fails once it was
    /// lost too often.
    pub(super) fn lose_run(&mut self, task_id: TaskId, reason: &str, now: UnixMs) {
        let Some(run) = self.end_run(task_id, now) else {
            return;
        };
        if let Some(worker) = run.worker {
            let task = TaskRef {
                task_id,
                attempt: run.attempt,
            };
            self.send_worker(
                worker,
                ToWorker::Cancel {
                    task,
                    reason: reason.to_owned(),
                },
            );
        }
        if !self.still_current(&run, now) {
            return;
        }
        let chain_id = run.chain_id;
        let step = self.live_step(chain_id, run.at);
        step.lapses += 1;
        if step.lapses > MAX_LAPSES {
            let record = self.failure_of(
                chain_id,
                run.at,
                run.attempt,
                "WorkerLost",
                &format!("the run was lost {} times ({reason})", MAX_LAPSES + 1),
                "",
            );
            let step = self.live_step(chain_id, run.at);
            step.set_state(StepState::Failed);
            step.failure = Some(record.clone());
            step.finished_ms = now;
            step.worker.clear();
            self.event(chain_id, EventKind::StepFailed, Some(run.at), now);
            self.fail_chain(chain_id, record, now);
        } else {
            // The history names the worker that lost it.
            self.event_about(chain_id, EventKind::StepLost, Some(run.at), now, reason);
            self.live_step(chain_id, run.at).worker.clear();
            self.make_ready(chain_id, run.at, now);
        }
    }
}

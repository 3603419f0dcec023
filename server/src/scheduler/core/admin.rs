//! Inspection and admin: queue, worker and throttle views, limits, pause and purge, requeue of failed chains, drain.

use super::*;

impl Core {
    /// Worker streams connected now.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    pub fn queue_stats(&self, now: UnixMs) -> Vec<QueueStats> {
        let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
        for (queue, depth) in self.queues.depths() {
            let s = stats
                .entry(queue.clone())
                .or_insert_with(|| QueueStats::named(&queue));
            s.ready = depth.ready;
            s.ready_by_priority = depth.by_priority;
            s.oldest_ready_age_ms = depth.oldest_ready_ms.map_or(0, |t| now.saturating_sub(t));
        }
        for rec in self.chains.values() {
            for (at, step) in rec.all_steps() {
                let field = match step.state() {
                    StepState::Scheduled if !rec.is_ended() => 0,
                    StepState::Throttled if !rec.is_ended() => 1,
                    StepState::Running => 2,
                    _ => continue,
                };
                let queue = if step.queue.is_empty() {
                    self.effective(rec, at).queue
                } else {
                    step.queue.clone()
                };
                let s = stats
                    .entry(queue.clone())
                    .or_insert_with(|| QueueStats::named(&queue));
                match field {
                    0 => s.delayed += 1,
                    1 => s.throttled += 1,
                    _ => s.running += 1,
                }
            }
        }
        for queue in self.queues.paused() {
            stats
                .entry(queue.to_owned())
                .or_insert_with(|| QueueStats::named(queue))
                .paused = true;
        }
        // Waiting work that no connected worker runs: the ready lines (hot
        // or cold) and the waiting steps of the chains in memory.
        let mut unserved: BTreeSet<(String, String)> = self
            .queues
            .lines()
            .filter(|(queue, name)| !self.serves(queue, name))
            .map(|(queue, name)| (queue.to_owned(), name.to_owned()))
            .collect();
        for rec in self.chains.values() {
            for (at, queue) in self.unserved_steps(rec) {
                unserved.insert((queue, rec.step(at).signature().name.clone()));
            }
        }
        for (queue, name) in unserved {
            if let Some(s) = stats.get_mut(&queue) {
                s.unserved.push(name);
            }
        }
        stats.into_values().collect()
    }

    /// Whether a connected worker subscribed to `queue` registered `name`:
    /// only such a worker is assigned that work (routing isolation).
    pub(super) fn serves(&self, queue: &str, name: &str) -> bool {
        self.workers
            .values()
            .any(|w| w.names.contains(name) && w.queues.iter().any(|q| q == queue))
    }

    /// The steps of `rec` that wait (ready, delayed or throttled) for a task
    /// name that no connected worker registered for their queue, each with
    /// that queue: they wait until such a worker connects. For inspection.
    pub fn unserved_steps(&self, rec: &ChainRecord) -> Vec<(StepAt, String)> {
        if rec.is_ended() {
            return Vec::new();
        }
        rec.all_steps()
            .filter(|(_, step)| {
                matches!(
                    step.state(),
                    StepState::Ready | StepState::Scheduled | StepState::Throttled
                )
            })
            .filter_map(|(at, step)| {
                let queue = if step.queue.is_empty() {
                    self.effective(rec, at).queue
                } else {
                    step.queue.clone()
                };
                (!self.serves(&queue, &step.signature().name)).then_some((at, queue))
            })
            .collect()
    }

    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.workers
            .iter()
            .map(|(id, w)| WorkerStats {
                worker_id: *id,
                name: w.name.clone(),
                queues: w.queues.clone(),
                task_names: {
                    let mut names: Vec<String> = w.names.iter().cloned().collect();
                    names.sort();
                    names
                },
                concurrency: w.concurrency,
                prefetch: w.prefetch,
                in_flight: w
                    .in_flight
                    .iter()
                    .filter_map(|t| {
                        self.run(*t).map(|r| TaskRef {
                            task_id: *t,
                            attempt: r.attempt,
                        })
                    })
                    .collect(),
                draining: w.draining,
                connected_ms: w.connected_ms,
            })
            .collect()
    }

    pub fn throttle_info(&self) -> Vec<crate::scheduler::ThrottleStats> {
        let chain_of = |h: &Holder| match h {
            Holder::Chain(c) => Some(*c),
            Holder::Task(t) | Holder::InBody { task_id: t, .. } => {
                self.tasks.get(t).map(|(c, _)| *c)
            }
        };
        self.throttles
            .info()
            .into_iter()
            .map(|info| {
                let holders = info.holders.iter().map(|(h, _)| chain_of(h)).collect();
                let waiters = info
                    .first_waiters
                    .iter()
                    .map(|(h, _)| chain_of(h))
                    .collect();
                (info, holders, waiters)
            })
            .collect()
    }

    /// Sets or clears an identity's admin limit. The answer (every
    /// identity, as [`Core::throttle_info`] has them) waits, like every
    /// admin change, until the limit is durable.
    pub fn set_limit(
        &mut self,
        identity: Identity,
        limit: Option<u32>,
        reply: Req<Vec<crate::scheduler::ThrottleStats>>,
        now: UnixMs,
    ) {
        self.batch.put_limit(&identity, limit);
        let grants = self.throttle_op(|t, cs| t.set_override(identity, limit, now, cs));
        self.apply_grants(grants, now);
        let info = self.throttle_info();
        self.reply(reply, Ok(info));
    }

    /// Sets or clears an identity's admin rate; answered, like
    /// [`Core::set_limit`], once the change is durable.
    pub fn set_rate(
        &mut self,
        identity: Identity,
        rate: Option<Rate>,
        reply: Req<Vec<crate::scheduler::ThrottleStats>>,
        now: UnixMs,
    ) {
        self.batch
            .put_rate(&identity, rate.map(RateRecord::from).as_ref());
        let grants = self.throttle_op(|t, cs| t.set_rate_override(identity, rate, now, cs));
        self.apply_grants(grants, now);
        let info = self.throttle_info();
        self.reply(reply, Ok(info));
    }

    /// Pauses or resumes dispatch from a queue. The change is stored with
    /// the round's writes; a resumed queue's tasks go out with the round's
    /// dispatch.
    pub fn pause_queue(&mut self, queue: &str, paused: bool, reply: Req<QueueStats>, now: UnixMs) {
        let changed = if paused {
            self.queues.pause(queue)
        } else {
            self.queues.resume(queue)
        };
        if changed {
            self.batch.put_paused(queue, paused);
            tracing::info!(queue, paused, "queue dispatch changed");
            if !paused {
                self.unsettled.resumed += 1;
                self.emit(Output::Settled(Settled::Resumed));
            }
        }
        let stats = self
            .queue_stats(now)
            .into_iter()
            .find(|q| q.name == queue)
            .unwrap_or_else(|| QueueStats::named(queue));
        self.reply(reply, Ok(stats));
    }

    /// Cancels, as [`Core::cancel`] does, the chain of every task READY in
    /// `queue`. Tasks running, delayed or throttled are not in the queue
    /// and stay.
    pub fn purge_queue(
        &mut self,
        reads: &dyn Lookup,
        queue: &str,
        reason: &str,
        reply: Req<Vec<ChainId>>,
        now: UnixMs,
    ) {
        // Cold chains come back without queue entries: they are cancelled
        // below like the rest. Those that cannot be read now stay queued,
        // and the answer says so.
        let mut chain_ids: Vec<ChainId> = Vec::new();
        let mut unread = 0;
        for (key, place) in self.queues.take_cold(|q, _| q == queue) {
            if unread == 0 {
                match self.warm(reads, key, false) {
                    Ok(chain_id) => {
                        chain_ids.push(chain_id);
                        continue;
                    }
                    Err(Unwarmed::Missing) => continue,
                    Err(Unwarmed::Unreadable) => {}
                }
            }
            unread += 1;
            self.queues.put_back(Queued::Cold(key), place);
        }
        for entry in self.queues.entries(queue) {
            if let Queued::Hot(task_id) = entry {
                chain_ids.extend(self.tasks.get(&task_id).map(|(c, _)| *c));
            }
        }
        chain_ids.sort();
        chain_ids.dedup();
        let reason = if reason.is_empty() {
            format!("queue {queue} purged")
        } else {
            format!("queue {queue} purged: {reason}")
        };
        for &chain_id in &chain_ids {
            // Each is in memory now (warmed above, or hot), so this
            // cancels it.
            let _ = self.cancel_chain(reads, chain_id, reason.clone(), now);
        }
        tracing::info!(queue, cancelled = chain_ids.len(), unread, "queue purged");
        let answer = if unread == 0 {
            Ok(chain_ids)
        } else {
            Err(Error::Unavailable(format!(
                "{} chains of queue {queue} were cancelled, but {unread} queued chains could not \
                 be read from the store and stay queued: purge again later",
                chain_ids.len()
            )))
        };
        self.reply(reply, answer);
    }

    /// Submits a failed chain's spec again as a new chain and links the
    /// two records, in one batch.
    pub fn requeue(
        &mut self,
        reads: &dyn Lookup,
        chain_id: ChainId,
        reply: Req<ChainId>,
        now: UnixMs,
    ) {
        let result = self.requeue_chain(reads, chain_id, now);
        self.reply(reply, result);
    }

    pub(super) fn requeue_chain(
        &mut self,
        reads: &dyn Lookup,
        chain_id: ChainId,
        now: UnixMs,
    ) -> Result<ChainId, Error> {
        let mut original = self.chain(reads, chain_id)?;
        if original.state() != ChainState::Failed {
            return Err(Error::Conflict(format!(
                "chain {chain_id} did not fail (it is {}): only failed chains are requeued",
                original
                    .state()
                    .as_str_name()
                    .trim_start_matches("CHAIN_STATE_")
                    .to_lowercase()
            )));
        }
        if !original.requeued_as.is_empty() {
            return Err(Error::Conflict(format!(
                "chain {chain_id} was requeued already, as {}",
                original.requeued_as
            )));
        }
        if let Some(running) = self
            .unique
            .get(&original.unique_key)
            .filter(|_| !original.unique_key.is_empty())
        {
            return Err(Error::Exists(format!(
                "chain {running} with the same unique key is queued or running"
            )));
        }
        // A group's or nested executor's members are stored apart.
        let signatures = |steps: &[StepRecord]| -> Result<Vec<Signature>, Error> {
            steps
                .iter()
                .map(|s| {
                    if !s.has_children() {
                        return Ok(s.signature().clone());
                    }
                    reads
                        .members(&self.batch, &original.id, &s.task_id)
                        .map_err(|e| Error::Store(e.to_string()))?
                        .ok_or_else(|| {
                            Error::Store(format!(
                                "the members of step {} are missing from the store",
                                s.task_id
                            ))
                        })
                })
                .collect()
        };
        let spec = ChainSpec {
            chain_id: None,
            steps: signatures(&original.steps)?,
            on_success: signatures(&original.on_success)?,
            on_failure: signatures(&original.on_failure)?,
            heavy: original.heavy,
            context: original.context.clone(),
            idempotency_key: String::new(),
            unique_key: original.unique_key.clone(),
            deadline_ms: if original.deadline_ms > 0 {
                now + original.deadline_ms.saturating_sub(original.created_ms)
            } else {
                0
            },
            owner: original.owner.clone(),
            parent: None,
            input: self.input_of(reads, &original)?,
            input_apart: false,
        };
        let new_id = self.create(spec, now);
        if let Some(rec) = self.chains.get_mut(&new_id) {
            rec.requeued_from = chain_id.to_string();
        }
        let requeued = HistoryEntry::chain(EventKind::Requeued, now, &new_id.to_string());
        match self.chains.get_mut(&chain_id) {
            // Ended with a run still out: written with the round's dirty chains.
            Some(rec) => {
                rec.requeued_as = new_id.to_string();
                rec.record(requeued);
                self.touch(chain_id);
            }
            None => {
                original.requeued_as = new_id.to_string();
                original.record(requeued);
                self.batch.put_chain(&original, false);
            }
        }
        tracing::info!(chain.id = %new_id, requeued_from = %chain_id, "failed chain requeued");
        Ok(new_id)
    }

    /// Marks every worker stream named `who` (or with id `who`) draining:
    /// it gets no new assignments and finishes what it runs.
    pub fn drain_workers(&mut self, who: &str, reply: Req<Vec<WorkerStats>>) {
        let mut matched = Set::default();
        let by_id = WorkerId::parse(who).ok();
        for (id, worker) in &mut self.workers {
            if worker.name == who || by_id == Some(*id) {
                worker.draining = true;
                matched.insert(*id);
            }
        }
        let result = if matched.is_empty() {
            Err(Error::NotFound(format!("no connected worker named {who}")))
        } else {
            tracing::info!(worker.name = %who, streams = matched.len(), "worker draining (admin)");
            Ok(self
                .worker_stats()
                .into_iter()
                .filter(|w| matched.contains(&w.worker_id))
                .collect())
        };
        self.reply(reply, result);
    }
}

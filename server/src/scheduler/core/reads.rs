//! Reads of chains for clients: from memory when live, else from the store, with the results kept apart filled in.

use super::*;

impl Core {
    /// Reads from the store the results stored apart that `chain` still
    /// uses. One missing is an error in the log: the step gets null.
    pub(super) fn results_apart_of(
        &self,
        reads: &dyn Lookup,
        chain: &ChainRecord,
    ) -> Result<Vec<(TaskId, KeptResult)>, crate::store::Error> {
        let mut out = Vec::new();
        for step in chain.results_in_use().filter(|s| s.result_apart) {
            match reads.result(&self.batch, &chain.id, &step.task_id)? {
                Some(result) => {
                    let kept = KeptResult {
                        chain_id: chain.chain_id(),
                        result: Arc::from(result),
                    };
                    out.push((step.task(), kept));
                }
                None => tracing::error!(
                    chain.id = %chain.id,
                    task.id = %step.task_id,
                    "a result stored apart is missing"
                ),
            }
        }
        Ok(out)
    }

    /// The result of `step` of `chain_id`, kept apart in memory.
    pub(super) fn kept_result(&self, step: &StepRecord) -> Option<Arc<str>> {
        self.apart.get(&step.task()).map(|k| Arc::clone(&k.result))
    }

    /// Fills in a copy of a chain, for an answer or an event, the results
    /// stored apart that are in memory: the one carried to the current
    /// step and the chain's result. Older ones stay empty, marked apart:
    /// the view shows them as omitted, and `GetStepResult` reads them.
    pub(super) fn with_results(&self, mut rec: ChainRecord) -> ChainRecord {
        for steps in [&mut rec.steps, &mut rec.on_success, &mut rec.on_failure] {
            for step in steps.iter_mut().filter(|s| s.result_apart) {
                if let Some(kept) = self.apart.get(&step.task()) {
                    step.result = kept.result.to_string();
                }
            }
        }
        if rec.result_apart
            && let Some(last) = rec.steps.last()
        {
            rec.result = last.result.clone();
        }
        rec
    }

    /// Drops the results kept apart for `chain_id` that it no longer uses.
    pub(super) fn prune_results(&mut self, chain_id: ChainId) {
        // Most brokers keep no result apart: nothing to walk on the path of
        // every outcome.
        if self.apart.is_empty() {
            return;
        }
        let Some(rec) = self.chains.get(&chain_id) else {
            return;
        };
        // At most two steps.
        let in_use: Vec<TaskId> = rec.results_in_use().map(StepRecord::task).collect();
        for (_, step) in rec.all_steps() {
            if step.result_apart && !in_use.contains(&step.task()) {
                self.apart.remove(&step.task());
            }
        }
    }

    /// A chain's record, from memory if live, else from the store.
    /// A chain as requests see it, with the results it still uses filled
    /// in (see [`Core::with_results`]); from the store when it is not in
    /// memory.
    pub fn chain(&self, reads: &dyn Lookup, chain_id: ChainId) -> Result<ChainRecord, Error> {
        if let Some(rec) = self.chains.get(&chain_id) {
            return Ok(self.with_results(rec.clone()));
        }
        let store_error = |e: crate::store::Error| Error::Store(e.to_string());
        let mut rec = reads
            .chain(&self.batch, &chain_id.to_string())
            .map_err(store_error)?
            .ok_or_else(|| Error::NotFound(format!("chain {chain_id} not found")))?;
        // The chain's result, shown with its step as for a chain in memory.
        if rec.result_apart
            && let Some(last) = rec.steps.last_mut()
        {
            last.result = reads
                .result(&self.batch, &chain_id.to_string(), &last.task_id)
                .map_err(store_error)?
                .unwrap_or_default();
            rec.result = last.result.clone();
        }
        Ok(rec)
    }

    /// A step's result, whether kept in its chain's record or apart.
    pub fn step_result(
        &mut self,
        reads: &dyn Lookup,
        chain_id: ChainId,
        task_id: TaskId,
        reply: Req<String>,
    ) {
        let answer = self.chain(reads, chain_id).and_then(|rec| {
            let step = rec
                .all_steps()
                .find(|(_, s)| s.task() == task_id)
                .map(|(_, s)| s)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "chain {chain_id} has no step with task id {task_id}"
                    ))
                })?;
            if step.state() != StepState::Succeeded {
                return Err(Error::Conflict(format!(
                    "step {task_id} has no result: it is {:?}",
                    step.state()
                )));
            }
            if !step.result_apart || !step.result.is_empty() {
                return Ok(step.result.clone());
            }
            reads
                .result(&self.batch, &chain_id.to_string(), &task_id.to_string())
                .map_err(|e| Error::Store(e.to_string()))?
                .ok_or_else(|| Error::Store(format!("the result of step {task_id} is missing")))
        });
        self.reply(reply, answer);
    }

    pub fn get(&mut self, reads: &dyn Lookup, chain_id: ChainId, reply: Req<ChainRecord>) {
        let result = self.chain(reads, chain_id);
        self.reply(reply, result);
    }

    /// [`Core::get`] with the chain's [`Core::unserved_steps`].
    pub fn inspect(&mut self, reads: &dyn Lookup, chain_id: ChainId, reply: Req<Inspected>) {
        let result = self.chain(reads, chain_id).map(|rec| {
            let unserved = self.unserved_steps(&rec);
            (rec, unserved)
        });
        self.reply(reply, result);
    }

    /// Opens a watcher of a chain (the driver holds its stream, under
    /// the request's number): its first event is a snapshot.
    pub fn watch(&mut self, reads: &dyn Lookup, chain_id: ChainId, reply: Req<()>) {
        match self.chain(reads, chain_id) {
            Err(e) => self.reply(reply, Err(e)),
            Ok(chain) => {
                let keep = !chain.is_ended();
                if keep {
                    *self.watched.entry(chain_id).or_default() += 1;
                }
                let event = Arc::new(ChainEvent::new("snapshot", None, chain));
                self.emit(Output::Snapshot {
                    request: reply.id(),
                    chain_id,
                    event,
                    keep,
                });
                self.reply(reply, Ok(()));
            }
        }
    }
}

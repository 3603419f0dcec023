//! Admission: submissions checked, deduplicated (chain id, idempotency and unique keys) and stored; long queue lines kept cold on disk and warmed back.

use super::*;

impl Core {
    pub fn submit(
        &mut self,
        reads: &dyn Lookup,
        spec: ChainSpec,
        reply: Req<Submitted>,
        now: UnixMs,
    ) {
        let result = self
            .check_admissible(reads, &spec)
            .map(|stored| self.admit(spec, stored, now));
        self.reply(reply, result);
    }

    /// Stores a batch of chains: all of them, or none when one of them
    /// cannot be admitted. They are admitted in order, so a later chain is
    /// deduplicated against an earlier one of the same batch.
    pub fn submit_many(
        &mut self,
        reads: &dyn Lookup,
        specs: Vec<ChainSpec>,
        reply: Req<Vec<Submitted>>,
        now: UnixMs,
    ) {
        let checked: Result<Vec<Stored>, Error> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                self.check_admissible(reads, spec)
                    .map_err(|e| e.prefixed(&format!("chains[{i}]: ")))
            })
            .collect();
        let result = checked.map(|stored| {
            specs
                .into_iter()
                .zip(stored)
                .map(|(spec, stored)| self.admit(spec, stored, now))
                .collect()
        });
        self.reply(reply, result);
    }

    /// What could refuse a submission without changing anything: a
    /// client-chosen id that belongs to another owner's chain, or a store
    /// read that failed. Returns what the store holds for the submission, so
    /// that [`admit`] does not read it again.
    ///
    /// [`admit`]: Self::admit
    pub(super) fn check_admissible(
        &self,
        reads: &dyn Lookup,
        spec: &ChainSpec,
    ) -> Result<Stored, Error> {
        let mut stored = Stored::default();
        if !spec.idempotency_key.is_empty() {
            stored.idempotent = reads
                .idempotent_chain(&self.batch, &spec.idempotency_key)
                .map_err(|e| Error::Store(e.to_string()))?
                .and_then(|id| ChainId::parse(&id).ok());
            // A key must never answer with a chain nobody can read: a batch
            // torn by disk trouble and a kill may have kept the key without
            // its chain (finding 18 of docs/reliability.md). The key is
            // then taken anew by this submission.
            if let Some(id) = stored.idempotent
                && let Err(Error::NotFound(_)) = self.chain(reads, id)
            {
                tracing::error!(
                    idempotency_key = %spec.idempotency_key,
                    chain.id = %id,
                    "an idempotency key names a chain that is not stored; the key goes to this submission"
                );
                stored.idempotent = None;
            }
        }
        if let Some(id) = spec.chain_id {
            match self.chain(reads, id) {
                Ok(rec) if rec.owner != spec.owner => {
                    return Err(Error::Exists(format!(
                        "chain_id {id} is taken by another client's chain; choose a fresh UUID"
                    )));
                }
                Ok(_) => stored.chain = true,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(stored)
    }

    /// Whether a chain was stored by this round (it may have left memory
    /// already: cooled).
    pub(super) fn created(&self, chain_id: ChainId) -> bool {
        self.chains.contains_key(&chain_id) || self.batch.has_chain(&chain_id.to_string())
    }

    /// Deduplicates a submission or stores it. `stored` is what
    /// [`check_admissible`] found; a chain admitted since (earlier in the
    /// same batch) is in memory.
    ///
    /// [`check_admissible`]: Self::check_admissible
    pub(super) fn admit(&mut self, spec: ChainSpec, stored: Stored, now: UnixMs) -> Submitted {
        let dedup = |chain_id: ChainId, dedup| Submitted {
            chain_id,
            dedup: Some(dedup),
        };
        if let Some(id) = spec.chain_id.filter(|id| stored.chain || self.created(*id)) {
            return dedup(id, Dedup::ChainId);
        }
        if !spec.idempotency_key.is_empty() {
            // A chain admitted earlier in this batch may have taken the key.
            let known = self
                .batch
                .idempotent_chain(&spec.idempotency_key)
                .and_then(|id| ChainId::parse(&id).ok())
                .or(stored.idempotent);
            if let Some(id) = known {
                return dedup(id, Dedup::IdempotencyKey);
            }
        }
        if let Some(id) = self
            .unique
            .get(&spec.unique_key)
            .filter(|_| !spec.unique_key.is_empty())
        {
            return dedup(*id, Dedup::UniqueKey);
        }
        let chain_id = self.create(spec, now);
        tracing::debug!(chain.id = %chain_id, "chain submitted");
        Submitted {
            chain_id,
            dedup: None,
        }
    }

    /// Stores a new chain (deduplication already checked) and starts its
    /// first step; returns its id.
    pub(super) fn create(&mut self, mut spec: ChainSpec, now: UnixMs) -> ChainId {
        let chain_id = match spec.chain_id.take() {
            Some(id) => id,
            None => self.ids.chain(),
        };
        if !spec.idempotency_key.is_empty() {
            self.batch
                .put_idempotency_key(&spec.idempotency_key, &chain_id.to_string());
        }
        let mut chain = ChainRecord::with_ids(chain_id, spec, now, &mut self.ids);
        self.store_members(&mut chain);
        if chain.deadline_ms > 0 {
            self.add_timer(chain.deadline_ms, Timer::Deadline { chain_id });
        }
        self.index_chain(chain);
        self.live_unwritten.insert(chain_id);
        self.start_step(
            chain_id,
            StepAt {
                phase: Phase::Main,
                index: 0,
            },
            now,
        );
        self.touch(chain_id);
        self.cool(chain_id);
        chain_id
    }

    /// Stores the members of each group and nested executor step of a new
    /// chain apart from its record, which keeps only their count (see
    /// `fanout`).
    fn store_members(&mut self, chain: &mut ChainRecord) {
        let id = chain.id.clone();
        for phase in [Phase::Main, Phase::OnSuccess, Phase::OnFailure] {
            for step in chain.steps_of_mut(phase) {
                let signature = step.signature();
                let (children, nested) = match signature.kind() {
                    StepKind::Task => continue,
                    StepKind::Group(_) => (signature.child_count(), false),
                    StepKind::Executor(_) => (1, true),
                };
                self.batch.put_members(&id, &step.task_id, signature);
                step.children = children;
                step.nested = nested;
                if let Some(signature) = step.signature.as_mut() {
                    signature.members = Vec::new();
                    signature.executor = None;
                }
            }
        }
    }

    /// Moves a new chain out of memory when its first step joins a long
    /// queue line: its record goes to the store (the pending batch) and
    /// the queue keeps a cold entry of a few dozen bytes in its place, in
    /// the same position. A backlog of millions then costs little memory,
    /// and recovery queues it again from the store's small `live` entries
    /// without reading the records. The chain comes back ([`Core::warm`])
    /// when a worker picks it, or when a request needs it (cancel, purge,
    /// new task defaults).
    ///
    /// Only a chain that nothing else refers to is cooled: its step is
    /// READY (not waiting for a slot or a timer), and it has no deadline,
    /// no unique key and no chain-scoped slot.
    pub(super) fn cool(&mut self, chain_id: ChainId) {
        let rec = &self.chains[&chain_id];
        let at = rec.current();
        let step = rec.step(at);
        if step.state() != StepState::Ready
            || rec.deadline_ms > 0
            || !rec.unique_key.is_empty()
            || !rec.chain_holds.is_empty()
            || self.queues.line_len(&step.queue, step.name()) <= COLD_AFTER
        {
            return;
        }
        let key = chain_id.uuid().as_u128();
        let waits = ColdSummary {
            queue: step.queue.clone(),
            name: step.name().to_owned(),
            priority: self.effective(rec, at).priority,
            ready_ms: step.ready_ms,
        };
        if !self.queues.cool(step.task(), key) {
            return;
        }
        let rec = self.chains.remove(&chain_id).expect("live chain");
        for (_, step) in rec.all_steps() {
            self.tasks.remove(&step.task());
        }
        self.dirty.remove(&chain_id);
        self.live_unwritten.remove(&chain_id);
        self.batch.put_cold_chain(&rec, &waits);
    }

    /// Brings a cold chain back into memory. When it is still `queued`,
    /// its queue entry turns hot in place (a scan of its line: requests
    /// that name a chain are rare); a chain just picked from its queue has
    /// no entry left. Returns the chain's id, or why it could not: then
    /// the caller puts a picked entry back (the store may be unreadable
    /// only while it is repaired after disk trouble).
    pub(super) fn warm(
        &mut self,
        reads: &dyn Lookup,
        key: ChainKey,
        queued: bool,
    ) -> Result<ChainId, Unwarmed> {
        let chain_id = ChainId::from_uuid(uuid::Uuid::from_u128(key));
        let rec = match reads.chain(&self.batch, &chain_id.to_string()) {
            Ok(Some(rec))
                if rec.check_ids().is_err() || crate::store::inconsistency(&rec).is_some() =>
            {
                let why = crate::store::inconsistency(&rec)
                    .or_else(|| rec.check_ids().err().map(|e| e.to_string()))
                    .unwrap_or_default();
                tracing::error!(chain.id = %chain_id, why, "a cold chain's record is corrupt: it is lost");
                return Err(Unwarmed::Missing);
            }
            Ok(Some(rec)) => match self
                .results_apart_of(reads, &rec)
                .and_then(|results| self.load_input(reads, &rec).map(|()| results))
            {
                Ok(results) => {
                    self.apart.extend(results);
                    rec
                }
                Err(e) => {
                    tracing::warn!(chain.id = %chain_id, cause = %e, "cannot read a cold chain's results now; it stays queued");
                    return Err(Unwarmed::Unreadable);
                }
            },
            Ok(None) => {
                tracing::error!(chain.id = %chain_id, "a cold chain has no record: it is lost");
                return Err(Unwarmed::Missing);
            }
            Err(e) => {
                tracing::warn!(chain.id = %chain_id, cause = %e, "cannot read a cold chain now; it stays queued");
                return Err(Unwarmed::Unreadable);
            }
        };
        let step = rec.step(rec.current());
        let task_id = step.task();
        if queued {
            self.queues.warm(&step.queue, step.name(), key, task_id);
        }
        self.index_chain(rec);
        // Its `live` entry must say "hot" again.
        self.live_unwritten.insert(chain_id);
        self.touch(chain_id);
        Ok(chain_id)
    }

    /// Brings back the cold chains of the task names `names`, without
    /// queue entries, for a pass that queues them again under new task
    /// defaults. Entries that cannot be read now go back where they were,
    /// and their names into `rerouting`, for [`Core::dispatch`] to try
    /// again and to keep from picking them under the old defaults
    /// meanwhile. Returns the ids of the chains brought back.
    pub(super) fn warm_names(&mut self, reads: &dyn Lookup, names: &Set<String>) -> Vec<ChainId> {
        let mut warmed = Vec::new();
        let mut unreadable = false;
        for (key, place) in self.queues.take_cold(|_, n| names.contains(n)) {
            if !unreadable {
                match self.warm(reads, key, false) {
                    Ok(chain_id) => {
                        warmed.push(chain_id);
                        continue;
                    }
                    Err(Unwarmed::Missing) => continue,
                    Err(Unwarmed::Unreadable) => unreadable = true,
                }
            }
            self.rerouting.insert(place.name().to_owned());
            self.queues.put_back(Queued::Cold(key), place);
        }
        warmed
    }

    /// [`Core::warm`] for a chain addressed by id, if it is cold (a store
    /// read, for requests that name a chain not in memory).
    pub(super) fn warm_by_id(&mut self, reads: &dyn Lookup, chain_id: ChainId) {
        if self.chains.contains_key(&chain_id) {
            return;
        }
        let cold = reads
            .waits_cold(&self.batch, &chain_id.to_string())
            .unwrap_or_else(|e| {
                tracing::error!(chain.id = %chain_id, cause = %e, "cannot read the live index");
                false
            });
        if cold {
            // Unread, it stays cold in its queue; the request then reads
            // the store itself and fails as the store does.
            let _ = self.warm(reads, chain_id.uuid().as_u128(), true);
        }
    }
}

//! What the simulator knows independently of the scheduler, and the
//! checks of the guarantees made against it.
//!
//! The model learns only what a client or a worker could learn: the
//! replies clients receive, the messages workers receive, the outcomes
//! workers send, and which outcome acknowledgments left the broker (an
//! `Ack` leaves only once the outcome is durable, so an accepted `Ack` of a
//! success is the proof that the success is on disk). A chain's structure
//! (task ids and signatures, fixed at submission) is read once from the
//! scheduler; its progress never is, except at the end of a run and for
//! the checks that compare a report's effect before and after.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::*;
use crate::scheduler::driver::Driver;

use super::scenario;

/// A broken guarantee, in one line.
pub type Violation = String;

/// A step as the model sees it.
#[derive(Clone, Debug)]
pub struct StepInfo {
    pub task_id: TaskId,
    pub name: String,
    /// The queue the step must be routed to.
    pub queue: String,
    /// Its task-scoped declared throttle.
    pub declared: Option<Identity>,
    /// The chain-scoped slot its chain holds while it runs, when the model
    /// is sure it does.
    pub chain_hold: Option<Identity>,
    /// A group or nested executor: how many child chains it has (their
    /// ids are `ChainId::child(task_id, i)`); 0 for a task.
    pub children: u32,
}

#[derive(Clone, Debug)]
pub struct ChainInfo {
    pub main: Vec<StepInfo>,
    pub on_success: Vec<StepInfo>,
    pub on_failure: Vec<StepInfo>,
    /// A child chain: whose step it is part of.
    pub parent: Option<Parent>,
}

impl ChainInfo {
    fn of(rec: &ChainRecord) -> Self {
        let steps = |steps: &[StepRecord], mut hold: Option<Identity>| {
            let mut out = Vec::new();
            for step in steps {
                let sig = step.signature();
                let defaults = scenario::defaults(&sig.name);
                let eff = Effective::resolve(sig.options.as_ref(), Some(&defaults), rec.heavy);
                let scoped = |chain: bool| {
                    eff.throttle
                        .as_ref()
                        .filter(|t| (t.scope() == ThrottleScope::Chain) == chain)
                        .map(|t| Identity::of(&sig.name, t))
                };
                if hold.is_none() {
                    hold = scoped(true);
                }
                out.push(StepInfo {
                    task_id: step.task(),
                    name: sig.name.clone(),
                    queue: eff.queue.clone(),
                    declared: scoped(false),
                    chain_hold: hold.clone(),
                    children: step.children,
                });
            }
            (out, hold)
        };
        let (main, hold) = steps(&rec.steps, None);
        let (on_success, _) = steps(&rec.on_success, hold);
        // Whether the chain took its slot before it failed is not known.
        let (on_failure, _) = steps(&rec.on_failure, None);
        ChainInfo {
            main,
            on_success,
            on_failure,
            parent: rec.parent(),
        }
    }

    pub fn step(&self, at: StepAt) -> Option<&StepInfo> {
        self.phase(at.phase).get(at.index)
    }

    fn phase(&self, phase: Phase) -> &[StepInfo] {
        match phase {
            Phase::OnSuccess => &self.on_success,
            Phase::OnFailure => &self.on_failure,
            _ => &self.main,
        }
    }

    /// The step whose success must be durable before `at` may start.
    pub fn predecessor(&self, at: StepAt) -> Option<&StepInfo> {
        match (at.phase, at.index) {
            (Phase::OnFailure, 0) => None,
            (Phase::OnSuccess, 0) => self.main.last(),
            (phase, i) if i > 0 => self.phase(phase).get(i - 1),
            _ => None,
        }
    }
}

/// Who a worker (or a guard on its behalf) is, for the checks of an
/// assignment.
pub struct Receiver<'a> {
    pub name: &'a str,
    pub queues: &'a [String],
    pub names: &'a [String],
}

#[derive(Default)]
pub struct Model {
    chains: BTreeMap<ChainId, ChainInfo>,
    /// task id → chain id, for every step of a chain seen.
    task_chain: BTreeMap<TaskId, ChainId>,
    /// Steps whose success is durable (its accepted `Ack` left the broker).
    pub durable_success: BTreeSet<TaskId>,
    /// (worker id, task id, attempt) → the outcome sent was a success.
    sent: BTreeMap<(WorkerId, TaskId, u32), bool>,
    /// Steps some worker was assigned.
    pub assigned: BTreeSet<TaskId>,
    /// chain id → the last round an assignment of it was made in.
    assign_round: BTreeMap<ChainId, u64>,
    /// chain id → the round whose cancel of it is durable.
    cancelled_at: BTreeMap<ChainId, u64>,
    /// Chains that must end: acknowledged, requeued as, or found stored.
    pub tracked: BTreeSet<ChainId>,
    /// Chains whose submission (or requeue) a client saw acknowledged.
    pub acked: BTreeSet<ChainId>,
    /// Tracked chains not yet seen ended.
    pub live: BTreeSet<ChainId>,
    /// idempotency key → the chain it named when first acknowledged.
    idempotent: BTreeMap<String, ChainId>,
    /// unique key → chains acknowledged as created under it.
    unique: BTreeMap<String, Vec<ChainId>>,
    /// The highest limit each identity may have had (declared, or any
    /// admin limit set): a worker-side count above it is a violation.
    limit_hi: BTreeMap<Identity, u32>,
    /// Holders at the last check, worker side and broker side.
    told_before: BTreeMap<Identity, BTreeSet<crate::scheduler::throttle::Holder>>,
    broker_before: BTreeMap<Identity, BTreeSet<crate::scheduler::throttle::Holder>>,
    /// The broker's limits at the last check: a holder that joined since
    /// may have joined under either.
    limits_before: BTreeMap<Identity, u32>,
    /// Admin limits set since the last check (several may come in one
    /// round).
    limits_set: BTreeMap<Identity, u32>,
}

impl Model {
    pub fn chain_of(&self, task_id: TaskId) -> Option<&ChainId> {
        self.task_chain.get(&task_id)
    }

    pub fn info(&mut self, chain_id: ChainId, core: &Driver) -> Result<&ChainInfo, Violation> {
        if !self.chains.contains_key(&chain_id) {
            let rec = core
                .chain(chain_id)
                .map_err(|e| format!("chain {chain_id} cannot be read: {e}"))?;
            let info = ChainInfo::of(&rec);
            for step in info
                .main
                .iter()
                .chain(&info.on_success)
                .chain(&info.on_failure)
            {
                self.task_chain.insert(step.task_id, chain_id);
            }
            self.chains.insert(chain_id, info);
        }
        Ok(&self.chains[&chain_id])
    }

    /// The step whose success must be durable before step `at` of chain
    /// `chain_id` may start: the step before it, or for a child chain's
    /// first step, the one before its parent's group or executor step.
    fn upstream(
        &mut self,
        chain_id: ChainId,
        at: StepAt,
        core: &Driver,
    ) -> Result<Option<StepInfo>, Violation> {
        let info = self.info(chain_id, core)?.clone();
        if let Some(pred) = info.predecessor(at) {
            return Ok(Some(pred.clone()));
        }
        let Some(parent) = info
            .parent
            .filter(|_| at.phase == Phase::Main && at.index == 0)
        else {
            return Ok(None);
        };
        let outer = self.info(parent.chain_id, core)?.clone();
        let place = [Phase::Main, Phase::OnSuccess, Phase::OnFailure]
            .into_iter()
            .flat_map(|phase| {
                outer
                    .phase(phase)
                    .iter()
                    .enumerate()
                    .map(move |(index, s)| (StepAt { phase, index }, s.task_id))
            })
            .find(|(_, task_id)| *task_id == parent.task_id)
            .map(|(at, _)| at);
        match place {
            Some(at) => self.upstream(parent.chain_id, at, core),
            None => Err(format!(
                "chain {chain_id} names a parent step {} that chain {} does not have",
                parent.task_id, parent.chain_id
            )),
        }
    }

    /// Whether a step's success is durable: a task's accepted `Ack` left
    /// the broker; a group's or executor's child chains all had their
    /// steps (and on_success) succeed durably.
    fn durably_succeeded(&mut self, step: &StepInfo, core: &Driver) -> Result<bool, Violation> {
        if step.children == 0 {
            return Ok(self.durable_success.contains(&step.task_id));
        }
        for member in 0..step.children {
            let child = ChainId::child(step.task_id, member);
            if core.chain(child).is_err() {
                return Ok(false);
            }
            let info = self.info(child, core)?.clone();
            for s in info.main.iter().chain(&info.on_success) {
                if !self.durably_succeeded(s, core)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// A worker received an assignment: routing (5), order (6), a step run
    /// again after its success was durable (2), a step of a cancelled chain
    /// (3). Returns the step.
    pub fn on_assign(
        &mut self,
        to: &Receiver<'_>,
        a: &Assignment,
        core: &Driver,
    ) -> Result<StepInfo, Violation> {
        let info = self.info(a.chain_id, core)?.clone();
        let Some(step) = info.step(a.at) else {
            return Err(format!(
                "assignment of a step chain {} does not have: {:?}",
                a.chain_id, a.at
            ));
        };
        if step.task_id != a.task.task_id || step.name != a.name {
            return Err(format!(
                "assignment of {:?} names task {} ({}), the chain's step is {} ({})",
                a.at, a.task.task_id, a.name, step.task_id, step.name
            ));
        }
        if a.queue != step.queue || !to.queues.contains(&a.queue) || !to.names.contains(&a.name) {
            return Err(format!(
                "routing (guarantee 5): task {} ({}) routed to {:?} was assigned from queue {:?} to worker {} (queues {:?}, names {:?})",
                a.task.task_id, a.name, step.queue, a.queue, to.name, to.queues, to.names
            ));
        }
        if let Some(pred) = self.upstream(a.chain_id, a.at, core)?
            && !self.durably_succeeded(&pred, core)?
        {
            return Err(format!(
                "order (guarantee 6): step {:?} of chain {} (task {}) was assigned before the success of the step before it (task {}) was durable",
                a.at, a.chain_id, a.task.task_id, pred.task_id
            ));
        }
        if self.durable_success.contains(&a.task.task_id) {
            return Err(format!(
                "task {} of chain {} was assigned again (attempt {}) after its success was durable",
                a.task.task_id, a.chain_id, a.task.attempt
            ));
        }
        if self.cancelled_at.contains_key(&a.chain_id) {
            return Err(format!(
                "cancellation (guarantee 3): chain {} was assigned step {:?} after its cancellation was acknowledged",
                a.chain_id, a.at
            ));
        }
        self.assigned.insert(a.task.task_id);
        Ok(step.clone())
    }

    /// An assignment left the scheduler in `round`.
    pub fn assignment_made(&mut self, chain_id: ChainId, round: u64) -> Result<(), Violation> {
        self.assign_round.insert(chain_id, round);
        match self.cancelled_at.get(&chain_id) {
            Some(&cancelled) if cancelled < round => Err(format!(
                "cancellation (guarantee 3): chain {chain_id}, cancelled in round {cancelled}, had a step assigned in round {round}"
            )),
            _ => Ok(()),
        }
    }

    /// A client saw chain `chain_id` cancelled by the cancel it sent in
    /// `round` (durable now).
    pub fn cancelled(&mut self, chain_id: ChainId, round: u64) -> Result<(), Violation> {
        if let Some(&assigned) = self.assign_round.get(&chain_id)
            && assigned > round
        {
            return Err(format!(
                "cancellation (guarantee 3): chain {chain_id}, cancelled in round {round}, had a step assigned in round {assigned}"
            ));
        }
        self.cancelled_at.entry(chain_id).or_insert(round);
        Ok(())
    }

    pub fn outcome_sent(&mut self, worker_id: WorkerId, task: &TaskRef, success: bool) {
        self.sent
            .insert((worker_id, task.task_id, task.attempt), success);
    }

    /// An accepted `Ack` left the broker: the outcome is durable.
    pub fn outcome_durable(&mut self, worker_id: WorkerId, task: &TaskRef) {
        let key = (worker_id, task.task_id, task.attempt);
        if self.sent.remove(&key) == Some(true) {
            self.durable_success.insert(task.task_id);
        }
    }

    /// A client saw a submission acknowledged. Checks idempotency and
    /// unique keys (guarantee 7).
    pub fn submitted(
        &mut self,
        spec: &ChainSpec,
        chain_id: ChainId,
        dedup: Option<crate::scheduler::Dedup>,
        core: &Driver,
    ) -> Result<(), Violation> {
        use crate::scheduler::Dedup;
        self.track(chain_id);
        self.acked.insert(chain_id);
        if let Some(id) = spec.chain_id
            && dedup != Some(Dedup::IdempotencyKey)
            && dedup != Some(Dedup::UniqueKey)
            && id != chain_id
        {
            return Err(format!(
                "a submission with chain id {id} was answered with chain {chain_id} ({dedup:?})"
            ));
        }
        if !spec.idempotency_key.is_empty() && matches!(dedup, None | Some(Dedup::IdempotencyKey)) {
            let first = self
                .idempotent
                .entry(spec.idempotency_key.clone())
                .or_insert_with(|| chain_id);
            if *first != chain_id {
                return Err(format!(
                    "unique work (guarantee 7): idempotency key {} answered chain {chain_id}, first acknowledged as {first}",
                    spec.idempotency_key
                ));
            }
        }
        if !spec.unique_key.is_empty() && dedup.is_none() {
            let others = self.unique.entry(spec.unique_key.clone()).or_default();
            for &other in others.iter().filter(|o| **o != chain_id) {
                if core.chain(other).is_ok_and(|c| !c.is_ended()) {
                    return Err(format!(
                        "unique work (guarantee 7): chain {chain_id} was created under unique key {} while chain {other} with that key runs",
                        spec.unique_key
                    ));
                }
            }
            others.push(chain_id);
        }
        Ok(())
    }

    pub fn track(&mut self, chain_id: ChainId) {
        if self.tracked.insert(chain_id) {
            self.live.insert(chain_id);
        }
    }

    pub fn limit_may_be(&mut self, identity: &Identity, limit: u32) {
        let hi = self
            .limit_hi
            .entry(identity.clone())
            .or_insert_with(|| scenario::limit(identity));
        *hi = (*hi).max(limit);
        let set = self.limits_set.entry(identity.clone()).or_default();
        *set = (*set).max(limit);
    }

    fn limit_hi(&self, identity: &Identity) -> u32 {
        self.limit_hi
            .get(identity)
            .copied()
            .unwrap_or_else(|| scenario::limit(identity))
    }

    /// Throttle safety (guarantee 4): the holders workers were told of,
    /// each with a lease that has not run out by their own clock, never
    /// exceed the limit, and each is a holder in the broker's table; and
    /// the broker never lets a new holder in above the limit.
    pub fn check_holders(
        &mut self,
        told: BTreeMap<Identity, BTreeSet<crate::scheduler::throttle::Holder>>,
        core: &Driver,
    ) -> Result<(), Violation> {
        let mut broker: BTreeMap<Identity, BTreeSet<crate::scheduler::throttle::Holder>> =
            BTreeMap::new();
        let mut limits = BTreeMap::new();
        for (info, ..) in core.core.throttle_info() {
            limits.insert(info.identity.clone(), info.limit);
            broker.insert(
                info.identity,
                info.holders.into_iter().map(|(h, _)| h).collect(),
            );
        }
        for (identity, holders) in &told {
            let limit = self.limit_hi(identity);
            let before = self.told_before.get(identity);
            let joined = holders
                .iter()
                .any(|h| before.is_none_or(|b| !b.contains(h)));
            if holders.len() > limit as usize && joined {
                return Err(format!(
                    "throttle safety (guarantee 4): {} workers were told they hold {identity} (limit at most {limit}): {holders:?}",
                    holders.len()
                ));
            }
            let held = broker.get(identity);
            for holder in holders {
                if held.is_none_or(|h| !h.contains(holder)) {
                    return Err(format!(
                        "throttle safety (guarantee 4): a worker holds {identity} as {holder:?} under a current lease, but the broker does not count it (broker holders: {held:?})"
                    ));
                }
            }
        }
        for (identity, holders) in &broker {
            // An identity new to the table since the last check took its
            // holders under its declared limit, which an admin limit set
            // later in the same round may have lowered.
            let before = match self.limits_before.get(identity) {
                Some(limit) => *limit,
                None => scenario::limit(identity),
            };
            let limit = limits[identity]
                .max(before)
                .max(self.limits_set.get(identity).copied().unwrap_or(0));
            let before = self.broker_before.get(identity);
            let joined = holders
                .iter()
                .any(|h| before.is_none_or(|b| !b.contains(h)));
            if holders.len() > limit as usize && joined {
                return Err(format!(
                    "throttle safety (guarantee 4): the broker let a holder into {identity} above its limit {limit}: {holders:?}"
                ));
            }
        }
        self.told_before = told;
        self.broker_before = broker;
        self.limits_before = limits;
        self.limits_set.clear();
        Ok(())
    }

    /// A restarted broker holds again what was durably held: those holders
    /// did not join now (its limits may read lower until waiters declare
    /// them again, see FINDINGS.md, observation O1).
    pub fn restarted(&mut self, core: &Driver) {
        self.broker_before = core
            .core
            .throttle_info()
            .into_iter()
            .map(|(info, ..)| {
                (
                    info.identity,
                    info.holders.into_iter().map(|(h, _)| h).collect(),
                )
            })
            .collect();
    }

    /// The callbacks of an ended chain (guarantees 3 and 6): a succeeded
    /// chain's steps and on_success all succeeded durably and no on_failure
    /// step ran; a failed chain ran on_failure, if it has one.
    pub fn check_end(&mut self, rec: &ChainRecord, core: &Driver) -> Result<(), Violation> {
        let info = self.info(rec.chain_id(), core)?.clone();
        let id = &rec.id;
        match rec.state() {
            ChainState::Succeeded => {
                for step in info.main.iter().chain(&info.on_success) {
                    if !self.durably_succeeded(step, core)? {
                        return Err(format!(
                            "chain {id} succeeded, but no worker's success of its step {} ({}) was acknowledged",
                            step.task_id, step.name
                        ));
                    }
                }
                if let Some(step) = info
                    .on_failure
                    .iter()
                    .find(|s| self.assigned.contains(&s.task_id))
                {
                    return Err(format!(
                        "chain {id} succeeded, but its on_failure step {} ran",
                        step.task_id
                    ));
                }
            }
            ChainState::Failed => {
                if let Some(first) = info.on_failure.first()
                    && !self.assigned.contains(&first.task_id)
                {
                    return Err(format!(
                        "every chain ends (guarantee 3): chain {id} failed, but its on_failure never ran"
                    ));
                }
            }
            ChainState::Cancelled => {}
            state => {
                return Err(format!("chain {id} is {state:?} at the end"));
            }
        }
        Ok(())
    }
}

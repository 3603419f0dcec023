//! Groups and nested executors: steps that run child chains.
//!
//! A group step runs each of its members as a child chain of its own, side
//! by side; a nested executor runs one child chain with its own callbacks.
//! The parent's step waits (`Waiting`) while they run, and its chain stays
//! in memory (and live in the store) until every child it started ended,
//! as it does while a run is out. Child ids are derived from the step's
//! task id and the member index ([`ChainId::child`]), so nothing here keeps
//! a list of ids.
//!
//! What keeps the guarantees:
//! - **Durable, counted once.** A child that ends updates its parent's
//!   step (`members_ended`, `members_done`) and, when it succeeded, stores
//!   its result under the parent (`Batch::put_member_result`), in the same
//!   round, so in the same batch, as its own end: a crash loses both or
//!   neither.
//! - **No round that stalls.** The members' signatures are stored apart
//!   from the parent's record (`Batch::put_members`), which is written again
//!   with every child that ends; and starting the children, reading their
//!   results back and cancelling them go a slice of [`FANOUT_PER_ROUND`] a
//!   round ([`FollowUp`]), so a group of 10,000 members is ten or twenty
//!   short rounds with other work between them, not one long one. Each
//!   slice writes how far it got (`spawned`) with the children it started.
//! - **Failure.** The first child that fails for good (or is cancelled)
//!   fails the step with that child's failure record (which the parent's
//!   on_failure receives), and the other children are cancelled.
//! - **Cancellation reaches the children.** Cancelling the parent, or its
//!   deadline, cancels every child it started; one not started yet never
//!   is. Recovery picks up what a crash cut short: a step still starting
//!   its children, one whose children all succeeded, and the children of a
//!   step that ended before they did.

use super::*;

/// Most child chains one round starts, reads the result of, or cancels.
pub(super) const FANOUT_PER_ROUND: usize = 100;

/// A group's or executor's carried value longer than this is stored once
/// under its parent rather than in each child's record: a 1 MB result
/// handed to a group of 10,000 would otherwise be 10 GB of records, each
/// written again at every step of its child.
pub(super) const INPUT_APART_AFTER: usize = 1024;

/// How long work on child chains waits after the store could not be read.
const BLOCKED_RETRY_MS: u64 = 100;

/// Work on child chains left for the next rounds (see the module doc).
/// Kept in memory only: recovery makes it again from the steps' counters.
#[derive(Debug)]
pub(super) enum FollowUp {
    /// Start the children of a waiting step that are not started yet.
    /// `members` is its signature once read from the store.
    Spawn {
        step: TaskId,
        members: Option<Arc<Signature>>,
    },
    /// Every child succeeded: read their results back, in member order.
    Collect { step: TaskId, results: Vec<String> },
    /// The step ended before its children: cancel the first `count`
    /// (those started), from `next` on.
    Cancel {
        step: TaskId,
        next: u32,
        count: u32,
        reason: String,
    },
}

/// What one slice of a [`FollowUp`] came to.
enum Progress {
    Done,
    /// More to do in a later round.
    More(FollowUp),
    /// The store could not be read: try again a little later.
    Blocked(FollowUp),
}

impl Core {
    /// A group's or nested executor's turn: the step waits, and its
    /// children start with the next slices of work.
    pub(super) fn start_children(&mut self, chain_id: ChainId, at: StepAt, now: UnixMs) {
        let step = self.live_step(chain_id, at);
        step.status = StepStatus::Waiting;
        step.ready_ms = now;
        step.started_ms = now;
        let task_id = step.task();
        self.follow_ups.push_back(FollowUp::Spawn {
            step: task_id,
            members: None,
        });
        self.event(chain_id, EventKind::StepWaiting, Some(at), now);
        self.touch(chain_id);
    }

    /// Whether work on child chains waits for the next round (the
    /// scheduler's loop then does not sleep; see [`Core::next_timer`]).
    pub(super) fn follow_up_due(&self) -> Option<UnixMs> {
        (!self.follow_ups.is_empty()).then_some(self.follow_up_after)
    }

    /// Goes on with the work on child chains: at most
    /// [`FANOUT_PER_ROUND`] children this round.
    pub fn follow_up(&mut self, reads: &dyn Lookup, now: UnixMs) {
        if self.follow_ups.is_empty() || now < self.follow_up_after {
            return;
        }
        let mut budget = FANOUT_PER_ROUND;
        // Work queued while this runs (a child that is a group itself)
        // waits for the next round: each round then stays short.
        let mut pending = std::mem::take(&mut self.follow_ups);
        while budget > 0
            && let Some(work) = pending.pop_front()
        {
            match self.work_on(reads, work, &mut budget, now) {
                Progress::Done => {}
                Progress::More(rest) => pending.push_back(rest),
                Progress::Blocked(rest) => {
                    pending.push_front(rest);
                    self.follow_up_after = now.saturating_add(BLOCKED_RETRY_MS);
                    break;
                }
            }
        }
        pending.append(&mut self.follow_ups);
        self.follow_ups = pending;
    }

    fn work_on(
        &mut self,
        reads: &dyn Lookup,
        work: FollowUp,
        budget: &mut usize,
        now: UnixMs,
    ) -> Progress {
        match work {
            FollowUp::Spawn { step, members } => self.spawn_some(reads, step, members, budget, now),
            FollowUp::Collect { step, results } => {
                self.collect_some(reads, step, results, budget, now)
            }
            FollowUp::Cancel {
                step,
                next,
                count,
                reason,
            } => {
                let end = next.saturating_add(slice(*budget)).min(count);
                for member in next..end {
                    let child = ChainId::child(step, member);
                    match self.cancel_chain(reads, child, reason.clone(), now) {
                        Ok(_) | Err(Error::NotFound(_)) => *budget -= 1,
                        Err(e) => {
                            tracing::warn!(chain.id = %child, cause = %e, "cannot cancel a child chain now; trying again");
                            return Progress::Blocked(FollowUp::Cancel {
                                step,
                                next: member,
                                count,
                                reason,
                            });
                        }
                    }
                }
                if end < count {
                    Progress::More(FollowUp::Cancel {
                        step,
                        next: end,
                        count,
                        reason,
                    })
                } else {
                    Progress::Done
                }
            }
        }
    }

    /// The waiting step of task `step`, if its chain still runs it.
    fn waiting(&self, step: TaskId) -> Option<(ChainId, StepAt)> {
        let (chain_id, at) = *self.tasks.get(&step)?;
        let rec = self.chains.get(&chain_id)?;
        (!rec.is_ended() && rec.current() == at && rec.step(at).state() == StepState::Waiting)
            .then_some((chain_id, at))
    }

    /// Starts the next slice of a waiting step's children.
    fn spawn_some(
        &mut self,
        reads: &dyn Lookup,
        step_id: TaskId,
        members: Option<Arc<Signature>>,
        budget: &mut usize,
        now: UnixMs,
    ) -> Progress {
        let Some((chain_id, at)) = self.waiting(step_id) else {
            return Progress::Done;
        };
        let rec = &self.chains[&chain_id];
        let step = rec.step(at);
        let members = match members {
            Some(members) => members,
            None => match reads.members(&self.batch, &rec.id, &step.task_id) {
                Ok(Some(signature)) if signature.child_count() == step.children => {
                    Arc::new(signature)
                }
                Ok(found) => {
                    let why = if found.is_some() {
                        "the stored members of this step do not match it"
                    } else {
                        "the members of this step are missing from the store"
                    };
                    tracing::error!(chain.id = %chain_id, task.id = %step_id, why);
                    let record = self.failure_of(chain_id, at, 0, "MembersMissing", why, "");
                    self.children_failed(chain_id, at, record, now);
                    return Progress::Done;
                }
                Err(e) => {
                    tracing::warn!(chain.id = %chain_id, cause = %e, "cannot read a group's members now; trying again");
                    return Progress::Blocked(FollowUp::Spawn {
                        step: step_id,
                        members: None,
                    });
                }
            },
        };
        let input = if members.immutable {
            None
        } else {
            self.carried(rec, at).map(|v| v.to_string())
        };
        let from = step.spawned;
        let to = from.saturating_add(slice(*budget)).min(step.children);
        let (input, apart) = match input {
            Some(text) if text.len() > INPUT_APART_AFTER => {
                if from == 0 {
                    self.batch.put_result(&rec.id, &input_key(step_id), &text);
                }
                self.inputs.insert(step_id, Arc::from(text));
                (None, true)
            }
            other => (other, false),
        };
        let rec = &self.chains[&chain_id];
        let specs: Vec<ChainSpec> = (from..to)
            .map(|member| ChainSpec {
                input_apart: apart,
                ..child_spec(rec, step_id, &members, member, input.clone())
            })
            .collect();
        for spec in specs {
            self.create(spec, now);
            *budget -= 1;
        }
        let step = self.live_step(chain_id, at);
        step.spawned = to;
        let more = to < step.children;
        self.touch(chain_id);
        if more {
            Progress::More(FollowUp::Spawn {
                step: step_id,
                members: Some(members),
            })
        } else {
            Progress::Done
        }
    }

    /// Reads the next slice of the members' results; with the last, the
    /// step succeeds with them.
    fn collect_some(
        &mut self,
        reads: &dyn Lookup,
        step_id: TaskId,
        mut results: Vec<String>,
        budget: &mut usize,
        now: UnixMs,
    ) -> Progress {
        let Some((chain_id, at)) = self.waiting(step_id) else {
            return Progress::Done;
        };
        let rec = &self.chains[&chain_id];
        let step = rec.step(at);
        let (children, nested) = (step.children, step.nested);
        let from = u32::try_from(results.len()).unwrap_or(u32::MAX);
        let to = from.saturating_add(slice(*budget)).min(children);
        for member in from..to {
            match reads.member_result(&self.batch, &rec.id, &step.task_id, member) {
                Ok(Some(result)) => results.push(result),
                Ok(None) => {
                    tracing::error!(chain.id = %chain_id, member, "a member's result is missing from the store; it reads as null");
                    results.push("null".into());
                }
                Err(e) => {
                    tracing::warn!(chain.id = %chain_id, cause = %e, "cannot read a member's result now; trying again");
                    return Progress::Blocked(FollowUp::Collect {
                        step: step_id,
                        results,
                    });
                }
            }
            *budget -= 1;
        }
        if to < children {
            return Progress::More(FollowUp::Collect {
                step: step_id,
                results,
            });
        }
        let result = if nested {
            results.pop().unwrap_or_else(|| "null".into())
        } else {
            format!("[{}]", results.join(","))
        };
        self.inputs.remove(&step_id);
        self.succeed_step(chain_id, at, result, now);
        Progress::Done
    }

    /// A child chain ended (called before it leaves memory): its parent's
    /// step counts it, and takes its result, or fails with its failure.
    pub(super) fn child_ended(&mut self, child: ChainId, now: UnixMs) {
        let rec = &self.chains[&child];
        let Some(parent) = rec.parent() else {
            return;
        };
        let outcome = match rec.state() {
            ChainState::Succeeded => Ok(self.chain_result(rec)),
            ChainState::Cancelled => Err(FailureRecord {
                chain_id: rec.id.clone(),
                error_type: "Cancelled".into(),
                message: format!(
                    "member {} (chain {child}) was cancelled: {}",
                    parent.member, rec.cancel_reason
                ),
                ..Default::default()
            }),
            _ => Err(rec.failure.clone().unwrap_or_else(|| FailureRecord {
                chain_id: rec.id.clone(),
                error_type: "Failed".into(),
                message: format!("member {} (chain {child}) failed", parent.member),
                ..Default::default()
            })),
        };
        let Some((parent_id, at)) = self
            .tasks
            .get(&parent.task_id)
            .copied()
            .filter(|(id, _)| *id == parent.chain_id)
        else {
            // Its parent ended and left memory before it: nothing waits.
            tracing::warn!(chain.id = %child, parent.id = %parent.chain_id, "a child chain ended after its parent left memory");
            return;
        };
        let waiting = self.waiting(parent.task_id).is_some();
        let step = self.live_step(parent_id, at);
        step.members_ended += 1;
        self.touch(parent_id);
        if !waiting {
            // The step ended before this child did (failed, cancelled):
            // the parent leaves memory once its last child ended.
            if self.chains[&parent_id].step(at).children_out() == 0 {
                self.inputs.remove(&parent.task_id);
            }
            return self.retire_if_done(parent_id, now);
        }
        match outcome {
            Ok(result) => {
                self.batch.put_member_result(
                    &parent.chain_id.to_string(),
                    &parent.task_id.to_string(),
                    parent.member,
                    &result,
                );
                let step = self.live_step(parent_id, at);
                step.members_done += 1;
                if step.members_done >= step.children {
                    self.follow_ups.push_back(FollowUp::Collect {
                        step: parent.task_id,
                        results: Vec::new(),
                    });
                }
            }
            Err(record) => self.children_failed(parent_id, at, record, now),
        }
    }

    /// A waiting step failed (a child failed, or its members are missing):
    /// the other children are cancelled, and the chain fails with `record`.
    fn children_failed(
        &mut self,
        chain_id: ChainId,
        at: StepAt,
        record: FailureRecord,
        now: UnixMs,
    ) {
        let reason = format!(
            "another member of the group failed (chain {}, {}: {})",
            record.chain_id, record.error_type, record.message
        );
        self.cancel_children(chain_id, at, reason);
        self.fail_step(chain_id, at, record, now);
    }

    /// Queues the cancellation of every child a step started.
    pub(super) fn cancel_children(&mut self, chain_id: ChainId, at: StepAt, reason: String) {
        let step = self.chains[&chain_id].step(at);
        if step.children_out() == 0 {
            self.inputs.remove(&step.task());
            return;
        }
        self.follow_ups.push_back(FollowUp::Cancel {
            step: step.task(),
            next: 0,
            count: step.spawned,
            reason,
        });
    }

    /// The result a succeeded chain hands on: its last main step's (as
    /// JSON text; "null" for none).
    fn chain_result(&self, rec: &ChainRecord) -> String {
        let text = if rec.result_apart {
            let kept = rec.steps.last().and_then(|s| self.kept_result(s));
            if kept.is_none() {
                tracing::error!(chain.id = %rec.id, "a child chain's result is not in memory; it reads as null");
            }
            kept.map(|r| r.to_string()).unwrap_or_default()
        } else {
            rec.result.clone()
        };
        if text.is_empty() { "null".into() } else { text }
    }

    /// The value a mutable step at `at` of `rec` receives first: a child
    /// chain's first step takes its input (stored apart under its parent
    /// when large), any other step as [`ChainRecord::carried_value`] says.
    pub(super) fn carried(&self, rec: &ChainRecord, at: StepAt) -> Option<serde_json::Value> {
        if rec.input_apart && at.phase == Phase::Main && at.index == 0 {
            let text = rec.parent().and_then(|p| self.inputs.get(&p.task_id));
            if text.is_none() {
                tracing::error!(chain.id = %rec.id, "a child chain's input is not in memory; its first step gets none");
            }
            return text.map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::Null));
        }
        rec.carried_value(at, |s| self.kept_result(s))
    }

    /// Reads the input of a child chain stored apart under its parent into
    /// memory, if `rec` has one and it is not there yet.
    pub(super) fn load_input(
        &mut self,
        reads: &dyn Lookup,
        rec: &ChainRecord,
    ) -> Result<(), crate::store::Error> {
        let Some(parent) = rec.parent().filter(|_| rec.input_apart) else {
            return Ok(());
        };
        if self.inputs.contains_key(&parent.task_id) {
            return Ok(());
        }
        match reads.result(
            &self.batch,
            &parent.chain_id.to_string(),
            &input_key(parent.task_id),
        )? {
            Some(text) => {
                self.inputs.insert(parent.task_id, Arc::from(text));
            }
            None => {
                tracing::error!(chain.id = %rec.id, "a child chain's input is missing from the store");
            }
        }
        Ok(())
    }

    /// The input a child chain's first step receives, as JSON text, read
    /// from the store when it is stored apart (a requeued child takes it
    /// into its own record).
    pub(super) fn input_of(
        &self,
        reads: &dyn Lookup,
        rec: &ChainRecord,
    ) -> Result<Option<String>, Error> {
        let Some(parent) = rec.parent().filter(|_| rec.input_apart) else {
            return Ok(rec.input.clone());
        };
        if let Some(text) = self.inputs.get(&parent.task_id) {
            return Ok(Some(text.to_string()));
        }
        reads
            .result(
                &self.batch,
                &parent.chain_id.to_string(),
                &input_key(parent.task_id),
            )
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// After recovery: the work on child chains that a stop cut short.
    pub(super) fn resume_fanout(&mut self) {
        let mut work = Vec::new();
        for rec in self.chains.values() {
            for (at, step) in rec.all_steps().filter(|(_, s)| s.has_children()) {
                let task_id = step.task();
                let waits = !rec.is_ended() && rec.current() == at;
                if waits && step.state() == StepState::Waiting {
                    if step.spawned < step.children {
                        work.push(FollowUp::Spawn {
                            step: task_id,
                            members: None,
                        });
                    } else if step.members_done >= step.children {
                        work.push(FollowUp::Collect {
                            step: task_id,
                            results: Vec::new(),
                        });
                    }
                } else if step.children_out() > 0 {
                    work.push(FollowUp::Cancel {
                        step: task_id,
                        next: 0,
                        count: step.spawned,
                        reason: format!("its parent chain {} ended", rec.id),
                    });
                }
            }
        }
        self.follow_ups.extend(work);
    }
}

/// Where a group's or executor's input stored apart is kept: with its
/// parent chain's results, under its step's task id.
fn input_key(step: TaskId) -> String {
    format!("{step}.input")
}

/// How many children a budget allows, as a member count.
fn slice(budget: usize) -> u32 {
    u32::try_from(budget).unwrap_or(u32::MAX)
}

/// The chain that member `member` of a group or executor step runs.
fn child_spec(
    parent: &ChainRecord,
    step: TaskId,
    members: &Signature,
    member: u32,
    input: Option<String>,
) -> ChainSpec {
    let executor = match members.kind() {
        StepKind::Executor(executor) => Some(executor),
        StepKind::Group(list) => {
            let index = usize::try_from(member).unwrap_or(usize::MAX);
            match list.get(index) {
                Some(m) => match &m.executor {
                    Some(executor) => Some(executor),
                    None => {
                        return ChainSpec {
                            steps: vec![m.clone()],
                            ..child_base(parent, step, member, input)
                        };
                    }
                },
                None => None,
            }
        }
        StepKind::Task => None,
    };
    let executor = executor.cloned().unwrap_or_default();
    ChainSpec {
        steps: executor.steps,
        on_success: executor.on_success,
        on_failure: executor.on_failure,
        ..child_base(parent, step, member, input)
    }
}

/// What every child chain takes from its parent: its context, its heavy
/// flag and its owner; its id is derived from the step and the member.
fn child_base(parent: &ChainRecord, step: TaskId, member: u32, input: Option<String>) -> ChainSpec {
    ChainSpec {
        heavy: parent.heavy,
        context: parent.context.clone(),
        owner: parent.owner.clone(),
        chain_id: Some(ChainId::child(step, member)),
        parent: Some(Parent {
            chain_id: parent.chain_id(),
            task_id: step,
            member,
        }),
        input,
        ..ChainSpec::default()
    }
}

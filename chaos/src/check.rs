//! The checker: from the task bodies' journals, the harness's own record
//! of what it killed and when, and the client's view of every acknowledged
//! chain, decide whether the broker kept its guarantees.
//!
//! What counts as a failure of the run (the verdict):
//! - **lost**: an acknowledged chain that is not found, did not end, or
//!   ended with a step the broker calls succeeded but no body ran to
//!   success (guarantees 1, 2, 3);
//! - **violations**: a chain that ended otherwise than designed; a
//!   callback that broke its rule (on_success for a failed chain, none or
//!   on_failure for a succeeded one, any for a cancelled one); a step that
//!   started before the previous step's accepted run ended, or received
//!   another run's result; a step that ran after its chain failed or was
//!   cancelled; a throttle identity with more holders than its limit at
//!   some instant; a run on a queue it was not routed to; two chains for
//!   one idempotency key; one (task, attempt) run by two processes; a task
//!   run twice at once, or again after it completed, with no crash or lease
//!   lapse to explain it; a broker that recorded fewer attempts than ran;
//!   (the last three are excused for a run that takes no throttle slot
//!   when the broker was killed after it started, or just before, in the
//!   time its worker takes to notice, `NOTICE_NS`: the broker sends such a
//!   run before its assignment is durable, so a crash can make it forget
//!   the run and issue the same attempt again, see `forgotten`)
//!   a process that died unasked; an error in the broker's log; a broker
//!   or worker that did not stop cleanly at the end.
//!
//! Time: every record carries `SystemTime` nanoseconds of this machine.
//! A run's interval is [start record, end record]; a run cut by `kill -9`
//! ends when the harness sent the signal (the body runs no more code after
//! it). An interval drawn this way lies inside the broker's own hold of
//! the run (assigned before the body starts, released after its outcome or
//! lease), so no correct broker can make the journals overlap beyond a
//! limit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use baton::pb;
use serde_json::Value;

use crate::journal::{self, How, Record, Start};
use crate::plan::{self, Design, Expect, Form, IDENTITIES};
use crate::procs::{Exit, Kill, WorkerProcess};
use crate::run::Observed;

/// Lines of detail printed per list.
const SHOWN: usize = 25;

/// Everything the checker reads.
pub struct Evidence<'a> {
    pub plan: &'a [Design],
    pub observed: &'a Observed,
    /// Every worker process, in start order.
    pub processes: &'a [WorkerProcess],
    /// The journal of each process (same order).
    pub journals: &'a [journal::Read],
    /// What the harness killed, and when.
    pub kills: &'a [Kill],
    /// Leaders that stopped because they were deposed (PostgreSQL mode):
    /// for the checker, a broker crash like a kill.
    pub deposed: &'a [Exit],
    /// Processes that ended without being killed (or deposed).
    pub exits: &'a [Exit],
    /// (task id, attempt) whose lease the broker logged as lapsed.
    pub lapses: &'a HashSet<(String, u32)>,
    /// Leases that lapsed in a broker the harness paused (SIGSTOP), during
    /// the pause or within a lease of its end.
    pub paused_lapses: &'a [Lapse],
    /// Error lines of the broker's logs.
    pub broker_errors: &'a [String],
    /// The broker exited 0 on SIGTERM at the end.
    pub broker_clean_stop: bool,
    /// Workers running when the run stopped them, and how many of them
    /// drained and exited 0.
    pub workers_live_at_stop: usize,
    pub workers_clean: usize,
    /// The wait for the chains gave up before all ended.
    pub settle_timed_out: bool,
}

/// A lease the broker logged as lapsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapse {
    pub task: String,
    pub attempt: u32,
    /// The broker that logged it (its number in the run), and its
    /// incarnation.
    pub broker: usize,
    pub incarnation: u32,
    /// When (journal clock).
    pub t: u64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The body recorded its end.
    Body(How),
    /// No end record; its process was killed by the harness.
    Killed,
    /// No end record and no kill: the process ended some other way.
    Vanished,
}

/// One run of a body, from one journal.
#[derive(Debug)]
struct Run<'a> {
    /// Index of its process.
    process: usize,
    start: &'a Start,
    ending: Ending,
    /// When it ended (or was cut); not before `start.t`.
    end: u64,
    /// In-body slots: (identity, acquired, released or cut).
    in_body: Vec<(&'a str, u64, u64)>,
}

impl Run<'_> {
    fn is(&self, how: How) -> bool {
        self.ending == Ending::Body(how)
    }
}

/// What the run showed about one throttle identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityReport {
    pub label: &'static str,
    pub form: &'static str,
    pub limit: u32,
    /// Most holders at one instant, from the journals.
    pub max: usize,
    /// Holds seen.
    pub holds: usize,
}

/// The outcome of a check; [`Report::passed`] is the verdict.
#[derive(Debug, Default)]
pub struct Report {
    pub chains: usize,
    pub acknowledged: usize,
    pub acked_after_retry: usize,
    pub acked_by_key: usize,
    pub submit_retries: u64,
    pub unacknowledged: usize,
    /// Chains never acknowledged whose steps ran anyway (allowed: the
    /// broker stored them, then crashed before answering).
    pub ran_unacknowledged: usize,
    pub ended: usize,
    pub succeeded: usize,
    pub failed_as_designed: usize,
    pub cancelled_as_designed: usize,
    /// Failed with WorkerLost (a step lost to dead workers too often):
    /// allowed by the guarantees, on_failure must have run.
    pub failed_worker_lost: usize,
    pub broker_crashes: usize,
    pub worker_crashes: usize,
    pub runs: usize,
    /// Runs after a run of the same task that a crash cut short.
    pub redelivered: usize,
    /// Runs after a run of the same task that completed (its outcome was
    /// lost with a crash).
    pub re_executed: usize,
    /// The same (task, attempt) run by more than one process.
    pub same_attempt_twice: usize,
    /// Runs the broker forgot when it was killed (sent before their
    /// assignment was durable; allowed for runs without a throttle slot):
    /// the same attempt ran again. Counted among the redeliveries and
    /// re-executions too.
    pub forgotten: usize,
    pub on_success_runs: usize,
    pub on_success_chains: usize,
    pub on_failure_runs: usize,
    pub on_failure_chains: usize,
    pub identities: Vec<IdentityReport>,
    pub lost: Vec<String>,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    /// No acknowledged chain lost and no guarantee broken.
    pub fn passed(&self) -> bool {
        self.lost.is_empty() && self.violations.is_empty()
    }

    /// Extra runs: redeliveries, re-executions and repeated attempts.
    pub fn duplicate_runs(&self) -> usize {
        self.redelivered + self.re_executed + self.same_attempt_twice
    }
}

/// Checks a run.
pub fn check(evidence: &Evidence<'_>) -> Report {
    let mut report = Report {
        chains: evidence.plan.len(),
        broker_crashes: evidence.kills.iter().filter(|k| k.worker.is_none()).count(),
        worker_crashes: evidence.kills.iter().filter(|k| k.worker.is_some()).count(),
        ..Report::default()
    };
    let runs = collect_runs(evidence, &mut report);
    report.runs = runs.len();
    let index = Index::new(&runs);
    check_tasks(evidence, &runs, &index, &mut report);
    check_chains(evidence, &runs, &index, &mut report);
    check_throttles(evidence, &runs, &index, &mut report);
    check_processes(evidence, &mut report);
    check_pauses(evidence, &runs, &index, &mut report);
    report
}

/// Guarantee 9: a pause of the broker never expires a lease whose
/// heartbeats were sent in time. A lease that lapsed after a pause is a
/// violation when the process running it was alive then (neither killed
/// nor exited): its heartbeats were waiting for the broker to read them.
fn check_pauses(evidence: &Evidence<'_>, runs: &[Run<'_>], index: &Index<'_>, report: &mut Report) {
    for lapse in evidence.paused_lapses {
        let alive = index.of_task(&lapse.task).iter().find(|&&i| {
            let run = &runs[i];
            let process = &evidence.processes[run.process];
            run.start.attempt == lapse.attempt
                && run.start.t <= lapse.t
                && process.killed.is_none_or(|k| k > lapse.t)
                && process.exited.is_none_or(|x| x > lapse.t)
        });
        if let Some(&i) = alive {
            report.violations.push(format!(
                "the lease of run {} lapsed after a pause of the broker (t = {} ns) while its worker was alive",
                run_id(evidence, &runs[i]),
                lapse.t
            ));
        }
    }
}

/// Runs from every journal, each ended or cut.
fn collect_runs<'a>(evidence: &Evidence<'a>, report: &mut Report) -> Vec<Run<'a>> {
    let mut runs = Vec::new();
    for (process, read) in evidence.journals.iter().enumerate() {
        let info = &evidence.processes[process];
        if read.torn_inside {
            report.violations.push(format!(
                "the journal of worker {} (pid {}), {}, has an unreadable line before its end",
                info.slot,
                info.pid,
                info.journal.display()
            ));
        }
        let cut = info.killed.or(info.exited);
        let first = runs.len();
        // The latest run of each (task, attempt): a forgotten attempt (see
        // `may_be_early`) can start again in the same process.
        let mut open: HashMap<(&str, u32), usize> = HashMap::new();
        let mut ends: HashMap<usize, (How, u64)> = HashMap::new();
        let mut slots: Vec<(usize, &str, u64, Option<u64>)> = Vec::new();
        for record in &read.records {
            match record {
                Record::Hello { .. } => {}
                Record::Start(start) => {
                    open.insert((start.task.as_str(), start.attempt), runs.len());
                    runs.push(Run {
                        process,
                        start,
                        ending: Ending::Vanished,
                        end: start.t,
                        in_body: Vec::new(),
                    });
                }
                Record::End {
                    task,
                    attempt,
                    how,
                    t,
                } => {
                    if let Some(&i) = open.get(&(task.as_str(), *attempt)) {
                        ends.insert(i, (*how, *t));
                    }
                }
                Record::Acquired {
                    task,
                    attempt,
                    ident,
                    t,
                } => {
                    if let Some(&i) = open.get(&(task.as_str(), *attempt)) {
                        slots.push((i, ident.as_str(), *t, None));
                    }
                }
                Record::Released {
                    task,
                    attempt,
                    ident,
                    t,
                } => {
                    if let Some(&i) = open.get(&(task.as_str(), *attempt))
                        && let Some(slot) = slots
                            .iter_mut()
                            .rev()
                            .find(|s| s.0 == i && s.1 == ident.as_str() && s.3.is_none())
                    {
                        slot.3 = Some(*t);
                    }
                }
            }
        }
        for (i, run) in runs.iter_mut().enumerate().skip(first) {
            match ends.get(&i) {
                Some(&(how, t)) => {
                    run.ending = Ending::Body(how);
                    run.end = t.max(run.start.t);
                }
                None => {
                    run.ending = if info.killed.is_some() {
                        Ending::Killed
                    } else {
                        Ending::Vanished
                    };
                    run.end = cut.unwrap_or(u64::MAX).max(run.start.t);
                }
            }
        }
        for (i, ident, from, to) in slots {
            let to = to.unwrap_or(runs[i].end);
            runs[i].in_body.push((ident, from, to));
        }
    }
    for run in &runs {
        if run.ending == Ending::Vanished {
            report.violations.push(format!(
                "run {} of task {} (chain {}) has no end, and its process was not killed",
                run.start.attempt, run.start.task, run.start.seq
            ));
        }
    }
    runs
}

/// Lookups over the runs.
struct Index<'r> {
    /// Run indices by task id, in start order.
    by_task: HashMap<&'r str, Vec<usize>>,
    /// Run indices by chain id.
    by_chain: HashMap<&'r str, Vec<usize>>,
    /// Run indices by plan number.
    by_seq: HashMap<u64, Vec<usize>>,
}

impl<'r> Index<'r> {
    fn new(runs: &'r [Run<'_>]) -> Self {
        let mut index = Index {
            by_task: HashMap::new(),
            by_chain: HashMap::new(),
            by_seq: HashMap::new(),
        };
        for (i, run) in runs.iter().enumerate() {
            index
                .by_task
                .entry(run.start.task.as_str())
                .or_default()
                .push(i);
            index
                .by_chain
                .entry(run.start.chain.as_str())
                .or_default()
                .push(i);
            index.by_seq.entry(run.start.seq).or_default().push(i);
        }
        for list in index.by_task.values_mut() {
            list.sort_by_key(|&i| (runs[i].start.t, i));
        }
        index
    }

    fn of_task(&self, task: &str) -> &[usize] {
        self.by_task.get(task).map_or(&[], Vec::as_slice)
    }
}

/// The id a body puts in its result: `<pid>/<task>/<attempt>`.
fn run_id(evidence: &Evidence<'_>, run: &Run<'_>) -> String {
    format!(
        "{}/{}/{}",
        evidence.processes[run.process].pid, run.start.task, run.start.attempt
    )
}

/// When a broker's memory was lost: the harness killed it, or it stopped
/// because it was deposed (as far as the harness knows, when it noticed).
fn broker_ends(evidence: &Evidence<'_>) -> Vec<u64> {
    let kills = evidence.kills.iter().filter(|k| k.worker.is_none());
    kills
        .map(|k| k.t)
        .chain(evidence.deposed.iter().map(|e| e.t))
        .collect()
}

/// Per task: repeated attempts, re-executions and overlaps.
fn check_tasks(evidence: &Evidence<'_>, runs: &[Run<'_>], index: &Index<'_>, report: &mut Report) {
    let broker_kills = broker_ends(evidence);
    for (task, list) in &index.by_task {
        let mut last_of_attempt: HashMap<u32, usize> = HashMap::new();
        for &i in list {
            let start = runs[i].start;
            if let Some(first) = last_of_attempt.insert(start.attempt, i) {
                let window = runs[first].start.t.saturating_sub(NOTICE_NS)..=start.t;
                if may_be_early(evidence, runs[first].start)
                    && broker_kills.iter().any(|t| window.contains(t))
                {
                    report.forgotten += 1;
                } else {
                    report.same_attempt_twice += 1;
                    report.violations.push(format!(
                        "task {task} attempt {} ran more than once (one attempt is one run)",
                        start.attempt
                    ));
                }
            }
        }
        for pair in list.windows(2) {
            let (prev, cur) = (&runs[pair[0]], &runs[pair[1]]);
            let window = prev.start.t..=cur.start.t;
            let lapsed = evidence
                .lapses
                .contains(&(task.to_string(), prev.start.attempt));
            let broker_crash = broker_kills.iter().any(|t| window.contains(t));
            let crash = broker_crash
                || evidence.processes[prev.process]
                    .killed
                    .is_some_and(|t| window.contains(&t));
            let noticed = prev.start.t.saturating_sub(NOTICE_NS)..=cur.start.t;
            let forgotten = may_be_early(evidence, prev.start)
                && broker_kills.iter().any(|t| noticed.contains(t));
            if cur.start.t < prev.end && !lapsed && !forgotten {
                report.violations.push(format!(
                    "task {task} (chain {}) ran twice at once: attempt {} started while attempt {} \
                     still ran, and the broker logged no lapse of its lease",
                    cur.start.seq, cur.start.attempt, prev.start.attempt
                ));
            }
            match prev.ending {
                Ending::Body(How::Retryable | How::RetryLater) => {}
                Ending::Body(How::Ok | How::Fatal) => {
                    report.re_executed += 1;
                    if !crash && !lapsed && !forgotten {
                        report.violations.push(format!(
                            "task {task} (chain {}) ran again (attempt {}) after attempt {} \
                             completed, with no crash or lease lapse in between",
                            cur.start.seq, cur.start.attempt, prev.start.attempt
                        ));
                    }
                }
                Ending::Body(How::Aborted) | Ending::Killed | Ending::Vanished => {
                    report.redelivered += 1;
                }
            }
        }
    }
}

/// How long before a run's start a broker kill may still have forgotten
/// it. A worker starts a prefetched run only while its stream is welcomed
/// (it holds the rest back while disconnected), but it learns of a kill
/// only when its stream breaks: a run may start in that gap, after the
/// kill. `kill -9` closes the broker's sockets at once, so the gap is the
/// time the worker's runtime takes to read the reset: milliseconds; 200 ms
/// covers a loaded 2-core machine.
const NOTICE_NS: u64 = 200_000_000;

/// Whether the broker may have sent this run before its assignment was
/// durable (an early assignment): it takes no throttle slot, neither
/// declared for the run nor the chain's (taken by step 0). Such a run is
/// forgotten when the broker is killed before its assignment is durable:
/// the broker issues the same attempt again, maybe while the forgotten run
/// still goes on (its worker stops it when it reconnects and is told the
/// run is lost).
fn may_be_early(evidence: &Evidence<'_>, start: &Start) -> bool {
    let chain_hold = start.phase == "main"
        && start.step == 0
        && evidence
            .plan
            .iter()
            .any(|d| d.seq == start.seq && d.chain_hold.is_some());
    start.hold.is_none() && !chain_hold
}

/// What one chain's end must look like, and whether it does.
fn check_chains(evidence: &Evidence<'_>, runs: &[Run<'_>], index: &Index<'_>, report: &mut Report) {
    let observed = evidence.observed;
    report.submit_retries = observed.submit_retries;
    report.unacknowledged = observed.unacked.len();
    for oddity in &observed.oddities {
        report.violations.push(oddity.clone());
    }
    let acked_ids: HashSet<&str> = observed
        .acked
        .values()
        .map(|a| a.chain_id.as_str())
        .collect();
    for design in evidence.plan {
        let seq_runs = index.by_seq.get(&design.seq).map_or(&[][..], Vec::as_slice);
        let Some(ack) = observed.acked.get(&design.seq) else {
            let chains: HashSet<&str> = seq_runs
                .iter()
                .map(|&i| runs[i].start.chain.as_str())
                .collect();
            if !chains.is_empty() {
                report.ran_unacknowledged += 1;
            }
            if chains.len() > 1 {
                report.violations.push(format!(
                    "chain {}: {} chains ran for one idempotency key",
                    design.seq,
                    chains.len()
                ));
            }
            continue;
        };
        report.acknowledged += 1;
        report.acked_after_retry += usize::from(ack.tries > 1);
        report.acked_by_key += usize::from(ack.deduplicated);
        for &i in seq_runs {
            if runs[i].start.chain != ack.chain_id {
                report.violations.push(format!(
                    "chain {}: a run belongs to chain {}, not to the acknowledged {} \
                     (two chains for one idempotency key)",
                    design.seq, runs[i].start.chain, ack.chain_id
                ));
                break;
            }
        }
        let id = ack.chain_id.as_str();
        let Some(chain) = observed.finals.get(id) else {
            if observed.not_found.contains(id) {
                report.lost.push(format!(
                    "chain {} ({id}): acknowledged, then NOT_FOUND",
                    design.seq
                ));
            } else {
                let seen = observed
                    .last_seen
                    .get(id)
                    .map_or_else(|| "never read".to_owned(), describe);
                report.lost.push(format!(
                    "chain {} ({id}, {:?}): did not end; last seen {seen}",
                    design.seq, design.kind
                ));
            }
            continue;
        };
        report.ended += 1;
        let mut chain_check = ChainCheck {
            evidence,
            runs,
            index,
            design,
            chain,
            report: &mut *report,
        };
        chain_check.check();
    }
    let mut stray: HashSet<&str> = HashSet::new();
    for run in runs {
        if !acked_ids.contains(run.start.chain.as_str())
            && !observed.unacked.contains(&run.start.seq)
        {
            stray.insert(run.start.chain.as_str());
        }
    }
    for chain in stray {
        report.notes.push(format!(
            "runs of chain {chain}, which was never acknowledged"
        ));
    }
}

/// A chain's state and steps, in one line.
fn describe(chain: &pb::Chain) -> String {
    let steps: Vec<String> = chain
        .steps
        .iter()
        .chain(&chain.on_success)
        .chain(&chain.on_failure)
        .map(|s| format!("{}[{}]={:?}x{}", s.name, s.index, s.state(), s.attempts))
        .collect();
    format!("{:?}: {}", chain.state(), steps.join(" "))
}

/// The checks of one ended chain.
struct ChainCheck<'e, 'a> {
    evidence: &'e Evidence<'a>,
    runs: &'e [Run<'a>],
    index: &'e Index<'e>,
    design: &'e Design,
    chain: &'e pb::Chain,
    report: &'e mut Report,
}

impl ChainCheck<'_, '_> {
    fn name(&self) -> String {
        format!(
            "chain {} ({}, {:?})",
            self.design.seq, self.chain.chain_id, self.design.kind
        )
    }

    fn violation(&mut self, what: impl fmt::Display) {
        let name = self.name();
        self.report.violations.push(format!("{name}: {what}"));
    }

    fn lost(&mut self, what: impl fmt::Display) {
        let name = self.name();
        self.report.lost.push(format!("{name}: {what}"));
    }

    /// Indices of the runs of `step`, in start order.
    fn runs_of(&self, step: &pb::Step) -> Vec<usize> {
        self.index.of_task(&step.task_id).to_vec()
    }

    fn check(&mut self) {
        self.check_routing_and_attempts();
        let (chain, design) = (self.chain, self.design);
        let worker_lost = chain
            .failure
            .as_ref()
            .is_some_and(|f| f.error_type == plan::WORKER_LOST);
        match (design.expect, chain.state()) {
            (Expect::Succeed, pb::ChainState::Succeeded) => {
                self.report.succeeded += 1;
                self.check_succeeded();
            }
            (Expect::Fail { step, error_type }, pb::ChainState::Failed) if !worker_lost => {
                let failure = chain.failure.clone().unwrap_or_default();
                if failure.phase() != pb::Phase::Main
                    || usize::try_from(failure.step_index).ok() != Some(step)
                    || failure.error_type != error_type
                {
                    self.violation(format!(
                        "failed at {:?} step {} with {}, designed to fail at step {step} with \
                         {error_type}",
                        failure.phase(),
                        failure.step_index,
                        failure.error_type
                    ));
                }
                self.report.failed_as_designed += 1;
                self.check_failed(&failure);
            }
            (Expect::Succeed | Expect::Fail { .. }, pb::ChainState::Failed) if worker_lost => {
                self.report.failed_worker_lost += 1;
                let failure = chain.failure.clone().unwrap_or_default();
                self.check_failed(&failure);
            }
            (Expect::Cancel, pb::ChainState::Cancelled) => {
                self.report.cancelled_as_designed += 1;
                self.check_cancelled();
            }
            (expect, state) => {
                let detail = chain
                    .failure
                    .as_ref()
                    .map(|f| format!(" ({}: {})", f.error_type, f.message))
                    .unwrap_or_default();
                self.violation(format!(
                    "ended {state:?}{detail}, designed to end {expect:?}"
                ));
            }
        }
    }

    /// Every run went through the queue it was routed to, on a worker
    /// subscribed to it; the broker counted at least the attempts that ran.
    fn check_routing_and_attempts(&mut self) {
        let (chain, design) = (self.chain, self.design);
        let phases: [(&[pb::Step], bool); 3] = [
            (&chain.steps, true),
            (&chain.on_success, false),
            (&chain.on_failure, false),
        ];
        let mut problems = Vec::new();
        for (steps, main) in phases {
            for (i, step) in steps.iter().enumerate() {
                let expected = design.queue(main.then_some(i));
                let runs = self.runs_of(step);
                // A forgotten run (see `may_be_early`) is not counted.
                let counted = |r: &usize| {
                    let start = self.runs[*r].start;
                    !(may_be_early(self.evidence, start)
                        && broker_ends(self.evidence).iter().any(|t| *t >= start.t))
                };
                if let Some(max) = runs
                    .iter()
                    .filter(|r| counted(r))
                    .map(|&r| self.runs[r].start.attempt)
                    .max()
                    && max > step.attempts
                {
                    problems.push(format!(
                        "step {} ran attempt {max} but the broker counts {} attempts \
                         (an assignment was not durable)",
                        step.name, step.attempts
                    ));
                }
                for r in runs {
                    let run = &self.runs[r];
                    let process = &self.evidence.processes[run.process];
                    if run.start.queue != expected || !process.queues.contains(&run.start.queue) {
                        problems.push(format!(
                            "step {} ran from queue {:?} on a worker of {:?}; it belongs to {expected:?}",
                            step.name, run.start.queue, process.queues
                        ));
                    }
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    /// The run whose success the broker accepted for `step`: named by the
    /// step's result, and journalled as a success.
    fn accepted(&self, step: &pb::Step) -> Result<usize, String> {
        if step.state() != pb::StepState::Succeeded {
            return Err(format!(
                "step {} [{}] is {:?}, not succeeded",
                step.name,
                step.index,
                step.state()
            ));
        }
        let result: Value = serde_json::from_str(&step.result).unwrap_or(Value::Null);
        let id = result["run"].as_str().unwrap_or_default();
        // A forgotten run (see `may_be_early`) may share the id of the
        // run issued again in the same process: the successful one counts.
        self.runs_of(step)
            .into_iter()
            .find(|&r| run_id(self.evidence, &self.runs[r]) == id && self.runs[r].is(How::Ok))
            .ok_or_else(|| {
                format!(
                    "step {} [{}] succeeded with result {}, but no body journalled that \
                     successful run",
                    step.name, step.index, step.result
                )
            })
    }

    /// Every run of `step` came after `prev` (the accepted run of the step
    /// before) ended and received its result.
    fn check_after(&mut self, step: &pb::Step, prev: usize) {
        let prev = &self.runs[prev];
        let prev_id = run_id(self.evidence, prev);
        let mut problems = Vec::new();
        for r in self.runs_of(step) {
            let run = &self.runs[r];
            let got = run
                .start
                .prev
                .as_ref()
                .and_then(|p| p["run"].as_str())
                .unwrap_or("nothing");
            if got != prev_id {
                problems.push(format!(
                    "step {} attempt {} received {got}, not the accepted run {prev_id}",
                    step.name, run.start.attempt
                ));
            }
            if run.start.t < prev.end {
                problems.push(format!(
                    "step {} attempt {} started {} us before the previous step's accepted \
                     run ended",
                    step.name,
                    run.start.attempt,
                    (prev.end - run.start.t) / 1000
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    /// Main steps `0..end` each succeeded in a journalled run, in order;
    /// the accepted run of the last of them.
    fn check_main_until(&mut self, end: usize) -> Option<usize> {
        let chain = self.chain;
        let mut prev: Option<usize> = None;
        for step in chain.steps.iter().take(end) {
            let accepted = match self.accepted(step) {
                Ok(run) => run,
                Err(why) => {
                    self.lost(why);
                    return None;
                }
            };
            if let Some(p) = prev {
                self.check_after(step, p);
            }
            prev = Some(accepted);
        }
        prev
    }

    fn none_ran(&mut self, steps: &[pb::Step], why: &str) {
        for step in steps {
            let ran = self.runs_of(step).len();
            if ran > 0 {
                self.violation(format!(
                    "{} [{}] ran {ran} times {why}",
                    step.name, step.index
                ));
            }
        }
    }

    fn count_callbacks(&mut self) {
        let chain = self.chain;
        let on_success: usize = chain.on_success.iter().map(|s| self.runs_of(s).len()).sum();
        let on_failure: usize = chain.on_failure.iter().map(|s| self.runs_of(s).len()).sum();
        self.report.on_success_runs += on_success;
        self.report.on_failure_runs += on_failure;
        self.report.on_success_chains += usize::from(on_success > 0);
        self.report.on_failure_chains += usize::from(on_failure > 0);
    }

    fn check_succeeded(&mut self) {
        self.count_callbacks();
        let chain = self.chain;
        let Some(last) = self.check_main_until(chain.steps.len()) else {
            return;
        };
        let last_id = run_id(self.evidence, &self.runs[last]);
        let result: Value = serde_json::from_str(&chain.result).unwrap_or(Value::Null);
        if result["run"].as_str() != Some(last_id.as_str()) {
            self.violation(format!(
                "the chain's result {} is not its last step's accepted run {last_id}",
                chain.result
            ));
        }
        match chain.on_success.first() {
            None => self.violation("has no on_success step"),
            Some(first) => match self.accepted(first) {
                Ok(_) => self.check_after(first, last),
                Err(why) => self.lost(format!("on_success: {why}")),
            },
        }
        self.none_ran(&chain.on_failure, "in a chain that succeeded");
    }

    fn check_failed(&mut self, failure: &pb::FailureRecord) {
        self.count_callbacks();
        let chain = self.chain;
        let failed_at = usize::try_from(failure.step_index).unwrap_or(usize::MAX);
        let main = failure.phase() == pb::Phase::Main;
        let failing_steps = if main {
            &chain.steps
        } else {
            &chain.on_success
        };
        if main {
            let prev = self.check_main_until(failed_at);
            if let (Some(p), Some(step)) = (prev, chain.steps.get(failed_at)) {
                self.check_after(step, p);
            }
            self.none_ran(
                chain.steps.get(failed_at + 1..).unwrap_or_default(),
                "after an earlier step failed",
            );
            self.none_ran(&chain.on_success, "in a chain that failed");
        } else {
            // on_success failed (lost too often): the main steps all succeeded.
            self.check_main_until(chain.steps.len());
        }
        // The failing run: journalled, and failed the way the record says.
        let failing = failing_steps.get(failed_at).and_then(|step| {
            self.runs_of(step)
                .into_iter()
                .find(|&r| self.runs[r].start.attempt == failure.attempt)
        });
        if failure.error_type != plan::WORKER_LOST {
            let expected = if failure.error_type == plan::FLAKY_TYPE {
                How::Retryable
            } else {
                How::Fatal
            };
            match failing {
                Some(i) if self.runs[i].is(expected) => {}
                Some(i) => {
                    let ending = self.runs[i].ending;
                    self.violation(format!(
                        "the failing run (attempt {}) ended {ending:?}, not {expected:?}",
                        failure.attempt
                    ));
                }
                None => self.lost(format!(
                    "failed at {} attempt {}, which no body journalled",
                    failure.task_name, failure.attempt
                )),
            }
        }
        // on_failure: ran to success once (as the broker accepted it), each
        // run after the failure, with the failure record.
        let Some(first) = chain.on_failure.first() else {
            self.violation("has no on_failure step");
            return;
        };
        if let Err(why) = self.accepted(first) {
            self.lost(format!("on_failure: {why}"));
        }
        let mut problems = Vec::new();
        for r in self.runs_of(first) {
            let run = &self.runs[r];
            let record = run.start.prev.clone().unwrap_or(Value::Null);
            if record["task_id"].as_str() != Some(failure.task_id.as_str())
                || record["error_type"].as_str() != Some(failure.error_type.as_str())
                || record["step_index"].as_u64() != Some(u64::from(failure.step_index))
            {
                problems.push(format!(
                    "on_failure attempt {} received {record}, not the chain's failure record",
                    run.start.attempt
                ));
            }
            if let Some(i) = failing
                && run.start.t < self.runs[i].end
            {
                problems.push(format!(
                    "on_failure attempt {} started before the failing run ended",
                    run.start.attempt
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    fn check_cancelled(&mut self) {
        self.count_callbacks();
        let chain = self.chain;
        self.none_ran(&chain.on_success, "in a cancelled chain");
        self.none_ran(&chain.on_failure, "in a cancelled chain");
        self.none_ran(
            chain.steps.get(1..).unwrap_or_default(),
            "in a chain cancelled while step 0 polled",
        );
        match self.evidence.observed.cancels.get(&self.design.seq) {
            Some(pb::ChainState::Cancelled) => {}
            Some(state) => {
                let state = *state;
                self.violation(format!("CancelChain answered {state:?}"));
            }
            None => self.violation("is cancelled, but no CancelChain call was answered"),
        }
    }
}

/// Most holders of each identity at any instant, from the journals.
fn check_throttles(
    evidence: &Evidence<'_>,
    runs: &[Run<'_>],
    index: &Index<'_>,
    report: &mut Report,
) {
    let mut holds: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for run in runs {
        if let Some(label) = &run.start.hold {
            holds
                .entry(label.as_str())
                .or_default()
                .push((run.start.t, run.end));
        }
        for &(label, from, to) in &run.in_body {
            holds.entry(label).or_default().push((from, to));
        }
    }
    // Chain-scoped: from the first start of the holding step to the last
    // end of any run of the chain (the chain holds the slot until it ends).
    for design in evidence.plan {
        let (Some(identity), Some(ack)) =
            (design.chain_hold, evidence.observed.acked.get(&design.seq))
        else {
            continue;
        };
        let Some(list) = index.by_chain.get(ack.chain_id.as_str()) else {
            continue;
        };
        let first = list
            .iter()
            .map(|&i| &runs[i])
            .filter(|r| r.start.phase == "main" && r.start.step == 0)
            .map(|r| r.start.t)
            .min();
        let last = list.iter().map(|&i| runs[i].end).max();
        if let (Some(from), Some(to)) = (first, last) {
            holds
                .entry(IDENTITIES[identity].label)
                .or_default()
                .push((from, to));
        }
    }
    for identity in &IDENTITIES {
        let intervals = holds.remove(identity.label).unwrap_or_default();
        let (max, at) = max_holders(&intervals);
        if max > usize::try_from(identity.limit).unwrap_or(usize::MAX) {
            report.violations.push(format!(
                "throttle {} (limit {}) had {max} holders at once (t = {at} ns)",
                identity.label, identity.limit
            ));
        }
        report.identities.push(IdentityReport {
            label: identity.label,
            form: match identity.form {
                Form::Declared => "declared",
                Form::InBody => "in-body",
                Form::ChainScoped => "chain-scoped",
                Form::Mixed => "declared+in-body",
            },
            limit: identity.limit,
            max,
            holds: intervals.len(),
        });
    }
    for (label, _) in holds {
        report
            .violations
            .push(format!("a run held {label}, which the plan does not use"));
    }
}

/// The most intervals `[from, to)` covering one instant, and that instant.
/// An interval that ends when another starts does not overlap it.
fn max_holders(intervals: &[(u64, u64)]) -> (usize, u64) {
    let mut events: Vec<(u64, i8)> = Vec::with_capacity(intervals.len() * 2);
    for &(from, to) in intervals {
        if to > from {
            events.push((from, 1));
            events.push((to, -1));
        }
    }
    events.sort_unstable();
    let (mut now, mut max, mut at) = (0i64, 0i64, 0u64);
    for (t, delta) in events {
        now += i64::from(delta);
        if now > max {
            max = now;
            at = t;
        }
    }
    (usize::try_from(max).unwrap_or(0), at)
}

/// Processes that died unasked, broker errors, unclean stops.
fn check_processes(evidence: &Evidence<'_>, report: &mut Report) {
    for exit in evidence.exits {
        let who = exit
            .worker
            .map_or_else(|| "the broker".to_owned(), |slot| format!("worker {slot}"));
        report.violations.push(format!(
            "{who} (pid {}) exited by itself: {}",
            exit.pid, exit.status
        ));
    }
    for line in evidence.broker_errors.iter().take(SHOWN) {
        report
            .violations
            .push(format!("broker logged an error: {line}"));
    }
    if !evidence.broker_clean_stop {
        report
            .violations
            .push("the broker did not stop cleanly on SIGTERM at the end".to_owned());
    }
    if evidence.workers_clean < evidence.workers_live_at_stop {
        report.violations.push(format!(
            "only {} of {} workers drained and exited cleanly at the end",
            evidence.workers_clean, evidence.workers_live_at_stop
        ));
    }
    if evidence.settle_timed_out {
        report
            .notes
            .push("gave up waiting for the chains to end (--settle-timeout)".to_owned());
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, value: usize, note: String| {
            writeln!(f, "{name:<34}{value:>7}{note}")
        };
        writeln!(f, "== baton-chaos summary ==")?;
        row(f, "chains planned", self.chains, String::new())?;
        row(
            f,
            "acknowledged",
            self.acknowledged,
            format!(
                "  ({} after a retry, {} answered by their idempotency key; {} failed tries)",
                self.acked_after_retry, self.acked_by_key, self.submit_retries
            ),
        )?;
        if self.unacknowledged > 0 {
            row(
                f,
                "never acknowledged",
                self.unacknowledged,
                format!("  ({} of them ran anyway)", self.ran_unacknowledged),
            )?;
        }
        row(f, "ended", self.ended, String::new())?;
        row(
            f,
            "  succeeded as designed",
            self.succeeded,
            "  (on_success ran, on_failure never)".into(),
        )?;
        row(
            f,
            "  failed as designed",
            self.failed_as_designed,
            "  (on_failure ran with the record, on_success never)".into(),
        )?;
        row(
            f,
            "  cancelled as designed",
            self.cancelled_as_designed,
            "  (no callback, later steps never started)".into(),
        )?;
        row(
            f,
            "  failed: WorkerLost",
            self.failed_worker_lost,
            "  (a step lost too often; allowed, on_failure ran)".into(),
        )?;
        row(f, "lost", self.lost.len(), "  (must be 0)".into())?;
        row(
            f,
            "broker crashes (kill -9)",
            self.broker_crashes,
            String::new(),
        )?;
        row(
            f,
            "worker crashes (kill -9)",
            self.worker_crashes,
            String::new(),
        )?;
        row(f, "runs", self.runs, String::new())?;
        row(
            f,
            "duplicate runs",
            self.duplicate_runs(),
            format!(
                "  (redelivered after a crash {}, re-executed after a lost outcome {}, \
                 same attempt twice {}; forgotten by a killed broker {})",
                self.redelivered, self.re_executed, self.same_attempt_twice, self.forgotten
            ),
        )?;
        row(
            f,
            "on_success runs",
            self.on_success_runs,
            format!("  for {} chains", self.on_success_chains),
        )?;
        row(
            f,
            "on_failure runs",
            self.on_failure_runs,
            format!("  for {} chains", self.on_failure_chains),
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<24}{:<18}{:>6}{:>13}{:>8}",
            "throttle identity", "form", "limit", "max holders", "holds"
        )?;
        for identity in &self.identities {
            writeln!(
                f,
                "{:<24}{:<18}{:>6}{:>13}{:>8}{}",
                identity.label,
                identity.form,
                identity.limit,
                identity.max,
                identity.holds,
                if identity.max > usize::try_from(identity.limit).unwrap_or(usize::MAX) {
                    "  EXCEEDED"
                } else {
                    ""
                }
            )?;
        }
        writeln!(f)?;
        let list = |f: &mut fmt::Formatter<'_>, title: &str, items: &[String]| {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "{title} ({}):", items.len())?;
            for item in items.iter().take(SHOWN) {
                writeln!(f, "  - {item}")?;
            }
            if items.len() > SHOWN {
                writeln!(f, "  ... and {} more", items.len() - SHOWN)?;
            }
            Ok(())
        };
        list(f, "LOST", &self.lost)?;
        list(f, "VIOLATIONS", &self.violations)?;
        list(f, "notes", &self.notes)?;
        row(f, "violations", self.violations.len(), String::new())?;
        writeln!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::plan::{Behaviour, Kind, StepDesign};
    use crate::run::Ack;

    const PID: u32 = 100;

    /// One worker process, never killed, its journal given by the test.
    fn process() -> WorkerProcess {
        WorkerProcess {
            slot: 0,
            pid: PID,
            queues: vec!["general".into(), "heavy".into()],
            journal: PathBuf::from("w0-0.jsonl"),
            killed: None,
            exited: Some(1_000),
            clean: true,
        }
    }

    fn design(seq: u64, steps: usize, expect: Expect) -> Design {
        let step = StepDesign {
            name: plan::LIGHT,
            heavy: false,
            declared: None,
            behaviour: Behaviour::default(),
        };
        Design {
            seq,
            kind: Kind::Plain,
            heavy: false,
            steps: vec![step; steps],
            expect,
            chain_hold: None,
        }
    }

    fn result(task: &str) -> String {
        json!({ "run": format!("{PID}/{task}/1") }).to_string()
    }

    fn step(task: &str, state: pb::StepState) -> pb::Step {
        pb::Step {
            task_id: task.into(),
            name: plan::LIGHT.into(),
            state: state.into(),
            attempts: u32::from(state != pb::StepState::Pending),
            result: if state == pb::StepState::Succeeded {
                result(task)
            } else {
                String::new()
            },
            ..pb::Step::default()
        }
    }

    /// A two-step chain "c" that succeeded: main "a", "b"; on_success "s";
    /// on_failure "f" pending.
    fn succeeded() -> pb::Chain {
        pb::Chain {
            chain_id: "c".into(),
            state: pb::ChainState::Succeeded.into(),
            steps: vec![
                step("a", pb::StepState::Succeeded),
                step("b", pb::StepState::Succeeded),
            ],
            on_success: vec![step("s", pb::StepState::Succeeded)],
            on_failure: vec![step("f", pb::StepState::Pending)],
            result: result("b"),
            ..pb::Chain::default()
        }
    }

    fn start(task: &str, phase: &str, prev: Option<Value>, t: u64) -> Record {
        Record::Start(Start {
            chain: "c".into(),
            seq: 0,
            task: task.into(),
            attempt: 1,
            phase: phase.into(),
            step: 0,
            name: plan::LIGHT.into(),
            queue: "general".into(),
            prev,
            hold: None,
            wants: None,
            t,
        })
    }

    fn end(task: &str, how: How, t: u64) -> Record {
        Record::End {
            task: task.into(),
            attempt: 1,
            how,
            t,
        }
    }

    fn prev(task: &str) -> Option<Value> {
        Some(json!({ "run": format!("{PID}/{task}/1") }))
    }

    /// The journal of the chain of [`succeeded`], run in order.
    fn journal() -> Vec<Record> {
        vec![
            start("a", "main", None, 10),
            end("a", How::Ok, 20),
            start("b", "main", prev("a"), 30),
            end("b", How::Ok, 40),
            start("s", "on_success", prev("b"), 50),
            end("s", How::Ok, 60),
        ]
    }

    fn observed(chain: Option<pb::Chain>) -> Observed {
        let mut observed = Observed::default();
        observed.acked.insert(
            0,
            Ack {
                chain_id: "c".into(),
                tries: 1,
                deduplicated: false,
            },
        );
        if let Some(chain) = chain {
            observed.finals.insert("c".into(), chain);
        }
        observed
    }

    fn verdict(plan: &[Design], observed: &Observed, records: Vec<Record>) -> Report {
        verdict_killed(plan, observed, records, None)
    }

    fn verdict_killed(
        plan: &[Design],
        observed: &Observed,
        records: Vec<Record>,
        killed: Option<u64>,
    ) -> Report {
        verdict_with_kills(plan, observed, records, killed, &[], &[])
    }

    /// A verdict with the worker process killed at `killed` and the
    /// broker killed at each of `broker_kills`.
    /// The records with every start and end time mapped by `f`.
    fn retimed(records: Vec<Record>, f: impl Fn(u64) -> u64) -> Vec<Record> {
        records
            .into_iter()
            .map(|r| match r {
                Record::Start(mut s) => {
                    s.t = f(s.t);
                    Record::Start(s)
                }
                Record::End {
                    task,
                    attempt,
                    how,
                    t,
                } => Record::End {
                    task,
                    attempt,
                    how,
                    t: f(t),
                },
                other => other,
            })
            .collect()
    }

    /// Attempt 1 of "a" starts from a worker's prefetch 1 ms after its
    /// broker's end (at 1 ms), and completes; the broker's successor
    /// issues attempt 1 again (times in milliseconds).
    fn forgotten_run() -> Vec<Record> {
        let mut records = journal();
        records.insert(0, start("a", "main", None, 2));
        records.insert(1, end("a", How::Ok, 3));
        retimed(records, |t| t * MS)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_forgotten_run_may_start_just_after_the_kill_its_worker_has_not_noticed() {
        let plan = [design(0, 2, Expect::Succeed)];
        let records = forgotten_run();
        let report = verdict_with_kills(
            &plan,
            &observed(Some(succeeded())),
            records.clone(),
            None,
            &[MS],
            &[],
        );
        assert!(report.passed(), "{report}");
        assert_eq!((report.forgotten, report.re_executed), (1, 1));

        // A kill a second before the first run's start explains nothing.
        let report = verdict_with_kills(
            &plan,
            &observed(Some(succeeded())),
            retimed(records, |t| t + 1_000 * MS),
            None,
            &[MS],
            &[],
        );
        assert!(
            violations_mention(&report, "ran more than once"),
            "{report}"
        );
        assert!(
            violations_mention(&report, "no crash or lease lapse"),
            "{report}"
        );
    }

    #[test]
    fn a_deposed_leader_forgets_like_a_killed_one() {
        let plan = [design(0, 2, Expect::Succeed)];
        // The leader stopped, deposed (its lease lapsed), at 1 ms.
        let ended = |deposed: &[u64]| {
            let succeeded = observed(Some(succeeded()));
            verdict_with_ends(&plan, &succeeded, forgotten_run(), None, &[], deposed, &[])
        };
        let report = ended(&[MS]);
        assert!(report.passed(), "{report}");
        assert_eq!((report.forgotten, report.re_executed), (1, 1));
        // Without the deposition, the second run of attempt 1 is a
        // violation.
        let report = ended(&[]);
        assert!(
            violations_mention(&report, "ran more than once"),
            "{report}"
        );
    }

    fn verdict_with_kills(
        plan: &[Design],
        observed: &Observed,
        records: Vec<Record>,
        killed: Option<u64>,
        broker_kills: &[u64],
        paused: &[Lapse],
    ) -> Report {
        verdict_with_ends(plan, observed, records, killed, broker_kills, &[], paused)
    }

    /// A verdict with the worker process killed at `killed`, the broker
    /// killed at each of `broker_kills` and deposed at each of `deposed`.
    fn verdict_with_ends(
        plan: &[Design],
        observed: &Observed,
        records: Vec<Record>,
        killed: Option<u64>,
        broker_kills: &[u64],
        deposed: &[u64],
        paused: &[Lapse],
    ) -> Report {
        let deposed: Vec<Exit> = deposed
            .iter()
            .map(|&t| Exit {
                worker: None,
                pid: 2,
                t,
                status: "exit status: 1".to_owned(),
            })
            .collect();
        let kills: Vec<Kill> = broker_kills
            .iter()
            .map(|&t| Kill {
                worker: None,
                pid: 1,
                t,
            })
            .collect();
        let processes = [WorkerProcess {
            killed,
            ..process()
        }];
        let journals = [journal::Read {
            records,
            ..journal::Read::default()
        }];
        let lapses = HashSet::new();
        check(&Evidence {
            plan,
            observed,
            processes: &processes,
            journals: &journals,
            kills: &kills,
            deposed: &deposed,
            exits: &[],
            lapses: &lapses,
            paused_lapses: paused,
            broker_errors: &[],
            broker_clean_stop: true,
            workers_live_at_stop: 1,
            workers_clean: 1,
            settle_timed_out: false,
        })
    }

    fn violations_mention(report: &Report, text: &str) -> bool {
        report.violations.iter().any(|v| v.contains(text))
    }

    #[test]
    fn a_chain_run_as_designed_passes() {
        let plan = [design(0, 2, Expect::Succeed)];
        let report = verdict(&plan, &observed(Some(succeeded())), journal());
        assert!(report.passed(), "{report}");
        assert_eq!(
            (report.succeeded, report.runs, report.duplicate_runs()),
            (1, 3, 0)
        );
        assert_eq!((report.on_success_runs, report.on_failure_runs), (1, 0));
    }

    #[test]
    fn a_chain_that_never_ended_or_vanished_is_lost() {
        let plan = [design(0, 2, Expect::Succeed)];
        let report = verdict(&plan, &observed(None), journal());
        assert_eq!(report.lost.len(), 1, "{report}");
        let mut gone = observed(None);
        gone.not_found.insert("c".into());
        let report = verdict(&plan, &gone, journal());
        assert!(report.lost[0].contains("NOT_FOUND"), "{report}");
    }

    #[test]
    fn a_step_the_broker_calls_succeeded_without_a_run_is_lost() {
        let plan = [design(0, 2, Expect::Succeed)];
        let mut records = journal();
        records.drain(2..4); // b never ran
        let report = verdict(&plan, &observed(Some(succeeded())), records);
        assert!(!report.passed());
        assert!(
            report.lost.iter().any(|l| l.contains("no body journalled")),
            "{report}"
        );
    }

    #[test]
    fn on_failure_for_a_succeeded_chain_breaks_the_callback_rule() {
        let plan = [design(0, 2, Expect::Succeed)];
        let mut records = journal();
        records.push(start("f", "on_failure", None, 70));
        records.push(end("f", How::Ok, 80));
        let report = verdict(&plan, &observed(Some(succeeded())), records);
        assert!(
            violations_mention(&report, "in a chain that succeeded"),
            "{report}"
        );
    }

    #[test]
    fn a_step_that_starts_before_the_previous_one_ended_breaks_the_order() {
        let plan = [design(0, 2, Expect::Succeed)];
        let mut records = journal();
        records[2] = start("b", "main", prev("a"), 15);
        let report = verdict(&plan, &observed(Some(succeeded())), records);
        assert!(
            violations_mention(&report, "before the previous step"),
            "{report}"
        );
    }

    #[test]
    fn a_chain_that_ended_otherwise_than_designed_is_a_violation() {
        let plan = [design(
            0,
            2,
            Expect::Fail {
                step: 1,
                error_type: plan::FATAL_TYPE,
            },
        )];
        let report = verdict(&plan, &observed(Some(succeeded())), journal());
        assert!(violations_mention(&report, "designed to end"), "{report}");
    }

    #[test]
    fn overlapping_holders_beyond_the_limit_are_caught() {
        let plan = [design(0, 2, Expect::Succeed)];
        let mut records = journal();
        for record in &mut records {
            if let Record::Start(start) = record {
                start.hold = Some(IDENTITIES[0].label.into()); // limit 1
            }
        }
        // a [10, 20) and b [30, 40) hand over; a second run of "a" overlaps b.
        let report = verdict(&plan, &observed(Some(succeeded())), records.clone());
        assert!(report.passed(), "{report}");
        let mut extra = start("x", "main", None, 35);
        if let Record::Start(s) = &mut extra {
            s.hold = Some(IDENTITIES[0].label.into());
            s.chain = "other".into();
            s.seq = 99;
        }
        records.push(extra);
        records.push(end("x", How::Ok, 38));
        let report = verdict(&plan, &observed(Some(succeeded())), records);
        assert!(violations_mention(&report, "2 holders at once"), "{report}");
        assert_eq!(report.identities[0].max, 2);
    }

    #[test]
    fn a_rerun_after_success_needs_a_crash_to_explain_it() {
        let plan = [design(0, 2, Expect::Succeed)];
        let mut records = journal();
        let mut again = start("a", "main", None, 25);
        if let Record::Start(s) = &mut again {
            s.attempt = 2;
        }
        records.insert(2, again);
        records.insert(
            3,
            Record::End {
                task: "a".into(),
                attempt: 2,
                how: How::Ok,
                t: 28,
            },
        );
        let report = verdict(&plan, &observed(Some(succeeded())), records);
        assert_eq!(report.re_executed, 1);
        assert!(
            violations_mention(&report, "no crash or lease lapse"),
            "{report}"
        );
    }

    #[test]
    fn a_run_forgotten_by_a_killed_broker_is_excused_only_without_a_throttle_slot() {
        let plan = [design(0, 2, Expect::Succeed)];
        // Attempt 1 of "a" starts, the broker is killed before its
        // assignment is durable and issues attempt 1 again, which starts
        // while the first still runs (its worker has not reconnected yet).
        let forgotten = |hold: Option<&str>| {
            let mut records = journal();
            let mut first = start("a", "main", None, 5);
            if let Record::Start(s) = &mut first {
                s.hold = hold.map(str::to_owned);
            }
            records.insert(0, first);
            records.insert(1, end("a", How::Aborted, 12));
            records
        };
        let report = verdict_with_kills(
            &plan,
            &observed(Some(succeeded())),
            forgotten(None),
            None,
            &[7],
            &[],
        );
        assert!(report.passed(), "{report}");
        assert_eq!((report.forgotten, report.same_attempt_twice), (1, 0));

        // With a declared throttle slot, or with no broker kill in between,
        // the same journal breaks the fence.
        let held = Some(IDENTITIES[0].label);
        let report = verdict_with_kills(
            &plan,
            &observed(Some(succeeded())),
            forgotten(held),
            None,
            &[7],
            &[],
        );
        assert!(
            violations_mention(&report, "ran more than once"),
            "{report}"
        );
        assert!(violations_mention(&report, "ran twice at once"), "{report}");
        let report = verdict(&plan, &observed(Some(succeeded())), forgotten(None));
        assert!(
            violations_mention(&report, "ran more than once"),
            "{report}"
        );
    }

    #[test]
    fn a_run_without_an_end_needs_a_kill_and_holds_until_it() {
        let plan = [design(0, 1, Expect::Succeed)];
        let mut records = journal();
        records.truncate(2);
        records.push(start("s", "on_success", prev("a"), 50));
        records.push(end("s", How::Ok, 60));
        let report = verdict(&plan, &observed(Some(chain_of_a())), records.clone());
        assert!(report.passed(), "{report}");
        // A run with no end in a process nobody killed is a violation...
        let mut cut = start("z", "main", None, 70);
        if let Record::Start(s) = &mut cut {
            s.chain = "other".into();
            s.seq = 99;
            s.hold = Some(IDENTITIES[0].label.into());
        }
        records.push(cut);
        let report = verdict(&plan, &observed(Some(chain_of_a())), records.clone());
        assert!(violations_mention(&report, "has no end"), "{report}");
        // ...and, in a killed process, holds its slot until the kill.
        let mut overlapping = start("y", "main", None, 80);
        if let Record::Start(s) = &mut overlapping {
            s.chain = "other".into();
            s.seq = 99;
            s.hold = Some(IDENTITIES[0].label.into());
        }
        records.push(overlapping);
        records.push(end("y", How::Ok, 85));
        let report = verdict_killed(
            &plan,
            &observed(Some(chain_of_a())),
            records.clone(),
            Some(90),
        );
        assert!(!violations_mention(&report, "has no end"), "{report}");
        assert!(violations_mention(&report, "2 holders at once"), "{report}");
        let report = verdict_killed(&plan, &observed(Some(chain_of_a())), records, Some(75));
        assert!(!violations_mention(&report, "holders at once"), "{report}");
    }

    fn chain_of_a() -> pb::Chain {
        let mut chain = succeeded();
        chain.steps.truncate(1);
        chain.result = result("a");
        chain
    }

    #[test]
    fn holders_are_counted_at_the_busiest_instant() {
        assert_eq!(max_holders(&[]).0, 0);
        assert_eq!(
            max_holders(&[(0, 10), (10, 20), (20, 30)]).0,
            1,
            "hand-offs"
        );
        assert_eq!(max_holders(&[(0, 10), (5, 20), (6, 7)]), (3, 6));
        assert_eq!(
            max_holders(&[(5, 5), (5, 6)]).0,
            1,
            "empty intervals hold nothing"
        );
    }

    #[test]
    fn a_lease_that_lapsed_after_a_pause_needs_a_dead_worker() {
        let plan = [design(0, 2, Expect::Succeed)];
        let lapse = [Lapse {
            broker: 0,
            task: "a".into(),
            attempt: 1,
            incarnation: 1,
            t: 15,
        }];
        let verdict = |killed| {
            verdict_with_kills(
                &plan,
                &observed(Some(succeeded())),
                journal(),
                killed,
                &[],
                &lapse,
            )
        };
        let report = verdict(None);
        assert!(
            violations_mention(&report, "lapsed after a pause of the broker"),
            "{report}"
        );
        // Its worker was killed before the lapse: the lease had to lapse.
        let report = verdict(Some(12));
        assert!(
            !violations_mention(&report, "lapsed after a pause"),
            "{report}"
        );
    }
}

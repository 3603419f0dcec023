//! Simulated workers: what the worker SDK does (its ledger of runs that
//! outlives a connection, heartbeats, reconnecting with held runs and
//! slots, re-sending unacknowledged outcomes after a Welcome), plus what a
//! bad worker or a bad network does: crash, disconnect, late heartbeats,
//! duplicate and stale reports, and lies.
//!
//! Each run carries the worker's own estimate of its lease,
//! `valid_until`: from the moment the broker renewed it on the worker's
//! behalf (the assignment's delivery, the Hello that kept it, a heartbeat
//! sent while the lease was still current), plus the lease. A run whose
//! estimate ran out is never counted as a holder again until a Welcome
//! keeps it: that is the worker SDK's rule for a lapsed lease.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc;

use crate::domain::*;
use crate::scheduler::driver::Driver;
use crate::scheduler::throttle::Holder;

use super::model::{Model, Receiver, Violation};
use super::rng::Rng;
use super::scenario;
use super::world::{Cmd, Trace};

pub enum RunState {
    /// Prefetched: waits for a free run slot.
    Waiting,
    Running {
        finish_at: u64,
    },
    /// The body ended; the outcome waits for its Ack (`sent` on the
    /// current link, if any).
    Finished {
        outcome: RunOutcome,
        sent: bool,
    },
}

pub enum InBody {
    No,
    /// The body will ask for `throttle` at `at`.
    Planned {
        at: u64,
        throttle: Throttle,
    },
    Requested {
        request_id: u64,
        throttle: Throttle,
    },
    Held {
        request_id: u64,
        identity: Identity,
        until: u64,
    },
    Done,
}

pub struct WRun {
    /// Order of arrival: prefetched runs start in it, as the SDK's fair
    /// semaphore starts them (a slot holder sent to a free run slot must
    /// not wait behind a run prefetched before it).
    arrived: u64,
    pub task: TaskRef,
    pub chain_id: ChainId,
    pub declared: Option<Identity>,
    pub chain_hold: Option<Identity>,
    pub state: RunState,
    pub valid_until: u64,
    /// Told to stop (Cancel): the body ends at once and holds nothing.
    pub stopped: bool,
    /// Its in-body request was refused.
    refused: bool,
    pub in_body: InBody,
}

pub struct Link {
    pub generation: u64,
    pub worker_id: Option<WorkerId>,
    rx: mpsc::Receiver<ToWorker>,
    pub welcomed: bool,
    hello_at: u64,
    held: Vec<TaskRef>,
    /// Runs of other workers this one claimed in its Hello (a lie).
    claims: Vec<TaskRef>,
}

pub struct SimWorker {
    pub idx: usize,
    pub name: String,
    pub queues: Vec<String>,
    pub names: Vec<String>,
    pub concurrency: u32,
    pub prefetch: u32,
    pub liar: bool,
    pub slow: bool,
    pub lease_ms: u64,
    pub link: Option<Link>,
    generations: u64,
    pub down_until: Option<u64>,
    pub runs: BTreeMap<TaskId, WRun>,
    next_hb: u64,
    next_request: u64,
    arrivals: u64,
    /// Attempts this worker held once and no longer does.
    past: Vec<TaskRef>,
}

/// What a worker's step may touch.
pub struct Cx<'a> {
    pub now: u64,
    pub rng: &'a mut Rng,
    pub out: &'a mut Vec<Cmd>,
    pub model: &'a mut Model,
    pub core: &'a Driver,
    pub trace: &'a mut Trace,
    /// Runs other workers hold now, for lies.
    pub others: &'a [TaskRef],
}

impl SimWorker {
    pub fn new(idx: usize, rng: &mut Rng, lease_ms: u64) -> Self {
        let (queues, names, liar, slow) = if idx == 0 {
            let queues = scenario::QUEUES.iter().map(|q| (*q).to_owned()).collect();
            let names = scenario::NAMES.iter().map(|n| (*n).to_owned()).collect();
            (queues, names, false, false)
        } else {
            let mut queues = vec![GENERAL_QUEUE.to_owned()];
            for q in &scenario::QUEUES[1..] {
                if rng.chance(1, 2) {
                    queues.push((*q).to_owned());
                }
            }
            let mut names: Vec<String> = scenario::NAMES
                .iter()
                .filter(|_| rng.chance(1, 2))
                .map(|n| (*n).to_owned())
                .collect();
            if names.is_empty() {
                names.push("a".into());
            }
            (queues, names, rng.chance(1, 5), rng.chance(1, 4))
        };
        SimWorker {
            idx,
            name: format!("w{idx}"),
            queues,
            names,
            concurrency: u32::try_from(rng.range(1, 3)).unwrap_or(1),
            prefetch: u32::try_from(rng.below(3)).unwrap_or(0),
            liar,
            slow,
            lease_ms,
            link: None,
            generations: 0,
            down_until: Some(0),
            runs: BTreeMap::new(),
            next_hb: 0,
            next_request: 1,
            arrivals: 0,
            past: Vec::new(),
        }
    }

    pub fn worker_id(&self) -> Option<WorkerId> {
        self.link.as_ref().and_then(|l| l.worker_id)
    }

    fn welcomed(&self) -> Option<WorkerId> {
        self.link
            .as_ref()
            .filter(|l| l.welcomed)
            .and_then(|l| l.worker_id)
    }

    /// The broker registered the stream of Hello `generation` as
    /// `worker_id`; false when that stream is gone already.
    pub fn attach(&mut self, generation: u64, worker_id: WorkerId) -> bool {
        match &mut self.link {
            Some(link) if link.generation == generation => {
                link.worker_id = Some(worker_id);
                true
            }
            _ => false,
        }
    }

    /// The soonest time this worker will act on its own.
    pub fn next_due(&self) -> u64 {
        let mut due = u64::MAX;
        if let Some(t) = self.down_until {
            due = due.min(t);
        }
        if self.link.as_ref().is_some_and(|l| l.welcomed) {
            due = due.min(self.next_hb);
        }
        for run in self.runs.values() {
            if let RunState::Running { finish_at } = run.state {
                due = due.min(finish_at);
            }
            match run.in_body {
                InBody::Planned { at, .. } => due = due.min(at),
                InBody::Held { until, .. } => due = due.min(until),
                _ => {}
            }
            if self.link.is_none() {
                due = due.min(run.valid_until);
            }
        }
        due
    }

    fn forget(&mut self, task_id: TaskId) {
        if let Some(run) = self.runs.remove(&task_id) {
            self.past.push(run.task);
            if self.past.len() > 64 {
                self.past.remove(0);
            }
        }
    }

    /// The process died: every run and the stream are gone. It comes back
    /// later as a fresh process.
    pub fn crash(&mut self, cx: &mut Cx<'_>) {
        if let Some(id) = self.worker_id()
            && cx.rng.chance(3, 5)
        {
            cx.out.push(Cmd::Disconnected(id));
        }
        self.link = None;
        let ids: Vec<TaskId> = self.runs.keys().copied().collect();
        for id in ids {
            self.forget(id);
        }
        self.down_until = Some(cx.now + cx.rng.range(200, 4000));
    }

    /// The stream broke (a network blip, or the broker died): the runs go
    /// on, and the worker reconnects with them.
    pub fn disconnect(&mut self, cx: &mut Cx<'_>, notice: bool) {
        if let Some(id) = self.worker_id()
            && notice
            && cx.rng.chance(7, 10)
        {
            cx.out.push(Cmd::Disconnected(id));
        }
        self.link = None;
        self.down_until = Some(cx.now + cx.rng.range(0, 2 * self.lease_ms));
    }

    fn send(&mut self, cx: &mut Cx<'_>, worker_id: WorkerId, msg: FromWorker, lie: Option<&str>) {
        trace!(
            cx.trace,
            cx.now,
            "{} ({worker_id}) sends {}{}",
            self.name,
            brief_from(&msg),
            lie.map(|l| format!(" [{l}]")).unwrap_or_default()
        );
        cx.out.push(Cmd::FromWorker {
            worker: self.idx,
            worker_id,
            msg,
            lie: lie.map(str::to_owned),
        });
    }

    fn pick_outcome(&self, rng: &mut Rng, run: &WRun) -> RunOutcome {
        if run.stopped {
            return RunOutcome::Failure {
                error_type: "Cancelled".into(),
                message: "the broker cancelled the run".into(),
                traceback: String::new(),
                retryable: true,
            };
        }
        if run.refused {
            return RunOutcome::Failure {
                error_type: "ThrottleRefused".into(),
                message: "in-body slot refused".into(),
                traceback: String::new(),
                retryable: true,
            };
        }
        match rng.below(100) {
            0..78 => RunOutcome::Success("1".into()),
            78..88 => RunOutcome::Failure {
                error_type: "Flaky".into(),
                message: "try again".into(),
                traceback: String::new(),
                retryable: true,
            },
            88..92 => RunOutcome::Failure {
                error_type: "Fatal".into(),
                message: "no".into(),
                traceback: String::new(),
                retryable: false,
            },
            _ => RunOutcome::RetryLater {
                delay_ms: rng.range(100, 800),
                message: "not yet".into(),
            },
        }
    }

    /// What the worker does on its own at `cx.now`.
    pub fn act(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let welcomed = self.welcomed();
        if self.link.is_none() {
            // The SDK drops a run whose lease lapsed while disconnected.
            let lapsed: Vec<TaskId> = self
                .runs
                .iter()
                .filter(|(_, r)| r.valid_until <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in lapsed {
                self.forget(id);
            }
        }
        // Prefetched runs start only on a welcomed stream.
        if welcomed.is_some() {
            let running = self
                .runs
                .values()
                .filter(|r| matches!(r.state, RunState::Running { .. }))
                .count();
            let free = (self.concurrency as usize).saturating_sub(running);
            let mut waiting: Vec<(u64, TaskId)> = self
                .runs
                .iter()
                .filter(|(_, r)| matches!(r.state, RunState::Waiting))
                .map(|(id, r)| (r.arrived, *id))
                .collect();
            waiting.sort();
            let waiting: Vec<TaskId> = waiting.into_iter().take(free).map(|(_, id)| id).collect();
            for id in waiting {
                let long = cx.rng.chance(1, 20);
                let took = if long {
                    cx.rng.range(2000, 6000)
                } else {
                    cx.rng.range(5, 1500)
                };
                let run = self.runs.get_mut(&id).expect("listed");
                run.state = RunState::Running {
                    finish_at: now + took,
                };
            }
            self.plan_in_body(now, cx.rng);
        }
        // Bodies: in-body slots, ends.
        let ids: Vec<TaskId> = self.runs.keys().copied().collect();
        for id in ids {
            let run = self.runs.get_mut(&id).expect("listed");
            if let InBody::Planned { at, throttle } = &run.in_body
                && *at <= now
                && let Some(worker_id) = welcomed
            {
                let request_id = self.next_request;
                self.next_request += 1;
                let msg = FromWorker::Acquire {
                    request_id,
                    task: run.task,
                    throttle: throttle.clone(),
                };
                run.in_body = InBody::Requested {
                    request_id,
                    throttle: throttle.clone(),
                };
                self.send(cx, worker_id, msg, None);
                continue;
            }
            let run = self.runs.get_mut(&id).expect("listed");
            if let InBody::Held {
                request_id, until, ..
            } = run.in_body
                && until <= now
            {
                run.in_body = InBody::Done;
                let task = run.task;
                if let Some(worker_id) = welcomed {
                    self.send(
                        cx,
                        worker_id,
                        FromWorker::Release { request_id, task },
                        None,
                    );
                }
            }
            let run = self.runs.get_mut(&id).expect("listed");
            let body_free = matches!(run.in_body, InBody::No | InBody::Done)
                || (run.stopped && !matches!(run.in_body, InBody::Held { .. }));
            if let RunState::Running { finish_at } = run.state
                && finish_at <= now
                && body_free
            {
                let outcome = self.pick_outcome(cx.rng, &self.runs[&id]);
                let run = self.runs.get_mut(&id).expect("listed");
                let task = run.task;
                run.state = RunState::Finished {
                    outcome: outcome.clone(),
                    sent: welcomed.is_some(),
                };
                if let Some(worker_id) = welcomed {
                    let success = matches!(outcome, RunOutcome::Success(_));
                    cx.model.outcome_sent(worker_id, &task, success);
                    let msg = FromWorker::Outcome { task, outcome };
                    if cx.rng.chance(1, 30) {
                        self.send(cx, worker_id, msg.clone(), None);
                        self.send(cx, worker_id, msg, Some("duplicate"));
                    } else {
                        self.send(cx, worker_id, msg, None);
                    }
                }
            }
        }
        let Some(worker_id) = welcomed else {
            if self.link.is_none() && self.down_until.is_some_and(|t| t <= now) {
                self.reconnect(cx);
            }
            return;
        };
        if now >= self.next_hb {
            let leases = if cx.rng.chance(1, 5) && !self.runs.is_empty() {
                Leases::Listed(self.runs.values().map(|r| r.task).collect())
            } else {
                Leases::All
            };
            for run in self.runs.values_mut() {
                if run.valid_until > now {
                    run.valid_until = now + self.lease_ms;
                }
            }
            self.send(cx, worker_id, FromWorker::Heartbeat { leases }, None);
            let period = self.lease_ms / 3;
            self.next_hb = now
                + if self.slow && cx.rng.chance(1, 4) {
                    cx.rng.range(self.lease_ms, 2 * self.lease_ms)
                } else {
                    cx.rng.range(period / 2, period)
                };
        }
        if self.liar && cx.rng.chance(1, 15) {
            self.lie(cx, worker_id);
        }
    }

    fn lie(&mut self, cx: &mut Cx<'_>, worker_id: WorkerId) {
        let outcome = RunOutcome::Success("\"lie\"".into());
        match cx.rng.below(5) {
            0 if !self.past.is_empty() => {
                let task = self.past[cx.rng.index(self.past.len())];
                // After a crash the broker issues an attempt number again:
                // an attempt this worker holds now is not stale, and its
                // success is no lie.
                if self.runs.get(&task.task_id).is_some_and(|r| r.task == task) {
                    return;
                }
                self.send(
                    cx,
                    worker_id,
                    FromWorker::Outcome { task, outcome },
                    Some("stale outcome"),
                );
            }
            1 if !cx.others.is_empty() => {
                let task = cx.others[cx.rng.index(cx.others.len())];
                self.send(
                    cx,
                    worker_id,
                    FromWorker::Outcome { task, outcome },
                    Some("outcome for another worker's run"),
                );
            }
            2 => {
                let task = TaskRef {
                    task_id: TaskId::from_uuid(cx.rng.uuid()),
                    attempt: 1,
                };
                self.send(
                    cx,
                    worker_id,
                    FromWorker::Outcome { task, outcome },
                    Some("outcome for no run"),
                );
            }
            3 if !cx.others.is_empty() => {
                let task = cx.others[cx.rng.index(cx.others.len())];
                let request_id = self.next_request;
                self.next_request += 1;
                let msg = FromWorker::Acquire {
                    request_id,
                    task,
                    throttle: scenario::k1(),
                };
                self.send(
                    cx,
                    worker_id,
                    msg,
                    Some("throttle request for another worker's run"),
                );
            }
            4 if !cx.others.is_empty() => {
                let task = cx.others[cx.rng.index(cx.others.len())];
                let msg = FromWorker::Release {
                    request_id: 1,
                    task,
                };
                self.send(cx, worker_id, msg, Some("release for another worker's run"));
            }
            _ => {}
        }
    }

    fn reconnect(&mut self, cx: &mut Cx<'_>) {
        let (tx, rx) = mpsc::channel(4096);
        self.generations += 1;
        let held: Vec<TaskRef> = self.runs.values().map(|r| r.task).collect();
        let held_slots = self
            .runs
            .values()
            .filter_map(|r| match r.in_body {
                InBody::Held { request_id, .. } => Some((r.task, request_id)),
                _ => None,
            })
            .collect();
        let mut claims = Vec::new();
        if self.liar && !cx.others.is_empty() && cx.rng.chance(1, 2) {
            let task = cx.others[cx.rng.index(cx.others.len())];
            if !self.runs.contains_key(&task.task_id) {
                claims.push(task);
            }
        }
        let hello = WorkerHello {
            name: self.name.clone(),
            queues: self.queues.clone(),
            tasks: self
                .names
                .iter()
                .map(|n| (n.clone(), scenario::defaults(n)))
                .collect(),
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            held: held.iter().chain(&claims).cloned().collect(),
            held_slots,
        };
        trace!(
            cx.trace,
            cx.now,
            "{} connects holding {:?} claiming {:?}",
            self.name,
            refs(&held),
            refs(&claims)
        );
        self.link = Some(Link {
            generation: self.generations,
            worker_id: None,
            rx,
            welcomed: false,
            hello_at: cx.now,
            held,
            claims,
        });
        self.down_until = None;
        cx.out.push(Cmd::Connect {
            worker: self.idx,
            generation: self.generations,
            hello,
            tx,
        });
    }

    /// Reads what the broker sent. A broken stream sends the worker into
    /// reconnecting.
    pub fn read(&mut self, cx: &mut Cx<'_>) -> Result<(), Violation> {
        let Some(link) = &mut self.link else {
            return Ok(());
        };
        let mut msgs = Vec::new();
        let mut broken = false;
        loop {
            match link.rx.try_recv() {
                Ok(msg) => msgs.push(msg),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    broken = true;
                    break;
                }
            }
        }
        for msg in msgs {
            self.on_message(msg, cx)?;
        }
        if broken && self.link.is_some() {
            trace!(
                cx.trace,
                cx.now, "{}: stream closed by the broker", self.name
            );
            self.link = None;
            self.down_until = Some(cx.now + cx.rng.range(0, 1500));
        }
        Ok(())
    }

    fn on_message(&mut self, msg: ToWorker, cx: &mut Cx<'_>) -> Result<(), Violation> {
        let now = cx.now;
        trace!(cx.trace, now, "{} gets {}", self.name, brief_to(&msg));
        match msg {
            ToWorker::Welcome {
                kept, lost, worker_id, ..
            } => {
                let link = self.link.as_mut().expect("reading a link");
                link.welcomed = true;
                link.worker_id = Some(worker_id);
                let mut said: Vec<&TaskRef> = kept.iter().chain(&lost).collect();
                let mut asked: Vec<&TaskRef> = link.held.iter().chain(&link.claims).collect();
                said.sort_by(|a, b| (&a.task_id, a.attempt).cmp(&(&b.task_id, b.attempt)));
                asked.sort_by(|a, b| (&a.task_id, a.attempt).cmp(&(&b.task_id, b.attempt)));
                if said != asked {
                    return Err(format!("Welcome.kept and .lost ({kept:?}, {lost:?}) do not cover Hello.held ({asked:?})"));
                }
                if let Some(claim) = link.claims.iter().find(|c| kept.contains(c)) {
                    return Err(format!(
                        "bad input changes nothing (guarantee 8): worker {} took over another worker's run {claim:?} by claiming it in its Hello",
                        self.name
                    ));
                }
                let hello_at = link.hello_at;
                for task in &lost {
                    if self.runs.get(&task.task_id).is_some_and(|r| r.task.attempt == task.attempt) {
                        self.forget(task.task_id);
                    }
                }
                for task in &kept {
                    let Some(run) = self.runs.get_mut(&task.task_id) else {
                        continue;
                    };
                    run.valid_until = hello_at + self.lease_ms;
                    let resend = match &mut run.state {
                        RunState::Finished { outcome, sent } => {
                            *sent = true;
                            Some(FromWorker::Outcome {
                                task: *task,
                                outcome: outcome.clone(),
                            })
                        }
                        _ => match &run.in_body {
                            InBody::Requested { request_id, throttle } => Some(FromWorker::Acquire {
                                request_id: *request_id,
                                task: *task,
                                throttle: throttle.clone(),
                            }),
                            _ => None,
                        },
                    };
                    if let Some(msg) = resend {
                        if let FromWorker::Outcome { outcome, .. } = &msg {
                            cx.model.outcome_sent(worker_id, task, matches!(outcome, RunOutcome::Success(_)));
                        }
                        self.send(cx, worker_id, msg, None);
                    }
                }
                self.next_hb = now;
            }
            ToWorker::Assign(a) => {
                let to = Receiver {
                    name: &self.name,
                    queues: &self.queues,
                    names: &self.names,
                };
                let step = cx.model.on_assign(&to, &a, cx.core)?;
                if self.runs.get(&a.task.task_id).is_some_and(|r| r.task.attempt == a.task.attempt) {
                    return Ok(());
                }
                self.forget(a.task.task_id);
                self.arrivals += 1;
                let in_body = if a.name == "x" {
                    InBody::Planned {
                        at: 0,
                        throttle: if cx.rng.chance(1, 3) { scenario::k1() } else { scenario::tenant() },
                    }
                } else {
                    InBody::No
                };
                self.runs.insert(
                    a.task.task_id,
                    WRun {
                        arrived: self.arrivals,
                        task: a.task,
                        chain_id: a.chain_id,
                        declared: step.declared,
                        chain_hold: step.chain_hold,
                        state: RunState::Waiting,
                        valid_until: now + self.lease_ms,
                        stopped: false,
                        refused: false,
                        in_body,
                    },
                );
                // The in-body request comes a little after the body starts.
                if let Some(run) = self.runs.get_mut(&a.task.task_id)
                    && let InBody::Planned { at, .. } = &mut run.in_body
                {
                    *at = u64::MAX;
                }
            }
            ToWorker::Cancel { task, reason } => {
                let welcomed = self.welcomed();
                let Some(run) = self.runs.get_mut(&task.task_id) else {
                    return Ok(());
                };
                if run.task.attempt != task.attempt || run.stopped {
                    return Ok(());
                }
                let holding = matches!(run.state, RunState::Waiting | RunState::Running { .. });
                if reason == "lease lapsed" && holding && run.valid_until > now {
                    return Err(format!(
                        "time (guarantee 9): the lease of {task:?} lapsed while its worker's heartbeats were in time (its lease runs to {}, now {now})",
                        run.valid_until
                    ));
                }
                run.stopped = true;
                let release = match run.in_body {
                    InBody::Held { request_id, .. } | InBody::Requested { request_id, .. } => Some(request_id),
                    _ => None,
                };
                run.in_body = InBody::Done;
                match run.state {
                    RunState::Waiting => run.state = RunState::Running { finish_at: now },
                    RunState::Running { finish_at } => {
                        run.state = RunState::Running {
                            finish_at: finish_at.min(now + cx.rng.below(50)),
                        }
                    }
                    RunState::Finished { .. } => {}
                }
                if let (Some(request_id), Some(worker_id)) = (release, welcomed) {
                    self.send(cx, worker_id, FromWorker::Release { request_id, task }, None);
                }
            }
            ToWorker::Ack { task, .. } => {
                if self
                    .runs
                    .get(&task.task_id)
                    .is_some_and(|r| r.task.attempt == task.attempt && matches!(r.state, RunState::Finished { .. }))
                {
                    self.forget(task.task_id);
                }
            }
            ToWorker::Granted { request_id } => {
                let run = self.runs.values_mut().find(|r| {
                    matches!(r.in_body, InBody::Requested { request_id: id, .. } if id == request_id)
                });
                if let Some(run) = run {
                    let InBody::Requested { throttle, .. } = &run.in_body else {
                        unreachable!()
                    };
                    let identity = Identity::of("x", throttle);
                    run.in_body = InBody::Held {
                        request_id,
                        identity,
                        until: now + cx.rng.range(20, 500),
                    };
                }
            }
            ToWorker::Error { request_id, .. } => {
                if let Some(run) = self.runs.values_mut().find(|r| {
                    matches!(r.in_body, InBody::Requested { request_id: id, .. } if id == request_id)
                }) {
                    run.in_body = InBody::Done;
                    run.refused = true;
                }
            }
        }
        Ok(())
    }

    /// A body that started runs its in-body request a little later.
    pub fn plan_in_body(&mut self, now: u64, rng: &mut Rng) {
        for run in self.runs.values_mut() {
            if let (RunState::Running { finish_at }, InBody::Planned { at, .. }) =
                (&run.state, &mut run.in_body)
                && *at == u64::MAX
            {
                *at = now + rng.below(finish_at.saturating_sub(now) / 2 + 1);
            }
        }
    }

    /// Its state in one line, for a report.
    pub fn describe(&self) -> String {
        let link = match &self.link {
            None => format!("down until {:?}", self.down_until),
            Some(l) => format!("{:?} welcomed={}", l.worker_id.map(short), l.welcomed),
        };
        let runs: Vec<String> = self
            .runs
            .values()
            .map(|r| {
                let state = match &r.state {
                    RunState::Waiting => "waiting".to_owned(),
                    RunState::Running { finish_at } => format!("running to {finish_at}"),
                    RunState::Finished { sent, .. } => format!("finished sent={sent}"),
                };
                let in_body = match &r.in_body {
                    InBody::No => String::new(),
                    InBody::Planned { at, .. } => format!(" in-body planned at {at}"),
                    InBody::Requested { request_id, .. } => {
                        format!(" in-body #{request_id} requested")
                    }
                    InBody::Held {
                        request_id, until, ..
                    } => format!(" in-body #{request_id} held to {until}"),
                    InBody::Done => " in-body done".to_owned(),
                };
                format!(
                    "{}#{} {state}{in_body} stopped={} lease to {}",
                    short(r.task.task_id),
                    r.task.attempt,
                    r.stopped,
                    r.valid_until
                )
            })
            .collect();
        format!(
            "{} [{link}] c={} p={} runs {runs:?}",
            self.name, self.concurrency, self.prefetch
        )
    }

    /// The holders this worker was told of, each under a lease current by
    /// its own clock.
    pub fn holders(&self, now: u64, into: &mut BTreeMap<Identity, BTreeSet<Holder>>) {
        for run in self.runs.values() {
            if run.stopped || run.valid_until <= now {
                continue;
            }
            let body = matches!(run.state, RunState::Waiting | RunState::Running { .. });
            if body {
                if let Some(identity) = &run.declared {
                    into.entry(identity.clone())
                        .or_default()
                        .insert(Holder::Task(run.task.task_id));
                }
                if let Some(identity) = &run.chain_hold {
                    into.entry(identity.clone())
                        .or_default()
                        .insert(Holder::Chain(run.chain_id));
                }
                if let InBody::Held {
                    request_id,
                    identity,
                    ..
                } = &run.in_body
                {
                    into.entry(identity.clone())
                        .or_default()
                        .insert(Holder::InBody {
                            task_id: run.task.task_id,
                            request_id: *request_id,
                        });
                }
            }
        }
    }
}

fn refs(tasks: &[TaskRef]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| format!("{}#{}", short(t.task_id), t.attempt))
        .collect()
}

/// An id's first 8 characters, for traces.
pub fn short(id: impl std::fmt::Display) -> String {
    let mut text = id.to_string();
    text.truncate(8);
    text
}

pub fn brief_from(msg: &FromWorker) -> String {
    match msg {
        FromWorker::Outcome { task, outcome } => {
            let kind = match outcome {
                RunOutcome::Success(_) => "success".to_owned(),
                RunOutcome::Failure {
                    error_type,
                    retryable,
                    ..
                } => format!("failure {error_type} retryable={retryable}"),
                RunOutcome::RetryLater { delay_ms, .. } => format!("retry later {delay_ms} ms"),
            };
            format!("outcome {}#{} {kind}", short(task.task_id), task.attempt)
        }
        FromWorker::Heartbeat {
            leases: Leases::All,
        } => "heartbeat (all)".into(),
        FromWorker::Heartbeat {
            leases: Leases::Listed(tasks),
        } => format!("heartbeat {:?}", refs(tasks)),
        FromWorker::Acquire {
            request_id,
            task,
            throttle,
        } => {
            format!(
                "acquire #{request_id} {} for {}#{}",
                throttle.key,
                short(task.task_id),
                task.attempt
            )
        }
        FromWorker::Release { request_id, task } => {
            format!(
                "release #{request_id} of {}#{}",
                short(task.task_id),
                task.attempt
            )
        }
        FromWorker::Drain => "drain".into(),
        FromWorker::Goodbye => "goodbye".into(),
        FromWorker::Window {
            prefetch,
            give_back,
        } => format!("window {prefetch}, {} given back", give_back.len()),
    }
}

pub fn brief_to(msg: &ToWorker) -> String {
    match msg {
        ToWorker::Welcome {
            worker_id,
            kept,
            lost,
            ..
        } => {
            format!(
                "welcome as {} kept {:?} lost {:?}",
                short(worker_id),
                refs(kept),
                refs(lost)
            )
        }
        ToWorker::Assign(a) => format!(
            "assign {}#{} {} {:?}/{} of chain {} from {}",
            short(a.task.task_id),
            a.task.attempt,
            a.name,
            a.at.phase,
            a.at.index,
            short(a.chain_id),
            a.queue
        ),
        ToWorker::Cancel { task, reason } => {
            format!("cancel {}#{} ({reason})", short(task.task_id), task.attempt)
        }
        ToWorker::Ack { task, accepted, .. } => format!(
            "ack {}#{} accepted={accepted}",
            short(task.task_id),
            task.attempt
        ),
        ToWorker::Granted { request_id } => format!("granted #{request_id}"),
        ToWorker::Error {
            request_id,
            message,
            ..
        } => format!("error #{request_id}: {message}"),
    }
}

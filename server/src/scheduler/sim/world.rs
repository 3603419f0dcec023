//! The simulated world: the driver (a copy of `run_loop` and `round_end`
//! without I/O), the disk, the workers and the clients, on one simulated
//! clock, all drawn from one seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::sync::{mpsc, oneshot};

use crate::domain::*;
use crate::scheduler::core::{Core, Output, RoundEnd};
use crate::scheduler::driver::Driver;
use crate::scheduler::throttle::Holder;
use crate::scheduler::{Command, Settings};
use crate::scheduler::{Error, QueueStats, Submitted, ThrottleStats};

use super::disk::Disk;
use super::model::{Model, Violation};
use super::rng::Rng;
use super::scenario;
use super::worker::{Cx, SimWorker, brief_from, brief_to, short};

/// The most a gap between two readings of the broker's clock counts as
/// awake time (`clock::MAX_GAP`).
const MAX_GAP_MS: u64 = 250;

/// How long, in simulated time, every chain has to end once the faults
/// stop (liveness).
const LIVENESS_MS: u64 = 20 * 60_000;

/// A bounded record of what happened, for a failure's report.
pub struct Trace {
    pub on: bool,
    cap: usize,
    pub lines: VecDeque<String>,
}

impl Trace {
    pub fn new(on: bool, cap: usize) -> Self {
        Trace {
            on,
            cap,
            lines: VecDeque::new(),
        }
    }

    pub fn push(&mut self, now: u64, line: String) {
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(format!("{now:>9} {line}"));
    }
}

/// An input to the scheduler, waiting for the next round.
pub enum Cmd {
    Submit(ChainSpec),
    SubmitMany(Vec<ChainSpec>),
    Cancel(ChainId),
    Requeue(ChainId),
    SetLimit(Identity, Option<u32>),
    Pause(String, bool),
    Connect {
        worker: usize,
        generation: u64,
        hello: WorkerHello,
        tx: mpsc::Sender<ToWorker>,
    },
    FromWorker {
        worker: usize,
        worker_id: WorkerId,
        msg: FromWorker,
        /// Set for a report the worker knows to be false: it must change
        /// nothing.
        lie: Option<String>,
    },
    Disconnected(WorkerId),
}

/// A client waiting for an answer.
enum Pending {
    Submit(oneshot::Receiver<Result<Submitted, Error>>, Box<ChainSpec>),
    SubmitMany(
        oneshot::Receiver<Result<Vec<Submitted>, Error>>,
        Vec<ChainSpec>,
    ),
    Cancel(oneshot::Receiver<Result<ChainState, Error>>, ChainId, u64),
    Requeue(oneshot::Receiver<Result<ChainId, Error>>),
    Pause(oneshot::Receiver<Result<QueueStats, Error>>, String, bool),
    SetLimit(oneshot::Receiver<Result<Vec<ThrottleStats>, Error>>),
}

/// What a run did, for the test's totals.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Inputs to the scheduler: commands and worker messages applied,
    /// timer passes that fired a timer, effects delivered, crashes.
    pub events: u64,
    pub rounds: u64,
    pub crashes: u64,
    pub chains: u64,
    pub ended: u64,
    /// Of those, chains with a group or nested executor step, and how many
    /// of those ended succeeded.
    pub with_children: u64,
    pub with_children_succeeded: u64,
    pub lies: u64,
    pub flushes: u64,
    pub repairs: u64,
    pub sim_ms: u64,
}

pub struct World {
    rng: Rng,
    now: u64,
    /// The broker's awake time in this incarnation (`clock::Awake`).
    awake: u64,
    /// A pause of the broker: until when, and the time it lasted so far.
    pause: Option<(u64, u64)>,
    lease_ms: u64,
    driver: Driver,
    disk: Disk,
    rt: tokio::runtime::Runtime,
    /// Outputs waiting for their batch to be durable: (batch, effect).
    outbox: VecDeque<(u64, Output)>,
    inbox: Vec<Cmd>,
    workers: Vec<SimWorker>,
    worker_of: BTreeMap<WorkerId, usize>,
    pending: Vec<Pending>,
    /// Submissions whose answer never came (crash) or was a refusal: the
    /// client may send them again.
    unanswered: Vec<ChainSpec>,
    paused: BTreeSet<String>,
    resuming: BTreeSet<String>,
    model: Model,
    pub trace: Trace,
    round: u64,
    /// Per-mille chance that the flusher gets a turn in a round.
    flush_permille: u64,
    fault_until: Option<u64>,
    quiet: bool,
    pub stats: Stats,
}

/// The driver's limits: the simulation stays far below them.
const LIMITS: Settings = Settings {
    lease: std::time::Duration::from_secs(30),
    durable: true,
    max_workers: 1 << 20,
    max_watches: 1 << 20,
    retention: std::time::Duration::ZERO,
    priority_aging: std::time::Duration::ZERO,
};

macro_rules! fail {
    ($($arg:tt)*) => { return Err(format!($($arg)*)) };
}

impl World {
    pub fn new(seed: u64, trace: Trace) -> Self {
        let mut rng = Rng::new(seed);
        let lease_ms = rng.range(1000, 5000);
        let disk = Disk::new();
        let recovered = disk.shared.recover().expect("an empty store recovers");
        let now = 1_700_000_000_000 + rng.below(1_000_000);
        let mut core = Core::recover(&disk.shared, lease_ms, 0, recovered, now);
        core.set_ids(Ids::Seeded(rng.next_u64()));
        let count = usize::try_from(rng.range(3, 6)).unwrap_or(3);
        let workers = (0..count)
            .map(|i| SimWorker::new(i, &mut rng, lease_ms))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        World {
            rng,
            now,
            awake: 0,
            pause: None,
            lease_ms,
            driver: Driver::new(core, disk.shared.clone()),
            disk,
            rt,
            outbox: VecDeque::new(),
            inbox: Vec::new(),
            workers,
            worker_of: BTreeMap::new(),
            pending: Vec::new(),
            unanswered: Vec::new(),
            paused: BTreeSet::new(),
            resuming: BTreeSet::new(),
            model: Model::default(),
            trace,
            round: 0,
            flush_permille: 900,
            fault_until: None,
            quiet: false,
            stats: Stats::default(),
        }
    }

    /// Runs `events` inputs of chaos, then stops the faults and lets every
    /// chain end.
    pub fn run(&mut self, events: u64) -> Result<(), Violation> {
        // Worker 0 registers every name (and its defaults) before any
        // chain comes, and its Welcome is durable.
        let started = self.now;
        while self.workers[0].link.as_ref().is_none_or(|l| !l.welcomed) {
            self.tick()?;
            if self.now - started > 60_000 {
                fail!("worker 0 was never welcomed");
            }
        }
        while self.stats.events < events {
            self.tick()?;
        }
        self.settle()?;
        self.stats.sim_ms = self.now - started;
        self.stats.flushes += self.disk.flushes;
        self.stats.repairs += self.disk.repairs;
        Ok(())
    }

    fn tick(&mut self) -> Result<(), Violation> {
        let dt = self.pick_dt();
        self.now += dt;
        match &mut self.pause {
            Some((_, gap)) => *gap += dt,
            None => self.awake += dt,
        }
        if !self.quiet {
            self.chaos()?;
            if self.round.is_multiple_of(64) {
                self.refresh_live();
            }
        }
        if let Some((until, gap)) = self.pause
            && until <= self.now
        {
            trace!(self.trace, self.now, "broker resumes after {gap} ms");
            self.awake += gap.min(MAX_GAP_MS);
            self.pause = None;
        }
        if self.fault_until.is_some_and(|t| t <= self.now) {
            trace!(self.trace, self.now, "disk works again");
            self.disk.set_failing(false);
            self.fault_until = None;
        }
        self.workers_act();
        if self.quiet {
            self.resume_queues();
        } else {
            self.clients_act();
        }
        if self.pause.is_none() {
            self.round()?;
        }
        self.read_mailboxes()?;
        self.poll_clients()?;
        self.check_holders()?;
        Ok(())
    }

    fn pick_dt(&mut self) -> u64 {
        let jump = if self.quiet { 40 } else { 10 };
        let r = self.rng.below(100);
        if r < jump {
            let mut next = self.driver.core.next_timer().unwrap_or(u64::MAX);
            for w in &self.workers {
                next = next.min(w.next_due());
            }
            if let Some((until, _)) = self.pause {
                next = next.min(until);
            }
            next.saturating_sub(self.now).clamp(1, 3000)
        } else if r < 65 {
            self.rng.range(1, 20)
        } else {
            self.rng.range(20, 200)
        }
    }

    fn cx_parts(&mut self) -> Vec<TaskRef> {
        let mut others = Vec::new();
        for w in &self.workers {
            others.extend(w.runs.values().map(|r| r.task));
        }
        others
    }

    fn with_worker<T>(&mut self, i: usize, f: impl FnOnce(&mut SimWorker, &mut Cx<'_>) -> T) -> T {
        let others = self.cx_parts();
        let others: Vec<TaskRef> = others
            .into_iter()
            .filter(|t| !self.workers[i].runs.contains_key(&t.task_id))
            .collect();
        let mut out = Vec::new();
        let result = {
            let mut cx = Cx {
                now: self.now,
                rng: &mut self.rng,
                out: &mut out,
                model: &mut self.model,
                core: &self.driver,
                trace: &mut self.trace,
                others: &others,
            };
            f(&mut self.workers[i], &mut cx)
        };
        self.inbox.append(&mut out);
        result
    }

    fn chaos(&mut self) -> Result<(), Violation> {
        let r = self.rng.below(100_000);
        match r {
            0..30 => self.crash()?,
            30..80 if self.pause.is_none() => {
                let until = self.now + self.rng.range(100, 3 * self.lease_ms);
                trace!(self.trace, self.now, "broker paused until {until}");
                self.pause = Some((until, 0));
            }
            80..150 if self.fault_until.is_none() => {
                let until = self.now + self.rng.range(50, 3000);
                trace!(self.trace, self.now, "disk fails until {until}");
                self.disk.set_failing(true);
                self.fault_until = Some(until);
            }
            150..350 => {
                self.flush_permille = if self.flush_permille > 500 {
                    self.rng.range(20, 200)
                } else {
                    900
                };
                trace!(
                    self.trace,
                    self.now, "flusher gets a turn {} times in 1000 rounds", self.flush_permille
                );
            }
            350..500 => {
                let i = self.rng.index(self.workers.len());
                if self.workers[i].link.is_some() {
                    trace!(self.trace, self.now, "worker {i} crashes");
                    self.with_worker(i, |w, cx| w.crash(cx));
                }
            }
            500..700 => {
                let i = self.rng.index(self.workers.len());
                if self.workers[i].link.is_some() {
                    trace!(self.trace, self.now, "worker {i} loses its stream");
                    self.with_worker(i, |w, cx| w.disconnect(cx, true));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn workers_act(&mut self) {
        for i in 0..self.workers.len() {
            self.with_worker(i, |w, cx| w.act(cx));
        }
    }

    fn read_mailboxes(&mut self) -> Result<(), Violation> {
        for i in 0..self.workers.len() {
            self.with_worker(i, |w, cx| w.read(cx))?;
        }
        Ok(())
    }

    fn clients_act(&mut self) {
        let now = self.now;
        if self.model.live.len() < 30 && self.rng.chance(3, 10) {
            if self.rng.chance(1, 10) {
                let n = self.rng.range(2, 3);
                let specs = (0..n)
                    .map(|_| scenario::chain(&mut self.rng, now))
                    .collect();
                self.inbox.push(Cmd::SubmitMany(specs));
            } else {
                let spec = scenario::chain(&mut self.rng, now);
                self.inbox.push(Cmd::Submit(spec));
            }
        }
        if !self.unanswered.is_empty() && self.rng.chance(1, 30) {
            let i = self.rng.index(self.unanswered.len());
            let spec = self.unanswered.swap_remove(i);
            self.inbox.push(Cmd::Submit(spec));
        }
        let tracked = self.model.tracked.len();
        if tracked > 0 && self.rng.chance(1, 40) {
            let id = self
                .model
                .tracked
                .iter()
                .nth(self.rng.index(tracked))
                .copied();
            self.inbox.push(Cmd::Cancel(id.expect("in range")));
        }
        if tracked > 0 && self.rng.chance(1, 50) {
            let id = self
                .model
                .tracked
                .iter()
                .nth(self.rng.index(tracked))
                .copied();
            self.inbox.push(Cmd::Requeue(id.expect("in range")));
        }
        if self.rng.chance(1, 150) {
            let ids = scenario::identities();
            let identity = ids[self.rng.index(ids.len())].clone();
            let limit = self
                .rng
                .chance(2, 3)
                .then(|| u32::try_from(self.rng.range(1, 3)).unwrap_or(1));
            self.inbox.push(Cmd::SetLimit(identity, limit));
        }
        if self.rng.chance(1, 200) {
            let queue = scenario::QUEUES[self.rng.index(scenario::QUEUES.len())].to_owned();
            let pause = !self.paused.contains(&queue);
            self.inbox.push(Cmd::Pause(queue, pause));
        }
    }

    /// After the chaos: resume every queue a client paused, and every queue
    /// the broker says is paused (a pause whose answer a crash lost took
    /// effect all the same: an operator would see it in `baton queues`).
    fn resume_queues(&mut self) {
        let shown = self.driver.core.queue_stats(self.now);
        self.paused
            .extend(shown.into_iter().filter(|q| q.paused).map(|q| q.name));
        let queues: Vec<String> = self.paused.difference(&self.resuming).cloned().collect();
        for queue in queues {
            self.resuming.insert(queue.clone());
            self.inbox.push(Cmd::Pause(queue, false));
        }
    }

    /// One round of the scheduler loop (`run_loop`, `round_end`).
    fn round(&mut self) -> Result<(), Violation> {
        self.round += 1;
        self.stats.rounds += 1;
        self.driver.core.set_awake(self.awake);
        for cmd in std::mem::take(&mut self.inbox) {
            self.apply(cmd)?;
        }
        self.driver.core.set_awake(self.awake);
        if self
            .driver
            .core
            .next_timer()
            .is_some_and(|at| at <= self.now)
        {
            self.stats.events += 1;
        }
        self.driver.fire_timers(self.now);
        self.driver.follow_up(self.now);
        if self.disk.fault().is_none() {
            self.driver.sweep(self.now);
        }
        self.driver.dispatch(self.now);
        let in_trouble = self.disk.fault().is_some();
        let end = self.driver.core.end_round();
        let awaited = end.awaited(in_trouble);
        let RoundEnd {
            writes,
            effects,
            early,
            closed,
        } = end;
        self.driver.close(closed);
        for effect in effects.iter().chain(&early) {
            if let Output::ToWorker {
                msg: ToWorker::Assign(a),
                worker_id,
            } = effect
            {
                trace!(
                    self.trace,
                    self.now,
                    "round {} assigns {}#{} {} to {} (seq {})",
                    self.round,
                    short(a.task.task_id),
                    a.task.attempt,
                    a.name,
                    short(worker_id),
                    self.disk.durable()
                );
                self.model.assignment_made(a.chain_id, self.round)?;
            }
        }
        let seq = self.disk.stage(writes, awaited, self.now);
        if !in_trouble {
            for effect in early {
                self.deliver(effect);
            }
        } else {
            self.outbox.extend(early.into_iter().map(|e| (seq, e)));
        }
        self.outbox.extend(effects.into_iter().map(|e| (seq, e)));
        self.disk.commit(self.now);
        if self.rng.below(1000) < self.flush_permille
            && let Some(what) = self.disk.flusher(&self.rt)
        {
            trace!(
                self.trace,
                self.now,
                "disk: {what}; durable up to batch {}",
                self.disk.durable()
            );
        }
        while self
            .outbox
            .front()
            .is_some_and(|(seq, _)| *seq <= self.disk.durable())
        {
            let (_, effect) = self.outbox.pop_front().expect("checked");
            self.deliver(effect);
        }
        Ok(())
    }

    fn deliver(&mut self, effect: Output) {
        self.stats.events += 1;
        self.note(&effect);
        self.driver.deliver(effect, self.now);
    }

    /// What the model learns from an effect that leaves (or could have
    /// left: its batch is durable).
    fn note(&mut self, effect: &Output) {
        if let Output::ToWorker { worker_id, msg } = effect {
            trace!(
                self.trace,
                self.now,
                "-> {}: {}",
                short(worker_id),
                brief_to(msg)
            );
            if let ToWorker::Ack {
                task,
                accepted: true,
                ..
            } = msg
            {
                self.model.outcome_durable(*worker_id, task);
            }
        }
    }

    fn refusal(&self) -> Option<Error> {
        self.disk.fault().map(Error::refused)
    }

    fn apply(&mut self, cmd: Cmd) -> Result<(), Violation> {
        self.stats.events += 1;
        let now = self.now;
        match cmd {
            Cmd::Submit(spec) => {
                trace!(
                    self.trace,
                    now,
                    "client submits chain {:?} ({} steps, idem {:?}, unique {:?})",
                    spec.chain_id.map(short),
                    spec.steps.len(),
                    spec.idempotency_key,
                    spec.unique_key
                );
                let (tx, rx) = oneshot::channel();
                match self.refusal() {
                    Some(e) => drop(tx.send(Err(e))),
                    None => {
                        self.driver
                            .handle(Command::Submit(spec.clone(), tx), None, &LIMITS, now)
                    }
                }
                self.pending.push(Pending::Submit(rx, Box::new(spec)));
            }
            Cmd::SubmitMany(specs) => {
                trace!(
                    self.trace,
                    now,
                    "client submits {} chains at once",
                    specs.len()
                );
                let (tx, rx) = oneshot::channel();
                match self.refusal() {
                    Some(e) => drop(tx.send(Err(e))),
                    None => self.driver.handle(
                        Command::SubmitMany(specs.clone(), tx),
                        None,
                        &LIMITS,
                        now,
                    ),
                }
                self.pending.push(Pending::SubmitMany(rx, specs));
            }
            Cmd::Cancel(id) => {
                trace!(self.trace, now, "client cancels chain {}", short(id));
                let (tx, rx) = oneshot::channel();
                match self.refusal() {
                    Some(e) => drop(tx.send(Err(e))),
                    None => self.driver.handle(
                        Command::Cancel(id, "simulated".into(), tx),
                        None,
                        &LIMITS,
                        now,
                    ),
                }
                self.pending.push(Pending::Cancel(rx, id, self.round));
            }
            Cmd::Requeue(id) => {
                trace!(self.trace, now, "client requeues chain {}", short(id));
                let (tx, rx) = oneshot::channel();
                match self.refusal() {
                    Some(e) => drop(tx.send(Err(e))),
                    None => self
                        .driver
                        .handle(Command::Requeue(id, tx), None, &LIMITS, now),
                }
                self.pending.push(Pending::Requeue(rx));
            }
            Cmd::SetLimit(identity, limit) => {
                trace!(
                    self.trace,
                    now, "admin sets the limit of {identity} to {limit:?}"
                );
                let (tx, rx) = oneshot::channel();
                match self.refusal() {
                    Some(e) => drop(tx.send(Err(e))),
                    None => {
                        self.model.limit_may_be(&identity, limit.unwrap_or(0));
                        self.driver.handle(
                            Command::SetLimit(identity, limit, tx),
                            None,
                            &LIMITS,
                            now,
                        );
                    }
                }
                self.pending.push(Pending::SetLimit(rx));
            }
            Cmd::Pause(queue, paused) => {
                trace!(self.trace, now, "admin pauses queue {queue}: {paused}");
                let (tx, rx) = oneshot::channel();
                match self.refusal() {
                    Some(e) => drop(tx.send(Err(e))),
                    None => self.driver.handle(
                        Command::Pause(queue.clone(), paused, tx),
                        None,
                        &LIMITS,
                        now,
                    ),
                }
                self.pending.push(Pending::Pause(rx, queue, paused));
            }
            Cmd::Connect {
                worker,
                generation,
                hello,
                tx,
            } => {
                let id = self.driver.connect(hello, tx, now);
                trace!(
                    self.trace,
                    now,
                    "broker registers worker {worker} as {}",
                    short(id)
                );
                self.worker_of.insert(id, worker);
                if !self.workers[worker].attach(generation, id) {
                    // Its stream broke before the broker read its Hello.
                    self.driver.core.worker_gone(id, false, now);
                }
            }
            Cmd::FromWorker {
                worker,
                worker_id,
                msg,
                lie,
            } => {
                trace!(
                    self.trace,
                    now,
                    "broker reads from {} ({}): {}",
                    short(worker_id),
                    self.workers[worker].name,
                    brief_from(&msg)
                );
                let lie = lie.filter(|_| !self.is_current(worker_id, &msg));
                match lie {
                    None => self.driver.core.on_worker_message(worker_id, msg, now),
                    Some(lie) => {
                        self.stats.lies += 1;
                        let task = match &msg {
                            FromWorker::Outcome { task, .. }
                            | FromWorker::Acquire { task, .. }
                            | FromWorker::Release { task, .. } => Some(task.task_id),
                            _ => None,
                        };
                        let before = self.fingerprint(task);
                        self.driver.core.on_worker_message(worker_id, msg, now);
                        let after = self.fingerprint(task);
                        if before != after {
                            fail!(
                                "fencing (guarantee 2): a report that is not current ({lie}) from worker {} changed the broker's state:\nbefore {before:?}\nafter  {after:?}",
                                self.workers[worker].name
                            );
                        }
                    }
                }
            }
            Cmd::Disconnected(id) => {
                trace!(
                    self.trace,
                    now,
                    "broker notices the stream of {} closed",
                    short(id)
                );
                self.driver.core.worker_gone(id, false, now);
            }
        }
        Ok(())
    }

    /// Whether a worker's report names an attempt the broker has out on
    /// that very worker (then it is no lie, whatever the worker thought).
    fn is_current(&self, worker_id: WorkerId, msg: &FromWorker) -> bool {
        let task = match msg {
            FromWorker::Outcome { task, .. }
            | FromWorker::Acquire { task, .. }
            | FromWorker::Release { task, .. } => task,
            _ => return false,
        };
        self.driver
            .core
            .worker_stats()
            .iter()
            .any(|w| w.worker_id == worker_id && w.in_flight.contains(task))
    }

    #[allow(clippy::type_complexity)]
    fn fingerprint(
        &self,
        task: Option<TaskId>,
    ) -> (
        Option<ChainRecord>,
        Vec<ThrottleStats>,
        Vec<crate::scheduler::WorkerStats>,
    ) {
        let chain = task
            .and_then(|t| self.model.chain_of(t))
            .and_then(|c| self.driver.chain(*c).ok());
        (
            chain,
            self.driver.core.throttle_info(),
            self.driver.core.worker_stats(),
        )
    }

    fn poll_clients(&mut self) -> Result<(), Violation> {
        use oneshot::error::TryRecvError;
        let mut still = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Submit(mut rx, spec) => match rx.try_recv() {
                    Err(TryRecvError::Empty) => still.push(Pending::Submit(rx, spec)),
                    Ok(Ok(s)) => {
                        trace!(
                            self.trace,
                            self.now,
                            "client: chain {} stored ({:?})",
                            short(s.chain_id),
                            s.dedup
                        );
                        self.stats.chains += u64::from(s.dedup.is_none());
                        self.model
                            .submitted(&spec, s.chain_id, s.dedup, &self.driver)?;
                    }
                    Ok(Err(_)) | Err(TryRecvError::Closed) => self.unanswered.push(*spec),
                },
                Pending::SubmitMany(mut rx, specs) => match rx.try_recv() {
                    Err(TryRecvError::Empty) => still.push(Pending::SubmitMany(rx, specs)),
                    Ok(Ok(answers)) => {
                        if answers.len() != specs.len() {
                            fail!(
                                "a batch of {} chains had {} answers",
                                specs.len(),
                                answers.len()
                            );
                        }
                        for (spec, s) in specs.iter().zip(answers) {
                            self.stats.chains += u64::from(s.dedup.is_none());
                            self.model
                                .submitted(spec, s.chain_id, s.dedup, &self.driver)?;
                        }
                    }
                    Ok(Err(_)) | Err(TryRecvError::Closed) => self.unanswered.extend(specs),
                },
                Pending::Cancel(mut rx, id, round) => match rx.try_recv() {
                    Err(TryRecvError::Empty) => still.push(Pending::Cancel(rx, id, round)),
                    Ok(Ok(ChainState::Cancelled)) => self.model.cancelled(id, round)?,
                    _ => {}
                },
                Pending::Requeue(mut rx) => match rx.try_recv() {
                    Err(TryRecvError::Empty) => still.push(Pending::Requeue(rx)),
                    Ok(Ok(id)) => {
                        self.model.track(id);
                        self.model.acked.insert(id);
                    }
                    _ => {}
                },
                Pending::Pause(mut rx, queue, paused) => match rx.try_recv() {
                    Err(TryRecvError::Empty) => still.push(Pending::Pause(rx, queue, paused)),
                    Ok(Ok(_)) => {
                        if paused {
                            self.paused.insert(queue);
                        } else {
                            self.paused.remove(&queue);
                            self.resuming.remove(&queue);
                        }
                    }
                    _ => {
                        self.resuming.remove(&queue);
                    }
                },
                Pending::SetLimit(mut rx) => {
                    if let Err(TryRecvError::Empty) = rx.try_recv() {
                        still.push(Pending::SetLimit(rx));
                    }
                }
            }
        }
        self.pending = still;
        Ok(())
    }

    fn check_holders(&mut self) -> Result<(), Violation> {
        let mut told: BTreeMap<Identity, BTreeSet<Holder>> = BTreeMap::new();
        for w in &self.workers {
            w.holders(self.now, &mut told);
        }
        self.model.check_holders(told, &self.driver)
    }

    /// The broker dies (`kill -9`, a power cut): what was not durable is
    /// lost, and so are the effects still held.
    fn crash(&mut self) -> Result<(), Violation> {
        self.stats.events += 1;
        self.stats.crashes += 1;
        let flushed = self.rng.chance(1, 2) && self.disk.flush_before_crash();
        let on_disk = self.disk.on_disk();
        let tell = self.rng.chance(1, 2);
        trace!(
            self.trace,
            self.now,
            "BROKER CRASH (last flush reached the disk: {flushed}; batches durable: {on_disk}; durable effects {})",
            if tell { "leave first" } else { "are lost" }
        );
        // Outputs whose batch is durable may have left just before.
        for (seq, effect) in std::mem::take(&mut self.outbox) {
            if seq <= on_disk {
                if tell {
                    self.deliver(effect);
                } else {
                    self.note(&effect);
                }
            }
        }
        self.read_mailboxes()?;
        self.poll_clients()?;
        for i in 0..self.workers.len() {
            if self.workers[i].link.is_some() {
                self.with_worker(i, |w, cx| w.disconnect(cx, false));
            }
        }
        self.inbox.clear();
        let keep_failing = self.rng.chance(1, 2);
        let (disk, recovered) = self.disk.restart(keep_failing);
        if !disk.failing() {
            self.fault_until = None;
        }
        self.stats.flushes += self.disk.flushes;
        self.stats.repairs += self.disk.repairs;
        self.disk = disk;
        self.awake = 0;
        self.pause = None;
        let core = Core::recover(&self.disk.shared, self.lease_ms, 0, recovered, self.now);
        self.driver = Driver::new(core, self.disk.shared.clone());
        self.driver.core.set_ids(Ids::Seeded(self.rng.next_u64()));
        self.model.restarted(&self.driver);
        self.worker_of.clear();
        self.poll_clients()?;
        // Guarantee 1: every acknowledged chain survives.
        for &id in &self.model.acked {
            if let Err(Error::NotFound(_)) = self.driver.chain(id) {
                fail!(
                    "durable acknowledgment (guarantee 1): chain {id} was acknowledged but is lost after a crash"
                );
            }
        }
        // Submissions whose answer was lost may have been stored.
        for spec in &self.unanswered {
            if let Some(id) = spec.chain_id
                && self.driver.chain(id).is_ok()
            {
                self.model.track(id);
            }
        }
        self.round()
    }

    /// The faults stop; every chain must end within [`LIVENESS_MS`].
    fn settle(&mut self) -> Result<(), Violation> {
        trace!(self.trace, self.now, "FAULTS STOP");
        self.quiet = true;
        self.disk.set_failing(false);
        self.fault_until = None;
        self.flush_permille = 1000;
        if let Some((_, gap)) = self.pause.take() {
            self.awake += gap.min(MAX_GAP_MS);
        }
        for w in &mut self.workers {
            w.liar = false;
            w.slow = false;
            if let Some(t) = &mut w.down_until {
                *t = (*t).min(self.now + 100);
            }
        }
        for spec in std::mem::take(&mut self.unanswered) {
            if let Some(id) = spec.chain_id
                && self.driver.chain(id).is_ok()
            {
                self.model.track(id);
            }
        }
        let started = self.now;
        let mut ended_at = None;
        loop {
            self.tick()?;
            if !self.round.is_multiple_of(16) {
                continue;
            }
            let done = self.all_ended()?;
            match (done, ended_at) {
                (true, None) => ended_at = Some(self.now),
                // A little longer, so the last effects leave.
                (true, Some(t)) if self.now - t > 10_000 && self.outbox.is_empty() => break,
                (false, _) => ended_at = None,
                _ => {}
            }
            if self.now - started > LIVENESS_MS {
                let stuck: Vec<String> = self
                    .model
                    .live
                    .iter()
                    .take(5)
                    .map(|&id| match self.driver.chain(id) {
                        Ok(c) => format!(
                            "{id} {:?} at {:?}: {:?}",
                            c.state(),
                            c.current(),
                            c.all_steps().map(|(_, s)| s.state()).collect::<Vec<_>>()
                        ),
                        Err(e) => format!("{id}: {e}"),
                    })
                    .collect();
                let queues: Vec<_> = self
                    .driver
                    .core
                    .queue_stats(self.now)
                    .into_iter()
                    .filter(|q| q.ready + q.delayed + q.throttled + q.running > 0 || q.paused)
                    .collect();
                let workers: Vec<String> = self.workers.iter().map(SimWorker::describe).collect();
                fail!(
                    "every chain ends (guarantee 3): {} chains had not ended {} minutes after the faults stopped: {stuck:?}; queues {queues:?}; workers {workers:#?}; throttles {:?}",
                    self.model.live.len(),
                    LIVENESS_MS / 60_000,
                    self.driver.core.throttle_info()
                );
            }
        }
        // Every slot came back.
        for (info, ..) in self.driver.core.throttle_info() {
            if !info.holders.is_empty() || info.waiters > 0 {
                fail!(
                    "throttle safety (guarantee 4): every chain ended, but {} still has holders {:?} and {} waiters",
                    info.identity,
                    info.holders,
                    info.waiters
                );
            }
        }
        for id in self.model.tracked.clone() {
            let rec = self
                .driver
                .chain(id)
                .map_err(|e| format!("chain {id} cannot be read at the end: {e}"))?;
            self.model.check_end(&rec, &self.driver)?;
            self.stats.ended += 1;
            if rec.all_steps().any(|(_, s)| s.has_children()) {
                self.stats.with_children += 1;
                self.stats.with_children_succeeded +=
                    u64::from(rec.state() == ChainState::Succeeded);
            }
        }
        Ok(())
    }

    /// Whether every tracked chain ended and nothing waits or runs.
    fn all_ended(&mut self) -> Result<bool, Violation> {
        let live: Vec<ChainId> = self.model.live.iter().copied().collect();
        for id in live {
            match self.driver.chain(id) {
                Ok(c) if c.is_ended() => {
                    self.model.live.remove(&id);
                }
                Ok(_) => return Ok(false),
                Err(Error::NotFound(_)) => fail!("chain {id} is tracked but not found"),
                Err(_) => return Ok(false),
            }
        }
        let busy = self
            .driver
            .core
            .queue_stats(self.now)
            .iter()
            .any(|q| q.ready + q.delayed + q.throttled + q.running > 0);
        Ok(!busy)
    }

    /// Tracked chains seen ended are no longer live (so that clients keep
    /// submitting).
    fn refresh_live(&mut self) {
        let live: Vec<ChainId> = self.model.live.iter().copied().collect();
        for id in live {
            if self.driver.chain(id).is_ok_and(|c| c.is_ended()) {
                self.model.live.remove(&id);
            }
        }
    }
}

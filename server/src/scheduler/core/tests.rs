use std::ops::{Deref, DerefMut};

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::scheduler::driver::Driver;
use crate::store::Shared;

/// The machine inside the driver, as the scheduler loop has it: requests
/// answer on oneshots, workers read channels. Reads through to the machine.
struct Harness(Driver);

impl Deref for Harness {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0.core
    }
}

impl DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.0.core
    }
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

impl Harness {
    fn recover(store: Shared, lease_ms: u64, retention_ms: u64, r: Recovered, now: UnixMs) -> Self {
        let core = Core::recover(&store, lease_ms, retention_ms, r, now);
        Harness(Driver::new(core, store))
    }

    fn dispatch(&mut self, now: UnixMs) {
        self.0.dispatch(now);
    }

    fn fire_timers(&mut self, now: UnixMs) {
        self.0.fire_timers(now);
    }

    fn chain(&self, chain_id: ChainId) -> Result<ChainRecord, Error> {
        self.0.chain(chain_id)
    }

    fn submit(&mut self, spec: ChainSpec, reply: Reply<Submitted>, now: UnixMs) {
        let req = self.0.request(reply);
        self.0.core.submit(&self.0.reads, spec, req, now);
    }

    fn submit_many(&mut self, specs: Vec<ChainSpec>, reply: Reply<Vec<Submitted>>, now: UnixMs) {
        let req = self.0.request(reply);
        self.0.core.submit_many(&self.0.reads, specs, req, now);
    }

    fn get(&mut self, chain_id: ChainId, reply: Reply<ChainRecord>) {
        let req = self.0.request(reply);
        self.0.core.get(&self.0.reads, chain_id, req);
    }

    fn purge_queue(&mut self, queue: &str, reason: &str, reply: Reply<Vec<ChainId>>, now: UnixMs) {
        let req = self.0.request(reply);
        self.0
            .core
            .purge_queue(&self.0.reads, queue, reason, req, now);
    }

    fn pause_queue(&mut self, queue: &str, paused: bool, reply: Reply<QueueStats>, now: UnixMs) {
        let req = self.0.request(reply);
        self.0.core.pause_queue(queue, paused, req, now);
    }

    fn connect(&mut self, hello: WorkerHello, tx: mpsc::Sender<ToWorker>, now: UnixMs) -> WorkerId {
        self.0.connect(hello, tx, now)
    }

    fn deliver(&mut self, output: Output, now: UnixMs) {
        self.0.deliver(output, now);
    }

    /// Ends a round and applies its writes at once, closing the streams
    /// of workers gone: rounds driven by hand, durability aside.
    fn commit(&mut self) -> Result<RoundEnd, crate::store::Error> {
        let mut round = self.0.core.end_round();
        self.0.reads.apply(std::mem::take(&mut round.writes))?;
        self.0.close(std::mem::take(&mut round.closed));
        Ok(round)
    }
}

fn one_step(name: &str) -> ChainSpec {
    ChainSpec {
        steps: vec![Signature {
            name: name.into(),
            args: "[]".into(),
            kwargs: "{}".into(),
            immutable: true,
            ..Signature::default()
        }],
        ..ChainSpec::default()
    }
}

/// A worker "w" of the general queue that runs `task`.
fn hello(task: &str, concurrency: u32, prefetch: u32) -> WorkerHello {
    WorkerHello {
        name: "w".into(),
        queues: vec![GENERAL_QUEUE.into()],
        tasks: vec![(task.into(), Options::default())],
        concurrency,
        prefetch,
        held: Vec::new(),
        held_slots: Vec::new(),
    }
}

/// A scheduler on an empty store in a temporary directory (kept alive
/// by the returned guard), at time 1.
fn empty_core() -> (tempfile::TempDir, Shared, Harness) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Shared::open(dir.path()).expect("store");
    let core = Harness::recover(store.clone(), 30_000, 0, Recovered::default(), 1);
    (dir, store, core)
}

/// Ends a round: commits and delivers its effects (durability does not
/// matter here). Returns whether somebody waits for the round's writes
/// (`RoundEnd::awaited`, the store not in trouble).
fn end_round(core: &mut Harness) -> bool {
    let committed = core.commit().expect("commit");
    let awaited = committed.awaited(false);
    for effect in committed.early.into_iter().chain(committed.effects) {
        core.deliver(effect, 1);
    }
    awaited
}

#[test]
fn a_long_line_keeps_new_chains_cold_and_recovery_queues_them_in_order() {
    let (_dir, store, mut core) = empty_core();
    let total = COLD_AFTER + 10;
    let mut ids = Vec::new();
    for i in 0..total {
        let (reply, mut answer) = oneshot::channel();
        core.submit(one_step("t"), reply, 1 + i as u64);
        end_round(&mut core);
        ids.push(answer.try_recv().expect("reply").expect("stored").chain_id);
    }
    // The first COLD_AFTER stay in memory; the rest wait cold.
    assert_eq!(core.chains.len(), COLD_AFTER);
    let cold = ids[COLD_AFTER];
    assert_eq!(
        core.chain(cold).expect("readable").state(),
        ChainState::Running
    );

    let recovered = store.recover().expect("recover");
    assert_eq!(recovered.cold.len(), total - COLD_AFTER);
    let mut core = Harness::recover(store, 30_000, 0, recovered, 10_000);
    let (tx, mut rx) = mpsc::channel(4 * total);
    let concurrency = u32::try_from(total).expect("small");
    core.connect(hello("t", concurrency, 0), tx, 10_000);
    core.dispatch(10_000);
    end_round(&mut core);
    let mut order = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToWorker::Assign(a) = msg {
            order.push(a.chain_id);
        }
    }
    assert_eq!(order, ids);
}

#[test]
fn a_batch_with_a_chain_id_of_another_owner_stores_nothing() {
    let (_dir, _, mut core) = empty_core();
    let taken = ChainId::from_uuid(uuid::Uuid::new_v4());
    let owned_by = |owner: &str, id: Option<ChainId>| ChainSpec {
        owner: owner.into(),
        chain_id: id,
        ..one_step("t")
    };
    let (reply, mut first) = oneshot::channel();
    core.submit(owned_by("alice", Some(taken)), reply, 1);
    end_round(&mut core);
    assert!(first.try_recv().expect("reply").is_ok());

    let fresh = ChainId::from_uuid(uuid::Uuid::new_v4());
    let batch = vec![owned_by("bob", Some(fresh)), owned_by("bob", Some(taken))];
    let (reply, mut answer) = oneshot::channel();
    core.submit_many(batch, reply, 2);
    end_round(&mut core);
    let err = answer.try_recv().expect("reply").expect_err("refused");
    assert!(
        matches!(&err, Error::Exists(m) if m.starts_with("chains[1]: ")),
        "{err:?}"
    );
    assert!(matches!(core.chain(fresh), Err(Error::NotFound(_))));

    // The owner's own resend is a deduplicated repeat, within a batch too.
    let batch = vec![
        owned_by("alice", Some(taken)),
        owned_by("alice", Some(fresh)),
        owned_by("alice", Some(fresh)),
    ];
    let (reply, mut answer) = oneshot::channel();
    core.submit_many(batch, reply, 3);
    end_round(&mut core);
    let answers = answer.try_recv().expect("reply").expect("stored");
    let dedups: Vec<_> = answers.iter().map(|a| a.dedup).collect();
    assert_eq!(dedups, [Some(Dedup::ChainId), None, Some(Dedup::ChainId)]);
}

#[test]
fn a_chain_retired_earlier_in_the_same_round_reads_as_ended() {
    let (_dir, _, mut core) = empty_core();
    let (reply, mut submitted) = oneshot::channel();
    core.submit(one_step("t"), reply, 1);
    let (tx, mut rx) = mpsc::channel(16);
    let worker_id = core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    end_round(&mut core);
    let chain_id = submitted.try_recv().expect("reply").expect("ok").chain_id;
    let task = loop {
        if let ToWorker::Assign(a) = rx.try_recv().expect("assignment") {
            break a.task;
        }
    };
    // One round: the outcome ends the chain (it leaves memory), then a
    // read of it arrives before the round's batch is applied.
    let outcome = RunOutcome::Success("1".into());
    core.on_worker_message(worker_id, FromWorker::Outcome { task, outcome }, 2);
    let (reply, mut got) = oneshot::channel();
    core.get(chain_id, reply);
    end_round(&mut core);
    let chain = got.try_recv().expect("reply").expect("found");
    assert_eq!(chain.state(), ChainState::Succeeded);
}

/// Dispatches, ends the round and returns the tasks assigned on `rx`.
fn assigned(core: &mut Harness, rx: &mut mpsc::Receiver<ToWorker>) -> Vec<TaskRef> {
    core.dispatch(1);
    end_round(core);
    let mut tasks = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToWorker::Assign(a) = msg {
            tasks.push(a.task);
        }
    }
    tasks
}

#[test]
fn a_worker_holds_its_concurrency_and_its_prefetch_and_no_more() {
    let (_dir, _, mut core) = empty_core();
    for _ in 0..6 {
        let (reply, _submitted) = oneshot::channel();
        core.submit(one_step("t"), reply, 1);
    }
    let (tx, mut rx) = mpsc::channel(16);
    let worker_id = core.connect(hello("t", 1, 2), tx, 1);
    let first = assigned(&mut core, &mut rx);
    assert_eq!(first.len(), 3, "1 to run and 2 prefetched");
    assert!(
        assigned(&mut core, &mut rx).is_empty(),
        "the window is full"
    );
    // Each run that ends lets exactly one more in.
    let outcome = RunOutcome::Success("1".into());
    let task = first[0];
    core.on_worker_message(worker_id, FromWorker::Outcome { task, outcome }, 2);
    assert_eq!(assigned(&mut core, &mut rx).len(), 1);
    let info = &core.worker_stats()[0];
    assert_eq!(
        (info.concurrency, info.prefetch, info.in_flight.len()),
        (1, 2, 3)
    );
}

#[test]
fn a_window_gives_back_unstarted_runs_to_other_workers_and_closes_until_reopened() {
    let (_dir, _, mut core) = empty_core();
    for _ in 0..4 {
        let (reply, _submitted) = oneshot::channel();
        core.submit(one_step("t"), reply, 1);
    }
    let (tx, mut busy_rx) = mpsc::channel(16);
    let busy = core.connect(hello("t", 1, 2), tx, 1);
    let held = assigned(&mut core, &mut busy_rx);
    assert_eq!(held.len(), 3, "1 to run and 2 prefetched");
    // Its one slot is taken by a long run: it closes its window and gives
    // back the two it has not started (a task that is not its own is skipped).
    let stranger = TaskRef {
        task_id: TaskId::from_u128(7),
        attempt: 1,
    };
    let window = FromWorker::Window {
        prefetch: 0,
        give_back: vec![held[1], held[2], stranger],
    };
    core.on_worker_message(busy, window, 2);
    assert!(
        assigned(&mut core, &mut busy_rx).is_empty(),
        "a closed window takes nothing beyond the run slot"
    );
    assert_eq!(core.worker_stats()[0].in_flight.len(), 1);
    // Another worker takes them: the next attempt of each, the queue's
    // fourth chain after them.
    let (tx, mut idle_rx) = mpsc::channel(16);
    let mut other = hello("t", 3, 0);
    other.name = "idle".into();
    core.connect(other, tx, 2);
    let taken = assigned(&mut core, &mut idle_rx);
    assert_eq!(taken.len(), 3);
    let again: Vec<_> = taken
        .iter()
        .filter(|t| t.task_id == held[1].task_id || t.task_id == held[2].task_id)
        .collect();
    assert_eq!(
        again.len(),
        2,
        "both given-back tasks went to the idle worker"
    );
    assert!(again.iter().all(|t| t.attempt == 2), "{again:?}");
    // The busy worker's outcome for a run it gave back is refused.
    let outcome = RunOutcome::Success("1".into());
    core.on_worker_message(
        busy,
        FromWorker::Outcome {
            task: held[1],
            outcome,
        },
        3,
    );
    end_round(&mut core);
    let refused = std::iter::from_fn(|| busy_rx.try_recv().ok())
        .any(|m| matches!(m, ToWorker::Ack { accepted: false, task, .. } if task == held[1]));
    assert!(refused, "an outcome for a run given back is not current");
    // Reopened, the window takes work again.
    for _ in 0..2 {
        let (reply, _submitted) = oneshot::channel();
        core.submit(one_step("t"), reply, 3);
    }
    let window = FromWorker::Window {
        prefetch: 2,
        give_back: Vec::new(),
    };
    core.on_worker_message(busy, window, 3);
    assert_eq!(assigned(&mut core, &mut busy_rx).len(), 2);
}

thread_local! {
    /// Chains [`Core::redefine`] went through.
    pub static CHAIN_VISITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[test]
fn a_hello_of_many_new_task_defaults_goes_through_the_chains_once() {
    let (_dir, _, mut core) = empty_core();
    for i in 0..500 {
        submit(&mut core, one_step(&format!("t{i}")));
    }
    let mut hello = hello("t0", 1, 0);
    let limited = Options {
        max_retries: Some(7),
        ..Default::default()
    };
    hello.tasks = (0..500)
        .map(|i| (format!("t{i}"), limited.clone()))
        .collect();
    let before = CHAIN_VISITS.with(std::cell::Cell::get);
    let (tx, _rx) = mpsc::channel(16);
    core.connect(hello, tx, 1);
    let visits = CHAIN_VISITS.with(std::cell::Cell::get) - before;
    assert_eq!(visits, 500, "one pass over the 500 chains");
    assert_eq!(core.task_defaults.len(), 500);
}

/// A core with `n` one-step chains of `name` submitted and applied,
/// the last `n - COLD_AFTER` of them cold (only in the store).
fn backlog(name: &str, n: usize) -> (tempfile::TempDir, Shared, Harness) {
    let (dir, store, mut core) = empty_core();
    for _ in 0..n {
        submit(&mut core, one_step(name));
    }
    end_round(&mut core);
    assert_eq!(core.chains.len(), COLD_AFTER);
    (dir, store, core)
}

/// Runs assigned so far, after a dispatch (not committed: the store
/// may be closed).
fn dispatched(core: &mut Harness) -> usize {
    core.dispatch(2);
    runs_out(core)
}

#[tokio::test]
async fn a_backlog_on_disk_is_kept_while_the_store_cannot_be_read() {
    let n = COLD_AFTER + 40;
    let (_dir, store, mut core) = backlog("t", n);
    store.close();
    let (tx, _rx) = mpsc::channel(2 * n);
    let count = u32::try_from(n).unwrap();
    core.connect(hello("t", count, 0), tx, 1);
    assert_eq!(dispatched(&mut core), COLD_AFTER, "only hot ones go");
    assert_eq!(
        core.queues.line_len(GENERAL_QUEUE, "t"),
        40,
        "cold ones stay"
    );
    store.repair().await.expect("repair");
    assert_eq!(dispatched(&mut core), n, "the backlog was dropped");
}

#[tokio::test]
async fn new_defaults_reach_a_backlog_on_disk_read_after_the_store_recovers() {
    let n = COLD_AFTER + 40;
    let (_dir, store, mut core) = backlog("t", n);
    store.close();
    // A worker declares a limit-1 throttle for the name: every waiting
    // step must honour it, including the cold ones not readable now.
    let mut declared = hello("t", u32::try_from(n).unwrap(), 0);
    declared.tasks[0].1 = Options {
        throttle: Some(crate::domain::Throttle {
            concurrency: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (tx, _rx) = mpsc::channel(2 * n);
    core.connect(declared, tx, 1);
    assert_eq!(
        dispatched(&mut core),
        1,
        "a cold chain ran under the old defaults"
    );
    store.repair().await.expect("repair");
    assert_eq!(dispatched(&mut core), 1);
    assert!(core.rerouting.is_empty());
    assert_eq!(core.chains.len(), n, "every chain is back in memory");
    let waiting = core
        .chains
        .values()
        .filter(|c| c.step(c.current()).state() == StepState::Throttled)
        .count();
    assert_eq!(waiting, n - 1, "all but the holder wait for the slot");
}

#[tokio::test]
async fn a_purge_while_the_store_cannot_be_read_says_what_stayed() {
    let n = COLD_AFTER + 40;
    let (_dir, store, mut core) = backlog("t", n);
    store.close();
    let (reply, answer) = oneshot::channel();
    core.purge_queue(GENERAL_QUEUE, "", reply, 2);
    store.repair().await.expect("repair");
    end_round(&mut core);
    let error = answer.await.unwrap().unwrap_err().to_string();
    assert!(
        error.contains("40 queued chains could not be read"),
        "{error}"
    );
    assert_eq!(core.queues.line_len(GENERAL_QUEUE, "t"), 40);
    let (reply, answer) = oneshot::channel();
    core.purge_queue(GENERAL_QUEUE, "", reply, 3);
    end_round(&mut core);
    assert_eq!(answer.await.unwrap().unwrap().len(), 40);
}

#[test]
fn an_idempotency_key_that_names_a_missing_chain_is_taken_anew() {
    let (_dir, store, mut core) = empty_core();
    let mut torn = Batch::new();
    torn.put_idempotency_key("k", "01a24203-0000-7000-8000-000000000000");
    store.apply(torn).unwrap();
    let keyed = ChainSpec {
        idempotency_key: "k".into(),
        ..one_step("t")
    };
    let (reply, mut first) = oneshot::channel();
    core.submit(keyed.clone(), reply, 1);
    end_round(&mut core);
    let first = first.try_recv().unwrap().unwrap();
    assert_eq!(
        first.dedup, None,
        "answered with a chain that is not stored"
    );
    let (reply, mut again) = oneshot::channel();
    core.submit(keyed, reply, 2);
    end_round(&mut core);
    let again = again.try_recv().unwrap().unwrap();
    assert_eq!(
        (again.chain_id, again.dedup),
        (first.chain_id, Some(Dedup::IdempotencyKey))
    );
}

#[test]
fn a_lease_lapses_after_the_lease_of_awake_time_not_of_time_passed() {
    let (_dir, _, mut core) = empty_core();
    submit(&mut core, one_step("t"));
    let (tx, _rx) = mpsc::channel(16);
    core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    end_round(&mut core);
    assert_eq!(runs_out(&core), 1);
    // A minute passed on the clock of timers, but the broker was awake
    // for only a second of it (it was paused): the run stays.
    core.set_awake(1_000);
    core.fire_timers(60_000);
    assert_eq!(runs_out(&core), 1, "a pause took the run");
    // Once the broker has been awake for the whole lease, it lapses.
    core.set_awake(30_000);
    core.fire_timers(60_000 + 29_000);
    assert!(runs_out(&core) == 0, "the lease never lapsed");
}

/// An assignment held back until its round is durable (as it is
/// while the store is in trouble) has not reached its worker: its
/// lease runs only from when it leaves. Before, it lapsed in the
/// outbox, the slot went to another run, and the stale assignment then
/// left anyway, so two bodies held a slot of limit 1 (the chaos
/// harness, a full disk of 2 s with a lease of 2 s).
#[test]
fn a_held_assignment_does_not_lapse_before_it_leaves() {
    let (_dir, _, mut core) = empty_core();
    submit(&mut core, one_step("t"));
    let (tx, mut rx) = mpsc::channel(16);
    core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    let held = core.commit().expect("commit");
    assert!(held.early.is_empty());
    assert_eq!(assigned_chains(&held.effects).len(), 1);
    // Two leases of awake time pass while the round is not durable.
    core.set_awake(60_000);
    core.fire_timers(60_001);
    assert_eq!(runs_out(&core), 1, "a held assignment lapsed");
    // It leaves; its lease runs from now.
    durable(&mut core, held.effects);
    assert!(std::iter::from_fn(|| rx.try_recv().ok()).any(|m| matches!(m, ToWorker::Assign(_))));
    core.set_awake(60_000 + 29_000);
    core.fire_timers(60_001 + 29_000);
    assert_eq!(runs_out(&core), 1, "the lease ran before it left");
    core.set_awake(60_000 + 30_000);
    core.fire_timers(60_001 + 30_000);
    assert!(runs_out(&core) == 0, "the lease never lapsed");
}

/// Runs out on workers: running steps of the chains in memory.
fn runs_out(core: &Core) -> usize {
    core.chains
        .values()
        .flat_map(|rec| rec.all_steps())
        .filter(|(_, step)| step.run().is_some())
        .count()
}

/// Commits a round as the scheduler loop does: delivers its early
/// assignments and returns their chain ids, with the round's other
/// effects, which wait for it to be durable.
fn commit_round(core: &mut Harness) -> (Vec<ChainId>, Vec<Output>) {
    let committed = core.commit().expect("commit");
    let early = assigned_chains(&committed.early);
    assert_eq!(
        early.len(),
        committed.early.len(),
        "only assignments go early"
    );
    durable(core, committed.early);
    (early, committed.effects)
}

/// The worker reports `task` succeeded.
fn succeed(core: &mut Harness, worker_id: WorkerId, task: TaskRef, now: UnixMs) {
    let outcome = RunOutcome::Success("1".into());
    core.on_worker_message(worker_id, FromWorker::Outcome { task, outcome }, now);
}

/// The chain ids of the assignments among held effects.
fn assigned_chains(effects: &[Output]) -> Vec<ChainId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Output::ToWorker {
                msg: ToWorker::Assign(a),
                ..
            } => Some(a.chain_id),
            _ => None,
        })
        .collect()
}

/// The round is durable: its held effects are delivered.
fn durable(core: &mut Harness, effects: Vec<Output>) {
    for effect in effects {
        core.deliver(effect, 1);
    }
}

/// Submits `spec` under a chain id of its own, returned.
fn submit(core: &mut Harness, spec: ChainSpec) -> ChainId {
    let chain_id = ChainId::from_uuid(uuid::Uuid::new_v4());
    let spec = ChainSpec {
        chain_id: Some(chain_id),
        ..spec
    };
    let (reply, _) = oneshot::channel();
    core.submit(spec, reply, 1);
    chain_id
}

/// The simulator replays a run from its seed: the same seed gives the
/// same chain and task ids.
#[test]
fn seeded_ids_are_the_same_again() {
    let ids_of_a_run = || {
        let (_dir, _, mut core) = empty_core();
        core.set_ids(Ids::Seeded(7));
        let (reply, _) = oneshot::channel();
        core.submit(one_step("t"), reply, 1);
        let rec = core.chains.values().next().expect("submitted").clone();
        (rec.id, rec.steps[0].task_id.clone())
    };
    let first = ids_of_a_run();
    assert_eq!(first, ids_of_a_run());
    assert!(uuid::Uuid::parse_str(&first.0).is_ok());
}

#[test]
fn rounds_before_an_apply_share_its_batch_and_number() {
    let (_dir, store, mut core) = empty_core();
    let a = submit(&mut core, one_step("t"));
    let first = store.stage_seq(core.end_round().writes);
    let b = submit(&mut core, one_step("t"));
    let second = store.stage_seq(core.end_round().writes);
    assert_eq!(
        (first, second),
        (1, 1),
        "both rounds' replies wait for the batch that will hold them"
    );
    let on_disk = |id: ChainId| store.read(|s| s.chain(&id.to_string())).unwrap().is_some();
    assert!(!on_disk(a), "nothing applied yet");
    assert!(
        store.chain(&a.to_string()).unwrap().is_some(),
        "reads see staged writes"
    );
    assert_eq!(store.apply_staged().unwrap(), 1);
    assert!(on_disk(a) && on_disk(b));
    // A round that writes nothing waits for the batch applied last.
    assert_eq!(store.stage_seq(core.end_round().writes), 1);
    assert!(!store.has_staged());
    assert_eq!(
        store.apply_staged().unwrap(),
        1,
        "nothing to apply: no new batch"
    );
}

#[test]
fn an_assignment_goes_early_only_when_what_it_relies_on_is_durable() {
    let (_dir, _, mut core) = empty_core();
    let (tx, mut rx) = mpsc::channel(16);
    let a = submit(&mut core, one_step("t"));
    let b = submit(&mut core, one_step("t"));
    let worker_id = core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    // `a` became ready in this very round, and the worker's welcome has
    // not left: its assignment waits for the round.
    let (early, held) = commit_round(&mut core);
    assert!(early.is_empty());
    assert_eq!(assigned_chains(&held), std::slice::from_ref(&a));
    durable(&mut core, held);
    let task_a = next_assignment(&mut rx);

    // `a` ends; `b` was ready in a durable round: it goes early. `c`,
    // submitted in this round, is not durable yet.
    succeed(&mut core, worker_id, task_a, 2);
    let c = submit(&mut core, one_step("t"));
    core.dispatch(2);
    let (early, held_2) = commit_round(&mut core);
    assert_eq!(early, std::slice::from_ref(&b));
    let task_b = next_assignment(&mut rx);

    // `b` ends before the round that made `c` ready is durable: `c`
    // waits for its round.
    succeed(&mut core, worker_id, task_b, 3);
    core.dispatch(3);
    let (early, held_3) = commit_round(&mut core);
    assert!(early.is_empty());
    assert_eq!(assigned_chains(&held_3), [c]);
    durable(&mut core, held_2);
    durable(&mut core, held_3);
    assert!(core.unsettled.ready.is_empty(), "every readiness settled");
}

/// The first assignment message among delivered ones.
fn next_assignment(rx: &mut mpsc::Receiver<ToWorker>) -> TaskRef {
    loop {
        if let ToWorker::Assign(x) = rx.try_recv().expect("an assignment") {
            break x.task;
        }
    }
}

#[test]
fn an_early_assignment_lost_in_a_crash_is_lost_to_its_worker_and_issued_again() {
    let (_dir, store, mut core) = empty_core();
    let (tx, mut rx) = mpsc::channel(16);
    let worker_id = core.connect(hello("t", 1, 0), tx, 1);
    submit(&mut core, one_step("t"));
    let x = submit(&mut core, one_step("t"));
    core.dispatch(1);
    let (_, held) = commit_round(&mut core);
    durable(&mut core, held);
    let a = next_assignment(&mut rx);
    // What a restart would find on disk now.
    let on_disk = store.recover().expect("recover");

    // `a` ends; `x` goes early. The broker dies before the round is
    // durable: its outcome and `x`'s assignment are lost.
    succeed(&mut core, worker_id, a, 2);
    core.dispatch(2);
    let (early, _lost_with_the_crash) = commit_round(&mut core);
    assert_eq!(early, std::slice::from_ref(&x));
    let sent = next_assignment(&mut rx);
    drop(core);

    // The worker comes back holding both (`a` with its outcome not
    // acknowledged): `a` is kept, `x` is lost, and `x` runs again under
    // the same attempt number.
    let mut core = Harness::recover(store, 30_000, 0, on_disk, 3);
    let (tx, mut rx) = mpsc::channel(16);
    let back = WorkerHello {
        held: vec![a, sent],
        ..hello("t", 2, 0)
    };
    core.connect(back, tx, 3);
    core.dispatch(3);
    end_round(&mut core);
    match rx.try_recv().expect("welcome") {
        ToWorker::Welcome { kept, lost, .. } => {
            assert_eq!((kept, lost), (vec![a], vec![sent]));
        }
        _ => panic!("welcome first"),
    }
    assert_eq!(next_assignment(&mut rx), sent);
}

#[test]
fn a_worker_gets_no_early_assignment_before_its_welcome() {
    let (_dir, _, mut core) = empty_core();
    let ready = submit(&mut core, one_step("t"));
    let (_, held) = commit_round(&mut core);
    durable(&mut core, held);

    let (tx, mut rx) = mpsc::channel(16);
    core.connect(hello("t", 1, 0), tx, 2);
    core.dispatch(2);
    let (early, held) = commit_round(&mut core);
    assert!(early.is_empty());
    assert_eq!(assigned_chains(&held), [ready]);
    durable(&mut core, held);
    assert!(matches!(rx.try_recv(), Ok(ToWorker::Welcome { .. })));
}

#[test]
fn a_resumed_queue_waits_for_its_round() {
    let (_dir, _, mut core) = empty_core();
    let (tx, _rx) = mpsc::channel(16);
    let (paused, _) = oneshot::channel();
    core.pause_queue(GENERAL_QUEUE, true, paused, 1);
    let ready = submit(&mut core, one_step("t"));
    core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    let (early, held) = commit_round(&mut core);
    assert!(
        early.is_empty() && assigned_chains(&held).is_empty(),
        "paused"
    );
    durable(&mut core, held);

    // The task was ready in a durable round, the worker is welcomed,
    // but the resumption is not durable yet.
    let (resumed, _) = oneshot::channel();
    core.pause_queue(GENERAL_QUEUE, false, resumed, 2);
    core.dispatch(2);
    let (early, held) = commit_round(&mut core);
    assert!(early.is_empty());
    assert_eq!(assigned_chains(&held), [ready]);
}

/// Two steps of task "t" under one chain-scoped slot (limit 1, key
/// "tenant"): the chain holds it from its first step to its end.
fn two_steps_under_one_chain_slot() -> ChainSpec {
    let throttled = Signature {
        options: Some(Options {
            throttle: Some(Throttle {
                concurrency: 1,
                key: "tenant".into(),
                scope: ThrottleScope::Chain as i32,
                ..Throttle::default()
            }),
            ..Options::default()
        }),
        ..one_step("t").steps[0].clone()
    };
    ChainSpec {
        steps: vec![throttled.clone(), throttled],
        ..one_step("t")
    }
}

#[test]
fn a_throttled_step_waits_for_its_round() {
    let (_dir, _, mut core) = empty_core();
    let held_by_chain = two_steps_under_one_chain_slot();
    let (tx, mut rx) = mpsc::channel(16);
    let worker_id = core.connect(hello("t", 2, 0), tx, 1);
    let (_, held) = commit_round(&mut core);
    durable(&mut core, held);
    let chain = submit(&mut core, held_by_chain);
    submit(&mut core, one_step("t"));
    submit(&mut core, one_step("t"));
    core.dispatch(1);
    let (_, held) = commit_round(&mut core);
    durable(&mut core, held);
    let (step_1, plain_1) = (next_assignment(&mut rx), next_assignment(&mut rx));

    // Step 1 ends: step 2 queues behind the second plain task, which
    // takes the free slot (early: it was ready in a durable round).
    succeed(&mut core, worker_id, step_1, 2);
    core.dispatch(2);
    let (early, held) = commit_round(&mut core);
    assert_eq!(early.len(), 1);
    durable(&mut core, held);

    // Step 2 is ready in a durable round and needs no new slot, but it
    // runs under the chain's throttle slot: it is never sent ahead.
    succeed(&mut core, worker_id, plain_1, 3);
    core.dispatch(3);
    let (early, held) = commit_round(&mut core);
    assert!(early.is_empty());
    assert_eq!(assigned_chains(&held), [chain]);
}

#[test]
fn a_step_under_its_chains_slot_waits_for_an_idle_run_slot_not_a_prefetch() {
    let (_dir, _, mut core) = empty_core();
    let held_by_chain = two_steps_under_one_chain_slot();
    // One run slot, room for two more in its prefetch.
    let (tx, mut rx) = mpsc::channel(16);
    let mut two_names = hello("t", 1, 2);
    two_names.tasks.push(("u".into(), Options::default()));
    let worker_id = core.connect(two_names, tx, 1);
    let chain = submit(&mut core, held_by_chain);
    core.dispatch(1);
    end_round(&mut core);
    let step_1 = next_assignment(&mut rx);
    let plain = submit(&mut core, one_step("t"));
    core.dispatch(1);
    end_round(&mut core);
    let plain_run = next_assignment(&mut rx);

    // Step 1 ends while the plain task runs: step 2 holds the chain's
    // slot, so it is not prefetched behind the plain run (nor is the
    // rest of its line); a task of another line that holds no slot is.
    succeed(&mut core, worker_id, step_1, 2);
    let after = submit(&mut core, one_step("u"));
    core.dispatch(2);
    let (early, held) = commit_round(&mut core);
    let assigned: Vec<ChainId> = early.into_iter().chain(assigned_chains(&held)).collect();
    assert_eq!(assigned, [after]);
    durable(&mut core, held);
    assert_eq!(
        core.chain(chain).expect("live").steps[1].state(),
        StepState::Ready
    );

    // The plain run ends: the prefetched task takes its run slot. When
    // that one ends, its slot goes to step 2.
    let after_run = next_assignment(&mut rx);
    succeed(&mut core, worker_id, plain_run, 3);
    core.dispatch(3);
    let (early, held) = commit_round(&mut core);
    assert!(early.is_empty() && assigned_chains(&held).is_empty());
    durable(&mut core, held);
    succeed(&mut core, worker_id, after_run, 4);
    core.dispatch(4);
    let (early, held) = commit_round(&mut core);
    let assigned: Vec<ChainId> = early.into_iter().chain(assigned_chains(&held)).collect();
    assert_eq!(assigned, [chain]);
    assert_eq!(
        core.chain(plain).expect("readable").state(),
        ChainState::Succeeded
    );
}

#[test]
fn a_claim_for_an_attempt_out_on_another_connected_worker_is_lost() {
    let (_dir, _, mut core) = empty_core();
    let (tx, mut rx) = mpsc::channel(16);
    submit(&mut core, one_step("t"));
    let owner = core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    end_round(&mut core);
    let task = next_assignment(&mut rx);

    // Another worker claims the same attempt (as one that ran an early
    // assignment before a crash would): the connected owner keeps it.
    let (tx, mut other_rx) = mpsc::channel(16);
    let other = WorkerHello {
        name: "other".into(),
        held: vec![task],
        ..hello("t", 1, 0)
    };
    core.connect(other, tx, 2);
    end_round(&mut core);
    match other_rx.try_recv().expect("welcome") {
        ToWorker::Welcome { kept, lost, .. } => {
            assert!(kept.is_empty());
            assert_eq!(lost, std::slice::from_ref(&task));
        }
        _ => panic!("welcome first"),
    }
    assert!(core.workers[&owner].in_flight.contains(&task.task_id));

    // The owner itself, reconnecting before its old stream is noticed
    // gone, keeps it.
    let (tx, mut again_rx) = mpsc::channel(16);
    let again = WorkerHello {
        held: vec![task],
        ..hello("t", 1, 0)
    };
    core.connect(again, tx, 3);
    end_round(&mut core);
    match again_rx.try_recv().expect("welcome") {
        ToWorker::Welcome { kept, lost, .. } => {
            assert_eq!(kept, [task]);
            assert!(lost.is_empty());
        }
        _ => panic!("welcome first"),
    }
}

/// Finding F2 of the simulator: once the run's stream is gone (here it
/// ended; a restart looks the same), another worker serving the same task
/// name cannot claim the run; the worker the step's record names can.
#[test]
fn a_run_whose_worker_is_gone_is_claimed_only_by_that_worker() {
    let (_dir, _, mut core) = empty_core();
    let (tx, mut rx) = mpsc::channel(16);
    submit(&mut core, one_step("t"));
    let owner = core.connect(hello("t", 1, 0), tx, 1);
    core.dispatch(1);
    end_round(&mut core);
    let task = next_assignment(&mut rx);
    core.worker_gone(owner, false, 2);
    end_round(&mut core);

    let welcome = |core: &mut Harness, name: &str, now| {
        let (tx, mut rx) = mpsc::channel(16);
        let claim = WorkerHello {
            name: name.into(),
            held: vec![task],
            ..hello("t", 1, 0)
        };
        core.connect(claim, tx, now);
        end_round(core);
        match rx.try_recv().expect("welcome") {
            ToWorker::Welcome { kept, lost, .. } => (kept, lost),
            _ => panic!("welcome first"),
        }
    };
    let (kept, lost) = welcome(&mut core, "other", 3);
    assert!(kept.is_empty(), "another worker took the run");
    assert_eq!(lost, std::slice::from_ref(&task));
    let (kept, lost) = welcome(&mut core, &hello("t", 1, 0).name, 4);
    assert_eq!(kept, std::slice::from_ref(&task));
    assert!(lost.is_empty());
}

/// A chain whose one step is a group of `n` one-step members of `task`.
fn group_of(task: &str, n: usize) -> ChainSpec {
    let member = one_step(task).steps.remove(0);
    ChainSpec {
        steps: vec![Signature {
            name: "group".into(),
            args: "[]".into(),
            kwargs: "{}".into(),
            members: vec![member; n],
            ..Signature::default()
        }],
        ..ChainSpec::default()
    }
}

#[test]
fn a_group_starts_its_members_a_slice_a_round_and_a_restart_goes_on_from_the_last_durable_slice() {
    let (_dir, store, mut core) = empty_core();
    let n = 2 * fanout::FANOUT_PER_ROUND + 50;
    let parent = submit(&mut core, group_of("t", n));
    end_round(&mut core);
    let step = core.chains[&parent].steps[0].task();
    // The parent's record keeps the count, not the members: it is written
    // again with every member that ends.
    use prost::Message as _;
    assert_eq!(core.chains[&parent].steps[0].children as usize, n);
    assert!(core.chains[&parent].encoded_len() < 400);

    core.0.follow_up(1);
    end_round(&mut core);
    assert_eq!(
        core.chains[&parent].steps[0].spawned as usize,
        fanout::FANOUT_PER_ROUND,
        "one slice a round"
    );

    // A crash now: recovery goes on from the slice that is on disk.
    let mut core = Harness::recover(
        store.clone(),
        30_000,
        0,
        store.recover().expect("recover"),
        2,
    );
    let waiting = &core.chains[&parent].steps[0];
    assert_eq!(waiting.state(), StepState::Waiting);
    assert_eq!(waiting.spawned as usize, fanout::FANOUT_PER_ROUND);
    for _ in 0..3 {
        core.0.follow_up(2);
        end_round(&mut core);
    }
    assert_eq!(core.chains[&parent].steps[0].spawned as usize, n);
    let member = |i: usize| ChainId::child(step, u32::try_from(i).expect("small"));
    for i in 0..n {
        let child = core.chain(member(i)).expect("every member started once");
        assert_eq!(child.parent_chain_id, parent.to_string());
        assert_eq!(child.member_index as usize, i);
    }
    assert!(matches!(core.chain(member(n)), Err(Error::NotFound(_))));
}

#[test]
fn a_group_whose_members_all_succeeded_before_a_crash_collects_them_after_it() {
    let (_dir, store, mut core) = empty_core();
    let parent = submit(&mut core, group_of("t", 3));
    end_round(&mut core);
    core.0.follow_up(1);
    end_round(&mut core);
    let (tx, mut rx) = mpsc::channel(16);
    let worker = core.connect(hello("t", 8, 0), tx, 1);
    core.dispatch(1);
    end_round(&mut core);
    let mut tasks = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToWorker::Assign(a) = msg {
            tasks.push(a.task);
        }
    }
    assert_eq!(tasks.len(), 3);
    for task in tasks {
        succeed(&mut core, worker, task, 2);
    }
    // The round that counted the last member is durable; the collection of
    // the results (a later round) never ran.
    end_round(&mut core);
    let step = &core.chains[&parent].steps[0];
    assert_eq!((step.members_done, step.members_ended), (3, 3));
    let mut core = Harness::recover(
        store.clone(),
        30_000,
        0,
        store.recover().expect("recover"),
        3,
    );
    core.0.follow_up(3);
    end_round(&mut core);
    let rec = core.chain(parent).expect("stored");
    assert_eq!(rec.state(), ChainState::Succeeded);
    assert_eq!(rec.result, "[1,1,1]");
}

#[test]
fn a_large_value_handed_to_a_group_is_stored_once_and_reaches_every_member_after_a_restart() {
    let (_dir, store, mut core) = empty_core();
    let mut spec = group_of("t", 3);
    let mut group = spec.steps.remove(0);
    for member in &mut group.members {
        member.immutable = false; // each takes the value handed on
    }
    spec.steps = vec![one_step("t").steps.remove(0), group];
    let parent = submit(&mut core, spec);
    end_round(&mut core);
    let (tx, mut rx) = mpsc::channel(16);
    let worker = core.connect(hello("t", 8, 0), tx, 1);
    core.dispatch(1);
    end_round(&mut core);
    let Some(ToWorker::Assign(first)) =
        std::iter::from_fn(|| rx.try_recv().ok()).find(|m| matches!(m, ToWorker::Assign(_)))
    else {
        panic!("the first step is assigned");
    };
    let big = format!("\"{}\"", "x".repeat(5000));
    let outcome = RunOutcome::Success(big.clone());
    core.on_worker_message(
        worker,
        FromWorker::Outcome {
            task: first.task,
            outcome,
        },
        2,
    );
    end_round(&mut core);
    core.0.follow_up(2);
    end_round(&mut core);
    let step = core.chains[&parent].steps[1].task();
    use prost::Message as _;
    for member in 0..3 {
        let child = &core.chains[&ChainId::child(step, member)];
        assert!(child.input_apart && child.input.is_none());
        assert!(child.encoded_len() < 1000, "{}", child.encoded_len());
    }

    // A crash: the members' first steps still receive the value.
    let mut core = Harness::recover(
        store.clone(),
        30_000,
        0,
        store.recover().expect("recover"),
        3,
    );
    let (tx, mut rx) = mpsc::channel(16);
    core.connect(hello("t", 8, 0), tx, 3);
    core.dispatch(3);
    end_round(&mut core);
    let args: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|m| match m {
            ToWorker::Assign(a) => Some(a.args),
            _ => None,
        })
        .collect();
    assert_eq!(args.len(), 3);
    for a in args {
        assert_eq!(a, format!("[{big}]"));
    }
}

#[test]
fn only_a_round_of_outcome_acks_is_left_to_wait_for_a_shared_flush() {
    let (_dir, _, mut core) = empty_core();
    let (tx, mut rx) = mpsc::channel(16);
    let worker_id = core.connect(hello("t", 1, 0), tx, 1);
    let two_steps = ChainSpec {
        steps: vec![
            one_step("t").steps[0].clone(),
            one_step("t").steps[0].clone(),
        ],
        ..ChainSpec::default()
    };

    // A submission and its first step's assignment, in one round as the
    // scheduler loop has them: the client waits for the reply, the worker
    // for the assignment (not an early one: its task was made ready in
    // this very round).
    let (reply, _answer) = oneshot::channel();
    core.submit(two_steps, reply, 1);
    core.dispatch(1);
    assert!(end_round(&mut core), "a reply is awaited");
    // Runs the step last assigned, reports its outcome and dispatches.
    let mut run_next = |core: &mut Harness, now: UnixMs| {
        let task = loop {
            if let ToWorker::Assign(a) = rx.try_recv().expect("assignment") {
                break a.task;
            }
        };
        let outcome = RunOutcome::Success(now.to_string());
        core.on_worker_message(worker_id, FromWorker::Outcome { task, outcome }, now);
        core.dispatch(now);
    };

    // The first step's outcome acks it and assigns the next step: still
    // awaited.
    run_next(&mut core, 2);
    assert!(
        end_round(&mut core),
        "an ack with the next assignment is awaited"
    );

    // The last step's outcome ends the chain, which nobody watches: only
    // an ack leaves (and the machine's own bookkeeping), so the round may
    // wait to share the next flush...
    run_next(&mut core, 3);
    let round = core.commit().expect("commit");
    assert!(
        round.effects.iter().any(|o| matches!(
            o,
            Output::ToWorker {
                msg: ToWorker::Ack { .. },
                ..
            }
        )),
        "the round acks the outcome"
    );
    assert!(!round.awaited(false), "nobody waits for an ack alone");
    // ...unless the store is in trouble and early assignments must wait too.
    let with_early = RoundEnd {
        writes: Batch::default(),
        effects: round.effects,
        early: vec![Output::Settled(Settled::Resumed)],
        closed: Vec::new(),
    };
    assert!(with_early.awaited(true));
    assert!(!with_early.awaited(false));
}

//! Throttles end to end (issue 3): a real broker, real workers, and task
//! bodies that record for themselves who holds what and when.
//!
//! Three forms, one mechanism: declared on a signature or as a task name's
//! default (the seed's `@throttle`), in-body (`with throttle(...)`), and
//! chain-scoped. The tests assert what users rely on: the limit is never
//! exceeded (as the bodies count it), waiters start in FIFO order, other
//! work keeps flowing, slots come back on every end (success, failure,
//! cancel, deadline, goodbye, lapsed lease) and never to a stale report,
//! limits change live and inspection tells the truth. Crashes of real
//! processes are in `throttle_crash.rs`.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton::pb::{self, broker_message::Msg as Down, worker_message::Msg as Up};
use baton::{Chain, ChainOutcome, Client, Task, Throttle};
use baton_worker::{TaskContext, TaskError, Throttle as BodyThrottle};
use common::*;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Counts the bodies that hold a slot right now, as the bodies see it, and
/// remembers the maximum and who started with how many holders around.
#[derive(Clone, Default)]
struct Holders(Arc<Mutex<HoldersState>>);

#[derive(Default)]
struct HoldersState {
    now: u32,
    max: u32,
    /// (label, holders counting this one) at each start, in start order.
    started: Vec<(String, u32)>,
    ended: Vec<String>,
}

/// One body holding; dropping it (the body returned or was aborted) ends
/// the hold.
struct Hold {
    holders: Holders,
    label: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut s = self.holders.0.lock().expect("holders");
        s.now -= 1;
        s.ended.push(std::mem::take(&mut self.label));
    }
}

impl Holders {
    fn enter(&self, label: impl Into<String>) -> Hold {
        let label = label.into();
        let mut s = self.0.lock().expect("holders");
        s.now += 1;
        s.max = s.max.max(s.now);
        let now = s.now;
        s.started.push((label.clone(), now));
        Hold {
            holders: self.clone(),
            label,
        }
    }

    fn now(&self) -> u32 {
        self.0.lock().expect("holders").now
    }

    fn max(&self) -> u32 {
        self.0.lock().expect("holders").max
    }

    fn started(&self) -> Vec<String> {
        let s = self.0.lock().expect("holders");
        s.started.iter().map(|(l, _)| l.clone()).collect()
    }

    fn started_with_count(&self) -> Vec<(String, u32)> {
        self.0.lock().expect("holders").started.clone()
    }

    fn ended(&self) -> usize {
        self.0.lock().expect("holders").ended.len()
    }
}

/// Task-name defaults that throttle the whole task (the seed's `@throttle`).
fn whole_task(concurrency: u32, key: &str) -> pb::Options {
    pb::Options {
        throttle: Some(pb::Throttle {
            concurrency,
            key: key.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms fit u64")
}

/// Submits every chain at once; returns their ids in the given order.
async fn submit_all(client: &Client, chains: Vec<Chain>) -> Vec<String> {
    let submits = chains.into_iter().map(|chain| {
        let client = client.clone();
        async move { client.submit(chain).await.expect("submit").chain_id }
    });
    futures::future::join_all(submits).await
}

/// Submits one after the other, so submission order is arrival order.
async fn submit_in_order(client: &Client, chains: Vec<Chain>) -> Vec<String> {
    let mut ids = Vec::new();
    for chain in chains {
        ids.push(client.submit(chain).await.expect("submit").chain_id);
    }
    ids
}

async fn outcomes(client: &Client, ids: &[String]) -> Vec<ChainOutcome> {
    let waits = ids.iter().map(|id| {
        let client = client.clone();
        async move { client.wait_timeout(id, PATIENCE).await.expect("wait") }
    });
    futures::future::join_all(waits).await
}

async fn all_succeed(client: &Client, ids: &[String]) {
    for (id, outcome) in ids.iter().zip(outcomes(client, ids).await) {
        assert!(
            matches!(outcome, ChainOutcome::Succeeded(_)),
            "chain {id} ended {outcome:?}"
        );
    }
}

/// The inspection entry of one identity, if the broker lists it.
async fn throttle_of(client: &Client, task_name: &str, key: &str) -> Option<pb::ThrottleInfo> {
    client
        .admin()
        .list_throttles()
        .await
        .expect("list throttles")
        .into_iter()
        .find(|t| {
            t.identity
                .as_ref()
                .is_some_and(|i| i.task_name == task_name && i.key == key)
        })
}

/// Polls inspection until `check` holds for the identity's entry (an
/// identity the broker no longer lists counts as empty).
async fn until_throttle(
    client: &Client,
    task_name: &str,
    key: &str,
    what: &str,
    check: impl Fn(&pb::ThrottleInfo) -> bool,
) -> pb::ThrottleInfo {
    let start = std::time::Instant::now();
    loop {
        let info = throttle_of(client, task_name, key)
            .await
            .unwrap_or_default();
        if check(&info) {
            return info;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting for {what}; last seen {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` workers are connected.
async fn until_workers(client: &Client, n: usize) {
    let start = std::time::Instant::now();
    while client
        .admin()
        .list_workers()
        .await
        .expect("list workers")
        .len()
        != n
    {
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting for {n} workers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn task_id_of(client: &Client, chain_id: &str) -> String {
    client.get(chain_id).await.expect("get").steps[0]
        .task_id
        .clone()
}

/// A gate the test opens one body at a time (each pass consumes a permit).
fn gate() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(0))
}

async fn pass(gate: &Semaphore) {
    gate.acquire().await.expect("gate").forget();
}

// ---------------------------------------------------------------------------
// The seed's demo
// ---------------------------------------------------------------------------

/// Checks the demo's journal: the slow parts never overlap, and each fast
/// part comes after its own slow part.
fn check_demo(entries: &[String], chains: &[String]) {
    let slow: Vec<&String> = entries.iter().filter(|e| e.starts_with("slow ")).collect();
    assert_eq!(slow.len(), 2 * chains.len(), "{entries:?}");
    for pair in slow.chunks(2) {
        let chain = pair[0].strip_prefix("slow start ").expect("a start first");
        assert_eq!(
            *pair[1],
            format!("slow end {chain}"),
            "slow parts overlap: {entries:?}"
        );
    }
    for chain in chains {
        let end = entries
            .iter()
            .position(|e| *e == format!("slow end {chain}"))
            .expect("slow ended");
        let fast = entries
            .iter()
            .position(|e| *e == format!("fast {chain}"))
            .expect("fast ran");
        assert!(end < fast, "fast ran before its slow part: {entries:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_body_slow_parts_never_overlap_and_each_fast_part_follows_its_slow_part() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let (j1, j2) = (journal.clone(), journal.clone());
    // Concurrency 4: the worker could run both slow parts at once; only the
    // throttle keeps them apart.
    let _w = TestWorker::spawn(
        worker(&broker.addr, "demo")
            .concurrency(4)
            .task("demo.slow", move |ctx: TaskContext| {
                let j = j1.clone();
                async move {
                    let uuid: u64 = ctx.arg(0)?;
                    let key = format!("uuid:{uuid}");
                    ctx.throttle(BodyThrottle::new(1).key(key), async {
                        j.note(format!("slow start {}", ctx.chain_id));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        j.note(format!("slow end {}", ctx.chain_id));
                    })
                    .await?;
                    Ok(Value::Null)
                }
            })
            .task("demo.fast", move |ctx: TaskContext| {
                let j = j2.clone();
                async move {
                    j.note(format!("fast {}", ctx.chain_id));
                    Ok(Value::Null)
                }
            }),
    );
    let client = broker.client().await;
    let (slow, fast) = (Task::new("demo.slow"), Task::new("demo.fast"));
    let demo = || Chain::new([slow.si([10]), fast.si([10])]);
    // demo.delay(10); demo.delay(10)
    let ids = submit_all(&client, vec![demo(), demo()]).await;
    all_succeed(&client, &ids).await;
    check_demo(&journal.entries(), &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_declared_whole_task_throttle_from_the_task_name_defaults() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let (j1, j2) = (journal.clone(), journal.clone());
    let open = gate();
    let g = open.clone();
    // The worker declares the throttle for the task name (the seed's
    // `@throttle`); the submitter below never mentions it.
    let _w = TestWorker::spawn(
        worker(&broker.addr, "demo-declared")
            .concurrency(4)
            .task_with("demo.slow", whole_task(1, ""), move |ctx: TaskContext| {
                let (j, g) = (j1.clone(), g.clone());
                async move {
                    j.note(format!("slow start {}", ctx.chain_id));
                    pass(&g).await;
                    j.note(format!("slow end {}", ctx.chain_id));
                    Ok(Value::Null)
                }
            })
            .task("demo.fast", move |ctx: TaskContext| {
                let j = j2.clone();
                async move {
                    j.note(format!("fast {}", ctx.chain_id));
                    Ok(Value::Null)
                }
            }),
    );
    let client = broker.client().await;
    // The defaults reach the broker with the worker's hello.
    until_workers(&client, 1).await;
    let (slow, fast) = (Task::new("demo.slow"), Task::new("demo.fast"));
    let demo = || Chain::new([slow.si([10]), fast.si([10])]);
    let ids = submit_in_order(&client, vec![demo(), demo()]).await;
    // The second waits for its slot in the broker, holding no worker.
    until_throttle(&client, "demo.slow", "*", "one holder, one waiter", |t| {
        t.holders.len() == 1 && t.waiters == 1
    })
    .await;
    let waiting = client.get(&ids[1]).await.unwrap();
    assert_eq!(waiting.steps[0].state(), pb::StepState::Throttled);
    let workers = client.admin().list_workers().await.unwrap();
    assert_eq!(workers[0].in_flight.len(), 1, "{workers:?}");
    open.add_permits(2);
    all_succeed(&client, &ids).await;
    check_demo(&journal.entries(), &ids);
}

// ---------------------------------------------------------------------------
// Exactness under contention
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Form {
    Declared,
    InBody,
}

/// `n` tasks on one identity with `limit`, over three workers of
/// concurrency 4 (holding `prefetch` more assignments each): the most
/// bodies holding at once is exactly the limit, and every task ran exactly
/// once.
async fn exact_under_contention(form: Form, limit: u32, n: usize, hold: Duration, prefetch: u32) {
    let broker = TestBroker::start().await;
    let holders = Holders::default();
    let key = format!("exact-{limit}");
    let mut workers = Vec::new();
    for w in 0..3 {
        let h = holders.clone();
        let k = key.clone();
        workers.push(TestWorker::spawn(
            worker(&broker.addr, &format!("exact-{w}"))
                .concurrency(4)
                .prefetch(prefetch)
                .task("exact", move |ctx: TaskContext| {
                    let (h, k) = (h.clone(), k.clone());
                    async move {
                        let label: u64 = ctx.arg(0)?;
                        let _slot = match form {
                            Form::Declared => None,
                            Form::InBody => {
                                Some(ctx.acquire(BodyThrottle::new(limit).key(k)).await?)
                            }
                        };
                        let _hold = h.enter(label.to_string());
                        tokio::time::sleep(hold).await;
                        Ok(json!(label))
                    }
                }),
        ));
    }
    let client = broker.client().await;
    let task = Task::new("exact");
    let chains = (0..n)
        .map(|i| {
            let sig = task.si([i]);
            Chain::new(match form {
                Form::Declared => sig.throttle(Throttle::new(limit).key(key.clone())),
                Form::InBody => sig,
            })
        })
        .collect();
    let ids = submit_all(&client, chains).await;
    all_succeed(&client, &ids).await;
    assert_eq!(
        holders.max(),
        limit,
        "{form:?}: most holders at once must equal the limit"
    );
    let mut ran = holders.started();
    assert_eq!(ran.len(), n, "{form:?}: every task ran exactly once");
    ran.sort_by_key(|l| l.parse::<usize>().unwrap());
    ran.dedup();
    assert_eq!(ran.len(), n, "{form:?}: no task ran twice");
    assert_eq!(holders.now(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_limit_1_is_exact_under_contention() {
    exact_under_contention(Form::Declared, 1, 200, Duration::from_millis(2), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_limit_3_is_exact_under_contention() {
    exact_under_contention(Form::Declared, 3, 200, Duration::from_millis(15), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_body_limit_1_is_exact_under_contention() {
    exact_under_contention(Form::InBody, 1, 200, Duration::from_millis(2), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_body_limit_3_is_exact_under_contention() {
    exact_under_contention(Form::InBody, 3, 200, Duration::from_millis(15), 0).await;
}

/// Prefetched runs hold their declared slot while they wait in a worker,
/// and take an in-body slot only once they run: the limit holds either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_limit_3_is_exact_with_prefetching_workers() {
    exact_under_contention(Form::Declared, 3, 200, Duration::from_millis(15), 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_body_limit_1_is_exact_with_prefetching_workers() {
    exact_under_contention(Form::InBody, 1, 200, Duration::from_millis(2), 4).await;
}

// ---------------------------------------------------------------------------
// FIFO and head-of-line
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_waiters_start_in_submission_order() {
    let broker = TestBroker::start().await;
    let holders = Holders::default();
    let h = holders.clone();
    let open = gate();
    let g = open.clone();
    let _w = TestWorker::spawn(worker(&broker.addr, "fifo").concurrency(4).task(
        "fifo.job",
        move |ctx: TaskContext| {
            let (h, g) = (h.clone(), g.clone());
            async move {
                let label: u64 = ctx.arg(0)?;
                let _hold = h.enter(label.to_string());
                if label == 0 {
                    pass(&g).await;
                }
                Ok(Value::Null)
            }
        },
    ));
    let client = broker.client().await;
    let job = Task::new("fifo.job");
    let throttle = Throttle::new(1).key("fifo");
    let chains: Vec<Chain> = (0..25)
        .map(|i| Chain::new(job.si([i]).throttle(throttle.clone())))
        .collect();
    let ids = submit_in_order(&client, chains).await;
    until_throttle(&client, "fifo.job", "fifo", "24 waiters", |t| {
        t.waiters == 24
    })
    .await;
    open.add_permits(1);
    all_succeed(&client, &ids).await;
    let expected: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    assert_eq!(holders.started(), expected);
    assert_eq!(holders.max(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_body_waiters_are_granted_in_request_order_and_inspection_names_the_holder() {
    let broker = TestBroker::start().await;
    let holders = Holders::default();
    let h = holders.clone();
    let open = gate();
    let g = open.clone();
    let _w = TestWorker::spawn(worker(&broker.addr, "fifo-in").concurrency(10).task(
        "fifo.in",
        move |ctx: TaskContext| {
            let (h, g) = (h.clone(), g.clone());
            async move {
                let label: u64 = ctx.arg(0)?;
                let _slot = ctx.acquire(BodyThrottle::new(1).key("fifo-in")).await?;
                let _hold = h.enter(label.to_string());
                pass(&g).await;
                Ok(Value::Null)
            }
        },
    ));
    let client = broker.client().await;
    let job = Task::new("fifo.in");
    let before = now_ms();
    let mut ids = Vec::new();
    // One request at a time reaches the broker, so the order of requests
    // is known: each task is submitted once the previous one waits.
    for i in 0..8u64 {
        ids.push(client.submit(job.si([i])).await.unwrap().chain_id);
        let waiters = i;
        until_throttle(
            &client,
            "fifo.in",
            "fifo-in",
            "the request to arrive",
            |t| t.holders.len() == 1 && t.waiters == waiters,
        )
        .await;
    }
    let info = throttle_of(&client, "fifo.in", "fifo-in").await.unwrap();
    assert_eq!(info.limit, 1);
    assert!(!info.limit_overridden);
    let holder = &info.holders[0];
    assert_eq!(holder.kind, "in_body");
    assert_eq!(holder.task_id, task_id_of(&client, &ids[0]).await);
    assert_eq!(holder.chain_id, ids[0]);
    assert_eq!(holder.worker, "fifo-in");
    assert!(holder.since_unix_ms >= before, "{holder:?}");
    assert_eq!(info.waiters, 7);
    assert!(info.oldest_waiter_age_ms > 0, "{info:?}");
    // The waiters, in the order they will be served: the order they asked.
    let waiting: Vec<&str> = info
        .first_waiters
        .iter()
        .map(|w| w.chain_id.as_str())
        .collect();
    assert_eq!(
        waiting,
        ids[1..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        info.first_waiters
            .iter()
            .all(|w| w.kind == "in_body" && w.since_unix_ms >= before)
    );

    // Let the first go: the next holder counts from its grant, not from its
    // request.
    let released = now_ms();
    open.add_permits(1);
    let info = until_throttle(&client, "fifo.in", "fifo-in", "the next holder", |t| {
        t.holders.len() == 1 && t.waiters == 6
    })
    .await;
    let holder = &info.holders[0];
    assert_eq!(holder.task_id, task_id_of(&client, &ids[1]).await);
    assert_eq!(holder.worker, "fifo-in");
    assert!(
        holder.since_unix_ms >= released,
        "holder since {} is before the slot was released ({released})",
        holder.since_unix_ms
    );
    open.add_permits(7);
    all_succeed(&client, &ids).await;
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(holders.started(), expected);
    assert_eq!(holders.max(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_identity_does_not_hold_up_other_identities_or_unthrottled_tasks() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let j = journal.clone();
    let open = gate();
    let g = open.clone();
    // Concurrency 2: a queue blocked by its head would show at once.
    let _w = TestWorker::spawn(
        worker(&broker.addr, "hol")
            .concurrency(2)
            .task("hol.job", move |ctx: TaskContext| {
                let (j, g) = (j.clone(), g.clone());
                async move {
                    let label: String = ctx.arg(0)?;
                    j.note(label.clone());
                    if label == "hot-0" {
                        pass(&g).await;
                    }
                    Ok(Value::Null)
                }
            })
            .task("hol.plain", |_ctx: TaskContext| async { Ok(Value::Null) }),
    );
    let client = broker.client().await;
    let job = Task::new("hol.job");
    let hot = |i: usize| {
        Chain::new(
            job.si([format!("hot-{i}")])
                .throttle(Throttle::new(1).key("hot")),
        )
    };
    let hot_ids = submit_in_order(&client, (0..21).map(hot).collect()).await;
    until_throttle(
        &client,
        "hol.job",
        "hot",
        "the hot identity saturated",
        |t| t.holders.len() == 1 && t.waiters == 20,
    )
    .await;
    eventually("hot-0 to run", || journal.count("hot-0") == 1).await;
    // Same queue, same task name, another key; and unthrottled tasks.
    let mut others: Vec<Chain> = (0..20)
        .map(|i| {
            Chain::new(
                job.si([format!("cold-{i}")])
                    .throttle(Throttle::new(1).key(format!("cold-{}", i % 3))),
            )
        })
        .collect();
    others.extend((0..20).map(|i| Chain::new(Task::new("hol.plain").si([i]))));
    let other_ids = submit_all(&client, others).await;
    all_succeed(&client, &other_ids).await;
    // All of that flowed while the hot identity stayed saturated.
    let entries = journal.entries();
    assert_eq!(entries.iter().filter(|e| e.starts_with("hot-")).count(), 1);
    assert_eq!(
        entries.iter().filter(|e| e.starts_with("cold-")).count(),
        20
    );
    let info = throttle_of(&client, "hol.job", "hot").await.unwrap();
    assert_eq!((info.holders.len(), info.waiters), (1, 20));
    open.add_permits(1);
    all_succeed(&client, &hot_ids).await;
    let hot_order: Vec<String> = journal
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("hot-"))
        .collect();
    let expected: Vec<String> = (0..21).map(|i| format!("hot-{i}")).collect();
    assert_eq!(hot_order, expected);
}

// ---------------------------------------------------------------------------
// Live limits and inspection
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_limit_starts_waiters_at_once_and_lowering_takes_nothing_away() {
    let broker = TestBroker::start().await;
    let holders = Holders::default();
    let h = holders.clone();
    let open = gate();
    let g = open.clone();
    let _w = TestWorker::spawn(
        worker(&broker.addr, "live-worker")
            .concurrency(8)
            .task_with("live.job", whole_task(1, ""), move |ctx: TaskContext| {
                let (h, g) = (h.clone(), g.clone());
                async move {
                    let label: u64 = ctx.arg(0)?;
                    let _hold = h.enter(label.to_string());
                    pass(&g).await;
                    Ok(Value::Null)
                }
            }),
    );
    let client = broker.client().await;
    let admin = client.admin();
    until_workers(&client, 1).await;
    let before = now_ms();
    let job = Task::new("live.job");
    let ids = submit_in_order(
        &client,
        (0..6u64).map(|i| Chain::new(job.si([i]))).collect(),
    )
    .await;
    until_throttle(&client, "live.job", "*", "one holder, five waiters", |t| {
        t.holders.len() == 1 && t.waiters == 5
    })
    .await;
    eventually("the first body to hold", || holders.now() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Inspection: limit, the holder (task, worker, since), the waiters.
    let info = throttle_of(&client, "live.job", "*").await.unwrap();
    assert_eq!((info.limit, info.limit_overridden), (1, false));
    let holder = &info.holders[0];
    assert_eq!(holder.kind, "task");
    assert_eq!(holder.task_id, task_id_of(&client, &ids[0]).await);
    assert_eq!(holder.chain_id, ids[0]);
    assert_eq!(holder.worker, "live-worker");
    assert!(holder.since_unix_ms >= before && holder.since_unix_ms <= now_ms());
    assert_eq!(info.waiters, 5);
    assert!(
        info.oldest_waiter_age_ms >= 100,
        "the oldest waiter waited at least the 100 ms slept: {info:?}"
    );
    // The waiters hold no worker.
    let queues = admin.list_queues().await.unwrap();
    let general = queues.iter().find(|q| q.name == "general").unwrap();
    assert_eq!((general.throttled, general.running), (5, 1), "{general:?}");
    let workers = admin.list_workers().await.unwrap();
    assert_eq!(workers[0].in_flight.len(), 1);
    assert_eq!(
        client.get(&ids[5]).await.unwrap().steps[0].state(),
        pb::StepState::Throttled
    );

    // Raise: more start at once.
    let identity = pb::ThrottleIdentity::task("live.job", "*");
    let set = admin.set_throttle_limit(identity.clone(), 3).await.unwrap();
    assert_eq!((set.limit, set.limit_overridden), (3, true));
    eventually("three holders", || holders.now() == 3).await;
    let info = throttle_of(&client, "live.job", "*").await.unwrap();
    assert_eq!((info.limit, info.holders.len(), info.waiters), (3, 3, 3));
    assert!(info.holders.iter().all(|h| h.worker == "live-worker"));

    // Lower: nobody loses a slot, and nobody new starts until the holders
    // are fewer than the new limit.
    let set = admin.set_throttle_limit(identity.clone(), 1).await.unwrap();
    assert_eq!((set.limit, set.holders.len()), (1, 3));
    assert_eq!(holders.now(), 3);
    let lowered_at = holders.started().len();
    open.add_permits(2);
    eventually("two holders to finish", || holders.ended() == 2).await;
    // One still holds: with limit 1 nothing new may start.
    let info = until_throttle(&client, "live.job", "*", "two slots back", |t| {
        t.holders.len() == 1
    })
    .await;
    assert_eq!(info.waiters, 3);
    assert_eq!(holders.started().len(), lowered_at);
    // Clearing the override goes back to the declared concurrency (1).
    let set = admin.set_throttle_limit(identity, 0).await.unwrap();
    assert_eq!((set.limit, set.limit_overridden), (1, false));
    open.add_permits(4);
    all_succeed(&client, &ids).await;
    assert_eq!(holders.max(), 3);
    let after: Vec<u32> = holders.started_with_count()[lowered_at..]
        .iter()
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(after, [1, 1, 1], "after lowering, one at a time");
}

// ---------------------------------------------------------------------------
// Shared keys
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_key_is_one_identity_across_task_names_and_forms() {
    let broker = TestBroker::start().await;
    let tenant_42 = Holders::default();
    let tenant_43 = Holders::default();
    let open = gate();
    let body = |in_body: bool| {
        let (h42, h43, g) = (tenant_42.clone(), tenant_43.clone(), open.clone());
        move |ctx: TaskContext| {
            let (h42, h43, g) = (h42.clone(), h43.clone(), g.clone());
            async move {
                let tenant: u32 = ctx.arg(0)?;
                let label: u64 = ctx.arg(1)?;
                let _slot = if in_body {
                    let shared = BodyThrottle::new(2)
                        .key(format!("tenant:{tenant}"))
                        .shared();
                    Some(ctx.acquire(shared).await?)
                } else {
                    None
                };
                let h = if tenant == 42 { h42 } else { h43 };
                let _hold = h.enter(format!("{}:{label}", ctx.name));
                // Once open, the gate stays open (the permit is returned).
                drop(g.acquire().await.expect("gate"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Value::Null)
            }
        }
    };
    let _w = TestWorker::spawn(
        worker(&broker.addr, "tenants")
            .concurrency(30)
            .task("vm.provision", body(false))
            .task("volume.provision", body(false))
            .task("net.provision", body(true)),
    );
    let client = broker.client().await;
    let per_tenant = |t: u32| Throttle::new(2).key(format!("tenant:{t}")).shared();
    let (vm, volume, net) = (
        Task::new("vm.provision"),
        Task::new("volume.provision"),
        Task::new("net.provision"),
    );
    // The first two of tenant 42 are of two different task names.
    let first = submit_in_order(
        &client,
        vec![
            Chain::new(vm.si([42, 0]).throttle(per_tenant(42))),
            Chain::new(volume.si([42, 0]).throttle(per_tenant(42))),
        ],
    )
    .await;
    let info = until_throttle(&client, "", "tenant:42", "two holders", |t| {
        t.holders.len() == 2
    })
    .await;
    let mut holding: Vec<&str> = info.holders.iter().map(|h| h.chain_id.as_str()).collect();
    holding.sort_unstable();
    let mut expected: Vec<&str> = first.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(holding, expected);
    assert_eq!(info.limit, 2);

    let mut rest = Vec::new();
    for i in 1..10u64 {
        rest.push(Chain::new(vm.si([42, i]).throttle(per_tenant(42))));
        rest.push(Chain::new(volume.si([42, i]).throttle(per_tenant(42))));
        rest.push(Chain::new(net.si([42, i])));
        rest.push(Chain::new(vm.si([43, i]).throttle(per_tenant(43))));
        rest.push(Chain::new(net.si([43, i])));
    }
    let rest = submit_all(&client, rest).await;
    // Tenant 43 is another identity: it is not held up by tenant 42.
    eventually("tenant 43 to reach its limit", || tenant_43.now() == 2).await;
    assert_eq!(tenant_42.now(), 2);
    open.add_permits(1);
    all_succeed(&client, &first).await;
    all_succeed(&client, &rest).await;
    assert_eq!(tenant_42.max(), 2, "across vm, volume and net");
    assert_eq!(tenant_43.max(), 2);
    assert_eq!(tenant_42.started().len(), 2 + 27);
    assert_eq!(tenant_43.started().len(), 18);
}

// ---------------------------------------------------------------------------
// Chain-scoped throttles
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_scoped_slots_are_held_from_acquire_to_the_chain_end_whatever_the_end() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let note = |what: &'static str| {
        let j = journal.clone();
        move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                let label: String = ctx.arg(0)?;
                j.note(format!("{what} {label}"));
                Ok(Value::Null)
            }
        }
    };
    let _w = TestWorker::spawn(
        worker(&broker.addr, "chains")
            .concurrency(8)
            .task("cs.provision", note("acquire"))
            .task("cs.set_ok", note("end"))
            .task("cs.set_erred", note("end"))
            .task("cs.poll", |ctx: TaskContext| async move {
                // [label, polls before done]; -1 polls forever, -2 fails.
                let polls: i64 = ctx.arg(1)?;
                match polls {
                    -2 if ctx.polls >= 1 => Err(TaskError::fatal("backend said no")),
                    p if p < 0 || i64::from(ctx.polls) < p => {
                        Err(TaskError::retry_later(Duration::from_millis(30)))
                    }
                    _ => Ok(Value::Null),
                }
            }),
    );
    let client = broker.client().await;
    let per_tenant = Throttle::new(2).key("tenant:7").shared().chain_scoped();
    let chain = |label: &str, polls: i64| {
        Chain::new([
            Task::new("cs.provision")
                .si([label])
                .throttle(per_tenant.clone()),
            Task::new("cs.poll")
                .si(json!([label, polls]))
                .max_polls(10_000),
        ])
        .on_success(Task::new("cs.set_ok").si([label]))
        .on_failure(Task::new("cs.set_erred").si([label]))
    };
    // Two chains take both slots and sit in retry-later polls: one until
    // its deadline, one until it is cancelled.
    let deadline = chain("D", -1).deadline(SystemTime::now() + Duration::from_millis(2500));
    let held = submit_in_order(&client, vec![deadline, chain("C", -1)]).await;
    let (d, c) = (held[0].clone(), held[1].clone());
    // Five more, submitted at once; one of them fails.
    let five = submit_all(
        &client,
        vec![
            chain("N0", 2),
            chain("N1", 2),
            chain("N2", 3),
            chain("N3", -2),
            chain("N4", 1),
        ],
    )
    .await;
    let info = until_throttle(
        &client,
        "",
        "tenant:7",
        "two chains holding, five waiting",
        |t| t.holders.len() == 2 && t.waiters == 5,
    )
    .await;
    assert!(info.holders.iter().all(|h| h.kind == "chain"));
    let mut holding: Vec<String> = info.holders.iter().map(|h| h.chain_id.clone()).collect();
    holding.sort();
    let mut expected = vec![d.clone(), c.clone()];
    expected.sort();
    assert_eq!(holding, expected);
    // C sits in a retry-later poll: it still holds, nobody else started.
    let start = std::time::Instant::now();
    loop {
        let chain = client.get(&c).await.unwrap();
        if chain.steps[1].polls >= 2 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "C never polled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        journal
            .entries()
            .iter()
            .all(|e| !e.starts_with("acquire N")),
        "{:?}",
        journal.entries()
    );
    // Recorded before the call, so the recorded span is inside the real one.
    journal.note("end C");
    assert_eq!(
        client.cancel(&c, "user asked").await.unwrap(),
        pb::ChainState::Cancelled
    );
    let ends = outcomes(&client, &five).await;
    for (label, outcome) in ["N0", "N1", "N2", "N3", "N4"].iter().zip(&ends) {
        match (*label, outcome) {
            ("N3", ChainOutcome::Failed(f)) => assert_eq!(f.message, "backend said no"),
            (_, ChainOutcome::Succeeded(_)) if *label != "N3" => {}
            _ => panic!("{label} ended {outcome:?}"),
        }
    }
    let ChainOutcome::Failed(f) = client.wait_timeout(&d, PATIENCE).await.unwrap() else {
        panic!("D should fail on its deadline")
    };
    assert_eq!(f.error_type, "DeadlineExceeded");

    // At no instant were more than two chains between acquire and end.
    let entries = journal.entries();
    let (mut open_chains, mut max) = (HashSet::new(), 0);
    for entry in &entries {
        if let Some(label) = entry.strip_prefix("acquire ") {
            assert!(open_chains.insert(label.to_owned()), "{entries:?}");
        } else if let Some(label) = entry.strip_prefix("end ") {
            assert!(open_chains.remove(label), "{entries:?}");
        }
        max = max.max(open_chains.len());
    }
    assert_eq!(max, 2, "{entries:?}");
    assert!(open_chains.is_empty(), "{entries:?}");
    assert_eq!(entries.len(), 14, "{entries:?}");
    // Every end (success, failure, cancel, deadline) gave its slot back.
    until_throttle(&client, "", "tenant:7", "every slot back", |t| {
        t.holders.is_empty() && t.waiters == 0
    })
    .await;
}

// ---------------------------------------------------------------------------
// Slots come back on every end, and only then
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_task_takes_its_slot_only_with_a_worker_and_cancel_or_deadline_leave_no_trace()
{
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let j = journal.clone();
    let open = gate();
    let g = open.clone();
    // Concurrency 1, taken by a long task: a throttled task with a free
    // slot still waits, holding nothing, because slot and worker are taken
    // together (a slot reserved for a task that waits for a worker could
    // wait forever behind bodies waiting in-body for that same slot).
    let _w = TestWorker::spawn(
        worker(&broker.addr, "busy")
            .concurrency(1)
            .task("busy.long", move |_ctx: TaskContext| {
                let g = g.clone();
                async move {
                    pass(&g).await;
                    Ok(Value::Null)
                }
            })
            .task("leak.job", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    let label: String = ctx.arg(0)?;
                    j.note(label);
                    Ok(Value::Null)
                }
            }),
    );
    let client = broker.client().await;
    let long = client.submit(Task::new("busy.long").si(())).await.unwrap();
    let start = std::time::Instant::now();
    while client.get(&long.chain_id).await.unwrap().steps[0].state() != pb::StepState::Running {
        assert!(start.elapsed() < PATIENCE, "the long task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = Task::new("leak.job");
    let throttle = Throttle::new(1).key("leak");
    let cancelled = client
        .submit(job.si(["cancelled"]).throttle(throttle.clone()))
        .await
        .unwrap()
        .chain_id;
    until_throttle(&client, "leak.job", "leak", "a waiter and no holder", |t| {
        t.waiters == 1 && t.holders.is_empty()
    })
    .await;
    assert_eq!(
        client.get(&cancelled).await.unwrap().steps[0].state(),
        pb::StepState::Throttled
    );
    client.cancel(&cancelled, "not needed").await.unwrap();
    until_throttle(&client, "leak.job", "leak", "no waiter after cancel", |t| {
        t.holders.is_empty() && t.waiters == 0
    })
    .await;

    let expired = client
        .submit(
            Chain::new(job.si(["expired"]).throttle(throttle.clone()))
                .deadline(SystemTime::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap()
        .chain_id;
    let ChainOutcome::Failed(f) = client.wait_timeout(&expired, PATIENCE).await.unwrap() else {
        panic!("the deadline should fail the chain")
    };
    assert_eq!(f.error_type, "DeadlineExceeded");
    until_throttle(
        &client,
        "leak.job",
        "leak",
        "no waiter after the deadline",
        |t| t.holders.is_empty() && t.waiters == 0,
    )
    .await;

    let ok = client
        .submit(job.si(["ok"]).throttle(throttle))
        .await
        .unwrap()
        .chain_id;
    open.add_permits(1);
    all_succeed(&client, &[long.chain_id, ok]).await;
    assert_eq!(journal.entries(), ["ok"]);
}

/// A worker session driven by hand: the raw protocol, for what the SDK
/// never does on purpose (stale reports, no heartbeats).
struct RawWorker {
    up: Option<mpsc::UnboundedSender<pb::WorkerMessage>>,
    down: tonic::Streaming<pb::BrokerMessage>,
}

impl RawWorker {
    async fn connect(addr: &str, name: &str, task: pb::TaskDefinition, concurrency: u32) -> Self {
        let mut client = pb::worker_client::WorkerClient::connect(addr.to_owned())
            .await
            .expect("connect");
        let (up, rx) = mpsc::unbounded_channel();
        let hello = pb::Hello {
            worker_name: name.into(),
            tasks: vec![task],
            concurrency,
            ..Default::default()
        };
        up.send(pb::WorkerMessage {
            msg: Some(Up::Hello(hello)),
        })
        .unwrap();
        let down = client
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        let mut worker = RawWorker { up: Some(up), down };
        assert!(matches!(worker.next().await, Down::Welcome(_)));
        worker
    }

    fn send(&self, msg: Up) {
        self.up
            .as_ref()
            .expect("open")
            .send(pb::WorkerMessage { msg: Some(msg) })
            .expect("send");
    }

    /// Sends heartbeats for all its assignments until the session drops.
    fn keep_alive(&self) {
        self.beat(pb::Heartbeat::default());
    }

    /// Keeps the stream open (a silent one is ended after a lease) with
    /// heartbeats that extend none of its assignments, so their leases
    /// lapse while the worker stays connected.
    fn keep_stream_only(&self) {
        self.beat(pb::Heartbeat {
            tasks: vec![pb::TaskRef {
                task_id: "no-such-task".into(),
                attempt: 1,
            }],
        });
    }

    fn beat(&self, heartbeat: pb::Heartbeat) {
        let up = self.up.clone().expect("open");
        tokio::spawn(async move {
            let beat = pb::WorkerMessage {
                msg: Some(Up::Heartbeat(heartbeat)),
            };
            while up.send(beat.clone()).is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    async fn next(&mut self) -> Down {
        tokio::time::timeout(PATIENCE, self.down.message())
            .await
            .expect("a message from the broker in time")
            .expect("stream ok")
            .expect("stream open")
            .msg
            .expect("message body")
    }

    async fn assignment(&mut self) -> pb::TaskRef {
        match self.next().await {
            Down::Assignment(a) => a.task.unwrap(),
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    fn outcome(&self, task: &pb::TaskRef) {
        self.send(Up::Outcome(pb::Outcome {
            task: Some(task.clone()),
            result: Some(pb::outcome::Result::Success(pb::Success::default())),
        }));
    }

    async fn ack(&mut self) -> bool {
        match self.next().await {
            Down::OutcomeAck(ack) => ack.accepted,
            other => panic!("expected an outcome ack, got {other:?}"),
        }
    }
}

fn task_def(name: &str, defaults: Option<pb::Options>) -> pb::TaskDefinition {
    pb::TaskDefinition {
        name: name.into(),
        defaults,
    }
}

fn acquire(request_id: u64, task: &pb::TaskRef, key: &str) -> Up {
    Up::ThrottleAcquire(pb::ThrottleAcquire {
        request_id,
        task: Some(task.clone()),
        throttle: Some(pb::Throttle {
            concurrency: 1,
            key: key.into(),
            ..Default::default()
        }),
    })
}

fn release(request_id: u64, task: &pb::TaskRef) -> Up {
    Up::ThrottleRelease(pb::ThrottleRelease {
        request_id,
        task: Some(task.clone()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_outcome_or_release_never_frees_a_slot() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_millis(1000)).await;
    let client = broker.client().await;
    let def = task_def("stale.job", Some(whole_task(1, "st")));
    // A takes X and an in-body slot, then lets X's lease lapse (its
    // heartbeats name no run of its) and stops taking work.
    let mut a = RawWorker::connect(&broker.addr, "A", def.clone(), 1).await;
    a.keep_stream_only();
    let job = Task::new("stale.job");
    let ids = submit_in_order(
        &client,
        vec![Chain::new(job.si(["x"])), Chain::new(job.si(["y"]))],
    )
    .await;
    let (x, y) = (ids[0].clone(), ids[1].clone());
    let x1 = a.assignment().await;
    assert_eq!(x1.attempt, 1);
    a.send(acquire(1, &x1, "inner"));
    assert!(matches!(a.next().await, Down::ThrottleGranted(g) if g.request_id == 1));
    a.send(Up::Drain(pb::Drain {}));
    // B is alive. Once A's lease lapses, X's slots come back: Y (first in
    // line) gets the declared slot and goes to B; X waits behind it.
    let mut b = RawWorker::connect(&broker.addr, "B", def, 2).await;
    b.keep_alive();
    let y1 = b.assignment().await;
    assert_eq!(y1.task_id, task_id_of(&client, &y).await);
    assert!(matches!(a.next().await, Down::Cancel(c) if c.task == Some(x1.clone())));
    // B's body takes the in-body slot A held, with the same request id.
    b.send(acquire(1, &y1, "inner"));
    assert!(matches!(b.next().await, Down::ThrottleGranted(g) if g.request_id == 1));

    // A's stale reports: its own lapsed run, and B's run.
    a.outcome(&x1);
    assert!(!a.ack().await, "a stale outcome is rejected");
    a.send(release(1, &x1));
    assert!(matches!(a.next().await, Down::Error(_)));
    a.send(release(1, &y1));
    assert!(matches!(a.next().await, Down::Error(_)));
    a.outcome(&y1);
    assert!(!a.ack().await, "another worker's outcome is rejected");

    // Nothing was freed: Y still holds both slots, X still waits.
    let declared = throttle_of(&client, "stale.job", "st").await.unwrap();
    assert_eq!(declared.holders.len(), 1);
    assert_eq!(declared.holders[0].task_id, y1.task_id);
    assert_eq!(declared.holders[0].worker, "B");
    assert_eq!(declared.waiters, 1);
    let inner = throttle_of(&client, "stale.job", "inner").await.unwrap();
    assert_eq!(inner.holders.len(), 1);
    assert_eq!(
        (
            inner.holders[0].kind.as_str(),
            inner.holders[0].task_id.as_str()
        ),
        ("in_body", y1.task_id.as_str())
    );
    assert_eq!(inner.holders[0].worker, "B");
    let x_now = client.get(&x).await.unwrap();
    assert_eq!(x_now.steps[0].state(), pb::StepState::Throttled);
    assert_eq!(x_now.state(), pb::ChainState::Running);

    // B's own reports are current: Y ends, X runs again (attempt 2) on B.
    b.send(release(1, &y1));
    b.outcome(&y1);
    assert!(b.ack().await);
    let x2 = b.assignment().await;
    assert_eq!((x2.task_id.as_str(), x2.attempt), (x1.task_id.as_str(), 2));
    b.outcome(&x2);
    assert!(b.ack().await);
    all_succeed(&client, &ids).await;
    assert_eq!(client.get(&x).await.unwrap().steps[0].attempts, 2);
    until_throttle(&client, "stale.job", "st", "every slot back", |t| {
        t.holders.is_empty()
    })
    .await;
    assert!(
        throttle_of(&client, "stale.job", "inner")
            .await
            .is_none_or(|t| t.holders.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_frees_slots_at_once_and_a_broken_stream_keeps_them_for_the_lease() {
    // A lease far longer than the test's patience: only a goodbye can free
    // the slot in time.
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_secs(600)).await;
    let client = broker.client().await;
    let journal = Journal::default();
    let standby = |name: &str| {
        let j = journal.clone();
        TestWorker::spawn(worker(&broker.addr, name).concurrency(2).task(
            "gb.job",
            move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    let label: String = ctx.arg(0)?;
                    j.note(format!("{label} {}", ctx.attempt));
                    Ok(Value::Null)
                }
            },
        ))
    };
    let def = task_def("gb.job", None);
    let job = Task::new("gb.job");
    let throttle = Throttle::new(1).key("gb");
    let one = |label: &str| Chain::new(job.si([label]).throttle(throttle.clone()));

    // A takes X; Y waits for the slot. A healthy worker stands by and gets
    // nothing while A holds it.
    let mut a = RawWorker::connect(&broker.addr, "leaving", def.clone(), 1).await;
    let ids = submit_in_order(&client, vec![one("x"), one("y")]).await;
    let x1 = a.assignment().await;
    let first = standby("standby-1");
    until_workers(&client, 2).await;
    a.send(Up::Goodbye(pb::Goodbye {}));
    all_succeed(&client, &ids).await;
    assert_eq!(journal.entries(), ["y 1", "x 2"]);
    assert_eq!(
        client.get(&ids[0]).await.unwrap().steps[0].task_id,
        x1.task_id
    );
    first.stop().await;
    until_workers(&client, 0).await;

    // C takes Z; W waits. A standby is connected and idle. C's stream then
    // ends without a goodbye: once the broker has noticed, Z still holds
    // the slot (until its lease lapses, longer than this test) and W waits.
    let mut c = RawWorker::connect(&broker.addr, "crashing", def, 1).await;
    let z = client.submit(one("z")).await.unwrap().chain_id;
    let z1 = c.assignment().await;
    let w = client.submit(one("w")).await.unwrap().chain_id;
    let _second = standby("standby-2");
    until_workers(&client, 2).await;
    c.up = None;
    until_workers(&client, 1).await;
    let info = throttle_of(&client, "gb.job", "gb").await.unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].task_id, z1.task_id);
    assert_eq!(info.holders[0].worker, "crashing");
    assert_eq!(info.waiters, 1);
    let (z, w) = (client.get(&z).await.unwrap(), client.get(&w).await.unwrap());
    assert_eq!(z.steps[0].state(), pb::StepState::Running);
    assert_eq!(w.steps[0].state(), pb::StepState::Throttled);
    assert_eq!(journal.entries(), ["y 1", "x 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_name_throttle_applies_to_work_submitted_before_any_worker_declared_it() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    // Submitted while no worker has declared the task name yet; the
    // submitter does not mention the throttle.
    let job = Task::new("late.job");
    let ids = submit_in_order(
        &client,
        (0..8u64).map(|i| Chain::new(job.si([i]))).collect(),
    )
    .await;
    let holders = Holders::default();
    let h = holders.clone();
    let _w = TestWorker::spawn(worker(&broker.addr, "late").concurrency(4).task_with(
        "late.job",
        whole_task(1, ""),
        move |ctx: TaskContext| {
            let h = h.clone();
            async move {
                let label: u64 = ctx.arg(0)?;
                let _hold = h.enter(label.to_string());
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Value::Null)
            }
        },
    ));
    all_succeed(&client, &ids).await;
    assert_eq!(
        holders.max(),
        1,
        "the task name's throttle applies to them too"
    );
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(holders.started(), expected, "in submission order");
}

/// A slot holder is never prefetched, so it needs an idle run slot; a
/// stream of other work must not keep every run slot and prefetch full
/// forever. The worker it waits for takes no more prefetch work until a run
/// slot frees, so the throttled task starts after the few already
/// prefetched, not after the whole backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_task_is_not_starved_by_a_backlog_of_prefetched_work() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let jp = journal.clone();
    let _w = TestWorker::spawn(
        worker(&broker.addr, "one")
            .concurrency(1)
            .prefetch(2)
            .task("plain", move |_ctx: TaskContext| {
                let j = jp.clone();
                async move {
                    j.note("plain");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(Value::Null)
                }
            })
            .task("declared", notes(&journal, "declared")),
    );
    let plain = || Chain::from(Task::new("plain").si(()));
    let mut chains: Vec<Chain> = (0..20).map(|_| plain()).collect();
    chains.push(Chain::from(
        Task::new("declared")
            .si(())
            .throttle(Throttle::new(1).key("t")),
    ));
    chains.extend((0..40).map(|_| plain()));
    let ids = submit_in_order(&client, chains).await;
    all_succeed(&client, &ids).await;
    let entries = journal.entries();
    let at = entries
        .iter()
        .position(|e| e == "declared")
        .expect("declared ran");
    // Submitted 21st: it may wait for what was assigned before it and for
    // a drained prefetch, not for the 40 submitted after it.
    assert!(
        at < 30,
        "the throttled task started {at}th of {}",
        entries.len()
    );
}

/// What the deadlock tests' bodies return.
type Body = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, TaskError>> + Send>>;

/// The shared key `k`, limit 1, that the deadlock tests take both declared
/// and in-body.
fn shared_k() -> BodyThrottle {
    BodyThrottle::new(1).key("k").shared()
}

/// A body that notes `label` and succeeds.
fn notes(
    journal: &Journal,
    label: &'static str,
) -> impl Fn(TaskContext) -> Body + Send + Sync + use<> {
    let journal = journal.clone();
    move |_ctx| {
        journal.note(label);
        Box::pin(async { Ok(Value::Null) })
    }
}

/// A body that takes `k` in-body, notes `label` while it holds it, and
/// succeeds.
fn notes_holding_k(
    journal: &Journal,
    label: &'static str,
) -> impl Fn(TaskContext) -> Body + Send + Sync + use<> {
    let journal = journal.clone();
    move |ctx| {
        let journal = journal.clone();
        Box::pin(async move {
            ctx.throttle(shared_k(), async { journal.note(label) })
                .await?;
            Ok(Value::Null)
        })
    }
}

/// Submits one task and returns its chain id.
async fn submit_one(client: &Client, task: impl Into<Chain>) -> String {
    client.submit(task).await.expect("submit").chain_id
}

/// The shape the chaos harness found: one worker slot, one identity taken
/// both declared and in-body. A declared task that was granted its slot
/// while it still waited for a worker could wait forever behind a body
/// that waits in-body for that same slot. Slot and worker are taken
/// together instead, so every chain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_and_in_body_waiters_on_one_identity_never_deadlock() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let open = gate();
    let (g, jb) = (open.clone(), journal.clone());
    let _w = TestWorker::spawn(
        worker(&broker.addr, "one")
            .concurrency(1)
            .task("b.inbody", move |ctx: TaskContext| {
                let (g, j) = (g.clone(), jb.clone());
                async move {
                    ctx.throttle(shared_k(), async {
                        j.note("b holds");
                        pass(&g).await;
                    })
                    .await?;
                    Ok(Value::Null)
                }
            })
            .task("a.declared", notes(&journal, "a runs"))
            .task("c.inbody", notes_holding_k(&journal, "c holds")),
    );
    let b = submit_one(&client, Task::new("b.inbody").si(())).await;
    eventually("b to hold the slot", || journal.count("b holds") == 1).await;
    let declared = Throttle::new(1).key("k").shared();
    let a = submit_one(&client, Task::new("a.declared").si(()).throttle(declared)).await;
    let c = submit_one(&client, Task::new("c.inbody").si(())).await;
    let start = std::time::Instant::now();
    while client.get(&c).await.unwrap().steps[0].state() != pb::StepState::Ready {
        assert!(start.elapsed() < PATIENCE, "c never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        client.get(&a).await.unwrap().steps[0].state(),
        pb::StepState::Throttled
    );
    open.add_permits(1);
    all_succeed(&client, &[b, a, c]).await;
    assert_eq!(journal.entries(), ["b holds", "a runs", "c holds"]);
}

/// The same cycle through a worker's prefetch: a declared slot granted to
/// a task that then waits in a worker's prefetch, behind runs whose bodies
/// wait in-body for that slot, never starts. Found by the chaos harness
/// under frequent broker kills. A slot holder goes only to a worker with
/// an idle run slot, so every chain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_holder_never_waits_in_a_prefetch_behind_its_own_waiters() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let (release, finish) = (gate(), gate());
    let (g1, g2, jb) = (release.clone(), finish.clone(), journal.clone());
    let _w = TestWorker::spawn(
        worker(&broker.addr, "one")
            .concurrency(2)
            .prefetch(2)
            .task("b.inbody", move |ctx: TaskContext| {
                let (g1, g2, j) = (g1.clone(), g2.clone(), jb.clone());
                async move {
                    ctx.throttle(shared_k(), async {
                        j.note("b holds");
                        pass(&g1).await;
                    })
                    .await?;
                    // Released, but still running: its worker stays full.
                    pass(&g2).await;
                    Ok(Value::Null)
                }
            })
            .task("a.declared", notes(&journal, "a runs"))
            .task("w.inbody", notes_holding_k(&journal, "w holds")),
    );
    let b = submit_one(&client, Task::new("b.inbody").si(())).await;
    eventually("b to hold the slot", || journal.count("b holds") == 1).await;
    let declared = Throttle::new(1).key("k").shared();
    let a = submit_one(&client, Task::new("a.declared").si(()).throttle(declared)).await;
    // c runs beside b and waits in-body behind a; d is prefetched.
    let c = submit_one(&client, Task::new("w.inbody").si(())).await;
    until_throttle(&client, "", "k", "a and c to wait", |t| t.waiters == 2).await;
    let d = submit_one(&client, Task::new("w.inbody").si(())).await;
    let start = std::time::Instant::now();
    while client.get(&d).await.unwrap().steps[0].state() != pb::StepState::Running {
        assert!(start.elapsed() < PATIENCE, "d was never prefetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // b lets go of the slot but keeps its run slot: a must not be handed
    // the slot into the prefetch, behind d.
    release.add_permits(1);
    all_succeed(&client, &[a, c, d]).await;
    finish.add_permits(1);
    all_succeed(&client, &[b]).await;
    assert_eq!(journal.count("a runs"), 1);
    assert_eq!(journal.count("w holds"), 2);
}

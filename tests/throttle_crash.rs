//! Throttles across crashes of real processes.
//!
//! - A worker process (`examples/throttle_worker.rs`) killed with SIGKILL
//!   while it holds a declared and an in-body slot: its tasks come back and
//!   its slots are reclaimed once its lease lapses, never while the lease
//!   could still be current.
//! - The broker binary killed with SIGKILL while slots are held, then
//!   restarted on the same data: the workers reconnect, no identity ever
//!   exceeds its limit (as the bodies count it) and no task is lost.
//!
//! The killed worker's journal is an append-only file written one line per
//! event, so what it recorded before the kill can be trusted.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton::{Chain, ChainOutcome, Client, Task, pb};
use baton_worker::{TaskContext, Throttle as BodyThrottle};
use common::*;
use serde_json::Value;

/// The example worker built next to this test
/// (target/<profile>/examples/throttle_worker).
fn throttle_worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir
        .join("examples")
        .join(format!("throttle_worker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --examples` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A throttle_worker process; killed on drop if still running.
struct WorkerProcess {
    child: tokio::process::Child,
}

impl WorkerProcess {
    fn spawn(addr: &str, journal: &Path, name: &str, concurrency: u32) -> Self {
        let child = tokio::process::Command::new(throttle_worker_binary())
            .args(["--addr", addr, "--name", name, "--journal"])
            .arg(journal)
            .args(["--concurrency", &concurrency.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn throttle_worker");
        WorkerProcess { child }
    }

    /// kill -9 of this process (by its handle), and wait until it is gone.
    async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }
}

/// One line of a throttle_worker journal.
#[derive(Clone, Debug, PartialEq)]
struct Event {
    micros: u128,
    event: String,
    task_name: String,
    label: String,
    task_id: String,
    attempt: u32,
}

fn read_journal(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 6, "malformed journal line {line:?}");
            Event {
                micros: f[0].parse().expect("micros"),
                event: f[1].into(),
                task_name: f[2].into(),
                label: f[3].into(),
                task_id: f[4].into(),
                attempt: f[5].parse().expect("attempt"),
            }
        })
        .collect()
}

fn has(events: &[Event], event: &str, label: &str) -> bool {
    events.iter().any(|e| e.event == event && e.label == label)
}

fn micros_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros()
}

async fn until_workers(client: &Client, what: &str, check: impl Fn(&[pb::WorkerInfo]) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let workers = client.admin().list_workers().await.expect("list workers");
        if check(&workers) {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn throttle_of(client: &Client, task_name: &str, key: &str) -> pb::ThrottleInfo {
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
        .unwrap_or_default()
}

async fn until_throttle(
    client: &Client,
    task_name: &str,
    key: &str,
    what: &str,
    check: impl Fn(&pb::ThrottleInfo) -> bool,
) {
    let start = std::time::Instant::now();
    loop {
        let info = throttle_of(client, task_name, key).await;
        if check(&info) {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting for {what}; last seen {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_journal(path: &Path, what: &str, check: impl Fn(&[Event]) -> bool) {
    let start = std::time::Instant::now();
    while !check(&read_journal(path)) {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_succeed(client: &Client, ids: &[String]) {
    for id in ids {
        let outcome = client.wait_timeout(id, PATIENCE).await.expect("wait");
        assert!(
            matches!(outcome, ChainOutcome::Succeeded(_)),
            "chain {id} ended {outcome:?}"
        );
    }
}

/// Checks that the hold intervals of one identity never overlap. A start
/// without an end held until `killed_at` (its process died then).
fn assert_one_at_a_time(events: &[Event], task_name: &str, killed_at: u128) {
    let mut spans: Vec<(u128, u128, String)> = Vec::new();
    for start in events
        .iter()
        .filter(|e| e.event == "start" && e.task_name == task_name)
    {
        let end = events
            .iter()
            .find(|e| e.event == "end" && e.task_id == start.task_id && e.attempt == start.attempt)
            .map_or(killed_at, |e| e.micros);
        spans.push((
            start.micros,
            end,
            format!("{}#{}", start.label, start.attempt),
        ));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{task_name}: {} and {} held at once: {spans:?}",
            pair[0].2,
            pair[1].2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_gets_its_slots_reclaimed_when_its_lease_lapses_never_before() {
    let lease = Duration::from_millis(2000);
    let broker = TestBroker::start_with(|c| c.lease = lease).await;
    let client = broker.client().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (doomed_log, rescuer_log) = (
        dir.path().join("doomed.log"),
        dir.path().join("rescuer.log"),
    );

    // The doomed worker takes d1 (whole-task throttle `tw`) and i1 (in-body
    // slot `tw-in`) and holds them; d2 waits in the broker, i2 runs on the
    // doomed worker and waits for its in-body slot.
    let doomed = WorkerProcess::spawn(&broker.addr, &doomed_log, "doomed", 3);
    until_workers(&client, "the doomed worker", |w| w.len() == 1).await;
    let (declared, in_body) = (Task::new("tw.declared"), Task::new("tw.inbody"));
    let hold_forever = 600_000;
    let d1 = client
        .submit(declared.si(json_args("d1", hold_forever)))
        .await
        .unwrap()
        .chain_id;
    let i1 = client
        .submit(in_body.si(json_args("i1", hold_forever)))
        .await
        .unwrap()
        .chain_id;
    until_journal(&doomed_log, "d1 and i1 to hold", |e| {
        has(e, "start", "d1") && has(e, "start", "i1")
    })
    .await;
    let d2 = client
        .submit(declared.si(json_args("d2", 50)))
        .await
        .unwrap()
        .chain_id;
    let i2 = client
        .submit(in_body.si(json_args("i2", 50)))
        .await
        .unwrap()
        .chain_id;
    until_throttle(&client, "tw.declared", "tw", "d2 to wait", |t| {
        t.waiters == 1
    })
    .await;
    until_throttle(&client, "tw.inbody", "tw-in", "i2 to wait", |t| {
        t.waiters == 1
    })
    .await;

    // A healthy worker stands by, idle: nothing it may run is free yet.
    let _rescuer = WorkerProcess::spawn(&broker.addr, &rescuer_log, "rescuer", 4);
    until_workers(&client, "the rescuer", |w| w.len() == 2).await;

    doomed.kill9().await;
    let killed_at = micros_now();
    until_workers(&client, "the broker to see the doomed worker gone", |w| {
        w.iter().all(|w| w.worker_name != "doomed")
    })
    .await;
    // The broker knows the worker is gone, but its lease may still be
    // current: its slots stay taken and nobody else starts.
    let observed_at = micros_now();
    let task_of = |chain: &pb::Chain| chain.steps[0].task_id.clone();
    let (d1_task, i1_task) = (
        task_of(&client.get(&d1).await.unwrap()),
        task_of(&client.get(&i1).await.unwrap()),
    );
    let held = throttle_of(&client, "tw.declared", "tw").await;
    assert_eq!(held.holders.len(), 1, "{held:?}");
    assert_eq!(
        (
            held.holders[0].task_id.as_str(),
            held.holders[0].worker.as_str()
        ),
        (d1_task.as_str(), "doomed")
    );
    let held = throttle_of(&client, "tw.inbody", "tw-in").await;
    assert_eq!(held.holders.len(), 1, "{held:?}");
    assert_eq!(
        (
            held.holders[0].kind.as_str(),
            held.holders[0].task_id.as_str()
        ),
        ("in_body", i1_task.as_str())
    );
    assert_eq!(
        client.get(&d2).await.unwrap().steps[0].state(),
        pb::StepState::Throttled
    );

    // Once the lease lapses, everything runs on the rescuer.
    let ids = [d1.clone(), i1.clone(), d2.clone(), i2.clone()];
    all_succeed(&client, &ids).await;

    let doomed_events = read_journal(&doomed_log);
    let rescued = read_journal(&rescuer_log);
    // What the doomed worker did before it died: held d1 and i1, no end.
    assert!(has(&doomed_events, "start", "d1") && has(&doomed_events, "start", "i1"));
    assert!(has(&doomed_events, "asked", "i2"));
    assert!(
        !doomed_events.iter().any(|e| e.event == "end"),
        "{doomed_events:?}"
    );
    // The rescuer started nothing before the observation that the slots
    // were still held after the broker saw the worker go.
    assert!(
        rescued
            .iter()
            .filter(|e| e.event == "start")
            .all(|e| e.micros > observed_at),
        "{rescued:?}"
    );
    // Redelivered with the next attempt: d1, i1 and i2 (lost with the
    // worker); d2 ran once, before d1 came back (it waited first).
    let starts: Vec<(String, u32)> = rescued
        .iter()
        .filter(|e| e.event == "start")
        .map(|e| (e.label.clone(), e.attempt))
        .collect();
    for expected in [("d1", 2), ("i1", 2), ("i2", 2), ("d2", 1)] {
        assert!(
            starts.contains(&(expected.0.to_owned(), expected.1)),
            "{expected:?} missing from {starts:?}"
        );
    }
    assert_eq!(starts.len(), 4, "{starts:?}");
    let declared_order: Vec<&str> = rescued
        .iter()
        .filter(|e| e.event == "start" && e.task_name == "tw.declared")
        .map(|e| e.label.as_str())
        .collect();
    assert_eq!(declared_order, ["d2", "d1"]);
    for (id, attempts) in [(&d1, 2), (&i1, 2), (&i2, 2), (&d2, 1)] {
        assert_eq!(client.get(id).await.unwrap().steps[0].attempts, attempts);
    }
    // Across both processes, one holder per identity at any instant.
    let mut all = doomed_events;
    all.extend(rescued);
    assert_one_at_a_time(&all, "tw.declared", killed_at);
    assert_one_at_a_time(&all, "tw.inbody", killed_at);
}

/// `[label, hold_ms, later_ms]`: the first attempt holds `hold_ms`, a
/// redelivery 50 ms.
fn json_args(label: &str, hold_ms: u64) -> Value {
    serde_json::json!([label, hold_ms, 50])
}

/// Counts bodies holding per identity and every label that started.
#[derive(Clone, Default)]
struct Gauges(Arc<Mutex<GaugesState>>);

#[derive(Default)]
struct GaugesState {
    now: HashMap<&'static str, u32>,
    max: HashMap<&'static str, u32>,
    started: Vec<String>,
}

struct Held(Gauges, &'static str);

impl Drop for Held {
    fn drop(&mut self) {
        *self
            .0
            .0
            .lock()
            .expect("gauges")
            .now
            .entry(self.1)
            .or_default() -= 1;
    }
}

impl Gauges {
    fn enter(&self, identity: &'static str, label: String) -> Held {
        let mut s = self.0.lock().expect("gauges");
        let now = {
            let n = s.now.entry(identity).or_default();
            *n += 1;
            *n
        };
        let max = s.max.entry(identity).or_default();
        *max = (*max).max(now);
        s.started.push(label);
        Held(self.clone(), identity)
    }

    fn now(&self, identity: &str) -> u32 {
        self.0
            .lock()
            .expect("gauges")
            .now
            .get(identity)
            .copied()
            .unwrap_or(0)
    }

    fn max(&self, identity: &str) -> u32 {
        self.0
            .lock()
            .expect("gauges")
            .max
            .get(identity)
            .copied()
            .unwrap_or(0)
    }

    fn started(&self) -> Vec<String> {
        self.0.lock().expect("gauges").started.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_broker_with_slots_held_loses_nothing_and_never_exceeds_a_limit() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let args = ["--lease-ms", "4000"];
    let broker = BrokerProcess::spawn(data.path(), port, &args).await;
    let gauges = Gauges::default();
    let body = |in_body: bool| {
        let g = gauges.clone();
        move |ctx: TaskContext| {
            let g = g.clone();
            async move {
                let label: String = ctx.arg(0)?;
                let _slot = if in_body {
                    Some(ctx.acquire(BodyThrottle::new(1).key("bk-in")).await?)
                } else {
                    None
                };
                let identity = if in_body { "bk-in" } else { "bk" };
                let _held = g.enter(identity, label);
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok(Value::Null)
            }
        }
    };
    let declared = pb::Options {
        throttle: Some(pb::Throttle {
            concurrency: 2,
            key: "bk".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let workers: Vec<TestWorker> = (0..2)
        .map(|i| {
            TestWorker::spawn(
                worker(&broker.addr, &format!("survivor-{i}"))
                    .concurrency(4)
                    .task_with("bk.declared", declared.clone(), body(false))
                    .task("bk.inbody", body(true)),
            )
        })
        .collect();
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    until_workers(&client, "both workers", |w| w.len() == 2).await;
    let mut chains = Vec::new();
    for i in 0..24 {
        chains.push(Chain::new(Task::new("bk.declared").si([format!("d{i}")])));
    }
    for i in 0..12 {
        chains.push(Chain::new(Task::new("bk.inbody").si([format!("i{i}")])));
    }
    let mut ids = Vec::new();
    for chain in chains {
        ids.push(client.submit(chain).await.unwrap().chain_id);
    }
    eventually("slots of both identities held", || {
        gauges.now("bk") == 2 && gauges.now("bk-in") == 1 && gauges.started().len() >= 4
    })
    .await;

    broker.kill9().await;
    let restarted = BrokerProcess::spawn(data.path(), port, &args).await;
    let client = Client::connect(restarted.addr.clone()).await.unwrap();
    all_succeed(&client, &ids).await;

    assert_eq!(gauges.max("bk"), 2, "declared limit 2");
    assert_eq!(gauges.max("bk-in"), 1, "in-body limit 1");
    // Nothing lost, nothing run twice: the workers came back within their
    // leases and kept their runs and slots.
    let mut started = gauges.started();
    assert_eq!(started.len(), 36, "{started:?}");
    started.sort();
    started.dedup();
    assert_eq!(started.len(), 36, "a task ran twice");
    let info = client.admin().list_throttles().await.unwrap();
    assert!(
        info.iter().all(|t| t.holders.is_empty() && t.waiters == 0),
        "{info:?}"
    );
    drop(workers);
    assert!(restarted.terminate().await);
}

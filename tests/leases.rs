//! Leases end to end: heartbeats keep an assignment; a worker that dies
//! loses it when its lease lapses (never earlier) and the task comes back
//! with the next attempt; a report for an assignment that is no longer
//! current is rejected and changes nothing.

mod common;

use std::time::{Duration, Instant};

use baton::{ChainOutcome, Task, pb};
use baton_worker::TaskContext;
use common::*;
use pb::{broker_message, worker_message};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const LEASE: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_run_longer_than_its_lease() {
    let broker = TestBroker::start_with(|c| c.lease = LEASE).await;
    let client = broker.client().await;
    let _w = TestWorker::spawn(worker(&broker.addr, "steady").task(
        "long",
        |ctx: TaskContext| async move {
            tokio::time::sleep(LEASE * 3).await;
            Ok(json!(ctx.attempt))
        },
    ));
    let id = client
        .submit(Task::new("long").si(()))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_task_is_redelivered_after_the_lease_lapses_never_earlier() {
    let broker = TestBroker::start_with(|c| c.lease = LEASE).await;
    let client = broker.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let doomed = TestWorker::spawn(worker(&broker.addr, "doomed").task(
        "job",
        move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.note(format!("doomed attempt {}", ctx.attempt));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(json!("doomed"))
            }
        },
    ));
    let id = client
        .submit(Task::new("job").si(()))
        .await
        .unwrap()
        .chain_id;
    eventually("the first attempt to start", || {
        journal.count("doomed attempt 1") == 1
    })
    .await;
    doomed.kill();
    let killed_at = Instant::now();
    let j = journal.clone();
    let _rescuer = TestWorker::spawn(worker(&broker.addr, "rescuer").task(
        "job",
        move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.note(format!("rescuer attempt {}", ctx.attempt));
                Ok(json!(ctx.attempt))
            }
        },
    ));
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!(2))
    );
    // The rescuer was free all along: only the lapse released the task.
    assert!(
        killed_at.elapsed() >= LEASE * 9 / 10,
        "redelivered after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(journal.entries(), ["doomed attempt 1", "rescuer attempt 2"]);
}

/// A raw worker session, to say what the SDK never would.
struct RawWorker {
    up: mpsc::Sender<pb::WorkerMessage>,
    down: tonic::Streaming<pb::BrokerMessage>,
}

impl RawWorker {
    async fn connect(addr: &str, name: &str, held: Vec<pb::TaskRef>) -> Self {
        Self::open(addr, name, "job", held).await.0
    }

    /// Opens a session for `task` and returns it with the broker's Welcome.
    async fn open(
        addr: &str,
        name: &str,
        task: &str,
        held: Vec<pb::TaskRef>,
    ) -> (Self, pb::Welcome) {
        let hello = pb::Hello {
            worker_name: name.into(),
            tasks: vec![pb::TaskDefinition {
                name: task.into(),
                defaults: None,
            }],
            concurrency: 1,
            held,
            ..Default::default()
        };
        Self::open_with(addr, hello).await
    }

    /// Opens a session with this Hello.
    async fn open_with(addr: &str, hello: pb::Hello) -> (Self, pb::Welcome) {
        let mut client = pb::worker_client::WorkerClient::connect(addr.to_owned())
            .await
            .unwrap();
        let (up, rx) = mpsc::channel(16);
        up.send(msg(worker_message::Msg::Hello(hello)))
            .await
            .unwrap();
        let down = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut raw = RawWorker { up, down };
        let broker_message::Msg::Welcome(welcome) = raw.next().await else {
            panic!("expected a welcome")
        };
        raw.keep_alive(Duration::from_millis(welcome.heartbeat_interval_ms));
        (raw, welcome)
    }

    /// Sends an empty heartbeat every `period`, as the protocol asks of an
    /// idle worker (a silent stream is ended after a lease), until the
    /// worker is dropped.
    fn keep_alive(&self, period: Duration) {
        let up = self.up.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(up) = up.upgrade() else { return };
                let beat = worker_message::Msg::Heartbeat(pb::Heartbeat { tasks: vec![] });
                if up.send(msg(beat)).await.is_err() {
                    return;
                }
            }
        });
    }

    async fn next(&mut self) -> broker_message::Msg {
        let m = tokio::time::timeout(PATIENCE, self.down.next())
            .await
            .expect("a message in time");
        m.expect("stream open")
            .expect("ok message")
            .msg
            .expect("a message")
    }

    async fn send(&self, m: worker_message::Msg) {
        self.up.send(msg(m)).await.unwrap();
    }
}

fn msg(m: worker_message::Msg) -> pb::WorkerMessage {
    pb::WorkerMessage { msg: Some(m) }
}

fn success(task: pb::TaskRef, result: &str) -> worker_message::Msg {
    worker_message::Msg::Outcome(pb::Outcome {
        task: Some(task),
        result: Some(pb::outcome::Result::Success(pb::Success {
            result: result.into(),
        })),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_report_is_rejected_and_changes_nothing() {
    let broker = TestBroker::start_with(|c| c.lease = LEASE).await;
    let client = broker.client().await;
    let id = client
        .submit(Task::new("job").si(()))
        .await
        .unwrap()
        .chain_id;

    // The first worker takes attempt 1, then vanishes without a goodbye.
    let mut first = RawWorker::connect(&broker.addr, "vanished", vec![]).await;
    let broker_message::Msg::Assignment(a1) = first.next().await else {
        panic!("expected an assignment")
    };
    let t1 = a1.task.clone().unwrap();
    assert_eq!(t1.attempt, 1);
    drop(first);

    // A second worker gets attempt 2 once the lease lapsed.
    let mut second = RawWorker::connect(&broker.addr, "second", vec![]).await;
    let broker_message::Msg::Assignment(a2) = second.next().await else {
        panic!("expected an assignment")
    };
    let t2 = a2.task.clone().unwrap();
    assert_eq!((t2.task_id.as_str(), t2.attempt), (t1.task_id.as_str(), 2));

    // The first worker comes back claiming attempt 1: it is told it lost it,
    // and its report for attempt 1 is refused.
    let mut late = RawWorker::connect_expect_lost(&broker.addr, t1.clone()).await;
    late.send(success(t1.clone(), "\"stale\"")).await;
    let broker_message::Msg::OutcomeAck(ack) = late.next().await else {
        panic!("expected an ack")
    };
    assert!(!ack.accepted, "{ack:?}");
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[0].state(), pb::StepState::Running);
    assert_eq!(chain.steps[0].attempts, 2);

    // The current attempt's report completes the chain.
    second.send(success(t2, "\"fresh\"")).await;
    let broker_message::Msg::OutcomeAck(ack) = second.next().await else {
        panic!("expected an ack")
    };
    assert!(ack.accepted);
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("fresh"))
    );
}

impl RawWorker {
    async fn connect_expect_lost(addr: &str, held: pb::TaskRef) -> Self {
        let (raw, welcome) = Self::open(addr, "late", "other", vec![held.clone()]).await;
        assert_eq!(welcome.lost, vec![held]);
        assert!(welcome.kept.is_empty());
        raw
    }
}

/// Submits one `job` chain, lets a raw worker named `name` take its run,
/// and breaks that worker's stream; returns the chain id and the run.
async fn one_job_out_then_cut_off(
    broker: &TestBroker,
    client: &baton::Client,
    name: &str,
) -> (String, pb::TaskRef) {
    let id = client
        .submit(Task::new("job").si(()))
        .await
        .unwrap()
        .chain_id;
    let mut worker = RawWorker::connect(&broker.addr, name, vec![]).await;
    let broker_message::Msg::Assignment(a) = worker.next().await else {
        panic!("expected an assignment")
    };
    (id, a.task.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_reconnects_within_its_lease_keeps_its_assignment() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_secs(5)).await;
    let client = broker.client().await;
    // The stream breaks, as in a network blip.
    let (id, task) = one_job_out_then_cut_off(&broker, &client, "blip").await;
    let mut again = RawWorker::connect(&broker.addr, "blip", vec![task.clone()]).await;
    again.send(success(task.clone(), "\"kept\"")).await;
    let broker_message::Msg::OutcomeAck(ack) = again.next().await else {
        panic!("expected an ack")
    };
    assert!(ack.accepted, "{ack:?}");
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("kept"))
    );
    assert_eq!(client.get(&id).await.unwrap().steps[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_body_slots_not_listed_on_reconnect_are_released() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_secs(10)).await;
    let client = broker.client().await;
    let admin = client.admin();
    let id = client
        .submit(Task::new("job").si(()))
        .await
        .unwrap()
        .chain_id;
    let mut first = RawWorker::connect(&broker.addr, "holder", vec![]).await;
    let broker_message::Msg::Assignment(a) = first.next().await else {
        panic!("expected an assignment")
    };
    let task = a.task.unwrap();
    let throttle = pb::Throttle {
        concurrency: 1,
        key: "tenant:1".into(),
        shared: true,
        ..Default::default()
    };
    first
        .send(worker_message::Msg::ThrottleAcquire(pb::ThrottleAcquire {
            request_id: 7,
            task: Some(task.clone()),
            throttle: Some(throttle),
        }))
        .await;
    assert!(
        matches!(first.next().await, broker_message::Msg::ThrottleGranted(g) if g.request_id == 7)
    );
    let holders = || async {
        admin
            .list_throttles()
            .await
            .unwrap()
            .iter()
            .map(|t| t.holders.len())
            .sum::<usize>()
    };
    assert_eq!(holders().await, 1);
    drop(first);
    // Back within the lease, keeping the run but no longer the slot.
    let mut again = RawWorker::connect(&broker.addr, "holder", vec![task.clone()]).await;
    assert_eq!(holders().await, 0, "the unlisted slot was released");
    again.send(success(task, "null")).await;
    assert!(matches!(again.next().await, broker_message::Msg::OutcomeAck(a) if a.accepted));
    client.wait_timeout(&id, PATIENCE).await.unwrap();
}

/// A broker paused (SIGSTOP) for longer than the lease, while a live worker
/// keeps heartbeating, takes nothing from that worker when it resumes: the
/// heartbeats sent meanwhile wait unread in its socket, and the pause does
/// not count against the lease. Before the fix the lease timers fired first
/// on SIGCONT, the run and its limit-1 in-body slot were taken, and a
/// second body entered the throttled section while the first was inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_past_the_lease_keeps_a_live_workers_run_and_slot() {
    use baton_worker::Throttle;
    let data = tempfile::tempdir().expect("temp dir");
    // Long enough that a loaded machine delays no heartbeat past it.
    let lease = Duration::from_millis(2500);
    let lease_ms = lease.as_millis().to_string();
    let broker = BrokerProcess::spawn(data.path(), free_port(), &["--lease-ms", &lease_ms]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let (inside, entered) = (Gauge::default(), Journal::default());
    let body = {
        let (inside, entered) = (inside.clone(), entered.clone());
        move |ctx: TaskContext| {
            let (inside, entered) = (inside.clone(), entered.clone());
            async move {
                let work: u64 = ctx.arg(0)?;
                let _slot = ctx.acquire(Throttle::new(1).key("paused")).await?;
                inside.enter();
                entered.note(format!("{}/{}", ctx.task_id, ctx.attempt));
                tokio::time::sleep(Duration::from_millis(work)).await;
                inside.leave();
                Ok(json!(ctx.attempt))
            }
        }
    };
    let _w = TestWorker::spawn(
        worker(&broker.addr, "live")
            .concurrency(2)
            .task("paused.section", body),
    );
    let first = client
        .submit(Task::new("paused.section").si([3 * 2500_u64]))
        .await
        .unwrap()
        .chain_id;
    eventually("the first body inside its section", || {
        entered.entries().len() == 1
    })
    .await;
    let second = client
        .submit(Task::new("paused.section").si([10]))
        .await
        .unwrap()
        .chain_id;
    // Paused for twice the lease, then resumed.
    broker.signal("STOP");
    tokio::time::sleep(lease * 2).await;
    broker.signal("CONT");
    for id in [&first, &second] {
        assert_eq!(
            client.wait_timeout(id, PATIENCE).await.unwrap(),
            ChainOutcome::Succeeded(json!(1)),
            "chain {id} ran more than once"
        );
    }
    assert_eq!(inside.max(), 1, "two bodies were inside a limit-1 section");
    assert_eq!(entered.entries().len(), 2, "{:?}", entered.entries());
    broker.kill9().await;
}

/// A worker may claim (in `Hello.held`) only a run it could have been
/// assigned: its queues include the run's queue and it registered the
/// run's task name. Before the fix a worker of another queue and task name
/// kept a crashed worker's run, and its forged result was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_a_worker_that_could_not_run_the_task_is_lost() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_secs(30)).await;
    let client = broker.client().await;
    // The owner crashes: the run waits for its lease.
    let (id, run) = one_job_out_then_cut_off(&broker, &client, "owner").await;

    // Another task name, same queue; then the same name, another queue.
    let other_name = pb::Hello {
        worker_name: "forger".into(),
        tasks: vec![pb::TaskDefinition {
            name: "other".into(),
            defaults: None,
        }],
        concurrency: 1,
        held: vec![run.clone()],
        ..Default::default()
    };
    let other_queue = pb::Hello {
        queues: vec!["heavy".into()],
        tasks: vec![pb::TaskDefinition {
            name: "job".into(),
            defaults: None,
        }],
        ..other_name.clone()
    };
    for hello in [other_name, other_queue] {
        let (mut forger, welcome) = RawWorker::open_with(&broker.addr, hello).await;
        assert_eq!(welcome.lost, vec![run.clone()], "{welcome:?}");
        assert!(welcome.kept.is_empty(), "{welcome:?}");
        forger.send(success(run.clone(), "\"forged\"")).await;
        let broker_message::Msg::OutcomeAck(ack) = forger.next().await else {
            panic!("expected an ack")
        };
        assert!(!ack.accepted, "a forged outcome was accepted: {ack:?}");
    }

    // The owner comes back within its lease and finishes the run.
    let mut owner = RawWorker::connect(&broker.addr, "owner", vec![run.clone()]).await;
    owner.send(success(run, "\"real\"")).await;
    let broker_message::Msg::OutcomeAck(ack) = owner.next().await else {
        panic!("expected an ack")
    };
    assert!(ack.accepted, "{ack:?}");
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("real"))
    );
}

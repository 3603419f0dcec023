//! Workers that misbehave, end to end: a worker that floods heartbeats,
//! one that never reads its stream, one that reports on assignments it
//! never held, too many workers or watchers, and malformed hellos. None of
//! them may disturb other workers' tasks or slots, or stall the broker
//! (guarantee 8); each refusal names what was wrong.

mod common;

use std::time::{Duration, Instant};

use baton::{ChainOutcome, Task, pb};
use baton_worker::TaskContext;
use common::*;
use pb::{broker_message::Msg as Down, worker_message::Msg as Up};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

/// A worker session driven by hand, to do what the SDK never would.
struct Raw {
    up: mpsc::UnboundedSender<pb::WorkerMessage>,
    down: tonic::Streaming<pb::BrokerMessage>,
}

fn hello(name: &str, tasks: &[&str], concurrency: u32) -> pb::Hello {
    pb::Hello {
        worker_name: name.into(),
        tasks: tasks
            .iter()
            .map(|t| pb::TaskDefinition {
                name: (*t).into(),
                defaults: None,
            })
            .collect(),
        concurrency,
        ..Default::default()
    }
}

impl Raw {
    /// Opens a session with `first` as its first message; the broker's
    /// refusal, if any, comes back as the status.
    async fn open(addr: &str, first: Up) -> Result<Self, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
            .expect("connect");
        Self::open_on(channel, first).await
    }

    async fn open_on(channel: tonic::transport::Channel, first: Up) -> Result<Self, tonic::Status> {
        let mut client = pb::worker_client::WorkerClient::new(channel);
        let (up, rx) = mpsc::unbounded_channel();
        up.send(pb::WorkerMessage { msg: Some(first) }).unwrap();
        let down = client
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut raw = Raw { up, down };
        assert!(matches!(raw.next().await, Down::Welcome(_)));
        Ok(raw)
    }

    async fn connect(addr: &str, name: &str, tasks: &[&str], concurrency: u32) -> Self {
        Self::open(addr, Up::Hello(hello(name, tasks, concurrency)))
            .await
            .expect("session")
    }

    fn send(&self, msg: Up) {
        self.up
            .send(pb::WorkerMessage { msg: Some(msg) })
            .expect("send");
    }

    /// Keeps the stream open (a silent one is ended after a lease) with
    /// heartbeats that extend none of its assignments, so their leases
    /// lapse while the worker stays connected.
    fn keep_stream_only(&self) {
        let up = self.up.clone();
        let beat = pb::WorkerMessage {
            msg: Some(heartbeat(vec![pb::TaskRef {
                task_id: "no-such-task".into(),
                attempt: 1,
            }])),
        };
        tokio::spawn(async move {
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
}

fn heartbeat(tasks: Vec<pb::TaskRef>) -> Up {
    Up::Heartbeat(pb::Heartbeat { tasks })
}

fn success(task: pb::TaskRef, result: &str) -> Up {
    Up::Outcome(pb::Outcome {
        task: Some(task),
        result: Some(pb::outcome::Result::Success(pb::Success {
            result: result.into(),
        })),
    })
}

/// A worker of the SDK that answers `work` with its argument and any other
/// registered name with the attempt number.
fn honest(addr: &str, extra: &'static str) -> TestWorker {
    TestWorker::spawn(
        worker(addr, "honest")
            .concurrency(16)
            .task(
                "work",
                |ctx: TaskContext| async move { Ok(ctx.args[0].clone()) },
            )
            .task(
                extra,
                |ctx: TaskContext| async move { Ok(json!(ctx.attempt)) },
            ),
    )
}

async fn run_chains(client: &baton::Client, n: usize) -> Duration {
    let start = Instant::now();
    let work = Task::new("work");
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(client.submit(work.si([i])).await.unwrap().chain_id);
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            client.wait_timeout(id, PATIENCE).await.unwrap(),
            ChainOutcome::Succeeded(json!(i))
        );
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_flood_neither_stalls_others_nor_keeps_their_leases() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_millis(1000)).await;
    let client = broker.client().await;
    // A worker takes a task and then goes silent about it: no heartbeats
    // for it, and no more work.
    let mut silent = Raw::connect(&broker.addr, "silent", &["silent.job"], 1).await;
    silent.keep_stream_only();
    let lost = client
        .submit(Task::new("silent.job").si(()))
        .await
        .unwrap()
        .chain_id;
    let lost_task = silent.assignment().await;
    silent.send(Up::Drain(pb::Drain {}));
    let _honest = honest(&broker.addr, "silent.job");
    let baseline = run_chains(&client, 20).await;

    // The flooder: 40 000 heartbeats as fast as the connection takes
    // them, half of them naming the silent worker's assignment, then a
    // malformed message whose error reply marks the end of the flood.
    let mut flooder = Raw::connect(&broker.addr, "flooder", &["noise"], 1).await;
    for n in 0..40_000 {
        let tasks = if n % 2 == 0 {
            Vec::new()
        } else {
            vec![lost_task.clone()]
        };
        flooder.send(heartbeat(tasks));
    }
    flooder.send(Up::Outcome(pb::Outcome::default()));
    let flooding = Instant::now();
    let during = run_chains(&client, 20).await;
    assert!(
        matches!(flooder.next().await, Down::Error(e) if e.message.contains("task is missing"))
    );
    let flood = flooding.elapsed();
    eprintln!(
        "20 chains: {baseline:?} before the flood, {during:?} during it (flood took {flood:?})"
    );
    assert!(
        during < Duration::from_secs(15),
        "other workers' chains stalled behind the flood: {during:?}"
    );
    // Naming another worker's assignment extends nothing: the silent
    // worker's task lapsed and ran again on the honest worker.
    assert_eq!(
        client.wait_timeout(&lost, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!(2))
    );
    assert!(matches!(silent.next().await, Down::Cancel(c) if c.task == Some(lost_task.clone())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reads_is_cut_off_and_its_tasks_come_back_after_the_lease() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_millis(1000)).await;
    let client = broker.client().await;
    let admin = client.admin();
    // The hog takes up to 10 000 assignments and never reads one; it is
    // alive all the same (heartbeats), only stuck. A small HTTP/2 window,
    // so that the transport does not buffer megabytes of assignments for
    // it before the broker's own buffer for it fills.
    let channel = tonic::transport::Endpoint::from_shared(broker.addr.clone())
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(64 * 1024))
        .connect()
        .await
        .unwrap();
    let hog = Raw::open_on(channel, Up::Hello(hello("hog", &["pile"], 10_000)))
        .await
        .unwrap();
    let beats = hog.up.clone();
    tokio::spawn(async move {
        let beat = pb::WorkerMessage {
            msg: Some(heartbeat(Vec::new())),
        };
        while beats.send(beat.clone()).is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let pile = Task::new("pile");
    let mut piled = Vec::new();
    for chunk in 0..50 {
        let submits = (0..100).map(|i| client.submit(pile.si([chunk * 100 + i])));
        for submitted in futures::future::join_all(submits).await {
            piled.push(submitted.unwrap().chain_id);
        }
    }
    // Its stream filled up: the broker let go of it rather than wait.
    let start = Instant::now();
    while admin
        .list_workers()
        .await
        .unwrap()
        .iter()
        .any(|w| w.worker_name == "hog")
    {
        assert!(start.elapsed() < PATIENCE, "the hog was never disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_at = Instant::now();

    // Other work flows meanwhile, and the hog's tasks come back once their
    // leases lapse, as attempt 2 (the honest worker answers `pile` with
    // the attempt number); what it never got runs as attempt 1.
    let _honest = honest(&broker.addr, "pile");
    let during = run_chains(&client, 20).await;
    assert!(during < Duration::from_secs(20), "{during:?}");
    let mut again = 0;
    for id in &piled {
        match client.wait_timeout(id, PATIENCE).await.unwrap() {
            ChainOutcome::Succeeded(a) if a == json!(2) => again += 1,
            ChainOutcome::Succeeded(a) => assert_eq!(a, json!(1)),
            other => panic!("chain {id}: {other:?}"),
        }
    }
    eprintln!(
        "{again} of {} piled chains ran again {:?} after the hog was cut off",
        piled.len(),
        cut_at.elapsed()
    );
    assert!(
        again >= 4096,
        "only {again} assignments were held by the hog"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_assignments_a_worker_never_held_are_refused_and_change_nothing() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut owner = Raw::connect(&broker.addr, "owner", &["job"], 1).await;
    let id = client
        .submit(Task::new("job").si(()))
        .await
        .unwrap()
        .chain_id;
    let task = owner.assignment().await;
    owner.send(Up::ThrottleAcquire(pb::ThrottleAcquire {
        request_id: 1,
        task: Some(task.clone()),
        throttle: Some(pb::Throttle {
            concurrency: 1,
            key: "k".into(),
            shared: true,
            ..Default::default()
        }),
    }));
    assert!(matches!(owner.next().await, Down::ThrottleGranted(_)));

    let mut liar = Raw::connect(&broker.addr, "liar", &["job"], 1).await;
    let other_attempt = pb::TaskRef {
        attempt: u32::MAX,
        ..task.clone()
    };
    let unknown = pb::TaskRef {
        task_id: uuid::Uuid::now_v7().to_string(),
        attempt: 1,
    };
    for t in [&task, &other_attempt, &unknown] {
        liar.send(success(t.clone(), "\"forged\""));
        assert!(matches!(liar.next().await, Down::OutcomeAck(a) if !a.accepted));
        liar.send(Up::ThrottleRelease(pb::ThrottleRelease {
            request_id: 1,
            task: Some(t.clone()),
        }));
        assert!(matches!(liar.next().await, Down::Error(_)));
        liar.send(Up::ThrottleAcquire(pb::ThrottleAcquire {
            request_id: 2,
            task: Some(t.clone()),
            throttle: Some(pb::Throttle {
                concurrency: 5,
                key: "k".into(),
                shared: true,
                ..Default::default()
            }),
        }));
        assert!(matches!(liar.next().await, Down::Error(_)));
    }
    // A task id that is not even a UUID names no run of any broker: each
    // message naming one is refused at the edge, saying so.
    let garbage = pb::TaskRef {
        task_id: "no-such-task".into(),
        attempt: 1,
    };
    liar.send(success(garbage.clone(), "\"forged\""));
    liar.send(Up::ThrottleRelease(pb::ThrottleRelease {
        request_id: 1,
        task: Some(garbage),
    }));
    for _ in 0..2 {
        assert!(
            matches!(liar.next().await, Down::Error(e) if e.message.contains("task.task_id is not a UUID"))
        );
    }
    // A result that is not JSON is refused at the edge.
    liar.send(success(task.clone(), "{not json"));
    assert!(
        matches!(liar.next().await, Down::Error(e) if e.message.contains("outcome.success.result"))
    );

    // Nothing moved: the owner still runs attempt 1 and holds its slot.
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[0].state(), pb::StepState::Running);
    assert_eq!(
        (chain.steps[0].attempts, chain.steps[0].worker.as_str()),
        (1, "owner")
    );
    let throttles = client.admin().list_throttles().await.unwrap();
    assert_eq!(throttles.len(), 1);
    assert_eq!(throttles[0].holders.len(), 1);
    assert_eq!(throttles[0].holders[0].worker, "owner");
    assert_eq!(throttles[0].limit, 1);
    owner.send(success(task, "\"real\""));
    assert!(matches!(owner.next().await, Down::OutcomeAck(a) if a.accepted));
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("real"))
    );
}

/// Every refusal names what it refuses: the request id of a throttle
/// request and the run an outcome or throttle request was about, as the
/// worker sent them (a worker waiting on a grant must learn that it will
/// never come; one whose outcome was refused must learn which run still
/// waits for a valid one). Before, the edge answered them all with
/// `request_id: 0` and no task.
#[tokio::test]
async fn every_refusal_names_the_request_and_the_run_it_refuses() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut worker = Raw::connect(&broker.addr, "w", &["job"], 1).await;
    let id = client
        .submit(Task::new("job").si(()))
        .await
        .unwrap()
        .chain_id;
    let task = worker.assignment().await;
    let refusal = |down: Down| match down {
        Down::Error(e) => e,
        other => panic!("expected a WorkerError, got {other:?}"),
    };

    // A malformed in-body throttle request: shared, with no key.
    worker.send(Up::ThrottleAcquire(pb::ThrottleAcquire {
        request_id: 41,
        task: Some(task.clone()),
        throttle: Some(pb::Throttle {
            concurrency: 1,
            shared: true,
            ..Default::default()
        }),
    }));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (41, Some(&task)), "{e:?}");
    assert!(e.message.contains("throttle_acquire.throttle.key"), "{e:?}");

    // One with an unknown scope, and a release that names no run.
    worker.send(Up::ThrottleAcquire(pb::ThrottleAcquire {
        request_id: 42,
        task: Some(task.clone()),
        throttle: Some(pb::Throttle {
            key: "k".into(),
            scope: 99,
            ..Default::default()
        }),
    }));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (42, Some(&task)), "{e:?}");
    worker.send(Up::ThrottleRelease(pb::ThrottleRelease {
        request_id: 43,
        task: None,
    }));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (43, None), "{e:?}");

    // An outcome whose result is not JSON, and one with no result at all:
    // the refusal names the run, which still runs and takes a valid one.
    worker.send(success(task.clone(), "{not json"));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (0, Some(&task)), "{e:?}");
    assert!(e.message.contains("outcome.success.result"), "{e:?}");
    worker.send(Up::Outcome(pb::Outcome {
        task: Some(task.clone()),
        result: None,
    }));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (0, Some(&task)), "{e:?}");
    assert_eq!(
        client.get(&id).await.unwrap().steps[0].state(),
        pb::StepState::Running
    );

    // A second hello changes nothing and is told so.
    worker.send(Up::Hello(hello("w", &["other"], 5)));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (0, None), "{e:?}");
    assert!(
        e.message.starts_with("hello: a stream takes one hello"),
        "{e:?}"
    );

    // In a batch, each refusal names its own message.
    let frame = |msg: Up| pb::WorkerMessage { msg: Some(msg) };
    worker.send(Up::Batch(pb::WorkerBatch {
        messages: vec![
            frame(Up::ThrottleAcquire(pb::ThrottleAcquire {
                request_id: 44,
                task: Some(task.clone()),
                throttle: Some(pb::Throttle {
                    shared: true,
                    ..Default::default()
                }),
            })),
            frame(success(task.clone(), "\"done\"")),
        ],
    }));
    let e = refusal(worker.next().await);
    assert_eq!((e.request_id, e.task.as_ref()), (44, Some(&task)), "{e:?}");
    assert!(matches!(worker.next().await, Down::OutcomeAck(a) if a.accepted));
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("done"))
    );
}

#[tokio::test]
async fn a_batch_up_counts_message_by_message_and_a_bad_one_is_refused_alone() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut worker = Raw::connect(&broker.addr, "batcher", &["job"], 2).await;
    let ids = [
        client
            .submit(Task::new("job").si(()))
            .await
            .unwrap()
            .chain_id,
        client
            .submit(Task::new("job").si(()))
            .await
            .unwrap()
            .chain_id,
    ];
    let (first, second) = (worker.assignment().await, worker.assignment().await);
    let frame = |msg: Up| pb::WorkerMessage { msg: Some(msg) };
    worker.send(Up::Batch(pb::WorkerBatch {
        messages: vec![
            frame(success(first.clone(), "1")),
            frame(success(second.clone(), "{not json")),
            frame(Up::Batch(pb::WorkerBatch {
                messages: vec![frame(success(second.clone(), "3"))],
            })),
            frame(success(second.clone(), "2")),
        ],
    }));
    let (mut accepted, mut errors) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        match worker.next().await {
            Down::OutcomeAck(ack) if ack.accepted => accepted.push(ack.task.unwrap()),
            Down::Error(error) => errors.push(error.message),
            other => panic!("unexpected {other:?}"),
        }
    }
    accepted.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let mut expected = vec![first, second];
    expected.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    assert_eq!(accepted, expected);
    errors.sort();
    assert!(errors[0].contains("batches do not nest"), "{errors:?}");
    assert!(errors[1].contains("outcome.success.result"), "{errors:?}");
    // The good reports of the batch count; the nested one changed nothing.
    for (id, result) in ids.iter().zip([1, 2]) {
        assert_eq!(
            client.wait_timeout(id, PATIENCE).await.unwrap(),
            ChainOutcome::Succeeded(json!(result))
        );
    }
}

#[tokio::test]
async fn the_welcome_tells_how_large_a_batch_the_broker_reads() {
    let broker = TestBroker::start().await;
    let mut client = pb::worker_client::WorkerClient::connect(broker.addr.clone())
        .await
        .unwrap();
    let first = pb::WorkerMessage {
        msg: Some(Up::Hello(hello("w", &["job"], 1))),
    };
    let mut down = client
        .session(tokio_stream::iter([first]).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    match down.message().await.unwrap().unwrap().msg {
        // --max-payload's default: a batch is one request.
        Some(Down::Welcome(welcome)) => assert_eq!(welcome.batch_bytes, 1024 * 1024),
        other => panic!("expected the Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_workers_or_watchers_are_refused_naming_the_limit() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_workers = 2;
        c.limits.max_watches = 2;
    })
    .await;
    let client = broker.client().await;
    let first = Raw::connect(&broker.addr, "w1", &["job"], 1).await;
    let _second = Raw::connect(&broker.addr, "w2", &["job"], 1).await;
    let refused = Raw::open(&broker.addr, Up::Hello(hello("w3", &["job"], 1)))
        .await
        .err()
        .expect("a third worker is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("--max-workers"), "{refused:?}");
    // A worker that leaves makes room.
    drop(first);
    let start = Instant::now();
    loop {
        match Raw::open(&broker.addr, Up::Hello(hello("w3", &["job"], 1))).await {
            Ok(_) => break,
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted),
        }
        assert!(start.elapsed() < PATIENCE, "no room after a worker left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Watchers of a chain that does not end (nobody serves "idle").
    let id = client
        .submit(Task::new("idle").si(()))
        .await
        .unwrap()
        .chain_id;
    let one = client.watch(&id).await.unwrap();
    let _two = client.watch(&id).await.unwrap();
    let refused = client
        .watch(&id)
        .await
        .err()
        .expect("a third watch is refused");
    assert_eq!(refused.code(), Some(tonic::Code::ResourceExhausted));
    assert!(
        refused
            .status()
            .unwrap()
            .message()
            .contains("--max-watches"),
        "{refused}"
    );
    drop(one);
    let start = Instant::now();
    while client.watch(&id).await.is_err() {
        assert!(start.elapsed() < PATIENCE, "no room after a watcher left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hello_is_refused_naming_the_field() {
    let broker = TestBroker::start_with(|c| c.limits.max_worker_concurrency = 8).await;
    let refusal = |first: Up| {
        let addr = broker.addr.clone();
        async move {
            let status = Raw::open(&addr, first).await.err().expect("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            status.message().to_owned()
        }
    };
    let m = refusal(Up::Hello(hello("w", &["job"], 0))).await;
    assert!(m.contains("hello.concurrency is 0"), "{m}");
    let m = refusal(Up::Hello(hello("w", &["job"], 9))).await;
    assert!(
        m.contains("between 1 and 8 (--max-worker-concurrency)"),
        "{m}"
    );
    let mut bad_queue = hello("w", &["job"], 1);
    bad_queue.queues = vec!["general".into(), "no spaces!".into()];
    let m = refusal(Up::Hello(bad_queue)).await;
    assert!(m.contains("hello.queues[1]"), "{m}");
    let m = refusal(Up::Hello(hello("w", &[], 1))).await;
    assert!(m.contains("hello.tasks is empty"), "{m}");
    let m = refusal(Up::Hello(hello("w", &["job", "bad\u{7}name"], 1))).await;
    assert!(
        m.contains("hello.tasks[1].name contains control characters"),
        "{m}"
    );
    let m = refusal(Up::Heartbeat(pb::Heartbeat::default())).await;
    assert!(m.contains("first message must be a hello"), "{m}");
    // None of them counts as a worker.
    let workers = broker.client().await.admin().list_workers().await.unwrap();
    assert!(workers.is_empty(), "{workers:?}");
}

/// Issue 19, item 11: worker streams that sent a Hello and then nothing
/// held every worker slot forever. A stream silent for a whole lease is
/// ended, saying why, and its slot is free for a real worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_stream_is_ended_after_the_lease_and_its_slot_freed() {
    let lease = Duration::from_millis(500);
    let broker = TestBroker::start_with(|c| {
        c.lease = lease;
        c.limits.max_workers = 1;
    })
    .await;
    let client = broker.client().await;
    let mut silent = Raw::connect(&broker.addr, "silent", &["work"], 1).await;
    let refused = Raw::open(&broker.addr, Up::Hello(hello("real", &["work"], 1)))
        .await
        .err()
        .expect("the silent stream holds the only slot");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), silent.down.message())
        .await
        .expect("the silent stream is ended within a few leases")
        .expect_err("ended with a status, not a plain end");
    assert!(
        started.elapsed() >= lease * 9 / 10,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("sent nothing for 500 ms")
            && status.message().contains("Heartbeat"),
        "{}",
        status.message()
    );

    // Its slot is free: a real worker connects and works.
    let _worker = honest(&broker.addr, "other");
    let id = client
        .submit(Task::new("work").si([7]))
        .await
        .unwrap()
        .chain_id;
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(7)));
    broker.stop().await;
}

/// The other side of the eviction above: a worker of the SDK that has
/// nothing to do sends its heartbeats while idle, so it stays connected,
/// on the same stream, across many leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sdk_worker_stays_connected_across_many_leases() {
    let lease = Duration::from_millis(300);
    let broker = TestBroker::start_with(|c| {
        c.lease = lease;
        c.limits.max_workers = 1;
    })
    .await;
    let client = broker.client().await;
    let _worker = honest(&broker.addr, "other");
    let admin = client.admin();
    let mut first = None;
    let start = Instant::now();
    while first.is_none() {
        first = admin
            .list_workers()
            .await
            .unwrap()
            .pop()
            .map(|w| w.worker_id);
        assert!(start.elapsed() < PATIENCE, "the worker never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(lease * 8).await;
    let workers = admin.list_workers().await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(
        Some(&workers[0].worker_id),
        first.as_ref(),
        "the same stream"
    );
    let id = client
        .submit(Task::new("work").si([1]))
        .await
        .unwrap()
        .chain_id;
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(1)));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_gives_back_unstarted_runs_and_a_bad_one_is_refused_changing_nothing() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = client.admin();
    let mut busy = Raw::open(
        &broker.addr,
        Up::Hello(pb::Hello {
            prefetch: 1,
            ..hello("busy", &["job"], 1)
        }),
    )
    .await
    .expect("session");
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(
            client
                .submit(Task::new("job").si(json!(i)))
                .await
                .unwrap()
                .chain_id,
        );
    }
    let running = busy.assignment().await;
    let waiting = busy.assignment().await;
    let refusal = |down: Down| match down {
        Down::Error(e) => e,
        other => panic!("expected a WorkerError, got {other:?}"),
    };
    let held = || async {
        let workers = admin.list_workers().await.unwrap();
        let w = workers.iter().find(|w| w.worker_name == "busy").unwrap();
        (w.prefetch, w.in_flight.len())
    };

    // Beyond --max-worker-concurrency (10,000 less its concurrency of 1).
    busy.send(Up::Window(pb::Window {
        prefetch: 10_000,
        give_back: vec![waiting.clone()],
    }));
    let e = refusal(busy.next().await);
    assert!(
        e.message.contains("window.prefetch is 10000") && e.message.contains("at most 9999"),
        "{e:?}"
    );
    // A run named by something that is not a task id.
    busy.send(Up::Window(pb::Window {
        prefetch: 0,
        give_back: vec![
            waiting.clone(),
            pb::TaskRef {
                task_id: "not-an-id".into(),
                attempt: 1,
            },
        ],
    }));
    let e = refusal(busy.next().await);
    assert!(e.message.contains("window.give_back[1]"), "{e:?}");
    assert_eq!(held().await, (1, 2), "a refused window changed nothing");

    // Closed, giving back the run it has not started: another worker gets
    // it as the next attempt, and the busy one nothing more.
    busy.send(Up::Window(pb::Window {
        prefetch: 0,
        give_back: vec![waiting.clone()],
    }));
    let start = Instant::now();
    while held().await != (0, 1) {
        assert!(start.elapsed() < PATIENCE, "the run was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut idle = Raw::connect(&broker.addr, "idle", &["job"], 1).await;
    let again = idle.assignment().await;
    assert_eq!((&again.task_id, again.attempt), (&waiting.task_id, 2));
    // The run given back is no longer the busy worker's to report.
    busy.send(success(waiting.clone(), "\"stale\""));
    assert!(matches!(busy.next().await, Down::OutcomeAck(a) if !a.accepted));
    idle.send(success(again, "\"fresh\""));
    busy.send(success(running, "\"first\""));
    assert_eq!(
        client.wait_timeout(&ids[1], PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("fresh"))
    );
    assert_eq!(
        client.wait_timeout(&ids[0], PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("first"))
    );
}

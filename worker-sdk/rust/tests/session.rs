//! The worker against a scripted fake broker: a real tonic server on
//! 127.0.0.1:0 implementing `baton.v1.Worker`, whose every session is handed
//! to the test, which plays the broker's side message by message.
//!
//! Tests wait on channels, never on sleeps; every wait is bounded by
//! [`within`] so a bug fails the test instead of hanging it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::pb::{self, broker_message::Msg as Down, worker_message::Msg as Up};
use baton_worker::{Error, TaskContext, TaskError, Throttle, Worker, WorkerBuilder};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// Upper bound of any single wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------
// The fake broker
// ---------------------------------------------------------------------------

/// One worker stream, seen from the broker's side.
struct Session {
    /// What the worker sent, in order; closed when its stream ended.
    up: mpsc::UnboundedReceiver<pb::WorkerMessage>,
    /// What the broker sends; dropping it ends the response stream.
    down: Option<mpsc::UnboundedSender<Result<pb::BrokerMessage, Status>>>,
    /// The Welcome's `batch_bytes`: 0 until sent, and while 0 the worker
    /// must send no batch.
    batch_bytes: u64,
    /// Messages of a batch not yet returned by `next`.
    unpacked: VecDeque<Up>,
    /// Batches received so far.
    batches: usize,
}

impl Session {
    /// The next message, heartbeats included, a batch's one by one; `None`
    /// once the worker ended its stream.
    async fn next(&mut self) -> Option<Up> {
        if let Some(message) = self.unpacked.pop_front() {
            return Some(message);
        }
        let frame = within("a message from the worker", self.up.recv()).await?;
        match frame.msg.expect("a message with a body") {
            Up::Batch(batch) => {
                assert!(
                    self.batch_bytes > 0,
                    "a batch before the Welcome allowed one"
                );
                let size = pb::WorkerMessage {
                    msg: Some(Up::Batch(batch.clone())),
                }
                .encoded_len();
                assert!(size as u64 <= self.batch_bytes, "batch of {size} bytes");
                assert!(batch.messages.len() >= 2, "a batch of one message");
                self.batches += 1;
                self.unpacked = batch
                    .messages
                    .into_iter()
                    .map(|m| m.msg.expect("a message with a body"))
                    .collect();
                for message in &self.unpacked {
                    assert!(
                        !matches!(message, Up::Hello(_) | Up::Batch(_)),
                        "{message:?} in a batch"
                    );
                }
                self.unpacked.pop_front()
            }
            message => Some(message),
        }
    }

    /// The next message that is not a heartbeat.
    async fn expect(&mut self) -> Up {
        loop {
            match self.next().await {
                Some(Up::Heartbeat(_)) => {}
                Some(message) => return message,
                None => panic!("the worker ended its stream"),
            }
        }
    }

    async fn hello(&mut self) -> pb::Hello {
        match self.expect().await {
            Up::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    async fn outcome(&mut self) -> pb::Outcome {
        match self.expect().await {
            Up::Outcome(outcome) => outcome,
            other => panic!("expected an Outcome, got {other:?}"),
        }
    }

    fn send(&self, msg: Down) {
        self.down
            .as_ref()
            .expect("stream still open")
            .send(Ok(pb::BrokerMessage { msg: Some(msg) }))
            .expect("worker connected");
    }

    fn welcome(&self, lease_ms: u64, heartbeat_interval_ms: u64, kept: &[pb::TaskRef]) {
        self.send(Down::Welcome(pb::Welcome {
            worker_id: "w-1".into(),
            lease_ms,
            heartbeat_interval_ms,
            kept: kept.to_vec(),
            lost: Vec::new(),
            batch_bytes: 0,
        }));
    }

    /// A Welcome that lets the worker send batches of up to `batch_bytes`.
    fn welcome_batches(&mut self, batch_bytes: u64) {
        self.batch_bytes = batch_bytes;
        self.send(Down::Welcome(pb::Welcome {
            worker_id: "w-1".into(),
            lease_ms: 60_000,
            heartbeat_interval_ms: 60_000,
            batch_bytes,
            ..Default::default()
        }));
    }

    fn ack(&self, task: &pb::TaskRef) {
        self.send(Down::OutcomeAck(pb::OutcomeAck {
            task: Some(task.clone()),
            accepted: true,
            reason: String::new(),
        }));
    }

    /// Ends the stream as a restarting broker would.
    fn break_stream(&mut self) {
        if let Some(down) = self.down.take() {
            let _ = down.send(Err(Status::unavailable("broker restarting")));
        }
    }

    /// Expects the end of a drain: Drain, then Goodbye, then the end of the
    /// worker's stream.
    async fn expect_drain_and_goodbye(&mut self) {
        assert_eq!(self.expect().await, Up::Drain(pb::Drain {}));
        assert_eq!(self.expect().await, Up::Goodbye(pb::Goodbye {}));
        assert_eq!(self.next().await, None, "the stream ends after Goodbye");
    }
}

#[derive(Clone)]
struct FakeBroker {
    sessions: mpsc::UnboundedSender<Session>,
    /// When set, the next session is refused with this status.
    refuse_next: Arc<Mutex<Option<Status>>>,
}

#[tonic::async_trait]
impl pb::worker_server::Worker for FakeBroker {
    type SessionStream = UnboundedReceiverStream<Result<pb::BrokerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if let Some(status) = self.refuse_next.lock().expect("not poisoned").take() {
            return Err(status);
        }
        let mut inbound = request.into_inner();
        let (up_tx, up) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if up_tx.send(message).is_err() {
                    break;
                }
            }
        });
        let (down, down_rx) = mpsc::unbounded_channel();
        let _ = self.sessions.send(Session {
            up,
            down: Some(down),
            batch_bytes: 0,
            unpacked: VecDeque::new(),
            batches: 0,
        });
        Ok(Response::new(UnboundedReceiverStream::new(down_rx)))
    }
}

/// A running fake broker; stops when dropped.
struct Broker {
    url: String,
    sessions: mpsc::UnboundedReceiver<Session>,
    refuse_next: Arc<Mutex<Option<Status>>>,
    _stop: oneshot::Sender<()>,
}

impl Broker {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let refuse_next = Arc::new(Mutex::new(None));
        let fake = FakeBroker {
            sessions: sessions_tx,
            refuse_next: Arc::clone(&refuse_next),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::worker_server::WorkerServer::new(fake))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            url,
            sessions,
            refuse_next,
            _stop: stop,
        }
    }

    async fn session(&mut self) -> Session {
        within("a worker session", self.sessions.recv())
            .await
            .expect("broker running")
    }

    fn builder(&self) -> WorkerBuilder {
        Worker::builder(self.url.clone())
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A worker running in the background, with its shutdown trigger.
struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), Error>>,
}

impl Running {
    fn start(builder: WorkerBuilder) -> Self {
        let worker = builder.build().expect("valid worker");
        let (shutdown, signal) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until(async {
            let _ = signal.await;
        }));
        Self {
            shutdown: Some(shutdown),
            handle,
        }
    }

    fn shut_down(&mut self) {
        let _ = self.shutdown.take().expect("shut down once").send(());
    }

    async fn finished(self) -> Result<(), Error> {
        within("the worker to stop", self.handle)
            .await
            .expect("worker task")
    }
}

fn task(id: &str) -> pb::TaskRef {
    pb::TaskRef {
        task_id: id.into(),
        attempt: 1,
    }
}

fn assignment(id: &str, name: &str, args: &str) -> Down {
    Down::Assignment(pb::Assignment {
        task: Some(task(id)),
        chain_id: format!("chain-of-{id}"),
        phase: pb::Phase::Main.into(),
        name: name.into(),
        args: args.into(),
        queue: "general".into(),
        ..Default::default()
    })
}

fn failure(outcome: &pb::Outcome) -> &pb::Failure {
    match &outcome.result {
        Some(pb::outcome::Result::Failure(failure)) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn success(outcome: &pb::Outcome) -> Value {
    match &outcome.result {
        Some(pb::outcome::Result::Success(success)) => {
            serde_json::from_str(&success.result).expect("JSON result")
        }
        other => panic!("expected a success, got {other:?}"),
    }
}

/// Sends its label on a channel when dropped: proves a body was aborted.
struct DropSignal(mpsc::UnboundedSender<String>, String);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1.clone());
    }
}

/// A body that reports its start, then never ends (until aborted, which
/// its drop signal reports).
fn stuck(
    started: &mpsc::UnboundedSender<String>,
    dropped: &mpsc::UnboundedSender<String>,
) -> impl Fn(TaskContext) -> futures::future::BoxFuture<'static, Result<Value, TaskError>>
+ Send
+ Sync
+ 'static {
    let (started, dropped) = (started.clone(), dropped.clone());
    move |ctx: TaskContext| {
        let (started, dropped) = (started.clone(), dropped.clone());
        Box::pin(async move {
            let _signal = DropSignal(dropped, ctx.task_id.clone());
            let _ = started.send(ctx.task_id.clone());
            std::future::pending::<Result<Value, TaskError>>().await
        })
    }
}

async fn recv<T>(what: &str, rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    within(what, rx.recv()).await.expect("sender alive")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hello_describes_the_worker_and_outcomes_map_to_protocol_fields() {
    let mut broker = Broker::start().await;
    let defaults = pb::Options {
        max_retries: Some(3),
        heavy: true,
        ..Default::default()
    };
    let worker = Running::start(
        broker
            .builder()
            .name("w-outcomes")
            .concurrency(16)
            .task_with("add", defaults.clone(), |ctx| async move {
                let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
                Ok(json!(a + b))
            })
            .task("echo", |ctx| async move {
                Ok(json!({
                    "attempt": ctx.attempt,
                    "chain_id": ctx.chain_id,
                    "phase": ctx.phase.as_str_name(),
                    "step_index": ctx.step_index,
                    "kwargs": ctx.kwargs,
                    "context": ctx.context,
                    "queue": ctx.queue,
                    "polls": ctx.polls,
                    "retries": ctx.retries,
                    "flag": ctx.kwarg::<bool>("flag")?,
                }))
            })
            .task("flaky", |_ctx| async {
                Err(TaskError::retryable("backend down")
                    .with_type("IOError")
                    .with_traceback("at backend.rs:3"))
            })
            .task("broken", |_ctx| async {
                Err(TaskError::fatal("no such volume").with_type("NotFound"))
            })
            .task("poll", |_ctx| async {
                Err(TaskError::retry_later(Duration::from_millis(1500)).with_message("building"))
            })
            .task("panics", |_ctx| async { panic!("boom") }),
    );

    let mut session = broker.session().await;
    let hello = session.hello().await;
    assert_eq!(hello.worker_name, "w-outcomes");
    assert_eq!(hello.queues, vec!["general"]);
    assert_eq!(hello.concurrency, 16);
    let names: Vec<&str> = hello.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["add", "broken", "echo", "flaky", "panics", "poll"]);
    assert_eq!(hello.tasks[0].defaults, Some(defaults));
    assert_eq!(hello.tasks[1].defaults, None);
    assert!(hello.held.is_empty() && hello.held_slots.is_empty());

    session.welcome(60_000, 60_000, &[]);
    session.send(assignment("t-add", "add", "[2, 3]"));
    session.send(Down::Assignment(pb::Assignment {
        task: Some(pb::TaskRef {
            task_id: "t-echo".into(),
            attempt: 2,
        }),
        chain_id: "c-1".into(),
        phase: pb::Phase::OnSuccess.into(),
        step_index: 2,
        name: "echo".into(),
        args: String::new(),
        kwargs: r#"{"flag": true}"#.into(),
        context: HashMap::from([("user".into(), "alice".into())]),
        queue: "heavy".into(),
        polls: 4,
        retries: 1,
        ..Default::default()
    }));
    for (id, name) in [
        ("t-flaky", "flaky"),
        ("t-broken", "broken"),
        ("t-poll", "poll"),
        ("t-panic", "panics"),
        ("t-nope", "nope"),
    ] {
        session.send(assignment(id, name, "[]"));
    }
    session.send(assignment("t-bad-args", "add", "{}"));
    session.send(assignment("t-missing", "add", "[1]"));

    let mut outcomes = HashMap::new();
    for _ in 0..9 {
        let outcome = session.outcome().await;
        let task = outcome.task.clone().expect("task ref");
        session.ack(&task);
        outcomes.insert(task.task_id, outcome);
    }

    assert_eq!(success(&outcomes["t-add"]), json!(5));
    assert_eq!(
        success(&outcomes["t-echo"]),
        json!({
            "attempt": 2, "chain_id": "c-1", "phase": "PHASE_ON_SUCCESS", "step_index": 2,
            "kwargs": {"flag": true}, "context": {"user": "alice"}, "queue": "heavy",
            "polls": 4, "retries": 1, "flag": true,
        })
    );
    assert_eq!(
        outcomes["t-echo"].task,
        Some(pb::TaskRef {
            task_id: "t-echo".into(),
            attempt: 2
        }),
        "the outcome names the attempt it reports"
    );
    assert_eq!(
        failure(&outcomes["t-flaky"]),
        &pb::Failure {
            error_type: "IOError".into(),
            message: "backend down".into(),
            traceback: "at backend.rs:3".into(),
            retryable: true,
        }
    );
    let broken = failure(&outcomes["t-broken"]);
    assert_eq!(
        (broken.error_type.as_str(), broken.retryable),
        ("NotFound", false)
    );
    assert_eq!(
        outcomes["t-poll"].result,
        Some(pb::outcome::Result::RetryLater(pb::RetryLater {
            delay_ms: 1500,
            message: "building".into(),
        }))
    );
    let panicked = failure(&outcomes["t-panic"]);
    assert_eq!(
        (
            panicked.error_type.as_str(),
            panicked.message.as_str(),
            panicked.retryable
        ),
        ("Panic", "boom", false)
    );
    for (id, error_type) in [
        ("t-nope", "NotRegistered"),
        ("t-bad-args", "InvalidArguments"),
        ("t-missing", "MissingArgument"),
    ] {
        let f = failure(&outcomes[id]);
        assert_eq!(
            (f.error_type.as_str(), f.retryable),
            (error_type, false),
            "{id}"
        );
    }

    let mut worker = worker;
    worker.shut_down();
    session.expect_drain_and_goodbye().await;
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn batches_go_both_ways_once_the_welcome_allows_them() {
    const TASKS: u32 = 64;
    let mut broker = Broker::start().await;
    let release = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let gate = Arc::clone(&release);
    let mut worker = Running::start(broker.builder().concurrency(TASKS).task(
        "gated",
        move |ctx| {
            let (gate, started_tx) = (Arc::clone(&gate), started_tx.clone());
            async move {
                let _ = started_tx.send(ctx.task_id.clone());
                gate.acquire().await.expect("open").forget();
                Ok(json!(ctx.task_id))
            }
        },
    ));
    let mut session = broker.session().await;
    let hello = session.hello().await;
    assert_eq!(hello.batch_bytes, 1 << 20, "the worker reads batches");
    session.welcome_batches(4096);
    // One frame down with every assignment: each starts, in order.
    let ids: Vec<String> = (0..TASKS).map(|i| format!("t{i:02}")).collect();
    session.send(Down::Batch(pb::BrokerBatch {
        messages: ids
            .iter()
            .map(|id| pb::BrokerMessage {
                msg: Some(assignment(id, "gated", "[]")),
            })
            .collect(),
    }));
    let mut order = Vec::new();
    for _ in 0..TASKS {
        order.push(recv("a start", &mut started).await);
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "every assignment of the batch started once");
    // All end at once: their outcomes go up packed within 4096 bytes
    // (`next` checks the size and unpacks them).
    release.add_permits(ids.len());
    let mut reported = Vec::new();
    for _ in 0..TASKS {
        let outcome = session.outcome().await;
        reported.push(outcome.task.expect("a task ref").task_id);
    }
    reported.sort();
    assert_eq!(reported, ids);
    assert!(
        session.batches >= 1,
        "64 outcomes ready together, none batched"
    );
    // The acknowledgments in one frame too: the drain, which waits for
    // every outcome to be acknowledged, ends.
    session.send(Down::Batch(pb::BrokerBatch {
        messages: ids
            .iter()
            .map(|id| pb::BrokerMessage {
                msg: Some(Down::OutcomeAck(pb::OutcomeAck {
                    task: Some(task(id)),
                    accepted: true,
                    reason: String::new(),
                })),
            })
            .collect(),
    }));
    worker.shut_down();
    session.expect_drain_and_goodbye().await;
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn heartbeats_arrive_every_interval() {
    let mut broker = Broker::start().await;
    let mut worker = Running::start(
        broker
            .builder()
            .task("noop", |_ctx| async { Ok(Value::Null) }),
    );
    let mut session = broker.session().await;
    session.hello().await;
    session.welcome(60_000, 20, &[]);
    for _ in 0..3 {
        assert_eq!(
            session.next().await,
            Some(Up::Heartbeat(pb::Heartbeat { tasks: Vec::new() })),
            "an empty heartbeat extends every lease of the stream"
        );
    }
    worker.shut_down();
    session.expect_drain_and_goodbye().await;
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn cancel_aborts_the_body_and_reports_cancelled() {
    let mut broker = Broker::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let mut worker = Running::start(
        broker
            .builder()
            .task("stuck", stuck(&started_tx, &dropped_tx)),
    );
    let mut session = broker.session().await;
    session.hello().await;
    session.welcome(60_000, 60_000, &[]);
    session.send(assignment("t-1", "stuck", "[]"));
    assert_eq!(recv("the body to start", &mut started).await, "t-1");

    session.send(Down::Cancel(pb::Cancel {
        task: Some(task("t-1")),
        reason: "chain cancelled".into(),
    }));
    let outcome = session.outcome().await;
    assert_eq!(outcome.task, Some(task("t-1")));
    assert_eq!(
        failure(&outcome),
        &pb::Failure {
            error_type: "Cancelled".into(),
            message: "chain cancelled".into(),
            traceback: String::new(),
            retryable: false,
        }
    );
    assert_eq!(recv("the body to be dropped", &mut dropped).await, "t-1");

    session.ack(&task("t-1"));
    worker.shut_down();
    session.expect_drain_and_goodbye().await;
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn at_most_concurrency_bodies_run_at_once_and_prefetched_ones_wait() {
    let mut broker = Broker::start().await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let body = {
        let (running, most, gate) = (Arc::clone(&running), Arc::clone(&most), Arc::clone(&gate));
        move |ctx: TaskContext| {
            let (running, most, gate) =
                (Arc::clone(&running), Arc::clone(&most), Arc::clone(&gate));
            let started = started_tx.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = started.send(ctx.task_id.clone());
                gate.acquire().await.expect("gate open").forget();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        }
    };
    let mut worker = Running::start(
        broker
            .builder()
            .concurrency(2)
            .prefetch(2)
            .task("gated", body),
    );
    let mut session = broker.session().await;
    let hello = session.hello().await;
    assert_eq!((hello.concurrency, hello.prefetch), (2, 2));
    session.welcome(60_000, 60_000, &[]);
    // The window (2 running, 2 prefetched) and one more, which a broker
    // never sends: the worker guards anyway.
    for i in 0..5 {
        session.send(assignment(&format!("t-{i}"), "gated", "[]"));
    }
    recv("a first body", &mut started).await;
    recv("a second body", &mut started).await;
    for done in 0..5 {
        gate.add_permits(1);
        let outcome = session.outcome().await;
        session.ack(outcome.task.as_ref().expect("task ref"));
        if done < 3 {
            recv("the next body", &mut started).await;
        }
    }
    assert_eq!(most.load(Ordering::SeqCst), 2, "never more than 2 at once");

    worker.shut_down();
    session.expect_drain_and_goodbye().await;
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn drain_finishes_running_work_waits_for_its_ack_then_says_goodbye() {
    let mut broker = Broker::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let body = {
        let gate = Arc::clone(&gate);
        move |_ctx: TaskContext| {
            let gate = Arc::clone(&gate);
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                gate.acquire().await.expect("gate open").forget();
                Ok(json!("done"))
            }
        }
    };
    let mut worker = Running::start(broker.builder().task("slow", body));
    let mut session = broker.session().await;
    session.hello().await;
    session.welcome(60_000, 20, &[]);
    session.send(assignment("t-1", "slow", "[]"));
    recv("the body to start", &mut started).await;

    worker.shut_down();
    assert_eq!(
        session.expect().await,
        Up::Drain(pb::Drain {}),
        "Drain first, while the body runs"
    );
    gate.add_permits(1);
    let outcome = session.outcome().await;
    assert_eq!(success(&outcome), json!("done"));
    // Until the outcome is acknowledged the worker stays: heartbeats keep
    // coming and no Goodbye is sent.
    for _ in 0..2 {
        assert!(matches!(session.next().await, Some(Up::Heartbeat(_))));
    }
    session.ack(&task("t-1"));
    assert_eq!(session.expect().await, Up::Goodbye(pb::Goodbye {}));
    assert_eq!(session.next().await, None, "the stream ends after Goodbye");
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn drain_timeout_aborts_what_still_runs() {
    let mut broker = Broker::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let mut worker = Running::start(
        broker
            .builder()
            .drain_timeout(Duration::from_millis(100))
            .task("stuck", stuck(&started_tx, &dropped_tx)),
    );
    let mut session = broker.session().await;
    session.hello().await;
    session.welcome(60_000, 60_000, &[]);
    session.send(assignment("t-1", "stuck", "[]"));
    recv("the body to start", &mut started).await;

    worker.shut_down();
    // No outcome: the run is abandoned and Goodbye hands it back at once.
    session.expect_drain_and_goodbye().await;
    assert_eq!(recv("the body to be dropped", &mut dropped).await, "t-1");
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn in_body_throttle_waits_for_the_grant_and_releases_after_the_block() {
    let mut broker = Broker::start().await;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (holding_tx, mut holding) = mpsc::unbounded_channel();
    let release_gate = Arc::new(Semaphore::new(0));
    let block = move |ctx: TaskContext| {
        let entered = entered_tx.clone();
        async move {
            let per_tenant = Throttle::new(2).key("tenant:42").shared();
            let value = ctx
                .throttle(per_tenant, async {
                    let _ = entered.send(());
                    7
                })
                .await?;
            Ok(json!(value))
        }
    };
    let guard = {
        let release_gate = Arc::clone(&release_gate);
        move |ctx: TaskContext| {
            let (holding, release_gate) = (holding_tx.clone(), Arc::clone(&release_gate));
            async move {
                let slot = ctx.acquire(Throttle::new(1).key("vm:1")).await?;
                let _ = holding.send(slot.request_id());
                release_gate.acquire().await.expect("gate open").forget();
                drop(slot);
                Ok(Value::Null)
            }
        }
    };
    let mut worker = Running::start(
        broker
            .builder()
            .concurrency(2)
            .task("block", block)
            .task("guard", guard),
    );
    let mut session = broker.session().await;
    session.hello().await;
    session.welcome(60_000, 60_000, &[]);

    // Block form.
    session.send(assignment("t-block", "block", "[]"));
    let Up::ThrottleAcquire(acquire) = session.expect().await else {
        panic!("expected ThrottleAcquire")
    };
    assert_ne!(acquire.request_id, 0);
    assert_eq!(acquire.task, Some(task("t-block")));
    assert_eq!(
        acquire.throttle,
        Some(pb::Throttle {
            concurrency: 2,
            key: "tenant:42".into(),
            shared: true,
            scope: pb::ThrottleScope::Task.into(),
            rate: None,
        })
    );
    assert!(entered.try_recv().is_err(), "the block waits for the grant");
    session.send(Down::ThrottleGranted(pb::ThrottleGranted {
        request_id: acquire.request_id,
    }));
    recv("the block to run", &mut entered).await;
    assert_eq!(
        session.expect().await,
        Up::ThrottleRelease(pb::ThrottleRelease {
            request_id: acquire.request_id,
            task: Some(task("t-block")),
        })
    );
    assert_eq!(success(&session.outcome().await), json!(7));
    session.ack(&task("t-block"));

    // Guard form: released when the guard is dropped.
    session.send(assignment("t-guard", "guard", "[]"));
    let Up::ThrottleAcquire(acquire) = session.expect().await else {
        panic!("expected ThrottleAcquire")
    };
    session.send(Down::ThrottleGranted(pb::ThrottleGranted {
        request_id: acquire.request_id,
    }));
    assert_eq!(
        recv("the slot to be held", &mut holding).await,
        acquire.request_id
    );
    release_gate.add_permits(1);
    assert_eq!(
        session.expect().await,
        Up::ThrottleRelease(pb::ThrottleRelease {
            request_id: acquire.request_id,
            task: Some(task("t-guard")),
        })
    );
    success(&session.outcome().await);
    session.ack(&task("t-guard"));

    // A refused request (WorkerError) fails the run.
    session.send(assignment("t-refused", "guard", "[]"));
    let Up::ThrottleAcquire(acquire) = session.expect().await else {
        panic!("expected ThrottleAcquire")
    };
    session.send(Down::Error(pb::WorkerError {
        request_id: acquire.request_id,
        task: Some(task("t-refused")),
        message: "key too long".into(),
    }));
    let outcome = session.outcome().await;
    let refused = failure(&outcome);
    assert_eq!(
        (
            refused.error_type.as_str(),
            refused.message.as_str(),
            refused.retryable
        ),
        ("ThrottleRefused", "key too long", false)
    );
    session.ack(&task("t-refused"));

    worker.shut_down();
    session.expect_drain_and_goodbye().await;
    drop(session);
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn reconnect_declares_held_work_resends_unacked_outcomes_and_aborts_lost_runs() {
    let mut broker = Broker::start().await;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let slow = {
        let gate = Arc::clone(&gate);
        move |ctx: TaskContext| {
            let (entered, gate) = (entered_tx.clone(), Arc::clone(&gate));
            async move {
                ctx.throttle(Throttle::new(1).key("k"), async {
                    let _ = entered.send(());
                    gate.acquire().await.expect("gate open").forget();
                })
                .await?;
                Ok(json!("slow done"))
            }
        }
    };
    let mut worker = Running::start(
        broker
            .builder()
            .concurrency(3)
            .task("quick", |_ctx| async { Ok(json!("quick done")) })
            .task("slow", slow)
            .task("doomed", stuck(&started_tx, &dropped_tx)),
    );

    // First connection: a finished but unacknowledged run (a), a running one
    // holding an in-body slot (b), and a running one the broker will drop (c).
    let mut first = broker.session().await;
    first.hello().await;
    first.welcome(60_000, 60_000, &[]);
    first.send(assignment("a", "quick", "[]"));
    let quick_outcome = first.outcome().await;
    assert_eq!(success(&quick_outcome), json!("quick done"));
    first.send(assignment("b", "slow", "[]"));
    let Up::ThrottleAcquire(acquire) = first.expect().await else {
        panic!("expected ThrottleAcquire")
    };
    first.send(Down::ThrottleGranted(pb::ThrottleGranted {
        request_id: acquire.request_id,
    }));
    recv("b to hold its slot", &mut entered).await;
    first.send(assignment("c", "doomed", "[]"));
    recv("c to start", &mut started).await;
    first.break_stream();

    // Second connection: everything is declared held.
    let mut second = broker.session().await;
    let hello = second.hello().await;
    assert_eq!(hello.held, vec![task("a"), task("b"), task("c")]);
    assert_eq!(
        hello.held_slots,
        vec![pb::HeldSlot {
            task: Some(task("b")),
            request_id: acquire.request_id,
        }]
    );
    second.send(Down::Welcome(pb::Welcome {
        worker_id: "w-2".into(),
        lease_ms: 60_000,
        heartbeat_interval_ms: 60_000,
        kept: vec![task("a"), task("b")],
        lost: vec![task("c")],
        batch_bytes: 0,
    }));
    assert_eq!(
        second.outcome().await,
        quick_outcome,
        "the unacked outcome is re-sent"
    );
    assert_eq!(recv("the lost run to be aborted", &mut dropped).await, "c");
    gate.add_permits(1);
    assert_eq!(
        second.expect().await,
        Up::ThrottleRelease(pb::ThrottleRelease {
            request_id: acquire.request_id,
            task: Some(task("b")),
        })
    );
    let slow_outcome = second.outcome().await;
    assert_eq!(slow_outcome.task, Some(task("b")));
    assert_eq!(success(&slow_outcome), json!("slow done"));
    second.ack(&task("a"));
    second.ack(&task("b"));

    // No outcome for c ever comes: the drain finds nothing left to wait for.
    worker.shut_down();
    second.expect_drain_and_goodbye().await;
    drop((first, second));
    worker.finished().await.expect("clean stop");
}

/// A prefetched run that has not started when the stream breaks waits
/// for the next Welcome: the broker may have forgotten it (a broker killed
/// before the assignment was durable), and then it must never start.
#[tokio::test]
async fn a_prefetched_run_waits_for_the_broker_and_a_lost_one_never_starts() {
    let mut broker = Broker::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let body = {
        let gate = Arc::clone(&gate);
        move |ctx: TaskContext| {
            let (gate, started) = (Arc::clone(&gate), started_tx.clone());
            async move {
                let _ = started.send(ctx.task_id.clone());
                gate.acquire().await.expect("gate open").forget();
                Ok(Value::Null)
            }
        }
    };
    let mut worker = Running::start(
        broker
            .builder()
            .concurrency(1)
            .prefetch(2)
            .task("gated", body),
    );
    let mut first = broker.session().await;
    first.hello().await;
    first.welcome(60_000, 60_000, &[]);
    for id in ["a", "b", "c"] {
        first.send(assignment(id, "gated", "[]"));
    }
    assert_eq!(recv("a to start", &mut started).await, "a");
    first.break_stream();
    let mut second = broker.session().await;
    let hello = second.hello().await;
    assert_eq!(hello.held, vec![task("a"), task("b"), task("c")]);

    // a ends while no broker is welcomed: b and c wait.
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        started.try_recv().is_err(),
        "a prefetched run started unwelcomed"
    );

    // The broker forgot b: only c starts.
    second.send(Down::Welcome(pb::Welcome {
        worker_id: "w-2".into(),
        lease_ms: 60_000,
        heartbeat_interval_ms: 60_000,
        kept: vec![task("a"), task("c")],
        lost: vec![task("b")],
        batch_bytes: 0,
    }));
    assert_eq!(recv("c to start", &mut started).await, "c");
    gate.add_permits(1);
    let mut ended = Vec::new();
    for _ in 0..2 {
        let outcome = second.outcome().await;
        let task = outcome.task.clone().expect("task ref");
        second.ack(&task);
        ended.push(task.task_id);
    }
    ended.sort();
    assert_eq!(ended, ["a", "c"]);
    assert!(started.try_recv().is_err(), "the lost run started");

    worker.shut_down();
    second.expect_drain_and_goodbye().await;
    drop((first, second));
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn reconnect_resends_a_pending_throttle_request() {
    let mut broker = Broker::start().await;
    let body = |ctx: TaskContext| async move {
        ctx.throttle(Throttle::new(1), async {}).await?;
        Ok(json!("throttled done"))
    };
    let mut worker = Running::start(broker.builder().task("throttled", body));
    let mut first = broker.session().await;
    first.hello().await;
    first.welcome(60_000, 60_000, &[]);
    first.send(assignment("t-1", "throttled", "[]"));
    let Up::ThrottleAcquire(acquire) = first.expect().await else {
        panic!("expected ThrottleAcquire")
    };
    first.break_stream();

    let mut second = broker.session().await;
    let hello = second.hello().await;
    assert_eq!(hello.held, vec![task("t-1")]);
    assert!(hello.held_slots.is_empty(), "nothing was granted yet");
    second.welcome(60_000, 60_000, &[task("t-1")]);
    assert_eq!(
        second.expect().await,
        Up::ThrottleAcquire(acquire.clone()),
        "the same request, same id"
    );
    second.send(Down::ThrottleGranted(pb::ThrottleGranted {
        request_id: acquire.request_id,
    }));
    assert!(matches!(
        second.expect().await,
        Up::ThrottleRelease(r) if r.request_id == acquire.request_id
    ));
    assert_eq!(success(&second.outcome().await), json!("throttled done"));
    second.ack(&task("t-1"));

    worker.shut_down();
    second.expect_drain_and_goodbye().await;
    drop((first, second));
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn a_run_whose_lease_lapsed_while_disconnected_is_aborted() {
    let mut broker = Broker::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let mut worker = Running::start(
        broker
            .builder()
            .task("stuck", stuck(&started_tx, &dropped_tx)),
    );
    let mut first = broker.session().await;
    first.hello().await;
    // A 50 ms lease, never extended: the first reconnect attempt comes
    // after a 100 ms backoff, by which time the lease has lapsed.
    first.welcome(50, 60_000, &[]);
    first.send(assignment("t-1", "stuck", "[]"));
    recv("the body to start", &mut started).await;
    first.break_stream();

    assert_eq!(recv("the body to be aborted", &mut dropped).await, "t-1");
    let mut second = broker.session().await;
    let hello = second.hello().await;
    assert!(hello.held.is_empty(), "a lapsed run is no longer ours");
    second.welcome(60_000, 60_000, &[]);
    worker.shut_down();
    second.expect_drain_and_goodbye().await;
    drop((first, second));
    worker.finished().await.expect("clean stop");
}

#[tokio::test]
async fn a_refused_session_stops_the_worker_with_an_error() {
    let broker = Broker::start().await;
    *broker.refuse_next.lock().expect("not poisoned") = Some(Status::invalid_argument(
        "hello.queues[0]: invalid queue name",
    ));
    let worker = Running::start(
        broker
            .builder()
            .queues(["bad queue!"])
            .task("noop", |_ctx| async { Ok(Value::Null) }),
    );
    match worker.finished().await {
        Err(Error::Rejected(status)) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_while_the_broker_is_unreachable_stops_at_once() {
    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    drop(listener);
    let mut worker =
        Running::start(Worker::builder(url).task("noop", |_ctx| async { Ok(Value::Null) }));
    worker.shut_down();
    worker
        .finished()
        .await
        .expect("nothing held, nothing to drain");
}

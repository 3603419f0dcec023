//! The client against a fake broker: a tonic server on 127.0.0.1:0 with
//! canned answers, which records what it was sent.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::*;
use crate::pb::admin_server::AdminServer;
use crate::pb::broker_server::BrokerServer;
use crate::signature::{Task, Throttle};

/// Upper bound of every test: none should come near it.
const BOUND: Duration = Duration::from_secs(20);

type Events = Pin<Box<dyn Stream<Item = Result<pb::ChainEvent, Status>> + Send>>;

/// What one WatchChain call streams: these items, then the end of the
/// stream or, with `hang`, nothing ever again.
struct Watch {
    items: Vec<Result<pb::ChainEvent, Status>>,
    hang: bool,
}

/// A broker with canned answers. WatchChain calls take the scripted
/// [`Watch`]es in order and answer NOT_FOUND once none is left.
#[derive(Default)]
struct Fake {
    submits: Mutex<Vec<pb::SubmitChainRequest>>,
    watches: Mutex<VecDeque<Watch>>,
    watched: Mutex<Vec<String>>,
    watch_opened: Notify,
    cancels: Mutex<Vec<pb::CancelChainRequest>>,
    limits: Mutex<Vec<pb::SetThrottleLimitRequest>>,
}

impl Fake {
    fn with_watches(watches: impl IntoIterator<Item = Watch>) -> Arc<Self> {
        let fake = Self::default();
        fake.watches.lock().unwrap().extend(watches);
        Arc::new(fake)
    }

    fn watch_count(&self) -> usize {
        self.watched.lock().unwrap().len()
    }
}

#[tonic::async_trait]
impl pb::broker_server::Broker for Fake {
    async fn submit_chain(
        &self,
        request: Request<pb::SubmitChainRequest>,
    ) -> Result<Response<pb::SubmitChainResponse>, Status> {
        let request = request.into_inner();
        let dedup = if request.unique_key.is_empty() {
            pb::Dedup::Unspecified
        } else {
            pb::Dedup::UniqueKey
        };
        self.submits.lock().unwrap().push(request);
        Ok(Response::new(pb::SubmitChainResponse {
            chain_id: "c-1".into(),
            dedup: dedup.into(),
        }))
    }

    async fn submit_chains(
        &self,
        request: Request<pb::SubmitChainsRequest>,
    ) -> Result<Response<pb::SubmitChainsResponse>, Status> {
        let chains = request.into_inner().chains;
        let answers = chains
            .iter()
            .map(|c| pb::SubmitChainResponse {
                chain_id: c.chain_id.clone(),
                dedup: 0,
            })
            .collect();
        self.submits.lock().unwrap().extend(chains);
        Ok(Response::new(pb::SubmitChainsResponse { chains: answers }))
    }

    async fn get_chain(
        &self,
        request: Request<pb::GetChainRequest>,
    ) -> Result<Response<pb::Chain>, Status> {
        let mut chain = chain("c-1", pb::ChainState::Running);
        chain.chain_id = request.into_inner().chain_id;
        Ok(Response::new(chain))
    }

    async fn get_step_result(
        &self,
        _: Request<pb::GetStepResultRequest>,
    ) -> Result<Response<pb::GetStepResultResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    type WatchChainStream = Events;

    async fn watch_chain(
        &self,
        request: Request<pb::WatchChainRequest>,
    ) -> Result<Response<Events>, Status> {
        self.watched
            .lock()
            .unwrap()
            .push(request.into_inner().chain_id);
        self.watch_opened.notify_one();
        let Some(watch) = self.watches.lock().unwrap().pop_front() else {
            return Err(Status::not_found("chain c-1 not found"));
        };
        let items = tokio_stream::iter(watch.items);
        let events: Events = if watch.hang {
            Box::pin(items.chain(tokio_stream::pending()))
        } else {
            Box::pin(items)
        };
        Ok(Response::new(events))
    }

    async fn cancel_chain(
        &self,
        request: Request<pb::CancelChainRequest>,
    ) -> Result<Response<pb::CancelChainResponse>, Status> {
        self.cancels.lock().unwrap().push(request.into_inner());
        Ok(Response::new(pb::CancelChainResponse {
            state: pb::ChainState::Cancelled.into(),
        }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Fake {
    async fn list_queues(
        &self,
        _: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queue = pb::QueueInfo {
            name: "general".into(),
            ready: 2,
            ..pb::QueueInfo::default()
        };
        Ok(Response::new(pb::ListQueuesResponse {
            queues: vec![queue],
        }))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let worker = pb::WorkerInfo {
            worker_id: "w-1".into(),
            ..pb::WorkerInfo::default()
        };
        Ok(Response::new(pb::ListWorkersResponse {
            workers: vec![worker],
        }))
    }

    async fn list_throttles(
        &self,
        _: Request<pb::ListThrottlesRequest>,
    ) -> Result<Response<pb::ListThrottlesResponse>, Status> {
        Ok(Response::new(pb::ListThrottlesResponse::default()))
    }

    async fn set_throttle_limit(
        &self,
        request: Request<pb::SetThrottleLimitRequest>,
    ) -> Result<Response<pb::ThrottleInfo>, Status> {
        let request = request.into_inner();
        let info = pb::ThrottleInfo {
            identity: request.identity.clone(),
            limit: request.limit,
            limit_overridden: true,
            ..pb::ThrottleInfo::default()
        };
        self.limits.lock().unwrap().push(request);
        Ok(Response::new(info))
    }

    async fn set_throttle_rate(
        &self,
        request: Request<pb::SetThrottleRateRequest>,
    ) -> Result<Response<pb::ThrottleInfo>, Status> {
        let request = request.into_inner();
        Ok(Response::new(pb::ThrottleInfo {
            identity: request.identity,
            rate: request.rate,
            rate_overridden: request.rate.is_some(),
            ..pb::ThrottleInfo::default()
        }))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        Ok(Response::new(pb::QueueInfo {
            name: request.into_inner().queue,
            paused: true,
            ..pb::QueueInfo::default()
        }))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        Ok(Response::new(pb::QueueInfo {
            name: request.into_inner().queue,
            ..pb::QueueInfo::default()
        }))
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(pb::PurgeQueueResponse {
            cancelled: 1,
            chain_ids: vec![format!("{}:{}", request.queue, request.reason)],
        }))
    }

    async fn list_dead_chains(
        &self,
        request: Request<pb::ListDeadChainsRequest>,
    ) -> Result<Response<pb::ListDeadChainsResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(pb::ListDeadChainsResponse {
            chains: vec![pb::Chain {
                chain_id: format!("dead-{}", request.page_size),
                ..pb::Chain::default()
            }],
            next_page_token: format!("after-{}", request.page_token),
        }))
    }

    async fn list_chains(
        &self,
        request: Request<pb::ListChainsRequest>,
    ) -> Result<Response<pb::ListChainsResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(pb::ListChainsResponse {
            chains: vec![pb::Chain {
                chain_id: format!("state-{}", request.state),
                ..pb::Chain::default()
            }],
            next_page_token: format!("after-{}", request.page_token),
        }))
    }

    async fn requeue_chain(
        &self,
        request: Request<pb::RequeueChainRequest>,
    ) -> Result<Response<pb::RequeueChainResponse>, Status> {
        let from = request.into_inner().chain_id;
        Ok(Response::new(pb::RequeueChainResponse {
            chain_id: format!("{from}-again"),
            requeued_from: from,
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        Ok(Response::new(pb::DrainWorkerResponse {
            workers: vec![pb::WorkerInfo {
                worker_name: request.into_inner().worker,
                draining: true,
                ..pb::WorkerInfo::default()
            }],
        }))
    }

    async fn put_schedule(
        &self,
        request: Request<pb::PutScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        Ok(Response::new(pb::ScheduleInfo {
            schedule: request.into_inner().schedule,
            next_fires_unix_ms: vec![60_000],
            ..pb::ScheduleInfo::default()
        }))
    }

    async fn list_schedules(
        &self,
        _: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        Ok(Response::new(pb::ListSchedulesResponse::default()))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let request = request.into_inner();
        Ok(Response::new(pb::ScheduleInfo {
            schedule: Some(pb::Schedule {
                name: request.name,
                paused: request.paused,
                ..pb::Schedule::default()
            }),
            ..pb::ScheduleInfo::default()
        }))
    }

    async fn remove_schedule(
        &self,
        request: Request<pb::RemoveScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        match request.into_inner().name.as_str() {
            "nope" => Err(Status::not_found("schedule \"nope\" not found")),
            _ => Ok(Response::new(pb::RemoveScheduleResponse {})),
        }
    }
}

/// Serves `fake` on `listener` until the future is dropped.
async fn serve(fake: Arc<Fake>, listener: TcpListener) {
    Server::builder()
        .add_service(BrokerServer::from_arc(fake.clone()))
        .add_service(AdminServer::from_arc(fake))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .expect("the fake broker serves");
}

/// Starts `fake` on a fresh loopback port of the test's runtime.
async fn start(fake: Arc<Fake>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(fake, listener));
    addr
}

async fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr.to_string()).await.unwrap()
}

/// Runs `test` within [`BOUND`].
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, test)
        .await
        .expect("the test finished in time")
}

fn chain(chain_id: &str, state: pb::ChainState) -> pb::Chain {
    pb::Chain {
        chain_id: chain_id.into(),
        state: state.into(),
        ..pb::Chain::default()
    }
}

fn event(kind: &str, chain: pb::Chain) -> Result<pb::ChainEvent, Status> {
    Ok(pb::ChainEvent {
        kind: kind.into(),
        phase: pb::Phase::Main.into(),
        step_index: 0,
        chain: Some(chain),
    })
}

fn running(kind: &str) -> Result<pb::ChainEvent, Status> {
    event(kind, chain("c-1", pb::ChainState::Running))
}

fn succeeded(result: &str) -> Result<pb::ChainEvent, Status> {
    let mut chain = chain("c-1", pb::ChainState::Succeeded);
    chain.result = result.into();
    event("chain_succeeded", chain)
}

fn ends(items: Vec<Result<pb::ChainEvent, Status>>) -> Watch {
    Watch { items, hang: false }
}

fn hangs(items: Vec<Result<pb::ChainEvent, Status>>) -> Watch {
    Watch { items, hang: true }
}

fn failure_record() -> pb::FailureRecord {
    pb::FailureRecord {
        chain_id: "c-1".into(),
        phase: pb::Phase::Main.into(),
        step_index: 1,
        task_name: "demo.fast".into(),
        task_id: "t-2".into(),
        attempt: 2,
        error_type: "ValueError".into(),
        message: "bad uuid".into(),
        traceback: "Traceback (most recent call last): ...".into(),
    }
}

#[tokio::test]
async fn submit_sends_what_the_builder_built() {
    bounded(async {
        let fake = Arc::new(Fake::default());
        let client = connect(start(fake.clone()).await).await;
        let (slow, fast) = (Task::new("demo.slow"), Task::new("demo.fast"));
        let built = Chain::new([
            slow.si([10])
                .heavy()
                .throttle(Throttle::new(1).key("10"))
                .timeout(Duration::from_secs(60)),
            fast.s(json!({"verbose": true}))
                .countdown(Duration::from_secs(2)),
        ])
        .on_success(Task::new("set_ok").si([10]))
        .on_failure(Task::new("set_erred").s([10]))
        .context("user", "alice")
        .idempotency_key("demo-10");

        let submitted = client.submit(built.clone()).await.unwrap();

        assert_eq!(submitted.chain_id, "c-1");
        assert!(submitted.is_new());
        let mut sent = fake.submits.lock().unwrap().clone();
        // The client chose the chain id (see `choose_id`): a UUIDv7.
        let id = uuid::Uuid::parse_str(&std::mem::take(&mut sent[0].chain_id)).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(sent, [pb::SubmitChainRequest::from(built)]);
    })
    .await;
}

#[test]
fn a_chain_id_the_client_chose_found_stored_is_its_own_first_try() {
    let answer = |dedup: pb::Dedup| pb::SubmitChainResponse {
        chain_id: "c-1".into(),
        dedup: dedup.into(),
    };
    // Stored by a first try whose answer was lost: new to the caller.
    assert_eq!(
        Submitted::of(answer(pb::Dedup::ChainId), true).dedup,
        pb::Dedup::Unspecified
    );
    // An id the caller chose, stored before: a repeat, said so.
    assert_eq!(
        Submitted::of(answer(pb::Dedup::ChainId), false).dedup,
        pb::Dedup::ChainId
    );
    assert_eq!(
        Submitted::of(answer(pb::Dedup::IdempotencyKey), true).dedup,
        pb::Dedup::IdempotencyKey
    );
}

#[tokio::test]
async fn submit_reports_a_deduplicated_chain() {
    bounded(async {
        let client = connect(start(Arc::default()).await).await;
        let chain = Chain::new(Task::new("pull").si(())).unique_key("tenant:42:pull");
        let submitted = client.submit(chain).await.unwrap();
        assert_eq!(submitted.dedup, pb::Dedup::UniqueKey);
        assert!(!submitted.is_new());
    })
    .await;
}

#[tokio::test]
async fn connect_accepts_an_address_or_a_uri() {
    bounded(async {
        let addr = start(Arc::default()).await;
        for endpoint in [addr.to_string(), format!("http://{addr}")] {
            let client = Client::connect(endpoint).await.unwrap();
            assert_eq!(client.get("c-7").await.unwrap().chain_id, "c-7");
        }
    })
    .await;
}

#[tokio::test]
async fn connect_fails_on_a_bad_or_closed_endpoint() {
    bounded(async {
        let malformed = Client::connect("http://[::1").await.unwrap_err();
        assert!(matches!(malformed, Error::Transport(_)), "{malformed:?}");

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let refused = Client::connect(addr.to_string()).await.unwrap_err();
        assert!(matches!(refused, Error::Transport(_)), "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn wait_returns_succeeded_with_the_decoded_result() {
    bounded(async {
        let fake = Fake::with_watches([ends(vec![
            running("snapshot"),
            running("step_succeeded"),
            succeeded(r#"{"volume":"vol-1","size":10}"#),
        ])]);
        let client = connect(start(fake.clone()).await).await;

        let outcome = client.wait("c-1").await.unwrap();

        assert_eq!(
            outcome,
            ChainOutcome::Succeeded(json!({"volume": "vol-1", "size": 10}))
        );
        assert_eq!(*fake.watched.lock().unwrap(), ["c-1"]);
    })
    .await;
}

#[tokio::test]
async fn wait_returns_failed_with_the_failure_record() {
    bounded(async {
        let mut failed = chain("c-1", pb::ChainState::Failed);
        failed.failure = Some(failure_record());
        let fake = Fake::with_watches([ends(vec![
            running("snapshot"),
            event("chain_failed", failed),
        ])]);
        let client = connect(start(fake).await).await;

        let outcome = client.wait("c-1").await.unwrap();

        assert_eq!(outcome, ChainOutcome::Failed(failure_record()));
    })
    .await;
}

#[tokio::test]
async fn wait_returns_cancelled_with_the_reason() {
    bounded(async {
        let mut cancelled = chain("c-1", pb::ChainState::Cancelled);
        cancelled.cancel_reason = "operator request".into();
        let fake = Fake::with_watches([ends(vec![
            running("snapshot"),
            event("chain_cancelled", cancelled),
        ])]);
        let client = connect(start(fake).await).await;

        let outcome = client.wait("c-1").await.unwrap();

        assert_eq!(outcome, ChainOutcome::Cancelled("operator request".into()));
    })
    .await;
}

#[tokio::test]
async fn wait_of_an_ended_chain_returns_from_the_snapshot() {
    bounded(async {
        let fake = Fake::with_watches([ends(vec![succeeded("")])]);
        let client = connect(start(fake).await).await;
        let outcome = client.wait("c-1").await.unwrap();
        assert_eq!(outcome, ChainOutcome::Succeeded(serde_json::Value::Null));
    })
    .await;
}

#[tokio::test]
async fn wait_reopens_a_watch_that_broke_with_unavailable() {
    bounded(async {
        let fake = Fake::with_watches([
            ends(vec![
                running("snapshot"),
                Err(Status::unavailable("broker is shutting down")),
            ]),
            ends(vec![running("snapshot"), succeeded("7")]),
        ]);
        let client = connect(start(fake.clone()).await).await;

        let outcome = client.wait("c-1").await.unwrap();

        assert_eq!(outcome, ChainOutcome::Succeeded(json!(7)));
        assert_eq!(fake.watch_count(), 2);
    })
    .await;
}

#[tokio::test]
async fn wait_reopens_a_watch_that_ended_before_the_chain() {
    bounded(async {
        let fake =
            Fake::with_watches([ends(vec![running("snapshot")]), ends(vec![succeeded("8")])]);
        let client = connect(start(fake.clone()).await).await;

        let outcome = client.wait("c-1").await.unwrap();

        assert_eq!(outcome, ChainOutcome::Succeeded(json!(8)));
        assert_eq!(fake.watch_count(), 2);
    })
    .await;
}

#[tokio::test]
async fn wait_returns_other_statuses_at_once() {
    bounded(async {
        // No watch scripted: the fake answers NOT_FOUND.
        let fake = Arc::new(Fake::default());
        let client = connect(start(fake.clone()).await).await;

        let error = client.wait("c-1").await.unwrap_err();

        assert_eq!(error.code(), Some(tonic::Code::NotFound), "{error:?}");
        assert_eq!(fake.watch_count(), 1, "not retried");
    })
    .await;
}

#[tokio::test]
async fn wait_reports_a_result_that_is_not_json() {
    bounded(async {
        let fake = Fake::with_watches([ends(vec![succeeded("{oops")])]);
        let client = connect(start(fake).await).await;
        let error = client.wait("c-1").await.unwrap_err();
        assert!(matches!(error, Error::Json { .. }), "{error:?}");
    })
    .await;
}

#[tokio::test]
async fn wait_timeout_gives_up_on_a_chain_that_does_not_end() {
    bounded(async {
        let fake = Fake::with_watches([hangs(vec![running("snapshot")])]);
        let client = connect(start(fake).await).await;

        let limit = Duration::from_millis(200);
        let error = client.wait_timeout("c-1", limit).await.unwrap_err();

        assert!(
            matches!(error, Error::Timeout(d) if d == limit),
            "{error:?}"
        );
    })
    .await;
}

/// A broker killed mid-watch (its runtime dropped, so every connection
/// closes without a gRPC status) and started again on the same address.
#[tokio::test]
async fn wait_follows_the_chain_across_a_broker_restart() {
    bounded(async {
        let first = Fake::with_watches([hangs(vec![running("snapshot")])]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let broker = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        broker.spawn(serve(
            first.clone(),
            TcpListener::from_std(listener).unwrap(),
        ));

        let client = connect(addr).await;
        let waiting = tokio::spawn(async move { client.wait("c-1").await });
        first.watch_opened.notified().await;
        // Dropping the runtime blocks until its tasks, listener and
        // connections are gone.
        tokio::task::spawn_blocking(move || drop(broker))
            .await
            .unwrap();

        let second = Fake::with_watches([ends(vec![succeeded(r#""ok""#)])]);
        tokio::spawn(serve(
            second.clone(),
            TcpListener::bind(addr).await.unwrap(),
        ));

        let outcome = waiting.await.unwrap().unwrap();
        assert_eq!(outcome, ChainOutcome::Succeeded(json!("ok")));
        assert_eq!(second.watch_count(), 1);
    })
    .await;
}

#[tokio::test]
async fn get_and_cancel_speak_to_the_broker() {
    bounded(async {
        let fake = Arc::new(Fake::default());
        let client = connect(start(fake.clone()).await).await;

        let chain = client.get("c-9").await.unwrap();
        assert_eq!(chain.chain_id, "c-9");
        assert_eq!(chain.state(), pb::ChainState::Running);

        let state = client.cancel("c-9", "no longer needed").await.unwrap();
        assert_eq!(state, pb::ChainState::Cancelled);
        let cancels = fake.cancels.lock().unwrap().clone();
        let expected = pb::CancelChainRequest {
            chain_id: "c-9".into(),
            reason: "no longer needed".into(),
        };
        assert_eq!(cancels, [expected]);
    })
    .await;
}

#[tokio::test]
async fn watch_streams_the_events_in_order() {
    bounded(async {
        let fake = Fake::with_watches([ends(vec![
            running("snapshot"),
            running("step_started"),
            succeeded("1"),
        ])]);
        let client = connect(start(fake).await).await;

        let events = client.watch("c-1").await.unwrap();
        let kinds: Vec<_> = events.map(|event| event.unwrap().kind).collect().await;

        assert_eq!(kinds, ["snapshot", "step_started", "chain_succeeded"]);
    })
    .await;
}

#[tokio::test]
async fn admin_operations_send_their_requests() {
    bounded(async {
        let fake = Arc::new(Fake::default());
        let admin = connect(start(fake.clone()).await).await.admin();
        let paused = admin.pause_queue("io").await.unwrap();
        assert_eq!((paused.name.as_str(), paused.paused), ("io", true));
        assert!(!admin.resume_queue("io").await.unwrap().paused);
        let purged = admin.purge_queue("io", "why").await.unwrap();
        assert_eq!(purged.chain_ids, ["io:why"]);
        let page = admin.list_dead_chains(7, "t").await.unwrap();
        assert_eq!(page.chains[0].chain_id, "dead-7");
        assert_eq!(page.next_page_token, "after-t");
        let page = admin
            .list_chains(pb::ChainState::Succeeded, 3, "u")
            .await
            .unwrap();
        assert_eq!(page.chains[0].chain_id, "state-2");
        assert_eq!(page.next_page_token, "after-u");
        assert_eq!(admin.requeue_chain("c").await.unwrap(), "c-again");
        let drained = admin.drain_worker("w").await.unwrap();
        assert_eq!(
            (drained[0].worker_name.as_str(), drained[0].draining),
            ("w", true)
        );
        let schedule = pb::Schedule {
            name: "nightly".into(),
            cron: "0 3 * * *".into(),
            ..pb::Schedule::default()
        };
        let put = admin.put_schedule(schedule.clone()).await.unwrap();
        assert_eq!(put.schedule, Some(schedule));
        assert!(admin.list_schedules().await.unwrap().is_empty());
        let paused = admin.pause_schedule("nightly", true).await.unwrap();
        assert!(
            paused
                .schedule
                .is_some_and(|s| s.paused && s.name == "nightly")
        );
        admin.remove_schedule("nightly").await.unwrap();
        assert!(admin.remove_schedule("nope").await.is_err());
    })
    .await;
}

#[tokio::test]
async fn admin_lists_and_sets_throttle_limits() {
    bounded(async {
        let fake = Arc::new(Fake::default());
        let admin = connect(start(fake.clone()).await).await.admin();

        let queues = admin.list_queues().await.unwrap();
        assert_eq!((queues[0].name.as_str(), queues[0].ready), ("general", 2));
        let workers = admin.list_workers().await.unwrap();
        assert_eq!(workers[0].worker_id, "w-1");
        assert!(admin.list_throttles().await.unwrap().is_empty());

        let identity = pb::ThrottleIdentity::shared("tenant:42");
        let info = admin.set_throttle_limit(identity.clone(), 4).await.unwrap();
        assert_eq!((info.identity.as_ref(), info.limit), (Some(&identity), 4));
        let sent = fake.limits.lock().unwrap().clone();
        let expected = pb::SetThrottleLimitRequest {
            identity: Some(pb::ThrottleIdentity {
                task_name: String::new(),
                key: "tenant:42".into(),
            }),
            limit: 4,
        };
        assert_eq!(sent, [expected]);
    })
    .await;
}

#[test]
fn a_task_identity_names_the_task_and_key() {
    let identity = pb::ThrottleIdentity::task("demo.slow", "10");
    assert_eq!(
        (identity.task_name.as_str(), identity.key.as_str()),
        ("demo.slow", "10")
    );
}

/// Calls run side by side: when the leader dies, every call in flight
/// fails at once. The first moves the route on; the others must follow it,
/// not count the same failure again (with two brokers, the second count
/// ended the round and failed the call, which the next broker would take:
/// 121 of 60,000 submissions in a failover of the demo's load).
#[test]
fn a_failure_another_call_already_moved_on_from_is_not_counted_again() {
    let route = Route {
        brokers: Mutex::new(Brokers::new(vec!["a:1".into(), "b:1".into()]).expect("brokers")),
        options: ClientOptions::new(),
        bearer: Bearer::default(),
    };
    let cut_off = Refusal::default();
    assert_eq!(route.failed("a:1", &cut_off), Next::Now);
    assert_eq!(route.current(), "b:1");
    for _ in 0..63 {
        assert_eq!(route.failed("a:1", &cut_off), Next::Now);
        assert_eq!(route.current(), "b:1");
    }
    // A failure at the broker the route is on counts: the round ends.
    assert!(matches!(route.failed("b:1", &cut_off), Next::Pause { .. }));
}

//! The gRPC edge against what the adversarial review (issue 19) sent it:
//! chain ids spelt in other ways, requests over the message limit, and
//! watchers that fall behind. Every test runs a real broker and speaks
//! gRPC to it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use baton::{Task, pb};
use baton_worker::{TaskContext, TaskError};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt as _;
use tonic::Code;

/// The spellings of one UUID that must all name the same chain.
fn spellings(id: &str) -> Vec<String> {
    let simple = id.replace('-', "");
    vec![
        id.to_uppercase(),
        format!("{{{id}}}"),
        format!("{{{}}}", id.to_uppercase()),
        simple.clone(),
        simple.to_uppercase(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_that_names_a_chain_accepts_any_spelling_of_its_id() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut broker_rpc = pb::broker_client::BrokerClient::connect(broker.addr.clone())
        .await
        .unwrap();
    let mut admin_rpc = pb::admin_client::AdminClient::connect(broker.addr.clone())
        .await
        .unwrap();

    // Submitted in upper case: stored, and answered, in the canonical form.
    let id = uuid::Uuid::now_v7().to_string();
    let mut request: pb::SubmitChainRequest =
        baton::Chain::from(Task::new("edge.nobody_runs_this").si([1])).into();
    request.chain_id = id.to_uppercase();
    let submitted = client.submit_request(request).await.unwrap();
    assert_eq!(submitted.chain_id, id);

    for spelling in spellings(&id) {
        let chain = broker_rpc
            .get_chain(pb::GetChainRequest {
                chain_id: spelling.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetChain {spelling}: {e}"))
            .into_inner();
        assert_eq!(chain.chain_id, id, "GetChain {spelling}");

        let mut events = broker_rpc
            .watch_chain(pb::WatchChainRequest {
                chain_id: spelling.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("WatchChain {spelling}: {e}"))
            .into_inner();
        let snapshot = events.next().await.expect("a snapshot").unwrap();
        assert_eq!(snapshot.kind, "snapshot");
        assert_eq!(snapshot.chain.expect("its chain").chain_id, id);
    }

    let cancelled = broker_rpc
        .cancel_chain(pb::CancelChainRequest {
            chain_id: format!("{{{}}}", id.to_uppercase()),
            reason: "spelt oddly".into(),
        })
        .await
        .expect("CancelChain with braces and upper case")
        .into_inner();
    assert_eq!(cancelled.state(), pb::ChainState::Cancelled);

    // RequeueChain takes failed chains: one whose deadline passed.
    let failed_id = uuid::Uuid::now_v7().to_string();
    let mut request: pb::SubmitChainRequest =
        baton::Chain::from(Task::new("edge.nobody_runs_this").si([2])).into();
    request.chain_id = failed_id.clone();
    request.deadline_unix_ms = baton_server::domain::now_ms() + 50;
    client.submit_request(request).await.unwrap();
    let outcome = client.wait_timeout(&failed_id, PATIENCE).await.unwrap();
    assert!(
        matches!(outcome, baton::ChainOutcome::Failed(_)),
        "{outcome:?}"
    );
    let requeued = admin_rpc
        .requeue_chain(pb::RequeueChainRequest {
            chain_id: failed_id.to_uppercase(),
        })
        .await
        .expect("RequeueChain in upper case")
        .into_inner();
    assert_eq!(requeued.requeued_from, failed_id);

    // A malformed id is refused by every one of them, naming the field.
    let bad = "0190-not-a-uuid".to_owned();
    let statuses = [
        broker_rpc
            .get_chain(pb::GetChainRequest {
                chain_id: bad.clone(),
            })
            .await
            .unwrap_err(),
        broker_rpc
            .watch_chain(pb::WatchChainRequest {
                chain_id: bad.clone(),
            })
            .await
            .unwrap_err(),
        broker_rpc
            .cancel_chain(pb::CancelChainRequest {
                chain_id: bad.clone(),
                reason: String::new(),
            })
            .await
            .unwrap_err(),
        admin_rpc
            .requeue_chain(pb::RequeueChainRequest {
                chain_id: bad.clone(),
            })
            .await
            .unwrap_err(),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("chain_id is not a UUID"),
            "{}",
            status.message()
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_resource_exhausted_naming_the_option() {
    let broker = TestBroker::start_with(|c| c.limits.max_payload_bytes = 1024).await;
    let mut broker_rpc = pb::broker_client::BrokerClient::connect(broker.addr.clone())
        .await
        .unwrap();
    let mut request: pb::SubmitChainRequest =
        baton::Chain::from(Task::new("edge.big").si(["x".repeat(100 * 1024)])).into();
    request.chain_id = uuid::Uuid::now_v7().to_string();
    let status = broker_rpc.submit_chain(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("over the limit of 66560 bytes per message")
            && status.message().contains("--max-payload (1024 bytes)"),
        "{}",
        status.message()
    );
    // Under the message limit but over --max-payload: refused by the edge's
    // own check, as before.
    let request: pb::SubmitChainRequest =
        baton::Chain::from(Task::new("edge.big").si(["x".repeat(2048)])).into();
    let status = broker_rpc.submit_chain(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    broker.stop().await;
}

/// The value of `baton_watch_buffered_bytes` on the broker's metrics
/// endpoint.
async fn watch_buffered_bytes(metrics: std::net::SocketAddr) -> i64 {
    let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("baton_watch_buffered_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no baton_watch_buffered_bytes in {text}"))
}

/// Issue 19, items 9 and 15: three watchers that never read, on a 1 MB
/// chain that polls, took the broker to 3 GB, and a watcher dropped for
/// being slow got a plain end of stream. Now a watcher holds at most its
/// byte budget, and one that falls behind is ended with RESOURCE_EXHAUSTED
/// saying so, while a watcher that reads sees every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_is_held_to_its_byte_budget_and_told_why() {
    const BUDGET: usize = 512 * 1024;
    const POLLS: u32 = 60;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let broker = TestBroker::start_with(|c| {
        c.limits.watch_budget_bytes = BUDGET;
        c.metrics_listen = Some(metrics);
    })
    .await;
    let client = broker.client().await;

    // A chain whose first step leaves a 100 KB result in its record (and
    // in every event on the wire), and whose second step changes the
    // record twice with every poll (started, polling): 12 MB of events,
    // far more than the silent watcher's connection and budget take.
    let id = client
        .submit(baton::Chain::new(Task::new("edge.big").si(())).then(Task::new("edge.poll").si(())))
        .await
        .unwrap()
        .chain_id;

    // The silent watcher has a connection of its own and never reads; its
    // HTTP/2 windows are the protocol's smallest, so that the broker, not
    // the client's buffers, holds what it does not read.
    let channel = tonic::transport::Endpoint::from_shared(broker.addr.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut silent_rpc = pb::broker_client::BrokerClient::new(channel);
    let mut silent = silent_rpc
        .watch_chain(pb::WatchChainRequest {
            chain_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut reading = client.watch(&id).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = reading.next().await {
            let event = event.expect("the reading watcher is never cut off");
            let polls = event.chain.as_ref().map_or(0, |c| c.steps[1].polls);
            seen.push((event.kind, polls));
        }
        seen
    });
    let most = Arc::new(AtomicI64::new(0));
    let sampler = tokio::spawn({
        let most = most.clone();
        async move {
            loop {
                most.fetch_max(watch_buffered_bytes(metrics).await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let _worker = TestWorker::spawn(
        worker(&broker.addr, "poller")
            .task("edge.big", |_ctx: TaskContext| async {
                Ok(serde_json::json!("x".repeat(100 * 1024)))
            })
            .task("edge.poll", |ctx: TaskContext| async move {
                if ctx.polls >= POLLS {
                    Ok(serde_json::json!("done"))
                } else {
                    Err(TaskError::retry_later(Duration::from_millis(5)))
                }
            }),
    );
    client.wait_timeout(&id, PATIENCE).await.unwrap();

    // The reader saw the snapshot, every poll, the start of each run and
    // the end.
    let seen = reader.await.unwrap();
    let polled: Vec<u32> = seen
        .iter()
        .filter(|(kind, _)| kind == "step_polling")
        .map(|(_, polls)| *polls)
        .collect();
    assert_eq!(polled, (1..=POLLS).collect::<Vec<_>>(), "{seen:?}");
    assert_eq!(seen.first().map(|(k, _)| k.as_str()), Some("snapshot"));
    assert_eq!(
        seen.last().map(|(k, _)| k.as_str()),
        Some("chain_succeeded")
    );

    // What the broker held stayed within the two watchers' budgets, and
    // once the chain ended, only the silent one's events are left.
    sampler.abort();
    let budget = i64::try_from(BUDGET).unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(most > 0 && most <= 2 * budget, "{most} bytes held at most");
    let held = watch_buffered_bytes(metrics).await;
    assert!(held <= budget, "{held} bytes held");

    // The silent watcher, read at last: what reached it before it fell
    // behind, then the reason.
    let mut events = 0;
    let status = loop {
        match tokio::time::timeout(PATIENCE, silent.next()).await.unwrap() {
            Some(Ok(_)) => events += 1,
            Some(Err(status)) => break status,
            None => panic!("a plain end of stream after {events} events"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fell behind") && status.message().contains("watch again"),
        "{}",
        status.message()
    );
    assert!(events < seen.len(), "{events} of {} events", seen.len());
    drop(silent);
    eventually_async(
        "the broker to let go of the silent watcher's events",
        || async { watch_buffered_bytes(metrics).await == 0 },
    )
    .await;
    broker.stop().await;
}

/// Polls an async `check` until it is true or [`PATIENCE`] runs out.
async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

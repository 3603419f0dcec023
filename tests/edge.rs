//! The gRPC edge against what the adversarial review (issue 19) sent it:
//! chain ids spelt in other ways, requests over the message limit, and
//! watchers that fall behind. Every test runs a real broker and speaks
//! gRPC to it.

mod common;

use baton::{Task, pb};
use common::*;
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

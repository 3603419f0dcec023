//! The producer's fast paths: a batch of chains in one call
//! (`SubmitChains`, all or none) and pipelined submission with ids chosen
//! by the client (answers awaited later, resends deduplicated).

mod common;

use std::sync::{Arc, Mutex};

use baton::{Chain, ChainOutcome, Client, Task, pb};
use baton_worker::TaskContext;
use common::*;
use serde_json::{Value, json};
use tonic::Code;

/// A worker whose `bench.noop` notes each argument it ran, in start order.
fn noting_worker(addr: &str, ran: &Arc<Mutex<Vec<Value>>>) -> TestWorker {
    let ran = ran.clone();
    TestWorker::spawn(worker(addr, "noter").concurrency(1).task(
        "bench.noop",
        move |ctx: TaskContext| {
            let ran = ran.clone();
            async move {
                let arg = ctx.args.first().cloned().unwrap_or(Value::Null);
                ran.lock().unwrap().push(arg.clone());
                Ok(arg)
            }
        },
    ))
}

fn noop(i: u64) -> Chain {
    Task::new("bench.noop").si([i]).into()
}

async fn assert_not_stored(client: &Client, chain_id: &str) {
    let err = client
        .get(chain_id)
        .await
        .expect_err("chain must not exist");
    assert_eq!(err.status().map(tonic::Status::code), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_in_order_and_every_chain_runs() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;

    let answers = client.submit_many((0..300).map(noop)).await.unwrap();
    assert_eq!(answers.len(), 300);
    assert!(answers.iter().all(baton::Submitted::is_new));

    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = noting_worker(&broker.addr, &ran);
    for (i, answer) in answers.iter().enumerate() {
        let outcome = client.wait_timeout(&answer.chain_id, PATIENCE).await;
        assert_eq!(outcome.unwrap(), ChainOutcome::Succeeded(json!(i)));
    }
    // One worker slot: the queue hands them out in submission order.
    let expected: Vec<Value> = (0..300).map(|i| json!(i)).collect();
    assert_eq!(*ran.lock().unwrap(), expected);
    worker.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_chain_stores_none_and_names_it() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut request = pb::SubmitChainsRequest {
        chains: ids
            .iter()
            .enumerate()
            .map(|(i, id)| pb::SubmitChainRequest {
                chain_id: id.clone(),
                ..noop(i as u64).into()
            })
            .collect(),
    };
    request.chains[3].steps[0].args = "not json".into();

    let mut raw = pb::broker_client::BrokerClient::connect(broker.addr.clone())
        .await
        .unwrap();
    let status = raw.submit_chains(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("chains[3]: steps[0].args"),
        "{}",
        status.message()
    );
    for id in &ids {
        assert_not_stored(&client, id).await;
    }

    let empty = raw
        .submit_chains(pb::SubmitChainsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let too_many = client.submit_many((0..1001).map(noop)).await.unwrap_err();
    let status = too_many.status().expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1000"), "{}", status.message());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_submissions_keep_the_client_ids_and_all_run() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = noting_worker(&broker.addr, &ran);

    // The plain producer loop: nothing is awaited inside it.
    let pending: Vec<_> = (0..500).map(|i| client.submit_pipelined(noop(i))).collect();
    let ids: Vec<String> = pending.iter().map(|p| p.chain_id().to_owned()).collect();
    for (p, id) in pending.into_iter().zip(&ids) {
        let stored = p.stored().await.unwrap();
        assert_eq!(&stored.chain_id, id);
        assert!(stored.is_new());
    }
    for (i, id) in ids.iter().enumerate() {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        assert_eq!(outcome, ChainOutcome::Succeeded(json!(i)));
    }
    assert_eq!(ran.lock().unwrap().len(), 500);
    worker.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_chain_id_stores_nothing_new() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let id = uuid::Uuid::new_v4().to_string();
    let request = |arg: u64| pb::SubmitChainRequest {
        chain_id: id.to_uppercase(), // any spelling of the UUID
        ..noop(arg).into()
    };
    let first = client.submit_request(request(1)).await.unwrap();
    assert_eq!(first.chain_id, id);
    assert!(first.is_new());
    let again = client.submit_request(request(2)).await.unwrap();
    assert_eq!(again.chain_id, id);
    assert_eq!(again.dedup, pb::Dedup::ChainId);

    // Also once the chain has ended and left the scheduler's memory.
    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = noting_worker(&broker.addr, &ran);
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(1)));
    let after_end = client.submit_request(request(3)).await.unwrap();
    assert_eq!(after_end.dedup, pb::Dedup::ChainId);
    assert_eq!(*ran.lock().unwrap(), vec![json!(1)]);

    let bad = pb::SubmitChainRequest {
        chain_id: "chain-1".into(),
        ..noop(4).into()
    };
    let err = client.submit_request(bad).await.unwrap_err();
    let status = err.status().expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("chain_id"),
        "{}",
        status.message()
    );
    worker.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_batch_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let mut ids = Vec::new();
    for batch in 0..3u64 {
        let answers = client
            .submit_many((0..1000).map(|i| noop(batch * 1000 + i)))
            .await
            .unwrap();
        ids.extend(answers.into_iter().map(|a| a.chain_id));
    }
    let pending: Vec<_> = (0..200)
        .map(|i| client.submit_pipelined(noop(10_000 + i)))
        .collect();
    for p in pending {
        ids.push(p.stored().await.unwrap().chain_id);
    }
    broker.kill9().await;

    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = noting_worker(&broker.addr, &ran);
    for id in &ids {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        assert!(matches!(outcome, ChainOutcome::Succeeded(_)), "{id}");
    }
    assert_eq!(ran.lock().unwrap().len(), ids.len());
    worker.stop().await;
    broker.terminate().await;
}

/// A broker that stops answering (SIGSTOP: its kernel still accepts
/// connections and bytes, nothing reads them) does not hang a client: the
/// call fails with `DEADLINE_EXCEEDED` once `ClientOptions::timeout` has
/// passed, and the client works again when the broker resumes. With
/// several brokers the timed-out call is made at the next one instead
/// (`server/tests/failover.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_frozen_broker_fails_after_the_client_timeout() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::spawn(data.path(), free_port(), &[]).await;
    let options = baton::ClientOptions::new().timeout(std::time::Duration::from_millis(500));
    let client = Client::connect_with(broker.addr.clone(), options)
        .await
        .unwrap();
    client
        .submit(Task::new("frozen.before").si(()))
        .await
        .unwrap();

    broker.signal("STOP");
    // Bounded from outside, so that a client that hangs fails the test
    // instead of hanging it.
    let answer =
        tokio::time::timeout(PATIENCE, client.submit(Task::new("frozen.during").si(()))).await;
    broker.signal("CONT");
    let error = answer
        .expect("the call hung on a frozen broker")
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::DeadlineExceeded), "{error}");
    assert!(error.to_string().contains("within 500ms"), "{error}");

    let after = client
        .submit(Task::new("frozen.after").si(()))
        .await
        .unwrap();
    assert!(after.is_new());
    broker.kill9().await;
}

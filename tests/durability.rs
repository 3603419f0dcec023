//! Durability end to end with the real `baton` binary: what SubmitChain
//! acknowledged survives `kill -9` of the broker, and every such chain
//! finishes after a restart on the same data directory.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use baton::{Chain, ChainOutcome, Task};
use baton_worker::TaskContext;
use common::*;
use serde_json::json;

fn two_step(i: u64) -> Chain {
    Chain::new([Task::new("step.one").si([i]), Task::new("step.two").s(())])
}

/// Task bodies record every (chain, step) they ran.
fn recording_worker(addr: &str, seen: &Arc<Mutex<HashSet<(String, String)>>>) -> TestWorker {
    let body = |seen: Arc<Mutex<HashSet<(String, String)>>>| {
        move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .insert((ctx.chain_id.clone(), ctx.name.clone()));
                Ok(ctx.args.first().cloned().unwrap_or(json!(null)))
            }
        }
    };
    TestWorker::spawn(
        worker(addr, "recorder")
            .concurrency(8)
            .task("step.one", body(seen.clone()))
            .task("step.two", body(seen.clone())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_chains_survive_kill_9_and_all_finish_after_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = BrokerProcess::spawn(data.path(), port, &["--lease-ms", "2000"]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();

    // Half the chains are acknowledged with no worker around (all queued),
    // half while a worker runs them, and the broker dies mid-flight.
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(client.submit(two_step(i)).await.unwrap().chain_id);
    }
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let worker = recording_worker(&broker.addr, &seen);
    for i in 100..200 {
        ids.push(client.submit(two_step(i)).await.unwrap().chain_id);
    }
    broker.kill9().await;

    let broker = BrokerProcess::spawn(data.path(), port, &["--lease-ms", "2000"]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        assert_eq!(outcome, ChainOutcome::Succeeded(json!(i)), "chain {i}");
    }
    let seen = seen.lock().unwrap().clone();
    for id in &ids {
        assert!(
            seen.contains(&(id.clone(), "step.one".into())),
            "step.one of {id} never ran"
        );
        assert!(
            seen.contains(&(id.clone(), "step.two".into())),
            "step.two of {id} never ran"
        );
    }
    worker.stop().await;
    assert!(
        broker.terminate().await,
        "SIGTERM must stop the broker cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_finished_chains_readable() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let worker = recording_worker(&broker.addr, &seen);
    let id = client.submit(two_step(7)).await.unwrap().chain_id;
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!(7))
    );
    worker.stop().await;
    assert!(broker.terminate().await);

    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.state(), baton::pb::ChainState::Succeeded);
    assert_eq!(chain.result, "7");
    assert!(broker.terminate().await);
}

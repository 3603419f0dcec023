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

/// Admin changes are acknowledged only once durable: throttle limits and
/// queue pauses answered OK are all there after a `kill -9` right after the
/// answers. Before the fix SetThrottleLimit answered before its write was
/// even applied, and most of the limits were gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_answered_ok_survive_kill_9() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    for round in 0..3 {
        let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
        let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
        // Each kind alone: an answer that waits for a flush would carry
        // the other kind's writes with it.
        let limits = (1..=15u32).map(|i| {
            let admin = client.admin();
            let identity = baton::pb::ThrottleIdentity {
                task_name: String::new(),
                key: format!("tenant-{round}-{i}"),
            };
            async move { admin.set_throttle_limit(identity, i).await }
        });
        for answer in futures::future::join_all(limits).await {
            answer.expect("set limit");
        }
        broker.kill9().await;
        let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
        let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
        let pauses = (1..=15u32).map(|i| {
            let admin = client.admin();
            async move { admin.pause_queue(format!("q{round}-{i}")).await }
        });
        for answer in futures::future::join_all(pauses).await {
            answer.expect("pause");
        }
        broker.kill9().await;

        let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
        let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
        let throttles = client.admin().list_throttles().await.unwrap();
        let queues = client.admin().list_queues().await.unwrap();
        broker.kill9().await;
        for i in 1..=15u32 {
            let key = format!("tenant-{round}-{i}");
            let found = throttles
                .iter()
                .find(|t| t.identity.as_ref().is_some_and(|id| id.key == key));
            assert_eq!(
                found.map(|t| (t.limit, t.limit_overridden)),
                Some((i, true)),
                "the limit of {key} was acknowledged and lost"
            );
            let name = format!("q{round}-{i}");
            assert!(
                queues.iter().any(|q| q.name == name && q.paused),
                "the pause of {name} was acknowledged and lost"
            );
        }
    }
}

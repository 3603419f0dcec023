//! Retention of ended chains (`--retention-ms`): a chain that ended is
//! kept for the retention window, then removed with its results, its
//! place in the dead list and its idempotency key; a chain not ended is
//! never removed; removals survive a restart; zero keeps everything.

mod common;

use std::time::Duration;

use baton::{Chain, ChainOutcome, Task};
use baton_worker::{TaskContext, TaskError};
use common::*;
use serde_json::{Value, json};

const RETENTION: Duration = Duration::from_millis(1500);

fn worker_of(addr: &str) -> TestWorker {
    TestWorker::spawn(
        worker(addr, "retention")
            .concurrency(4)
            .task("ok", |_ctx: TaskContext| async move {
                // Over the size kept in the record: stored apart.
                Ok(json!("r".repeat(64 * 1024)))
            })
            .task("boom", |_ctx: TaskContext| async move {
                Err::<Value, _>(TaskError::fatal("no").with_type("Boom"))
            }),
    )
}

fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(now.unwrap().as_millis()).unwrap()
}

async fn not_found(client: &baton::Client, id: &str) -> bool {
    matches!(client.get(id).await, Err(e) if e.code() == Some(tonic::Code::NotFound))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_chains_are_removed_after_the_retention_window_and_live_ones_are_kept() {
    let broker = TestBroker::start_with(|c| c.retention = RETENTION).await;
    let client = broker.client().await;
    let w = worker_of(&broker.addr);
    let ok = Task::new("ok");
    let succeeded = client
        .submit(Chain::new(ok.si(["a"])).idempotency_key("key-1"))
        .await
        .unwrap()
        .chain_id;
    let failed = client
        .submit(Task::new("boom").si(["b"]))
        .await
        .unwrap()
        .chain_id;
    // Nobody runs "nobody": this one stays queued, not ended.
    let queued = client
        .submit(Task::new("nobody").si(["c"]))
        .await
        .unwrap()
        .chain_id;
    let cancelled = client
        .submit(Task::new("nobody").si(["d"]))
        .await
        .unwrap()
        .chain_id;
    client.cancel(&cancelled, "test").await.unwrap();
    assert!(matches!(
        client.wait_timeout(&succeeded, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(_)
    ));
    assert!(matches!(
        client.wait_timeout(&failed, PATIENCE).await.unwrap(),
        ChainOutcome::Failed(_)
    ));
    // Within the window everything is there, the failed chain in the
    // dead list.
    let dead = client.admin().list_dead_chains(100, "").await.unwrap();
    assert_eq!(dead.chains.len(), 1);
    let mut finished = std::collections::HashMap::new();
    for id in [&succeeded, &failed, &cancelled, &queued] {
        let chain = client.get(id).await.expect("kept within the window");
        finished.insert(id.clone(), chain.finished_unix_ms);
    }

    let start = std::time::Instant::now();
    for id in [&succeeded, &failed, &cancelled] {
        loop {
            let before = unix_ms();
            if not_found(&client, id).await {
                // Not before its window was over.
                let due = finished[id] + u64::try_from(RETENTION.as_millis()).unwrap();
                assert!(before + 50 >= due, "{id} removed {} ms early", due - before);
                break;
            }
            assert!(start.elapsed() < PATIENCE, "{id} was not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        client.get(&queued).await.is_ok(),
        "a queued chain was removed"
    );
    let dead = client.admin().list_dead_chains(100, "").await.unwrap();
    assert!(dead.chains.is_empty(), "{:?}", dead.chains);
    // The idempotency key went with its chain: it is taken anew.
    let again = client
        .submit(Chain::new(ok.si(["a"])).idempotency_key("key-1"))
        .await
        .unwrap();
    assert!(again.is_new(), "{again:?}");
    assert_ne!(again.chain_id, succeeded);
    client
        .wait_timeout(&again.chain_id, PATIENCE)
        .await
        .unwrap();
    w.stop().await;

    // A restart brings none of them back, and keeps the queued one.
    let dir = broker.dir.clone();
    broker.stop().await;
    let broker = TestBroker::start_in(dir, |c| c.retention = Duration::ZERO).await;
    let client = broker.client().await;
    for id in [&succeeded, &failed, &cancelled] {
        assert!(not_found(&client, id).await, "{id} came back");
    }
    assert!(client.get(&queued).await.is_ok());
    // With retention 0, the chain that ended before the restart stays.
    tokio::time::sleep(RETENTION * 2).await;
    assert!(client.get(&again.chain_id).await.is_ok());
    broker.stop().await;
}

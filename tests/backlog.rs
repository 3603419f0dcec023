//! A long backlog: past `COLD_AFTER` waiting tasks in one queue line, new
//! chains leave the broker's memory and wait as small queue entries. What a
//! user sees must not change: order, reads, cancel, purge, and survival of
//! `kill -9`.

mod common;

use std::sync::{Arc, Mutex};

use baton::{Chain, ChainOutcome, Client, Task, pb};
use baton_worker::TaskContext;
use common::*;
use serde_json::{Value, json};

/// More than one line's hot part, so most of these wait cold.
const BACKLOG: u64 = 2500;
/// Positions of the chains cancelled: one before the restart, one after.
const CANCELLED: [u64; 2] = [1500, 2200];

fn noop(i: u64) -> Chain {
    Task::new("backlog.noop").si([i]).into()
}

/// A worker running one task at a time, noting each argument in order.
fn noting_worker(addr: &str, ran: &Arc<Mutex<Vec<u64>>>) -> TestWorker {
    let ran = ran.clone();
    TestWorker::spawn(worker(addr, "noter").concurrency(1).task(
        "backlog.noop",
        move |ctx: TaskContext| {
            let ran = ran.clone();
            async move {
                let i: u64 = ctx.arg(0)?;
                ran.lock().unwrap().push(i);
                Ok(Value::from(i))
            }
        },
    ))
}

async fn submit_backlog(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    let all: Vec<u64> = (0..BACKLOG).collect();
    for part in all.chunks(1000) {
        let answers = client
            .submit_many(part.iter().map(|&i| noop(i)))
            .await
            .unwrap();
        ids.extend(answers.into_iter().map(|a| a.chain_id));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_backlog_reads_cancels_and_runs_in_order_across_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let ids = submit_backlog(&client).await;

    // A chain deep in the backlog reads like any other.
    let deep = client.get(&ids[2000]).await.unwrap();
    assert_eq!(deep.state(), pb::ChainState::Running);
    assert_eq!(deep.steps[0].state(), pb::StepState::Ready);
    // Cancel one before and one after the restart.
    let cancelled = CANCELLED;
    let state = client.cancel(&ids[1500], "test").await.unwrap();
    assert_eq!(state, pb::ChainState::Cancelled);
    let queues = client.admin().list_queues().await.unwrap();
    let general = queues.iter().find(|q| q.name == "general").unwrap();
    assert_eq!(general.ready, BACKLOG - 1);

    broker.kill9().await;
    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let state = client.cancel(&ids[2200], "test").await.unwrap();
    assert_eq!(state, pb::ChainState::Cancelled);

    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = noting_worker(&broker.addr, &ran);
    for (i, id) in (0..BACKLOG).zip(&ids) {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        if cancelled.contains(&i) {
            assert!(
                matches!(outcome, ChainOutcome::Cancelled(_)),
                "{i}: {outcome:?}"
            );
        } else {
            assert_eq!(outcome, ChainOutcome::Succeeded(json!(i)), "{i}");
        }
    }
    // One worker slot: submission order, across the restart and the
    // hot/cold boundary; the cancelled chains never ran.
    let expected: Vec<u64> = (0..BACKLOG).filter(|i| !cancelled.contains(i)).collect();
    assert_eq!(*ran.lock().unwrap(), expected);
    worker.stop().await;
    broker.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_cold_backlog_cancels_every_chain() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let ids = submit_backlog(&client).await;
    let purged = client.admin().purge_queue("general", "test").await.unwrap();
    assert_eq!(purged.chain_ids.len(), ids.len());
    for id in [&ids[0], &ids[1999], &ids[2499]] {
        let chain = client.get(id).await.unwrap();
        assert_eq!(chain.state(), pb::ChainState::Cancelled);
    }
    let queues = client.admin().list_queues().await.unwrap();
    assert!(queues.iter().all(|q| q.ready == 0), "{queues:?}");
    broker.stop().await;
}

//! Priorities end to end: higher first within a queue, first in first out
//! within a priority, counts per priority in `ListQueues`, aging so that a
//! low priority is not starved, and 0 to 9 as the only accepted values.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use baton::{Client, Task};
use baton_worker::TaskContext;
use common::*;
use serde_json::json;

/// Submits one-step chains of "job" with `priority`, arguments `args`.
async fn submit(client: &Client, priority: i32, args: &[i64]) {
    for arg in args {
        client
            .submit(Task::new("job").si([*arg]).priority(priority))
            .await
            .expect("submitted");
    }
}

/// Ready tasks of the general queue by priority, as `ListQueues` shows them.
async fn ready_by_priority(client: &Client) -> HashMap<i32, u64> {
    client
        .admin()
        .list_queues()
        .await
        .expect("queues")
        .into_iter()
        .find(|q| q.name == "general")
        .map(|q| q.ready_by_priority)
        .unwrap_or_default()
}

/// Connects one worker that runs one task at a time and takes none ahead,
/// and returns the arguments of the first `n` tasks in the order they ran.
async fn run_order(broker: &TestBroker, n: usize) -> Vec<String> {
    let journal = Journal::default();
    let seen = journal.clone();
    let _worker = TestWorker::spawn(
        worker(&broker.addr, "one-at-a-time")
            .concurrency(1)
            .prefetch(0)
            .task("job", move |ctx: TaskContext| {
                let seen = seen.clone();
                async move {
                    seen.note(ctx.args[0].to_string());
                    Ok(json!(null))
                }
            }),
    );
    eventually("every task ran", || journal.entries().len() >= n).await;
    journal.entries()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_start_first_and_each_priority_is_fifo() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    submit(&client, 0, &[1, 2]).await;
    submit(&client, 9, &[91]).await;
    submit(&client, 5, &[51, 52]).await;
    submit(&client, 0, &[3]).await;
    submit(&client, 9, &[92, 93]).await;
    let counts = ready_by_priority(&client).await;
    assert_eq!(counts, HashMap::from([(0, 3), (5, 2), (9, 3)]));

    let order = run_order(&broker, 8).await;
    assert_eq!(order, ["91", "92", "93", "51", "52", "1", "2", "3"]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_lifts_a_low_priority_past_later_urgent_work() {
    // One level per 20 ms: a task of priority 0 counts as a 9 after 180 ms,
    // and among 9s the older goes first.
    let broker = TestBroker::start_with(|c| c.priority_aging = Duration::from_millis(20)).await;
    let client = broker.client().await;
    submit(&client, 0, &[1]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    submit(&client, 9, &[91]).await;
    assert_eq!(run_order(&broker, 2).await, ["1", "91"]);
    broker.stop().await;

    // Without aging the same submissions keep strict priority order.
    let broker = TestBroker::start_with(|c| c.priority_aging = Duration::ZERO).await;
    let client = broker.client().await;
    submit(&client, 0, &[1]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    submit(&client, 9, &[91]).await;
    assert_eq!(run_order(&broker, 2).await, ["91", "1"]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_outside_0_to_9_is_refused_and_stores_nothing() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    for bad in [10, -1] {
        let err = client
            .submit(Task::new("job").si([1]).priority(bad))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("steps[0].options.priority is {bad}"))
                && text.contains("from 0 (the default, lowest) to 9 (highest)"),
            "{text}"
        );
    }
    assert!(ready_by_priority(&client).await.is_empty());
    broker.stop().await;
}

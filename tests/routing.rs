//! Routing end to end: explicit queue, else heavy, else general; a task
//! goes only to a worker that subscribed to its queue and registered its
//! name; a heavy task never takes a general worker's slot.

mod common;

use std::time::Duration;

use baton::{Chain, ChainOutcome, Task, pb};
use baton_worker::TaskContext;
use common::*;
use serde_json::json;

/// A body that records "<worker>:<task>:<arg0>".
fn body(
    worker: &'static str,
    task: &'static str,
    journal: &Journal,
) -> impl Fn(
    TaskContext,
) -> std::pin::Pin<
    Box<dyn Future<Output = Result<serde_json::Value, baton_worker::TaskError>> + Send>,
> + Send
+ Sync
+ 'static {
    let journal = journal.clone();
    move |ctx: TaskContext| {
        let journal = journal.clone();
        Box::pin(async move {
            journal.note(format!(
                "{worker}:{task}:{}",
                ctx.args.first().cloned().unwrap_or_default()
            ));
            Ok(json!(worker))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_tasks_wait_for_a_heavy_worker_and_never_take_a_general_slot() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    // The general worker registers both names but subscribes to general only.
    let _general = TestWorker::spawn(
        worker(&broker.addr, "general-1")
            .concurrency(4)
            .task("vm.provision", body("general", "vm.provision", &journal))
            .task("vm.ping", body("general", "vm.ping", &journal)),
    );
    let heavy_ids: Vec<String> = futures::future::join_all(
        (0..5).map(|i| client.submit(Task::new("vm.provision").si([i]).heavy())),
    )
    .await
    .into_iter()
    .map(|r| r.unwrap().chain_id)
    .collect();
    // Light work flows meanwhile on the general worker.
    let light = client
        .submit(Task::new("vm.ping").si([99]))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        client.wait_timeout(&light, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("general"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &heavy_ids {
        let chain = client.get(id).await.unwrap();
        assert_eq!(
            chain.steps[0].state(),
            pb::StepState::Ready,
            "heavy step must wait"
        );
        assert_eq!(chain.steps[0].queue, "heavy");
    }
    let heavy_queue = client.admin().list_queues().await.unwrap();
    assert!(
        heavy_queue
            .iter()
            .any(|q| q.name == "heavy" && q.ready == 5),
        "{heavy_queue:?}"
    );

    let _heavy = TestWorker::spawn(
        worker(&broker.addr, "heavy-1")
            .queues(["heavy"])
            .task("vm.provision", body("heavy", "vm.provision", &journal)),
    );
    for id in &heavy_ids {
        assert_eq!(
            client.wait_timeout(id, PATIENCE).await.unwrap(),
            ChainOutcome::Succeeded(json!("heavy"))
        );
    }
    assert!(
        journal
            .entries()
            .iter()
            .all(|e| !e.starts_with("general:vm.provision")),
        "{:?}",
        journal.entries()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_level_heavy_routes_every_step_and_callback_and_explicit_queue_wins() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let _general = TestWorker::spawn(
        worker(&broker.addr, "general")
            .task("step", body("general", "step", &journal))
            .task("done", body("general", "done", &journal)),
    );
    let _heavy = TestWorker::spawn(
        worker(&broker.addr, "heavy")
            .queues(["heavy"])
            .task("step", body("heavy", "step", &journal))
            .task("done", body("heavy", "done", &journal)),
    );
    let _io = TestWorker::spawn(
        worker(&broker.addr, "io")
            .queues(["io"])
            .task("step", body("io", "step", &journal)),
    );
    let chain = Chain::new([
        Task::new("step").si([1]),
        Task::new("step").si([2]),
        Task::new("step").si([3]).queue("io"),
    ])
    .on_success(Task::new("done").si([4]))
    .heavy();
    let id = client.submit(chain).await.unwrap().chain_id;
    client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(
        journal.entries(),
        ["heavy:step:1", "heavy:step:2", "io:step:3", "heavy:done:4"]
    );
    let chain = client.get(&id).await.unwrap();
    let queues: Vec<&str> = chain.steps.iter().map(|s| s.queue.as_str()).collect();
    assert_eq!(queues, ["heavy", "heavy", "io"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_only_to_a_worker_that_registered_its_name() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let _other = TestWorker::spawn(
        worker(&broker.addr, "other").task("something.else", body("other", "else", &journal)),
    );
    let id = client
        .submit(Task::new("only.here").si([1]))
        .await
        .unwrap()
        .chain_id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.get(&id).await.unwrap().steps[0].state(),
        pb::StepState::Ready
    );
    let _right = TestWorker::spawn(
        worker(&broker.addr, "right").task("only.here", body("right", "only.here", &journal)),
    );
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("right"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_declared_by_the_worker_routes_submissions_that_do_not_say_so() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let heavy_default = pb::Options {
        heavy: true,
        ..Default::default()
    };
    let _heavy = TestWorker::spawn(worker(&broker.addr, "heavy").queues(["heavy"]).task_with(
        "backup.run",
        heavy_default,
        body("heavy", "backup", &journal),
    ));
    let _general = TestWorker::spawn(
        worker(&broker.addr, "general").task("backup.run", body("general", "backup", &journal)),
    );
    // Wait until the heavy worker registered its defaults.
    let admin = client.admin();
    eventually_async(|| async { admin.list_workers().await.unwrap().len() == 2 }).await;
    for i in 0..4 {
        let id = client
            .submit(Task::new("backup.run").si([i]))
            .await
            .unwrap()
            .chain_id;
        assert_eq!(
            client.wait_timeout(&id, PATIENCE).await.unwrap(),
            ChainOutcome::Succeeded(json!("heavy"))
        );
    }
}

async fn eventually_async<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

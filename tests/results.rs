//! Large results end to end: a long chain whose steps each return a large
//! result keeps a bounded record and a bounded data directory (each result
//! is written once, apart from the record), GetChain answers it within the
//! client's message limit, every step receives its predecessor's result,
//! across a restart too, and GetStepResult reads any result.

mod common;

use std::path::Path;

use baton::{Chain, ChainOutcome, Task};
use baton_worker::{TaskContext, TaskError};
use common::*;
use prost::Message;
use serde_json::{Value, json};

/// Steps of the chain, and the size of each step's result.
const STEPS: usize = 12;
const RESULT_BYTES: usize = 512 * 1024;

/// The result of step `i`: a string of `RESULT_BYTES` made from `i`.
fn big(i: usize) -> String {
    let unit = format!("{i:04}");
    unit.repeat(RESULT_BYTES / unit.len())
}

/// A body for step `i` of a mutable chain: checks that it received step
/// `i - 1`'s result (the first argument, as Celery's `.s` passes it), then
/// returns its own.
fn body(ctx: TaskContext) -> Result<Value, TaskError> {
    let i: usize = ctx.arg(ctx.args.len() - 1)?;
    if i > 0 {
        let got: String = ctx.arg(0)?;
        if got != big(i - 1) {
            let message = format!(
                "step {i} got {} bytes, not step {}'s result",
                got.len(),
                i - 1
            );
            return Err(TaskError::fatal(message).with_type("WrongInput"));
        }
    }
    Ok(json!(big(i)))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// The chain: step `i` gets `[i]` and, mutable, the previous result. The
/// first half runs on `first.*`, the second on `second.*`, so that a test
/// can stop between the halves.
fn long_chain() -> Chain {
    Chain::new(
        (0..STEPS)
            .map(|i| {
                let name = if i < STEPS / 2 {
                    "first.big"
                } else {
                    "second.big"
                };
                let task = Task::new(name);
                if i == 0 { task.si([i]) } else { task.s([i]) }
            })
            .collect::<Vec<_>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_are_written_once_and_a_long_chain_stays_readable() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let _first = TestWorker::spawn(
        worker(&broker.addr, "first")
            .task("first.big", |ctx: TaskContext| async move { body(ctx) }),
    );
    let id = client.submit(long_chain()).await.unwrap().chain_id;
    // The first half runs; the second waits for a worker of its name.
    eventually_chain(&client, &id, |c| {
        c.steps[STEPS / 2 - 1].state() == baton::pb::StepState::Succeeded
    })
    .await;

    // A restart between the halves: the result handed to the next step
    // comes back from the store.
    let dir = broker.dir.clone();
    broker.stop().await;
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let client = broker.client().await;
    let _second = TestWorker::spawn(
        worker(&broker.addr, "second")
            .task("second.big", |ctx: TaskContext| async move { body(ctx) }),
    );
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(big(STEPS - 1))));

    // GetChain fits the client's 4 MiB limit: old results are omitted.
    let chain = client.get(&id).await.unwrap();
    let answer_bytes = chain.encoded_len();
    assert!(
        answer_bytes < 4 * 1024 * 1024,
        "GetChain answered {answer_bytes} bytes"
    );
    assert_eq!(
        chain.result,
        serde_json::to_string(&big(STEPS - 1)).unwrap()
    );
    for (i, step) in chain.steps.iter().enumerate() {
        let expected = serde_json::to_string(&big(i)).unwrap();
        assert_eq!(step.result_bytes, expected.len() as u64, "step {i}");
        if step.result_omitted {
            assert!(step.result.is_empty());
        } else {
            assert_eq!(step.result, expected, "step {i}");
        }
        // Every result, omitted or not, reads back whole.
        let read = client.step_result(&id, &step.task_id).await.unwrap();
        assert_eq!(read, expected, "step {i}");
    }
    assert!(
        chain.steps[0].result_omitted,
        "an old result was kept in the answer"
    );

    // Each result was written about once: all of them together are 6 MiB;
    // rewriting them with every step would write 39 MiB (6.5 times). sled
    // keeps a result in a blob file and its log, and the log's segments
    // come in whole: about 3 times the results on disk, a little more when
    // a loaded machine makes the flushes smaller (seen once at over 3).
    let written = dir_bytes(broker.dir.path());
    let results = (STEPS * RESULT_BYTES) as u64;
    assert!(
        written < 4 * results,
        "the data directory holds {written} bytes for {results} bytes of results"
    );
}

/// Polls GetChain until `check` holds.
async fn eventually_chain(
    client: &baton::Client,
    id: &str,
    check: impl Fn(&baton::pb::Chain) -> bool,
) {
    let start = std::time::Instant::now();
    loop {
        let chain = client.get(id).await.unwrap();
        if check(&chain) {
            return;
        }
        assert_eq!(
            chain.state(),
            baton::pb::ChainState::Running,
            "{:?}",
            chain.failure
        );
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting for chain {id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

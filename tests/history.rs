//! A chain's history (issue 25): every attempt with its worker, each retry
//! with its error and when it is due again, polls folded into one entry,
//! a run lost to a lapsed lease naming the worker that lost it, the
//! callbacks and the end, in order, and still there after a restart.

mod common;

use std::time::Duration;

use baton::{Chain, ChainOutcome, Task, pb};
use baton_worker::{TaskContext, TaskError};
use common::*;
use serde_json::json;

/// The history as "kind phase#index attempt" lines.
fn lines(chain: &pb::Chain) -> Vec<String> {
    chain
        .history
        .iter()
        .map(|e| {
            if e.phase == pb::Phase::Unspecified as i32 {
                e.kind.clone()
            } else {
                let phase = pb::Phase::try_from(e.phase).unwrap().as_str_name();
                format!("{} {phase}#{} a{}", e.kind, e.step_index, e.attempt)
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_each_attempt_retry_poll_and_the_end_across_a_restart() {
    let broker = TestBroker::start().await;
    let w = TestWorker::spawn(
        worker(&broker.addr, "historian")
            .task("flaky", |ctx: TaskContext| async move {
                if ctx.attempt < 3 {
                    Err(TaskError::retryable(format!("transient {}", ctx.attempt))
                        .with_type("Flaky"))
                } else {
                    Ok(json!("ok"))
                }
            })
            .task("poll", |ctx: TaskContext| async move {
                if ctx.polls < 4 {
                    Err(TaskError::retry_later(Duration::from_millis(10))
                        .with_message(format!("creating ({})", ctx.polls)))
                } else {
                    Ok(json!("available"))
                }
            })
            .task("set_ok", |_ctx: TaskContext| async { Ok(json!(null)) }),
    );
    let client = broker.client().await;
    let chain = Chain::new(
        Task::new("flaky")
            .si(())
            .max_retries(5)
            .retry_backoff(Duration::from_millis(20)),
    )
    .then(Task::new("poll").si(()))
    .on_success(Task::new("set_ok").si(()));
    let id = client.submit(chain).await.unwrap().chain_id;
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("available"))
    );

    let chain = client.get(&id).await.unwrap();
    let expected = [
        "step_started PHASE_MAIN#0 a1",
        "step_retrying PHASE_MAIN#0 a1",
        "step_started PHASE_MAIN#0 a2",
        "step_retrying PHASE_MAIN#0 a2",
        "step_started PHASE_MAIN#0 a3",
        "step_succeeded PHASE_MAIN#0 a3",
        // Four polls: the first with its run's start, the other three (and
        // their starts) folded into it.
        "step_started PHASE_MAIN#1 a1",
        "step_polling PHASE_MAIN#1 a4",
        "step_started PHASE_MAIN#1 a5",
        "step_succeeded PHASE_MAIN#1 a5",
        "step_started PHASE_ON_SUCCESS#0 a1",
        "step_succeeded PHASE_ON_SUCCESS#0 a1",
        "chain_succeeded",
    ];
    assert_eq!(lines(&chain), expected);
    let h = &chain.history;
    assert!(h.windows(2).all(|p| p[0].at_unix_ms <= p[1].at_unix_ms));
    assert!(h[0].at_unix_ms >= chain.created_unix_ms);
    assert_eq!(h[0].worker, "historian");
    assert_eq!(h[1].detail, "Flaky: transient 1");
    assert!(h[1].next_unix_ms >= h[1].at_unix_ms + 20, "{:?}", h[1]);
    assert_eq!(h[3].detail, "Flaky: transient 2");
    assert_eq!(h[7].repeats, 3);
    assert_eq!(h[7].detail, "creating (3)");
    assert!(h[7].next_unix_ms > 0);
    assert_eq!(chain.history_dropped, 0);

    // The history is in the record: a restart reads it back.
    w.stop().await;
    let dir = broker.dir.clone();
    broker.stop().await;
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let again = broker.client().await.get(&id).await.unwrap();
    assert_eq!(again.history, chain.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_names_its_worker_and_a_cancel_its_reason() {
    let broker = TestBroker::start_with(|c| c.lease = Duration::from_millis(600)).await;
    let client = broker.client().await;
    // The first worker hangs in the body and is killed without a goodbye:
    // its lease lapses and the step goes back to its queue.
    let hung = TestWorker::spawn(worker(&broker.addr, "doomed").task(
        "work",
        |_ctx: TaskContext| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(json!(null))
        },
    ));
    let id = client
        .submit(Task::new("work").si(()))
        .await
        .unwrap()
        .chain_id;
    let started = tokio::time::Instant::now();
    loop {
        let chain = client.get(&id).await.unwrap();
        if chain.steps[0].state() == pb::StepState::Running {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hung.kill();
    let _w = TestWorker::spawn(
        worker(&broker.addr, "rescuer")
            .task("work", |_ctx: TaskContext| async { Ok(json!("done")) }),
    );
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("done"))
    );
    let chain = client.get(&id).await.unwrap();
    assert_eq!(
        lines(&chain),
        [
            "step_started PHASE_MAIN#0 a1",
            "step_lost PHASE_MAIN#0 a1",
            "step_started PHASE_MAIN#0 a2",
            "step_succeeded PHASE_MAIN#0 a2",
            "chain_succeeded",
        ]
    );
    let h = &chain.history;
    assert_eq!(
        (h[0].worker.as_str(), h[1].worker.as_str()),
        ("doomed", "doomed")
    );
    assert!(!h[1].detail.is_empty(), "why it was lost");
    assert_eq!(h[2].worker, "rescuer");

    // A cancelled chain's last entry says why.
    let id = client
        .submit(Task::new("nobody_runs_this").si(()))
        .await
        .unwrap()
        .chain_id;
    client.cancel(&id, "changed my mind").await.unwrap();
    let chain = client.get(&id).await.unwrap();
    assert_eq!(lines(&chain), ["chain_cancelled"]);
    assert_eq!(chain.history[0].detail, "changed my mind");
}

//! Chains and executors end to end: order, result passing, callbacks with
//! the failure record, retries, polls, delays, deadlines, dedup, cancel.

mod common;

use std::time::{Duration, SystemTime};

use baton::{Chain, ChainOutcome, Task, pb};
use baton_worker::{TaskContext, TaskError};
use common::*;
use serde_json::{Value, json};

/// A worker that records every run as "name:args" and echoes a result.
fn recording_worker(addr: &str, journal: &Journal) -> TestWorker {
    let j = journal.clone();
    let note = move |label: &'static str| {
        let j = j.clone();
        move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.note(format!("{label}:{}", Value::Array(ctx.args.clone())));
                Ok(json!(format!("{label}-done")))
            }
        }
    };
    TestWorker::spawn(
        worker(addr, "recorder")
            .concurrency(4)
            .task("begin_creating", note("begin_creating"))
            .task("create", note("create"))
            .task("set_ok", note("set_ok"))
            .task("set_erred", note("set_erred"))
            .task("add", |ctx: TaskContext| async move {
                let a: i64 = ctx.arg(0)?;
                let b: i64 = ctx.arg(1)?;
                Ok(json!(a + b))
            })
            .task("boom", |_ctx: TaskContext| async move {
                Err::<Value, _>(
                    TaskError::fatal("the cloud said no")
                        .with_type("BackendError")
                        .with_traceback("tb line 1"),
                )
            }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_in_order_and_mutable_steps_receive_the_previous_result() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = recording_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let add = Task::new("add");
    let chain = Chain::new([add.si([1, 2]), add.s([10]), add.s([100])]);
    let id = client.submit(chain).await.unwrap().chain_id;
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(113)));
    let chain = client.get(&id).await.unwrap();
    let results: Vec<&str> = chain.steps.iter().map(|s| s.result.as_str()).collect();
    assert_eq!(results, ["3", "13", "113"]);
    assert!(
        chain
            .steps
            .windows(2)
            .all(|w| w[0].finished_unix_ms <= w[1].started_unix_ms)
    );
    assert_eq!(chain.state(), pb::ChainState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_success_runs_on_success_after_the_last_step_and_never_on_failure() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = recording_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let chain = Chain::new([
        Task::new("begin_creating").si(["vm1"]),
        Task::new("create").si(["vm1"]),
    ])
    .on_success([
        Task::new("set_ok").s(["vm1"]),
        Task::new("set_ok").si(["again"]),
    ])
    .on_failure(Task::new("set_erred").s(["vm1"]));
    let id = client.submit(chain).await.unwrap().chain_id;
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!("create-done")));
    assert_eq!(
        journal.entries(),
        [
            r#"begin_creating:["vm1"]"#,
            r#"create:["vm1"]"#,
            r#"set_ok:["create-done","vm1"]"#,
            r#"set_ok:["again"]"#,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_failure_runs_on_failure_once_with_the_full_failure_record() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = recording_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let chain = Chain::new([
        Task::new("begin_creating").si(["vm2"]),
        Task::new("boom").si(()),
        Task::new("create").si(["never"]),
    ])
    .on_success(Task::new("set_ok").si(["vm2"]))
    .on_failure(Task::new("set_erred").s(["vm2"]));
    let id = client.submit(chain).await.unwrap().chain_id;
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    let ChainOutcome::Failed(record) = outcome else {
        panic!("expected failure, got {outcome:?}")
    };
    assert_eq!(record.chain_id, id);
    assert_eq!(record.step_index, 1);
    assert_eq!(record.task_name, "boom");
    assert_eq!(record.error_type, "BackendError");
    assert_eq!(record.message, "the cloud said no");
    assert_eq!(record.traceback, "tb line 1");
    assert_eq!(record.attempt, 1);
    let entries = journal.entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let erred: Vec<Value> =
        serde_json::from_str(entries[1].strip_prefix("set_erred:").unwrap()).unwrap();
    assert_eq!(erred[0]["error_type"], "BackendError");
    assert_eq!(erred[0]["task_id"], record.task_id);
    assert_eq!(erred[0]["traceback"], "tb line 1");
    assert_eq!(erred[1], "vm2");
    assert_eq!(journal.count(r#"create:["never"]"#), 0);
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[2].state(), pb::StepState::Pending);
    assert_eq!(chain.on_success[0].state(), pb::StepState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_retry_with_backoff_then_fail_after_max_retries() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let j = journal.clone();
    let _w = TestWorker::spawn(worker(&broker.addr, "flaky").task(
        "flaky",
        move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.note(format!("attempt {} retries {}", ctx.attempt, ctx.retries));
                let succeed_at: u32 = ctx.arg(0)?;
                if ctx.attempt >= succeed_at {
                    Ok(json!("ok"))
                } else {
                    Err(TaskError::retryable("transient"))
                }
            }
        },
    ));
    let client = broker.client().await;
    let flaky = Task::new("flaky");
    let ok = flaky
        .si([3])
        .max_retries(2)
        .retry_backoff(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let id = client.submit(ok).await.unwrap().chain_id;
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("ok"))
    );
    // Backoff 100 ms then 200 ms.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        journal.entries(),
        [
            "attempt 1 retries 0",
            "attempt 2 retries 1",
            "attempt 3 retries 2"
        ]
    );

    let exhausted = flaky
        .si([10])
        .max_retries(1)
        .retry_backoff(Duration::from_millis(10));
    let id = client.submit(exhausted).await.unwrap().chain_id;
    let ChainOutcome::Failed(record) = client.wait_timeout(&id, PATIENCE).await.unwrap() else {
        panic!()
    };
    assert_eq!(record.attempt, 2);
    assert_eq!(record.message, "transient");
    assert_eq!(client.get(&id).await.unwrap().steps[0].retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_later_polls_keep_the_step_in_place_until_done_or_budget_exhausted() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let j = journal.clone();
    let _w = TestWorker::spawn(
        worker(&broker.addr, "poller")
            .task("poll", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.note(format!("poll {}", ctx.polls));
                    let ready_after: u32 = ctx.arg(0)?;
                    if ctx.polls >= ready_after {
                        Ok(json!("available"))
                    } else {
                        Err(TaskError::retry_later(Duration::from_millis(20))
                            .with_message("creating"))
                    }
                }
            })
            .task("set_ok", |_ctx: TaskContext| async { Ok(json!(null)) })
            .task("set_erred", |_ctx: TaskContext| async { Ok(json!(null)) }),
    );
    let client = broker.client().await;
    let poll = Task::new("poll");
    let id = client
        .submit(Chain::new(poll.si([3])).on_success(Task::new("set_ok").si(())))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(json!("available"))
    );
    assert_eq!(journal.entries(), ["poll 0", "poll 1", "poll 2", "poll 3"]);
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[0].polls, 3);
    assert_eq!(chain.on_success[0].state(), pb::StepState::Succeeded);

    let id = client
        .submit(Chain::new(poll.si([1000]).max_polls(2)).on_failure(Task::new("set_erred").s(())))
        .await
        .unwrap()
        .chain_id;
    let ChainOutcome::Failed(record) = client.wait_timeout(&id, PATIENCE).await.unwrap() else {
        panic!()
    };
    assert_eq!(record.error_type, "PollBudgetExhausted");
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[0].polls, 3);
    assert_eq!(chain.on_failure[0].state(), pb::StepState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_and_eta_delay_a_step() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = recording_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let started = std::time::Instant::now();
    let id = client
        .submit(Chain::new([Task::new("create")
            .si([1])
            .countdown(Duration::from_millis(300))]))
        .await
        .unwrap()
        .chain_id;
    client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let eta = SystemTime::now() + Duration::from_millis(300);
    let id = client
        .submit(Task::new("create").si([2]).eta(eta))
        .await
        .unwrap()
        .chain_id;
    client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_fails_the_chain_and_fires_on_failure() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let j = journal.clone();
    let _w = TestWorker::spawn(
        worker(&broker.addr, "slow")
            .concurrency(2)
            .task("sleepy", |_ctx: TaskContext| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(json!(null))
            })
            .task("set_erred", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.note(format!("erred {}", ctx.args[0]["error_type"]));
                    Ok(json!(null))
                }
            }),
    );
    let client = broker.client().await;
    let chain = Chain::new(Task::new("sleepy").si(()))
        .on_failure(Task::new("set_erred").s(()))
        .deadline(SystemTime::now() + Duration::from_millis(500));
    let id = client.submit(chain).await.unwrap().chain_id;
    let ChainOutcome::Failed(record) = client.wait_timeout(&id, PATIENCE).await.unwrap() else {
        panic!()
    };
    assert_eq!(record.error_type, "DeadlineExceeded");
    assert_eq!(journal.entries(), [r#"erred "DeadlineExceeded""#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_chain_and_unique_key_skips_while_live() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let sig = || Task::new("create").si(["x"]);
    let first = client
        .submit(Chain::new(sig()).idempotency_key("req-1"))
        .await
        .unwrap();
    let again = client
        .submit(Chain::new(sig()).idempotency_key("req-1"))
        .await
        .unwrap();
    assert!(first.is_new());
    assert_eq!(again.chain_id, first.chain_id);
    assert_eq!(again.dedup, pb::Dedup::IdempotencyKey);

    // No worker yet: the unique chain stays queued, so a twin is skipped.
    let live = client
        .submit(Chain::new(sig()).unique_key("vm:1:pull"))
        .await
        .unwrap();
    let twin = client
        .submit(Chain::new(sig()).unique_key("vm:1:pull"))
        .await
        .unwrap();
    assert!(live.is_new());
    assert_eq!(twin.chain_id, live.chain_id);
    assert_eq!(twin.dedup, pb::Dedup::UniqueKey);

    let journal = Journal::default();
    let _w = recording_worker(&broker.addr, &journal);
    client.wait_timeout(&live.chain_id, PATIENCE).await.unwrap();
    let after = client
        .submit(Chain::new(sig()).unique_key("vm:1:pull"))
        .await
        .unwrap();
    assert!(after.is_new(), "once the chain ended the key is free again");
    assert_ne!(after.chain_id, live.chain_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_step_starts_nothing_more_and_fires_no_callback() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let j = journal.clone();
    let j2 = journal.clone();
    let _w = TestWorker::spawn(
        worker(&broker.addr, "w")
            .concurrency(2)
            .task("long", move |_ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.note("long started");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    j.note("long finished");
                    Ok(json!(null))
                }
            })
            .task("after", move |_ctx: TaskContext| {
                let j = j2.clone();
                async move {
                    j.note("after");
                    Ok(json!(null))
                }
            }),
    );
    let client = broker.client().await;
    let chain = Chain::new([Task::new("long").si(()), Task::new("after").si(())])
        .on_success(Task::new("after").si(()))
        .on_failure(Task::new("after").si(()));
    let id = client.submit(chain).await.unwrap().chain_id;
    eventually("the long step to start", || {
        journal.count("long started") == 1
    })
    .await;
    assert_eq!(
        client.cancel(&id, "user asked").await.unwrap(),
        pb::ChainState::Cancelled
    );
    assert_eq!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Cancelled("user asked".into())
    );
    // The running step was told to stop; its run ends as cancelled.
    let mut chain = client.get(&id).await.unwrap();
    for _ in 0..200 {
        if chain.steps[0].state() == pb::StepState::Cancelled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        chain = client.get(&id).await.unwrap();
    }
    assert_eq!(chain.steps[0].state(), pb::StepState::Cancelled);
    assert_eq!(chain.steps[1].state(), pb::StepState::Cancelled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(journal.entries(), ["long started"]);
    // Cancelling an ended chain changes nothing.
    assert_eq!(
        client.cancel(&id, "again").await.unwrap(),
        pb::ChainState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_naming_the_field_and_stores_nothing() {
    let broker = TestBroker::start_with(|c| c.limits.max_payload_bytes = 4096).await;
    let client = broker.client().await;
    let mut raw = pb::broker_client::BrokerClient::connect(broker.addr.clone())
        .await
        .unwrap();
    let sig = |name: &str, args: &str| pb::Signature {
        name: name.into(),
        args: args.into(),
        ..Default::default()
    };
    let cases: Vec<(pb::SubmitChainRequest, &str)> = vec![
        (pb::SubmitChainRequest::default(), "steps is empty"),
        (
            pb::SubmitChainRequest {
                steps: vec![sig("", "")],
                ..Default::default()
            },
            "steps[0].name is empty",
        ),
        (
            pb::SubmitChainRequest {
                steps: vec![sig(&"n".repeat(201), "")],
                ..Default::default()
            },
            "steps[0].name is longer",
        ),
        (
            pb::SubmitChainRequest {
                steps: vec![sig("a", "[1,")],
                ..Default::default()
            },
            "steps[0].args is not valid JSON",
        ),
        (
            pb::SubmitChainRequest {
                steps: vec![sig("a", &format!("[\"{}\"]", "x".repeat(5000)))],
                ..Default::default()
            },
            "over the limit",
        ),
        (
            pb::SubmitChainRequest {
                steps: vec![pb::Signature {
                    name: "a".into(),
                    options: Some(pb::Options {
                        throttle: Some(pb::Throttle {
                            scope: 7,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "steps[0].options.throttle.scope has unknown value 7",
        ),
    ];
    for (request, expected) in cases {
        let status = raw.submit_chain(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{:?} does not contain {expected:?}",
            status.message()
        );
    }
    let queues = client.admin().list_queues().await.unwrap();
    assert!(
        queues.iter().all(|q| q.ready == 0 && q.delayed == 0),
        "{queues:?}"
    );
    let status = client.get("not-a-uuid").await.unwrap_err();
    assert_eq!(status.code(), Some(tonic::Code::InvalidArgument));
    let status = client.get(&uuid_like()).await.unwrap_err();
    assert_eq!(status.code(), Some(tonic::Code::NotFound));
}

fn uuid_like() -> String {
    "0190e6a4-0000-7000-8000-000000000000".into()
}

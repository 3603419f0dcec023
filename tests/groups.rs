//! Groups (fan-out, fan-in) and nested executors end to end (issue 26):
//! the chord's result list in member order, the first failure failing the
//! group and cancelling the others, a nested executor's callbacks and its
//! outcome reaching the parent, cancellation reaching the children, a
//! group of 10,000 members, and a broker crash mid-group.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{Chain, ChainOutcome, Executor, Task, Throttle, group, pb};
use baton_worker::{TaskContext, TaskError};
use common::*;
use serde_json::{Value, json};
use tonic::Code;

/// A worker with the tasks these tests use; every run is noted as
/// "name:args".
fn test_worker(addr: &str, journal: &Journal) -> TestWorker {
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
    let j = journal.clone();
    TestWorker::spawn(
        worker(addr, "grouper")
            .concurrency(16)
            .task("begin", note("begin"))
            .task("set_ok", note("set_ok"))
            .task("set_erred", note("set_erred"))
            .task("add", |ctx: TaskContext| async move {
                let a: i64 = ctx.arg(0)?;
                let b: i64 = ctx.arg(1)?;
                Ok(json!(a + b))
            })
            // Adds after a pause of `ms`: members that end out of order.
            .task("slow_add", |ctx: TaskContext| async move {
                let a: i64 = ctx.arg(0)?;
                let b: i64 = ctx.arg(1)?;
                let ms: u64 = ctx.arg(2)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!(a + b))
            })
            .task("total", |ctx: TaskContext| async move {
                let list: Vec<i64> = ctx.arg(0)?;
                Ok(json!(list.iter().sum::<i64>()))
            })
            .task("len", |ctx: TaskContext| async move {
                let text: String = ctx.arg(0)?;
                Ok(json!(text.len()))
            })
            .task("echo", |ctx: TaskContext| async move {
                Ok(ctx.args.first().cloned().unwrap_or(Value::Null))
            })
            .task("sleep", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.note("sleep:started");
                    let ms: u64 = ctx.arg(0)?;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    j.note("sleep:finished");
                    Ok(json!(null))
                }
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

async fn ended(client: &baton::Client, id: &str) -> ChainOutcome {
    client.wait_timeout(id, PATIENCE).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_hands_the_members_results_in_member_order_to_the_next_step() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let (add, slow_add) = (Task::new("add"), Task::new("slow_add"));
    // Each member receives 3 first (the group is mutable); the first member
    // ends last, so order by completion would put its result last.
    let chain = Chain::new([
        add.si((1, 2)),
        group([slow_add.s((10, 300)), add.s([20]), add.s([30])]),
        Task::new("total").s(()),
    ]);
    let id = client.submit(chain).await.unwrap().chain_id;
    assert_eq!(
        ended(&client, &id).await,
        ChainOutcome::Succeeded(json!(69))
    );

    let chain = client.get(&id).await.unwrap();
    let fan = &chain.steps[1];
    assert_eq!(fan.name, "group");
    assert_eq!(fan.state(), pb::StepState::Succeeded);
    assert_eq!(fan.result, "[13,23,33]");
    assert_eq!((fan.members, fan.members_succeeded), (3, 3));
    assert_eq!(fan.child_chain_ids.len(), 3);
    assert!(fan.finished_unix_ms <= chain.steps[2].started_unix_ms);
    for (i, child_id) in fan.child_chain_ids.iter().enumerate() {
        let child = client.get(child_id).await.unwrap();
        assert_eq!(child.parent_chain_id, id);
        assert_eq!(child.member_index as usize, i);
        assert_eq!(child.state(), pb::ChainState::Succeeded);
        assert!(child.steps[0].started_unix_ms >= chain.steps[0].finished_unix_ms);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_alone_succeeds_with_the_list_and_an_immutable_group_hands_nothing_on() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let echo = Task::new("echo");
    let alone = client
        .submit(Chain::new(group([
            echo.si(["a"]),
            echo.si([1]),
            echo.si(()),
        ])))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        ended(&client, &alone).await,
        ChainOutcome::Succeeded(json!(["a", 1, null]))
    );
    let kept = client
        .submit(Chain::new([
            echo.si(["first"]),
            group([echo.s(["x"]), echo.s(["y"])]).immutable(),
        ]))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        ended(&client, &kept).await,
        ChainOutcome::Succeeded(json!(["x", "y"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_member_failure_fails_the_group_cancels_the_others_and_on_failure_gets_its_record()
 {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let sleep = Task::new("sleep");
    let chain = Chain::new([
        group([
            sleep.si([30_000]),
            Task::new("boom")
                .si(())
                .countdown(Duration::from_millis(300)),
            sleep.si([30_000]),
        ]),
        Task::new("total").s(()),
    ])
    .on_failure(Task::new("set_erred").s(()));
    let id = client.submit(chain).await.unwrap().chain_id;
    let ChainOutcome::Failed(record) = ended(&client, &id).await else {
        panic!("the chain should fail");
    };
    assert_eq!(record.task_name, "boom");
    assert_eq!(record.error_type, "BackendError");
    assert_eq!(record.traceback, "tb line 1");
    let chain = client.get(&id).await.unwrap();
    let fan = &chain.steps[0];
    assert_eq!(fan.state(), pb::StepState::Failed);
    assert_eq!(
        record.chain_id, fan.child_chain_ids[1],
        "the member's record"
    );
    assert_eq!(chain.steps[1].state(), pb::StepState::Pending, "never ran");
    // on_failure received the member's record.
    let erred = journal
        .entries()
        .into_iter()
        .find(|e| e.starts_with("set_erred:"))
        .expect("on_failure ran");
    assert!(erred.contains("\"task_name\":\"boom\""), "{erred}");
    // The other members were cancelled, their running bodies stopped.
    for other in [0, 2] {
        let child_id = &fan.child_chain_ids[other];
        let outcome = ended(&client, child_id).await;
        assert!(matches!(outcome, ChainOutcome::Cancelled(_)), "{outcome:?}");
    }
    assert_eq!(journal.count("sleep:started"), 2);
    assert_eq!(journal.count("sleep:finished"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_executor_runs_its_callbacks_and_its_parent_goes_on_with_its_result() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let (begin, set_ok, set_erred) = (
        Task::new("begin"),
        Task::new("set_ok"),
        Task::new("set_erred"),
    );
    let volume = Executor::new([Task::new("add").si((2, 3)), Task::new("add").s([10])])
        .on_success(set_ok.si(["volume"]))
        .on_failure(set_erred.s(["volume"]))
        .named("VolumeCreateExecutor");
    let chain = Chain::new([begin.si(["vm"]), volume.into(), Task::new("echo").s(())])
        .on_success(set_ok.si(["vm"]));
    let id = client.submit(chain).await.unwrap().chain_id;
    assert_eq!(
        ended(&client, &id).await,
        ChainOutcome::Succeeded(json!(15))
    );
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[1].name, "VolumeCreateExecutor");
    assert_eq!(chain.steps[1].result, "15");
    assert_eq!(
        journal.entries(),
        ["begin:[\"vm\"]", "set_ok:[\"volume\"]", "set_ok:[\"vm\"]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_nested_executor_runs_its_own_on_failure_then_fails_its_parent() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let set_erred = Task::new("set_erred");
    let volume = Executor::new(Task::new("boom").si(()))
        .on_success(Task::new("set_ok").si(["volume"]))
        .on_failure(set_erred.s(["volume"]));
    let chain = Chain::new([volume.into(), Task::new("begin").si(["never"])])
        .on_failure(set_erred.s(["vm"]));
    let id = client.submit(chain).await.unwrap().chain_id;
    let ChainOutcome::Failed(record) = ended(&client, &id).await else {
        panic!("the parent should fail");
    };
    assert_eq!(record.task_name, "boom");
    let entries = journal.entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0].starts_with("set_erred:[{") && entries[0].ends_with(",\"volume\"]"));
    assert!(entries[1].starts_with("set_erred:[{") && entries[1].ends_with(",\"vm\"]"));
    assert!(entries[1].contains("\"error_type\":\"BackendError\""));
    let chain = client.get(&id).await.unwrap();
    assert_eq!(chain.steps[1].state(), pb::StepState::Pending);
    let child = client
        .get(&chain.steps[0].child_chain_ids[0])
        .await
        .unwrap();
    assert_eq!(child.state(), pb::ChainState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_cancels_its_children_and_stops_their_runs() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let sleep = Task::new("sleep");
    let nested = Executor::new(sleep.si([30_000])).on_failure(Task::new("set_erred").s(()));
    let chain = Chain::new([group([sleep.si([30_000]), nested.into()]), sleep.si([1])]);
    let id = client.submit(chain).await.unwrap().chain_id;
    eventually("both members run", || journal.count("sleep:started") == 2).await;
    client.cancel(&id, "operator").await.unwrap();
    assert!(matches!(
        ended(&client, &id).await,
        ChainOutcome::Cancelled(_)
    ));
    let chain = client.get(&id).await.unwrap();
    for child_id in &chain.steps[0].child_chain_ids {
        let outcome = ended(&client, child_id).await;
        let ChainOutcome::Cancelled(reason) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains(&id), "{reason}");
    }
    assert_eq!(journal.count("sleep:finished"), 0);
    assert_eq!(
        journal.count("set_erred"),
        0,
        "a cancelled chain runs no callback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_10000_members_ends_with_every_result_in_order() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    let echo = Task::new("echo");
    let members: Vec<_> = (0..10_000).map(|i| echo.si([i])).collect();
    let id = client
        .submit(Chain::new([group(members), Task::new("total").s(())]))
        .await
        .unwrap()
        .chain_id;
    let outcome = client
        .wait_timeout(&id, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ChainOutcome::Succeeded(json!((0..10_000).sum::<i64>()))
    );
    let chain = client.get(&id).await.unwrap();
    let list: Vec<i64> = serde_json::from_str(
        &client
            .step_result(&id, &chain.steps[0].task_id)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list, (0..10_000).collect::<Vec<_>>());
    assert_eq!(chain.steps[0].child_chain_ids.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_reaches_every_member_of_a_large_group() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let client = broker.client().await;
    // 1,500 members: past the queue line kept in memory, so most wait
    // cold on disk and read the value back when their turn comes.
    let len = Task::new("len");
    let members: Vec<_> = (0..1500).map(|_| len.s(())).collect();
    let id = client
        .submit(Chain::new([Task::new("big").si([20_000]), group(members)]))
        .await
        .unwrap()
        .chain_id;
    let bigger = TestWorker::spawn(worker(&broker.addr, "big").task(
        "big",
        |ctx: TaskContext| async move {
            let n: usize = ctx.arg(0)?;
            Ok(json!("x".repeat(n)))
        },
    ));
    // The members' worker connects once every member waits.
    let started = std::time::Instant::now();
    while client.get(&id).await.unwrap().steps[1]
        .child_chain_ids
        .len()
        < 1500
    {
        assert!(started.elapsed() < PATIENCE, "the members never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bigger.stop().await;
    let _w = test_worker(&broker.addr, &journal);
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(vec![20_000; 1500])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_run_under_the_chain_scoped_slot_their_parent_holds() {
    let broker = TestBroker::start().await;
    let journal = Journal::default();
    let _w = test_worker(&broker.addr, &journal);
    let client = broker.client().await;
    // Waldur's per-tenant limit of 1, held by the instance executor from
    // its first step, and declared again by the nested volume executors:
    // they run under the instance's slot instead of waiting for a second.
    let tenant = Throttle::new(1).key("tenant:1").shared().chain_scoped();
    let add = Task::new("add");
    let volume = |n: i64| Executor::new(add.si((n, 0)).throttle(tenant.clone())).into();
    let id = client
        .submit(Chain::new([
            add.si((1, 1)).throttle(tenant.clone()),
            group([volume(1), volume(2)]),
        ]))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        ended(&client, &id).await,
        ChainOutcome::Succeeded(json!([1, 2]))
    );
    // The slot is free again: another chain of the tenant runs.
    let next = client
        .submit(Chain::new(add.si((2, 2)).throttle(tenant.clone())))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        ended(&client, &next).await,
        ChainOutcome::Succeeded(json!(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_groups_and_executors_are_refused_naming_the_field_and_store_nothing() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let echo = || pb::Signature {
        name: "echo".into(),
        ..Default::default()
    };
    let cases: Vec<(pb::Signature, &str)> = vec![
        (
            pb::Signature {
                args: "[1]".into(),
                members: vec![echo()],
                ..Default::default()
            },
            "steps[0].args is set, but steps[0] is a group",
        ),
        (
            pb::Signature {
                members: vec![echo()],
                executor: Some(pb::Executor {
                    steps: vec![echo()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "steps[0] has both members and an executor",
        ),
        (
            pb::Signature {
                executor: Some(pb::Executor::default()),
                ..Default::default()
            },
            "steps[0].executor.steps is empty",
        ),
        (
            pb::Signature {
                members: vec![pb::Signature::default()],
                ..Default::default()
            },
            "steps[0].members[0].name is empty",
        ),
        (
            (0..9).fold(echo(), |inner, _| pb::Signature {
                members: vec![inner],
                ..Default::default()
            }),
            "nests groups and executors more than 8 deep",
        ),
    ];
    for (step, want) in cases {
        let request = pb::SubmitChainRequest {
            steps: vec![step],
            ..Default::default()
        };
        let err = client.submit_request(request).await.unwrap_err();
        let status = err.status().expect("a gRPC status");
        assert_eq!(status.code(), Code::InvalidArgument, "{want}");
        assert!(status.message().contains(want), "{}", status.message());
    }
    assert!(
        client
            .admin()
            .list_queues()
            .await
            .unwrap()
            .iter()
            .all(|q| q.ready == 0)
    );
}

/// Member runs by chain id, to count repeats across a crash.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

fn counting_worker(addr: &str, runs: &Runs) -> TestWorker {
    let runs = runs.clone();
    TestWorker::spawn(worker(addr, "counter").concurrency(8).task(
        "slow_echo",
        move |ctx: TaskContext| {
            let runs = runs.clone();
            async move {
                *runs
                    .lock()
                    .unwrap()
                    .entry(ctx.chain_id.clone())
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(ctx.args.first().cloned().unwrap_or(Value::Null))
            }
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_group_loses_and_double_counts_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = ["--lease-ms", "2000"];
    let broker = BrokerProcess::spawn(data.path(), port, &args).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let runs = Runs::default();
    let worker = counting_worker(&broker.addr, &runs);
    let echo = Task::new("slow_echo");
    let members: Vec<_> = (0..400).map(|i| echo.si([i])).collect();
    let id = client
        .submit(Chain::new(group(members)))
        .await
        .unwrap()
        .chain_id;
    eventually("some members ran", || runs.lock().unwrap().len() >= 100).await;
    broker.kill9().await;
    let broker = BrokerProcess::spawn(data.path(), port, &args).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(
        outcome,
        ChainOutcome::Succeeded(json!((0..400).collect::<Vec<i64>>()))
    );
    let chain = client.get(&id).await.unwrap();
    assert_eq!(
        (chain.steps[0].members, chain.steps[0].members_succeeded),
        (400, 400)
    );
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 400, "every member ran");
    // At-least-once: a run cut off by the crash may run again, no more.
    let repeated = runs.values().filter(|&&n| n > 1).count();
    assert!(repeated <= 8, "{repeated} members ran twice");
    worker.stop().await;
    broker.terminate().await;
}

//! Periodic schedules end to end: one chain per fire time, pause and
//! resume, a restart that neither fires a time twice nor forgets one, the
//! catch-up of missed times, and bad schedules refused.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use baton::{Client, Schedule, Task, pb};
use baton_worker::TaskContext;
use common::*;
use serde_json::json;

/// A schedule of one "tick" task every `every_ms`.
fn every(name: &str, every_ms: u64, catch_up: u32) -> pb::Schedule {
    pb::Schedule {
        name: name.into(),
        every_ms,
        catch_up,
        chain: Some(pb::SubmitChainRequest {
            steps: vec![pb::Signature {
                name: "tick".into(),
                args: "[]".into(),
                kwargs: "{}".into(),
                immutable: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A worker whose "tick" notes the fire time its chain was submitted for.
fn ticker(broker: &TestBroker, journal: &Journal) -> TestWorker {
    let seen = journal.clone();
    TestWorker::spawn(worker(&broker.addr, "ticker").concurrency(4).task(
        "tick",
        move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.note(ctx.context["baton.fire_unix_ms"].clone());
                Ok(json!(null))
            }
        },
    ))
}

async fn info(client: &Client, name: &str) -> pb::ScheduleInfo {
    client
        .admin()
        .list_schedules()
        .await
        .expect("list")
        .into_iter()
        .find(|s| s.schedule.as_ref().is_some_and(|s| s.name == name))
        .expect("listed")
}

/// The fire times the bodies saw, checking that none ran twice.
fn fire_times(journal: &Journal) -> BTreeSet<u64> {
    let entries = journal.entries();
    let set: BTreeSet<u64> = entries.iter().map(|e| e.parse().expect("ms")).collect();
    assert_eq!(
        set.len(),
        entries.len(),
        "a fire time ran twice: {entries:?}"
    );
    set
}

/// Every fire time from the schedule's creation up to its last one.
fn expected(info: &pb::ScheduleInfo, every_ms: u64) -> BTreeSet<u64> {
    let first = info.created_unix_ms + every_ms;
    (first..=info.last_fire_unix_ms)
        .step_by(usize::try_from(every_ms).expect("small"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_submits_one_chain_per_fire_time_and_a_pause_stops_it() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let journal = Journal::default();
    let _worker = ticker(&broker, &journal);
    let tick = Task::new("tick").si([0]);
    let added = client
        .admin()
        .schedule(Schedule::every("tick-1s", Duration::from_secs(1), tick))
        .await
        .expect("added");
    // The next fire times, a second apart, after its creation.
    let next = &added.next_fires_unix_ms;
    assert_eq!(next.len(), 5);
    assert_eq!(next[0], added.created_unix_ms + 1000);
    assert!(next.windows(2).all(|w| w[1] - w[0] == 1000));

    eventually("three fires", || journal.entries().len() >= 3).await;
    let paused = client
        .admin()
        .pause_schedule("tick-1s", true)
        .await
        .expect("paused");
    assert!(paused.next_fires_unix_ms.is_empty());
    let handled = info(&client, "tick-1s").await;
    let want = expected(&handled, 1000);
    eventually("every fire handled ran", || fire_times(&journal) == want).await;
    assert!(!handled.last_chain_id.is_empty());

    // Paused: nothing more fires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fire_times(&journal), want);

    // Resumed: the times passed while paused are skipped.
    let resumed_at = baton_now();
    client
        .admin()
        .pause_schedule("tick-1s", false)
        .await
        .expect("resumed");
    eventually("a fire after the resume", || {
        fire_times(&journal).len() > want.len()
    })
    .await;
    let after: Vec<u64> = fire_times(&journal).difference(&want).copied().collect();
    assert!(
        after.iter().all(|t| *t >= resumed_at),
        "{after:?} fired times of the pause"
    );
    broker.stop().await;
}

fn baton_now() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fires_each_time_once_and_catches_up_as_told() {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let broker = TestBroker::start_in(dir.clone(), |_| {}).await;
    let client = broker.client().await;
    let journal = Journal::default();
    let worker = ticker(&broker, &journal);
    client
        .admin()
        .put_schedule(every("tick", 1000, 2))
        .await
        .expect("added");
    eventually("two fires", || journal.entries().len() >= 2).await;
    worker.kill();
    broker.stop().await;
    let stopped = baton_now();

    // Down for more than four fire times: on restart the latest passed
    // fires, with the two missed before it (catch_up 2); older ones are
    // skipped. (Within a minute, the latest counts as on time.)
    tokio::time::sleep(Duration::from_millis(4600)).await;
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let client = broker.client().await;
    let _worker = ticker(&broker, &journal);
    eventually("the restart's fires", || {
        fire_times(&journal).iter().any(|t| *t > stopped)
    })
    .await;
    let latest = info(&client, "tick").await.last_fire_unix_ms;
    // Every chain stored before the stop runs too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = fire_times(&journal);
    let last_before = *seen.range(..=stopped).next_back().expect("fires before");
    let new: Vec<u64> = seen.range(stopped + 1..=latest).copied().collect();
    assert_eq!(new, [latest - 2000, latest - 1000, latest], "seen {seen:?}");
    // The older missed times were skipped, and there was at least one.
    let skipped: Vec<u64> = (last_before + 1000..latest - 2000).step_by(1000).collect();
    assert!(!skipped.is_empty(), "the downtime missed no fire time");
    assert!(skipped.iter().all(|t| !seen.contains(t)), "seen {seen:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_of_the_configuration_are_added_at_start_and_fire() {
    let broker =
        TestBroker::start_with(|c| c.schedules = vec![every("from-config", 1000, 0)]).await;
    let client = broker.client().await;
    let listed = info(&client, "from-config").await;
    assert_eq!(listed.next_fires_unix_ms[0], listed.created_unix_ms + 1000);
    let journal = Journal::default();
    let _worker = ticker(&broker, &journal);
    eventually("a fire", || !journal.entries().is_empty()).await;
    broker.stop().await;

    // A schedule the broker cannot take stops the start, naming it.
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = baton_server::Config::new(dir.path());
    config.http = None;
    config.schedules = vec![every("too-fast", 10, 0)];
    let err = baton_server::run(listener, config, std::future::ready(()))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("schedule \"too-fast\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_naming_what_is_wrong() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await.admin();
    let refused = |s: pb::Schedule| {
        let admin = admin.clone();
        async move {
            let err = admin.put_schedule(s).await.expect_err("refused");
            err.to_string()
        }
    };
    let cron = |c: &str, tz: &str| pb::Schedule {
        cron: c.into(),
        timezone: tz.into(),
        every_ms: 0,
        ..every("s", 0, 0)
    };
    let cases: Vec<(pb::Schedule, &str)> = vec![
        (cron("61 * * * *", ""), "is not a cron expression"),
        (cron("0 9 * * *", "Mars/Olympus"), "not an IANA time zone"),
        (every("s", 500, 0), "shortest interval is 1000 ms"),
        (
            pb::Schedule {
                cron: "* * * * *".into(),
                ..every("s", 5000, 0)
            },
            "both cron and every_ms",
        ),
        (every("no spaces", 5000, 0), "is not a schedule name"),
        (
            pb::Schedule {
                chain: None,
                ..every("s", 5000, 0)
            },
            "schedule.chain is missing",
        ),
        (
            pb::Schedule {
                chain: Some(pb::SubmitChainRequest {
                    idempotency_key: "k".into(),
                    ..every("s", 5000, 0).chain.expect("set")
                }),
                ..every("s", 5000, 0)
            },
            "schedule.chain.idempotency_key is set",
        ),
        (every("s", 5000, 1001), "catch_up is 1001"),
    ];
    for (schedule, want) in cases {
        let text = refused(schedule).await;
        assert!(text.contains(want), "{text:?} should say {want:?}");
    }
    assert!(admin.list_schedules().await.expect("list").is_empty());
    let err = admin
        .pause_schedule("nope", true)
        .await
        .expect_err("unknown");
    assert!(
        err.to_string().contains("schedule \"nope\" not found"),
        "{err}"
    );
    let err = admin.remove_schedule("nope").await.expect_err("unknown");
    assert!(err.to_string().contains("not found"), "{err}");
    broker.stop().await;
}

//! Rate limits end to end (issue 26): at most N starts per period per
//! throttle identity, across workers and across a broker restart, with
//! bad input refused and live changes through Admin.
//!
//! The bodies record when they started; the asserts are about what a user
//! relies on: never more than N starts in a period (with room for the
//! delivery's jitter), and the starts spread out at the rate, not bunched.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton::{Chain, ChainOutcome, Task, Throttle, pb};
use baton_worker::{TaskContext, Throttle as BodyThrottle};
use common::*;
use serde_json::json;
use tonic::Code;

/// Start times (unix ms) the bodies recorded.
#[derive(Clone, Default)]
struct Starts(Arc<Mutex<Vec<u64>>>);

impl Starts {
    fn note(&self) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        self.0
            .lock()
            .expect("starts")
            .push(u64::try_from(ms).expect("ms"));
    }

    fn sorted(&self) -> Vec<u64> {
        let mut times = self.0.lock().expect("starts").clone();
        times.sort_unstable();
        times
    }
}

/// The most starts in any window of `window_ms` (half-open).
fn most_in_a_window(times: &[u64], window_ms: u64) -> usize {
    times
        .iter()
        .map(|&t| {
            times
                .iter()
                .filter(|&&u| u >= t && u < t + window_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// A worker of `rated.task` whose body notes its start.
fn rated_worker(addr: &str, name: &str, starts: &Starts) -> TestWorker {
    let starts = starts.clone();
    TestWorker::spawn(worker(addr, name).concurrency(8).task(
        "rated.task",
        move |_ctx: TaskContext| {
            let starts = starts.clone();
            async move {
                starts.note();
                Ok(json!(null))
            }
        },
    ))
}

fn rated(throttle: Throttle, n: u64) -> Chain {
    Chain::new([Task::new("rated.task").si([n]).throttle(throttle)])
}

/// Submits `count` chains of `rated.task` under `throttle`; their ids.
async fn submit_rated(client: &baton::Client, throttle: &Throttle, count: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let submitted = client.submit(rated(throttle.clone(), n)).await.unwrap();
        ids.push(submitted.chain_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_spaces_the_starts_of_every_worker() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let starts = Starts::default();
    let workers = [
        rated_worker(&broker.addr, "w1", &starts),
        rated_worker(&broker.addr, "w2", &starts),
    ];
    // 5 a second, evenly spaced; 12 chains at once, 16 free run slots.
    let rate = Throttle::rate(5, Duration::from_secs(1))
        .key("api")
        .shared();
    let ids = submit_rated(&client, &rate, 12).await;
    for id in &ids {
        assert!(matches!(
            client.wait_timeout(id, PATIENCE).await.unwrap(),
            ChainOutcome::Succeeded(_)
        ));
    }
    let times = starts.sorted();
    assert_eq!(times.len(), 12);
    // Never 6 starts in a second (a tenth of it left for the delivery's
    // jitter), and 11 intervals of 200 ms between the first and the last.
    assert!(most_in_a_window(&times, 900) <= 5, "{times:?}");
    assert!(times[11] - times[0] >= 2000, "{times:?}");
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_body_rate_spaces_the_sections_of_running_bodies() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let starts = Starts::default();
    let noted = starts.clone();
    let w = TestWorker::spawn(worker(&broker.addr, "w").concurrency(8).task(
        "rated.inbody",
        move |ctx: TaskContext| {
            let noted = noted.clone();
            async move {
                let rate = BodyThrottle::rate(2, Duration::from_secs(1)).key("section");
                let _slot = ctx.acquire(rate).await?;
                noted.note();
                Ok(json!(null))
            }
        },
    ));
    let mut ids = Vec::new();
    for n in 0..5 {
        let chain = Chain::new([Task::new("rated.inbody").si([n])]);
        ids.push(client.submit(chain).await.unwrap().chain_id);
    }
    for id in &ids {
        client.wait_timeout(id, PATIENCE).await.unwrap();
    }
    let times = starts.sorted();
    assert_eq!(times.len(), 5);
    assert!(most_in_a_window(&times, 900) <= 2, "{times:?}");
    assert!(times[4] - times[0] >= 1800, "{times:?}");
    w.stop().await;
}

/// The starts taken before a `kill -9` count after the restart: the next
/// start waits for the rate, however soon the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_holds_across_a_broker_restart() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let starts = Starts::default();
    let w = rated_worker(&broker.addr, "w", &starts);
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    // One start every 4 s.
    let rate = Throttle::rate(1, Duration::from_secs(4))
        .key("slow")
        .shared();
    let first = client
        .submit(rated(rate.clone(), 1))
        .await
        .unwrap()
        .chain_id;
    client.wait_timeout(&first, PATIENCE).await.unwrap();
    broker.kill9().await;
    let broker = BrokerProcess::spawn(data.path(), port, &[]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let second = client.submit(rated(rate, 2)).await.unwrap().chain_id;
    client.wait_timeout(&second, PATIENCE).await.unwrap();
    let times = starts.sorted();
    assert_eq!(times.len(), 2);
    // A tenth of a second for the delivery's jitter.
    assert!(times[1] - times[0] >= 3900, "{times:?}");
    w.stop().await;
    broker.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_rate_overrides_the_declared_one_and_bad_rates_are_refused() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = client.admin();
    let starts = Starts::default();
    let w = rated_worker(&broker.addr, "w", &starts);
    // Declared: one a minute. Four chains: one starts, three wait.
    let rate = Throttle::rate(1, Duration::from_secs(60))
        .key("minute")
        .shared();
    let ids = submit_rated(&client, &rate, 4).await;
    eventually("one start", || starts.sorted().len() == 1).await;
    let identity = pb::ThrottleIdentity::shared("minute");
    let listed = admin.list_throttles().await.unwrap();
    let info = listed
        .iter()
        .find(|t| t.identity.as_ref() == Some(&identity))
        .expect("the identity is listed");
    assert_eq!(info.waiters, 3);
    assert_eq!(info.limit, 0, "a rate alone limits no holders");
    assert_eq!(info.rate.map(|r| (r.count, r.period_ms)), Some((1, 60_000)));

    // Bad rates change nothing.
    for (rate, says) in [
        (
            pb::Rate {
                count: 0,
                period_ms: 1000,
                burst: 0,
            },
            "rate.count is 0",
        ),
        (
            pb::Rate {
                count: 5,
                period_ms: 0,
                burst: 0,
            },
            "rate.period_ms is 0",
        ),
        (
            pb::Rate {
                count: 5,
                period_ms: 1000,
                burst: 6,
            },
            "rate.burst is 6, more than its count 5",
        ),
    ] {
        let error = admin
            .set_throttle_rate(identity.clone(), Some(rate))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
        assert!(error.to_string().contains(says), "{error}");
        let mut bad =
            pb::SubmitChainRequest::from(rated(Throttle::rate(1, Duration::from_secs(1)), 9));
        let options = bad.steps[0].options.as_mut().expect("options");
        options.throttle.as_mut().expect("throttle").rate = Some(rate);
        let error = client.submit_request(bad).await.unwrap_err();
        assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    }

    // 50 a second: the three waiting start at once, not in three minutes.
    let faster = pb::Rate {
        count: 50,
        period_ms: 1000,
        burst: 0,
    };
    let info = admin
        .set_throttle_rate(identity.clone(), Some(faster))
        .await
        .unwrap();
    assert!(info.rate_overridden);
    for id in &ids {
        client
            .wait_timeout(id, Duration::from_secs(30))
            .await
            .expect("the waiting chains ran at the new rate");
    }
    // Cleared: back to the declared rate.
    let info = admin.set_throttle_rate(identity, None).await.unwrap();
    assert!(!info.rate_overridden);
    w.stop().await;
}

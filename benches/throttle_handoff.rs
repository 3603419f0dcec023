//! Throttle hand-off: the time from a slot's release to the next waiter's
//! start, on this machine, through a real broker (in this process, on a
//! loopback port, with its store on disk) and a real worker.
//!
//! ```text
//! cargo bench --bench throttle_handoff
//! BATON_HANDOFFS=5000 cargo bench --bench throttle_handoff
//! ```
//!
//! One identity with limit 1 and a line of waiters that never runs dry:
//! - declared: `n + 1` chains of a task throttled on its signature, all
//!   submitted before the worker connects. A hand-off is from the moment a
//!   body is about to return (its outcome releases the slot) to the moment
//!   the next body starts: outcome up, release and grant in the broker,
//!   durable commit, assignment down, body spawned.
//! - in-body: `n + 1` tasks that each take the same in-body slot, over a
//!   worker of concurrency 8, so seven wait in the broker's line. A
//!   hand-off is from the moment a body is about to drop its slot to the
//!   moment the next body holds it: release up, grant, durable commit,
//!   grant down.
//!
//! Each form runs with durable acknowledgment (the default: a flush and an
//! fdatasync before anything leaves the broker) and without. Figures are
//! printed, never asserted. The seed's design has no hand-off: a throttled
//! task retries with `countdown=30`, so the next waiter starts at its next
//! poll, up to 30 s after the release (15 s on average for one waiter).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::{Chain, Client, Task, Throttle};
use baton_worker::{TaskContext, Throttle as BodyThrottle, Worker};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// (start, end) of each body's hold, as the bodies saw them.
type Spans = Arc<Mutex<Vec<(Instant, Instant)>>>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Declared,
    InBody,
}

fn main() {
    let handoffs: usize = std::env::var("BATON_HANDOFFS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
        .max(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("throttle hand-off, limit 1, {handoffs} hand-offs per row (release -> next start)");
    println!(
        "{:<9} {:<12} {:>9} {:>9} {:>9} {:>9}",
        "form", "ack", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for form in [Form::Declared, Form::InBody] {
        for durable in [true, false] {
            let mut gaps = runtime.block_on(measure(form, durable, handoffs));
            gaps.sort_unstable();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:<9} {:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                match form {
                    Form::Declared => "declared",
                    Form::InBody => "in-body",
                },
                if durable { "durable" } else { "no-durable" },
                ms(percentile(&gaps, 50)),
                ms(percentile(&gaps, 90)),
                ms(percentile(&gaps, 99)),
                ms(*gaps.last().expect("gaps")),
            );
        }
    }
    println!(
        "{:<9} {:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        "seed", "countdown=30", 15_000.0, 27_000.0, 29_700.0, 30_000.0
    );
    println!("(seed: a waiter polls every 30 s; release-to-start is uniform over 0..30 s)");
}

/// The `p`th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Runs one broker and one worker through `handoffs` hand-offs and returns
/// the release-to-start gaps.
async fn measure(form: Form, durable: bool, handoffs: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = baton_server::Config::new(dir.path());
    config.durable = durable;
    let (stop_broker, broker_stopped) = oneshot::channel::<()>();
    let broker = tokio::spawn(baton_server::run(listener, config, async {
        let _ = broker_stopped.await;
    }));
    let client = Client::connect(addr.clone()).await.expect("connect");

    let tasks = handoffs + 1;
    let task = Task::new("bench.hold");
    let mut ids = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let sig = task.si([i]);
        let sig = match form {
            Form::Declared => sig.throttle(Throttle::new(1).key("bench")),
            Form::InBody => sig,
        };
        ids.push(
            client
                .submit(Chain::new(sig))
                .await
                .expect("submit")
                .chain_id,
        );
    }

    let spans: Spans = Arc::default();
    let s = spans.clone();
    let worker = Worker::builder(addr)
        .name("bench")
        .concurrency(8)
        .task("bench.hold", move |ctx: TaskContext| {
            let spans = s.clone();
            async move {
                let slot = match form {
                    Form::Declared => None,
                    Form::InBody => Some(ctx.acquire(BodyThrottle::new(1).key("bench-in")).await?),
                };
                let start = Instant::now();
                // A little work while holding, so holds do not coincide.
                tokio::task::yield_now().await;
                let end = Instant::now();
                spans.lock().expect("spans").push((start, end));
                drop(slot);
                Ok(Value::Null)
            }
        })
        .build()
        .expect("worker");
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until(async {
        let _ = worker_stopped.await;
    }));
    for id in &ids {
        client
            .wait_timeout(id, Duration::from_secs(600))
            .await
            .expect("chain ends");
    }
    let _ = stop_worker.send(());
    let _ = worker.await;
    let _ = stop_broker.send(());
    let _ = broker.await;

    let mut spans = spans.lock().expect("spans").clone();
    assert_eq!(spans.len(), tasks, "every task ran once");
    spans.sort_by_key(|(start, _)| *start);
    spans
        .windows(2)
        .map(|w| {
            assert!(w[0].1 <= w[1].0, "limit 1 was exceeded");
            w[1].0 - w[0].1
        })
        .collect()
}

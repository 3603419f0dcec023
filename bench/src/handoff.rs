//! Throttle hand-off: the time from a slot's release to the next waiter's
//! start, through the broker and one worker.
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
//! The seed's design has no hand-off: a throttled task retries with
//! `countdown=30`, so the next waiter starts at its next poll, up to 30 s
//! after the release (15 s on average for one waiter).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use baton::{Client, Task, Throttle};
use baton_worker::{TaskContext, Throttle as BodyThrottle, Worker};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::throughput::BATCH;

/// (start, end) of each body's hold, as the bodies saw them.
type Spans = Arc<Mutex<Vec<(Instant, Instant)>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Declared,
    InBody,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Declared => "declared",
            Form::InBody => "in-body",
        }
    }
}

/// Runs `handoffs` hand-offs on a broker with no other work and returns
/// the release-to-start gaps, sorted.
pub async fn measure(addr: &str, form: Form, handoffs: usize) -> Result<Vec<Duration>> {
    let client = Client::connect(addr.to_owned()).await?;
    let task = Task::new("bench.hold");
    let chains: Vec<_> = (0..=handoffs)
        .map(|i| {
            let sig = task.si([i]);
            match form {
                Form::Declared => sig.throttle(Throttle::new(1).key("bench")),
                Form::InBody => sig,
            }
        })
        .collect();
    let mut ids = Vec::with_capacity(chains.len());
    for part in chains.chunks(BATCH) {
        let answers = client.submit_many(part.iter().cloned()).await?;
        ids.extend(answers.into_iter().map(|a| a.chain_id));
    }

    let spans: Spans = Arc::default();
    let s = spans.clone();
    let worker = Worker::builder(addr.to_owned())
        .name("bench-handoff")
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
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    for id in &ids {
        client.wait_timeout(id, Duration::from_secs(600)).await?;
    }
    let _ = stop.send(());
    let _ = worker.await;

    let mut spans = spans.lock().expect("spans").clone();
    ensure!(spans.len() == ids.len(), "every task runs once");
    spans.sort_by_key(|(start, _)| *start);
    let mut gaps = Vec::with_capacity(handoffs);
    for w in spans.windows(2) {
        ensure!(w[0].1 <= w[1].0, "limit 1 was exceeded");
        gaps.push(w[1].0 - w[0].1);
    }
    gaps.sort_unstable();
    Ok(gaps)
}

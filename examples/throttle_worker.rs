//! A worker process for the throttle crash tests (`tests/throttle_crash.rs`):
//! a real process a test can `kill -9` while it holds throttle slots.
//!
//! ```text
//! throttle_worker --addr http://127.0.0.1:7070 --journal runs.log --name w1 [--concurrency 4]
//! ```
//!
//! It registers two task names, both taking `[label, hold_ms]` or
//! `[label, hold_ms, later_ms]` (the first attempt holds its slot for
//! `hold_ms`, later attempts for `later_ms`, so a test can make a first run
//! hold "forever" and its redelivery finish):
//! - `tw.declared`: the whole task is throttled (the seed's `@throttle`),
//!   declared by this worker as the task name's default: at most 1 at once,
//!   key `tw`. Submitters do not mention it.
//! - `tw.inbody`: the body takes an in-body slot (at most 1, key `tw-in`)
//!   and holds it for `hold_ms`.
//!
//! Every body appends to the journal, one line per event, written with one
//! `write` on a file opened for appending, so a process killed at any
//! instant leaves only whole lines:
//!
//! ```text
//! <unix µs> <event> <task name> <label> <task id> <attempt>
//! ```
//!
//! `start` is written once the body holds its slot, `end` just before it
//! gives it back; a body killed while holding has a `start` and no `end`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton::pb;
use baton_worker::{TaskContext, TaskError, Throttle, Worker};
use serde_json::{Value, json};

/// The append-only record of what the bodies did.
#[derive(Clone)]
struct Journal(Arc<Mutex<File>>);

impl Journal {
    fn open(path: &PathBuf) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self(Arc::new(Mutex::new(file))))
    }

    /// Appends one line; a failed write ends the process, since a test
    /// reading this journal could not trust it any more.
    fn note(&self, event: &str, ctx: &TaskContext, label: &str) {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let line = format!(
            "{micros} {event} {} {label} {} {}\n",
            ctx.name, ctx.task_id, ctx.attempt
        );
        let mut file = self.0.lock().expect("journal lock");
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("throttle_worker: cannot write the journal: {e}");
            std::process::exit(3);
        }
    }
}

/// The body's arguments: the label and how long this attempt holds.
fn args(ctx: &TaskContext) -> Result<(String, Duration), TaskError> {
    let label: String = ctx.arg(0)?;
    let mut hold: u64 = ctx.arg(1)?;
    if ctx.attempt > 1 && ctx.args.len() > 2 {
        hold = ctx.arg(2)?;
    }
    Ok((label, Duration::from_millis(hold)))
}

async fn declared(journal: Journal, ctx: TaskContext) -> Result<Value, TaskError> {
    let (label, hold) = args(&ctx)?;
    journal.note("start", &ctx, &label);
    tokio::time::sleep(hold).await;
    journal.note("end", &ctx, &label);
    Ok(json!(label))
}

async fn in_body(journal: Journal, ctx: TaskContext) -> Result<Value, TaskError> {
    let (label, hold) = args(&ctx)?;
    journal.note("asked", &ctx, &label);
    let slot = ctx.acquire(Throttle::new(1).key("tw-in")).await?;
    journal.note("start", &ctx, &label);
    tokio::time::sleep(hold).await;
    journal.note("end", &ctx, &label);
    drop(slot);
    Ok(json!(label))
}

struct Args {
    addr: String,
    journal: PathBuf,
    name: String,
    concurrency: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut journal = None;
    let mut name = None;
    let mut concurrency = 4;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?),
            "--journal" => journal = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--concurrency" => {
                concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        journal: journal.ok_or("--journal is required")?,
        name: name.ok_or("--name is required")?,
        concurrency,
    })
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("throttle_worker: {e}");
            std::process::exit(2);
        }
    };
    let journal = match Journal::open(&args.journal) {
        Ok(journal) => journal,
        Err(e) => {
            eprintln!("throttle_worker: {}: {e}", args.journal.display());
            std::process::exit(2);
        }
    };
    let whole_task = pb::Options {
        throttle: Some(pb::Throttle {
            concurrency: 1,
            key: "tw".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (j1, j2) = (journal.clone(), journal);
    let worker = Worker::builder(args.addr)
        .name(args.name)
        .concurrency(args.concurrency)
        .task_with("tw.declared", whole_task, move |ctx| {
            declared(j1.clone(), ctx)
        })
        .task("tw.inbody", move |ctx| in_body(j2.clone(), ctx))
        .build();
    let result = match worker {
        Ok(worker) => worker.run().await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("throttle_worker: {e}");
        std::process::exit(1);
    }
}

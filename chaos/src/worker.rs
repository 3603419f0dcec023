//! `baton-chaos worker`: one worker process of a chaos run, the Rust SDK
//! serving every task name of the plan with one body that journals what it
//! does.
//!
//! The harness starts it with a piped stdin and never writes to it: when
//! stdin closes (the harness stopping it, or dying), the worker drains and
//! exits. A `kill -9` is the other way it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_worker::{Slot, TaskContext, TaskError, Throttle, Worker};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::journal::{self, How, Record, Start, Writer};
use crate::plan::{self, Behaviour, Fail};

/// How long a drain may take once stdin closed.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct Options {
    /// The broker, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    pub addr: String,
    /// The journal file this process appends to.
    #[arg(long)]
    pub journal: PathBuf,
    /// Which worker of the run this is (for names and the journal).
    #[arg(long, default_value_t = 0)]
    pub slot: usize,
    /// Queues to serve, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "general")]
    pub queues: Vec<String>,
    /// Bodies run at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// Assignments held beyond `concurrency`, waiting for a slot.
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
}

/// Serves until stdin closes; the process's exit code.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let journal = Arc::new(Writer::open(&options.journal)?);
    journal.write(&Record::Hello {
        pid: std::process::id(),
        slot: options.slot,
        queues: options.queues.clone(),
        t: journal::now_ns(),
    });
    let mut builder = Worker::builder(options.addr.clone())
        .name(format!("chaos-w{}:{}", options.slot, std::process::id()))
        .queues(options.queues.clone())
        .concurrency(options.concurrency)
        .prefetch(options.prefetch)
        .drain_timeout(DRAIN);
    for name in plan::TASKS {
        let journal = Arc::clone(&journal);
        builder = builder.task(name, move |ctx| body(Arc::clone(&journal), ctx));
    }
    builder.build()?.run_until(stdin_closed()).await?;
    Ok(())
}

/// Completes when stdin reaches its end (or fails).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// The one body of every task name: journal the start, do what the
/// behaviour says, journal the end.
async fn body(journal: Arc<Writer>, ctx: TaskContext) -> Result<Value, TaskError> {
    let behaviour: Behaviour = serde_json::from_value(Value::Object(ctx.kwargs.clone()))
        .map_err(|e| TaskError::fatal(format!("bad behaviour: {e}")).with_type("ChaosBadPlan"))?;
    let run = Run::start(journal, &ctx, &behaviour);
    let work = Duration::from_millis(behaviour.sleep_ms);
    let failed = match behaviour.fail {
        Fail::FirstTry if ctx.retries == 0 => {
            Some(TaskError::retryable("the first try fails, by design").with_type(plan::FLAKY_TYPE))
        }
        Fail::Always => {
            Some(TaskError::retryable("every try fails, by design").with_type(plan::FLAKY_TYPE))
        }
        Fail::Fatal => {
            Some(TaskError::fatal("this step fails, by design").with_type(plan::FATAL_TYPE))
        }
        Fail::Polls(n) if ctx.polls < n => {
            Some(TaskError::retry_later(plan::POLL_DELAY).with_message("not ready yet"))
        }
        Fail::Forever => Some(TaskError::retry_later(plan::FOREVER_DELAY)),
        _ => None,
    };
    if let Some(error) = failed {
        tokio::time::sleep(work).await;
        return run.finish(Err(error));
    }
    match &behaviour.in_body {
        Some(in_body) => {
            let mut throttle = Throttle::new(in_body.limit).key(in_body.key.clone());
            if in_body.shared {
                throttle = throttle.shared();
            }
            let slot = match ctx.acquire(throttle).await {
                Ok(slot) => slot,
                Err(error) => return run.finish(Err(error)),
            };
            let held = Held::new(&run, &in_body.label, slot);
            tokio::time::sleep(work).await;
            drop(held);
        }
        None => tokio::time::sleep(work).await,
    }
    let result = json!({ "run": run.id(), "seq": behaviour.seq });
    run.finish(Ok(result))
}

/// A run under way: journals its end exactly once, as `Aborted` if the
/// body is dropped before it returns.
struct Run {
    journal: Arc<Writer>,
    task: String,
    attempt: u32,
    ended: bool,
}

impl Run {
    fn start(journal: Arc<Writer>, ctx: &TaskContext, behaviour: &Behaviour) -> Self {
        let phase = match ctx.phase {
            baton::pb::Phase::OnSuccess => "on_success",
            baton::pb::Phase::OnFailure => "on_failure",
            _ => "main",
        };
        journal.write(&Record::Start(Start {
            chain: ctx.chain_id.clone(),
            seq: behaviour.seq,
            task: ctx.task_id.clone(),
            attempt: ctx.attempt,
            phase: phase.to_owned(),
            step: ctx.step_index,
            name: ctx.name.clone(),
            queue: ctx.queue.clone(),
            prev: ctx.args.first().cloned(),
            hold: behaviour.hold.clone(),
            wants: behaviour.in_body.as_ref().map(|b| b.label.clone()),
            t: journal::now_ns(),
        }));
        Self {
            journal,
            task: ctx.task_id.clone(),
            attempt: ctx.attempt,
            ended: false,
        }
    }

    /// The run's name in results: `<pid>/<task>/<attempt>`.
    fn id(&self) -> String {
        format!("{}/{}/{}", std::process::id(), self.task, self.attempt)
    }

    /// Journals the end, then hands the result back to the SDK.
    fn finish(mut self, result: Result<Value, TaskError>) -> Result<Value, TaskError> {
        let how = match &result {
            Ok(_) => How::Ok,
            Err(TaskError::Retryable { .. }) => How::Retryable,
            Err(TaskError::Fatal { .. }) => How::Fatal,
            Err(TaskError::RetryLater { .. }) => How::RetryLater,
        };
        self.end(how);
        result
    }

    fn end(&mut self, how: How) {
        if !self.ended {
            self.ended = true;
            self.journal.write(&Record::End {
                task: self.task.clone(),
                attempt: self.attempt,
                how,
                t: journal::now_ns(),
            });
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.end(How::Aborted);
    }
}

/// An in-body slot, journalled: `Acquired` when made, `Released` when
/// dropped, before the slot itself goes back to the broker.
struct Held {
    journal: Arc<Writer>,
    task: String,
    attempt: u32,
    ident: String,
    slot: Option<Slot>,
}

impl Held {
    fn new(run: &Run, ident: &str, slot: Slot) -> Self {
        run.journal.write(&Record::Acquired {
            task: run.task.clone(),
            attempt: run.attempt,
            ident: ident.to_owned(),
            t: journal::now_ns(),
        });
        Self {
            journal: Arc::clone(&run.journal),
            task: run.task.clone(),
            attempt: run.attempt,
            ident: ident.to_owned(),
            slot: Some(slot),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.journal.write(&Record::Released {
            task: self.task.clone(),
            attempt: self.attempt,
            ident: std::mem::take(&mut self.ident),
            t: journal::now_ns(),
        });
        drop(self.slot.take());
    }
}

//! The Rust conformance worker: the task names every SDK's conformance
//! worker registers, with the same behaviour (see
//! `tests/conformance/README.md`), so the one runner
//! (`tests/conformance/run.py`) can check each SDK and mix them.
//!
//! ```text
//! BATON_ADDR=127.0.0.1:7070 conformance_worker [--queues general,heavy] [--concurrency 4] [--name NAME]
//! ```
//!
//! | task                       | does                                                                  |
//! | -------------------------- | --------------------------------------------------------------------- |
//! | noop()                     | returns null                                                          |
//! | echo(x)                    | returns x unchanged                                                   |
//! | add(a, b)                  | returns a + b                                                         |
//! | fail_once(key)             | attempt 1 fails with ConformanceError("fail_once <key>: attempt 1"), retryable; declared max_retries 1, retry_backoff 100 ms; a later attempt returns its attempt number |
//! | fail_always(message)       | fails with ConformanceError(message), retryable; declared max_retries 0: the chain fails with error_type "ConformanceError" |
//! | retry_later_n(n)           | while ctx.polls < n: retry later after 50 ms ("poll <polls> of <n>"); then returns the polls seen (n) |
//! | sleep(ms)                  | sleeps ms (cut short by a cancel, which reports Cancelled); returns ms |
//! | throttled_in_body(key, ms) | holds an in-body slot of (throttled_in_body, key), concurrency 1, for ms; returns key |
//! | throttled_declared(ms)     | declared throttle concurrency 1 on the task name; sleeps ms; returns ms |
//! | rated_in_body(key)         | enters an in-body throttle of (rated_in_body, key) with a rate of 4 a second and no concurrency limit, leaves at once; returns key |
//! | heavy()                    | declared heavy (routed to the "heavy" queue); returns the queue it ran from |
//! | cancellable(ms)            | waits up to ms for its cancel: cancelled, it reports Cancelled (error_type "Cancelled"); else returns "not cancelled" |
//! | nan()                      | returns the float NaN, which JSON cannot carry: the SDK's encoder decides (null, or a failure), but the run must end |
//! | trace_id()                 | returns the trace id of the chain's W3C traceparent as the SDK reads it (its context key "traceparent"), or null |
//!
//! With `$BATON_CONFORMANCE_RECORD` set to a file, the throttled tasks
//! append one JSON line when they start holding their slot and one just
//! before they give it back (`{"sdk": "rust", "event": "enter"|"leave",
//! "task", "key", "task_id", "attempt", "t_us"}`, wall-clock microseconds),
//! each with one `write` to the file opened for appending, so the runner can
//! count holders across the workers of every language.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton::pb;
use baton_worker::{TaskContext, TaskError, Throttle, Worker};
use serde_json::{Value, json};

/// The error type of the failing tasks, as in every SDK's conformance worker.
const CONFORMANCE_ERROR: &str = "ConformanceError";

/// Appends an enter or leave line to `$BATON_CONFORMANCE_RECORD`, if set.
fn record(event: &str, ctx: &TaskContext, key: &str) {
    let Some(path) = std::env::var_os("BATON_CONFORMANCE_RECORD") else {
        return;
    };
    let t_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut line = json!({
        "sdk": "rust",
        "event": event,
        "task": ctx.name,
        "key": key,
        "task_id": ctx.task_id,
        "attempt": ctx.attempt,
        "t_us": t_us,
    })
    .to_string();
    line.push('\n');
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("conformance_worker: cannot write the record: {e}");
        std::process::exit(3);
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A failure of type ConformanceError with the first frames of this
/// worker's stack as its trace (the rest is the async runtime's).
fn conformance_error(message: String) -> TaskError {
    let stack = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = stack.lines().take(8).collect();
    let trace = format!("{CONFORMANCE_ERROR}: {message}\n{}", frames.join("\n"));
    TaskError::retryable(message)
        .with_type(CONFORMANCE_ERROR)
        .with_traceback(trace)
}

/// a + b, an integer when both are.
fn add(a: &Value, b: &Value) -> Result<Value, TaskError> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return Ok(json!(a + b));
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => Ok(json!(a + b)),
        _ => Err(TaskError::fatal(format!("add({a}, {b}): not numbers"))),
    }
}

async fn throttled_in_body(ctx: TaskContext) -> Result<Value, TaskError> {
    let key: String = ctx.arg(0)?;
    let ms: u64 = ctx.arg(1)?;
    let _slot = ctx.acquire(Throttle::new(1).key(key.clone())).await?;
    record("enter", &ctx, &key);
    tokio::time::sleep(millis(ms)).await;
    record("leave", &ctx, &key);
    Ok(json!(key))
}

async fn rated_in_body(ctx: TaskContext) -> Result<Value, TaskError> {
    let key: String = ctx.arg(0)?;
    let rate = Throttle::rate(4, Duration::from_secs(1)).key(key.clone());
    let _slot = ctx.acquire(rate).await?;
    record("enter", &ctx, &key);
    record("leave", &ctx, &key);
    Ok(json!(key))
}

async fn throttled_declared(ctx: TaskContext) -> Result<Value, TaskError> {
    let ms: u64 = ctx.arg(0)?;
    record("enter", &ctx, "*");
    tokio::time::sleep(millis(ms)).await;
    record("leave", &ctx, "*");
    Ok(json!(ms))
}

struct Args {
    queues: Vec<String>,
    concurrency: u32,
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        queues: vec!["general".into(), "heavy".into()],
        concurrency: 4,
        name: format!("conformance-rust-{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--queues" => args.queues = value()?.split(',').map(str::to_owned).collect(),
            "--concurrency" => {
                args.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?;
            }
            "--name" => args.name = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn worker(args: Args) -> Result<Worker, baton_worker::Error> {
    let addr = std::env::var("BATON_ADDR").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let fail_once = pb::Options {
        max_retries: Some(1),
        retry_backoff_ms: Some(100),
        ..Default::default()
    };
    let fail_always = pb::Options {
        max_retries: Some(0),
        ..Default::default()
    };
    let declared = pb::Options {
        throttle: Some(pb::Throttle {
            concurrency: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let heavy = pb::Options {
        heavy: true,
        ..Default::default()
    };
    Worker::builder(format!("http://{addr}"))
        .name(args.name)
        .queues(args.queues)
        .concurrency(args.concurrency)
        .task("noop", |_ctx| async { Ok(Value::Null) })
        .task("trace_id", |ctx| async move {
            Ok(ctx.trace_id().map_or(Value::Null, Value::from))
        })
        .task("echo", |ctx| async move { ctx.arg::<Value>(0) })
        .task("add", |ctx| async move {
            add(&ctx.arg::<Value>(0)?, &ctx.arg::<Value>(1)?)
        })
        .task_with("fail_once", fail_once, |ctx| async move {
            let key: String = ctx.arg(0)?;
            if ctx.attempt == 1 {
                return Err(conformance_error(format!("fail_once {key}: attempt 1")));
            }
            Ok(json!(ctx.attempt))
        })
        .task_with("fail_always", fail_always, |ctx| async move {
            let message: String = ctx.arg(0)?;
            Err(conformance_error(message))
        })
        .task("retry_later_n", |ctx| async move {
            let n: u32 = ctx.arg(0)?;
            if ctx.polls < n {
                return Err(TaskError::retry_later(millis(50))
                    .with_message(format!("poll {} of {n}", ctx.polls)));
            }
            Ok(json!(ctx.polls))
        })
        // A cancel drops the body at its next await: the run is reported
        // as Cancelled.
        .task("sleep", |ctx| async move {
            let ms: u64 = ctx.arg(0)?;
            tokio::time::sleep(millis(ms)).await;
            Ok(json!(ms))
        })
        .task("throttled_in_body", throttled_in_body)
        .task("rated_in_body", rated_in_body)
        .task_with("throttled_declared", declared, throttled_declared)
        .task_with("heavy", heavy, |ctx| async move { Ok(json!(ctx.queue)) })
        .task("cancellable", |ctx| async move {
            let ms: u64 = ctx.arg(0)?;
            tokio::time::sleep(millis(ms)).await;
            Ok(json!("not cancelled"))
        })
        // serde_json's Value cannot hold NaN: json! makes it null.
        .task("nan", |_ctx| async { Ok(json!(f64::NAN)) })
        .build()
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
            eprintln!("conformance_worker: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = async { worker(args)?.run().await }.await {
        eprintln!("conformance_worker: {e}");
        std::process::exit(1);
    }
}

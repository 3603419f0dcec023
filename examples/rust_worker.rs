//! A standalone Rust worker, for chains that mix languages.
//!
//! ```text
//! cargo run -p baton-server -- serve
//! cargo run --example rust_worker -- [ADDR] [--queues general,heavy] [--concurrency 4] [--name NAME]
//! ```
//!
//! ADDR is the broker (else `$BATON_ADDR`, else `127.0.0.1:7070`; see
//! [`baton::addr_from_env`]). It runs
//! until ctrl-c or SIGTERM, then drains. Its tasks take JSON arguments like
//! any other, so a Python chain can call them by name between its own
//! steps, and they receive the previous step's result first when mutable:
//!
//! ```python
//! chain(add.si(1, 2), app.signature("rust.double"), add.s(1)).delay().get()  # 7
//! ```
//!
//! - `rust.double(x)`: `2 * x`, for an integer `x`;
//! - `rust.concat(a, b, ...)`: the arguments joined into one string (strings
//!   as they are, other values as JSON).
//!
//! When `$BATON_TEST_EVENTS` names a file, every run appends a JSON line to
//! it (event, pid, chain and task ids, arguments, result), the way the
//! Python integration tests' `demo_app` does, so a test can tell which
//! process ran which step.

use std::fs::OpenOptions;
use std::io::Write;

use baton_worker::{TaskContext, TaskError, Worker};
use serde_json::{Value, json};

/// `2 * x`.
async fn double(ctx: TaskContext) -> Result<Value, TaskError> {
    let x: i64 = ctx.arg(0)?;
    let doubled = x
        .checked_mul(2)
        .ok_or_else(|| TaskError::fatal(format!("2 * {x} overflows")).with_type("Overflow"))?;
    finished(&ctx, json!(doubled))
}

/// Every argument, joined into one string.
async fn concat(ctx: TaskContext) -> Result<Value, TaskError> {
    let joined: String = ctx
        .args
        .iter()
        .map(|arg| match arg {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect();
    finished(&ctx, json!(joined))
}

/// Reports a run's result: printed, and recorded when the tests ask.
fn finished(ctx: &TaskContext, result: Value) -> Result<Value, TaskError> {
    println!("{}{} = {result}", ctx.name, Value::Array(ctx.args.clone()));
    if let Some(path) = std::env::var_os("BATON_TEST_EVENTS") {
        let line = json!({
            "event": ctx.name,
            "language": "rust",
            "pid": std::process::id(),
            "chain_id": ctx.chain_id,
            "task_id": ctx.task_id,
            "attempt": ctx.attempt,
            "args": ctx.args,
            "result": result,
        });
        // One short append per line, as demo_app.record does.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()))
            .map_err(|e| TaskError::retryable(format!("cannot record the event: {e}")))?;
    }
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The SDKs' warnings (a deprecated variable, a lost connection), on stderr.
    let warnings = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    warnings.with_max_level(tracing::Level::WARN).init();
    let args = Args::parse()?;
    println!(
        "rust_worker {} on {} (queues {}, concurrency {})",
        args.name,
        args.addr,
        args.queues.join(","),
        args.concurrency
    );
    Worker::builder(endpoint(&args.addr))
        .name(args.name)
        .queues(args.queues)
        .concurrency(args.concurrency)
        .task("rust.double", double)
        .task("rust.concat", concat)
        .build()?
        .run() // until ctrl-c or SIGTERM, then drain
        .await?;
    Ok(())
}

/// Command line: `[ADDR] [--queues a,b] [--concurrency N] [--name NAME]`.
struct Args {
    addr: String,
    queues: Vec<String>,
    concurrency: u32,
    name: String,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let usage = "usage: rust_worker [ADDR] [--queues a,b] [--concurrency N] [--name NAME]";
        let mut parsed = Self {
            addr: baton::addr_from_env(),
            queues: vec![baton_worker::DEFAULT_QUEUE.to_owned()],
            concurrency: 4,
            name: format!("rust-worker:{}", std::process::id()),
        };
        let mut addr_given = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("{arg} needs a value; {usage}"))
            };
            match arg.as_str() {
                "--queues" => {
                    parsed.queues = value()?.split(',').map(str::to_owned).collect();
                }
                "--concurrency" => parsed.concurrency = value()?.parse()?,
                "--name" => parsed.name = value()?,
                _ if arg.starts_with('-') || addr_given => {
                    anyhow::bail!("unexpected argument {arg:?}; {usage}")
                }
                _ => {
                    parsed.addr = arg;
                    addr_given = true;
                }
            }
        }
        Ok(parsed)
    }
}

/// The worker SDK wants a URI.
fn endpoint(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

//! A long-running worker with the seed's `demo` tasks and a failing
//! executor, to watch on the dashboard (and what the browser tests run).
//!
//! ```text
//! cargo run -p baton-server -- serve           # dashboard on http://127.0.0.1:7071
//! cargo run --example dashboard_worker -- [ADDR] [--name NAME] [--queues general] [--concurrency 4]
//! ```
//!
//! Then submit work over the JSON API (docs/http.md): the seed's demo,
//!
//! ```text
//! curl -s 127.0.0.1:7071/api/v1/chains -H 'content-type: application/json' \
//!   -d '{"steps": [{"name": "demo.slow", "args": [10], "immutable": true},
//!                  {"name": "demo.fast", "args": [10], "immutable": true}]}'
//! ```
//!
//! and a create executor whose backend call fails, so that its
//! `on_failure` marks the volume erred with the failure record:
//!
//! ```text
//! curl -s 127.0.0.1:7071/api/v1/chains -H 'content-type: application/json' \
//!   -d '{"steps": [{"name": "volume.begin_creating", "args": ["vol-1"], "immutable": true},
//!                  {"name": "volume.create", "args": ["vol-1"], "immutable": true}],
//!        "on_success": [{"name": "volume.set_ok", "args": ["vol-1"], "immutable": true}],
//!        "on_failure": [{"name": "volume.set_erred", "args": ["vol-1"]}]}'
//! ```
//!
//! With token authentication on, give the worker's token in `$BATON_TOKEN`;
//! with TLS on, the PEM file of the CA to trust in `$BATON_CA` (the broker's
//! name checked is `localhost`).
//!
//! Tasks:
//! - `demo.slow(uuid)`: holds an in-body throttle (concurrency 1, key
//!   `vm:<uuid>`) for `$BATON_DEMO_SLOW_MS` (default 5000) ms;
//! - `demo.fast(uuid)`: returns at once;
//! - `volume.begin_creating(vol)`, `volume.set_ok(vol)`: return the state;
//! - `volume.create(vol)`: fails for good with a `BackendError` and a
//!   Python-like traceback (the seed's backends are Python);
//! - `volume.set_erred(failure, vol)`: receives the failure record first;
//! - `vm.provision(vm, [ms])`: sleeps `ms` (default `$BATON_DEMO_SLOW_MS`); submit it with a
//!   declared throttle to watch one on the Throttles page.

use std::time::Duration;

use baton_worker::{TaskContext, TaskError, Throttle, Worker};
use serde_json::{Value, json};

fn slow_ms() -> u64 {
    std::env::var("BATON_DEMO_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

async fn slow(ctx: TaskContext) -> Result<Value, TaskError> {
    let uuid: Value = ctx.arg(0)?;
    let key = format!(
        "vm:{}",
        uuid.as_u64().map_or(uuid.to_string(), |n| n.to_string())
    );
    ctx.throttle(Throttle::new(1).key(key), async {
        println!("** Start {uuid}");
        tokio::time::sleep(Duration::from_millis(slow_ms())).await;
        println!("** End {uuid}");
    })
    .await?;
    Ok(Value::Null)
}

async fn fast(ctx: TaskContext) -> Result<Value, TaskError> {
    println!("** Fast {}", ctx.args.first().unwrap_or(&Value::Null));
    Ok(Value::Null)
}

async fn state(ctx: TaskContext, state: &str) -> Result<Value, TaskError> {
    let volume: String = ctx.arg(0)?;
    println!("[{volume}] {state}");
    Ok(json!({"volume": volume, "state": state}))
}

async fn create(ctx: TaskContext) -> Result<Value, TaskError> {
    let volume: String = ctx.arg(0)?;
    let traceback = format!(
        "Traceback (most recent call last):\n  \
         File \"waldur_openstack/backend.py\", line 812, in create_volume\n    \
         backend_volume = cinder.volumes.create(size=size, name={volume:?})\n  \
         File \"cinderclient/v3/volumes.py\", line 331, in create\n    \
         return self._create('/volumes', body, 'volume')\n\
         cinderclient.exceptions.OverLimit: VolumeSizeExceedsAvailableQuota: \
         Requested volume or snapshot exceeds allowed gigabytes quota (HTTP 413)\n"
    );
    println!("[{volume}] backend create_volume failed");
    Err(TaskError::fatal(format!(
        "cinder refused to create {volume}: VolumeSizeExceedsAvailableQuota (HTTP 413)"
    ))
    .with_type("BackendError")
    .with_traceback(traceback))
}

async fn set_erred(ctx: TaskContext) -> Result<Value, TaskError> {
    let failure: Value = ctx.arg(0)?;
    let volume: String = ctx.arg(1)?;
    println!(
        "[{volume}] ERRED: {}: {}",
        failure["error_type"].as_str().unwrap_or("?"),
        failure["message"].as_str().unwrap_or("?")
    );
    Ok(json!({"volume": volume, "state": "ERRED"}))
}

async fn provision(ctx: TaskContext) -> Result<Value, TaskError> {
    let vm: Value = ctx.arg(0)?;
    let ms = ctx
        .args
        .get(1)
        .and_then(Value::as_u64)
        .unwrap_or_else(slow_ms);
    println!("[vm {vm}] provisioning");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({"vm": vm, "state": "OK"}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addr = baton::addr_from_env();
    let mut name = format!("dashboard-worker:{}", std::process::id());
    let mut queues = vec![baton_worker::DEFAULT_QUEUE.to_owned()];
    let mut concurrency = 4;
    let usage = "usage: dashboard_worker [ADDR] [--name NAME] [--queues a,b] [--concurrency N]";
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value; {usage}"))
        };
        match arg.as_str() {
            "--name" => name = value()?,
            "--queues" => queues = value()?.split(',').map(str::to_owned).collect(),
            "--concurrency" => concurrency = value()?.parse()?,
            a if !a.starts_with('-') => addr = a.to_owned(),
            _ => anyhow::bail!("unexpected argument {arg:?}; {usage}"),
        }
    }
    let endpoint = if addr.contains("://") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };
    println!(
        "dashboard_worker {name} on {addr} (queues {})",
        queues.join(",")
    );
    let mut builder = Worker::builder(endpoint);
    // A worker token, when the broker checks tokens.
    if let Ok(token) = std::env::var("BATON_TOKEN") {
        builder = builder.token(token);
    }
    // The CA to trust, when the broker serves TLS.
    if let Ok(ca) = std::env::var("BATON_CA") {
        let pem = std::fs::read(&ca).map_err(|e| anyhow::anyhow!("BATON_CA {ca}: {e}"))?;
        builder = builder.tls(baton::TlsOptions::new().ca_pem(pem).domain("localhost"));
    }
    builder
        .name(name)
        .queues(queues)
        .concurrency(concurrency)
        .task("demo.slow", slow)
        .task("demo.fast", fast)
        .task("volume.begin_creating", |ctx| state(ctx, "CREATING"))
        .task("volume.create", create)
        .task("volume.set_ok", |ctx| state(ctx, "OK"))
        .task("volume.set_erred", set_erred)
        .task("vm.provision", provision)
        .build()?
        .run() // until ctrl-c or SIGTERM, then drain
        .await?;
    Ok(())
}

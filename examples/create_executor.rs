//! NodeConductor's volume `CreateExecutor`, on Baton.
//!
//! Run a broker in one terminal and this example in another:
//!
//! ```text
//! cargo run -p baton-server -- serve
//! cargo run --example create_executor            # or: -- 127.0.0.1:7070, or BATON_ADDR=...
//! ```
//!
//! The example is both sides at once: a worker (spawned in this process)
//! that runs the executor's task bodies over an in-memory "cloud", and the
//! "API" that creates two volumes and submits one executor for each:
//!
//! ```text
//! chain:      volume.begin_creating.si(vol)                  CREATION_SCHEDULED -> CREATING, backend create
//!             volume.poll_runtime_state.si(vol).countdown()  "retry later" until the backend says available
//! on_success: volume.set_ok.si(vol)                          CREATING -> OK
//! on_failure: volume.set_erred.s(vol)                        receives the failure record first -> ERRED
//! ```
//!
//! `vol-small` is created; `vol-huge` exceeds the backend's quota, so the
//! backend puts it in `error`, the poll step fails and `set_erred` stores the
//! message. The example prints what happened and exits 0 only if both
//! volumes ended as expected (OK and ERRED).
//!
//! In Waldur the first poll waits 30 s and the next ones 5 s, up to 300
//! polls; here the waits are shortened so the example ends in a second. The
//! broker counts the polls; no worker sleeps or holds a slot between them.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{Chain, ChainOutcome, Client, Task};
use baton_worker::{TaskContext, TaskError, Worker};
use serde_json::{Value, json};

/// Waldur waits 30 s before the first poll; shortened.
const FIRST_POLL_AFTER: Duration = Duration::from_millis(200);
/// Waldur polls every 5 s; shortened.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Waldur allows 300 polls of a volume's runtime state.
const MAX_POLLS: u32 = 300;
/// The fake backend finishes creating a volume after this many status pulls.
const PULLS_TO_FINISH: u32 = 3;
/// The fake backend's quota: a bigger volume ends in `error`.
const QUOTA_GB: u32 = 1000;
/// How long the example waits for an executor before giving up.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // The SDKs' warnings (a deprecated variable, a lost connection), on stderr.
    let warnings = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    warnings.with_max_level(tracing::Level::WARN).init();
    let addr = broker_address();
    let client = match Client::connect(addr.clone()).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!(
                "cannot reach the broker at {addr} ({error}); start one with `cargo run -p baton-server -- serve`"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let cloud = Cloud::default();

    // The worker: the executor's task bodies, registered by name.
    let worker = Worker::builder(endpoint(&addr))
        .name(format!("create-executor-example:{}", std::process::id()))
        .concurrency(4)
        .task("volume.begin_creating", body(&cloud, begin_creating))
        .task(
            "volume.poll_runtime_state",
            body(&cloud, poll_runtime_state),
        )
        .task("volume.set_ok", body(&cloud, set_ok))
        .task("volume.set_erred", body(&cloud, set_erred))
        .build()?;
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));

    // The API: a row in CREATION_SCHEDULED (creation has no pre_apply),
    // then the volume's executor.
    let volumes = [
        ("vol-small", 10, State::Ok),
        ("vol-huge", 5000, State::Erred),
    ];
    let mut executors = Vec::new();
    for (name, size_gb, expected) in volumes {
        cloud.schedule_creation(name, size_gb);
        println!("[{name}] {size_gb} GB requested: CREATION_SCHEDULED");
        let submitted = client.submit(create_executor(name)).await?;
        executors.push((name, expected, submitted.chain_id));
    }

    // Wait for both executors: a chain ends only after its callback ran.
    let mut outcomes = Vec::new();
    for (name, expected, chain_id) in executors {
        let outcome = client.wait_timeout(&chain_id, PATIENCE).await?;
        outcomes.push((name, expected, chain_id, outcome));
    }
    let _ = stop_worker.send(());
    worker.await??;

    let mut as_expected = true;
    for (name, expected, chain_id, outcome) in &outcomes {
        as_expected &= report(&cloud, name, chain_id, outcome, *expected);
    }
    Ok(if as_expected {
        println!("\nboth executors ended as expected");
        ExitCode::SUCCESS
    } else {
        println!("\nUNEXPECTED: see above");
        ExitCode::FAILURE
    })
}

/// The volume `CreateExecutor`: a chain with its two callbacks.
fn create_executor(volume: &str) -> Chain {
    let begin_creating = Task::new("volume.begin_creating");
    let poll_runtime_state = Task::new("volume.poll_runtime_state");
    let set_ok = Task::new("volume.set_ok");
    let set_erred = Task::new("volume.set_erred");
    Chain::new([
        begin_creating
            .si([volume])
            .description(format!("Create volume {volume}")),
        poll_runtime_state
            .si([volume])
            .countdown(FIRST_POLL_AFTER)
            .max_polls(MAX_POLLS),
    ])
    .on_success(set_ok.si([volume]))
    .on_failure(set_erred.s([volume])) // mutable: the failure record comes first
    .context("user", "example")
}

// ---------------------------------------------------------------------------
// Task bodies: ordinary functions over the database and the backend.
// ---------------------------------------------------------------------------

/// `ThrottleProvisionTask(state_transition="begin_creating")`: moves the
/// volume to CREATING, clears old errors and asks the backend to create it.
fn begin_creating(cloud: &mut CloudState, ctx: &TaskContext) -> Result<Value, TaskError> {
    let name: String = ctx.arg(0)?;
    let volume = cloud.volume(&name)?;
    volume.transition(State::CreationScheduled, State::Creating)?;
    volume.error_message.clear();
    let size_gb = volume.size_gb;
    let backend_id = cloud.backend.create_volume(size_gb);
    cloud.volume(&name)?.backend_id = backend_id.clone();
    println!("[{name}] CREATION_SCHEDULED -> CREATING; backend create_volume -> {backend_id}");
    Ok(json!({ "backend_id": backend_id }))
}

/// `PollRuntimeStateTask(success_state="available", erred_state="error")`:
/// not done yet is a "retry later", which the broker counts against
/// `max_polls`; the erred state is a fatal failure, which fails the chain.
fn poll_runtime_state(cloud: &mut CloudState, ctx: &TaskContext) -> Result<Value, TaskError> {
    let name: String = ctx.arg(0)?;
    let backend_id = cloud.volume(&name)?.backend_id.clone();
    let status = cloud.backend.pull_volume(&backend_id);
    println!("[{name}] poll {}: backend says {status}", ctx.polls + 1);
    match status {
        "available" => Ok(json!({ "backend_id": backend_id, "polls": ctx.polls + 1 })),
        "error" => Err(TaskError::fatal(format!(
            "backend volume {backend_id} is in state error: quota of {QUOTA_GB} GB exceeded"
        ))
        .with_type("BackendError")),
        _ => Err(TaskError::retry_later(POLL_EVERY).with_message(format!("volume is {status}"))),
    }
}

/// `StateTransitionTask(state_transition="set_ok")`, the success link.
fn set_ok(cloud: &mut CloudState, ctx: &TaskContext) -> Result<Value, TaskError> {
    let name: String = ctx.arg(0)?;
    cloud
        .volume(&name)?
        .transition(State::Creating, State::Ok)?;
    println!("[{name}] CREATING -> OK");
    Ok(json!("OK"))
}

/// `ErrorStateTransitionTask.s(vol)`, the failure link: where Celery's
/// errback got a task id and read the error back from a result backend,
/// this one receives the failure record as its first argument.
fn set_erred(cloud: &mut CloudState, ctx: &TaskContext) -> Result<Value, TaskError> {
    let failure: Value = ctx.arg(0)?;
    let name: String = ctx.arg(1)?;
    let volume = cloud.volume(&name)?;
    let from = volume.state;
    volume.state = State::Erred; // set_erred is allowed from any state
    volume.error_message = format!(
        "{}: {}",
        failure["error_type"].as_str().unwrap_or("?"),
        failure["message"].as_str().unwrap_or("?")
    );
    println!(
        "[{name}] {} -> ERRED: {}",
        from.name(),
        volume.error_message
    );
    Ok(json!("ERRED"))
}

/// Wraps a synchronous body over the cloud into a task handler.
fn body(
    cloud: &Cloud,
    run: fn(&mut CloudState, &TaskContext) -> Result<Value, TaskError>,
) -> impl Fn(TaskContext) -> std::future::Ready<Result<Value, TaskError>> + Send + Sync + 'static {
    let cloud = cloud.clone();
    move |ctx| std::future::ready(run(&mut cloud.lock(), &ctx))
}

// ---------------------------------------------------------------------------
// The in-memory cloud: the application's database and a fake backend.
// ---------------------------------------------------------------------------

/// Volume states of the application's database (Waldur's `StateMixin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    CreationScheduled,
    Creating,
    Ok,
    Erred,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::CreationScheduled => "CREATION_SCHEDULED",
            Self::Creating => "CREATING",
            Self::Ok => "OK",
            Self::Erred => "ERRED",
        }
    }
}

/// A row of the application's database.
#[derive(Debug)]
struct Volume {
    size_gb: u32,
    state: State,
    backend_id: String,
    error_message: String,
}

impl Volume {
    /// A state transition; any other current state is refused, as
    /// django-fsm refuses it.
    fn transition(&mut self, from: State, to: State) -> Result<(), TaskError> {
        if self.state != from {
            return Err(TaskError::fatal(format!(
                "cannot go from {} to {} (expected {})",
                self.state.name(),
                to.name(),
                from.name()
            ))
            .with_type("TransitionNotAllowed"));
        }
        self.state = to;
        Ok(())
    }
}

/// A fake OpenStack: a volume is `creating` for a few status pulls, then
/// `available`, or `error` when it exceeds the quota.
#[derive(Debug, Default)]
struct Backend {
    /// backend id -> (size, pulls so far)
    volumes: HashMap<String, (u32, u32)>,
}

impl Backend {
    fn create_volume(&mut self, size_gb: u32) -> String {
        let backend_id = format!("cinder-{}", self.volumes.len() + 1);
        self.volumes.insert(backend_id.clone(), (size_gb, 0));
        backend_id
    }

    fn pull_volume(&mut self, backend_id: &str) -> &'static str {
        let Some((size_gb, pulls)) = self.volumes.get_mut(backend_id) else {
            return "deleted";
        };
        *pulls += 1;
        if *pulls < PULLS_TO_FINISH {
            "creating"
        } else if *size_gb > QUOTA_GB {
            "error"
        } else {
            "available"
        }
    }
}

#[derive(Debug, Default)]
struct CloudState {
    db: HashMap<String, Volume>,
    backend: Backend,
}

impl CloudState {
    fn volume(&mut self, name: &str) -> Result<&mut Volume, TaskError> {
        self.db
            .get_mut(name)
            .ok_or_else(|| TaskError::fatal(format!("no volume {name}")).with_type("DoesNotExist"))
    }
}

/// The cloud, shared by the worker's task bodies and the API in `main`.
#[derive(Debug, Clone, Default)]
struct Cloud(Arc<Mutex<CloudState>>);

impl Cloud {
    fn lock(&self) -> std::sync::MutexGuard<'_, CloudState> {
        self.0
            .lock()
            .expect("a task body panicked while holding the cloud")
    }

    /// What the API does when a user asks for a volume.
    fn schedule_creation(&self, name: &str, size_gb: u32) {
        let volume = Volume {
            size_gb,
            state: State::CreationScheduled,
            backend_id: String::new(),
            error_message: String::new(),
        };
        self.lock().db.insert(name.to_owned(), volume);
    }
}

// ---------------------------------------------------------------------------
// Reporting and plumbing.
// ---------------------------------------------------------------------------

/// Prints how a volume's executor ended; whether it ended in `expected`,
/// with a chain outcome to match.
fn report(
    cloud: &Cloud,
    name: &str,
    chain_id: &str,
    outcome: &ChainOutcome,
    expected: State,
) -> bool {
    let cloud = cloud.lock();
    let volume = &cloud.db[name];
    println!(
        "\n{name}: state {}, backend id {:?}, executor {chain_id}",
        volume.state.name(),
        volume.backend_id
    );
    let outcome_as_expected = match outcome {
        ChainOutcome::Succeeded(result) => {
            println!("  executor succeeded; its last step returned {result}");
            expected == State::Ok
        }
        ChainOutcome::Failed(failure) => {
            println!(
                "  executor failed at step {} ({}, task {}, attempt {}): {}: {}",
                failure.step_index,
                failure.task_name,
                failure.task_id,
                failure.attempt,
                failure.error_type,
                failure.message
            );
            println!("  error stored by set_erred: {}", volume.error_message);
            expected == State::Erred
                && failure.task_name == "volume.poll_runtime_state"
                && volume.error_message.contains(&failure.message)
        }
        ChainOutcome::Cancelled(reason) => {
            println!("  executor cancelled: {reason}");
            false
        }
    };
    outcome_as_expected && volume.state == expected
}

/// The broker's address: the first argument, else `$BATON_ADDR`, else
/// `127.0.0.1:7070`.
fn broker_address() -> String {
    std::env::args().nth(1).unwrap_or_else(baton::addr_from_env)
}

/// The worker SDK wants a URI.
fn endpoint(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

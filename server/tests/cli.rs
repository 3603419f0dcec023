//! The `baton` command against a real broker: the real binary serves on a
//! free loopback port with a temporary data directory, workers of the Rust
//! SDK run in this process, and every operator subcommand runs as its own
//! process, checked by exit code, human output and parsed `--json`.
//! Bad arguments fail with a clear message and a non-zero exit; `serve`
//! stops cleanly on SIGTERM.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_worker::{TaskContext, TaskError, Worker};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound of every wait: generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn baton() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    // The test's own environment must not steer the CLI.
    for var in [
        "BATON_ADDR",
        "BATON_ADDRESS",
        "BATON_TOKEN",
        "BATON_TLS_CA",
        "BATON_CONFIG",
    ] {
        command.env_remove(var);
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real broker binary, with metrics on.
struct Broker {
    child: tokio::process::Child,
    addr: String,
    metrics: u16,
    dir: Arc<tempfile::TempDir>,
}

impl Broker {
    async fn start() -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().unwrap()), &[]).await
    }

    async fn start_in(dir: Arc<tempfile::TempDir>, extra: &[&str]) -> Self {
        let (port, metrics) = (free_port(), free_port());
        let child = tokio::process::Command::from({
            let mut c = baton();
            c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
                .arg("--data")
                .arg(dir.path().join("store"))
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            c
        })
        .kill_on_drop(true)
        .spawn()
        .unwrap();
        let broker = Broker {
            child,
            addr: format!("127.0.0.1:{port}"),
            metrics,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(client) = baton::Client::connect(broker.addr.clone()).await
                && client.admin().list_queues().await.is_ok()
            {
                return broker;
            }
            assert!(start.elapsed() < PATIENCE, "the broker did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a CLI subcommand against this broker.
    async fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None).await
    }

    async fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = baton();
        command.args(args).env("BATON_ADDR", &self.addr);
        run(command, stdin).await
    }

    async fn stop(mut self) -> Arc<tempfile::TempDir> {
        let pid = self.child.id().unwrap().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the broker stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status:?}");
        self.dir
    }

    async fn scrape(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }
}

async fn run(mut command: Command, stdin: Option<&str>) -> Output {
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = tokio::process::Command::from(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the CLI finished in time")
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout of a successful run.
#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    stdout(out)
}

/// The JSON on stdout of a successful run.
#[track_caller]
fn json_of(out: &Output) -> Value {
    serde_json::from_str(ok(out).trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[track_caller]
fn fails(out: &Output, code: i32, message: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(stderr(out).contains(message), "{message:?} not in {out:?}");
}

/// A worker in this process: `cli.double(x)` → 2x, `cli.boom` fails
/// (fatally) while `fail` is set, `cli.slow(ms)` sleeps.
fn spawn_worker(addr: &str, name: &str, fail: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let worker = Worker::builder(addr.to_owned())
        .name(name)
        .queues(["general", "cli"])
        .concurrency(2)
        .drain_timeout(Duration::from_secs(5))
        .task("cli.double", |ctx: TaskContext| async move {
            let x: i64 = ctx.arg(0)?;
            Ok::<_, TaskError>(json!(2 * x))
        })
        .task("cli.slow", |ctx: TaskContext| async move {
            let ms: u64 = ctx.arg(0)?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, TaskError>(Value::Null)
        })
        .task("cli.boom", move |_ctx: TaskContext| {
            let fail = fail.clone();
            async move {
                if fail.load(Ordering::SeqCst) {
                    Err(TaskError::fatal("it went boom").with_type("Boom"))
                } else {
                    Ok(json!("fine"))
                }
            }
        })
        .build()
        .unwrap();
    tokio::spawn(async move {
        let _ = worker.run_until(std::future::pending::<()>()).await;
    })
}

/// Polls a CLI query until `check` holds.
async fn eventually(broker: &Broker, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let value = json_of(&broker.cli(args).await);
        if check(&value) {
            return value;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out: {args:?} gave {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step_state(chain: &Value) -> &str {
    chain["steps"][0]["state"].as_str().unwrap()
}

#[test]
fn help_lists_serve_and_the_operator_commands() {
    let out = baton().arg("--help").output().unwrap();
    let text = ok(&out);
    for command in [
        "serve",
        "submit",
        "chain",
        "queues",
        "queue",
        "workers",
        "worker",
        "throttles",
        "dead",
        "config",
    ] {
        assert!(text.contains(command), "{command} missing in {text}");
    }
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let out = baton()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    fails(&out, 2, "--listen");

    let out = baton().args(["serve", "--lease-ms", "0"]).output().unwrap();
    fails(
        &out,
        1,
        "--lease-ms is 0: it must be between 1 and 86400000 ms",
    );

    let out = baton().arg("frobnicate").output().unwrap();
    fails(&out, 2, "unrecognized subcommand");

    // Client subcommands: clap's usage errors, then our own checks, all
    // before anything is sent (no broker runs on port 1).
    let addr = ["--addr", "127.0.0.1:1"];
    let cases: &[(&[&str], &str)] = &[
        (&["chain", "get"], "<CHAIN_ID>"),
        (&["submit"], "<TASK|--file <FILE>>"),
        (&["submit", "t", "--file", "x.json"], "cannot be used with"),
        (&["submit", "t", "--timeout", "5"], "--wait"),
        (&["submit", "t", "--args", "{"], "--args is not JSON"),
        (
            &["submit", "t", "--args", "{}"],
            "--args must be a JSON array",
        ),
        (&["submit", "t", "--context", "novalue"], "is not KEY=VALUE"),
        (
            &["submit", "--file", "/nonexistent/chain.json"],
            "reading /nonexistent/chain.json",
        ),
        (&["queue", "purge", "general"], "add --yes"),
        (
            &["throttles", "set", "3"],
            "give --task NAME, --key KEY, or both",
        ),
        (
            &["throttles", "set", "many", "--task", "t"],
            "invalid value 'many'",
        ),
        (
            &["throttles", "rate", "10/x", "--key", "k"],
            "the period \"x\" is not a unit (ms, s, m, h, d)",
        ),
        (&["throttles", "rate", "--key", "k"], "<RATE>"),
        (
            &["dead", "list", "--limit", "0"],
            "--limit must be at least 1",
        ),
    ];
    for (args, message) in cases {
        let out = baton().args(*args).args(addr).output().unwrap();
        fails(&out, 2, message);
    }

    // An unreachable broker: one line naming the address, exit 1.
    let out = baton().args(["queues"]).args(addr).output().unwrap();
    fails(&out, 1, "error: cannot reach the broker at 127.0.0.1:1");
    assert_eq!(stderr(&out).lines().count(), 1, "{out:?}");
}

#[test]
fn serve_creates_the_store_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("store");
    let port = free_port();
    let mut child = baton()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "baton did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dir.join("db").exists(),
        "the sled store is created in --data"
    );
    let pid = child.id().to_string();
    // Transparent huge pages are off for the broker (kernels since 5.0 show
    // the flag; an older one shows nothing to check).
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "baton did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_from_a_file_stdin_and_flags_with_wait() {
    let broker = Broker::start().await;
    let _worker = spawn_worker(&broker.addr, "w-submit", Arc::default());

    // A chain from a file: double(5), then double the result (mutable).
    let file = broker.dir.path().join("chain.json");
    std::fs::write(
        &file,
        r#"{"steps": [{"name": "cli.double", "args": [5], "immutable": true},
                      {"name": "cli.double"}],
            "context": {"user": "ops"}}"#,
    )
    .unwrap();
    let out = broker
        .cli(&["submit", "--file", file.to_str().unwrap(), "--wait"])
        .await;
    let text = ok(&out);
    assert!(text.contains("submitted chain"), "{text}");
    assert!(text.contains("chain succeeded: result 20"), "{text}");

    // The same from stdin, as JSON for a script.
    let out = broker
        .cli_with_stdin(
            &["submit", "-f", "-", "--wait", "--json"],
            Some(r#"{"steps": [{"name": "cli.double", "args": [21], "immutable": true}]}"#),
        )
        .await;
    let chain = json_of(&out);
    assert_eq!(chain["state"], "succeeded");
    assert_eq!(chain["result"], 42);

    // One task from flags, without waiting: the id, then its state.
    let out = broker
        .cli(&[
            "submit",
            "cli.double",
            "--args",
            "[4]",
            "--context",
            "k=v",
            "--json",
        ])
        .await;
    let id = json_of(&out)["chain_id"].as_str().unwrap().to_owned();
    let chain = eventually(&broker, &["chain", "get", &id, "--json"], |c| {
        c["state"] == "succeeded"
    })
    .await;
    assert_eq!(chain["result"], 8);
    assert_eq!(chain["context"]["k"], "v");

    // A chain that fails: --wait exits 1 and says why.
    let out = broker
        .cli(&["submit", "cli.double", "--args", "[\"x\"]", "--wait"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("chain failed"), "{out:?}");

    // A file with a misspelt field is refused before anything is sent.
    std::fs::write(&file, r#"{"steps": [{"name": "cli.double", "argz": [1]}]}"#).unwrap();
    let out = broker.cli(&["submit", "-f", file.to_str().unwrap()]).await;
    fails(&out, 2, "unknown field `argz`");
    broker.stop().await;
}

/// Issue 22: `BATON_ADDR` names the broker for the CLI as for every SDK;
/// `BATON_ADDRESS` (the Python SDK's old name) still works, with a warning,
/// and is not read when `BATON_ADDR` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_addr_names_the_broker_and_baton_address_is_a_deprecated_alias() {
    let broker = Broker::start().await;
    let queues = |vars: &[(&str, &str)]| {
        let mut command = baton();
        command
            .args(["queues", "--json"])
            .envs(vars.iter().copied());
        run(command, None)
    };
    let out = queues(&[
        ("BATON_ADDR", &broker.addr),
        ("BATON_ADDRESS", "127.0.0.1:1"),
    ])
    .await;
    ok(&out);
    assert!(!stderr(&out).contains("deprecated"), "{out:?}");

    let out = queues(&[("BATON_ADDRESS", &broker.addr)]).await;
    ok(&out);
    assert!(
        stderr(&out).contains("warning: $BATON_ADDRESS is deprecated, use $BATON_ADDR"),
        "{out:?}"
    );
    broker.stop().await;
}

/// Issue 22: work whose task name no connected worker registered for its
/// queue waits; `queues`, `chain get` and a `--wait` that gives up say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_no_connected_worker_runs_is_named() {
    let broker = Broker::start().await;
    let out = broker
        .cli(&[
            "submit",
            "cli.nobody",
            "--args",
            "[1]",
            "--wait",
            "--timeout",
            "1",
        ])
        .await;
    fails(
        &out,
        1,
        "gave up waiting after 1.0s (the chain goes on at the broker); \
         no connected worker runs cli.nobody (queue general)",
    );
    let nobody = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("submitted chain "))
        .unwrap()
        .to_owned();

    // A worker for cli.double in queues general and cli: not for cli.nobody,
    // nor for cli.double in queue elsewhere, nor for a delayed step.
    let _worker = spawn_worker(&broker.addr, "w-unserved", Arc::default());
    eventually(&broker, &["workers", "--json"], |v| {
        v["workers"].as_array().unwrap().len() == 1
    })
    .await;
    let elsewhere = ok(&broker
        .cli(&[
            "submit",
            "cli.double",
            "--args",
            "[1]",
            "--queue",
            "elsewhere",
        ])
        .await);
    let delayed = r#"{"steps": [{"name": "cli.later", "options": {"countdown_ms": 600000}}]}"#;
    let delayed = ok(&broker
        .cli_with_stdin(&["submit", "-f", "-"], Some(delayed))
        .await);
    // Served work is not named: this one runs.
    let served = broker
        .cli(&["submit", "cli.double", "--args", "[4]", "--wait"])
        .await;
    ok(&served);

    let queues = json_of(&broker.cli(&["queues", "--json"]).await);
    let unserved = |name: &str| {
        queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .map(|q| q["unserved_tasks"].clone())
    };
    assert_eq!(
        unserved("general"),
        Some(json!(["cli.later", "cli.nobody"]))
    );
    assert_eq!(unserved("elsewhere"), Some(json!(["cli.double"])));
    let text = ok(&broker.cli(&["queues"]).await);
    for line in [
        "no connected worker runs cli.double (queue elsewhere): its tasks wait until one connects",
        "no connected worker runs cli.later (queue general): its tasks wait until one connects",
        "no connected worker runs cli.nobody (queue general): its tasks wait until one connects",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }

    for (id, name, queue) in [
        (nobody.as_str(), "cli.nobody", "general"),
        (elsewhere.trim(), "cli.double", "elsewhere"),
        (delayed.trim(), "cli.later", "general"),
    ] {
        let text = ok(&broker.cli(&["chain", "get", id]).await);
        let line = format!("no connected worker runs {name} (queue {queue}): the step waits");
        assert!(text.contains(&line), "{line:?} not in\n{text}");
        let chain = json_of(&broker.cli(&["chain", "get", id, "--json"]).await);
        assert_eq!(chain["steps"][0]["unserved_queue"], queue, "{chain}");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_get_watch_and_cancel() {
    let broker = Broker::start().await;
    // No worker runs this task: the chain waits in its queue.
    let out = broker.cli(&["submit", "cli.nobody", "--args", "[1]"]).await;
    let id = ok(&out).trim().to_owned();

    let text = ok(&broker.cli(&["chain", "get", &id]).await);
    assert!(text.contains("state         running"), "{text}");
    assert!(
        text.contains("cli.nobody") && text.contains("ready"),
        "{text}"
    );
    assert_eq!(
        step_state(&json_of(
            &broker.cli(&["chain", "get", &id, "--json"]).await
        )),
        "ready"
    );

    // A watch follows until the cancel ends the chain; it exits 1.
    let watch = {
        let mut command = baton();
        command
            .args(["chain", "watch", &id, "--json"])
            .env("BATON_ADDR", &broker.addr);
        tokio::spawn(run(command, None))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = ok(&broker
        .cli(&["chain", "cancel", &id, "--reason", "not needed"])
        .await);
    assert!(text.contains("cancelled"), "{text}");
    let out = watch.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["kind"], "snapshot");
    assert_eq!(events.last().unwrap()["state"], "cancelled");

    let chain = json_of(&broker.cli(&["chain", "get", &id, "--json"]).await);
    assert_eq!(chain["state"], "cancelled");
    assert_eq!(chain["cancel_reason"], "not needed");
    // Cancelling again changes nothing and is no error (scripts may retry).
    let out = broker.cli(&["chain", "cancel", &id, "--json"]).await;
    assert_eq!(json_of(&out)["state"], "cancelled");

    // Unknown chains: the broker's own message, exit 1.
    let unknown = "0190c0de-0000-7000-8000-000000000000";
    let out = broker.cli(&["chain", "get", unknown]).await;
    fails(&out, 1, &format!("error: chain {unknown} not found"));
    let out = broker.cli(&["chain", "get", "not-a-uuid"]).await;
    fails(&out, 1, "error: chain_id is not a UUID");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_workers_and_throttles_in_tables_and_json() {
    let broker = Broker::start().await;
    let _worker = spawn_worker(&broker.addr, "w-list", Arc::default());
    let workers = eventually(&broker, &["workers", "--json"], |v| {
        v["workers"].as_array().is_some_and(|w| !w.is_empty())
    })
    .await;
    let w = &workers["workers"][0];
    assert_eq!(w["worker_name"], "w-list");
    assert_eq!(w["concurrency"], 2);
    assert!(
        w["task_names"]
            .as_array()
            .unwrap()
            .contains(&json!("cli.double"))
    );
    let text = ok(&broker.cli(&["workers"]).await);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("w-list") && text.contains("active") && text.contains("0/2"),
        "{text}"
    );

    // Work nobody takes shows up in its queue.
    ok(&broker.cli(&["submit", "cli.nobody", "--queue", "io"]).await);
    let queues = json_of(&broker.cli(&["queues", "--json"]).await);
    let io = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "io")
        .expect("queue io listed");
    assert_eq!(
        (io["ready"].as_u64(), io["paused"].as_bool()),
        (Some(1), Some(false))
    );
    let text = ok(&broker.cli(&["queues"]).await);
    assert!(text.starts_with("QUEUE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("io") && l.contains("active")),
        "{text}"
    );

    // Set a limit, see it listed.
    let out = broker
        .cli(&[
            "throttles",
            "set",
            "3",
            "--task",
            "cli.slow",
            "--key",
            "vm:1",
            "--json",
        ])
        .await;
    let info = json_of(&out);
    assert_eq!(
        (info["limit"].as_u64(), info["limit_overridden"].as_bool()),
        (Some(3), Some(true))
    );
    let list = json_of(&broker.cli(&["throttles", "--json"]).await);
    let t = &list["throttles"][0];
    assert_eq!(
        (t["task_name"].as_str(), t["key"].as_str()),
        (Some("cli.slow"), Some("vm:1"))
    );
    assert_eq!(t["waiters"], 0);
    let text = ok(&broker.cli(&["throttles", "--holders"]).await);
    assert!(
        text.contains("cli.slow[vm:1]") && text.contains("3 (set)"),
        "{text}"
    );
    // A shared key, and clearing it again.
    let text = ok(&broker
        .cli(&["throttles", "set", "2", "--key", "tenant:7"])
        .await);
    assert!(text.contains("key tenant:7: limit 2 (set)"), "{text}");
    let text = ok(&broker
        .cli(&["throttles", "set", "0", "--key", "tenant:7"])
        .await);
    assert!(text.contains("back to the declared concurrency"), "{text}");
    // A rate, as Celery writes it, set live and shown in the table.
    let text = ok(&broker
        .cli(&[
            "throttles",
            "rate",
            "100/m",
            "--burst",
            "10",
            "--key",
            "api",
        ])
        .await);
    assert!(
        text.contains("key api: rate 100/m burst 10 (set)"),
        "{text}"
    );
    let text = ok(&broker.cli(&["throttles"]).await);
    assert!(
        text.contains("RATE") && text.contains("100/m burst 10 (set)"),
        "{text}"
    );
    let list = json_of(&broker.cli(&["throttles", "--json"]).await);
    let api = list["throttles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "api")
        .expect("listed");
    assert_eq!(api["rate"]["period_ms"], 60_000);
    let text = ok(&broker
        .cli(&["throttles", "rate", "--clear", "--key", "api"])
        .await);
    assert!(text.contains("back to the declared rate"), "{text}");
    // A bad burst is the broker's to refuse, and it says why.
    let out = broker
        .cli(&["throttles", "rate", "5/s", "--burst", "6", "--key", "api"])
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("burst is 6, more than its count 5"),
        "{out:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_keeps_its_tasks_across_a_restart_and_runs_them_once_resumed() {
    let broker = Broker::start().await;
    let out = json_of(&broker.cli(&["queue", "pause", "cli", "--json"]).await);
    assert_eq!(out["paused"], true);
    let worker = spawn_worker(&broker.addr, "w-pause", Arc::default());
    let id = ok(&broker
        .cli(&["submit", "cli.double", "--args", "[1]", "--queue", "cli"])
        .await)
    .trim()
    .to_owned();
    // A worker serves the queue, yet the task stays READY.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let chain = json_of(&broker.cli(&["chain", "get", &id, "--json"]).await);
    assert_eq!(step_state(&chain), "ready");
    let text = ok(&broker.cli(&["queues"]).await);
    assert!(
        text.lines()
            .any(|l| l.starts_with("cli") && l.contains("paused")),
        "{text}"
    );

    // The pause is stored.
    worker.abort();
    let dir = broker.stop().await;
    let broker = Broker::start_in(dir, &[]).await;
    let _worker = spawn_worker(&broker.addr, "w-pause", Arc::default());
    let queues = json_of(&broker.cli(&["queues", "--json"]).await);
    let cli = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "cli")
        .expect("queue cli listed");
    assert_eq!(
        (cli["paused"].as_bool(), cli["ready"].as_u64()),
        (Some(true), Some(1))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        step_state(&json_of(
            &broker.cli(&["chain", "get", &id, "--json"]).await
        )),
        "ready"
    );

    let text = ok(&broker.cli(&["queue", "resume", "cli"]).await);
    assert!(text.contains("queue cli: active"), "{text}");
    let chain = eventually(&broker, &["chain", "get", &id, "--json"], |c| {
        c["state"] == "succeeded"
    })
    .await;
    assert_eq!(chain["result"], 2);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_cancels_the_chains_of_ready_tasks_only() {
    let broker = Broker::start().await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let out = broker
            .cli(&[
                "submit",
                "cli.nobody",
                "--args",
                &format!("[{i}]"),
                "--queue",
                "doomed",
            ])
            .await;
        ids.push(ok(&out).trim().to_owned());
    }
    // Another queue is not touched.
    let other = ok(&broker
        .cli(&["submit", "cli.nobody", "--queue", "kept"])
        .await)
    .trim()
    .to_owned();
    let out = broker
        .cli(&[
            "queue",
            "purge",
            "doomed",
            "--yes",
            "--reason",
            "bad deploy",
            "--json",
        ])
        .await;
    let purged = json_of(&out);
    assert_eq!(purged["cancelled"], 2);
    let mut listed: Vec<String> = purged["chain_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    for id in &ids {
        let chain = json_of(&broker.cli(&["chain", "get", id, "--json"]).await);
        assert_eq!(chain["state"], "cancelled");
        assert_eq!(chain["cancel_reason"], "queue doomed purged: bad deploy");
    }
    let chain = json_of(&broker.cli(&["chain", "get", &other, "--json"]).await);
    assert_eq!(chain["state"], "running");
    let text = ok(&broker.cli(&["queue", "purge", "doomed", "--yes"]).await);
    assert!(text.contains("0 chain(s) cancelled"), "{text}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_are_listed_by_state_newest_first() {
    let broker = Broker::start().await;
    let fail = Arc::new(AtomicBool::new(false));
    let _worker = spawn_worker(&broker.addr, "w-list", fail.clone());
    let mut succeeded = Vec::new();
    for _ in 0..3 {
        let done = json_of(
            &broker
                .cli(&["submit", "cli.boom", "--wait", "--json"])
                .await,
        );
        succeeded.push(done["chain_id"].as_str().unwrap().to_owned());
    }
    // Two chains of a task no worker runs: they stay running.
    let mut running = Vec::new();
    for _ in 0..2 {
        let out = json_of(&broker.cli(&["submit", "cli.nobody", "--json"]).await);
        running.push(out["chain_id"].as_str().unwrap().to_owned());
    }
    let ids = |page: &Value| -> Vec<String> {
        page["chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["chain_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let page = json_of(
        &broker
            .cli(&[
                "chain",
                "list",
                "--state",
                "succeeded",
                "--limit",
                "2",
                "--json",
            ])
            .await,
    );
    assert_eq!(ids(&page), [succeeded[2].clone(), succeeded[1].clone()]);
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let rest = json_of(
        &broker
            .cli(&[
                "chain",
                "list",
                "--state",
                "succeeded",
                "--page-token",
                &token,
                "--json",
            ])
            .await,
    );
    assert_eq!(ids(&rest), [succeeded[0].clone()]);
    let live = json_of(&broker.cli(&["chain", "list", "--json"]).await);
    assert_eq!(ids(&live), [running[1].clone(), running[0].clone()]);
    let text = ok(&broker.cli(&["chain", "list", "--state", "cancelled"]).await);
    assert!(text.contains("(no cancelled chain)"), "{text}");
    let out = broker.cli(&["chain", "list", "--state", "lost"]).await;
    fails(&out, 2, "invalid value 'lost'");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_chains_are_listed_with_their_failure_and_requeued() {
    let broker = Broker::start().await;
    let fail = Arc::new(AtomicBool::new(true));
    let _worker = spawn_worker(&broker.addr, "w-dead", fail.clone());
    let out = broker
        .cli(&["submit", "cli.boom", "--wait", "--json"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let failed = serde_json::from_str::<Value>(stdout(&out).trim()).unwrap();
    let id = failed["chain_id"].as_str().unwrap().to_owned();

    let dead = json_of(&broker.cli(&["dead", "list", "--json"]).await);
    let listed = &dead["chains"][0];
    assert_eq!(listed["chain_id"], id.as_str());
    assert_eq!(listed["failure"]["error_type"], "Boom");
    assert_eq!(listed["failure"]["message"], "it went boom");
    assert_eq!(listed["failure"]["task_name"], "cli.boom");
    let text = ok(&broker.cli(&["dead", "list"]).await);
    assert!(
        text.contains(&id) && text.contains("Boom") && text.contains("it went boom"),
        "{text}"
    );

    // Requeued once the cause is fixed: a new chain that succeeds.
    fail.store(false, Ordering::SeqCst);
    let out = broker
        .cli(&["dead", "requeue", &id, "--wait", "--json"])
        .await;
    let requeued = json_of(&out);
    assert_eq!(requeued["state"], "succeeded");
    assert_eq!(requeued["requeued_from"], id.as_str());
    let new_id = requeued["chain_id"].as_str().unwrap();
    assert_ne!(new_id, id);
    let original = json_of(&broker.cli(&["chain", "get", &id, "--json"]).await);
    assert_eq!(original["requeued_as"], new_id);
    // It left the dead list, and cannot be requeued twice.
    let dead = json_of(&broker.cli(&["dead", "list", "--json"]).await);
    assert_eq!(dead["chains"], json!([]));
    let out = broker.cli(&["dead", "requeue", &id]).await;
    fails(&out, 1, "was requeued already");
    let out = broker.cli(&["dead", "requeue", new_id]).await;
    fails(&out, 1, "did not fail");

    // Pages: three failures, two per page, newest first.
    fail.store(true, Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = broker
            .cli(&["submit", "cli.boom", "--wait", "--json"])
            .await;
        let chain: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        ids.push(chain["chain_id"].as_str().unwrap().to_owned());
    }
    let first = json_of(
        &broker
            .cli(&["dead", "list", "--limit", "2", "--json"])
            .await,
    );
    let page: Vec<&str> = first["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chain_id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [ids[2].as_str(), ids[1].as_str()]);
    let token = first["next_page_token"].as_str().unwrap();
    let second = json_of(
        &broker
            .cli(&[
                "dead",
                "list",
                "--limit",
                "2",
                "--page-token",
                token,
                "--json",
            ])
            .await,
    );
    assert_eq!(second["chains"][0]["chain_id"], ids[0].as_str());
    assert_eq!(second["next_page_token"], "");
    let all = json_of(
        &broker
            .cli(&["dead", "list", "--limit", "1", "--all", "--json"])
            .await,
    );
    assert_eq!(all["chains"].as_array().unwrap().len(), 3);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_finishes_its_task_and_gets_no_new_work() {
    let broker = Broker::start().await;
    let _worker = spawn_worker(&broker.addr, "w-drain", Arc::default());
    eventually(&broker, &["workers", "--json"], |v| {
        v["workers"].as_array().is_some_and(|w| !w.is_empty())
    })
    .await;
    // A run in progress when the drain starts finishes.
    let running = ok(&broker
        .cli(&["submit", "cli.slow", "--args", "[3000]"])
        .await)
    .trim()
    .to_owned();
    eventually(&broker, &["chain", "get", &running, "--json"], |c| {
        step_state(c) == "running"
    })
    .await;
    let out = broker
        .cli(&["worker", "drain", "w-drain", "--wait", "--timeout", "30"])
        .await;
    let text = ok(&out);
    assert!(
        text.contains("draining 1 connection(s) of worker w-drain"),
        "{text}"
    );
    assert!(
        text.contains("1 task(s) still running") && text.contains("is drained"),
        "{text}"
    );
    let chain = json_of(&broker.cli(&["chain", "get", &running, "--json"]).await);
    assert_eq!(chain["state"], "succeeded");

    let workers = json_of(&broker.cli(&["workers", "--json"]).await);
    assert_eq!(workers["workers"][0]["draining"], true);
    // New work waits for another worker.
    let id = ok(&broker.cli(&["submit", "cli.double", "--args", "[3]"]).await)
        .trim()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        step_state(&json_of(
            &broker.cli(&["chain", "get", &id, "--json"]).await
        )),
        "ready"
    );
    let _other = spawn_worker(&broker.addr, "w-fresh", Arc::default());
    eventually(&broker, &["chain", "get", &id, "--json"], |c| {
        c["state"] == "succeeded"
    })
    .await;

    let out = broker.cli(&["worker", "drain", "nobody"]).await;
    fails(&out, 1, "error: no connected worker named nobody");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_what_ran() {
    let broker = Broker::start().await;
    let _worker = spawn_worker(&broker.addr, "w-metrics", Arc::default());
    ok(&broker
        .cli(&["submit", "cli.double", "--args", "[2]", "--wait"])
        .await);
    ok(&broker
        .cli(&["throttles", "set", "2", "--key", "tenant:1"])
        .await);
    ok(&broker.cli(&["queue", "pause", "parked"]).await);
    let text = broker.scrape().await;
    for line in [
        "content-type: application/openmetrics-text",
        "baton_tasks_submitted_total{task=\"cli.double\"} 1",
        "baton_tasks_succeeded_total{task=\"cli.double\"} 1",
        "baton_assignment_latency_seconds_count 1",
        "baton_queue_paused{queue=\"parked\"} 1",
        "baton_throttle_limit{task=\"\",key=\"tenant:1\"} 2",
        "baton_throttle_waiters{task=\"\",key=\"tenant:1\"} 0",
        "baton_workers_connected 1",
        "baton_lease_expiries_total 0",
        "# EOF",
    ] {
        assert!(
            text.to_lowercase().contains(&line.to_lowercase()),
            "{line} missing in:\n{text}"
        );
    }
    // Durable acknowledgment means at least one group commit was timed.
    let flushes = text
        .lines()
        .find_map(|l| l.strip_prefix("baton_store_flush_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(flushes > 0, "{text}");
    broker.stop().await;
}

/// Runs a `baton serve` that should refuse to start; one that starts
/// anyway is stopped after a few seconds, so the test fails rather than
/// hangs.
fn refused(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The several-brokers settings (issue 21): a leader lease out of range or
/// an address to advertise that is no HOST:PORT stop `serve` before it
/// touches anything, naming the setting; the same in the file.
#[test]
fn leader_settings_out_of_range_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = |extra: &[&str]| {
        let mut command = baton();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(["--store", "postgres://baton@127.0.0.1:1/baton"])
            .args(extra);
        command
    };
    let out = refused(serve(&["--leader-lease-ms", "0"]));
    fails(
        &out,
        1,
        "--leader-lease-ms is 0: it must be between 100 and 60000 ms",
    );
    let out = refused(serve(&["--leader-lease-ms", "60001"]));
    fails(
        &out,
        1,
        "--leader-lease-ms is 60001: it must be between 100 and 60000 ms",
    );
    let out = refused(serve(&["--advertise", "broker-1"]));
    fails(&out, 1, "--advertise: \"broker-1\" is not HOST:PORT");
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, "leader_lease_ms = 50\n").unwrap();
    let out = baton()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    fails(&out, 1, "leader_lease_ms is 50");
    assert!(!data.exists(), "nothing was started");
}

/// Issue 19, item 13: `--lease-ms 18446744073709551615` was accepted, and
/// `now + lease` wrapped so that every assignment lapsed at once. Every
/// duration setting is bounded, by flag, by environment and in the file,
/// with a message that names it, its value and its range.
#[test]
fn duration_settings_out_of_range_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = |extra: &[&str]| {
        let mut command = baton();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(extra);
        command
    };
    let out = refused(serve(&["--lease-ms", "18446744073709551615"]));
    fails(
        &out,
        1,
        "--lease-ms is 18446744073709551615: it must be between 1 and 86400000 ms",
    );
    let mut by_env = serve(&[]);
    by_env.env("BATON_LEASE_MS", "86400001");
    let out = refused(by_env);
    fails(
        &out,
        1,
        "--lease-ms is 86400001: it must be between 1 and 86400000 ms",
    );
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, "lease_ms = 9223372036854775807\n").unwrap();
    let mut by_file = serve(&["--config"]);
    by_file.arg(&file);
    let out = refused(by_file);
    fails(
        &out,
        1,
        "lease_ms is 9223372036854775807: it must be between 1 and 86400000 ms",
    );
    let out = baton()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    fails(&out, 1, "lease_ms is 9223372036854775807");
    assert!(!data.exists(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_is_checked_and_used_below_flags_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |path: &Path| {
        let mut command = baton();
        command.args(["config", "check"]).arg(path);
        command.output().unwrap()
    };

    let (file_port, flag_port, metrics) = (free_port(), free_port(), free_port());
    let good = write(
        "good.toml",
        &format!(
            "listen = \"127.0.0.1:{file_port}\"\ndata = \"store\"\nlease_ms = 4000\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\nlog_format = \"json\"\n"
        ),
    );
    let text = ok(&check(&good));
    assert!(text.contains("ok"), "{text}");
    assert!(text.contains("lease_ms = 4000"), "{text}");
    assert!(
        text.contains(&format!(
            "{:?}",
            dir.path().join("store").display().to_string()
        )),
        "a relative path is relative to the file: {text}"
    );

    let bad = write("bad.toml", "listen = \"127.0.0.1:7070\"\nleese_ms = 5000\n");
    let out = check(&bad);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("leese_ms") && stderr(&out).contains("line 2"),
        "{out:?}"
    );
    let out = check(&write("zero.toml", "lease_ms = 0\n"));
    fails(
        &out,
        1,
        "lease_ms is 0: it must be between 1 and 86400000 ms",
    );
    let out = check(&write("addr.toml", "metrics_listen = \"nowhere\"\n"));
    fails(&out, 1, "metrics_listen");
    let out = check(&write(
        "tls.toml",
        "tls_cert = \"missing.pem\"\ntls_key = \"missing.key\"\n",
    ));
    fails(&out, 1, "missing.pem");
    let out = check(&dir.path().join("absent.toml"));
    fails(&out, 1, "absent.toml");

    // serve: the flag beats the file's listen; the file's data directory
    // and metrics address are used.
    let mut command = baton();
    command
        .args(["serve", "--config"])
        .arg(&good)
        .args(["--listen", &format!("127.0.0.1:{flag_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{flag_port}");
    let start = Instant::now();
    loop {
        if let Ok(client) = baton::Client::connect(addr.clone()).await
            && client.admin().list_queues().await.is_ok()
        {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "serve --config did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dir.path().join("store").join("db").exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err());
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // An environment variable beats the file too.
    let mut command = baton();
    command
        .args(["config", "check"])
        .arg(&good)
        .env("BATON_LEASE_MS", "777");
    let text = ok(&command.output().unwrap());
    assert!(text.contains("lease_ms = 777"), "{text}");
}

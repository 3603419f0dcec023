//! Disk trouble, for real: the `baton` binary runs, its store's file is
//! capped by a file-size limit (RLIMIT_FSIZE, set on the child with
//! prlimit), so every write past the cap fails in the kernel with EFBIG,
//! the way a full disk fails with ENOSPC: through sled's real write path,
//! including its sticky error. No root tricks (root ignores permission
//! bits, not this limit) and no mount.
//!
//! What it checks: while the disk is "full", submissions are refused with
//! RESOURCE_EXHAUSTED and health says NOT_SERVING; nothing is acknowledged
//! that is not on disk (a run's outcome arriving meanwhile is acked only
//! later); when the limit is lifted the broker recovers by itself; and
//! after a `kill -9` every chain ever acknowledged is there.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton::{ChainOutcome, Client, Task};
use baton_worker::{TaskContext, Worker};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PATIENCE: Duration = Duration::from_secs(60);

struct Broker {
    addr: String,
    child: tokio::process::Child,
}

impl Broker {
    async fn spawn(data: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            // Through a pipe: under the file-size limit the broker could not
            // write its log to a file.
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn baton");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[broker] {line}");
            }
        });
        let addr = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if let Ok(client) = Client::connect(addr.clone()).await
                && client.admin().list_queues().await.is_ok()
            {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "baton did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Broker { addr, child }
    }

    /// Caps the size of every file the broker writes (`None`: no cap).
    fn limit_file_size(&self, bytes: Option<u64>) {
        use rustix::process::{Pid, Resource, Rlimit, prlimit};
        let pid = Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap()).unwrap();
        let new = Rlimit {
            current: bytes,
            maximum: None,
        };
        prlimit(Some(pid), Resource::Fsize, new).expect("prlimit");
    }

    async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let channel = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    }
}

fn worker(addr: &str) -> Worker {
    Worker::builder(addr.to_owned())
        .name("disk-test")
        .concurrency(8)
        .task(
            "echo",
            |ctx: TaskContext| async move { Ok(ctx.args[0].clone()) },
        )
        .task("slow", |ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(ctx.args[0].clone())
        })
        .build()
        .unwrap()
}

async fn succeeded(client: &Client, id: &str, value: serde_json::Value) {
    assert_eq!(
        client.wait_timeout(id, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(value),
        "chain {id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_holds_acks_and_recovers_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::spawn(&data).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let w = worker(&broker.addr);
    let worker_task = tokio::spawn(w.run_until(std::future::pending()));
    let echo = Task::new("echo");

    // Acknowledged before the trouble.
    let mut acked = Vec::new();
    for n in 0..5 {
        let id = client.submit(echo.si([n])).await.unwrap().chain_id;
        succeeded(&client, &id, json!(n)).await;
        acked.push((id, json!(n)));
    }
    // A run that is out when the disk fills: its outcome comes back while
    // nothing can be written.
    let slow = client
        .submit(Task::new("slow").si(["slow"]))
        .await
        .unwrap()
        .chain_id;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The disk is "full": no file of the broker may grow.
    let size = std::fs::metadata(data.join("db")).unwrap().len();
    broker.limit_file_size(Some(size));

    // Submissions caught in the round whose write fails are neither
    // acknowledged nor refused (the repair decides); once the scheduler
    // knows, the next ones are refused at once, naming the trouble.
    let submit = |n: usize| {
        let client = client.clone();
        let chain = echo.si([format!("held {n}")]);
        tokio::spawn(async move { client.submit(chain).await })
    };
    let mut held = Vec::new();
    let start = Instant::now();
    let refusal = loop {
        assert!(
            start.elapsed() < PATIENCE,
            "no refusal while the disk is full"
        );
        let mut attempt = submit(held.len());
        match tokio::time::timeout(Duration::from_millis(500), &mut attempt).await {
            Err(_) => held.push(attempt),
            Ok(answer) => match answer.unwrap() {
                Ok(s) => panic!("chain {} acknowledged while the disk is full", s.chain_id),
                Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => break e,
                Err(e) => panic!("unexpected answer while the disk is full: {e}"),
            },
        }
    };
    assert!(!held.is_empty(), "the write of the first submission failed");
    assert!(
        refusal.status().unwrap().message().contains("disk is full"),
        "{refusal}"
    );
    assert_eq!(broker.health("").await, ServingStatus::NotServing);
    assert_eq!(
        broker.health("baton.v1.Broker").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        broker.health("baton.v1.Worker").await,
        ServingStatus::Serving
    );
    // The slow run ends meanwhile; its success cannot be stored, so it is
    // not acknowledged, the held submissions have no answer yet, and chain
    // reads are refused (only durable state is shown).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "a submission was answered while its write failed"
    );
    let read = client.get(&slow).await.unwrap_err();
    assert_eq!(read.code(), Some(tonic::Code::ResourceExhausted), "{read}");

    // Room again: the broker repairs itself and takes new work.
    broker.limit_file_size(None);
    let start = Instant::now();
    let after = loop {
        assert!(start.elapsed() < PATIENCE, "the broker did not recover");
        match client.submit(echo.si(["after"])).await {
            Ok(s) => break s.chain_id,
            Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected answer while recovering: {e}"),
        }
    };
    acked.push((after, json!("after")));
    assert_eq!(broker.health("").await, ServingStatus::Serving);
    assert_eq!(
        broker.health("baton.v1.Broker").await,
        ServingStatus::Serving
    );
    for (n, h) in held.into_iter().enumerate() {
        let submitted = tokio::time::timeout(PATIENCE, h)
            .await
            .expect("a held submission is answered after the repair")
            .unwrap()
            .expect("and stored");
        acked.push((submitted.chain_id, json!(format!("held {n}"))));
    }
    acked.push((slow, json!("slow")));
    for (id, value) in &acked {
        succeeded(&client, id, value.clone()).await;
    }

    // Nothing acknowledged is lost, even to a kill -9 right after.
    worker_task.abort();
    broker.kill9().await;
    let broker = Broker::spawn(&data).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    for (id, value) in &acked {
        let chain = client.get(id).await.unwrap();
        assert_eq!(
            chain.state(),
            baton::pb::ChainState::Succeeded,
            "chain {id}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&chain.result).unwrap(),
            *value
        );
    }
    broker.kill9().await;
}

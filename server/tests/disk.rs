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
//!
//! The same for a record sled keeps in a blob file of its own (over about
//! 128 KiB), under the file-size cap and with no descriptor left
//! (RLIMIT_NOFILE lowered to the broker's lowest free descriptor, so the
//! blob file cannot be opened: EMFILE): the broker never hangs (issue 19,
//! finding 1).
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
    /// Every line the broker wrote to its stderr (its log) so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Broker {
    async fn spawn(data: &Path) -> Self {
        Self::spawn_with(data, &[]).await
    }

    /// Starts a broker with extra `baton serve` arguments.
    async fn spawn_with(data: &Path, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            // Through a pipe: under the file-size limit the broker could not
            // write its log to a file.
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn baton");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let kept = std::sync::Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[broker] {line}");
                kept.lock().unwrap().push(line);
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
        Broker { addr, child, log }
    }

    /// Caps the size of every file the broker writes (`None`: no cap).
    fn limit_file_size(&self, bytes: Option<u64>) {
        self.limit(rustix::process::Resource::Fsize, bytes);
    }

    /// Caps the number of descriptors the broker may have open (`None`:
    /// back to the hard limit).
    fn limit_files(&self, files: Option<u64>) {
        self.limit(rustix::process::Resource::Nofile, files);
    }

    /// Leaves the broker no descriptor to open: its limit is set to its
    /// lowest free descriptor number (the kernel hands out the lowest, so
    /// with the limit there every open fails with EMFILE).
    fn starve_descriptors(&self) {
        let fd_dir = format!("/proc/{}/fd", self.pid());
        let open: std::collections::HashSet<u64> = std::fs::read_dir(fd_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
        self.limit_files(Some(lowest_free));
    }

    /// Sets the broker's soft limit of `resource` (`None`: up to the hard
    /// limit, which the broker inherited from this process).
    fn limit(&self, resource: rustix::process::Resource, current: Option<u64>) {
        use rustix::process::{Pid, Rlimit, getrlimit, prlimit};
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap()).unwrap();
        let maximum = getrlimit(resource).maximum;
        let new = Rlimit {
            current: current.or(maximum),
            maximum,
        };
        prlimit(Some(pid), resource, new).expect("prlimit");
    }

    /// The lines of the broker's log at ERROR so far.
    fn errors(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("ERROR"))
            .cloned()
            .collect()
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
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
    let (held, refusal) = until_refused(&client, tonic::Code::ResourceExhausted).await;
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

/// The payload of a chain large enough that sled stores its record in a
/// file of its own under `blobs/` (past `segment_size / 4`, about 128 KiB).
const LARGE: usize = 600 * 1024;

/// What disk trouble does to the broker, for a fault set by `start` and
/// lifted by `stop`: a chain of [`LARGE`] bytes submitted meanwhile is
/// refused or held, never hangs the broker (health and GetChain answer
/// within seconds all along), the broker recovers by itself once the fault
/// is lifted, and whatever was acknowledged survives a kill -9.
async fn a_large_record_in_trouble(
    start: impl FnOnce(&Broker, &Path),
    stop: impl FnOnce(&Broker),
    refusal: tonic::Code,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::spawn_with(&data, &["--max-payload", "2000000"]).await;
    // Every connection is made before the trouble: with no descriptor
    // left the broker could accept no new one.
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(broker.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let echo = Task::new("echo");
    let small = client.submit(echo.si(["small"])).await.unwrap().chain_id;
    let large_arg = "x".repeat(LARGE);

    start(&broker, &data);
    let submission = {
        let client = client.clone();
        let chain = echo.si([large_arg.clone()]);
        tokio::spawn(async move { client.submit(chain).await })
    };
    // For three seconds of trouble the broker answers: health says it does
    // not serve, chain reads are refused or answered, never left hanging.
    let answer = Duration::from_secs(5);
    let until = Instant::now() + Duration::from_secs(3);
    let mut saw_trouble = false;
    while Instant::now() < until {
        let mut h = health.clone();
        let status = tokio::time::timeout(
            answer,
            h.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("health answers during disk trouble")
        .unwrap()
        .into_inner()
        .status();
        saw_trouble |= status == ServingStatus::NotServing;
        let read = tokio::time::timeout(answer, client.get(&small))
            .await
            .expect("GetChain answers during disk trouble");
        if let Err(e) = read {
            assert_eq!(e.code(), Some(refusal), "{e}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(saw_trouble, "health never said NOT_SERVING");
    // Submitted now, a chain is refused at once (the broker knows).
    let refused = tokio::time::timeout(answer, client.submit(echo.si(["refused"])))
        .await
        .expect("a submission is answered during disk trouble")
        .unwrap_err();
    assert_eq!(refused.code(), Some(refusal), "{refused}");

    // The trouble ends: the broker recovers by itself.
    stop(&broker);
    let start = Instant::now();
    let after = loop {
        assert!(start.elapsed() < PATIENCE, "the broker did not recover");
        match tokio::time::timeout(answer, client.submit(echo.si(["after"]))).await {
            Ok(Ok(s)) => break s.chain_id,
            Ok(Err(e)) if e.code() == Some(refusal) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => panic!("unexpected answer while recovering: {e}"),
            Err(_) => panic!("a submission hung after the trouble ended"),
        }
    };
    let large = tokio::time::timeout(PATIENCE, submission)
        .await
        .expect("the large submission is answered after the repair")
        .unwrap();
    let mut acked = vec![(small, "small".to_owned()), (after, "after".to_owned())];
    match large {
        Ok(s) => acked.push((s.chain_id, large_arg.clone())),
        Err(e) => assert_eq!(e.code(), Some(refusal), "{e}"),
    }
    // A large chain submitted now is stored.
    let again = client.submit(echo.si([large_arg.clone()])).await.unwrap();
    acked.push((again.chain_id, large_arg));

    broker.kill9().await;
    // Each acknowledged chain is there, its arguments whole: the echo
    // task gives them back as its result.
    let broker = Broker::spawn_with(&data, &["--max-payload", "2000000"]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let worker_task = tokio::spawn(worker(&broker.addr).run_until(std::future::pending()));
    for (id, arg) in &acked {
        succeeded(&client, id, json!(arg)).await;
    }
    worker_task.abort();
    broker.kill9().await;
}

/// Issue 19, finding 1: a record sled stores in a blob file of its own,
/// written while no file may grow (EFBIG), left a writer on sled's IO
/// buffer, and every flush after waited for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_on_a_full_disk_is_refused_or_held_never_hangs() {
    a_large_record_in_trouble(
        |broker, data| {
            let size = std::fs::metadata(data.join("db")).unwrap().len();
            assert!(size < LARGE as u64, "the store's file is {size} bytes");
            broker.limit_file_size(Some(size));
        },
        |broker| broker.limit_file_size(None),
        tonic::Code::ResourceExhausted,
    )
    .await;
}

/// The same with no descriptor left (EMFILE): the blob file cannot be
/// opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_with_no_descriptor_left_is_refused_or_held_never_hangs() {
    a_large_record_in_trouble(
        |broker, _| broker.starve_descriptors(),
        |broker| broker.limit_files(None),
        tonic::Code::Unavailable,
    )
    .await;
}

/// Issue 19, finding 3: a restart that finds the blob file of an
/// acknowledged record torn (`torn`: emptied) or missing says so at ERROR,
/// naming the file, instead of dropping the record without a word.
async fn a_damaged_blob_is_reported(torn: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::spawn_with(&data, &["--max-payload", "2000000"]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    client
        .submit(Task::new("echo").si(["x".repeat(LARGE)]))
        .await
        .unwrap();
    broker.kill9().await;

    // The newest blob file holds the leaf with the chain's record.
    let newest = std::fs::read_dir(data.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .expect("the large record is in a blob file");
    if torn {
        std::fs::File::create(&newest).unwrap();
    } else {
        std::fs::remove_file(&newest).unwrap();
    }
    let broker = Broker::spawn(&data).await;
    let name = newest.file_name().unwrap().to_str().unwrap().to_owned();
    let errors = broker.errors();
    assert!(
        errors.iter().any(|l| l.contains(&name)),
        "no ERROR names blob {name}: {errors:?}"
    );
    broker.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_blob_file_is_reported_at_error() {
    a_damaged_blob_is_reported(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_file_is_reported_at_error() {
    a_damaged_blob_is_reported(false).await;
}

/// A submission not answered yet.
type Held = tokio::task::JoinHandle<baton::Result<baton::Submitted>>;

/// Until the broker refuses a submission (the store's trouble is known),
/// submitting small chains; those caught in a failing round are held, not
/// answered.
/// Returns the held ones and the refusal.
async fn until_refused(client: &Client, refusal: tonic::Code) -> (Vec<Held>, baton::Error) {
    let mut held = Vec::new();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < PATIENCE, "no refusal during disk trouble");
        let mut attempt = {
            let client = client.clone();
            let chain = Task::new("echo").si([format!("held {}", held.len())]);
            tokio::spawn(async move { client.submit(chain).await })
        };
        match tokio::time::timeout(Duration::from_millis(500), &mut attempt).await {
            Err(_) => held.push(attempt),
            Ok(answer) => match answer.unwrap() {
                Ok(s) => panic!("chain {} acknowledged during disk trouble", s.chain_id),
                Err(e) if e.code() == Some(refusal) => return (held, e),
                Err(e) => panic!("unexpected answer during disk trouble: {e}"),
            },
        }
    }
}

/// SetThrottleLimit and DrainWorker store or change what runs: while the
/// disk is full they are refused with RESOURCE_EXHAUSTED and change
/// nothing; after the repair they work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_are_refused_on_a_full_disk_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::spawn(&data).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    let admin = client.admin();
    let worker_task = tokio::spawn(worker(&broker.addr).run_until(std::future::pending()));
    let id = client
        .submit(Task::new("echo").si([1]))
        .await
        .unwrap()
        .chain_id;
    succeeded(&client, &id, json!(1)).await;
    let identity = baton::pb::ThrottleIdentity::task("echo", "k");
    let overridden = |throttles: &[baton::pb::ThrottleInfo]| {
        throttles
            .iter()
            .find(|t| t.identity.as_ref() == Some(&identity))
            .map(|t| (t.limit, t.limit_overridden))
    };
    let draining = |workers: &[baton::pb::WorkerInfo]| {
        workers
            .iter()
            .filter(|w| w.worker_name == "disk-test")
            .map(|w| w.draining)
            .collect::<Vec<_>>()
    };
    assert_eq!(draining(&admin.list_workers().await.unwrap()), [false]);

    let size = std::fs::metadata(data.join("db")).unwrap().len();
    broker.limit_file_size(Some(size));
    let (held, _) = until_refused(&client, tonic::Code::ResourceExhausted).await;

    // Answered at once: a write the broker took would wait for the repair.
    let answer = Duration::from_secs(5);
    let limit = tokio::time::timeout(answer, admin.set_throttle_limit(identity.clone(), 3))
        .await
        .expect("SetThrottleLimit is answered during disk trouble")
        .unwrap_err();
    assert_eq!(
        limit.code(),
        Some(tonic::Code::ResourceExhausted),
        "{limit}"
    );
    let drain = tokio::time::timeout(answer, admin.drain_worker("disk-test"))
        .await
        .expect("DrainWorker is answered during disk trouble")
        .unwrap_err();
    assert_eq!(
        drain.code(),
        Some(tonic::Code::ResourceExhausted),
        "{drain}"
    );
    // Nothing changed: no override, the worker not draining.
    assert_eq!(overridden(&admin.list_throttles().await.unwrap()), None);
    assert_eq!(draining(&admin.list_workers().await.unwrap()), [false]);

    // Room again: both work once the broker has repaired its store.
    broker.limit_file_size(None);
    let start = Instant::now();
    let info = loop {
        assert!(start.elapsed() < PATIENCE, "the broker did not recover");
        match admin.set_throttle_limit(identity.clone(), 3).await {
            Ok(info) => break info,
            Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected answer while recovering: {e}"),
        }
    };
    assert_eq!((info.limit, info.limit_overridden), (3, true));
    assert_eq!(
        overridden(&admin.list_throttles().await.unwrap()),
        Some((3, true))
    );
    let drained = admin.drain_worker("disk-test").await.unwrap();
    assert_eq!(draining(&drained), [true]);
    assert_eq!(draining(&admin.list_workers().await.unwrap()), [true]);
    for h in held {
        tokio::time::timeout(PATIENCE, h)
            .await
            .expect("a held submission is answered after the repair")
            .unwrap()
            .expect("and stored");
    }
    worker_task.abort();
    broker.kill9().await;
}

/// Repairs back off (50 ms doubling to 2 s) whatever the failure. With no
/// descriptor left and a large record pending, closing the store freed
/// enough descriptors for its reopening to succeed, the pending write then
/// failed again at once, and the repair was tried again about every 55 ms,
/// logging each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_back_off_when_no_descriptor_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::spawn_with(&data, &["--max-payload", "2000000"]).await;
    let client = Client::connect(broker.addr.clone()).await.unwrap();
    client
        .submit(Task::new("echo").si(["small"]))
        .await
        .unwrap();

    broker.starve_descriptors();
    let large = {
        let client = client.clone();
        let chain = Task::new("echo").si(["x".repeat(LARGE)]);
        tokio::spawn(async move { client.submit(chain).await })
    };
    // The trouble starts (the large chain's write fails first); then
    // repairs are counted over four seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    until_refused(&client, tonic::Code::Unavailable).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = || {
        let log = broker.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("store flush failed"))
            .count()
    };
    let before = attempts();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = attempts() - before;
    let errors = broker.errors().len();
    // Backing off from 50 ms to 2 s, a repair is tried at most 4 times in
    // 4 s once the first second has passed (1.55 s, 3.15 s, 5.15 s after
    // the first failure); a little slack for timing.
    assert!(
        during <= 6,
        "{during} repair attempts in 4 s ({errors} ERROR lines in all)"
    );

    broker.limit_files(None);
    let large = tokio::time::timeout(PATIENCE, large)
        .await
        .expect("the large submission is answered after the repair")
        .unwrap();
    if let Err(e) = large {
        assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
    }
    let start = Instant::now();
    while let Err(e) = client.submit(Task::new("echo").si(["after"])).await {
        assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
        assert!(start.elapsed() < PATIENCE, "the broker did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.kill9().await;
}

//! Shared harness of the end-to-end tests: a real broker (the server
//! library in-process, or the real `baton` binary for crash tests) on a free
//! loopback port with a temporary data directory, real workers from the
//! Rust SDK, and the typed client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::Client;
use baton_worker::{Worker, WorkerBuilder};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Upper bound of every wait in these tests: long enough for a loaded
/// 2-core CI machine, short enough that a hang fails instead of stalling.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Logs to the test's output when RUST_LOG is set (e.g. RUST_LOG=debug).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

/// A broker running in this process.
pub struct TestBroker {
    pub addr: String,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<Result<(), baton_server::Error>>>,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut baton_server::Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, configure).await
    }

    /// Starts a broker on an existing data directory (a restart).
    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        configure: impl FnOnce(&mut baton_server::Config),
    ) -> Self {
        init_logging();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = baton_server::Config::new(dir.path());
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(baton_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestBroker {
            addr,
            dir,
            stop: Some(stop),
            join: Some(join),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr.clone())
            .await
            .expect("connect client")
    }

    /// Stops the broker cleanly and waits for it to end.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(join) = self.join.take() {
            let _ = tokio::time::timeout(PATIENCE, join).await;
        }
    }
}

/// A worker running in this process. Dropping it (or [`TestWorker::kill`])
/// aborts it without a goodbye, as a crash would look to the broker.
pub struct TestWorker {
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), baton_worker::Error>>,
}

impl TestWorker {
    pub fn spawn(builder: WorkerBuilder) -> Self {
        let worker: Worker = builder.build().expect("build worker");
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        TestWorker {
            stop: Some(stop),
            join,
        }
    }

    /// Graceful stop: drain, goodbye.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(PATIENCE, &mut self.join).await;
    }

    /// Abrupt stop: the stream breaks with no goodbye.
    pub fn kill(self) {
        self.join.abort();
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.join.abort();
    }
}

/// A worker builder for the broker at `addr` with short test defaults.
pub fn worker(addr: &str, name: &str) -> WorkerBuilder {
    Worker::builder(addr.to_owned())
        .name(name)
        .drain_timeout(Duration::from_secs(10))
}

/// What task bodies saw, in the order they saw it: the tests assert on the
/// bodies' own records, not on what the broker says about itself.
#[derive(Clone, Default)]
pub struct Journal {
    entries: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Journal {
    pub fn note(&self, entry: impl Into<String>) {
        self.entries
            .lock()
            .expect("journal")
            .push((Instant::now(), entry.into()));
    }

    pub fn entries(&self) -> Vec<String> {
        self.entries
            .lock()
            .expect("journal")
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn count(&self, entry: &str) -> usize {
        self.entries().iter().filter(|e| *e == entry).count()
    }

    pub fn position(&self, entry: &str) -> Option<usize> {
        self.entries().iter().position(|e| e == entry)
    }
}

/// Counts holders of something at once and remembers the maximum.
#[derive(Clone, Default)]
pub struct Gauge {
    inner: Arc<Mutex<(u32, u32)>>,
}

impl Gauge {
    pub fn enter(&self) {
        let mut g = self.inner.lock().expect("gauge");
        g.0 += 1;
        g.1 = g.1.max(g.0);
    }

    pub fn leave(&self) {
        self.inner.lock().expect("gauge").0 -= 1;
    }

    pub fn max(&self) -> u32 {
        self.inner.lock().expect("gauge").1
    }
}

/// Polls `check` until it is true or [`PATIENCE`] runs out.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `baton` binary built next to this test (target/<profile>/baton).
pub fn baton_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("baton{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p baton-server` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The real `baton` binary as a child process, for crash tests.
pub struct BrokerProcess {
    pub addr: String,
    pub port: u16,
    child: tokio::process::Child,
}

impl BrokerProcess {
    pub async fn spawn(data: &Path, port: u16, extra: &[&str]) -> Self {
        let child = tokio::process::Command::new(baton_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn baton");
        let mut child = child;
        let addr = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        // Ready when the health service answers (the store is recovered by then).
        loop {
            // A broker that could not bind its port (taken meanwhile by
            // another test's process) exits: fail here, rather than talk
            // to whatever else listens there.
            if let Ok(Some(status)) = child.try_wait() {
                panic!("baton exited at start on port {port}: {status}");
            }
            if let Ok(client) = Client::connect(addr.clone()).await
                && client.admin().list_queues().await.is_ok()
            {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "baton did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        BrokerProcess { addr, port, child }
    }

    /// kill -9: no drain, no flush.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// Sends `signal` (a name `kill` knows: STOP, CONT, TERM) to the broker.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("pid");
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("pid");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        matches!(tokio::time::timeout(PATIENCE, self.child.wait()).await, Ok(Ok(s)) if s.success())
    }
}

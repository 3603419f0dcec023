//! Connection floods against the real `baton` binary (issue 19, item 2):
//! connections that never finish their handshake are closed after the
//! handshake timeout, connections over `--max-connections` are closed as
//! they come while existing clients keep working, and a broker out of
//! descriptors pauses its accept loop and serves again once the flood
//! ends. Only loopback, only a few hundred connections, only processes this
//! test starts.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

mod common;

use common::{PATIENCE, free_port, serve};

/// The broker binary on a free port with a temporary data directory.
struct Broker {
    child: tokio::process::Child,
    addr: String,
    _dir: Arc<tempfile::TempDir>,
}

impl Broker {
    async fn start(extra: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let port = free_port();
        let child = tokio::process::Command::from(serve(port, &dir.path().join("store")))
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let broker = Broker {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        broker.serves().await;
        broker
    }

    /// Waits until a new client gets an answer.
    async fn serves(&self) {
        let start = Instant::now();
        while !self.answers().await {
            assert!(start.elapsed() < PATIENCE, "the broker does not serve");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new client connects and gets an answer within a few seconds.
    async fn answers(&self) -> bool {
        let ask = async {
            match baton::Client::connect(self.addr.clone()).await {
                Ok(client) => client.admin().list_queues().await.is_ok(),
                Err(_) => false,
            }
        };
        tokio::time::timeout(Duration::from_secs(3), ask)
            .await
            .unwrap_or(false)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("running")).unwrap()
    }

    /// Idle TCP connections that send nothing.
    async fn idle(&self, n: usize) -> Vec<TcpStream> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            match TcpStream::connect(&self.addr).await {
                Ok(s) => all.push(s),
                // Refused at the kernel's backlog: counts as not served.
                Err(_) => continue,
            }
        }
        all
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Whether the broker closes `stream` within `wait`: reads (its HTTP/2
/// SETTINGS, say) until the end of the stream or an error.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_are_closed_after_the_timeout() {
    let broker = Broker::start(&["--handshake-timeout-ms", "300"]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();

    let started = Instant::now();
    let mut idle = broker.idle(300).await;
    assert!(idle.len() > 250, "{} connected", idle.len());
    let mut closed = 0;
    for stream in &mut idle {
        if closed_within(stream, Duration::from_secs(5)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len(), "every silent connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A client that did its handshake long ago is not touched, and new
    // clients are served.
    client.admin().list_queues().await.expect("the old client");
    assert!(broker.answers().await, "a new client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_while_existing_clients_work() {
    let broker = Broker::start(&["--max-connections", "20"]).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    client.admin().list_queues().await.unwrap();

    // 19 fit beside the client; the rest are closed as they come.
    let mut flood = broker.idle(60).await;
    let mut closed = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert!(
        (38..=42).contains(&closed),
        "{closed} of {} closed at once",
        flood.len()
    );
    client
        .admin()
        .list_queues()
        .await
        .expect("the existing client still works");

    // Once the flood ends, new clients are served again.
    drop(flood);
    broker.serves().await;
}

/// A broker out of descriptors (EMFILE on accept) used to end its accept
/// loop, and with it the server. Now it pauses and serves again once the
/// flood ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_out_of_descriptors_serves_again_once_the_flood_ends() {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    let mut broker = Broker::start(&[]).await;
    let open = std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
        .unwrap()
        .count();
    // Room for a handful of connections only.
    let limit = u64::try_from(open + 16).unwrap();
    let pid = Pid::from_raw(broker.pid()).unwrap();
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .expect("prlimit");

    let flood = broker.idle(200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(broker.still_running(), "the broker survives EMFILE");
    drop(flood);
    broker.serves().await;
    assert!(broker.still_running());
}

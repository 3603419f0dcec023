//! The broker under test: the real `baton` binary as a child process on a
//! free loopback port, with its own temporary data directory.
//!
//! A child process (not the server library in this process) so that its
//! memory can be read on its own, it can be killed with `kill -9`, and the
//! bench's clients and workers compete with it for the CPU as a separate
//! program would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// How long a broker may take to answer after it was started.
const STARTUP: Duration = Duration::from_secs(120);

/// How a broker is started.
#[derive(Clone, Debug)]
pub struct Settings {
    pub binary: PathBuf,
    /// Durable acknowledgment (the default); off is labelled as such.
    pub durable: bool,
    /// More `baton serve` arguments.
    pub extra: Vec<String>,
    /// A PostgreSQL server to keep the store in instead of sled
    /// (`postgres://USER@HOST:PORT/DB`, a user that may create databases):
    /// each data directory gets a database of its own there, created when
    /// its broker first starts and dropped when it stops.
    pub postgres: Option<String>,
}

/// A running broker, killed when dropped.
pub struct Broker {
    pub addr: String,
    port: u16,
    data: PathBuf,
    settings: Settings,
    child: Child,
}

impl Broker {
    /// Starts a broker on `data` and waits until it answers.
    pub async fn start(settings: &Settings, data: &Path) -> Result<Self> {
        let port = free_port()?;
        let mut broker = Self::spawn(settings, data, port)?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// Starts the binary without waiting for it (the recovery bench times
    /// the wait itself).
    pub fn spawn(settings: &Settings, data: &Path, port: u16) -> Result<Self> {
        let mut command = Command::new(&settings.binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .env(
                "RUST_LOG",
                std::env::var("BATON_BENCH_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !settings.durable {
            command.arg("--no-durable");
        }
        if let Some(server) = &settings.postgres {
            command.arg("--store").arg(pg::database_for(server, data)?);
        }
        command.args(&settings.extra);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", settings.binary.display()))?;
        Ok(Broker {
            addr: format!("http://127.0.0.1:{port}"),
            port,
            data: data.to_owned(),
            settings: settings.clone(),
            child,
        })
    }

    /// Waits until the broker's admin service answers (its store is
    /// recovered by then).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(client) = baton::Client::connect(self.addr.clone()).await
                && client.admin().list_queues().await.is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the broker exited during startup: {status}");
            }
            if start.elapsed() > STARTUP {
                bail!("the broker did not answer within {STARTUP:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self) -> Result<baton::Client> {
        Ok(baton::Client::connect(self.addr.clone()).await?)
    }

    /// Resident memory of the broker process, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        self.status_bytes("VmRSS:")
    }

    /// The most resident memory the broker process has had so far (its
    /// high-water mark), in bytes.
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        self.status_bytes("VmHWM:")
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes.
    fn status_bytes(&self, field: &str) -> Result<u64> {
        let pid = self.child.id().context("the broker has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        Ok(kib * 1024)
    }

    /// CPU time (user + system) the broker process used so far. Read
    /// around a run, it gives the broker's cost per unit of work, a figure
    /// that holds even when other programs share the machine.
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.child.id().context("the broker has exited")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces), from 3 on.
        let rest = stat
            .rsplit_once(')')
            .context("malformed /proc/<pid>/stat")?
            .1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let per_second = 100; // USER_HZ, fixed at 100 on Linux for /proc
        Ok(Duration::from_millis(ticks * 1000 / per_second))
    }

    /// `kill -9`, then the same binary again on the same port and data
    /// directory, not yet waited for; also returns when it was started.
    pub async fn kill9_and_respawn(mut self) -> Result<(Self, Instant)> {
        self.child.start_kill()?;
        self.child.wait().await?;
        let started = Instant::now();
        Ok((Self::spawn(&self.settings, &self.data, self.port)?, started))
    }

    /// SIGTERM, waiting for the broker's clean exit; then its PostgreSQL
    /// database, if any, is dropped.
    pub async fn stop(mut self) -> Result<()> {
        self.terminate().await?;
        if let Some(server) = &self.settings.postgres {
            pg::drop_database_of(server, &self.data)?;
        }
        Ok(())
    }

    async fn terminate(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            self.child.start_kill()?;
            self.child.wait().await?;
        }
        Ok(())
    }
}

/// A database per data directory on the `--store` server.
mod pg {
    use std::path::Path;

    use anyhow::{Context, Result};

    /// The database of `data`'s broker: created if missing. Its URL.
    pub fn database_for(server: &str, data: &Path) -> Result<String> {
        let name = name_of(data);
        admin(server, format!("CREATE DATABASE {name}"), true)?;
        let (base, _) = server
            .rsplit_once('/')
            .context("--store: postgres://USER@HOST:PORT/DB")?;
        Ok(format!("{base}/{name}"))
    }

    pub fn drop_database_of(server: &str, data: &Path) -> Result<()> {
        admin(
            server,
            format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                name = name_of(data)
            ),
            false,
        )
    }

    fn name_of(data: &Path) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        format!("baton_bench_{:016x}", h.finish())
    }

    /// Runs `statement` on the server's own database, on a thread of its
    /// own (the synchronous client runs its own runtime). `exists_ok`: a
    /// database that exists already is no error.
    fn admin(server: &str, statement: String, exists_ok: bool) -> Result<()> {
        let server = server.to_owned();
        std::thread::spawn(move || -> Result<()> {
            let mut client = postgres::Client::connect(&server, postgres::NoTls)
                .with_context(|| format!("--store: connecting to {server}"))?;
            match client.batch_execute(&statement) {
                Err(e)
                    if exists_ok
                        && e.code() == Some(&postgres::error::SqlState::DUPLICATE_DATABASE) =>
                {
                    Ok(())
                }
                other => other.with_context(|| statement.clone()),
            }
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the PostgreSQL admin thread panicked"))?
    }
}

/// Bytes the files under `dir` occupy on disk (allocated blocks).
pub fn disk_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The text of the metrics endpoint on loopback port `port`.
pub async fn metrics(port: u16) -> Result<String> {
    http_get(port, "/metrics").await
}

/// The whole answer (status line, headers and body) to `GET path` on
/// loopback port `port`, over HTTP/1.0: the server closes when done.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

//! The processes of a run: the real `baton` broker and the chaos worker
//! processes, each started, killed (`kill -9`, by its own PID) and
//! restarted by the harness, which remembers when it killed what.
//!
//! Every child is spawned with `kill_on_drop`, so a harness that returns
//! early (an error, ctrl-c) takes its children with it. Workers also stop
//! on their own when their stdin (a pipe from the harness) closes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, ChildStdin, Command};

use crate::journal::now_ns;

/// How long a broker may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// PIDs of the children alive now (spawned, not yet reaped), for
/// [`kill_all`].
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a new child as alive.
fn spawned(child: &Child) {
    if let Some(pid) = child.id() {
        live().insert(pid);
    }
}

/// `kill -9` of every child still alive, by PID: what an interrupted
/// harness does before it exits, whatever phase it was in.
pub fn kill_all() {
    for pid in std::mem::take(&mut *live()) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// What the harness did to a process, and when (journal clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    /// `None`: the broker; `Some(slot)`: that worker.
    pub worker: Option<usize>,
    pub pid: u32,
    /// Taken right after the SIGKILL was sent: the process runs no more
    /// code after it, so nothing it holds outlives this time.
    pub t: u64,
}

/// A process that ended without being killed by the harness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub worker: Option<usize>,
    pub pid: u32,
    /// When the harness noticed (an upper bound of the real end).
    pub t: u64,
    pub status: String,
}

/// The message a deposed leader logs as it stops (`baton serve`).
pub const DEPOSED: &str = "deposed: stopping at once";

/// Where a broker keeps its store.
#[derive(Clone, Debug)]
pub enum Store {
    /// sled, in this data directory (`--data`).
    Sled(PathBuf),
    /// A PostgreSQL database (`--store URL`), shared by every broker of
    /// the run; the leader's lease lasts `leader_lease_ms`.
    Postgres { url: String, leader_lease_ms: u64 },
}

/// What a broker answered when asked whether it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// It refused with a standby's marks.
    Standby,
    /// Not running, or no answer.
    Down,
}

/// A broker: one process at a time on a fixed port and store. A run has
/// one (sled) or several (PostgreSQL, one leads), numbered from 0.
pub struct Broker {
    bin: PathBuf,
    /// Its number in the run.
    pub id: usize,
    pub port: u16,
    store: Store,
    logs: PathBuf,
    lease_ms: u64,
    /// Extra arguments of `baton serve`.
    extra: Vec<String>,
    /// Extra environment of the broker's next starts.
    pub env: Vec<(&'static str, PathBuf)>,
    /// Starts so far (1 for the first).
    pub incarnation: u32,
    child: Option<Child>,
    /// The tasks copying each incarnation's stderr (its log) to its file.
    copiers: Vec<tokio::task::JoinHandle<()>>,
}

impl Broker {
    pub fn new(
        bin: PathBuf,
        id: usize,
        port: u16,
        store: Store,
        logs: PathBuf,
        lease_ms: u64,
        extra: Vec<String>,
    ) -> Self {
        Self {
            bin,
            id,
            port,
            store,
            logs,
            lease_ms,
            extra,
            env: Vec::new(),
            incarnation: 0,
            child: None,
            copiers: Vec::new(),
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The address clients and workers are given (no scheme).
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The log file of one incarnation of broker `id` (JSON lines, warnings
    /// and up): `broker-N.log` for the only broker of a sled run,
    /// `broker-B-N.log` for broker B of several.
    pub fn log_path(logs: &Path, id: usize, several: bool, incarnation: u32) -> PathBuf {
        if several {
            logs.join(format!("broker-{id}-{incarnation}.log"))
        } else {
            logs.join(format!("broker-{incarnation}.log"))
        }
    }

    /// Whether the incarnation that ended last logged that it was deposed
    /// (a leader that could not renew its lease in time stops at once).
    pub fn was_deposed(&self) -> bool {
        std::fs::read_to_string(self.log_path_now()).is_ok_and(|text| text.contains(DEPOSED))
    }

    /// The log file of the incarnation running now (or that ran last).
    pub fn log_path_now(&self) -> PathBuf {
        let several = matches!(self.store, Store::Postgres { .. });
        Self::log_path(&self.logs, self.id, several, self.incarnation)
    }

    /// Whether it leads, stands by, or does not answer (within a second).
    pub async fn role(&self) -> Role {
        if self.child.is_none() {
            return Role::Down;
        }
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(self.addr()) else {
            return Role::Down;
        };
        // One channel, no failover: a standby's refusal must be seen, not
        // followed to the leader.
        let client = baton::Client::new(
            endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(1))
                .connect_lazy(),
        );
        match client.admin().list_queues().await {
            Ok(_) => Role::Leader,
            Err(error)
                if error
                    .status()
                    .is_some_and(|s| baton::failover::Refusal::of(s).standby) =>
            {
                Role::Standby
            }
            Err(_) => Role::Down,
        }
    }

    /// Starts the broker and waits until it answers. A broker that exits
    /// at once (its port not free yet) is started again, a few times.
    ///
    /// # Errors
    /// When it cannot be spawned or does not come up in time.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.incarnation += 1;
            let log_path = self.log_path_now();
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut command = Command::new(&self.bin);
            command.arg("serve").args(["--listen", &self.host_port()]);
            match &self.store {
                Store::Sled(data) => {
                    command.arg("--data").arg(data);
                }
                Store::Postgres {
                    url,
                    leader_lease_ms,
                } => {
                    command
                        .args(["--store", url])
                        .args(["--leader-lease-ms", &leader_lease_ms.to_string()]);
                }
            }
            let child = command
                .args(["--lease-ms", &self.lease_ms.to_string()])
                .args(["--log-format", "json"])
                .args(&self.extra)
                .env("RUST_LOG", "warn")
                .envs(self.env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // Through a pipe, copied to the file by the harness: under
                // a file-size limit (a "full disk", see `run`) the broker
                // could not write its log to a file itself.
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?;
            spawned(&child);
            let mut child = child;
            if let Some(mut stderr) = child.stderr.take() {
                let mut log = tokio::fs::File::from_std(log);
                self.copiers.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut stderr, &mut log).await;
                    let _ = log.sync_data().await;
                }));
            }
            self.child = Some(child);
            match self.wait_ready(deadline).await? {
                true => return Ok(()),
                false if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                false => bail!(
                    "broker {} exited at start; see {}",
                    self.id,
                    self.log_path_now().display()
                ),
            }
        }
    }

    /// `Ok(true)` once the broker answers an admin call, as the leader or
    /// a standby; `Ok(false)` if it exited first.
    async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        loop {
            if let Some(child) = self.child.as_mut() {
                let pid = child.id();
                if child.try_wait()?.is_some() {
                    if let Some(pid) = pid {
                        live().remove(&pid);
                    }
                    self.child = None;
                    return Ok(false);
                }
            }
            if self.role().await != Role::Down {
                return Ok(true);
            }
            if Instant::now() > deadline {
                bail!(
                    "broker {} did not answer within {READY_WITHIN:?}; see {}",
                    self.id,
                    self.log_path_now().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The PID of the broker running now.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// Waits (a few seconds at most) until the logs of every incarnation
    /// that ended are in their files.
    pub async fn logs_written(&mut self) {
        let running = self.child.is_some();
        let keep = if running { self.copiers.pop() } else { None };
        for copier in self.copiers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), copier).await;
        }
        self.copiers.extend(keep);
    }

    /// `kill -9`, then reap.
    pub async fn kill9(&mut self) -> Option<Kill> {
        let (pid, t) = kill9(self.child.as_mut()?).await?;
        self.child = None;
        self.logs_written().await;
        Some(Kill {
            worker: None,
            pid,
            t,
        })
    }

    /// The broker's end if it ended without being asked.
    pub fn exited(&mut self) -> Option<Exit> {
        let child = self.child.as_mut()?;
        let pid = child.id().unwrap_or(0);
        let status = child.try_wait().ok()??;
        live().remove(&pid);
        self.child = None;
        Some(Exit {
            worker: None,
            pid,
            t: now_ns(),
            status: status.to_string(),
        })
    }

    /// SIGTERM (a drain), then wait up to `grace`; a broker still running
    /// then is killed. Returns whether it exited cleanly in time.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let Some(pid) = child.id() else {
            return false;
        };
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if signalled && let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
            live().remove(&pid);
            self.logs_written().await;
            return status.success();
        }
        let _ = kill9(&mut child).await;
        self.logs_written().await;
        false
    }
}

/// Sends `signal` (a name `kill` knows: STOP, CONT) to `pid`.
///
/// # Errors
/// When `kill` cannot run or fails (the process is gone).
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid}: {status}");
    }
    Ok(())
}

/// Sets the soft limit `resource` (a `prlimit` option: `fsize`, `nofile`)
/// of process `pid` to `soft` (`None`: up to its hard limit), with
/// `prlimit(1)`.
///
/// # Errors
/// When `prlimit` cannot run or fails (the process is gone).
pub fn set_limit(pid: u32, resource: &str, soft: Option<u64>) -> anyhow::Result<()> {
    let soft = match soft {
        Some(n) => Some(n),
        None => hard_limit(pid, resource)?,
    };
    let soft = soft.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string()])
        .arg(format!("--{resource}={soft}:"))
        .status()
        .context("running prlimit")?;
    if !status.success() {
        bail!("prlimit --pid {pid} --{resource}={soft}: {status}");
    }
    Ok(())
}

/// The soft limit `resource` of process `pid` (`None`: unlimited).
///
/// # Errors
/// When `prlimit` cannot run or fails (the process is gone).
pub fn soft_limit(pid: u32, resource: &str) -> anyhow::Result<Option<u64>> {
    read_limit(pid, resource, "SOFT")
}

/// The hard limit `resource` of process `pid` (`None`: unlimited).
fn hard_limit(pid: u32, resource: &str) -> anyhow::Result<Option<u64>> {
    read_limit(pid, resource, "HARD")
}

/// A `prlimit` column (`SOFT`, `HARD`) of `resource` of process `pid`.
fn read_limit(pid: u32, resource: &str, column: &str) -> anyhow::Result<Option<u64>> {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string()])
        .arg(format!("--{resource}"))
        .args(["--output", column, "--noheadings", "--raw"])
        .output()
        .context("running prlimit")?;
    if !out.status.success() {
        bail!("prlimit --pid {pid} --{resource}: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().parse().ok())
}

/// The lowest descriptor number process `pid` has free: with its
/// RLIMIT_NOFILE set there, every open fails (EMFILE), since the kernel
/// always hands out the lowest free number.
///
/// # Errors
/// When `/proc/<pid>/fd` cannot be read.
pub fn lowest_free_fd(pid: u32) -> anyhow::Result<u64> {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    Ok((0..).find(|fd| !open.contains(fd)).unwrap_or(0))
}

/// Sends SIGKILL to `child` and reaps it; its PID and the time right after
/// the signal went out.
async fn kill9(child: &mut Child) -> Option<(u32, u64)> {
    let pid = child.id()?;
    child.start_kill().ok()?;
    let t = now_ns();
    let _ = child.wait().await;
    live().remove(&pid);
    Some((pid, t))
}

/// One worker process of the run, and what the checker must know of it.
#[derive(Clone, Debug)]
pub struct WorkerProcess {
    pub slot: usize,
    pub pid: u32,
    pub queues: Vec<String>,
    pub journal: PathBuf,
    /// When the harness killed it.
    pub killed: Option<u64>,
    /// When it exited by itself (or at the final stop).
    pub exited: Option<u64>,
    /// Whether it exited 0 at the final stop.
    pub clean: bool,
}

struct Running {
    child: Child,
    /// Closing it asks the worker to drain.
    stdin: Option<ChildStdin>,
    /// Index into `Workers::history`.
    index: usize,
}

/// The worker processes: a fixed number of slots, each running at most one
/// process at a time.
pub struct Workers {
    exe: PathBuf,
    addr: String,
    journals: PathBuf,
    logs: PathBuf,
    concurrency: u32,
    prefetch: u32,
    slots: Vec<Option<Running>>,
    /// Every process ever started, in start order.
    pub history: Vec<WorkerProcess>,
}

impl Workers {
    pub fn new(
        exe: PathBuf,
        addr: String,
        journals: PathBuf,
        logs: PathBuf,
        count: usize,
        concurrency: u32,
        prefetch: u32,
    ) -> Self {
        Self {
            exe,
            addr,
            journals,
            logs,
            concurrency,
            prefetch,
            slots: (0..count).map(|_| None).collect(),
            history: Vec::new(),
        }
    }

    /// The queues of worker `slot`: general and heavy, general only, heavy
    /// only, in turn, so heavy work has its own workers and shares others.
    pub fn queues(slot: usize) -> Vec<String> {
        let queues: &[&str] = match slot % 3 {
            0 => &["general", "heavy"],
            1 => &["general"],
            _ => &["heavy"],
        };
        queues.iter().map(|q| (*q).to_owned()).collect()
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    pub fn is_up(&self, slot: usize) -> bool {
        self.slots[slot].is_some()
    }

    /// Starts a process in `slot` (which must be empty).
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start(&mut self, slot: usize) -> anyhow::Result<()> {
        assert!(self.slots[slot].is_none(), "worker {slot} is running");
        let index = self.history.len();
        let journal = self.journals.join(format!("w{slot}-{index}.jsonl"));
        let log_path = self.logs.join(format!("w{slot}-{index}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let queues = Self::queues(slot);
        let mut child = Command::new(&self.exe)
            .arg("worker")
            .args(["--addr", &self.addr])
            .arg("--journal")
            .arg(&journal)
            .args(["--slot", &slot.to_string()])
            .args(["--queues", &queues.join(",")])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--prefetch", &self.prefetch.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let pid = child.id().unwrap_or(0);
        spawned(&child);
        let stdin = child.stdin.take();
        self.history.push(WorkerProcess {
            slot,
            pid,
            queues,
            journal,
            killed: None,
            exited: None,
            clean: false,
        });
        self.slots[slot] = Some(Running {
            child,
            stdin,
            index,
        });
        Ok(())
    }

    /// `kill -9` of the process in `slot`, if any.
    pub async fn kill9(&mut self, slot: usize) -> Option<Kill> {
        let mut running = self.slots[slot].take()?;
        let (pid, t) = kill9(&mut running.child).await?;
        self.history[running.index].killed = Some(t);
        Some(Kill {
            worker: Some(slot),
            pid,
            t,
        })
    }

    /// Processes that ended by themselves since the last call; their slots
    /// are empty afterwards.
    pub fn exited(&mut self) -> Vec<Exit> {
        let mut exits = Vec::new();
        for slot in 0..self.slots.len() {
            let Some(running) = self.slots[slot].as_mut() else {
                continue;
            };
            let Ok(Some(status)) = running.child.try_wait() else {
                continue;
            };
            let t = now_ns();
            let index = running.index;
            live().remove(&self.history[index].pid);
            self.slots[slot] = None;
            self.history[index].exited = Some(t);
            exits.push(Exit {
                worker: Some(slot),
                pid: self.history[index].pid,
                t,
                status: status.to_string(),
            });
        }
        exits
    }

    /// Asks every worker to drain (closes its stdin) and waits up to
    /// `grace` for all; those still running are killed. Returns how many
    /// exited cleanly.
    pub async fn stop_all(&mut self, grace: Duration) -> usize {
        let mut running: Vec<Running> = self.slots.iter_mut().filter_map(Option::take).collect();
        for process in &mut running {
            drop(process.stdin.take());
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut clean = 0;
        for mut process in running {
            let status: Option<ExitStatus> =
                match tokio::time::timeout_at(deadline, process.child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => None,
                };
            let record = &mut self.history[process.index];
            match status {
                Some(status) => {
                    live().remove(&record.pid);
                    record.exited = Some(now_ns());
                    record.clean = status.success();
                    clean += usize::from(status.success());
                }
                None => {
                    if let Some((_, t)) = kill9(&mut process.child).await {
                        record.killed = Some(t);
                    }
                }
            }
        }
        clean
    }
}

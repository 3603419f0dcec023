//! The PostgreSQL server of a run in PostgreSQL mode (`--postgres`): one of
//! the harness's own, so that it can crash and restart it without touching
//! anyone else's database.
//!
//! It is Debian's (or any) PostgreSQL installation, run from its `bin`
//! directory: `initdb` of a fresh cluster in the run directory (trust
//! authentication, user `baton`) in a temporary directory of its own,
//! then `pg_ctl start` on a free loopback port with its socket there. A restart is a crash, not a
//! clean stop: `pg_ctl stop -m immediate` makes the postmaster (a process
//! this harness started) end every backend at once without a checkpoint,
//! so the next start replays the write-ahead log, as after a power cut of
//! the database's machine. PostgreSQL refuses to run as root; as root the
//! commands run as the `postgres` user (Debian's package makes it) or
//! `baton-pg`, through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};

/// The data directory of the server of this run, while it may be running:
/// what [`stop_at_exit`] stops when the harness is interrupted.
static RUNNING: Mutex<Option<(PathBuf, Vec<String>)>> = Mutex::new(None);

/// A PostgreSQL server started by the harness.
pub struct Postgres {
    bin: PathBuf,
    /// The cluster's directory, and the socket's.
    dir: PathBuf,
    /// Removes `dir` when the server is dropped (after it stopped).
    _temp: tempfile::TempDir,
    pub port: u16,
    /// `runuser -u USER --` as root, else nothing.
    run_as: Vec<String>,
    /// Starts so far (1 for the first).
    pub starts: u32,
}

impl Postgres {
    /// Creates a cluster in a temporary directory (given to the user
    /// PostgreSQL runs as: a run directory under `/root` could not be
    /// entered by it) for a server on `port`.
    ///
    /// # Errors
    /// When no PostgreSQL installation is found or `initdb` fails.
    pub fn create(bin: Option<&Path>, port: u16) -> anyhow::Result<Self> {
        let bin = match bin {
            Some(bin) => bin.to_owned(),
            None => find_bin().context(
                "no PostgreSQL found (looked in /usr/lib/postgresql/*/bin and PATH): install \
                 Debian's postgresql package or pass --pg-bin",
            )?,
        };
        if !bin.join("initdb").exists() {
            bail!("--pg-bin {}: no initdb there", bin.display());
        }
        let temp = tempfile::Builder::new()
            .prefix("baton-chaos-pg-")
            .tempdir()?;
        let dir = temp.path().to_owned();
        let run_as = run_as(&dir)?;
        let postgres = Postgres {
            bin,
            dir,
            _temp: temp,
            port,
            run_as,
            starts: 0,
        };
        let log = postgres.dir.join("initdb.log");
        let out = postgres
            .command("initdb")
            .arg("-D")
            .arg(postgres.data())
            .args(["-A", "trust", "-U", "baton", "--no-sync"])
            .output()
            .context("running initdb")?;
        let _ = std::fs::write(&log, [out.stdout, out.stderr].concat());
        if !out.status.success() {
            bail!("initdb failed ({}); see {}", out.status, log.display());
        }
        Ok(postgres)
    }

    /// The URL brokers are given.
    pub fn url(&self) -> String {
        format!("postgres://baton@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(path);
                c
            }
            None => Command::new(path),
        };
        command.stdin(std::process::Stdio::null());
        command
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data());
        command
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    /// When `pg_ctl start` fails (its log says why).
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = self.dir.join(format!("postgres-{}.log", self.starts));
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.display()
        );
        let status = self
            .pg_ctl()
            .args(["-o", &options, "-w", "-t", "60", "-l"])
            .arg(&log)
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
            .context("running pg_ctl start")?;
        if !status.success() {
            bail!("pg_ctl start failed ({status}); see {}", log.display());
        }
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.data(), self.run_as()));
        Ok(())
    }

    /// Crashes the server: an immediate shutdown, which ends every backend
    /// without a checkpoint (the next start recovers from the log).
    ///
    /// # Errors
    /// When `pg_ctl stop` fails.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.stop("immediate")
    }

    /// Stops the server cleanly (the end of the run).
    ///
    /// # Errors
    /// When `pg_ctl stop` fails.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        self.stop("fast")
    }

    fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let status = self
            .pg_ctl()
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running pg_ctl stop")?;
        if !status.success() {
            bail!("pg_ctl stop -m {mode} failed ({status})");
        }
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn run_as(&self) -> Vec<String> {
        self.run_as.clone()
    }

    /// Copies the server's logs (one per start) into `logs`.
    pub fn keep_logs(&self, logs: &Path) {
        for start in 1..=self.starts {
            let name = format!("postgres-{start}.log");
            let _ = std::fs::copy(self.dir.join(&name), logs.join(name));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_at_exit();
    }
}

/// Stops this run's server, if it runs (immediately: the harness is
/// exiting). Called on an interrupt and when the [`Postgres`] is dropped.
pub fn stop_at_exit() {
    let Some((data, run_as)) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let Some(bin) = find_pg_ctl(&data) else {
        return;
    };
    let mut command = match run_as.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let _ = command
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// `pg_ctl` of the installation that runs `data` (its `postmaster.opts`
/// names the `postgres` binary it was started with).
fn find_pg_ctl(data: &Path) -> Option<PathBuf> {
    let opts = std::fs::read_to_string(data.join("postmaster.opts")).ok()?;
    let postgres = opts.split_whitespace().next()?;
    Some(Path::new(postgres).with_file_name("pg_ctl"))
}

/// The newest `/usr/lib/postgresql/*/bin`, else the directory of `initdb`
/// on the PATH.
pub fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let entry = e.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").exists()))
}

/// How to run PostgreSQL's programs: as root, through `runuser` as a user
/// that is not root, who is given `dir`.
fn run_as(dir: &Path) -> anyhow::Result<Vec<String>> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(Vec::new());
    }
    let user = ["postgres", "baton-pg"]
        .into_iter()
        .find(|user| {
            Command::new("id")
                .args(["-u", user])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .context(
            "PostgreSQL does not run as root, and there is no `postgres` or `baton-pg` user to \
             run it as: run the harness as another user, or create one",
        )?;
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(dir)
        .status()
        .context("running chown")?;
    if !status.success() {
        bail!("chown -R {user} {}: {status}", dir.display());
    }
    Ok(vec![
        "runuser".into(),
        "-u".into(),
        user.into(),
        "--".into(),
    ])
}

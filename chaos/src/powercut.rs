//! Power-cut simulation: the `powercut` shim (`chaos/powercut/powercut.c`,
//! loaded with `LD_PRELOAD`) keeps an undo log of every change a process
//! makes under one directory that is not durable yet; after a `kill -9`,
//! [`rollback`] puts the directory back in the state a power cut may leave:
//! every file's bytes and size as of its last `fsync`/`fdatasync`, and no
//! file or directory whose creation was not made durable by an `fsync` of
//! its parent directory. `sync_file_range` counts for nothing. Renames and
//! unlinks are taken as durable at once (a real power cut may also undo
//! them; the shim does not model that).
//!
//! The record format is the one `powercut.c` documents at its top.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shim's source, built by [`build_shim`].
pub const SHIM_SOURCE: &str = include_str!("../powercut/powercut.c");

/// Compiles the shim with the system's C compiler (`cc`) into `dir` and
/// returns the path of the shared library.
///
/// # Errors
/// When the source cannot be written or `cc` fails.
pub fn build_shim(dir: &Path) -> io::Result<PathBuf> {
    let source = dir.join("powercut.c");
    std::fs::write(&source, SHIM_SOURCE)?;
    let library = dir.join("libpowercut.so");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&library)
        .arg(&source)
        .args(["-ldl", "-lpthread"])
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("cc failed: {status}")));
    }
    Ok(library)
}

/// The environment that makes a child process record its changes under
/// `root` to the undo log `log` (both absolute).
pub fn env(shim: &Path, root: &Path, log: &Path) -> [(&'static str, PathBuf); 3] {
    [
        ("LD_PRELOAD", shim.to_owned()),
        ("POWERCUT_ROOT", root.to_owned()),
        ("POWERCUT_LOG", log.to_owned()),
    ]
}

/// One record of the undo log.
#[derive(Debug)]
enum Record {
    /// The old bytes at `offset` and the old size of `path`, before a write
    /// or a truncation.
    Undo {
        path: PathBuf,
        offset: u64,
        old_size: u64,
        old: Vec<u8>,
    },
    Created(PathBuf),
    FileSynced(PathBuf),
    DirSynced(PathBuf),
    Renamed(PathBuf, PathBuf),
    Unlinked(PathBuf),
}

/// What [`rollback`] undid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files whose unsynced writes were undone.
    pub files: usize,
    /// Bytes put back (old contents of overwritten ranges).
    pub bytes: u64,
    /// Bytes cut off files that had grown since their last sync.
    pub truncated: u64,
    /// Files and directories removed because their creation was never made
    /// durable.
    pub removed: Vec<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files rolled back ({} bytes restored, {} cut), {} entries removed",
            self.files,
            self.bytes,
            self.truncated,
            self.removed.len()
        )
    }
}

fn parse(log: &[u8]) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = 0;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "torn undo log record");
    let take = |at: &mut usize, n: usize| -> io::Result<&[u8]> {
        let slice = log.get(*at..*at + n).ok_or_else(bad)?;
        *at += n;
        Ok(slice)
    };
    let u64_at = |at: &mut usize| -> io::Result<u64> {
        Ok(u64::from_ne_bytes(
            take(at, 8)?.try_into().map_err(|_| bad())?,
        ))
    };
    while at < log.len() {
        let kind = take(&mut at, 1)?[0];
        let len = u32::from_ne_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?);
        let path = PathBuf::from(String::from_utf8_lossy(take(&mut at, len as usize)?).as_ref());
        let offset = u64_at(&mut at)?;
        let old_size = u64_at(&mut at)?;
        let data_len = usize::try_from(u64_at(&mut at)?).map_err(|_| bad())?;
        let data = take(&mut at, data_len)?.to_vec();
        out.push(match kind {
            b'W' => Record::Undo {
                path,
                offset,
                old_size,
                old: data,
            },
            b'C' => Record::Created(path),
            b'S' => Record::FileSynced(path),
            b'D' => Record::DirSynced(path),
            b'R' => Record::Renamed(path, PathBuf::from(String::from_utf8_lossy(&data).as_ref())),
            b'U' => Record::Unlinked(path),
            _ => return Err(bad()),
        });
    }
    Ok(out)
}

/// Rolls the directory the undo log `log` watched back to its last durable
/// state (see the module doc), after the process that wrote it was killed.
///
/// # Errors
/// When the log cannot be read or parsed, or a file cannot be restored.
pub fn rollback(log: &Path) -> io::Result<Report> {
    let mut bytes = Vec::new();
    File::open(log)?.read_to_end(&mut bytes)?;
    let records = parse(&bytes)?;

    // Changes since each file's last sync, oldest first, and the entries
    // created since their directory's last sync.
    let mut pending: HashMap<PathBuf, Vec<(u64, u64, Vec<u8>)>> = HashMap::new();
    let mut created: HashSet<PathBuf> = HashSet::new();
    for record in records {
        match record {
            Record::Undo {
                path,
                offset,
                old_size,
                old,
            } => pending
                .entry(path)
                .or_default()
                .push((offset, old_size, old)),
            Record::Created(path) => {
                created.insert(path);
            }
            Record::FileSynced(path) => {
                pending.remove(&path);
            }
            Record::DirSynced(dir) => created.retain(|p| p.parent() != Some(dir.as_path())),
            Record::Renamed(from, to) => {
                pending.remove(&to);
                if let Some(changes) = pending.remove(&from) {
                    pending.insert(to.clone(), changes);
                }
                if created.remove(&from) {
                    created.insert(to);
                }
            }
            Record::Unlinked(path) => {
                pending.remove(&path);
                created.remove(&path);
            }
        }
    }

    let mut report = Report::default();
    for (path, changes) in pending {
        if created.iter().any(|c| path.starts_with(c)) {
            continue;
        }
        let file = match File::options().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (offset, _, old) in changes.iter().rev() {
            file.write_all_at(old, *offset)?;
            report.bytes += old.len() as u64;
        }
        let synced_size = changes[0].1;
        let size = file.metadata()?.len();
        report.truncated += size.saturating_sub(synced_size);
        file.set_len(synced_size)?;
        file.sync_all()?;
        report.files += 1;
    }
    let mut created: Vec<PathBuf> = created.into_iter().collect();
    created.sort();
    for path in created {
        if report.removed.iter().any(|r| path.starts_with(r)) {
            continue;
        }
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => continue,
        };
        removed?;
        report.removed.push(path);
    }
    Ok(report)
}

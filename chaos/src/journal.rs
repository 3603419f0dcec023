//! The task bodies' own records: one JSON line per event, appended by each
//! worker process to a journal file of its own.
//!
//! The checker trusts these records, not what the broker says about
//! itself. Each line is written with one `write` on a file opened for
//! appending, before the event it records becomes visible to anyone else
//! (a start before the body works, an end before the outcome is returned, a
//! release before the slot is given back), so a record's time bounds the
//! event it records. Nothing is fsynced: a `kill -9` does not lose what the
//! kernel already has, and the reader tolerates a partial last line.
//!
//! Times are `SystemTime` nanoseconds: every process is on this machine,
//! so they share one clock.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Now, in nanoseconds since the unix epoch.
pub fn now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// How a run ended, as its body saw it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Returned a result.
    Ok,
    /// Returned a retryable failure.
    Retryable,
    /// Returned a fatal failure.
    Fatal,
    /// Asked to be run again later (a poll).
    RetryLater,
    /// Dropped before it returned: cancelled by the broker, or its lease
    /// lapsed while the worker was cut off.
    Aborted,
}

/// A run starting: everything the checker needs to place it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Start {
    pub chain: String,
    /// The plan's number of the chain (from the chain's context).
    pub seq: u64,
    pub task: String,
    pub attempt: u32,
    /// "main", "on_success" or "on_failure".
    pub phase: String,
    pub step: u32,
    pub name: String,
    /// The queue the broker routed the run through.
    pub queue: String,
    /// The first argument a mutable step received: the previous step's
    /// result (`{"run": ..}`) or, for on_failure, the failure record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Value>,
    /// The declared (task-scoped) throttle identity this run holds from
    /// start to end, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// The in-body identity the body will ask for, if any (for whoever
    /// reads a journal of a stuck run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wants: Option<String>,
    pub t: u64,
}

/// One journal line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Record {
    /// The process started: which queues it serves.
    Hello {
        pid: u32,
        slot: usize,
        queues: Vec<String>,
        t: u64,
    },
    Start(Start),
    /// An in-body throttle slot was granted.
    Acquired {
        task: String,
        attempt: u32,
        ident: String,
        t: u64,
    },
    /// An in-body throttle slot is about to be given back.
    Released {
        task: String,
        attempt: u32,
        ident: String,
        t: u64,
    },
    End {
        task: String,
        attempt: u32,
        how: How,
        t: u64,
    },
}

/// Appends records to one journal file; shared by the bodies of a process.
#[derive(Debug)]
pub struct Writer {
    file: Mutex<File>,
}

impl Writer {
    /// Opens (creates) `path` for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends one record as one line, in one write. A failed write is
    /// fatal to the worker process: a journal with holes would make the
    /// checker report runs that never happened as lost.
    pub fn write(&self, record: &Record) {
        let mut line = serde_json::to_string(record).expect("a record serializes");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = file.write_all(line.as_bytes()) {
            eprintln!("baton-chaos worker: cannot write the journal: {error}");
            std::process::exit(3);
        }
    }
}

/// What one journal file holds.
#[derive(Debug, Default)]
pub struct Read {
    pub records: Vec<Record>,
    /// Lines that did not parse: at most the last one, cut by a `kill -9`,
    /// is expected.
    pub torn: usize,
    /// Whether a torn line was anywhere but last (a corrupt journal).
    pub torn_inside: bool,
}

/// Reads a journal file, tolerating a torn last line.
///
/// # Errors
/// When the file cannot be read.
pub fn read(path: &Path) -> std::io::Result<Read> {
    let mut out = Read::default();
    let file = File::open(path)?;
    let lines: Vec<String> = BufReader::new(file)
        .split(b'\n')
        .map(|line| line.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
        .collect::<Result<_, _>>()?;
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => out.records.push(record),
            Err(_) => {
                out.torn += 1;
                out.torn_inside |= i != last;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let writer = Writer::open(&path).unwrap();
        let start = Record::Start(Start {
            chain: "c".into(),
            seq: 3,
            task: "t".into(),
            attempt: 1,
            phase: "main".into(),
            step: 0,
            name: "chaos.light".into(),
            queue: "general".into(),
            prev: None,
            hold: Some("x".into()),
            wants: None,
            t: 10,
        });
        let end = Record::End {
            task: "t".into(),
            attempt: 1,
            how: How::Ok,
            t: 11,
        };
        writer.write(&start);
        writer.write(&end);
        drop(writer);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"ev":"start","chain":"#).unwrap();
        let read = read(&path).unwrap();
        assert_eq!(read.records, vec![start, end]);
        assert_eq!(read.torn, 1);
        assert!(!read.torn_inside);
    }
}

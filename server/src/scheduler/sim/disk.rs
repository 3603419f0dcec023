//! The simulated disk and its committer.
//!
//! The store is the real [`Shared`] over a [`MemBackend`], whose crash is
//! exact: [`MemBackend::after_crash`] keeps only what the last flush
//! covered. [`Disk`] mirrors `store::Committer` step for step (stage,
//! apply when the flusher is free, flush, repair after a failure, the
//! write and flush faults), but the flusher runs when the simulator says
//! so: a slow disk is one whose flusher is seldom given a turn, so many
//! rounds pass between a batch's apply and its durability. A failing disk
//! is `MemBackend::set_failing`; the repair is the real
//! [`Shared::repair`], whose `reopen` builds a backend from the crash copy
//! of the current one (as reopening sled after an error reads its log
//! back) and keeps the disk failing while the simulator says it fails.
//!
//! `Shared::flush` and `Shared::repair` are async and hand the backend's
//! flush to `spawn_blocking`; the simulator blocks on them in a
//! current-thread runtime, so they finish before the next step and the
//! run stays deterministic.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::domain::UnixMs;
use crate::store::{Backend, Batch, Fault, HOLD, MemBackend, Recovered, Shared, Store};

/// What the reopen closure and the simulator share: the backend in use and
/// whether the disk fails.
struct Media {
    backend: Arc<MemBackend>,
    failing: bool,
}

pub struct Disk {
    pub shared: Shared,
    media: Arc<Mutex<Media>>,
    /// As `Committer::durable_seq`: every batch up to it is durable, as the
    /// flusher reported.
    durable_seq: u64,
    /// The last batch handed to the flusher.
    flushing: u64,
    /// As `Committer::staged_since` and `staged_awaited`, in the
    /// simulator's time.
    staged_since: Option<UnixMs>,
    staged_awaited: bool,
    write_fault: Option<Fault>,
    flush_fault: Option<Fault>,
    /// The flusher's `wanted` watch: its value and how many times it was
    /// sent, and how many of those the flusher has seen.
    wanted: u64,
    woken: u64,
    seen: u64,
    /// The flusher must repair rather than flush.
    broken: bool,
    /// Batches applied so far (`Shared`'s count).
    applied: u64,
    /// Batches durable in the backend: what a crash keeps.
    on_disk: u64,
    pub flushes: u64,
    pub repairs: u64,
}

fn lock(media: &Mutex<Media>) -> std::sync::MutexGuard<'_, Media> {
    media.lock().unwrap_or_else(|e| e.into_inner())
}

impl Disk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::over(Arc::new(MemBackend::new()), false)
    }

    fn over(backend: Arc<MemBackend>, failing: bool) -> Self {
        let store = Store::over_backend(Arc::clone(&backend)).expect("a store in memory opens");
        backend.set_failing(failing);
        let media = Arc::new(Mutex::new(Media { backend, failing }));
        let shared_media = Arc::clone(&media);
        let reopen = move || {
            let mut media = lock(&shared_media);
            let fresh = Arc::new(media.backend.after_crash());
            fresh.set_failing(media.failing);
            media.backend = Arc::clone(&fresh);
            Store::over_backend(fresh)
        };
        Disk {
            shared: Shared::new(Path::new("/simulated"), store, reopen),
            media,
            durable_seq: 0,
            flushing: 0,
            staged_since: None,
            staged_awaited: false,
            write_fault: None,
            flush_fault: None,
            wanted: 0,
            woken: 0,
            seen: 0,
            broken: false,
            applied: 0,
            on_disk: 0,
            flushes: 0,
            repairs: 0,
        }
    }

    /// The disk as a restarted broker finds it: only what was durable,
    /// still failing if `keep_failing` and it was. Returns what recovery
    /// reads from it.
    pub fn restart(&self, keep_failing: bool) -> (Disk, Recovered) {
        let (backend, failing) = {
            let media = lock(&self.media);
            (
                Arc::new(media.backend.after_crash()),
                media.failing && keep_failing,
            )
        };
        let disk = Disk::over(backend, failing);
        let recovered = disk.shared.recover().expect("a store in memory reads");
        (disk, recovered)
    }

    pub fn set_failing(&self, failing: bool) {
        let mut media = lock(&self.media);
        media.failing = failing;
        media.backend.set_failing(failing);
    }

    pub fn failing(&self) -> bool {
        lock(&self.media).failing
    }

    /// `Committer::stage`.
    pub fn stage(&mut self, writes: Batch, awaited: bool, now: UnixMs) -> u64 {
        if !writes.is_empty() {
            self.staged_since.get_or_insert(now);
        }
        self.staged_awaited |= awaited;
        self.shared.stage_seq(writes)
    }

    /// `Committer::commit`, with the hold of writes nobody waits for.
    pub fn commit(&mut self, now: UnixMs) {
        if !self.shared.has_staged() {
            self.staged_awaited = false;
            return;
        }
        let flusher_idle = self.durable_seq >= self.flushing && self.flush_fault.is_none();
        let hold_ms = u64::try_from(HOLD.as_millis()).expect("a short hold");
        let held = !self.staged_awaited && self.staged_since.is_some_and(|t| now < t + hold_ms);
        if flusher_idle && !held {
            match self.shared.apply_staged() {
                Ok(applied) => {
                    self.staged_since = None;
                    self.staged_awaited = false;
                    self.applied = applied;
                    self.flushing = applied;
                    self.wanted = applied;
                    self.woken += 1;
                    self.write_fault = None;
                }
                Err(e) => {
                    if self.flush_fault.is_none() {
                        self.woken += 1;
                    }
                    self.write_fault = Some(e.fault());
                }
            }
        }
    }

    /// `Committer::durable`.
    pub fn durable(&self) -> u64 {
        self.durable_seq
    }

    /// `Committer::fault`.
    pub fn fault(&self) -> Option<Fault> {
        self.flush_fault.or(self.write_fault)
    }

    /// Batches a crash now would keep.
    pub fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// One turn of the flusher (and the committer hearing its report): a
    /// flush of what was handed over, or a repair after a failure.
    pub fn flusher(&mut self, rt: &tokio::runtime::Runtime) -> Option<&'static str> {
        if !self.broken && self.seen == self.woken {
            return None;
        }
        self.seen = self.woken;
        let target = self.wanted;
        let (what, result) = if self.broken {
            self.repairs += 1;
            ("repair", rt.block_on(self.shared.repair()))
        } else {
            self.flushes += 1;
            ("flush", rt.block_on(self.shared.flush()))
        };
        match result {
            Ok(()) => {
                self.broken = false;
                self.on_disk = self.applied;
                self.durable_seq = self.durable_seq.max(target);
                self.flush_fault = None;
                Some(what)
            }
            Err(e) => {
                self.flush_fault = Some(e.fault());
                self.broken = true;
                Some(if what == "flush" {
                    "flush failed"
                } else {
                    "repair failed"
                })
            }
        }
    }

    /// The flush in progress reached the disk just before a crash, its
    /// report never heard.
    pub fn flush_before_crash(&mut self) -> bool {
        if self.flushing <= self.durable_seq || self.broken {
            return false;
        }
        let backend = Arc::clone(&lock(&self.media).backend);
        if backend.flush().is_ok() {
            self.on_disk = self.applied;
            return true;
        }
        false
    }
}

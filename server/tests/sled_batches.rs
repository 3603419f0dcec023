//! The vendored sled's write batches stay atomic when one of their writes
//! fails (issue 19, finding 18; `vendor/sled/BATON-PATCHES.md`, patch 7).
//!
//! The scheduler writes each round as one sled batch (a chain record, its
//! index entries, the queue lines) and counts on all or nothing. Upstream
//! sled aborted the batch's manifest when a write inside the batch failed,
//! so the writes made before the failure were no longer tied to the batch:
//! a later flush made them durable on their own, and a restart found, for
//! example, a live-chain index entry whose chain record was never written.
//!
//! The failure here is a read: the second write of the batch lands on a
//! leaf whose only copy on disk is a blob file, and that file is torn, so
//! the write fails (reading is part of writing in a B-tree). The first
//! write lands on another leaf and succeeds. The file is mended before the
//! restart, so the restart can read everything: what it finds is exactly
//! what the broker would find after the trouble.

use std::path::{Path, PathBuf};

/// Over sled's blob threshold (128 KiB with the default segment size): a
/// leaf holding it is written to a file of its own under `blobs/`.
const LARGE: usize = 300 * 1024;

fn open(dir: &Path) -> sled::Db {
    sled::Config::new().path(dir).open().unwrap()
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_batch_whose_write_fails_halfway_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = open(&path);
        // Enough small keys for a leaf of their own, then one large value
        // under a key that sorts after them all.
        for i in 0..2_000u32 {
            db.insert(format!("a{i:05}"), vec![b'.'; 64]).unwrap();
        }
        db.insert("z", vec![b'z'; LARGE]).unwrap();
        db.flush().unwrap();
        // Closing writes a snapshot: the reopened store reads the large
        // leaf from its blob file only when a write needs it.
    }
    let db = open(&path);
    assert_eq!(db.get("a00000").unwrap().unwrap().len(), 64);
    let blobs = blob_files(&path);
    assert!(!blobs.is_empty(), "the large leaf is not in a blob file");
    let kept: Vec<(PathBuf, Vec<u8>)> = blobs
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    for (p, bytes) in &kept {
        std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
    }

    let mut batch = sled::Batch::default();
    batch.insert("a00000b", "first write of the batch");
    batch.insert("zz", "second write, on the torn leaf");
    let failed = db.apply_batch(batch);
    assert!(failed.is_err(), "the second write did not fail: {failed:?}");
    // The failure is sticky: the next flush says so, and makes nothing
    // of the batch durable. (The broker then reopens its store.)
    let flushed = db.flush();
    assert!(
        flushed.is_err(),
        "a flush after a torn batch said {flushed:?}"
    );
    drop(db);

    for (p, bytes) in &kept {
        std::fs::write(p, bytes).unwrap();
    }
    let db = open(&path);
    assert_eq!(
        db.get("a00000b").unwrap(),
        None,
        "the first write of a failed batch survived a restart on its own"
    );
    assert_eq!(db.get("zz").unwrap(), None);
    // Everything written before the batch is whole.
    assert_eq!(db.get("z").unwrap().unwrap().len(), LARGE);
    assert_eq!(db.len(), 2_001);

    // The store goes on from there: a batch written after the torn one is
    // durable and whole.
    let mut batch = sled::Batch::default();
    batch.insert("a00000b", "written again");
    batch.insert("zz", "and this");
    db.apply_batch(batch).unwrap();
    db.flush().unwrap();
    drop(db);
    let db = open(&path);
    assert_eq!(db.get("a00000b").unwrap().unwrap(), "written again");
    assert_eq!(db.get("zz").unwrap().unwrap(), "and this");
    assert_eq!(db.len(), 2_003);
}

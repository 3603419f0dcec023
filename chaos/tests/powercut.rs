//! Power cuts, simulated: `baton-chaos powercut` (`chaos/src/powercut_run.rs`)
//! runs the real `baton` broker under the `powercut` shim (`LD_PRELOAD`,
//! see `chaos/src/powercut.rs`), which records how to undo every change to
//! its data directory that is not durable yet, submits chains small and
//! large (over sled's blob threshold, about 128 KiB) concurrently,
//! `kill -9`s the broker at a seeded moment, rolls the directory back to
//! what a power cut may leave, restarts the broker and checks every chain
//! it acknowledged (issue 19, finding 3: a large record was acknowledged
//! before its blob file was synced). And the shim's self-check: what a
//! process did not sync is gone after the rollback.
//!
//! Linux only (`LD_PRELOAD`, glibc symbols); the shim is built with `cc`.
#![cfg(target_os = "linux")]

#[path = "../src/powercut.rs"]
#[allow(dead_code)]
mod powercut;

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn no_acknowledged_chain_is_lost_to_a_power_cut() {
    let seed = std::env::var("BATON_POWERCUT_SEED").unwrap_or_else(|_| "19".to_owned());
    let exe = Path::new(env!("CARGO_BIN_EXE_baton-chaos"));
    let broker = exe.with_file_name(format!("baton{}", std::env::consts::EXE_SUFFIX));
    let mut command = Command::new(exe);
    command.args(["powercut", "--runs", "3", "--seed", &seed]);
    if broker.exists() {
        command.arg("--broker").arg(&broker);
    }
    // Bounded by itself: three cuts of at most 1.5 s of load each.
    let output = command.output().expect("run baton-chaos powercut");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("powercut: PASS"), "{stdout}");
}

/// The shim's self-check: a helper process (this test binary, run again)
/// writes under the shim, some of it synced and some not; the rollback
/// keeps exactly what was made durable.
#[test]
fn the_rollback_drops_what_was_not_synced() {
    let dir = tempfile::tempdir().unwrap();
    let shim = powercut::build_shim(dir.path()).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let undo = dir.path().join("undo.log");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "powercut_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POWERCUT_HELPER", &root)
        .envs(powercut::env(&shim, &root, &undo))
        .status()
        .unwrap();
    assert!(status.success());
    // Before the rollback, everything is there (the kernel has it).
    assert_eq!(
        std::fs::read(root.join("durable")).unwrap(),
        b"synced+unsynced"
    );
    assert!(root.join("unsynced-entry").exists());
    assert!(root.join("sub/inner").exists());

    let report = powercut::rollback(&undo).unwrap();
    // Synced bytes stay, the unsynced append and overwrite go.
    assert_eq!(std::fs::read(root.join("durable")).unwrap(), b"synced");
    // A file whose data was synced but whose directory entry was not.
    assert!(!root.join("unsynced-entry").exists(), "{report:?}");
    // A directory never made durable goes with its contents.
    assert!(!root.join("sub").exists(), "{report:?}");
    // Overwritten in place after a sync: the old bytes come back.
    assert_eq!(std::fs::read(root.join("overwritten")).unwrap(), b"AAAA");
}

/// Run by [`the_rollback_drops_what_was_not_synced`] under the shim; does
/// nothing otherwise.
#[test]
fn powercut_helper() {
    let Some(root) = std::env::var_os("POWERCUT_HELPER").map(PathBuf::from) else {
        return;
    };
    use std::io::Write;
    let sync_dir = |d: &Path| std::fs::File::open(d).unwrap().sync_all().unwrap();

    let mut durable = std::fs::File::create(root.join("durable")).unwrap();
    durable.write_all(b"synced").unwrap();
    durable.sync_data().unwrap();
    sync_dir(&root);
    durable.write_all(b"+unsynced").unwrap();

    let mut overwritten = std::fs::File::create(root.join("overwritten")).unwrap();
    overwritten.write_all(b"AAAA").unwrap();
    overwritten.sync_all().unwrap();
    sync_dir(&root);
    use std::os::unix::fs::FileExt;
    overwritten.write_all_at(b"BB", 1).unwrap();

    let mut entry = std::fs::File::create(root.join("unsynced-entry")).unwrap();
    entry.write_all(b"data").unwrap();
    entry.sync_all().unwrap();

    std::fs::create_dir(root.join("sub")).unwrap();
    let mut inner = std::fs::File::create(root.join("sub/inner")).unwrap();
    inner.write_all(b"x").unwrap();
    inner.sync_all().unwrap();
    sync_dir(&root.join("sub"));
}

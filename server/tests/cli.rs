//! The `baton` command: bad arguments fail with a clear message and a
//! non-zero exit; `serve` starts on the given address and data directory
//! and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

#[test]
fn help_lists_serve() {
    let out = baton().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let out = baton()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--listen"),
        "{out:?}"
    );

    let out = baton().args(["serve", "--lease-ms", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--lease-ms must be at least 1"),
        "{out:?}"
    );

    let out = baton().arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn serve_creates_the_store_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = baton()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "baton did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dir.join("db").exists(),
        "the sled store is created in --data"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "baton did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

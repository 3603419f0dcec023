//! What the binary's end-to-end tests share: the `baton` command, free from
//! the test's own environment, and a free loopback port.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Upper bound of every wait: generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `baton` binary built with these tests.
pub fn baton() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    // The test's own environment must not steer the CLI.
    for var in ["BATON_ADDR", "BATON_TOKEN", "BATON_TLS_CA", "BATON_CONFIG"] {
        command.env_remove(var);
    }
    command
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `baton serve` on a loopback `port` with its store in `data`.
pub fn serve(port: u16, data: &Path) -> Command {
    let mut command = baton();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(data);
    command
}

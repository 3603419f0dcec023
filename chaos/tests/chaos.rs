//! The short chaos run, as CI runs it: the real `baton` broker and real
//! worker processes, a few hundred chains, the broker `kill -9`ed and
//! restarted two or three times and workers three or four times, then the
//! checker's verdict. The guarantees must hold under any interleaving, so
//! the verdict is the same on every run; the seed only fixes which chains
//! and when the kills come (`BATON_CHAOS_SEED` picks another).
//!
//! The broker is `target/<profile>/baton`, as in the root package's
//! end-to-end tests (`cargo test --workspace` builds it); when it is
//! missing, the harness builds it (it runs under cargo). The run takes
//! about 40 s in a debug build on two cores, and the harness kills every
//! process it started before it exits. This test bounds it again from
//! outside: past the deadline it interrupts the harness (which kills its
//! children), then kills it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest the harness may take, a broker build from scratch included.
const DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn acknowledged_chains_end_as_designed_while_broker_and_workers_are_killed() {
    let seed = std::env::var("BATON_CHAOS_SEED").unwrap_or_else(|_| "20250601".to_owned());
    let exe = Path::new(env!("CARGO_BIN_EXE_baton-chaos"));
    let broker = exe.with_file_name(format!("baton{}", std::env::consts::EXE_SUFFIX));
    let mut command = Command::new(exe);
    if broker.exists() {
        command.arg("--broker").arg(&broker);
    }
    let mut child = command
        .args(["--seed", &seed])
        .args(["--duration", "25s", "--chains", "300", "--workers", "4"])
        .args(["--broker-kill-every", "7s..9s", "--broker-down", "0ms..1s"])
        .args(["--worker-kill-every", "5s..7s", "--worker-down", "0ms..1s"])
        .args(["--settle-timeout", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start baton-chaos");

    // Echo the harness's output as it comes, and keep it for the asserts.
    let stdout = child.stdout.take().expect("stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let status = wait_bounded(&mut child);
    let output: Vec<String> = received.try_iter().collect();
    let summary = output.join("\n");
    assert_eq!(
        status,
        Some(0),
        "the chaos run failed (exit {status:?}; 1 = a guarantee broke, 2 = the harness could \
         not run):\n{summary}"
    );
    assert!(summary.contains("verdict: PASS"), "{summary}");
    assert_eq!(count(&output, "lost"), 0, "{summary}");
    assert_eq!(count(&output, "violations"), 0, "{summary}");
    assert_eq!(count(&output, "chains planned"), 300, "{summary}");
    assert_eq!(count(&output, "acknowledged"), 300, "{summary}");
    assert_eq!(count(&output, "ended"), 300, "{summary}");
    let broker_kills = count(&output, "broker crashes (kill -9)");
    let worker_kills = count(&output, "worker crashes (kill -9)");
    assert!(
        (2..=3).contains(&broker_kills),
        "{broker_kills} broker kills\n{summary}"
    );
    assert!(
        (3..=5).contains(&worker_kills),
        "{worker_kills} worker kills\n{summary}"
    );
}

/// Waits for the harness within [`DEADLINE`]; past it, SIGTERM (the
/// harness kills its children and exits), then SIGKILL.
fn wait_bounded(child: &mut Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if start.elapsed() > DEADLINE {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            panic!("the chaos run did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number in the summary row that starts with `name`.
fn count(output: &[String], name: &str) -> u64 {
    output
        .iter()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no row {name:?} in the summary"))
}

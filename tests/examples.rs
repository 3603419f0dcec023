//! The examples quoted in the README, run the way a reader runs them: a
//! broker (here in-process, on a free port), then the example's binary as a
//! child process against it. Each must exit 0 and print what it promises.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_executor_ends_one_volume_ok_and_the_other_erred_with_its_error() {
    let broker = TestBroker::start().await;
    // The address from the environment, as `BATON_ADDR=http://... cargo run`.
    let out = run_example("create_executor", &[], Some(&broker.addr)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);

    // Each volume's lines, as the task bodies printed them: the chain's
    // steps in order, the polls counted by the broker, then one callback.
    let volume_lines = |volume: &str| -> Vec<String> {
        let prefix = format!("[{volume}] ");
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    };
    let assert_lines = |volume: &str, expected: &[&str]| {
        let lines = volume_lines(volume);
        assert!(
            lines.len() == expected.len()
                && lines.iter().zip(expected).all(|(l, e)| l.starts_with(e)),
            "{volume}: expected lines starting with {expected:#?}\ngot {lines:#?}\n{stdout}"
        );
    };
    assert_lines(
        "vol-small",
        &[
            "10 GB requested: CREATION_SCHEDULED",
            "CREATION_SCHEDULED -> CREATING; backend create_volume -> cinder-",
            "poll 1: backend says creating",
            "poll 2: backend says creating",
            "poll 3: backend says available",
            "CREATING -> OK",
        ],
    );
    assert_lines(
        "vol-huge",
        &[
            "5000 GB requested: CREATION_SCHEDULED",
            "CREATION_SCHEDULED -> CREATING; backend create_volume -> cinder-",
            "poll 1: backend says creating",
            "poll 2: backend says creating",
            "poll 3: backend says error",
            "CREATING -> ERRED: BackendError: backend volume cinder-",
        ],
    );

    // The summary: final states, and the failure record of the erred one.
    assert!(stdout.contains("vol-small: state OK"), "{stdout}");
    assert!(stdout.contains("executor succeeded"), "{stdout}");
    assert!(stdout.contains("vol-huge: state ERRED"), "{stdout}");
    assert!(
        stdout.contains("executor failed at step 1 (volume.poll_runtime_state"),
        "{stdout}"
    );
    assert!(
        stdout.contains("error stored by set_erred: BackendError: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("both executors ended as expected"),
        "{stdout}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_slow_parts_one_at_a_time_and_each_fast_after_a_slow() {
    let broker = TestBroker::start().await;
    // The address as an argument, host:port as in the README.
    let addr = broker.addr.trim_start_matches("http://");
    let out = run_example("demo", &[addr, "--chains", "20"], None).await;
    let stdout = String::from_utf8_lossy(&out.stdout);

    let seed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("** ")).collect();
    let count = |line: &str| seed.iter().filter(|l| **l == line).count();
    assert_eq!(
        (
            count("** Start 10"),
            count("** End 10"),
            count("** Fast 10")
        ),
        (2, 2, 2),
        "{stdout}"
    );
    // The two slow parts never overlap: Start and End alternate.
    let slow: Vec<&str> = seed
        .iter()
        .copied()
        .filter(|l| *l != "** Fast 10")
        .collect();
    assert_eq!(
        slow,
        ["** Start 10", "** End 10", "** Start 10", "** End 10"],
        "{stdout}"
    );
    // The k-th Fast comes after the k-th End: each fast after its own slow.
    let positions =
        |line: &str| -> Vec<usize> { (0..seed.len()).filter(|&i| seed[i] == line).collect() };
    let (ends, fasts) = (positions("** End 10"), positions("** Fast 10"));
    assert!(
        ends.iter().zip(&fasts).all(|(end, fast)| end < fast),
        "a Fast before its End:\n{stdout}"
    );

    // The throughput line: every chain succeeded, with a rate.
    let rate = stdout
        .lines()
        .find(|l| l.starts_with("20 two-step chains in "))
        .unwrap_or_else(|| panic!("no throughput line in:\n{stdout}"));
    assert!(
        rate.contains(" chains/s (20 succeeded)"),
        "{rate}\n{stdout}"
    );
    broker.stop().await;
}

/// Issue 22: a worker that never reached its broker says so and names the
/// address (it used to say the connection was lost), and the deprecated
/// `$BATON_ADDRESS` still names the broker, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_connected_says_so_and_names_the_broker() {
    use tokio::io::AsyncBufReadExt;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // free once the listener is dropped: nothing answers there
    let addr = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(build_example("rust_worker").await)
        .env_remove("BATON_ADDR")
        .env("BATON_ADDRESS", &addr)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("never connected");
            seen.push(line);
            if done {
                return;
            }
        }
    })
    .await;
    child.kill().await.unwrap(); // the child this test started
    let text = seen.join("\n");
    assert!(found.is_ok(), "no 'never connected' line:\n{text}");
    assert!(
        text.contains("$BATON_ADDRESS is deprecated, use $BATON_ADDR"),
        "{text}"
    );
    let line = seen.last().unwrap();
    assert!(
        line.contains("could not connect to the broker")
            && line.contains(&format!("broker=http://{addr}")),
        "{line}"
    );
    assert!(!text.contains("lost"), "{text}");
}

/// Builds the example (a no-op when it is fresh: `cargo test --test
/// examples` alone does not build examples), runs it with `args` (and
/// `$BATON_ADDR` when given) and returns its output once it exited 0.
async fn run_example(name: &str, args: &[&str], baton_addr: Option<&str>) -> Output {
    let binary = build_example(name).await;
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(args)
        .env_remove("BATON_ADDR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true); // also on timeout: the output future is dropped
    if let Some(addr) = baton_addr {
        command.env("BATON_ADDR", addr);
    }
    let out = tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not exit within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    assert!(
        out.status.success(),
        "{name} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cargo build --example <name>` into the target directory this test was
/// built in, with its profile (target/<profile>/examples/<name>); the path
/// of the binary.
async fn build_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/examples-<hash>
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let build = tokio::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "baton", "--example", name])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // Generous: the build may wait for another build's lock on a busy machine.
    let build = tokio::time::timeout(PATIENCE * 10, build)
        .await
        .unwrap_or_else(|_| panic!("building example {name} took too long"))
        .expect("run cargo");
    assert!(
        build.status.success(),
        "cargo build --example {name} failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

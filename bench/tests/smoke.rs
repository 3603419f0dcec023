//! The bench binary runs end to end at a tiny size and prints a figure for
//! every group asked for (figures are not asserted: this only guards the
//! suite against breaking).

use std::process::Command;

/// Runs `baton-bench` once at a tiny size with `args` and returns the
/// workloads of the records it wrote, checking that each has a median.
fn bench_workloads(args: &[&str]) -> Vec<String> {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let bench = env!("CARGO_BIN_EXE_baton-bench");
    let broker = std::path::Path::new(bench).with_file_name("baton");
    assert!(
        broker.exists(),
        "{} is missing: `cargo build -p baton-server` (cargo test --workspace does)",
        broker.display()
    );
    let status = Command::new(bench)
        .args(["--runs", "1", "--scale", "0.01"])
        .args(args)
        .arg("--baton-bin")
        .arg(&broker)
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run baton-bench");
    assert!(status.success());
    let records: Vec<serde_json::Value> = std::fs::read_to_string(out.path())
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect();
    for r in &records {
        assert!(r["median"].as_f64().expect("median") >= 0.0, "{r}");
    }
    records
        .iter()
        .map(|r| r["workload"].as_str().expect("workload").to_owned())
        .collect()
}

fn assert_has(workloads: &[String], expected: &[&str]) {
    for e in expected {
        assert!(
            workloads.iter().any(|w| w == e),
            "{e} missing from {workloads:?}"
        );
    }
}

#[test]
fn every_group_prints_its_figures_at_a_tiny_size() {
    let workloads = bench_workloads(&["--recovery-tasks", "20000", "--durable-only"]);
    assert_has(
        &workloads,
        &[
            "disk_fdatasync_p99",
            "store_commit_p99",
            "noop",
            "chains",
            "executors",
            "latency_low_p99",
            "latency_load_p99",
            "grpc_round_trip_p99",
            "handoff_declared_p99",
            "handoff_in_body_p99",
            "recovery_flow",
            "recovery_rss_restarted",
        ],
    );
    assert!(
        !workloads.iter().any(|w| w.starts_with("hostile_")),
        "the hostile workloads run only when named: {workloads:?}"
    );
}

#[test]
fn the_hostile_workloads_print_their_figures_at_a_tiny_size() {
    let workloads = bench_workloads(&["--only", "hostile"]);
    assert_has(
        &workloads,
        &[
            "hostile_hello_welcome",
            "hostile_hello_longest_get",
            "hostile_dispatch_none",
            "hostile_dispatch_unserved_get_p99",
            "hostile_large_peak_rss",
            "hostile_large_disk",
            "hostile_large_default_get_ok",
        ],
    );
}

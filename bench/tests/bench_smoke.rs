//! `berth-bench` end to end with tiny sizes: it runs the floor and the whole stack, prints a
//! table and one JSON object. No figure is checked here: targets
//! live in the bench, never in timed tests.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn bench_runs_with_tiny_sizes_and_reports_json() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_berth-bench"));
    let dir = bench.parent().unwrap().to_owned();
    for bin in ["berth", "berth-worker"] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is missing next to berth-bench: run `cargo build --workspace --bins` first"
        );
    }
    let output = Command::new(&bench)
        .args([
            "--phase-secs",
            "0.5",
            "--cycle-secs",
            "0.5",
            "--small-slots",
            "2",
        ])
        .args([
            "--large-slots",
            "3",
            "--scale-base-slots",
            "2",
            "--scale-slots",
            "20",
        ])
        .args(["--restarts", "1"])
        .output()
        .expect("run berth-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "berth-bench failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    assert!(stderr.contains("target"), "no table on stderr:\n{stderr}");
    for key in [
        "floor", "stack", "cycles", "assigner", "scale", "ratios", "targets",
    ] {
        assert!(report.get(key).is_some(), "no {key:?} in {report}");
    }
    assert!(
        report["stack"]["one_client"]["latency"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    assert_eq!(report["cycles"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["scale"]["large"]["slots"], 20, "{report}");
    assert_eq!(report["targets"].as_array().unwrap().len(), 8, "{report}");
}

/// Runs `berth-bench ARGS…` and answers its JSON object.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args(args)
        .output()
        .expect("run berth-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "berth-bench failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

#[test]
fn broker_cost_runs_tiny_on_its_own_node() {
    let report = bench_json(&[
        "broker-cost",
        "--nodes",
        "1",
        "--counts",
        "5,20",
        "--no-recovery",
        "--settle-secs",
        "0.2",
        "--worker-slots",
        "0",
    ]);
    let steps = report["objects"]["steps"].as_array().unwrap();
    // Two steps of each of the five kinds a single node has (no quorum queues).
    assert_eq!(steps.len(), 10, "{report}");
    let durable = &steps[1];
    assert_eq!(durable["kind"], "classic_durable_queue", "{report}");
    assert_eq!(durable["count"], 20, "{report}");
    // The node counted the queues it holds: the 20 just declared.
    assert_eq!(durable["nodes"][0]["local_queues"], 20, "{report}");
    let channels = steps
        .iter()
        .find(|s| s["kind"] == "channel_100_per_connection" && s["count"] == 20)
        .unwrap();
    assert!(
        channels["nodes"][0]["channels"].as_u64().unwrap() >= 20,
        "{report}"
    );
    assert!(report["worker"].is_null(), "{report}");
}

#[test]
fn store_calls_counts_the_fake_launchpad_requests() {
    let report = bench_json(&["store-calls", "--cycles", "2", "--idle-secs", "1"]);
    assert_eq!(report["cycles"], 2, "{report}");
    // Every acquire claims by a compare-and-swap write; every clean deletes the 3 uploads.
    assert!(
        report["per_acquire"]["by_kind"]["PATCH archive"]
            .as_f64()
            .unwrap()
            >= 1.0,
        "{report}"
    );
    assert!(
        report["per_release_and_clean"]["by_kind"]["POST sourcepub"]
            .as_f64()
            .unwrap()
            >= 3.0,
        "{report}"
    );
}

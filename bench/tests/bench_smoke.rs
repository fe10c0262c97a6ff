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

//! `opc-loadgen bench` end to end: a tiny run (20 devices x 5 tags at 1 s,
//! 2 s warm-up, 5 s window) against the real `opc-collector` binary and the
//! in-process mock Kafka; checks that the JSON report has every field, with
//! sane values, and that no record was lost. Timings are not asserted.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Builds `opc-collector` (same profile as this test) and returns its path.
fn collector_bin() -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_opc-loadgen"));
    let dir = loadgen.parent().expect("binary folder");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-p", "collector-daemon", "--bin", "opc-collector"]);
    if dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build of opc-collector failed");
    let bin = dir.join("opc-collector");
    assert!(bin.is_file(), "no {}", bin.display());
    bin
}

const NUMBERS: &[&str] = &[
    "devices",
    "tags",
    "interval_s",
    "duration_s",
    "warmup_s",
    "window_s",
    "connect_rate",
    "simulator_processes",
    "machine_cpus",
    "connect_s",
    "sessions_connected",
    "points_per_s",
    "samples_read_per_s",
    "reads_per_s",
    "records_delivered_per_s",
    "expected_reads_per_s",
    "reads_failed",
    "ticks_skipped",
    "collector_cpu_s",
    "collector_cpu_percent_of_one_core",
    "collector_cpu_s_per_million_points",
    "collector_peak_rss_mib",
    "collector_rss_per_session_kib",
    "collector_vmhwm_mib",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "read_p99_ms",
    "sample_to_ack_p99_ms",
    "records_read",
    "records_delivered",
    "records_spilled",
    "records_undelivered",
    "records_consumed",
    "records_unique",
    "records_duplicated",
    "seq_gaps",
    "devices_seen",
    "records_lost",
    "collector_exit_code",
    "simulator_cpu_percent",
    "simulator_cpu_s",
];

#[test]
fn tiny_bench_reports_every_field_and_loses_nothing() {
    let collector = collector_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_opc-loadgen"))
        .args([
            "bench",
            "--devices",
            "20",
            "--tags",
            "5",
            "--interval",
            "1s",
        ])
        .args([
            "--warmup",
            "2s",
            "--duration",
            "5s",
            "--batch-interval",
            "200ms",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--collector-bin")
        .arg(&collector)
        .output()
        .expect("run opc-loadgen bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("points/s delivered"), "no table:\n{stdout}");

    let text = std::fs::read_to_string(&json).expect("read the JSON report");
    let r: Value = serde_json::from_str(&text).expect("JSON report");
    for k in NUMBERS {
        let v = r[k]
            .as_f64()
            .unwrap_or_else(|| panic!("`{k}` missing or not a number in {text}"));
        assert!(v.is_finite() && v >= 0.0, "`{k}` = {v} in {text}");
    }
    for k in [
        "kafka",
        "topic",
        "percentile_method",
        "simulator_cpu_covers",
    ] {
        assert!(r[k].is_string(), "`{k}` missing in {text}");
    }
    let n = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(n("devices"), 20.0);
    assert_eq!(n("tags"), 5.0);
    // 20 devices x 5 tags every second = 100 points/s, 20 reads/s.
    let points = n("points_per_s");
    assert!(
        (80.0..=120.0).contains(&points),
        "points/s {points}: {text}"
    );
    let reads = n("reads_per_s");
    assert!((16.0..=24.0).contains(&reads), "reads/s {reads}: {text}");
    assert!(n("window_s") >= 5.0, "{text}");
    assert!(n("collector_cpu_s") > 0.0, "{text}");
    assert!(n("collector_peak_rss_mib") > 1.0, "{text}");
    assert!(n("simulator_cpu_s") > 0.0, "{text}");
    assert!(n("lateness_p50_ms") <= n("lateness_p99_ms"), "{text}");
    assert!(n("sample_to_ack_p99_ms") > 0.0, "{text}");
    assert_eq!(n("sessions_connected"), 20.0, "{text}");
    assert_eq!(n("devices_seen"), 20.0, "{text}");
    assert_eq!(n("collector_exit_code"), 0.0, "{text}");
    assert!(n("records_read") >= 20.0 * 7.0, "{text}");
    assert_eq!(n("records_consumed"), n("records_read"), "{text}");
    assert_eq!(n("records_lost"), 0.0, "{text}");
    assert_eq!(n("seq_gaps"), 0.0, "{text}");
    assert_eq!(n("records_duplicated"), 0.0, "{text}");
}

#[test]
fn bench_without_a_collector_binary_says_how_to_get_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_opc-loadgen"))
        .args([
            "bench",
            "--devices",
            "1",
            "--collector-bin",
            "/nonexistent/opc-collector",
        ])
        .output()
        .expect("run opc-loadgen bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--collector-bin"), "{stderr}");
}

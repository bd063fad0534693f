//! `opc-loadgen bench` end to end: a tiny run (20 devices x 5 tags at 1 s,
//! 2 s warm-up, 5 s window) against the real `opc-collector` binary and the
//! in-process mock Kafka; checks that the JSON report has every field, with
//! sane values, and that no record was lost. Timings are not asserted. A
//! second tiny run subscribes instead of polling, with a change rate and the
//! devices in two `serve` child processes.

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
    "collector_cpu_us_per_session_per_s",
    "collector_to_simulator_cpu",
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
    "samples_delivered_per_s",
    "window_records_on_topic",
    "window_samples_on_topic",
    "samples_per_record",
    "collector_cpu_s_per_million_samples_read",
    "samples_delivered",
    "bytes_from_clients",
    "bytes_to_clients",
    "bytes_from_clients_per_s",
    "bytes_to_clients_per_s",
    "wire_bytes_per_point",
];

/// Runs `opc-loadgen bench` with `args` (plus `--json` and
/// `--collector-bin`); returns the stdout and the parsed JSON report.
fn run_bench(args: &[&str]) -> (String, Value, String) {
    let collector = collector_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_opc-loadgen"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--collector-bin")
        .arg(&collector)
        .output()
        .expect("run opc-loadgen bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).expect("read the JSON report");
    let r: Value = serde_json::from_str(&text).expect("JSON report");
    (stdout, r, text)
}

#[test]
fn tiny_bench_reports_every_field_and_loses_nothing() {
    let (stdout, r, text) = run_bench(&[
        "--devices",
        "20",
        "--tags",
        "5",
        "--interval",
        "1s",
        "--warmup",
        "2s",
        "--duration",
        "5s",
        "--batch-interval",
        "200ms",
    ]);
    assert!(stdout.contains("points/s delivered"), "no table:\n{stdout}");
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
        "mode",
        "bytes_covers",
        "collector_cpu_clock",
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
    // Linux lets a parent read its child's CPU clock: nanoseconds, not ticks.
    assert_eq!(r["collector_cpu_clock"], "cpu clock (ns)", "{text}");
    let per_session = n("collector_cpu_s") * 1e6 / n("window_s") / 20.0;
    assert!(
        (n("collector_cpu_us_per_session_per_s") - per_session).abs() <= 1e-6 * per_session,
        "{text}"
    );
    let ratio = n("collector_cpu_s") / n("simulator_cpu_s");
    assert!(
        (n("collector_to_simulator_cpu") - ratio).abs() <= 1e-9 * ratio,
        "{text}"
    );
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
    // Polling: every record holds every tag, on the topic as in the window.
    assert_eq!(r["mode"], "poll", "{text}");
    assert!(r["change_rate"].is_null(), "{text}");
    assert_eq!(
        n("samples_delivered"),
        n("records_consumed") * 5.0,
        "{text}"
    );
    assert!(n("window_records_on_topic") >= 20.0 * 4.0, "{text}");
    assert_eq!(
        n("window_samples_on_topic"),
        n("window_records_on_topic") * 5.0,
        "{text}"
    );
    assert_eq!(n("samples_per_record"), 5.0, "{text}");
    let per_s = n("samples_delivered_per_s");
    assert!((80.0..=120.0).contains(&per_s), "samples/s {per_s}: {text}");
    assert!(n("bytes_from_clients") > 0.0, "{text}");
    assert!(
        n("bytes_to_clients") > n("window_samples_on_topic"),
        "{text}"
    );
    assert_eq!(r["bytes_covers"], "the in-process simulator's counters");
}

#[test]
fn tiny_subscribed_bench_counts_the_changed_samples() {
    // 6 devices x 10 tags, each tag changing every 2 s (half of them per
    // 1 s publishing interval), in two simulator processes.
    let (stdout, r, text) = run_bench(&[
        "--mode",
        "subscribe",
        "--change-rate",
        "0.5",
        "--devices",
        "6",
        "--tags",
        "10",
        "--interval",
        "1s",
        "--warmup",
        "3s",
        "--duration",
        "5s",
        "--batch-interval",
        "200ms",
        "--sim-processes",
        "2",
    ]);
    assert!(stdout.contains("samples/s on the topic"), "{stdout}");
    let n = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(r["mode"], "subscribe", "{text}");
    assert_eq!(n("change_rate"), 0.5, "{text}");
    assert_eq!(n("simulator_processes"), 2.0, "{text}");
    assert!(n("samples_delivered") > 0.0, "{text}");
    assert_eq!(n("seq_gaps"), 0.0, "{text}");
    assert_eq!(n("records_lost"), 0.0, "{text}");
    assert_eq!(n("records_duplicated"), 0.0, "{text}");
    assert_eq!(n("devices_seen"), 6.0, "{text}");
    // 6 x 10 tags x 0.5 changes/s = 30 samples/s, in records of the changed
    // tags only (each set-up's first record holds all 10, before the window).
    let per_s = n("samples_delivered_per_s");
    assert!((15.0..=45.0).contains(&per_s), "samples/s {per_s}: {text}");
    assert_eq!(n("points_per_s"), per_s, "{text}");
    let per_record = n("samples_per_record");
    assert!((1.0..10.0).contains(&per_record), "{per_record}: {text}");
    assert!(n("window_records_on_topic") > 0.0, "{text}");
    assert!(n("collector_cpu_s_per_million_points") > 0.0, "{text}");
    assert!(n("bytes_to_clients") > 0.0, "{text}");
    assert_eq!(r["bytes_covers"], "the simulator processes' GET /stats");
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

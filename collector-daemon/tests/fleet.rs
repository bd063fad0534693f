//! The fleet simulation against a real broker: `opc-loadgen fleet` runs
//! three `opc-collector` replicas (shards of one device list of 120
//! simulated devices, read every second) against a `tansu` broker, starts a
//! fourth and resizes the fleet to four by a ConfigMap-style swap of the
//! shared configuration, restarts replica 0 with SIGTERM as a rolling
//! update does, stops them all and reads the topic back. Here its report
//! is checked: every device read by exactly its shard's replica before the
//! resize, after the handover and after the restart; no device without a
//! record for more than two intervals through the resize (make-before-
//! break); the moved fraction near 1/4, every moved device to the new
//! shard; nothing lost or repeated.

#![cfg(unix)]

mod support;

use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use support::{
    collector_bin, create_topic, find_tansu, loadgen_bin, start_broker, tansu_version,
    LogsOnFailure,
};

const TOPIC: &str = "opc-fleet";

#[test]
fn a_fleet_resized_and_restarted_reads_every_device_once_without_a_gap() {
    let tansu = find_tansu();
    let loadgen = loadgen_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogsOnFailure::new(dir.path());
    eprintln!("[fleet] tansu {}", tansu_version(&tansu));
    let (mut broker, bootstrap) = start_broker(&tansu, dir.path());
    create_topic(&bootstrap, TOPIC, 4);

    let report_path = dir.path().join("fleet.json");
    let t = Instant::now();
    let out = Command::new(&loadgen)
        .args([
            "fleet",
            "--devices",
            "120",
            "--tags",
            "5",
            "--interval",
            "1s",
        ])
        .args(["--replicas", "3", "--resize-to", "4", "--restart", "0"])
        .args(["--brokers", &bootstrap, "--topic", TOPIC])
        .arg("--collector-bin")
        .arg(collector_bin())
        .arg("--json")
        .arg(&report_path)
        .arg("--work-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run opc-loadgen fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("[fleet] opc-loadgen fleet took {:?}\n{stdout}", t.elapsed());
    assert!(
        out.status.success(),
        "opc-loadgen fleet failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    broker.assert_running();

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let n = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("no {k} in the report: {r}"))
    };
    for k in [
        "owner_problems_before",
        "owner_problems_after",
        "owner_problems_last",
        "moved_wrongly",
        "records_lost",
        "records_repeated",
        "undelivered",
    ] {
        assert_eq!(n(k), 0.0, "{k}: {r}");
    }
    assert_eq!(r["handover_view_problems"], serde_json::json!([]), "{r}");
    assert_eq!(r["failed_checks"], serde_json::json!([]), "{r}");
    // Make-before-break: the replicas handed devices over, and no device
    // went more than two intervals (plus a quarter of schedule jitter)
    // without a record while they did.
    assert!(n("most_handing_over") > 0.0, "no handover seen: {r}");
    assert!(n("handover_views") > 0.0, "no handover in /devices: {r}");
    assert!(n("longest_gap_resize_s") <= 2.25, "{r}");
    // 120 devices, 3 -> 4: a quarter move (30), binomially spread.
    let moved = n("moved_fraction");
    assert!((0.1..=0.4).contains(&moved), "moved {moved}: {r}");
    assert!(n("records_consumed") >= n("reads_ok"), "{r}");
    assert!(n("reads_ok") > 120.0 * 20.0, "{r}");
    eprintln!(
        "[fleet] moved {:.1} % ({} devices); resize settled in {:.1} s, longest gap {:.2} s, \
         {} read twice; restart: drained {:.1} s, all read again {:.1} s, longest gap {:.2} s; \
         {} reads, {} lost",
        100.0 * moved,
        r["moved_devices"],
        n("settle_s"),
        n("longest_gap_resize_s"),
        r["read_twice_during_resize"],
        n("restart_drain_s"),
        n("restart_s"),
        n("longest_gap_restart_s"),
        r["reads_ok"],
        r["records_lost"],
    );
    logs.passed();
}

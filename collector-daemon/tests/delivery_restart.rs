//! The delivery promise across a restart during a Kafka outage.
//!
//! Kafka is librdkafka's mock cluster in this process
//! ([`EmbeddedKafka`], on a real TCP port), so the outage is
//! `brokers_down()` and the data survives it. `opc-loadgen serve` (20
//! devices x 10 tags) and `opc-collector run` (reads every 1 s, batches
//! every 1 s, a `state_dir`, so a spill) are child processes; the
//! simulator keeps serving across the collector's restart, and the second
//! run uses the same config and `state_dir`.
//!
//! * SIGTERM as soon as the outage reaches the pipeline (a batch waiting
//!   in the producer, whose message timeout is longer than the grace, or
//!   one spilled): the daemon exits 0 within `collector.shutdown_grace`,
//!   having spilled what it held (`undelivered` 0); restarted after the
//!   broker is back it replays everything: every seq of the first run is on
//!   the topic, gap-free per device, and the first run's distinct records
//!   == its `reads_ok`.
//! * SIGKILL during an established outage (Kafka known down, deliveries
//!   settled, records going straight to the spill): restarted, everything
//!   spilled before the kill is delivered, and per device the records lost
//!   are at most the documented in-memory window,
//!   `ceil(batch.interval / interval) + 1` = 2 (docs/delivery.md), measured
//!   against the device's `reads_ok` from `/devices` just before the kill.
//!
//! The second run's seqs start at a base at least 2^32 above the first
//! run's (docs/record-format.md), which is how the runs are told apart.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use collector_testkit::EmbeddedKafka;
use support::{
    assert_devices, device_ids, first_run_base, free_port, loadgen_bin, metric, metric_labelled,
    metric_sum, partition_problems, poll_until, read_topic, records_by_device, start_loadgen,
    wait_spill_drained, Daemon, LogsOnFailure, Proc, Seen, SeqSet, Stopped,
};

const DEVICES: usize = 20;
const TAGS: usize = 10;
const PARTITIONS: i32 = 4;
/// Healthy running before the outage.
const HEALTHY_FOR: Duration = Duration::from_secs(3);
/// The SIGTERM test's `collector.shutdown_grace`.
const GRACE: Duration = Duration::from_secs(10);
/// Slack on top of the grace for process exit and the test's polling.
const EXIT_SLACK: Duration = Duration::from_secs(2);
/// The documented in-memory window with batch.interval 1s and interval
/// 1s: ceil(1 s / 1 s) + 1.
const MAX_LOST_PER_DEVICE: u64 = 2;

/// When to kill after a flush to the spill was seen (batch.interval is 1 s).
const KILL_AFTER_FLUSH: Duration = Duration::from_millis(800);

/// Polls `cond` every 10 ms until it returns `Some`, or panics after `within`.
fn poll_fast<T>(what: &str, within: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kafka, the simulator, a tempdir with the config, and log tails on failure.
struct Rig {
    kafka: EmbeddedKafka,
    topic: String,
    collector_id: String,
    _sim: Proc,
    config: PathBuf,
    http_addr: SocketAddr,
    logs: Option<LogsOnFailure>,
    dir: tempfile::TempDir,
    t0: Instant,
}

impl Rig {
    fn new(name: &str, kafka_extra: &str, collector_extra: &str) -> Rig {
        let t0 = Instant::now();
        let loadgen = loadgen_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LogsOnFailure::new(dir.path());
        let topic = format!("opc-{name}");
        let kafka = EmbeddedKafka::start(1, &topic, PARTITIONS)
            .unwrap_or_else(|e| panic!("embedded kafka: {e}"));
        let device_file = dir.path().join("devices.yaml");
        let sim = start_loadgen(&loadgen, dir.path(), &device_file, DEVICES, TAGS);
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("collector.yaml");
        std::fs::write(
            &config,
            format!(
                "collector:\n  id: {name}\n  state_dir: {state}\n{collector_extra}\
                 schedule:\n  interval: 1s\n\
                 session:\n  connect_timeout: 5s\n  read_timeout: 5s\n\
                 batch:\n  interval: 1s\n\
                 kafka:\n  brokers: \"{brokers}\"\n  topic: {topic}\n{kafka_extra}\
                 \x20 properties:\n    reconnect.backoff.max.ms: \"500\"\n\
                 http:\n  addr: \"{http_addr}\"\n\
                 device_files: [devices.yaml]\n",
                state = dir.path().join("state").display(),
                brokers = kafka.bootstrap_servers(),
            ),
        )
        .expect("write the config");
        Rig {
            kafka,
            topic,
            collector_id: name.to_string(),
            _sim: sim,
            config,
            http_addr,
            logs: Some(logs),
            dir,
            t0,
        }
    }

    fn log(&self, what: &str) {
        eprintln!(
            "[{} {:>5.1}s] {what}",
            self.collector_id,
            self.t0.elapsed().as_secs_f64()
        );
    }

    /// Starts run `n` of the daemon (log `collector-<n>.log`) and waits until ready.
    fn start_daemon(&self, n: u32) -> Daemon {
        let mut d = Daemon::start(
            &self.config,
            self.http_addr,
            self.dir.path(),
            &format!("collector-{n}.log"),
        );
        d.wait_ready(Duration::from_secs(30));
        self.log(&format!("run {n} ready"));
        d
    }

    /// Healthy running, then the outage: waits until something was delivered.
    fn healthy_then_down(&self, d: &Daemon) {
        std::thread::sleep(HEALTHY_FOR);
        let delivered = metric(&d.metrics(), "collector_kafka_delivered_total").unwrap_or(0.0);
        assert!(
            delivered > 0.0,
            "nothing delivered in {HEALTHY_FOR:?} of healthy running"
        );
        self.kafka.brokers_down();
        self.log(&format!(
            "brokers down ({delivered} records delivered before)"
        ));
    }

    /// Brokers up, run 2 started, its replay waited for, then stopped with
    /// SIGTERM; returns its final counters.
    fn restart_and_drain(&self) -> Stopped {
        self.kafka.brokers_up();
        self.log("brokers up");
        let mut d = self.start_daemon(2);
        let replayed = wait_spill_drained(&mut d, Duration::from_secs(30));
        self.log(&format!("run 2 drained its spill ({replayed} replayed)"));
        // A little live traffic after the replay.
        std::thread::sleep(Duration::from_secs(2));
        let took = d.stop(Duration::from_secs(20));
        let stopped = d.stopped_line();
        self.log(&format!("run 2 exited 0 {took:?} after SIGTERM: {stopped}"));
        assert_eq!(stopped.undelivered, 0, "run 2 lost records: {stopped}");
        assert_eq!(
            stopped.failed, 0,
            "run 2 failed deliveries with Kafka up: {stopped}"
        );
        stopped
    }

    /// Reads the topic back and splits it into the two runs.
    fn read_back(&self) -> Runs {
        let messages = read_topic(self.kafka.bootstrap_servers(), &self.topic);
        let per_device = records_by_device(&messages, &self.collector_id, TAGS);
        assert_devices(&per_device, &device_ids(DEVICES));
        let problems = partition_problems(&per_device);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        Runs::split(&per_device, messages.len())
    }

    fn passed(mut self) {
        self.log("OK");
        if let Some(l) = self.logs.take() {
            l.passed();
        }
    }
}

/// The topic's records split into the first and second run, per device.
struct Runs {
    messages: usize,
    base1: u64,
    base2: u64,
    first: BTreeMap<String, SeqSet>,
    second: BTreeMap<String, SeqSet>,
}

impl Runs {
    fn split(per_device: &BTreeMap<String, Vec<Seen>>, messages: usize) -> Runs {
        let (base1, threshold) = first_run_base(per_device);
        let mut first = BTreeMap::new();
        let mut second = BTreeMap::new();
        for (id, recs) in per_device {
            let (a, b): (Vec<&Seen>, Vec<&Seen>) = recs.iter().partition(|r| r.seq < threshold);
            first.insert(id.clone(), SeqSet::new(a.iter().map(|r| r.seq)));
            second.insert(id.clone(), SeqSet::new(b.iter().map(|r| r.seq)));
        }
        let base2 = second
            .values()
            .filter_map(SeqSet::first)
            .min()
            .expect("no records of the second run");
        assert!(
            base2 >= base1 + (1 << 32),
            "the second run's base {base2} is not >= the first run's {base1} + 2^32"
        );
        Runs {
            messages,
            base1,
            base2,
            first,
            second,
        }
    }

    fn unique(runs: &BTreeMap<String, SeqSet>) -> u64 {
        runs.values().map(|s| s.len() as u64).sum()
    }

    fn duplicates(&self) -> usize {
        self.first
            .values()
            .chain(self.second.values())
            .map(|s| s.duplicates)
            .sum()
    }

    /// Every device's seqs of one run: present, starting at the run's base,
    /// without holes.
    fn check_gap_free(&self) {
        let mut problems = Vec::new();
        for (run, base, sets) in [(1, self.base1, &self.first), (2, self.base2, &self.second)] {
            for (id, seqs) in sets {
                if seqs.first() != Some(base) {
                    problems.push(format!(
                        "run {run}, {id}: first seq {:?} is not the run's base {base} (first records missing)",
                        seqs.first()
                    ));
                }
                if let Some(gaps) = seqs.gaps() {
                    problems.push(format!("run {run}, {id}: {gaps}"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "per-device completeness:\n  {}",
            problems.join("\n  ")
        );
    }
}

#[test]
fn sigterm_during_outage_exits_within_grace_and_restart_delivers_everything() {
    // A message timeout longer than the grace: deliveries pending at SIGTERM
    // cannot time out by themselves, the shutdown has to abort and spill them.
    let rig = Rig::new(
        "restart-sigterm",
        "  message_timeout: 30s\n",
        &format!("  shutdown_grace: {}s\n", GRACE.as_secs()),
    );
    let mut d = rig.start_daemon(1);
    rig.healthy_then_down(&d);

    // SIGTERM as soon as the outage reaches the pipeline: the first batch
    // flushed after brokers_down either waits in the producer (Kafka not yet
    // known down; it cannot time out within the grace, so the shutdown must
    // abort and spill it) or goes straight to the spill (Kafka known down).
    // Which comes first is librdkafka's timing; both must end the same way.
    // (Records in flight more than a second after brokers_down cannot be
    // acknowledged any more: they are stuck, not about to be acked.)
    let down_at = Instant::now();
    let (in_flight, spilled) = poll_fast(
        "the outage reaching the pipeline",
        Duration::from_secs(10),
        || {
            let m = d.metrics();
            let in_flight = metric(&m, "collector_kafka_in_flight_records").unwrap_or(0.0);
            let spilled = metric_sum(&m, "collector_records_spilled_total");
            let stuck = in_flight > 0.0 && down_at.elapsed() > Duration::from_millis(1500);
            (stuck || spilled > 0.0).then_some((in_flight, spilled))
        },
    );
    rig.log(&format!(
        "SIGTERM with {in_flight} records waiting in the producer, {spilled} spilled"
    ));
    let took = d.stop(GRACE + EXIT_SLACK);
    let run1 = d.stopped_line();
    rig.log(&format!(
        "run 1 exited 0 {took:?} after SIGTERM (grace {GRACE:?}; pending deliveries aborted at 60% \
         of the grace: {}): {run1}",
        d.log_count("aborting them so they are spilled") > 0
    ));
    assert_eq!(
        run1.undelivered, 0,
        "run 1 lost records at shutdown: {run1}"
    );
    assert!(
        run1.spilled > 0,
        "run 1 spilled nothing during the outage: {run1}"
    );
    assert_eq!(
        run1.reads_failed, 0,
        "reads failed against healthy local devices: {run1}"
    );
    assert!(
        run1.delivered + run1.spilled >= run1.reads_ok,
        "run 1 neither delivered nor spilled some reads: {run1}"
    );
    assert_eq!(
        d.log_count("shutdown grace exceeded"),
        0,
        "run 1 reports an exceeded shutdown grace"
    );
    drop(d);

    let run2 = rig.restart_and_drain();
    assert!(
        run2.replayed >= run1.spilled,
        "run 2 replayed {} < {} spilled by run 1",
        run2.replayed,
        run1.spilled
    );

    let runs = rig.read_back();
    runs.check_gap_free();
    assert_eq!(
        Runs::unique(&runs.first),
        run1.reads_ok,
        "run 1: distinct records on the topic != its reads_ok ({run1})"
    );
    assert_eq!(
        Runs::unique(&runs.second),
        run2.reads_ok,
        "run 2: distinct records on the topic != its reads_ok ({run2})"
    );
    rig.log(&format!(
        "{} messages; run 1: {} distinct (== reads_ok), spilled {}, run 2: {} distinct, \
         replayed {}; {} duplicates",
        runs.messages,
        Runs::unique(&runs.first),
        run1.spilled,
        Runs::unique(&runs.second),
        run2.replayed,
        runs.duplicates()
    ));
    rig.passed();
}

#[test]
fn sigkill_during_outage_loses_at_most_the_in_memory_window() {
    let rig = Rig::new("restart-sigkill", "  message_timeout: 5s\n", "");
    let mut d = rig.start_daemon(1);
    rig.healthy_then_down(&d);

    // An established outage: Kafka known down, every delivery attempted
    // before that settled (failed and spilled), new batches going straight
    // to the spill.
    poll_until("an established outage", Duration::from_secs(20), || {
        let m = d.metrics();
        let up = metric(&m, "collector_kafka_up");
        let in_flight = metric(&m, "collector_kafka_in_flight_records");
        let down_spills = metric_labelled(
            &m,
            "collector_records_spilled_total",
            "reason=\"kafka_down\"",
        );
        if up == Some(0.0) && in_flight == Some(0.0) && down_spills > 0.0 {
            Ok(())
        } else {
            Err(format!(
                "kafka_up {up:?}, kafka_in_flight {in_flight:?}, spilled (kafka_down) {down_spills}"
            ))
        }
    });
    std::thread::sleep(Duration::from_secs(2));

    // Kill when the in-memory window is at its fullest: just before the
    // batcher's next flush. A flush shows as the spilled counter moving (in
    // an established outage every flush is one spill append); the next one
    // comes `batch.interval` (1 s) after it, so kill 800 ms after one is seen.
    let spilled_now = || metric_sum(&d.metrics(), "collector_records_spilled_total");
    let before = spilled_now();
    let flushed = poll_fast("a flush to the spill", Duration::from_secs(5), || {
        let now = spilled_now();
        (now > before).then_some(now)
    });
    let flush_seen = Instant::now();
    std::thread::sleep(KILL_AFTER_FLUSH);

    // Measure, then kill at once.
    let m = d.metrics();
    let reads_before: BTreeMap<String, u64> = d.device_reads_ok();
    let kill_at = Instant::now();
    let status = d.proc.kill();
    let spilled_before = metric_sum(&m, "collector_records_spilled_total");
    let delivered_before = metric(&m, "collector_kafka_delivered_total").unwrap_or(0.0);
    let replayed_before = metric_sum(&m, "collector_records_replayed_total");
    let reads_total: u64 = reads_before.values().sum();
    rig.log(&format!(
        "SIGKILL ({status}) {:?} after a flush was seen (spilled {before} -> {flushed}) with \
         kafka_up {:?}: reads_ok {reads_total}, delivered {delivered_before}, spilled \
         {spilled_before} (kafka_down {}), replayed {replayed_before}",
        kill_at - flush_seen,
        metric(&m, "collector_kafka_up"),
        metric_labelled(
            &m,
            "collector_records_spilled_total",
            "reason=\"kafka_down\""
        ),
    ));
    assert_eq!(
        metric(&m, "collector_kafka_up"),
        Some(0.0),
        "Kafka was not known down at the kill"
    );
    assert_eq!(reads_before.len(), DEVICES, "/devices: {reads_before:?}");
    drop(d);

    let run2 = rig.restart_and_drain();
    assert!(
        run2.replayed as f64 >= spilled_before,
        "run 2 replayed {} < {spilled_before} spilled before the kill",
        run2.replayed
    );

    let runs = rig.read_back();
    runs.check_gap_free();
    assert_eq!(
        Runs::unique(&runs.second),
        run2.reads_ok,
        "run 2: distinct records on the topic != its reads_ok ({run2})"
    );
    let delivered1 = Runs::unique(&runs.first);
    // Everything acknowledged or durably spilled before the kill is there
    // (replays before the kill would be acknowledgements of spilled
    // records: count them once).
    let accounted = delivered_before - replayed_before + spilled_before;
    assert!(
        delivered1 as f64 >= spilled_before && delivered1 as f64 >= accounted,
        "run 1: {delivered1} distinct records on the topic < {accounted} acknowledged \
         ({delivered_before} - {replayed_before} replayed) or spilled ({spilled_before}) before the kill"
    );

    // Per device: lost = reads before the kill - distinct records of run 1.
    let mut lost_hist: BTreeMap<u64, usize> = BTreeMap::new();
    let mut later_reads = 0u64;
    let mut over = Vec::new();
    for (id, &reads) in &reads_before {
        let got = runs.first.get(id).map_or(0, |s| s.len() as u64);
        let lost = reads.saturating_sub(got);
        later_reads += got.saturating_sub(reads);
        *lost_hist.entry(lost).or_default() += 1;
        if lost > MAX_LOST_PER_DEVICE {
            over.push(format!(
                "{id}: {reads} reads_ok before the kill, {got} delivered: {lost} lost"
            ));
        }
    }
    let max_lost = lost_hist.keys().last().copied().unwrap_or(0);
    rig.log(&format!(
        "{} messages; run 1: {delivered1} distinct of {reads_total} reads seen before the kill \
         (+{later_reads} read after the scrape); lost per device {{lost: devices}} {lost_hist:?}, \
         max {max_lost} (bound {MAX_LOST_PER_DEVICE}); run 2 replayed {}; {} duplicates",
        runs.messages,
        run2.replayed,
        runs.duplicates()
    ));
    assert!(
        over.is_empty(),
        "more than the documented in-memory window (ceil(batch.interval / interval) + 1 = \
         {MAX_LOST_PER_DEVICE}) lost by SIGKILL during an established outage:\n  {}",
        over.join("\n  ")
    );
    rig.passed();
}

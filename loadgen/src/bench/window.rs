//! The measured window of a bench run: wait until every session is up,
//! warm up, measure the collector (CPU, RSS, its own histograms) and the
//! simulator over the window, then stop the collector and check every
//! record it reported against the topic.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use collector_testkit::prom::Scrape;

use super::collector::{self, Collector};
use super::fleet::{Fleet, WireBytes};
use super::procfs::{self, Pid};
use super::report::{self, Report};
use super::{note, verify, BenchArgs};

/// What the window measured.
pub(super) struct Window {
    report: Report,
    reader: verify::Reader,
    /// The window in wall-clock ms since the Unix epoch, `[start, end)`, to
    /// pick the records read in it by their message timestamp.
    wall_ms: (i64, i64),
}

/// Wall-clock ms since the Unix epoch (the collector stamps each message
/// with its read time on the same clock).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The fleet's relayed bytes, or why there are none (noted, not fatal).
fn wire_bytes(fleet: &Fleet) -> Option<WireBytes> {
    match fleet.wire_bytes() {
        Ok(b) => Some(b),
        Err(e) => {
            note(format_args!("bytes on the wire not measured: {e:#}"));
            None
        }
    }
}

fn scrape(col: &Collector) -> anyhow::Result<Scrape> {
    Ok(Scrape::parse(&col.metrics()?))
}

fn quantile_ms(end: &Scrape, start: &Scrape, name: &str, q: f64) -> Option<f64> {
    let h = end.histogram(name).since(&start.histogram(name));
    h.quantile_upper_bound(q)
        .filter(|v| v.is_finite())
        .map(|s| (s * 1e6).round() / 1e3)
}

pub(super) async fn measure(
    args: &BenchArgs,
    col: &mut Collector,
    fleet: &Fleet,
    started: Instant,
    (bootstrap, topic): (&str, &str),
) -> anyhow::Result<Window> {
    let pid = Pid::Other(col.pid());
    // Read the topic from the start (from its beginning): a broker that
    // trims old segments (the mock cluster does) must not drop records
    // unread. Started after the fleet connected, the reader missed the
    // first ~10 % of a 19,000-device run's records, trimmed by then.
    let reader = verify::Reader::start(bootstrap, topic)?;
    col.wait_http_ok("/startupz", Duration::from_secs(120))?;
    // Wait for every session (at the configured connect rate, plus slack).
    let limit = Duration::from_secs(60)
        + Duration::from_secs_f64(
            3.0 * f64::from(args.devices) / f64::from(args.connect_rate.max(1)),
        )
        + args.interval * 2;
    let mut last_note = Instant::now();
    let mut connected = 0.0;
    loop {
        col.ensure_running()?;
        // While ~20,000 sessions connect on 2 cores (the simulator's
        // processes too), a scrape can outlast its 10 s read timeout: noted
        // and retried until `limit`, not fatal. The window's own scrapes
        // below stay strict.
        match scrape(col) {
            Ok(s) => connected = s.sum("collector_sessions", &[("state", "connected")]),
            Err(e) => note(format_args!(
                "a scrape while the fleet connects failed: {e:#}"
            )),
        }
        if connected >= f64::from(args.devices) {
            break;
        }
        if started.elapsed() > limit {
            bail!(
                "only {connected} of {} sessions connected after {limit:?}",
                args.devices
            );
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            note(format_args!(
                "{connected} of {} sessions connected",
                args.devices
            ));
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    note(format_args!(
        "all {} sessions connected after {connect_s:.1} s; warm-up {:?}",
        args.devices, args.warmup
    ));
    tokio::time::sleep(args.warmup).await;
    col.ensure_running()?;

    // --- the window ----------------------------------------------------------
    note(format_args!("measuring for {:?}", args.duration));
    let b0 = wire_bytes(fleet);
    let s0 = scrape(col)?;
    let c0 = procfs::cpu_seconds(pid)?;
    let f0 = fleet.cpu_seconds()?;
    let t0 = Instant::now();
    let w0 = now_ms();
    let mut peak_rss = procfs::rss_kib(pid)?;
    while t0.elapsed() < args.duration {
        let left = args.duration.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        col.ensure_running()?;
        peak_rss = peak_rss.max(procfs::rss_kib(pid)?);
    }
    let s1 = scrape(col)?;
    let (c1, cpu_clock) = procfs::cpu_reading(pid)?;
    let f1 = fleet.cpu_seconds()?;
    let window = t0.elapsed().as_secs_f64();
    let w1 = now_ms();
    let bytes = b0.zip(wire_bytes(fleet)).map(|(b0, b1)| b1.since(b0));
    let hwm = std::fs::read_to_string(format!("/proc/{}/status", col.pid()))
        .ok()
        .and_then(|s| procfs::parse_status_kib(&s, "VmHWM:"))
        .unwrap_or(0);

    let d = |name: &str, m: &[(&str, &str)]| s1.sum(name, m) - s0.sum(name, m);
    let reads = d("collector_reads_total", &[("result", "ok")]);
    let reads_all = d("collector_reads_total", &[]);
    let samples = d("collector_samples_total", &[]);
    let delivered = d("collector_kafka_delivered_total", &[]);
    let points = delivered * f64::from(args.tags);
    let cpu = c1 - c0;
    let (cpus, model) = report::machine();
    let report = Report {
        mode: args.mode.name().to_string(),
        change_rate: args.change_rate,
        devices: args.devices,
        tags: args.tags,
        interval_s: args.interval.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        window_s: window,
        batch_interval_s: args.batch_interval.map(|b| b.as_secs_f64()),
        encoding: args.encoding.name().to_string(),
        connect_rate: args.connect_rate,
        phase_slots: args.phase_slots,
        machine_cpus: cpus,
        machine_cpu_model: model,
        connect_s,
        sessions_connected: s1.sum("collector_sessions", &[("state", "connected")]),
        points_per_s: points / window,
        samples_read_per_s: samples / window,
        reads_per_s: reads / window,
        records_delivered_per_s: delivered / window,
        expected_reads_per_s: f64::from(args.devices) / args.interval.as_secs_f64(),
        reads_failed: reads_all - reads,
        ticks_skipped: d("collector_schedule_ticks_skipped_total", &[]),
        collector_cpu_s: cpu,
        collector_cpu_clock: cpu_clock.to_string(),
        collector_cpu_us_per_session_per_s: cpu * 1e6 / window / f64::from(args.devices.max(1)),
        collector_to_simulator_cpu: if f1 > f0 { cpu / (f1 - f0) } else { 0.0 },
        collector_cpu_percent_of_one_core: 100.0 * cpu / window,
        // Over the points read (steady): deliveries come in batch-interval
        // steps. Replaced by the count on the topic once it is read back.
        collector_cpu_s_per_million_points: if samples > 0.0 {
            cpu * 1e6 / samples
        } else {
            0.0
        },
        collector_cpu_s_per_million_samples_read: if samples > 0.0 {
            cpu * 1e6 / samples
        } else {
            0.0
        },
        collector_peak_rss_mib: peak_rss as f64 / 1024.0,
        collector_rss_per_session_kib: peak_rss as f64 / f64::from(args.devices),
        collector_vmhwm_mib: hwm as f64 / 1024.0,
        lateness_p50_ms: quantile_ms(&s1, &s0, "collector_schedule_lateness_seconds", 0.5),
        lateness_p99_ms: quantile_ms(&s1, &s0, "collector_schedule_lateness_seconds", 0.99),
        read_p99_ms: quantile_ms(&s1, &s0, "collector_read_duration_seconds", 0.99),
        sample_to_ack_p99_ms: quantile_ms(&s1, &s0, "collector_sample_to_ack_seconds", 0.99),
        percentile_method: report::PERCENTILE_METHOD.to_string(),
        simulator_cpu_percent: 100.0 * (f1 - f0) / window,
        simulator_cpu_s: f1 - f0,
        simulator_cpu_covers: "the bench process (in-process simulator and mock Kafka share it, \
                               plus the topic reader thread, which reads and parses every \
                               record as it is delivered) and any simulator child processes"
            .to_string(),
        bytes_from_clients: bytes.map(|b| b.from_clients),
        bytes_to_clients: bytes.map(|b| b.to_clients),
        bytes_from_clients_per_s: bytes.map(|b| b.from_clients as f64 / window),
        bytes_to_clients_per_s: bytes.map(|b| b.to_clients as f64 / window),
        bytes_covers: match (fleet, bytes) {
            (_, None) => "not measured (see the bench's log)",
            (Fleet::InProcess(_), Some(_)) => "the in-process simulator's counters",
            (Fleet::Children(_), Some(_)) => "the simulator processes' GET /stats",
        }
        .to_string(),
        ..Report::default()
    };
    Ok(Window {
        report,
        reader,
        wall_ms: (w0, w1),
    })
}

pub(super) async fn finish(mut col: Collector, w: Window) -> anyhow::Result<Report> {
    let mut report = w.report;
    note("stopping the collector (SIGTERM)");
    let status = col.terminate(Duration::from_secs(120))?;
    report.collector_exit_code = status.code().unwrap_or(-1);
    let stopped = collector::stopped_line(&col.log)?;
    if !status.success() {
        bail!(
            "opc-collector exited with {status} after SIGTERM; last log lines:\n{}",
            collector::log_tail(&col.log, 15)
        );
    }
    note(format_args!(
        "collector stopped: {} reads ok, {} delivered; reading the topic back",
        stopped.reads_ok, stopped.delivered
    ));
    let (reader, expected) = (w.reader, stopped.reads_ok);
    let check = tokio::task::spawn_blocking(move || reader.finish(expected))
        .await
        .context("topic reader")??;
    report.records_read = stopped.reads_ok;
    report.records_delivered = stopped.delivered;
    report.records_spilled = stopped.spilled;
    report.records_undelivered = stopped.undelivered;
    report.records_consumed = check.consumed;
    report.records_unique = check.unique;
    report.records_duplicated = check.duplicates;
    report.seq_gaps = check.seq_gaps;
    report.devices_seen = check.devices_seen;
    report.records_lost = stopped.reads_ok.saturating_sub(check.unique);
    report.samples_delivered = check.samples;
    let (from, to) = w.wall_ms;
    report.add_topic_window(check.in_window(from, to));
    Ok(report)
}

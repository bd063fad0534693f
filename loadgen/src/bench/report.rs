//! The bench result: JSON (stable field names) and a human table.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::verify::Counts;

/// How the percentiles are read off the collector's histograms.
pub const PERCENTILE_METHOD: &str =
    "upper bound of the Prometheus histogram bucket that holds the \
     quantile (buckets 1, 2.5, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10, 30, 60 s); \
     null = no observations or above 60 s";

/// Everything a bench run measured. Rates and CPU are over the measurement
/// window (after connect and warm-up); records are over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    // --- workload
    /// How the collector got the values: "poll" or "subscribe".
    pub mode: String,
    /// The simulator's changes per tag and second (`--change-rate`); null =
    /// none (values computed at each read).
    pub change_rate: Option<f64>,
    /// Simulated devices (= collector sessions).
    pub devices: u32,
    /// Tags per device.
    pub tags: u32,
    /// Read interval, seconds.
    pub interval_s: f64,
    /// Requested measurement window, seconds.
    pub duration_s: f64,
    /// Warm-up after the fleet connected, seconds.
    pub warmup_s: f64,
    /// Measured window length, seconds.
    pub window_s: f64,
    /// `batch.interval` given to the collector, seconds (null = its default).
    pub batch_interval_s: Option<f64>,
    /// `kafka.encoding` given to the collector (`json` or `protobuf`).
    pub encoding: String,
    /// `session.max_connects_per_second`.
    pub connect_rate: u32,
    /// The collector's `schedule.phase_slots` (`None`: its default).
    pub phase_slots: Option<u32>,
    /// "mock" (librdkafka mock cluster in the bench process) or the brokers.
    pub kafka: String,
    /// Topic written.
    pub topic: String,
    /// Simulator processes (1 = in the bench process).
    pub simulator_processes: usize,
    /// Logical CPUs of the machine.
    pub machine_cpus: usize,
    /// CPU model of the machine.
    pub machine_cpu_model: String,
    // --- start-up
    /// Collector start to every session connected, seconds.
    pub connect_s: f64,
    /// Sessions connected at the end of the window.
    pub sessions_connected: f64,
    // --- throughput (window)
    /// Points (samples) delivered to Kafka per second. Polling: records
    /// acknowledged x tags; deliveries come in batch-interval steps, so over a
    /// window of a few batch intervals this moves by up to one batch
    /// (samples_read_per_s is the steady figure). Subscribing (records hold
    /// only the changed tags): samples_delivered_per_s.
    pub points_per_s: f64,
    /// Samples on the topic in the records read in the window (by message
    /// timestamp, the read time), per second of the window.
    pub samples_delivered_per_s: f64,
    /// Records on the topic read in the window (by message timestamp).
    pub window_records_on_topic: u64,
    /// Samples in those records (polling: window_records_on_topic x tags).
    pub window_samples_on_topic: u64,
    /// window_samples_on_topic / window_records_on_topic (polling: tags).
    pub samples_per_record: f64,
    /// Points read per second (`collector_samples_total`, all qualities).
    pub samples_read_per_s: f64,
    /// Successful device reads per second (subscribing: records made, one
    /// per publish response with changes).
    pub reads_per_s: f64,
    /// Records acknowledged by Kafka per second.
    pub records_delivered_per_s: f64,
    /// Expected reads per second (devices / interval); subscribing, the
    /// most records per second (one per device and publishing interval).
    pub expected_reads_per_s: f64,
    /// Failed reads in the window.
    pub reads_failed: f64,
    /// Ticks skipped in the window (device still busy).
    pub ticks_skipped: f64,
    // --- collector cost (window)
    /// Collector user+sys CPU seconds in the window (the process's CPU
    /// clock, nanosecond resolution; see `collector_cpu_clock`).
    pub collector_cpu_s: f64,
    /// How the CPU seconds were read: `"cpu clock (ns)"`, or `"clock ticks"`
    /// where the process's CPU clock could not be read.
    pub collector_cpu_clock: String,
    /// Collector CPU microseconds per session per second of the window (the
    /// idle fleet's figure).
    pub collector_cpu_us_per_session_per_s: f64,
    /// collector_cpu_s / simulator_cpu_s: the collector's cost against the
    /// same VM's cost of serving the same requests, steadier across days and
    /// machines than either figure alone.
    pub collector_to_simulator_cpu: f64,
    /// Collector CPU as a percentage of one core.
    pub collector_cpu_percent_of_one_core: f64,
    /// Collector CPU seconds per million points read (= microseconds per
    /// point; every point read is delivered when records_lost is 0), over
    /// window_samples_on_topic (collector_samples_total if the topic held
    /// none).
    pub collector_cpu_s_per_million_points: f64,
    /// The same over the collector's own count of samples read in the
    /// window (`collector_samples_total`, samples_read_per_s), to cross-check.
    pub collector_cpu_s_per_million_samples_read: f64,
    /// Peak VmRSS sampled every 500 ms in the window, MiB.
    pub collector_peak_rss_mib: f64,
    /// Peak VmRSS / sessions, KiB.
    pub collector_rss_per_session_kib: f64,
    /// VmHWM at the end of the window (includes start-up), MiB.
    pub collector_vmhwm_mib: f64,
    // --- latency (window)
    /// Schedule lateness p50, ms.
    pub lateness_p50_ms: Option<f64>,
    /// Schedule lateness p99, ms.
    pub lateness_p99_ms: Option<f64>,
    /// Device read duration p99, ms.
    pub read_p99_ms: Option<f64>,
    /// Read time to Kafka acknowledgement p99, ms.
    pub sample_to_ack_p99_ms: Option<f64>,
    /// How the percentiles are computed.
    pub percentile_method: String,
    // --- completeness (whole run)
    /// Successful reads (records made), from the collector's final log line.
    pub records_read: u64,
    /// Records acknowledged, from the final log line.
    pub records_delivered: u64,
    /// Records spilled to disk, from the final log line.
    pub records_spilled: u64,
    /// Records with nowhere to go, from the final log line.
    pub records_undelivered: u64,
    /// Messages read back from the topic.
    pub records_consumed: u64,
    /// Distinct (device, seq) on the topic.
    pub records_unique: u64,
    /// Repeated (device, seq) on the topic.
    pub records_duplicated: u64,
    /// Seqs missing between a device's first and last record.
    pub seq_gaps: u64,
    /// Devices with at least one record on the topic.
    pub devices_seen: u64,
    /// records_read - records_unique (must be 0).
    pub records_lost: u64,
    /// Samples in all the messages read back (duplicates included).
    pub samples_delivered: u64,
    /// Collector exit code after SIGTERM (0 = clean drain).
    pub collector_exit_code: i32,
    // --- the other side
    /// CPU of the simulator side (the bench process: simulator and mock
    /// Kafka share it, plus any simulator child processes), % of one core.
    pub simulator_cpu_percent: f64,
    /// The same, CPU seconds in the window.
    pub simulator_cpu_s: f64,
    /// What simulator_cpu_* covers.
    pub simulator_cpu_covers: String,
    // --- bytes on the wire (window), as the devices' fronts relayed them
    // (OPC UA over TCP without TCP/IP headers); null = not measured
    /// Bytes from the collector to the devices in the window.
    pub bytes_from_clients: Option<u64>,
    /// Bytes from the devices to the collector in the window.
    pub bytes_to_clients: Option<u64>,
    /// bytes_from_clients per second of the window.
    pub bytes_from_clients_per_s: Option<f64>,
    /// bytes_to_clients per second of the window.
    pub bytes_to_clients_per_s: Option<f64>,
    /// (bytes_from_clients + bytes_to_clients) / window_samples_on_topic.
    pub wire_bytes_per_point: Option<f64>,
    /// Where the bytes come from (in-process counters, the simulator
    /// processes' GET /stats, or why they were not measured).
    pub bytes_covers: String,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("<= {v} ms"))
}

impl Report {
    /// Adds what the topic held for the window (`c`: records and samples
    /// whose read time is in it): the sample rates, CPU per point, and, when
    /// subscribing, points_per_s.
    pub fn add_topic_window(&mut self, c: Counts) {
        self.window_records_on_topic = c.records;
        self.window_samples_on_topic = c.samples;
        if self.window_s > 0.0 {
            self.samples_delivered_per_s = c.samples as f64 / self.window_s;
        }
        if c.records > 0 {
            self.samples_per_record = c.samples as f64 / c.records as f64;
        }
        if c.samples > 0 {
            self.collector_cpu_s_per_million_points = self.collector_cpu_s * 1e6 / c.samples as f64;
            self.wire_bytes_per_point = self
                .bytes_from_clients
                .zip(self.bytes_to_clients)
                .map(|(f, t)| (f + t) as f64 / c.samples as f64);
        }
        if self.mode != "poll" {
            self.points_per_s = self.samples_delivered_per_s;
        }
    }

    /// Writes the JSON file.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The human table (metric, value, target at the reference workload).
    pub fn table(&self) -> String {
        let rows: Vec<(&str, String, &str)> = vec![
            (
                "workload",
                format!(
                    "{} devices x {} tags every {} s, window {:.1} s after {} s warm-up",
                    self.devices, self.tags, self.interval_s, self.window_s, self.warmup_s
                ),
                "",
            ),
            ("mode", self.mode_text(), ""),
            ("kafka", self.kafka.clone(), ""),
            (
                "fleet connected after",
                format!("{:.1} s", self.connect_s),
                "",
            ),
            (
                "points/s delivered",
                format!("{:.0}", self.points_per_s),
                "",
            ),
            (
                "samples/s on the topic",
                format!(
                    "{:.0} ({} records x {:.1} samples in the window)",
                    self.samples_delivered_per_s,
                    self.window_records_on_topic,
                    self.samples_per_record
                ),
                "",
            ),
            (
                if self.mode == "poll" {
                    "reads/s"
                } else {
                    "records/s (publish responses)"
                },
                format!(
                    "{:.1} ({} {:.1})",
                    self.reads_per_s,
                    if self.mode == "poll" {
                        "expected"
                    } else {
                        "at most"
                    },
                    self.expected_reads_per_s
                ),
                "",
            ),
            (
                "collector CPU",
                format!(
                    "{:.2} % of one core",
                    self.collector_cpu_percent_of_one_core
                ),
                "<= 3 %",
            ),
            (
                "collector CPU per session",
                format!(
                    "{:.3} us per session per second",
                    self.collector_cpu_us_per_session_per_s
                ),
                "idle <= 2 us",
            ),
            (
                "collector CPU per point",
                format!(
                    "{:.3} s per million points (us/point)",
                    self.collector_cpu_s_per_million_points
                ),
                "<= 1 us",
            ),
            (
                "collector peak RSS",
                format!("{:.1} MiB", self.collector_peak_rss_mib),
                "<= 128 MiB",
            ),
            (
                "collector RSS per session",
                format!("{:.1} KiB", self.collector_rss_per_session_kib),
                "",
            ),
            ("schedule lateness p50", ms(self.lateness_p50_ms), ""),
            (
                "schedule lateness p99",
                ms(self.lateness_p99_ms),
                "<= 10 ms",
            ),
            ("read latency p99", ms(self.read_p99_ms), ""),
            (
                "sample-to-ack p99",
                ms(self.sample_to_ack_p99_ms),
                "<= 1500 ms",
            ),
            (
                "records read / consumed",
                format!("{} / {}", self.records_read, self.records_consumed),
                "",
            ),
            (
                "records lost",
                format!(
                    "{} (seq gaps {}, duplicates {})",
                    self.records_lost, self.seq_gaps, self.records_duplicated
                ),
                "0",
            ),
            (
                "simulator + mock Kafka CPU",
                format!("{:.1} % of one core", self.simulator_cpu_percent),
                "",
            ),
            (
                "collector / simulator CPU",
                format!("{:.2}", self.collector_to_simulator_cpu),
                "",
            ),
            ("bytes on the wire", self.bytes_text(), ""),
        ];
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v, t) in rows {
            let target = if t.is_empty() {
                String::new()
            } else {
                format!("  (target {t})")
            };
            out += format!("{k:<w0$}  {v:<w1$}{target}").trim_end();
            out.push('\n');
        }
        out += "percentiles: upper bound of the histogram bucket holding the quantile\n";
        out
    }

    /// The mode row: poll or subscribe, and the change rate.
    fn mode_text(&self) -> String {
        let per_interval = self.change_rate.map(|r| r * self.interval_s);
        match (self.change_rate, per_interval) {
            (Some(r), Some(p)) if p <= 1.0 => format!(
                "{}, every tag changes {r}/s ({:.0} % of the tags per interval)",
                self.mode,
                100.0 * p
            ),
            (Some(r), Some(p)) => format!(
                "{}, every tag changes {r}/s ({p:.1} times per interval)",
                self.mode
            ),
            _ => format!("{}, values computed at each read", self.mode),
        }
    }

    /// The bytes row: both directions per second and per point.
    fn bytes_text(&self) -> String {
        match (self.bytes_from_clients_per_s, self.bytes_to_clients_per_s) {
            (Some(f), Some(t)) => format!(
                "{:.0} B/s to the devices, {:.0} B/s from them ({:.1} B per point)",
                f,
                t,
                self.wire_bytes_per_point.unwrap_or(0.0)
            ),
            _ => "not measured".to_string(),
        }
    }

    /// Prints the table to stdout.
    pub fn print(&self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(self.table().as_bytes())
            .and_then(|()| out.flush())
            .context("writing to stdout")
    }
}

/// Logical CPUs and CPU model name from /proc/cpuinfo.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    (cpus, model)
}

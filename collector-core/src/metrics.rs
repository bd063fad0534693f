//! Metric names, their descriptions, and the in-process counters.
//!
//! Metrics go through the `metrics` facade (the daemon installs a
//! Prometheus recorder; an embedder installs whatever it likes). Names
//! follow `collector_<name>_<unit>[_total]`; labels are fixed and low
//! cardinality: never a device id. [`Stats`] is a handful of atomics the
//! daemon's summary line, tests and embedders read without a recorder.

use std::sync::atomic::{AtomicU64, Ordering};

/// Every metric name, in one place (documented in `docs/metrics.md`).
pub mod names {
    /// Counter, label `result` (`ok`, `connect_error`, `timeout`, `read_error`).
    pub const READS: &str = "collector_reads_total";
    /// Histogram: duration of one device read (all chunks).
    pub const READ_DURATION: &str = "collector_read_duration_seconds";
    /// Histogram: how late a read started against its schedule.
    pub const SCHEDULE_LATENESS: &str = "collector_schedule_lateness_seconds";
    /// Counter: ticks fired (reads scheduled).
    pub const TICKS: &str = "collector_schedule_ticks_total";
    /// Counter, label `reason`: `overrun` (the device's previous read was
    /// still running or waiting; never queued up) or `breaker_open`.
    pub const TICKS_SKIPPED: &str = "collector_schedule_ticks_skipped_total";
    /// Gauge, label `state` (`closed`, `open`, `half_open`): devices per breaker state.
    pub const BREAKERS: &str = "collector_breakers";
    /// Counter, label `to` (`open`, `half_open`, `closed`): breaker transitions.
    pub const BREAKER_TRANSITIONS: &str = "collector_breaker_transitions_total";
    /// Counter, label `quality` (`good`, `uncertain`, `bad`).
    pub const SAMPLES: &str = "collector_samples_total";
    /// Gauge: worker permits configured.
    pub const WORKER_PERMITS: &str = "collector_worker_permits";
    /// Gauge: worker permits held by running reads.
    pub const WORKER_PERMITS_IN_USE: &str = "collector_worker_permits_in_use";
    /// Gauge: devices scheduled.
    pub const DEVICES: &str = "collector_devices";
    /// Gauge, label `state` (`connected`, `connecting`, `disconnected`).
    pub const SESSIONS: &str = "collector_sessions";
    /// Counter, label `result` (`ok`, `error`, `timeout`).
    pub const SESSION_CONNECTS: &str = "collector_session_connects_total";
    /// Counter: connect attempts refused locally during reconnect backoff.
    pub const SESSION_BACKOFF_SKIPS: &str = "collector_session_backoff_skips_total";
    /// Counter: Read requests sent (after MaxNodesPerRead chunking).
    pub const READ_REQUESTS: &str = "collector_read_requests_total";
    /// Counter, label `reason` (`interval`, `count`, `bytes`, `shutdown`).
    pub const BATCHES_FLUSHED: &str = "collector_batches_flushed_total";
    /// Histogram: records per flushed batch.
    pub const BATCH_RECORDS: &str = "collector_batch_records";
    /// Histogram: estimated bytes per flushed batch.
    pub const BATCH_BYTES: &str = "collector_batch_bytes";
    /// Gauge: records waiting between readers and the batcher.
    pub const QUEUE_RECORDS: &str = "collector_queue_records";
    /// Counter: records acknowledged by Kafka.
    pub const KAFKA_DELIVERED: &str = "collector_kafka_delivered_total";
    /// Counter: records whose delivery failed, label `reason`.
    pub const KAFKA_FAILED: &str = "collector_kafka_failed_total";
    /// Histogram: from producer enqueue to broker acknowledgement.
    pub const KAFKA_ACK_LATENCY: &str = "collector_kafka_ack_latency_seconds";
    /// Histogram: from the read to the broker acknowledgement.
    pub const SAMPLE_TO_ACK: &str = "collector_sample_to_ack_seconds";
    /// Gauge: records handed to the producer and not yet acknowledged.
    pub const KAFKA_IN_FLIGHT: &str = "collector_kafka_in_flight_records";
    /// Gauge: 1 when the Kafka cluster answered the last metadata probe.
    pub const KAFKA_UP: &str = "collector_kafka_up";
    /// Counter: producers replaced after the broker fenced them.
    pub const KAFKA_PRODUCER_RENEWED: &str = "collector_kafka_producer_renewed_total";
    /// Counter: times the producer queue was full (backpressure).
    pub const KAFKA_QUEUE_FULL: &str = "collector_kafka_queue_full_total";
    /// Counter: records written to the spill, label `reason`
    /// (`delivery_failed`, `kafka_down`).
    pub const RECORDS_SPILLED: &str = "collector_records_spilled_total";
    /// Counter: spilled records delivered by the replay.
    pub const RECORDS_REPLAYED: &str = "collector_records_replayed_total";
    /// Counter: records that could not be delivered and had nowhere to go.
    pub const RECORDS_UNDELIVERED: &str = "collector_records_undelivered_total";
    /// Gauge, labels `version`: always 1.
    pub const BUILD_INFO: &str = "collector_build_info";
}

/// Registers descriptions and units with the installed recorder. Call once
/// after installing it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(READS, "Device reads by result");
    describe_histogram!(READ_DURATION, Unit::Seconds, "Duration of one device read");
    describe_histogram!(
        SCHEDULE_LATENESS,
        Unit::Seconds,
        "Delay between a read's scheduled time and its start"
    );
    describe_counter!(TICKS, "Reads scheduled");
    describe_counter!(
        TICKS_SKIPPED,
        "Ticks skipped because the device's previous read had not finished"
    );
    describe_counter!(SAMPLES, "Samples read by quality");
    describe_gauge!(WORKER_PERMITS, "Configured worker permits");
    describe_gauge!(WORKER_PERMITS_IN_USE, "Worker permits held by reads");
    describe_gauge!(DEVICES, "Devices scheduled");
    describe_gauge!(SESSIONS, "Sessions by state");
    describe_counter!(SESSION_CONNECTS, "Session connect attempts by result");
    describe_counter!(
        SESSION_BACKOFF_SKIPS,
        "Reads failed fast while an endpoint is in reconnect backoff"
    );
    describe_counter!(READ_REQUESTS, "Read service requests sent");
    describe_counter!(BATCHES_FLUSHED, "Batches flushed by reason");
    describe_histogram!(BATCH_RECORDS, Unit::Count, "Records per batch");
    describe_histogram!(BATCH_BYTES, Unit::Bytes, "Estimated bytes per batch");
    describe_gauge!(QUEUE_RECORDS, "Records queued for the batcher");
    describe_counter!(KAFKA_DELIVERED, "Records acknowledged by Kafka");
    describe_counter!(KAFKA_FAILED, "Records whose Kafka delivery failed");
    describe_histogram!(
        KAFKA_ACK_LATENCY,
        Unit::Seconds,
        "Producer enqueue to broker acknowledgement"
    );
    describe_histogram!(
        SAMPLE_TO_ACK,
        Unit::Seconds,
        "Read to broker acknowledgement"
    );
    describe_gauge!(KAFKA_IN_FLIGHT, "Records enqueued and not yet acknowledged");
    describe_gauge!(KAFKA_UP, "1 when the last Kafka metadata probe succeeded");
    describe_counter!(
        KAFKA_QUEUE_FULL,
        "Producer queue full events (backpressure)"
    );
    describe_counter!(
        RECORDS_UNDELIVERED,
        "Records neither delivered nor spilled (lost)"
    );
    describe_counter!(RECORDS_SPILLED, "Records written to the spill");
    describe_counter!(RECORDS_REPLAYED, "Spilled records delivered by the replay");
    describe_gauge!(BUILD_INFO, "Build information");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    crate::spill::describe();
}

/// Counters kept in-process, readable without a metrics recorder.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) devices: AtomicU64,
    pub(crate) ticks: AtomicU64,
    pub(crate) ticks_skipped: AtomicU64,
    pub(crate) ticks_breaker_open: AtomicU64,
    pub(crate) reads_ok: AtomicU64,
    pub(crate) reads_failed: AtomicU64,
    pub(crate) samples: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) records_delivered: AtomicU64,
    pub(crate) records_failed: AtomicU64,
    pub(crate) records_spilled: AtomicU64,
    pub(crate) records_replayed: AtomicU64,
    pub(crate) records_undelivered: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Devices scheduled.
    pub devices: u64,
    /// Ticks fired.
    pub ticks: u64,
    /// Ticks skipped (previous read still running).
    pub ticks_skipped: u64,
    /// Ticks skipped because the device's breaker was open.
    pub ticks_breaker_open: u64,
    /// Reads that produced a record.
    pub reads_ok: u64,
    /// Reads that failed (no record).
    pub reads_failed: u64,
    /// Samples in successful reads.
    pub samples: u64,
    /// Batches flushed.
    pub batches: u64,
    /// Records acknowledged by the sink.
    pub records_delivered: u64,
    /// Records whose delivery failed (they were then spilled, or counted
    /// in `records_undelivered`).
    pub records_failed: u64,
    /// Records written to the spill (failed deliveries, or sent straight
    /// there while Kafka was down).
    pub records_spilled: u64,
    /// Spilled records delivered by the replay.
    pub records_replayed: u64,
    /// Records neither delivered nor spilled (no spill configured, or the
    /// spill failed): lost, and logged.
    pub records_undelivered: u64,
}

impl StatsSnapshot {
    /// Reads the schedule asked for: fired plus skipped ticks (for
    /// either reason).
    pub fn scheduled(&self) -> u64 {
        self.ticks + self.ticks_skipped + self.ticks_breaker_open
    }
}

impl Stats {
    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            devices: l(&self.devices),
            ticks: l(&self.ticks),
            ticks_skipped: l(&self.ticks_skipped),
            ticks_breaker_open: l(&self.ticks_breaker_open),
            reads_ok: l(&self.reads_ok),
            reads_failed: l(&self.reads_failed),
            samples: l(&self.samples),
            batches: l(&self.batches),
            records_delivered: l(&self.records_delivered),
            records_failed: l(&self.records_failed),
            records_spilled: l(&self.records_spilled),
            records_replayed: l(&self.records_replayed),
            records_undelivered: l(&self.records_undelivered),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

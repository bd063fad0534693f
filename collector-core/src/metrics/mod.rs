//! Metric names, kinds, units and descriptions in one table, and the
//! in-process counters ([`Stats`]).
//!
//! Metrics go through the `metrics` facade (the daemon installs a
//! Prometheus recorder; an embedder installs whatever it likes). Names
//! follow `collector_<name>_<unit>[_total]`; labels are fixed and low
//! cardinality: never a device id. The table below is the one place a
//! metric is declared: [`names`] (what code emits), [`ALL`] (what
//! [`describe`] registers) and `docs/metrics.md` (checked against [`ALL`]
//! by a test) all come from it.

mod stats;

pub use stats::{Stats, StatsSnapshot};

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (buckets, sum, count).
    Histogram,
}

impl Kind {
    /// The name `docs/metrics.md` and Prometheus use.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric the collector exports.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Its name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit, when it has one.
    pub unit: Option<metrics::Unit>,
    /// The description registered with the recorder (`# HELP`).
    pub help: &'static str,
}

macro_rules! unit {
    () => {
        None
    };
    ($unit:ident) => {
        Some(metrics::Unit::$unit)
    };
}

macro_rules! metric_table {
    ($( #[doc = $doc:literal] $id:ident: $kind:ident $(($unit:ident))? = $name:literal, $help:literal; )*) => {
        /// Every metric name (documented in `docs/metrics.md`).
        pub mod names {
            $( #[doc = $doc] pub const $id: &str = $name; )*
        }

        /// Every metric the collector (core and adapters) exports.
        pub const ALL: &[MetricDef] = &[
            $( MetricDef { name: $name, kind: Kind::$kind, unit: unit!($($unit)?), help: $help }, )*
        ];
    };
}

metric_table! {
    /// Device reads by result (`result`: ok, connect_error, refused, security_error, timeout, read_error, config_error).
    READS: Counter = "collector_reads_total", "Device reads by result (`result`: ok, connect_error, refused, security_error, timeout, read_error, config_error)";
    /// Duration of one device read (all chunks).
    READ_DURATION: Histogram(Seconds) = "collector_read_duration_seconds", "Duration of one device read (all chunks)";
    /// Delay between a read's scheduled time and its start.
    SCHEDULE_LATENESS: Histogram(Seconds) = "collector_schedule_lateness_seconds", "Delay between a read's scheduled time and its start (including a worker permit wait, and a reconnect when the session had to be opened)";
    /// Reads scheduled (ticks fired).
    TICKS: Counter = "collector_schedule_ticks_total", "Reads scheduled (ticks fired)";
    /// Ticks not read (`reason`: overrun, breaker_open).
    TICKS_SKIPPED: Counter = "collector_schedule_ticks_skipped_total", "Ticks not read (`reason`: overrun, breaker_open)";
    /// Devices per circuit-breaker state (`state`: closed, open, half_open).
    BREAKERS: Gauge = "collector_breakers", "Devices per circuit-breaker state (`state`: closed, open, half_open)";
    /// Circuit-breaker transitions (`to`: open, half_open, closed).
    BREAKER_TRANSITIONS: Counter = "collector_breaker_transitions_total", "Circuit-breaker transitions (`to`: open, half_open, closed)";
    /// Samples in successful reads by quality (`quality`: good, uncertain, bad).
    SAMPLES: Counter = "collector_samples_total", "Samples in successful reads by quality (`quality`: good, uncertain, bad)";
    /// Configured worker permits.
    WORKER_PERMITS: Gauge = "collector_worker_permits", "Configured worker permits";
    /// Worker permits held by running reads.
    WORKER_PERMITS_IN_USE: Gauge = "collector_worker_permits_in_use", "Worker permits held by running reads";
    /// Devices scheduled.
    DEVICES: Gauge = "collector_devices", "Devices scheduled";
    /// Changes applied to the running device set (`change`: added, removed, changed, rejected).
    DEVICE_CHANGES: Counter = "collector_device_changes_total", "Changes applied to the running device set (`change`: added, removed, changed, rejected)";
    /// Reloads of the device list (`result`: ok, failed).
    CONFIG_RELOADS: Counter = "collector_config_reloads_total", "Reloads of the device list (`result`: ok, failed)";
    /// Unix time of the last reload that was applied.
    CONFIG_LAST_RELOAD: Gauge = "collector_config_last_reload_success_timestamp_seconds", "Unix time of the last reload that was applied";
    /// This replica's shard index.
    SHARD_INDEX: Gauge = "collector_shard_index", "This replica's shard index";
    /// Shards in the fleet (as this replica last read it).
    SHARD_COUNT: Gauge = "collector_shard_count", "Shards in the fleet (as this replica last read it)";
    /// Changes of the shard count this replica has read since it started.
    SHARD_GENERATION: Gauge = "collector_shard_generation", "Changes of the shard count this replica has read since it started";
    /// Devices still read here until their handover grace ends (a resize moved them to another shard).
    SHARD_HANDOVERS: Gauge = "collector_shard_handovers", "Devices still read here until their handover grace ends (a resize moved them to another shard)";
    /// Whether the device registry answered its last query (1) or not (0); absent with `source: file`.
    REGISTRY_UP: Gauge = "collector_registry_up", "Whether the device registry answered its last query (1) or not (0); absent with `source: file`";
    /// Queries of the device registry for this shard (`result`: ok, failed).
    REGISTRY_POLLS: Counter = "collector_registry_polls_total", "Queries of the device registry for this shard (`result`: ok, failed)";
    /// Registry rows of this shard skipped because they are not a valid device entry (each version of a row counted once).
    REGISTRY_ROWS_REJECTED: Counter = "collector_registry_rows_rejected_total", "Registry rows of this shard skipped because they are not a valid device entry (each version of a row counted once)";
    /// Registry rows of this shard, as last read (valid or not, enabled or not).
    REGISTRY_ROWS: Gauge = "collector_registry_rows", "Registry rows of this shard, as last read (valid or not, enabled or not)";
    /// Unix time the registry last answered a query of this shard.
    REGISTRY_LAST_SYNC: Gauge = "collector_registry_last_sync_timestamp_seconds", "Unix time the registry last answered a query of this shard";
    /// Sessions by state (`state`: connected, connecting, disconnected).
    SESSIONS: Gauge = "collector_sessions", "Sessions by state (`state`: connected, connecting, disconnected)";
    /// Session connect attempts by result (`result`: ok, error, timeout).
    SESSION_CONNECTS: Counter = "collector_session_connects_total", "Session connect attempts by result (`result`: ok, error, timeout)";
    /// Sessions opened, by how (`how`: created, reactivated).
    SESSIONS_OPENED: Counter = "collector_sessions_opened_total", "Sessions opened, by how (`how`: created, reactivated)";
    /// Reactivations of a lost session the server refused (a new session was created instead).
    SESSION_REACTIVATIONS_REFUSED: Counter = "collector_session_reactivations_refused_total", "Reactivations of a lost session the server refused (a new session was created instead)";
    /// Sessions possibly left on a server until its session timeout (an estimate: closes that failed, sessions given up while their connection was down).
    SESSIONS_ABANDONED: Counter = "collector_sessions_abandoned_total", "Sessions possibly left on a server until its session timeout (an estimate: closes that failed, sessions given up while their connection was down)";
    /// Reads failed fast while an endpoint is in reconnect backoff.
    SESSION_BACKOFF_SKIPS: Counter = "collector_session_backoff_skips_total", "Reads failed fast while an endpoint is in reconnect backoff";
    /// Read service requests sent (after MaxNodesPerRead chunking).
    READ_REQUESTS: Counter = "collector_read_requests_total", "Read service requests sent (after MaxNodesPerRead chunking)";
    /// Gaps detected: stretches of scheduled reads that produced no record (device unreachable, collector stopped).
    BACKFILL_GAPS: Counter = "collector_backfill_gaps_total", "Gaps detected: stretches of scheduled reads that produced no record (device unreachable, collector stopped)";
    /// Gap windows backfilled from the server's history, by result (`result`: complete, partial).
    BACKFILL_WINDOWS: Counter = "collector_backfill_windows_total", "Gap windows backfilled from the server's history, by result (`result`: complete, partial)";
    /// Values delivered from the servers' history.
    BACKFILL_VALUES: Counter = "collector_backfill_values_total", "Values delivered from the servers' history";
    /// Gaps (or parts) that stay gaps, by reason (`reason`: beyond_max_window, no_history, failed, max_values, node_failed, stopped).
    BACKFILL_UNRECOVERABLE: Counter = "collector_backfill_unrecoverable_total", "Gaps (or parts) that stay gaps, by reason (`reason`: beyond_max_window, no_history, failed, max_values, node_failed, stopped)";
    /// Time from the end of a gap to the end of its backfill.
    BACKFILL_LAG: Histogram(Seconds) = "collector_backfill_lag_seconds", "Time from the end of a gap to the end of its backfill";
    /// Subscriptions by state (`state`: active, down).
    SUBSCRIPTIONS: Gauge = "collector_subscriptions", "Subscriptions by state (`state`: active, down)";
    /// Publish responses that carried data changes.
    SUBSCRIPTION_NOTIFICATIONS: Counter = "collector_subscription_notifications_total", "Publish responses that carried data changes";
    /// Keep-alive publish responses (no data; they prove the subscription alive).
    SUBSCRIPTION_KEEPALIVES: Counter = "collector_subscription_keepalives_total", "Keep-alive publish responses (no data; they prove the subscription alive)";
    /// Subscriptions set up again, by cause (`cause`: silent, status_change, lost_on_server, new_session, transferred).
    SUBSCRIPTION_RECREATIONS: Counter = "collector_subscription_recreations_total", "Subscriptions set up again, by cause (`cause`: silent, status_change, lost_on_server, new_session, transferred)";
    /// Samples of subscriptions dropped because a device's queue and overflow were full (its records were not taken fast enough).
    SUBSCRIPTION_QUEUE_OVERFLOWS: Counter = "collector_subscription_queue_overflows_total", "Samples of subscriptions dropped because a device's queue and overflow were full (its records were not taken fast enough)";
    /// Monitored items the server refused (unknown node, filter not allowed), reported per node as a Bad sample.
    MONITORED_ITEM_FAILURES: Counter = "collector_monitored_item_failures_total", "Monitored items the server refused (unknown node, filter not allowed), reported per node as a Bad sample";
    /// Batches flushed by reason (`reason`: interval, count, bytes, shutdown).
    BATCHES_FLUSHED: Counter = "collector_batches_flushed_total", "Batches flushed by reason (`reason`: interval, count, bytes, shutdown)";
    /// Records per flushed batch.
    BATCH_RECORDS: Histogram(Count) = "collector_batch_records", "Records per flushed batch";
    /// Estimated bytes per flushed batch.
    BATCH_BYTES: Histogram(Bytes) = "collector_batch_bytes", "Estimated bytes per flushed batch";
    /// Records waiting between readers and the batcher.
    QUEUE_RECORDS: Gauge = "collector_queue_records", "Records waiting between readers and the batcher";
    /// Records acknowledged by Kafka.
    KAFKA_DELIVERED: Counter = "collector_kafka_delivered_total", "Records acknowledged by Kafka";
    /// Records whose Kafka delivery failed, by `reason`.
    KAFKA_FAILED: Counter = "collector_kafka_failed_total", "Records whose Kafka delivery failed, by `reason`";
    /// Producer enqueue to broker acknowledgement.
    KAFKA_ACK_LATENCY: Histogram(Seconds) = "collector_kafka_ack_latency_seconds", "Producer enqueue to broker acknowledgement";
    /// Read to broker acknowledgement.
    SAMPLE_TO_ACK: Histogram(Seconds) = "collector_sample_to_ack_seconds", "Read to broker acknowledgement";
    /// Records enqueued and not yet acknowledged.
    KAFKA_IN_FLIGHT: Gauge = "collector_kafka_in_flight_records", "Records enqueued and not yet acknowledged";
    /// 1 when the last Kafka metadata probe succeeded.
    KAFKA_UP: Gauge = "collector_kafka_up", "1 when the last Kafka metadata probe succeeded";
    /// Producers replaced after the broker fenced them.
    KAFKA_PRODUCER_RENEWED: Counter = "collector_kafka_producer_renewed_total", "Producers replaced after the broker fenced them";
    /// Producer queue full events (backpressure).
    KAFKA_QUEUE_FULL: Counter = "collector_kafka_queue_full_total", "Producer queue full events (backpressure)";
    /// Records written to the spill (`reason`: delivery_failed, kafka_down).
    RECORDS_SPILLED: Counter = "collector_records_spilled_total", "Records written to the spill (`reason`: delivery_failed, kafka_down)";
    /// Spilled records delivered by the replay.
    RECORDS_REPLAYED: Counter = "collector_records_replayed_total", "Spilled records delivered by the replay";
    /// Records neither delivered nor spilled (lost).
    RECORDS_UNDELIVERED: Counter = "collector_records_undelivered_total", "Records neither delivered nor spilled (lost)";
    /// Bytes the spill occupies on disk.
    SPILL_BYTES: Gauge(Bytes) = "collector_spill_bytes", "Bytes the spill occupies on disk";
    /// Records waiting in the spill.
    SPILL_RECORDS: Gauge = "collector_spill_records", "Records waiting in the spill";
    /// Batches waiting in the spill.
    SPILL_BATCHES: Gauge = "collector_spill_batches", "Batches waiting in the spill";
    /// Batches appended (durably) to the spill.
    SPILL_BATCHES_WRITTEN: Counter = "collector_spill_batches_written_total", "Batches appended (durably) to the spill";
    /// Spilled batches replayed and deleted.
    SPILL_BATCHES_REPLAYED: Counter = "collector_spill_batches_replayed_total", "Spilled batches replayed and deleted";
    /// Spilled records dropped by the TTL.
    SPILL_EXPIRED: Counter = "collector_spill_expired_total", "Spilled records dropped by the TTL";
    /// Spilled records dropped by the size cap.
    SPILL_EVICTED: Counter = "collector_spill_evicted_total", "Spilled records dropped by the size cap";
    /// Spilled batches dropped for a bad checksum.
    SPILL_CORRUPT: Counter = "collector_spill_corrupt_batches_total", "Spilled batches dropped for a bad checksum";
    /// Age of the oldest batch in the spill (0 when empty).
    SPILL_OLDEST_AGE: Gauge(Seconds) = "collector_spill_oldest_age_seconds", "Age of the oldest batch in the spill (0 when empty)";
    /// Spilled batches whose replay failed and that were set aside, with backoff, so the batches behind them go on.
    REPLAY_DEFERRED: Counter = "collector_replay_deferred_batches_total", "Spilled batches whose replay failed and that were set aside, with backoff, so the batches behind them go on";
    /// Records the sink refused for good, moved to the dead letters (`cause`: too_large, not_authorized, invalid, unknown_topic, rejected).
    RECORDS_DEAD_LETTERED: Counter = "collector_records_dead_lettered_total", "Records the sink refused for good, moved to the dead letters (`cause`: too_large, not_authorized, invalid, unknown_topic, rejected)";
    /// Bytes the dead letters occupy on disk.
    DEADLETTER_BYTES: Gauge(Bytes) = "collector_deadletter_bytes", "Bytes the dead letters occupy on disk";
    /// Records waiting in the dead letters.
    DEADLETTER_RECORDS: Gauge = "collector_deadletter_records", "Records waiting in the dead letters";
    /// Batches waiting in the dead letters.
    DEADLETTER_BATCHES: Gauge = "collector_deadletter_batches", "Batches waiting in the dead letters";
    /// Batches appended (durably) to the dead letters.
    DEADLETTER_BATCHES_WRITTEN: Counter = "collector_deadletter_batches_written_total", "Batches appended (durably) to the dead letters";
    /// Dead-lettered records dropped by the TTL.
    DEADLETTER_EXPIRED: Counter = "collector_deadletter_expired_total", "Dead-lettered records dropped by the TTL";
    /// Dead-lettered records dropped by the size cap.
    DEADLETTER_EVICTED: Counter = "collector_deadletter_evicted_total", "Dead-lettered records dropped by the size cap";
    /// Dead-letter batches dropped for a bad checksum.
    DEADLETTER_CORRUPT: Counter = "collector_deadletter_corrupt_batches_total", "Dead-letter batches dropped for a bad checksum";
    /// Age of the oldest batch in the dead letters (0 when empty).
    DEADLETTER_OLDEST_AGE: Gauge(Seconds) = "collector_deadletter_oldest_age_seconds", "Age of the oldest batch in the dead letters (0 when empty)";
    /// Build information (`version`); always 1.
    BUILD_INFO: Gauge = "collector_build_info", "Build information (`version`); always 1";
}

/// Registers every metric's description and unit with the installed
/// recorder, and sets `collector_build_info`. Call once after installing it.
pub fn describe() {
    for m in ALL {
        match (m.kind, m.unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, m.help),
            (Kind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, m.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, m.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Every counter exported from the start, at 0 (each documented label
    // value too): an alert on `increase()` sees the first event of a new
    // process, and a dashboard's sum has a series to add to.
    for m in ALL.iter().filter(|m| m.kind == Kind::Counter) {
        match labels_of(m.help) {
            Some((label, values)) => {
                for v in values {
                    metrics::counter!(m.name, label => v).increment(0);
                }
            }
            None if !m.help.contains("by `") => metrics::counter!(m.name).increment(0),
            None => {}
        }
    }
}

/// The label and its values a help text documents as ``(`label`: a, b)``.
fn labels_of(help: &'static str) -> Option<(&'static str, Vec<&'static str>)> {
    let rest = &help[help.find("(`")? + 2..];
    let (label, rest) = rest.split_once("`: ")?;
    let values = &rest[..rest.find(')')?];
    Some((label, values.split(", ").map(str::trim).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_label_values_are_read_from_the_help() {
        let reloads = ALL
            .iter()
            .find(|m| m.name == names::CONFIG_RELOADS)
            .map(|m| m.help);
        assert_eq!(
            reloads.and_then(labels_of),
            Some(("result", vec!["ok", "failed"]))
        );
        assert_eq!(labels_of("Records acknowledged by Kafka"), None);
        // Every labelled counter lists its values, or says `by `label``
        // (values open-ended: not exported before their first event).
        for m in ALL.iter().filter(|m| m.kind == Kind::Counter) {
            if let Some((label, values)) = labels_of(m.help) {
                assert!(!label.is_empty() && !values.is_empty(), "{}", m.name);
                assert!(
                    label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: label {label:?}",
                    m.name
                );
                assert!(
                    values.iter().all(|v| v
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())),
                    "{}: {values:?}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_follow_the_convention() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert!(m.name.starts_with("collector_"), "{}", m.name);
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == Kind::Counter,
                "{}: counters and only counters end in _total",
                m.name
            );
        }
    }
}

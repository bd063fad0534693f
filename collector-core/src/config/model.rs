//! The configuration model: one serde struct per section, every field
//! documented with its default. `config/default.yaml` in the repository
//! shows every field with its default value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `collector:` — who this collector is and where it keeps state.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// Written as `collector_id` in every record. Default: `$HOSTNAME`
    /// (the pod name in a StatefulSet), else `opc-collector`.
    pub id: Option<String>,
    /// Directory for state that must survive restarts: the sequence-number
    /// floor and (unless `spill.dir` says otherwise) the spill. Default:
    /// none; then sequence numbers rely on the wall clock alone (see
    /// `docs/record-format.md`) and there is no spill.
    pub state_dir: Option<PathBuf>,
    /// On SIGTERM, how long in-memory data may take to be delivered or
    /// spilled before the process exits. Default `25s` (under Kubernetes'
    /// default 30 s termination grace period).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for CollectorSection {
    fn default() -> Self {
        Self {
            id: None,
            state_dir: None,
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// `spill:` — the disk buffer that keeps records Kafka could not take.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpillSection {
    /// Spill directory. Default: `<collector.state_dir>/spill`; with
    /// neither set there is no spill (undeliverable records are counted
    /// in `collector_records_undelivered_total` and logged).
    pub dir: Option<PathBuf>,
    /// Size cap on disk (bytes or `10GiB`); above it the oldest data is
    /// dropped, counted and logged. Default `10GiB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Spilled data older than this is dropped, counted and logged.
    /// Default `24h`.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// `segment_log` (default: a segmented append-only log; see
    /// `docs/spill.md` for why) or `sled`.
    pub backend: crate::spill::SpillBackend,
    /// Segment size of the segment log (the unit of space reclamation).
    /// Default `64MiB`.
    #[serde(deserialize_with = "byte_size")]
    pub segment_bytes: u64,
    /// Replay pace: spilled batches sent per second while Kafka is
    /// healthy, so live traffic keeps its latency. Default 20.
    pub replay_batches_per_second: u32,
}

impl Default for SpillSection {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 10 << 30,
            ttl: Duration::from_secs(24 * 3600),
            backend: crate::spill::SpillBackend::SegmentLog,
            segment_bytes: 64 << 20,
            replay_batches_per_second: 20,
        }
    }
}

/// `schedule:` — when devices are read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Read interval for devices without their own. Default `10s`.
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
        }
    }
}

/// `workers:` — how many reads may run at once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Concurrent reads (semaphore permits). A tick that finds no permit
    /// waits for one (backpressure); its lateness is measured. Default 100.
    pub permits: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { permits: 100 }
    }
}

/// `session:` — how device sessions are opened and read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Time allowed to open a session (TCP, secure channel, session
    /// activation, namespace and limit discovery). Default `10s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one read request. Default `5s`.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// Session keep-alive period; a dead-but-open connection is detected
    /// after `max_failed_keep_alives` missed ones. Default `30s`.
    #[serde(with = "duration")]
    pub keep_alive_interval: Duration,
    /// Failed keep-alives before a session is dropped. Default 2.
    pub max_failed_keep_alives: u32,
    /// Upper bound on nodes per Read request; the server's own
    /// MaxNodesPerRead (read at connect) is honoured when smaller. 0 = only
    /// the server's limit. Default 1000.
    pub max_nodes_per_read: u32,
    /// Fleet-wide cap on session attempts per second (all devices
    /// together), so a mass reconnect never storms the network. Default 50.
    pub max_connects_per_second: u32,
    /// Initial delay before reconnecting a failed endpoint; doubles per
    /// failure, with jitter. Default `1s`.
    #[serde(with = "duration")]
    pub reconnect_initial: Duration,
    /// Upper bound of the reconnect delay. Default `60s`.
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// OPC UA application name presented to servers. Default `opc-collector`.
    pub application_name: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(30),
            max_failed_keep_alives: 2,
            max_nodes_per_read: 1000,
            max_connects_per_second: 50,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            application_name: "opc-collector".to_string(),
        }
    }
}

/// `breaker:` — the per-device circuit breaker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed reads that open the breaker. Default 3.
    pub failure_threshold: u32,
    /// First cool-down before a probe read; doubles per consecutive trip
    /// (with +-20 % jitter). Default `10s`.
    #[serde(with = "duration")]
    pub cooldown_initial: Duration,
    /// Longest cool-down. Default `5m`.
    #[serde(with = "duration")]
    pub cooldown_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown_initial: Duration::from_secs(10),
            cooldown_max: Duration::from_secs(300),
        }
    }
}

/// `batch:` — how records are grouped before delivery.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Flush at least this often. Default `10s`.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Flush when this many records are buffered. Default 10000.
    pub max_records: usize,
    /// Flush when the buffered records' estimated size reaches this
    /// (bytes, or `256MiB`-style). Default `256MiB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Batches being delivered at once; when all are in flight the
    /// batcher waits (backpressure on readers). Default 4.
    pub max_in_flight: usize,
    /// Records queued between readers and the batcher. Default 10000.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            max_records: 10_000,
            max_bytes: 256 * 1024 * 1024,
            max_in_flight: 4,
            queue_capacity: 10_000,
        }
    }
}

/// `kafka:` — where records go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default `localhost:9092`.
    pub brokers: String,
    /// Topic for records. Default `opc-samples`.
    pub topic: String,
    /// `compression.codec`. Default `snappy`.
    pub compression: String,
    /// `linger.ms`: how long the producer waits to fill a request. Default 20.
    pub linger_ms: u32,
    /// `message.timeout.ms`: when an undelivered record is declared
    /// failed and spilled. Also bounds how long a batch already handed to
    /// the producer waits when Kafka goes down (new batches go straight to
    /// the spill once the outage is detected). Default `30s`.
    #[serde(with = "duration")]
    pub message_timeout: Duration,
    /// `queue.buffering.max.messages`: producer queue bound; a full queue
    /// is backpressure, not loss. Default 200000.
    pub queue_max_messages: u32,
    /// `queue.buffering.max.kbytes`. Default 262144 (256 MiB).
    pub queue_max_kbytes: u32,
    /// TLS to the brokers. Default: none (plaintext).
    pub tls: Option<super::security::KafkaTls>,
    /// SASL authentication. Default: none.
    pub sasl: Option<super::security::KafkaSasl>,
    /// Any other librdkafka property, passed through verbatim; these win
    /// over the settings above (but may not repeat what `tls`/`sasl` set).
    /// Values are never logged.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".to_string(),
            topic: "opc-samples".to_string(),
            compression: "snappy".to_string(),
            linger_ms: 20,
            message_timeout: Duration::from_secs(30),
            queue_max_messages: 200_000,
            queue_max_kbytes: 262_144,
            tls: None,
            sasl: None,
            properties: BTreeMap::new(),
        }
    }
}

/// `http:` — the daemon's metrics and health server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz`, `/startupz`.
    /// Default `0.0.0.0:9090`.
    pub addr: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// One entry of `devices:` as written; validated into [`super::Device`].
/// Unknown keys are reported by the loader (all of them, with their lines)
/// rather than by serde, which would stop at the first.
#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct RawDevice {
    pub id: Option<String>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default, with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub security: Option<super::security::RawDeviceSecurity>,
}

impl RawDevice {
    /// The keys a device entry may have.
    pub(crate) const FIELDS: &'static [&'static str] =
        &["id", "endpoint", "nodes", "interval", "security"];
}

/// Durations as human-readable strings: `500ms`, `10s`, `1m30s`.
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub(crate) fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. `500ms`, `10s`, `1m`"))
    }
}

pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::duration::parse(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Byte sizes as a number of bytes or with a unit: `512KiB`, `256MiB`, `10GiB`, `1GB`.
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_byte_size(&s).map_err(serde::de::Error::custom),
    }
}

pub(crate) fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}; write e.g. `256MiB` or a number of bytes"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_byte_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_byte_size("1000").unwrap(), 1000);
        assert!(parse_byte_size("12 parsecs").is_err());
    }
}

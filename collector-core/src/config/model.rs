//! The configuration model: one serde struct per section, every field
//! documented with its default. `config/default.yaml` in the repository
//! shows every field with its default value.

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

/// `dead_letters:` — where records the sink refused for good are kept
/// (too large, not authorised, invalid: see `docs/delivery.md`) until an
/// operator fixes the cause and runs `opc-collector deadletter requeue`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSection {
    /// Directory. Default: `<collector.state_dir>/dead-letters`, else
    /// `<spill.dir>.dead-letters`; with neither there are no dead letters
    /// (refused records are counted as undelivered and logged).
    pub dir: Option<PathBuf>,
    /// Size cap on disk; above it the oldest dead letters are dropped,
    /// counted (`collector_deadletter_evicted_total`) and logged. Default
    /// `1GiB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Dead letters older than this are dropped, counted
    /// (`collector_deadletter_expired_total`) and logged. Default `7d`
    /// (a week for someone to look).
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for DeadLetterSection {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(7 * 24 * 3600),
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
    /// Phases per interval: each device reads at one of this many evenly
    /// spaced offsets (a hash of its id). Devices on the same phase read in
    /// the same timer tick and share the runtime's wake-ups; more phases
    /// make smaller bursts (less lateness on a large fleet with few cores),
    /// fewer save CPU. Default (`None`): one phase per
    /// [`READS_PER_PHASE`] devices the collector starts with, at least
    /// [`MIN_PHASE_SLOTS`] (see [`ScheduleConfig::phase_slots_for`]).
    pub phase_slots: Option<u32>,
}

/// Devices per phase the default `phase_slots` aims at: at 2,000 devices
/// x 50 tags on 2 cores, 20 reads per tick halved the CPU per read against
/// one each, and kept schedule lateness p99 within 5 ms; 200 per tick
/// saved a little more CPU but reached 25 ms (BENCHMARKS.md).
pub const READS_PER_PHASE: usize = 20;

/// The fewest phases the default gives (every 100 ms at a 10 s interval).
pub const MIN_PHASE_SLOTS: u32 = 100;

impl ScheduleConfig {
    /// The phases per interval for a collector starting with `devices`
    /// devices: `phase_slots` if set, else one phase per
    /// [`READS_PER_PHASE`] devices, at least [`MIN_PHASE_SLOTS`] (2,000
    /// devices: 100; 19,000: 950). Fixed for the collector's run: a device
    /// added later takes a phase among these.
    pub fn phase_slots_for(&self, devices: usize) -> u32 {
        self.phase_slots.unwrap_or_else(|| {
            u32::try_from(devices.div_ceil(READS_PER_PHASE))
                .unwrap_or(u32::MAX)
                .max(MIN_PHASE_SLOTS)
        })
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            phase_slots: None,
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

/// `breaker:` — the per-device circuit breaker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive costly failed reads (timeouts, server refusals, security
    /// or configuration errors) that open the breaker; cheap ones (refused
    /// or reset connections) never do. Default 3.
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

/// `shard:` — this replica's part of a fleet (docs/fleet.md): it reads the
/// devices whose id hashes to its index among `count` (jump consistent
/// hash, `collector_core::shard`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShardSection {
    /// This replica's shard, 0-based. Default: from the environment
    /// (`OPC_COLLECTOR_SHARD_INDEX`, else the `-N` ordinal suffix of
    /// `HOSTNAME`, as in a StatefulSet), else 0.
    pub index: Option<u32>,
    /// Shards (replicas) in the fleet. Read again with the device list, so
    /// a ConfigMap change resizes the fleet without restarting pods.
    /// Default 1 (one replica reads every device).
    pub count: u32,
    /// How long this replica still reads a device that a new `count` moved
    /// to another replica, after it read the new count (make-before-break:
    /// the gaining replica starts at once, so for a while both read it).
    /// Default: two of the device's intervals plus the 2 s file check
    /// period. Set it above the time your replicas take to see a ConfigMap
    /// change (docs/fleet.md).
    #[serde(with = "opt_duration")]
    pub handover_grace: Option<Duration>,
}

impl Default for ShardSection {
    fn default() -> Self {
        Self {
            index: None,
            count: 1,
            handover_grace: None,
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
    #[serde(default, with = "opt_duration")]
    pub interval: Option<Duration>,
}

impl RawDevice {
    /// The keys of a device entry the core owns; the protocol adapter owns
    /// the others it declares ([`super::ProtocolConfig::device_keys`]).
    pub(crate) const FIELDS: &'static [&'static str] = &["id", "endpoint", "interval"];
}

/// Durations as human-readable strings: `500ms`, `10s`, `1m30s`, for
/// `#[serde(with = "duration")]` (adapters use it for their own settings).
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes a duration written as `500ms`, `10s`, `1m`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub(crate) fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. `500ms`, `10s`, `1m`"))
    }
}

/// `#[serde(default, with = "opt_duration")]`: an optional duration
/// (absent or null: `None`), for adapters' settings too.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes an optional duration written as `500ms`, `10s`, `1m`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::duration::parse(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Byte sizes as a number of bytes or with a unit: `512KiB`, `256MiB`,
/// `10GiB`, `1GB`. For `#[serde(deserialize_with = "byte_size")]`, also in
/// adapters' sections.
pub fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
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

/// [`byte_size`] for an optional field (absent: `None`).
pub(crate) fn opt_byte_size<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

/// A byte size as written in configuration (`256MiB`, `1GB`, `4096`).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
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

//! [`Stats`]: a handful of atomics the daemon's summary line, tests and
//! embedders read without a metrics recorder.

use std::sync::atomic::{AtomicU64, Ordering};

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
    pub(crate) records_dead_lettered: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// Records whose delivery failed: then spilled, dead-lettered (refused
    /// for good, or too large to send), or counted in
    /// `records_undelivered`. Like the other record counters, it counts
    /// messages: a read split into parts counts once per part.
    pub records_failed: u64,
    /// Records written to the spill (failed deliveries, or sent straight
    /// there while Kafka was down).
    pub records_spilled: u64,
    /// Spilled records delivered by the replay.
    pub records_replayed: u64,
    /// Records neither delivered nor spilled (no spill configured, or the
    /// spill failed): lost, and logged.
    pub records_undelivered: u64,
    /// Records the sink refused for good, kept in the dead letters.
    pub records_dead_lettered: u64,
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
            records_dead_lettered: l(&self.records_dead_lettered),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }
}

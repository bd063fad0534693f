//! What happens to records after the batcher: delivered, failed, spilled,
//! replayed, lost.

use crate::metrics::{names, Stats};
use crate::record::Record;
use crate::sink::RejectCause;
use crate::spill::SpillId;

/// The sink acknowledged `count` records of a live batch.
pub(crate) struct RecordsDelivered<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
}

impl RecordsDelivered<'_> {
    pub(crate) fn emit(self) {
        Stats::add(&self.stats.records_delivered, self.count as u64);
    }
}

/// The sink could not deliver `count` records of a live batch; they go to
/// the spill next (or are lost, which [`RecordsLost`] records).
pub(crate) struct DeliveryFailed<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
    pub(crate) error: Option<String>,
    pub(crate) flushed_by: &'static str,
}

impl DeliveryFailed<'_> {
    pub(crate) fn emit(self) {
        Stats::add(&self.stats.records_failed, self.count as u64);
        tracing::warn!(
            records = self.count,
            error = self.error,
            flushed_by = self.flushed_by,
            "delivery failed; spilling"
        );
    }
}

/// Records that can never be delivered (the sink could not encode them).
pub(crate) struct RecordsUnencodable<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
}

impl RecordsUnencodable<'_> {
    pub(crate) fn emit(self) {
        Stats::add(&self.stats.records_failed, self.count as u64);
    }
}

/// Why records were spilled (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SpillReason {
    /// Their delivery failed.
    DeliveryFailed,
    /// The sink was known to be down: not attempted.
    SinkDown,
}

impl SpillReason {
    fn label(self) -> &'static str {
        match self {
            SpillReason::DeliveryFailed => "delivery_failed",
            SpillReason::SinkDown => "kafka_down",
        }
    }
}

/// `count` records were written (durably) to the spill.
pub(crate) struct RecordsSpilled<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
    pub(crate) reason: SpillReason,
    pub(crate) spill_id: SpillId,
}

impl RecordsSpilled<'_> {
    pub(crate) fn emit(self) {
        let n = self.count as u64;
        Stats::add(&self.stats.records_spilled, n);
        metrics::counter!(names::RECORDS_SPILLED, "reason" => self.reason.label()).increment(n);
        tracing::debug!(
            records = self.count,
            spill_id = %self.spill_id,
            reason = self.reason.label(),
            "records spilled"
        );
    }
}

/// `count` records were neither delivered nor spilled: lost, counted and
/// logged (never silently).
pub(crate) struct RecordsLost<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
    /// The first lost record, when known (for the log).
    pub(crate) first: Option<&'a Record>,
    pub(crate) why: &'a str,
}

impl RecordsLost<'_> {
    pub(crate) fn emit(self) {
        let n = self.count as u64;
        Stats::add(&self.stats.records_undelivered, n);
        metrics::counter!(names::RECORDS_UNDELIVERED).increment(n);
        tracing::error!(
            records = self.count,
            first_device = self.first.map(|r| &*r.device_id),
            first_seq = self.first.map(|r| r.seq),
            why = self.why,
            "records lost: neither delivered nor spilled"
        );
    }
}

/// A spilled batch of `count` records was delivered by the replay (and is
/// deleted from the spill).
pub(crate) struct BatchReplayed<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
}

impl BatchReplayed<'_> {
    pub(crate) fn emit(self) {
        Stats::add(&self.stats.records_replayed, self.count as u64);
        metrics::counter!(names::RECORDS_REPLAYED).increment(self.count as u64);
        metrics::counter!(names::SPILL_BATCHES_REPLAYED).increment(1);
    }
}

/// `count` records the sink refused for good were stored in the dead
/// letters.
pub(crate) struct RecordsDeadLettered<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) count: usize,
    pub(crate) cause: RejectCause,
    /// The first record's device.
    pub(crate) device: Option<&'a str>,
    /// How many devices the records belong to.
    pub(crate) devices: usize,
    /// What the sink said.
    pub(crate) detail: &'a str,
}

impl RecordsDeadLettered<'_> {
    pub(crate) fn emit(self) {
        let n = self.count as u64;
        Stats::add(&self.stats.records_dead_lettered, n);
        metrics::counter!(names::RECORDS_DEAD_LETTERED, "cause" => self.cause.label()).increment(n);
        tracing::error!(
            records = self.count,
            device = self.device,
            devices = self.devices,
            cause = self.cause.label(),
            detail = self.detail,
            "records refused by the sink for good: kept in the dead letters (fix the cause, then `opc-collector deadletter requeue`)"
        );
    }
}

/// A replayed batch failed (transiently) and was set aside, with backoff,
/// so the batches behind it go on.
pub(crate) struct ReplayDeferred {
    pub(crate) spill_id: SpillId,
    pub(crate) failed: usize,
    pub(crate) attempts: u32,
    pub(crate) retry_in: std::time::Duration,
    pub(crate) error: Option<String>,
}

impl ReplayDeferred {
    pub(crate) fn emit(self) {
        metrics::counter!(names::REPLAY_DEFERRED).increment(1);
        tracing::warn!(
            spill_id = %self.spill_id,
            failed = self.failed,
            attempts = self.attempts,
            retry_in = ?self.retry_in,
            error = self.error,
            "replay of a spilled batch failed; set aside, the batches behind it go on"
        );
    }
}

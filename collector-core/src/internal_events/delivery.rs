//! What happens to records after the batcher: delivered, failed, spilled,
//! replayed, lost.

use crate::metrics::{names, Stats};
use crate::record::Record;
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

/// A replayed batch was not (wholly) delivered; it stays in the spill and
/// is retried later.
pub(crate) struct ReplayFailed {
    pub(crate) spill_id: SpillId,
    pub(crate) failed: usize,
    pub(crate) error: Option<String>,
}

impl ReplayFailed {
    pub(crate) fn emit(self) {
        tracing::warn!(
            spill_id = %self.spill_id,
            failed = self.failed,
            error = self.error,
            "replay delivery failed; will retry"
        );
    }
}

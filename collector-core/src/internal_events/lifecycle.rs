//! The collector's own life: started, shutting down, grace exceeded,
//! stopped. `CollectorStopped` is the final totals line that operators,
//! tests and the bench read (field names are part of the log contract;
//! `collector-testkit`'s `StoppedLine` deserializes them).

use std::time::Duration;

use crate::metrics::StatsSnapshot;

/// Every device of the initial set is scheduled (or was rejected).
pub(crate) struct CollectorStarted<'a> {
    pub(crate) devices: usize,
    pub(crate) rejected: usize,
    pub(crate) collector_id: &'a str,
}

impl CollectorStarted<'_> {
    pub(crate) fn emit(self) {
        tracing::info!(
            devices = self.devices,
            rejected = self.rejected,
            collector_id = %self.collector_id,
            "collector started"
        );
    }
}

/// Shutdown began: schedules stop, in-flight reads finish.
pub(crate) struct ShutdownStarted {
    pub(crate) grace: Duration,
}

impl ShutdownStarted {
    pub(crate) fn emit(self) {
        tracing::info!(
            grace = ?self.grace,
            "shutting down: stopping schedules, finishing in-flight reads"
        );
    }
}

/// The drain did not finish within the grace: what was read and neither
/// acknowledged nor spilled is lost.
pub(crate) struct ShutdownGraceExceeded {
    pub(crate) grace: Duration,
    pub(crate) totals: StatsSnapshot,
}

impl ShutdownGraceExceeded {
    pub(crate) fn emit(self) {
        let s = self.totals;
        tracing::error!(
            grace = ?self.grace,
            read = s.reads_ok,
            delivered = s.records_delivered,
            spilled = s.records_spilled,
            "shutdown grace exceeded; records read but neither acknowledged nor spilled are lost"
        );
    }
}

/// The collector stopped; its final totals.
pub(crate) struct CollectorStopped {
    pub(crate) totals: StatsSnapshot,
}

impl CollectorStopped {
    pub(crate) fn emit(self) {
        let s = self.totals;
        tracing::info!(
            reads_ok = s.reads_ok,
            reads_failed = s.reads_failed,
            delivered = s.records_delivered,
            failed = s.records_failed,
            spilled = s.records_spilled,
            replayed = s.records_replayed,
            undelivered = s.records_undelivered,
            dead_lettered = s.records_dead_lettered,
            "collector stopped"
        );
    }
}

//! What happens on one device's schedule: ticks fired and skipped, reads
//! that succeeded or failed, breaker transitions. Each event updates the
//! metric, the in-process counters and the device's `/devices` entry
//! together.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};
use parking_lot::Mutex;

use crate::breaker::{Breaker, BreakerState};
use crate::device_status::DeviceStatus;
use crate::error::ReadError;
use crate::last_reads::Watermarks;
use crate::metrics::{names, Stats};
use crate::protocol::SessionState;
use crate::record::{Quality, Sample};

/// One device's recording handles: metric handles registered once (no
/// lookups per read), the pipeline's counters and the device's board entry.
pub(crate) struct DeviceTelemetry {
    pub(crate) device: Arc<str>,
    stats: Arc<Stats>,
    status: Arc<Mutex<DeviceStatus>>,
    /// Where a success is reported for the last reads kept in `state_dir`.
    watermarks: Arc<Watermarks>,
    ok: Counter,
    ticks: Counter,
    skipped: Counter,
    skipped_open: Counter,
    lateness: Histogram,
    duration: Histogram,
    good: Counter,
    uncertain: Counter,
    bad: Counter,
}

impl DeviceTelemetry {
    pub(crate) fn new(
        device: Arc<str>,
        stats: Arc<Stats>,
        status: Arc<Mutex<DeviceStatus>>,
        watermarks: Arc<Watermarks>,
    ) -> Self {
        Self {
            device,
            stats,
            status,
            watermarks,
            ok: metrics::counter!(names::READS, "result" => "ok"),
            ticks: metrics::counter!(names::TICKS),
            skipped: metrics::counter!(names::TICKS_SKIPPED, "reason" => "overrun"),
            skipped_open: metrics::counter!(names::TICKS_SKIPPED, "reason" => "breaker_open"),
            lateness: metrics::histogram!(names::SCHEDULE_LATENESS),
            duration: metrics::histogram!(names::READ_DURATION),
            good: metrics::counter!(names::SAMPLES, "quality" => "good"),
            uncertain: metrics::counter!(names::SAMPLES, "quality" => "uncertain"),
            bad: metrics::counter!(names::SAMPLES, "quality" => "bad"),
        }
    }
}

/// A tick fired: a read is about to wait for its permit.
pub(crate) struct TickFired<'a> {
    pub(crate) device: &'a DeviceTelemetry,
}

impl TickFired<'_> {
    pub(crate) fn emit(self) {
        self.device.ticks.increment(1);
        Stats::add(&self.device.stats.ticks, 1);
    }
}

/// Ticks not read.
pub(crate) enum TickSkipped<'a> {
    /// The previous read overran: `count` grid points passed meanwhile.
    Overrun {
        device: &'a DeviceTelemetry,
        count: u64,
    },
    /// The breaker is open.
    BreakerOpen { device: &'a DeviceTelemetry },
}

impl TickSkipped<'_> {
    pub(crate) fn emit(self) {
        match self {
            TickSkipped::Overrun { device, count } => {
                device.skipped.increment(count);
                Stats::add(&device.stats.ticks_skipped, count);
            }
            TickSkipped::BreakerOpen { device } => {
                device.skipped_open.increment(1);
                Stats::add(&device.stats.ticks_breaker_open, 1);
                device.status.lock().ticks_skipped_open += 1;
            }
        }
    }
}

/// The device's state after a read, for `/devices`.
pub(crate) struct AfterRead {
    pub(crate) breaker: BreakerState,
    pub(crate) consecutive_failures: u32,
    pub(crate) session: SessionState,
    /// Seconds the read started after its scheduled time, and how long it
    /// took; `None` for pushed changes (no schedule, no request).
    pub(crate) timing: Option<ReadTiming>,
}

/// When a read started against its schedule, and how long it took.
pub(crate) struct ReadTiming {
    /// Seconds the read started after its scheduled time.
    pub(crate) lateness: f64,
    /// Seconds the read took.
    pub(crate) duration: f64,
}

impl AfterRead {
    fn record(&self, device: &DeviceTelemetry, st: &mut DeviceStatus) {
        if let Some(t) = &self.timing {
            device.lateness.record(t.lateness);
            device.duration.record(t.duration);
            st.lateness.record(t.lateness);
        }
        st.breaker = self.breaker;
        st.session = self.session;
        st.consecutive_failures = self.consecutive_failures;
    }
}

/// A read produced a record.
pub(crate) struct ReadSucceeded<'a> {
    pub(crate) device: &'a DeviceTelemetry,
    pub(crate) samples: &'a [Sample],
    pub(crate) read_time: DateTime<Utc>,
    pub(crate) after: AfterRead,
}

impl ReadSucceeded<'_> {
    pub(crate) fn emit(self) {
        let d = self.device;
        d.ok.increment(1);
        Stats::add(&d.stats.reads_ok, 1);
        Stats::add(&d.stats.samples, self.samples.len() as u64);
        let (mut g, mut u, mut b) = (0u64, 0u64, 0u64);
        for s in self.samples {
            match s.status.quality() {
                Quality::Good => g += 1,
                Quality::Uncertain => u += 1,
                Quality::Bad => b += 1,
            }
        }
        d.good.increment(g);
        d.uncertain.increment(u);
        d.bad.increment(b);
        {
            let mut st = d.status.lock();
            self.after.record(d, &mut st);
            st.reads_ok += 1;
            st.last_success = Some(self.read_time);
        }
        // After the status is let go: no lock is taken while another is
        // held (see `Watermarks::persist`).
        d.watermarks.moved(&d.device, self.read_time);
    }
}

/// A read failed: no record.
pub(crate) struct ReadFailed<'a> {
    pub(crate) device: &'a DeviceTelemetry,
    pub(crate) error: &'a ReadError,
    pub(crate) after: AfterRead,
}

impl ReadFailed<'_> {
    pub(crate) fn emit(self) {
        let d = self.device;
        metrics::counter!(names::READS, "result" => self.error.label()).increment(1);
        Stats::add(&d.stats.reads_failed, 1);
        // The first failure of a run warns; the ones after it (the breaker
        // counts them) are debug, so a dead device does not flood the log.
        if self.after.consecutive_failures <= 1 {
            tracing::warn!(device = %d.device, error = %self.error, "read failed");
        } else {
            tracing::debug!(device = %d.device, error = %self.error, "read failed");
        }
        let mut st = d.status.lock();
        self.after.record(d, &mut st);
        st.reads_failed += 1;
        st.last_error_at = Some(Utc::now());
        st.last_error = Some(self.error.to_string());
    }
}

/// The device's breaker changed state.
pub(crate) struct BreakerTransitioned<'a> {
    pub(crate) device: &'a str,
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
    pub(crate) consecutive_failures: u32,
}

impl<'a> BreakerTransitioned<'a> {
    /// The transition `breaker` made from `from` (emitting it does nothing
    /// when there was none).
    pub(crate) fn of(device: &'a str, from: BreakerState, breaker: &Breaker) -> Self {
        Self {
            device,
            from,
            to: breaker.state(),
            consecutive_failures: breaker.consecutive_failures(),
        }
    }

    /// Emits if the state changed; does nothing otherwise.
    pub(crate) fn emit(self) {
        let (from, to, device) = (self.from, self.to, self.device);
        if from == to {
            return;
        }
        metrics::gauge!(names::BREAKERS, "state" => from.label()).decrement(1.0);
        metrics::gauge!(names::BREAKERS, "state" => to.label()).increment(1.0);
        metrics::counter!(names::BREAKER_TRANSITIONS, "to" => to.label()).increment(1);
        match to {
            BreakerState::Open => tracing::warn!(
                device,
                consecutive_failures = self.consecutive_failures,
                "circuit breaker opened"
            ),
            BreakerState::HalfOpen => tracing::debug!(device, "circuit breaker half-open: probing"),
            BreakerState::Closed => {
                tracing::info!(device, "circuit breaker closed: device reads again")
            }
        }
    }
}

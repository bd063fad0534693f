//! Gaps and their backfill. A gap is a stretch of a device's scheduled
//! reads that produced no record: failed reads, an open breaker, the
//! collector stopped or killed. The schedule sees one when a read succeeds
//! more than an interval and a half after the previous success; the last
//! success of every device survives restarts in `state_dir` (`last_reads`),
//! so the first read after a restart sees the gap the restart made. When
//! the device's adapter offers its history ([`History`]), a task of its
//! own reads the window and turns each batch into a record flagged
//! `origin: backfill`, with the device's next `seq`, while live reads go
//! on.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_status::DeviceStatus;
use crate::metrics::names;
use crate::protocol::{BackfillOutcome, History, Unrecoverable};
use crate::record::{Origin, Record, Window};

/// Whether a read at `now` after the last success `last` leaves a gap:
/// more than an interval and a half between them (at least one scheduled
/// read produced nothing).
pub(crate) fn gap(last: DateTime<Utc>, now: DateTime<Utc>, interval: Duration) -> Option<Window> {
    let since = (now - last).to_std().ok()?;
    (since > interval.mul_f64(1.5)).then_some(Window {
        from: last,
        to: now,
    })
}

/// What a backfill task needs.
pub(crate) struct Backfill {
    pub(crate) device: Arc<str>,
    pub(crate) history: Arc<dyn History>,
    pub(crate) window: Window,
    pub(crate) seq: Arc<AtomicU64>,
    pub(crate) records: mpsc::Sender<Record>,
    pub(crate) status: Arc<Mutex<DeviceStatus>>,
}

/// Reads `b.window` from the history and queues its records, until done
/// or `stop` (what was read is queued first).
pub(crate) async fn run_backfill(b: Backfill, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Vec<crate::record::Sample>>(4);
    let history = b.history.clone();
    let window = b.window;
    let mut read = Box::pin(async move { history.backfill(window, tx).await });
    let mut outcome: Option<BackfillOutcome> = None;
    let mut stopped = false;
    loop {
        tokio::select! {
            biased;
            batch = rx.recv() => match batch {
                Some(samples) => {
                    let record = Record::new(
                        b.device.clone(),
                        crate::reconcile::next_seq(&b.seq),
                        Utc::now(),
                        samples,
                    )
                    .with_origin(Origin::Backfill(window));
                    if b.records.send(record).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            o = &mut read, if outcome.is_none() => outcome = Some(o),
            _ = stop.cancelled(), if !stopped => {
                stopped = true;
                break;
            }
        }
    }
    let outcome = match (outcome, stopped) {
        (Some(o), _) => o,
        // Cut off (shutdown, the device changed or removed): what was read
        // is queued; the rest is reported, not retried.
        (None, true) => BackfillOutcome {
            values: 0,
            unrecoverable: vec![Unrecoverable {
                window,
                reason: "stopped",
                detail: "the backfill was cut off (shutdown, or the device changed or was removed); values already read were delivered".into(),
            }],
        },
        (None, false) => read.await,
    };
    finished(&b, &outcome);
}

/// Records how a backfill ended: metrics, `/devices`, the log.
fn finished(b: &Backfill, o: &BackfillOutcome) {
    let window = b.window;
    metrics::counter!(names::BACKFILL_VALUES).increment(o.values);
    let result = if o.unrecoverable.is_empty() {
        "complete"
    } else {
        "partial"
    };
    metrics::counter!(names::BACKFILL_WINDOWS, "result" => result).increment(1);
    if let Ok(lag) = (Utc::now() - window.to).to_std() {
        metrics::histogram!(names::BACKFILL_LAG).record(lag.as_secs_f64());
    }
    let mut st = b.status.lock();
    st.backfill.values += o.values;
    if o.unrecoverable.is_empty() {
        tracing::info!(device = %b.device, from = %window.from, to = %window.to, values = o.values, "gap backfilled");
    }
    for u in &o.unrecoverable {
        metrics::counter!(names::BACKFILL_UNRECOVERABLE, "reason" => u.reason).increment(1);
        st.backfill.unrecoverable += 1;
        st.backfill.last_unrecoverable = Some(format!(
            "{} .. {}: {}",
            u.window.from.to_rfc3339(),
            u.window.to.to_rfc3339(),
            u.detail
        ));
        tracing::warn!(device = %b.device, from = %u.window.from, to = %u.window.to, reason = u.reason, detail = %u.detail, values = o.values, "gap not (fully) recoverable");
    }
}

/// A gap was seen: counted, logged, on `/devices`.
pub(crate) fn gap_detected(device: &str, status: &Mutex<DeviceStatus>, window: Window) {
    metrics::counter!(names::BACKFILL_GAPS).increment(1);
    status.lock().backfill.gaps += 1;
    tracing::info!(device, from = %window.from, to = %window.to, "gap in the device's reads");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_a_missed_read() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let i = Duration::from_secs(1);
        assert_eq!(gap(t, t + chrono::Duration::milliseconds(1400), i), None);
        let w = gap(t, t + chrono::Duration::milliseconds(2100), i).unwrap();
        assert_eq!(
            (w.from, w.to),
            (t, t + chrono::Duration::milliseconds(2100))
        );
        // A clock step back is no gap.
        assert_eq!(gap(t, t - chrono::Duration::seconds(5), i), None);
    }
}

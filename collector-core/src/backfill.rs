//! Gaps and their backfill. A gap is a stretch of a device's scheduled
//! reads that produced no record: failed reads, an open breaker, the
//! collector stopped or killed. The schedule sees one when a read succeeds
//! more than an interval and a half after the previous success; the last
//! success of every device survives restarts in `state_dir/last_reads.json`
//! (written every second), so the first read after a restart sees the gap
//! the restart made. When the device's adapter offers its history
//! ([`History`]), a task of its own reads the window and turns each batch
//! into a record flagged `origin: backfill`, with the device's next `seq`,
//! while live reads go on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_status::{DeviceBoard, DeviceStatus};
use crate::metrics::names;
use crate::protocol::{BackfillOutcome, History};
use crate::record::{Origin, Record, Window};

const FILE: &str = "last_reads.json";

/// The last successful read of every device, as persisted by the previous
/// run (empty without a `state_dir`): device id -> Unix nanoseconds.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    path: Option<PathBuf>,
    previous: HashMap<String, i64>,
}

impl Watermarks {
    /// Loads `state_dir/last_reads.json`; a missing or unreadable file is
    /// an empty one (logged: the restart's gaps go unseen, nothing else).
    pub(crate) fn load(state_dir: Option<&Path>) -> Watermarks {
        let Some(dir) = state_dir else {
            return Watermarks::default();
        };
        let path = dir.join(FILE);
        let previous = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "last reads unreadable; gaps made by the restart will not be detected");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "last reads unreadable; gaps made by the restart will not be detected");
                HashMap::new()
            }
        };
        Watermarks {
            path: Some(path),
            previous,
        }
    }

    /// `device`'s last successful read in the previous run.
    pub(crate) fn previous(&self, device: &str) -> Option<DateTime<Utc>> {
        self.previous
            .get(device)
            .map(|ns| DateTime::from_timestamp_nanos(*ns))
    }

    /// Writes every device's last success now (atomically: a temporary
    /// file renamed over the old one). Devices of the previous run that
    /// were not read yet keep their entry.
    pub(crate) fn persist(&self, board: &DeviceBoard) {
        let Some(path) = &self.path else { return };
        let mut all = self.previous.clone();
        for (id, at) in board.last_successes() {
            // Exact (nanoseconds): the window must start at the read
            // itself, or a value it already delivered would come again.
            if let Some(ns) = at.timestamp_nanos_opt() {
                all.insert(id.to_string(), ns);
            }
        }
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&all)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "could not persist the last reads");
        }
    }

    /// Persists every second until `stop`, then once more.
    pub(crate) async fn run(self: Arc<Self>, board: DeviceBoard, stop: CancellationToken) {
        if self.path.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let (me, b) = (self.clone(), board.clone());
            let _ = tokio::task::spawn_blocking(move || me.persist(&b)).await;
        }
        let _ = tokio::task::spawn_blocking(move || self.persist(&board)).await;
    }
}

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
                tracing::info!(device = %b.device, from = %window.from, to = %window.to, "backfill cut off by the stop; the rest of the gap stays open");
                break;
            }
        }
    }
    if stopped {
        return;
    }
    let outcome = match outcome {
        Some(o) => o,
        None => read.await,
    };
    finished(&b, &outcome);
}

/// Records how a backfill ended: metrics, `/devices`, the log.
fn finished(b: &Backfill, o: &BackfillOutcome) {
    let window = b.window;
    metrics::counter!(names::BACKFILL_VALUES).increment(o.values);
    let result = if o.unrecoverable.is_some() {
        "partial"
    } else {
        "complete"
    };
    metrics::counter!(names::BACKFILL_WINDOWS, "result" => result).increment(1);
    if let Ok(lag) = (Utc::now() - window.to).to_std() {
        metrics::histogram!(names::BACKFILL_LAG).record(lag.as_secs_f64());
    }
    let mut st = b.status.lock();
    st.backfill.values += o.values;
    match &o.unrecoverable {
        None => {
            tracing::info!(device = %b.device, from = %window.from, to = %window.to, values = o.values, "gap backfilled")
        }
        Some(u) => {
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

    #[test]
    fn watermarks_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let board = DeviceBoard::default();
        let st = board.register(Arc::from("dev-1"), "opc.tcp://x:1");
        let at = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
        st.lock().last_success = Some(at);
        Watermarks::load(Some(dir.path())).persist(&board);
        let loaded = Watermarks::load(Some(dir.path()));
        assert_eq!(loaded.previous("dev-1"), Some(at));
        assert_eq!(loaded.previous("dev-2"), None);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(Watermarks::load(Some(dir.path())).previous("dev-1"), None);
    }
}

//! Gaps and their backfill. A gap is a stretch of a device's scheduled
//! reads that produced no record: failed reads, an open breaker, the
//! collector stopped or killed. The schedule sees one when a read succeeds
//! more than an interval and a half after the previous success; the last
//! success of every device survives restarts in `state_dir/last_reads.json`
//! (written each second a read moved it), so the first read after a
//! restart sees the gap the restart made. When the device's adapter offers
//! its history ([`History`]), a task of its own reads the window and turns
//! each batch into a record flagged `origin: backfill`, with the device's
//! next `seq`, while live reads go on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

const FILE: &str = "last_reads.json";

/// The last successful read of every device: loaded from the previous
/// run, updated from the reads that succeeded since the last second (a
/// device removed in this run keeps its last read here, so a re-added one
/// compares with it), written back to `state_dir/last_reads.json`
/// (device id -> Unix nanoseconds) durably.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    path: Option<PathBuf>,
    last: Mutex<HashMap<String, i64>>,
    /// Whether the file holds `last` as it is (set by a write, cleared by
    /// a failed one, so the next second tries again).
    written: AtomicBool,
    /// Successes reported since the last `persist`, in the order they
    /// came (device, Unix nanoseconds). Each second looks only at these:
    /// scanning every device's status instead (2,000 locks, clones and
    /// a list each second) cost an idle fleet 7–12 % of its CPU
    /// (BENCHMARKS.md).
    moved: Mutex<Vec<(Arc<str>, i64)>>,
}

impl Watermarks {
    /// Loads `state_dir/last_reads.json`; a missing or unreadable file is
    /// an empty one (logged: the restart's gaps go unseen, nothing else).
    pub(crate) fn load(state_dir: Option<&Path>) -> Watermarks {
        let Some(dir) = state_dir else {
            return Watermarks::default();
        };
        let path = dir.join(FILE);
        let last = match std::fs::read(&path) {
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
            last: Mutex::new(last),
            written: AtomicBool::new(false),
            moved: Mutex::new(Vec::new()),
        }
    }

    /// `device`'s last successful read known (this run's, else the
    /// previous run's).
    pub(crate) fn last(&self, device: &str) -> Option<DateTime<Utc>> {
        self.last
            .lock()
            .get(device)
            .map(|ns| DateTime::from_timestamp_nanos(*ns))
    }

    /// A read of `device` that started `at` succeeded: the next `persist`
    /// writes it. Without a state directory nothing is kept. Called with
    /// no other lock held (see `persist`).
    pub(crate) fn moved(&self, device: &Arc<str>, at: DateTime<Utc>) {
        if self.path.is_none() {
            return;
        }
        // Exact (nanoseconds): the window starts at the read itself.
        if let Some(ns) = at.timestamp_nanos_opt() {
            self.moved.lock().push((device.clone(), ns));
        }
    }

    /// Takes the successes reported since the last call and, when one
    /// moved a device's last read (or the file was never written in this
    /// run), writes the map (a temporary file, fsynced, renamed over the
    /// old one).
    pub(crate) fn persist(&self) {
        let Some(path) = &self.path else { return };
        // One lock at a time: the reports are taken and let go before
        // `last` is locked, and a schedule starting holds its device's
        // status while it takes `last` (`Watermarks::last`), never the
        // other way round.
        let moved = std::mem::take(&mut *self.moved.lock());
        let text = {
            let mut last = self.last.lock();
            let mut changed = !self.written.load(Ordering::Relaxed);
            // In the order reported: a device's later read wins.
            for (id, ns) in moved {
                match last.get_mut(&*id) {
                    Some(known) if *known == ns => {}
                    Some(known) => {
                        *known = ns;
                        changed = true;
                    }
                    None => {
                        last.insert(id.to_string(), ns);
                        changed = true;
                    }
                }
            }
            // Nothing read since the last write (a fleet down, long
            // intervals): the file already says it; no write, no fsync.
            if !changed {
                return;
            }
            serde_json::to_string(&*last)
        };
        let written = text
            .map_err(std::io::Error::other)
            .and_then(|text| crate::seq::write_durably(path, &text));
        match written {
            Ok(()) => self.written.store(true, Ordering::Relaxed),
            Err(e) => {
                self.written.store(false, Ordering::Relaxed);
                tracing::warn!(file = %path.display(), error = %e, "could not persist the last reads");
            }
        }
    }

    /// Persists every second until `stop`, then once more.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.path.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.persist()).await;
        }
        let _ = tokio::task::spawn_blocking(move || self.persist()).await;
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

    #[test]
    fn watermarks_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let at = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
        let w = Watermarks::load(Some(dir.path()));
        w.moved(&Arc::from("dev-1"), at);
        w.persist();
        let loaded = Watermarks::load(Some(dir.path()));
        assert_eq!(loaded.last("dev-1"), Some(at));
        assert_eq!(loaded.last("dev-2"), None);
        // Another device reads: the first one's last read stays (a device
        // removed in this run is not forgotten).
        let later = at + chrono::Duration::seconds(1);
        loaded.moved(&Arc::from("dev-2"), later);
        loaded.persist();
        let again = Watermarks::load(Some(dir.path()));
        assert_eq!(again.last("dev-1"), Some(at));
        assert_eq!(again.last("dev-2"), Some(later));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(Watermarks::load(Some(dir.path())).last("dev-1"), None);
    }

    /// Without a state directory nothing is kept: the reports of a
    /// daemon that never persists do not pile up.
    #[test]
    fn without_a_state_dir_no_report_is_kept() {
        let w = Watermarks::load(None);
        w.moved(&Arc::from("dev-1"), DateTime::from_timestamp_nanos(1));
        assert!(w.moved.lock().is_empty());
        w.persist();
        assert_eq!(w.last("dev-1"), None);
    }

    /// Successes reported from many schedules while the second's persist
    /// runs: none is lost between taking the reports and writing, and a
    /// device's later read wins over its earlier one.
    #[test]
    fn reports_while_persisting_are_all_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(Watermarks::load(Some(dir.path())));
        let t = |n: i64| DateTime::from_timestamp_nanos(1_700_000_000_000_000_000 + n);
        let stop = Arc::new(AtomicBool::new(false));
        let persister = {
            let (w, stop) = (w.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    w.persist();
                }
            })
        };
        let reporters: Vec<_> = (0..4)
            .map(|r| {
                let w = w.clone();
                std::thread::spawn(move || {
                    let id: Arc<str> = Arc::from(format!("dev-{r}"));
                    for n in 1..=2_000 {
                        w.moved(&id, t(n));
                    }
                })
            })
            .collect();
        for r in reporters {
            r.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        persister.join().unwrap();
        w.persist();
        let loaded = Watermarks::load(Some(dir.path()));
        for r in 0..4 {
            assert_eq!(loaded.last(&format!("dev-{r}")), Some(t(2_000)), "dev-{r}");
        }
    }

    #[test]
    fn watermarks_are_written_only_when_a_read_moved_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        let id: Arc<str> = Arc::from("dev-1");
        let at = DateTime::from_timestamp_nanos(1_700_000_000_000_000_000);
        let w = Watermarks::load(Some(dir.path()));
        w.moved(&id, at);
        w.persist();
        assert_eq!(Watermarks::load(Some(dir.path())).last("dev-1"), Some(at));
        // Nothing read since: the file is not rewritten (a marker survives).
        std::fs::write(&file, b"{\"marker\":1}").unwrap();
        w.persist();
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"marker\":1}");
        // A read reported at the time already written: still no write.
        w.moved(&id, at);
        w.persist();
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"marker\":1}");
        // A new success: written again, with it.
        let later = at + chrono::Duration::seconds(10);
        w.moved(&id, later);
        w.persist();
        assert_eq!(
            Watermarks::load(Some(dir.path())).last("dev-1"),
            Some(later)
        );
        // A fresh process writes its first second whatever it loaded.
        let again = Watermarks::load(Some(dir.path()));
        std::fs::write(&file, b"{\"marker\":1}").unwrap();
        again.persist();
        assert_eq!(
            Watermarks::load(Some(dir.path())).last("dev-1"),
            Some(later)
        );
    }
}

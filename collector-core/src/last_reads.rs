//! The last successful read of every device, kept across restarts so the
//! first read after one sees the gap the restart made (`backfill`).
//!
//! On disk it is a snapshot and a journal in `state_dir`:
//! `last_reads.json` (device id -> Unix nanoseconds, the whole map) and
//! `last_reads.log` (one `["device",ns]` line per read that moved a
//! device, appended since the snapshot). Each second a read moved
//! something, only those lines are appended and fsynced; the map is
//! rewritten (compacted) when the journal holds more lines than the map
//! has devices. Rewriting the whole map each second instead grew with
//! the fleet, not with its reads (~0.4 MB a second at 10,000 devices);
//! the journal took 5 % off the reference workload's CPU per point
//! (BENCHMARKS.md).
//!
//! Loading reads the snapshot, then replays the journal in order (a
//! device's later line wins). A line that does not parse (a write torn by
//! a crash or a full disk) is skipped, logged with a count; the lines
//! around it are kept.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

const SNAPSHOT: &str = "last_reads.json";
const JOURNAL: &str = "last_reads.log";
/// The journal is compacted into the snapshot when it holds more lines
/// than the map has devices, and never below this many lines (a small
/// fleet reading often would otherwise rewrite the map every second).
const MIN_JOURNAL_LINES: usize = 1_024;

/// The last successful read of every device: loaded from the previous
/// run, updated from the reads that succeeded since the last second (a
/// device removed in this run keeps its last read here, so a re-added one
/// compares with it), written back to `state_dir` durably each second.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    /// `state_dir`; none: nothing is kept.
    dir: Option<PathBuf>,
    last: Mutex<HashMap<String, i64>>,
    /// The journal as this run writes it; held for the whole of a
    /// `persist`, so two never interleave.
    journal: Mutex<Journal>,
    /// Successes reported since the last `persist`, in the order they
    /// came (device, Unix nanoseconds). Each second looks only at these:
    /// scanning every device's status instead (2,000 locks, clones and
    /// a list each second) cost an idle fleet 7–12 % of its CPU
    /// (BENCHMARKS.md).
    moved: Mutex<Vec<(Arc<str>, i64)>>,
}

#[derive(Debug, Default)]
struct Journal {
    /// Open for appending once a compaction made the snapshot and the
    /// journal agree; none until then (a fresh run, or after a failed
    /// write), so the next `persist` compacts.
    file: Option<File>,
    /// Lines in the journal (those loaded and those appended since).
    lines: usize,
}

impl Watermarks {
    /// Loads `state_dir`'s snapshot and journal; a missing file is an
    /// empty one, an unreadable one is logged and read as empty (the
    /// restart's gaps go unseen, nothing else).
    pub(crate) fn load(state_dir: Option<&Path>) -> Watermarks {
        let Some(dir) = state_dir else {
            return Watermarks::default();
        };
        let unreadable = |file: &Path, e: &dyn std::fmt::Display| {
            tracing::warn!(file = %file.display(), error = %e, "last reads unreadable; gaps made by the restart will not be detected");
        };
        let snapshot = dir.join(SNAPSHOT);
        let mut last: HashMap<String, i64> = match std::fs::read(&snapshot) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                unreadable(&snapshot, &e);
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                unreadable(&snapshot, &e);
                HashMap::new()
            }
        };
        let journal = dir.join(JOURNAL);
        let lines = match std::fs::read(&journal) {
            Ok(bytes) => replay(&journal, &bytes, &mut last),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                unreadable(&journal, &e);
                0
            }
        };
        Watermarks {
            dir: Some(dir.to_path_buf()),
            last: Mutex::new(last),
            journal: Mutex::new(Journal { file: None, lines }),
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
        if self.dir.is_none() {
            return;
        }
        // Exact (nanoseconds): the window starts at the read itself.
        if let Some(ns) = at.timestamp_nanos_opt() {
            self.moved.lock().push((device.clone(), ns));
        }
    }

    /// Takes the successes reported since the last call and writes those
    /// that moved a device's last read: appended to the journal (one
    /// write, one fsync), or compacted into a new snapshot (on this run's
    /// first call, after a failed write, or when the journal has grown
    /// past the map).
    pub(crate) fn persist(&self) {
        let Some(dir) = &self.dir else { return };
        let mut journal = self.journal.lock();
        // One lock at a time besides the journal (taken only here): the
        // reports are taken and let go before `last` is locked, and a
        // schedule starting holds its device's status while it takes
        // `last` (`Watermarks::last`), never the other way round.
        let moved = std::mem::take(&mut *self.moved.lock());
        let (lines, added, snapshot) = {
            let mut last = self.last.lock();
            let mut lines = Vec::new();
            let mut added = 0;
            // In the order reported: a device's later read wins.
            for (id, ns) in moved {
                match last.get_mut(&*id) {
                    Some(known) if *known == ns => continue,
                    Some(known) => *known = ns,
                    None => {
                        last.insert(id.to_string(), ns);
                    }
                }
                line(&mut lines, &id, ns);
                added += 1;
            }
            let compact =
                journal.file.is_none() || journal.lines + added > last.len().max(MIN_JOURNAL_LINES);
            // Nothing read since the last write (a fleet down, long
            // intervals): the files already say it; no write, no fsync.
            if added == 0 && !compact {
                return;
            }
            let snapshot = compact.then(|| serde_json::to_string(&*last));
            (lines, added, snapshot)
        };
        let written = match snapshot {
            None => append(&mut journal, &lines, added),
            Some(text) => text
                .map_err(std::io::Error::other)
                .and_then(|text| compact(dir, &mut journal, &lines, &text)),
        };
        if let Err(e) = written {
            // The next second compacts: a fresh snapshot and journal.
            journal.file = None;
            tracing::warn!(dir = %dir.display(), error = %e, "could not persist the last reads");
        }
    }

    /// Persists every second until `stop`, then once more.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.dir.is_none() {
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

/// One journal line: `["device",ns]` and a newline (JSON, so any device
/// id is quoted safely, and a line cut short does not parse).
fn line(out: &mut Vec<u8>, device: &str, ns: i64) {
    // Serializing a (&str, i64) into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &(device, ns));
    out.push(b'\n');
}

/// Applies `bytes`' lines to `last` in order; returns how many lines the
/// journal holds. Lines that do not parse are skipped and reported once.
fn replay(path: &Path, bytes: &[u8], last: &mut HashMap<String, i64>) -> usize {
    let mut lines = 0;
    let mut skipped = 0;
    let mut first_skipped = None;
    for (n, text) in bytes.split(|b| *b == b'\n').enumerate() {
        if text.is_empty() {
            continue;
        }
        lines += 1;
        match serde_json::from_slice::<(String, i64)>(text) {
            Ok((device, ns)) => {
                last.insert(device, ns);
            }
            Err(_) => {
                skipped += 1;
                first_skipped.get_or_insert(n + 1);
            }
        }
    }
    if let Some(line) = first_skipped {
        tracing::warn!(file = %path.display(), line, skipped, "last reads: lines that do not parse were skipped (a write cut short); those devices' gaps may be seen from an earlier read");
    }
    lines
}

/// Appends `lines` to the open journal and fsyncs it.
fn append(journal: &mut Journal, lines: &[u8], added: usize) -> std::io::Result<()> {
    let file = journal
        .file
        .as_mut()
        .ok_or_else(|| std::io::Error::other("the journal is not open"))?;
    file.write_all(lines)?;
    file.sync_data()?;
    journal.lines += added;
    Ok(())
}

/// Writes `snapshot` (the whole map, `lines` included) and empties the
/// journal. `lines` are appended first, so a crash at any step leaves a
/// snapshot and a journal whose replay gives the map: before the snapshot
/// is renamed, the old snapshot and the journal with `lines`; after, the
/// new snapshot and a journal whose last line for each device is the
/// snapshot's. (One case is weaker: a compaction that follows a failed
/// append, cut by a crash after its rename, replays the journal's older
/// line for a device that moved only in the failed second. Its next gap
/// then starts at that older read: values already delivered can come
/// again as backfill; none is lost.)
fn compact(dir: &Path, journal: &mut Journal, lines: &[u8], snapshot: &str) -> std::io::Result<()> {
    let path = dir.join(JOURNAL);
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    // A line torn by an earlier crash or failed write ends here, alone,
    // instead of swallowing the first line appended after it.
    file.write_all(b"\n")?;
    file.write_all(lines)?;
    file.sync_data()?;
    // Its directory fsync also makes the journal's name durable, when the
    // journal was just made.
    crate::seq::write_durably(&dir.join(SNAPSHOT), snapshot)?;
    file.set_len(0)?;
    file.sync_all()?;
    journal.file = Some(file);
    journal.lines = 0;
    Ok(())
}

#[cfg(test)]
mod tests;

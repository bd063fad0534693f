//! The default spill backend: a segmented append-only log. Chosen over
//! sled because it gives disk space back as soon as a segment is drained
//! and its recovery is short enough to read (see `docs/spill.md` for the
//! torture figures that decided it).
//!
//! # On-disk format
//!
//! One directory, one process (`LOCK`, an advisory `flock`):
//!
//! ```text
//! <dir>/LOCK
//! <dir>/00000000000000000001.seg   data file, named by the id of its first frame
//! <dir>/00000000000000000001.ack   ids deleted from that segment
//! <dir>/00000000000000004711.seg   ... the last one is the active segment
//! ```
//!
//! A data file is a 24-byte header (`OPCSPILL`, version u32 = 1, first id
//! u64, CRC-32 of the 20 bytes before; all little endian) followed by
//! frames back to back (format in [`super::frame`]: length, CRC-32, id,
//! append time, records, raw length, codec, data). Ids increase by one
//! from frame to frame and from segment to segment. An ack file is a list
//! of 12-byte entries: id u64 and the CRC-32 of those 8 bytes.
//!
//! # Invariants
//!
//! 1. An append returns `Ok` only after `fdatasync` of the active segment
//!    covered its frame; a segment is synced before the next one is
//!    created, so only the active (newest) segment can hold unsynced bytes.
//! 2. Recovery checks every frame of the newest segment (length, CRC, id
//!    sequence) and cuts the file after the last valid frame: that tail
//!    was never acknowledged (1). Older segments are indexed by their frame
//!    headers and checked frame by frame when read; a frame that fails its
//!    CRC is dropped, counted and logged at error, never returned.
//! 3. A deletion is an ack entry appended to the segment's ack file and
//!    synced before `delete` returns. Losing one (a crash between write
//!    and sync) only re-delivers a batch: delivery is at least once.
//! 4. A segment whose batches are all deleted (expired, evicted) is removed
//!    whole, data file first, so space comes back in segment-sized steps.
//!    The active segment is rolled and removed once it is drained and at
//!    least an eighth of a segment; at open, drained segments are removed.
//! 5. A failed write is undone (the file is cut back); if that or an
//!    fsync fails, the store is poisoned and refuses appends until it is
//!    reopened (after a failed fsync the page cache cannot be trusted).
//!
//! The in-memory index costs 40 bytes per batch not yet deleted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, MutexGuard};

use super::commit::GroupCommit;
use super::frame;
use super::segment::{read_exact_at, write_all_at, Segment, Slot};
use super::{
    from_unix_ms, publish, report_dropped, unix_ms, Compression, DropCount, Dropped, NewBatch,
    SpillBackend, SpillConfig, SpillError, SpillId, SpillStats, SpillStore, SpilledBatch,
    StoreRole,
};

/// The segment log (see the module documentation).
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    max_bytes: u64,
    ttl_ms: u64,
    segment_bytes: u64,
    compression: Compression,
    /// Spill or dead letters: which metrics this store publishes.
    role: StoreRole,
    inner: Mutex<Inner>,
    commit: GroupCommit,
    _lock: File,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    /// By first id; the last one is the active segment. Never empty.
    pub(super) segments: BTreeMap<u64, Segment>,
    /// The id of the next append (= the active segment's end id).
    pub(super) next_id: u64,
    pub(super) poisoned: bool,
    pub(super) written: u64,
    pub(super) expired: DropCount,
    pub(super) evicted: DropCount,
    pub(super) corrupt: u64,
    pub(super) torn_bytes: u64,
    pub(super) scratch: Vec<u8>,
}

impl Inner {
    pub(super) fn active_key(&self) -> u64 {
        self.segments.keys().next_back().copied().unwrap_or(0)
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(Segment::disk_bytes).sum()
    }

    fn stats(&self) -> SpillStats {
        let mut s = SpillStats {
            disk_bytes: self.disk_bytes(),
            written: self.written,
            expired: self.expired,
            evicted: self.evicted,
            corrupt: self.corrupt,
            torn_bytes: self.torn_bytes,
            ..SpillStats::default()
        };
        for seg in self.segments.values() {
            s.batches += seg.live_batches;
            s.records += seg.live_records;
            s.stored_bytes += seg.live_bytes;
            if s.oldest.is_none() {
                s.oldest = seg
                    .slots
                    .iter()
                    .find(|x| !x.deleted)
                    .map(|x| from_unix_ms(x.written_ms));
            }
        }
        s
    }

    /// The segment holding `id`, if any.
    fn segment_of(&mut self, id: u64) -> Option<&mut Segment> {
        self.segments.range_mut(..=id).next_back().map(|(_, s)| s)
    }
}

impl SegmentLog {
    /// Opens the log in `cfg.dir`, recovering it after a crash.
    pub fn open(cfg: &SpillConfig) -> Result<Self, SpillError> {
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| SpillError::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SpillError::io(&lock_path, e))?;
        fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| SpillError::Locked(dir.clone()))?;
        let inner = super::recover::recover(&dir, cfg.role)?;
        let durable = inner.next_id.saturating_sub(1);
        let log = SegmentLog {
            dir,
            max_bytes: cfg.max_bytes,
            ttl_ms: u64::try_from(cfg.ttl.as_millis()).unwrap_or(u64::MAX),
            segment_bytes: cfg.effective_segment_bytes(),
            compression: cfg.compression,
            role: cfg.role,
            inner: Mutex::new(inner),
            commit: GroupCommit::new(durable),
            _lock: lock,
        };
        let stats = log.stats();
        tracing::info!(
            dir = %log.dir.display(),
            batches = stats.batches,
            records = stats.records,
            disk_bytes = stats.disk_bytes,
            torn_bytes = stats.torn_bytes,
            "spill opened"
        );
        publish(log.role, &stats);
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Syncs the active segment and starts a new one at `next_id`.
    fn roll(&self, inner: &mut Inner) -> Result<(), SpillError> {
        let key = inner.active_key();
        if let Some(active) = inner.segments.get(&key) {
            if let Err(e) = active.file.sync_data() {
                inner.poisoned = true;
                return Err(SpillError::io(&active.path, e));
            }
        }
        let seg = Segment::create(&self.dir, inner.next_id)?;
        inner.segments.insert(seg.first_id, seg);
        Ok(())
    }

    /// Removes drained segments: sealed ones always, the active one (after
    /// a roll) once it is big enough to be worth a new file.
    fn remove_drained(&self, inner: &mut Inner) -> Result<(), SpillError> {
        let active = inner.active_key();
        let drained: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(k, s)| {
                s.live_batches == 0
                    && (**k != active || (s.frames > 0 && s.len >= self.segment_bytes / 8))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in drained {
            if key == inner.active_key() {
                self.roll(inner)?;
            }
            if let Some(seg) = inner.segments.remove(&key) {
                seg.remove(&self.dir)?;
            }
        }
        Ok(())
    }

    /// Evicts whole sealed segments, oldest first, while over the cap.
    fn evict_over_cap(&self, inner: &mut Inner) -> Result<DropCount, SpillError> {
        let mut dropped = DropCount::default();
        while inner.disk_bytes() > self.max_bytes && inner.segments.len() > 1 {
            let Some((_, seg)) = inner.segments.pop_first() else {
                break;
            };
            for s in seg.slots.iter().filter(|s| !s.deleted) {
                dropped.add(s.records, u64::from(s.len));
            }
            seg.remove(&self.dir)?;
        }
        inner.evicted.merge(dropped);
        Ok(dropped)
    }

    /// Marks ids deleted and writes their acks; returns the ack files to sync.
    fn delete_locked(
        &self,
        inner: &mut Inner,
        ids: impl IntoIterator<Item = u64>,
        mut on_deleted: impl FnMut(&Slot),
    ) -> Result<Vec<(PathBuf, Arc<File>)>, SpillError> {
        let mut per_seg: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for id in ids {
            if let Some(seg) = inner.segment_of(id) {
                if let Some(slot) = seg.mark_deleted(id) {
                    on_deleted(&slot);
                    per_seg.entry(seg.first_id).or_default().push(id);
                }
            }
        }
        let active = inner.active_key();
        let mut to_sync = Vec::new();
        for (key, ids) in per_seg {
            let Some(seg) = inner.segments.get_mut(&key) else {
                continue;
            };
            seg.trim();
            // A drained sealed segment is removed below: no acks needed.
            if seg.live_batches == 0 && key != active {
                continue;
            }
            let file = seg.write_acks(&ids)?;
            to_sync.push((seg.ack_path.clone(), file));
        }
        self.remove_drained(inner)?;
        Ok(to_sync)
    }

    fn sync_acks(to_sync: Vec<(PathBuf, Arc<File>)>) -> Result<(), SpillError> {
        for (path, file) in to_sync {
            file.sync_data().map_err(|e| SpillError::io(&path, e))?;
        }
        Ok(())
    }

    /// Waits until `id` is durable, sharing the fsync with other appenders.
    fn wait_durable(&self, id: u64) -> Result<(), SpillError> {
        self.commit.wait_durable(
            id,
            || {
                let inner = self.lock();
                let seg = inner
                    .segments
                    .values()
                    .next_back()
                    .ok_or(SpillError::Poisoned)?;
                Ok((
                    inner.next_id.saturating_sub(1),
                    (seg.path.clone(), seg.file.clone()),
                ))
            },
            |(path, file)| file.sync_data().map_err(|e| SpillError::io(&path, e)),
        )
    }
}

impl SpillStore for SegmentLog {
    fn backend(&self) -> SpillBackend {
        SpillBackend::SegmentLog
    }

    fn append_many(&self, batches: &[NewBatch<'_>]) -> Result<Vec<SpillId>, SpillError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let packed = batches
            .iter()
            .map(|b| frame::pack(b.payload, self.compression))
            .collect::<Result<Vec<_>, _>>()?;
        let now_ms = unix_ms(SystemTime::now());
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.poisoned || self.commit.failed() {
            return Err(SpillError::Poisoned);
        }
        let mut ids = Vec::with_capacity(batches.len());
        let mut scratch = std::mem::take(&mut inner.scratch);
        for (b, p) in batches.iter().zip(&packed) {
            let needs_roll =
                inner.segments.values().next_back().is_none_or(|a| {
                    a.frames > 0 && a.len + p.frame_len() as u64 > self.segment_bytes
                });
            if needs_roll {
                self.roll(inner)?;
            }
            let id = inner.next_id;
            scratch.clear();
            let len = frame::encode_packed(&mut scratch, id, now_ms, b.records, p);
            let Some(active) = inner.segments.values_mut().next_back() else {
                return Err(SpillError::Poisoned);
            };
            if let Err(e) = write_all_at(&active.file, &scratch, active.len) {
                // Undo a partial frame so later frames stay readable.
                if active.file.set_len(active.len).is_err() {
                    inner.poisoned = true;
                }
                return Err(SpillError::io(&active.path, e));
            }
            active.slots.push_back(Slot {
                id,
                offset: active.len,
                len: len as u32,
                records: b.records,
                written_ms: now_ms,
                deleted: false,
            });
            active.len += len as u64;
            active.frames += 1;
            active.live_batches += 1;
            active.live_records += u64::from(b.records);
            active.live_bytes += len as u64;
            inner.next_id += 1;
            inner.written += 1;
            ids.push(SpillId(id));
        }
        inner.scratch = scratch;
        let evicted = self.evict_over_cap(inner)?;
        let stats = inner.stats();
        drop(guard);
        report_dropped(
            self.role,
            SpillBackend::SegmentLog,
            &Dropped {
                evicted,
                ..Dropped::default()
            },
        );
        let last = ids.last().map_or(0, |i| i.0);
        self.wait_durable(last)?;
        metrics::counter!(self.role.names().written).increment(ids.len() as u64);
        publish(self.role, &stats);
        Ok(ids)
    }

    fn oldest_after(
        &self,
        after: Option<SpillId>,
        max: usize,
    ) -> Result<Vec<SpilledBatch>, SpillError> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        let mut wanted: Vec<(PathBuf, Arc<File>, Slot)> = Vec::new();
        {
            let inner = self.lock();
            let from = inner
                .segments
                .range(..=start)
                .next_back()
                .map_or(0, |(k, _)| *k);
            'segments: for seg in inner.segments.range(from..).map(|(_, s)| s) {
                let Some(front) = seg.slots.front() else {
                    continue;
                };
                let skip = usize::try_from(start.saturating_sub(front.id)).unwrap_or(usize::MAX);
                for slot in seg.slots.iter().skip(skip).filter(|s| !s.deleted) {
                    if wanted.len() >= max {
                        break 'segments;
                    }
                    wanted.push((seg.path.clone(), seg.file.clone(), *slot));
                }
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        let mut corrupt = Vec::new();
        let mut buf = Vec::new();
        for (path, file, slot) in wanted {
            buf.resize(slot.len as usize, 0);
            read_exact_at(&file, &mut buf, slot.offset).map_err(|e| SpillError::io(&path, e))?;
            match frame::decode(&buf) {
                Ok((meta, payload)) if meta.id == slot.id => out.push(SpilledBatch {
                    id: SpillId(meta.id),
                    written_at: from_unix_ms(meta.written_ms),
                    records: meta.records,
                    payload,
                }),
                Ok((meta, _)) => corrupt.push((path, slot, format!("id {} in frame", meta.id))),
                Err(reason) => corrupt.push((path, slot, reason)),
            }
        }
        if !corrupt.is_empty() {
            for (path, slot, reason) in &corrupt {
                tracing::error!(
                    file = %path.display(),
                    offset = slot.offset,
                    id = slot.id,
                    records = slot.records,
                    reason = %reason,
                    "corrupt spilled batch dropped"
                );
            }
            metrics::counter!(self.role.names().corrupt).increment(corrupt.len() as u64);
            let mut inner = self.lock();
            inner.corrupt += corrupt.len() as u64;
            let to_sync =
                self.delete_locked(&mut inner, corrupt.iter().map(|(_, s, _)| s.id), |_| {})?;
            drop(inner);
            Self::sync_acks(to_sync)?;
        }
        Ok(out)
    }

    fn delete(&self, ids: &[SpillId]) -> Result<(), SpillError> {
        let mut inner = self.lock();
        let to_sync = self.delete_locked(&mut inner, ids.iter().map(|i| i.0), |_| {})?;
        let stats = inner.stats();
        drop(inner);
        Self::sync_acks(to_sync)?;
        publish(self.role, &stats);
        Ok(())
    }

    fn enforce_limits(&self, now: SystemTime) -> Result<Dropped, SpillError> {
        let cutoff = unix_ms(now).saturating_sub(self.ttl_ms);
        let mut dropped = Dropped::default();
        let mut inner = self.lock();
        let mut expired_ids = Vec::new();
        'segments: for seg in inner.segments.values() {
            for slot in seg.slots.iter().filter(|s| !s.deleted) {
                if slot.written_ms >= cutoff {
                    break 'segments;
                }
                expired_ids.push(slot.id);
            }
        }
        let to_sync = self.delete_locked(&mut inner, expired_ids, |s| {
            dropped.expired.add(s.records, u64::from(s.len))
        })?;
        inner.expired.merge(dropped.expired);
        dropped.evicted = self.evict_over_cap(&mut inner)?;
        let stats = inner.stats();
        drop(inner);
        Self::sync_acks(to_sync)?;
        report_dropped(self.role, SpillBackend::SegmentLog, &dropped);
        publish(self.role, &stats);
        Ok(dropped)
    }

    fn stats(&self) -> SpillStats {
        self.lock().stats()
    }

    fn flush(&self) -> Result<(), SpillError> {
        let last = self.lock().next_id.saturating_sub(1);
        self.wait_durable(last)
    }
}

//! Opening the spill after a restart or a crash: each segment's frames
//! indexed (the newest fully checked, as only it can have a torn tail),
//! damage skipped up to the next whole frame (`resync`), a damaged header
//! rewritten from the file's name, the ack files applied, drained
//! segments and orphan ack files removed. What damage cost is logged with
//! the file and counted once: ids lost to it are acknowledged on disk, so
//! a later start does not count them again.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use super::frame::{self, FRAME_HEADER};
use super::resync::{self, Damage};
use super::segment::{
    self, header_bytes, header_version, read_exact_at, seg_name, valid_header, write_all_at, Scan,
    Segment, Slot, SEGMENT_HEADER, VERSION,
};
use super::segment_log::Inner;
use super::{SpillError, StoreRole};

/// Whether the frame at `pos` (body `blen` bytes) matches its checksum.
fn verified_at(file: &File, pos: u64, blen: usize, crc: u32) -> std::io::Result<bool> {
    let mut body = vec![0u8; blen];
    read_exact_at(file, &mut body, pos + FRAME_HEADER as u64)?;
    Ok(frame::check(&body, crc).is_some())
}

impl Segment {
    /// Rewrites a damaged header from the segment's name (its first id),
    /// durably, so that its frames can be recovered.
    pub(super) fn repair_header(dir: &Path, first_id: u64) -> Result<(), SpillError> {
        let path = dir.join(seg_name(first_id));
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| SpillError::io(&path, e))?;
        write_all_at(&file, &header_bytes(first_id), 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| SpillError::io(&path, e))
    }

    /// Opens an existing segment and indexes its frames. Returns `None`
    /// when the header is missing or invalid. `verify` checks every frame's
    /// checksum (the newest segment, the only one that can have a torn
    /// tail); otherwise only the frame headers are read and checksums are
    /// checked when a frame is read back. A damaged frame in the middle is
    /// skipped up to the next whole frame (`Scan::damaged`); only damage
    /// with no whole frame after it is a bad tail.
    ///
    /// Frame ids must be below `limit` (the next segment's first id): a
    /// frame beyond it is not this segment's. Damage found without
    /// `verify` reopens the segment with it, so that no intact frame is
    /// skipped on the word of an unchecked length.
    pub(super) fn open(
        dir: &Path,
        first_id: u64,
        verify: bool,
        limit: Option<u64>,
    ) -> Result<Option<(Self, Scan)>, SpillError> {
        let path = dir.join(seg_name(first_id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| SpillError::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| SpillError::io(&path, e))?.len();
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let mut h = [0u8; SEGMENT_HEADER];
        match r.read_exact(&mut h) {
            Ok(()) if valid_header(&h, first_id) => {}
            Ok(()) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(SpillError::io(&path, e)),
        }
        let mut pos = SEGMENT_HEADER as u64;
        let mut next_id = first_id;
        let mut scan = Scan::default();
        let mut body = Vec::new();
        let mut slots = VecDeque::new();
        loop {
            if pos == file_len {
                break;
            }
            let mut fh = [0u8; FRAME_HEADER];
            let found = match r.read_exact(&mut fh) {
                Err(e) if e.kind() != ErrorKind::UnexpectedEof => {
                    return Err(SpillError::io(&path, e));
                }
                Err(_) => Err("partial frame header".to_string()),
                Ok(()) => match frame::header(&fh) {
                    None => Err("invalid frame length".to_string()),
                    Some((blen, _)) if pos + (FRAME_HEADER + blen) as u64 > file_len => {
                        Err("frame runs past the end of the file".to_string())
                    }
                    Some((blen, crc)) => {
                        let meta = if verify {
                            body.resize(blen, 0);
                            r.read_exact(&mut body)
                                .map_err(|e| SpillError::io(&path, e))?;
                            frame::check(&body, crc)
                        } else {
                            body.resize(frame::BODY_HEADER, 0);
                            r.read_exact(&mut body)
                                .map_err(|e| SpillError::io(&path, e))?;
                            r.seek_relative((blen - frame::BODY_HEADER) as i64)
                                .map_err(|e| SpillError::io(&path, e))?;
                            frame::meta(&body)
                        };
                        match meta {
                            None => Err("checksum mismatch".to_string()),
                            Some(m) if limit.is_some_and(|l| m.id >= l) => {
                                Err(format!("id {} belongs to a later segment", m.id))
                            }
                            Some(m) if m.id == next_id => Ok((m, blen)),
                            // A later id (frames lost before it) only from
                            // a frame whose checksum holds.
                            Some(m)
                                if m.id > next_id
                                    && m.id - next_id <= resync::MAX_LOST_IDS
                                    && (verify
                                        || verified_at(&file, pos, blen, crc)
                                            .map_err(|e| SpillError::io(&path, e))?) =>
                            {
                                Ok((m, blen))
                            }
                            Some(m) => Err(format!("id {} where {next_id} was expected", m.id)),
                        }
                    }
                },
            };
            let (meta, blen) = match found {
                Ok(v) => v,
                Err(_) if !verify => {
                    drop(r);
                    return Segment::open(dir, first_id, true, limit);
                }
                Err(reason) => {
                    // Damage: resume at the next whole frame, if any.
                    match resync::next_frame(&file, &path, pos + 1, file_len, next_id, limit)? {
                        Some((at, id)) => {
                            scan.damaged.push(Damage {
                                offset: pos,
                                bytes: at - pos,
                                ids: next_id..id,
                                lost: 0,
                                reason,
                            });
                            pos = at;
                            r.seek(SeekFrom::Start(at))
                                .map_err(|e| SpillError::io(&path, e))?;
                            continue;
                        }
                        None => {
                            scan.reason = Some(reason);
                            break;
                        }
                    }
                }
            };
            // Ids lost before this frame keep their place, as deleted slots.
            while next_id < meta.id {
                slots.push_back(Slot {
                    id: next_id,
                    offset: pos,
                    len: 0,
                    records: 0,
                    written_ms: 0,
                    deleted: true,
                });
                next_id += 1;
            }
            let len = (FRAME_HEADER + blen) as u32;
            slots.push_back(Slot {
                id: meta.id,
                offset: pos,
                len,
                records: meta.records,
                written_ms: meta.written_ms,
                deleted: false,
            });
            next_id += 1;
            pos += u64::from(len);
        }
        // Unchecked, an enlarged length ending exactly at the end of the
        // file would swallow the frames after it unnoticed: its frame's
        // checksum tells.
        if !verify {
            if let Some(last) = slots.back().filter(|s| s.len > 0) {
                let blen = last.len as usize - FRAME_HEADER;
                let mut fh = [0u8; FRAME_HEADER];
                read_exact_at(&file, &mut fh, last.offset).map_err(|e| SpillError::io(&path, e))?;
                let intact = match frame::header(&fh) {
                    Some((_, crc)) => verified_at(&file, last.offset, blen, crc)
                        .map_err(|e| SpillError::io(&path, e))?,
                    None => false,
                };
                if !intact {
                    drop(r);
                    return Segment::open(dir, first_id, true, limit);
                }
            }
        }
        scan.bad_tail = file_len - pos;
        drop(r);
        let mut s = Self::empty(dir, first_id, file, pos);
        s.frames = slots.len() as u64;
        for slot in slots.iter().filter(|s| !s.deleted) {
            s.live_batches += 1;
            s.live_records += u64::from(slot.records);
            s.live_bytes += u64::from(slot.len);
        }
        s.slots = slots;
        let acked = s.load_acks(!scan.damaged.is_empty())?;
        s.settle_damage(&mut scan, &acked)?;
        Ok(Some((s, scan)))
    }

    /// Counts what each damaged region lost (ids not acknowledged before)
    /// and acknowledges them, durably, so the next start skips the region
    /// without counting it again.
    fn settle_damage(&mut self, scan: &mut Scan, acked: &HashSet<u64>) -> Result<(), SpillError> {
        let mut lost = Vec::new();
        for d in &mut scan.damaged {
            let ids: Vec<u64> = d.ids.clone().filter(|id| !acked.contains(id)).collect();
            d.lost = ids.len() as u64;
            lost.extend(ids);
        }
        if !lost.is_empty() {
            let created = self.ack.is_none();
            let file = self.write_acks(&lost)?;
            file.sync_all()
                .map_err(|e| SpillError::io(&self.ack_path, e))?;
            if let (true, Some(dir)) = (created, self.ack_path.parent()) {
                segment::sync_dir(dir)?;
            }
        }
        Ok(())
    }
}

/// Reads the directory back after a clean stop or a crash.
pub(super) fn recover(dir: &Path, role: StoreRole) -> Result<Inner, SpillError> {
    let mut segs = Vec::new();
    let mut acks = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| SpillError::io(dir, e))? {
        let entry = entry.map_err(|e| SpillError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment::parse_name(name, "seg") {
            segs.push(id);
        } else if let Some(id) = segment::parse_name(name, "ack") {
            acks.push(id);
        }
    }
    segs.sort_unstable();
    let mut inner = Inner {
        next_id: 1,
        ..Inner::default()
    };
    let mut changed = false;
    let n = segs.len();
    for (i, first) in segs.iter().copied().enumerate() {
        let newest = i + 1 == n;
        let limit = segs.get(i + 1).copied();
        inner.next_id = inner.next_id.max(first);
        let path = dir.join(segment::seg_name(first));
        let opened = match Segment::open(dir, first, newest, limit)? {
            Some(opened) => Some(opened),
            // No valid header and no frames: the newest segment, created
            // but never synced.
            None if newest
                && std::fs::metadata(&path)
                    .map_err(|e| SpillError::io(&path, e))?
                    .len()
                    <= segment::SEGMENT_HEADER as u64 =>
            {
                tracing::warn!(file = %path.display(), "spill segment without a valid header removed");
                std::fs::remove_file(&path).map_err(|e| SpillError::io(&path, e))?;
                None
            }
            // Damage to the header of a segment with frames: they carry
            // their own ids and checksums, so rewrite the header from the
            // name (a copy of the file kept aside meanwhile) and check every
            // frame. A header of another format version is not damage: set
            // aside, untouched.
            None => recover_header(dir, &path, first, limit, role, &mut inner)?,
        };
        let Some((mut seg, scan)) = opened else {
            changed = true;
            continue;
        };
        for d in &scan.damaged {
            if d.lost == 0 {
                // Seen (and counted) before, or only acknowledged batches.
                tracing::debug!(file = %path.display(), offset = d.offset, bytes = d.bytes, "spill: known corrupt region skipped");
                continue;
            }
            tracing::error!(
                file = %path.display(),
                offset = d.offset,
                bytes = d.bytes,
                batches_lost = d.lost,
                reason = %d.reason,
                "spill: corrupt region skipped; the batches after it are kept"
            );
            metrics::counter!(role.names().corrupt).increment(d.lost);
            inner.corrupt += d.lost;
        }
        if scan.bad_tail > 0 {
            let reason = scan.reason.as_deref().unwrap_or("trailing bytes");
            if newest {
                tracing::warn!(
                    file = %seg.path.display(),
                    bytes = scan.bad_tail,
                    reason,
                    "spill: torn tail of an unacknowledged append cut"
                );
            } else {
                tracing::error!(
                    file = %seg.path.display(),
                    bytes = scan.bad_tail,
                    reason,
                    "spill: corrupt data in a sealed segment cut; batches after it are lost"
                );
                metrics::counter!(role.names().corrupt).increment(1);
                inner.corrupt += 1;
            }
            inner.torn_bytes += scan.bad_tail;
            seg.truncate_tail()?;
        }
        inner.next_id = inner.next_id.max(seg.end_id());
        inner.segments.insert(first, seg);
    }
    // Drained segments go; the newest stays only if it has live batches or
    // is still empty (its name then is the next id).
    let newest = inner.active_key();
    let drained: Vec<u64> = inner
        .segments
        .iter()
        .filter(|(k, s)| s.live_batches == 0 && (**k != newest || s.frames > 0))
        .map(|(k, _)| *k)
        .collect();
    for key in drained {
        if let Some(seg) = inner.segments.remove(&key) {
            seg.remove(dir)?;
            changed = true;
        }
    }
    // Orphan ack files (a crash between a segment's two removals). A
    // drained segment removed just above took its ack file with it.
    for id in acks {
        if !inner.segments.contains_key(&id) {
            let path = dir.join(segment::ack_name(id));
            match std::fs::remove_file(&path) {
                Ok(()) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpillError::io(&path, e)),
            }
        }
    }
    let active_ok = inner
        .segments
        .values()
        .next_back()
        .is_some_and(|s| s.end_id() == inner.next_id);
    if !active_ok {
        let seg = Segment::create(dir, inner.next_id)?;
        inner.segments.insert(seg.first_id, seg);
    }
    if changed {
        segment::sync_dir(dir)?;
    }
    Ok(inner)
}

/// A segment whose header did not check out and that has frames: rewritten
/// from its name and opened with every frame checked (only the 24 header
/// bytes change; the original ones are put back if no frame could be
/// recovered, and the file is then set aside as `.corrupt`). A whole
/// header of another format version is set aside untouched.
fn recover_header(
    dir: &Path,
    path: &Path,
    first: u64,
    limit: Option<u64>,
    role: StoreRole,
    inner: &mut Inner,
) -> Result<Option<(Segment, Scan)>, SpillError> {
    let aside = path.with_extension("corrupt");
    let mut h = [0u8; SEGMENT_HEADER];
    let version = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut h))
        .ok()
        .and_then(|()| header_version(&h));
    metrics::counter!(role.names().corrupt).increment(1);
    inner.corrupt += 1;
    if version.is_some_and(|v| v != VERSION) {
        tracing::error!(file = %path.display(), version = version.unwrap_or(0), "spill segment of another format version; set aside untouched");
        std::fs::rename(path, &aside).map_err(|e| SpillError::io(path, e))?;
        return Ok(None);
    }
    Segment::repair_header(dir, first)?;
    let reopened = Segment::open(dir, first, true, limit)?;
    match reopened {
        Some((seg, scan)) if seg.frames > 0 => {
            tracing::error!(file = %path.display(), batches = seg.live_batches, "spill segment header corrupt; rewritten from the file name, its frames recovered");
            Ok(Some((seg, scan)))
        }
        _ => {
            // Put the original header back (the scan cut nothing: a file
            // without a frame is all bad tail, cut only for live segments).
            let original = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| write_all_at(&f, &h, 0).and_then(|()| f.sync_all()));
            if let Err(e) = original {
                tracing::warn!(file = %path.display(), error = %e, "cannot restore the damaged header");
            }
            tracing::error!(file = %aside.display(), "spill segment header corrupt and no frame recoverable; set aside");
            std::fs::rename(path, &aside).map_err(|e| SpillError::io(path, e))?;
            Ok(None)
        }
    }
}

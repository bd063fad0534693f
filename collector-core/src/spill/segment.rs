//! One segment of the segment log: its data file (header, then frames),
//! its ack file (ids deleted from it), the in-memory index of its frames,
//! and recovery of both after a crash.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, FRAME_HEADER};
use super::resync::{self, Damage};
use super::SpillError;

/// Segment file header: magic, version, first id, CRC of the 20 bytes before.
pub const SEGMENT_HEADER: usize = 24;
const MAGIC: &[u8; 8] = b"OPCSPILL";
const VERSION: u32 = 1;
/// One ack entry: id (u64 LE) and CRC-32 of those 8 bytes (u32 LE).
pub const ACK_ENTRY: usize = 12;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// Where one frame is, and what the accounting needs of it.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub id: u64,
    pub offset: u64,
    pub len: u32,
    pub records: u32,
    pub written_ms: u64,
    pub deleted: bool,
}

/// A segment: `<first_id:020>.seg` and `<first_id:020>.ack`.
#[derive(Debug)]
pub struct Segment {
    pub first_id: u64,
    pub path: PathBuf,
    pub ack_path: PathBuf,
    /// Read and (for the active segment) positional writes.
    pub file: Arc<File>,
    /// Bytes of the data file (header and whole frames).
    pub len: u64,
    /// Frames from the oldest one not deleted; ids are consecutive (ids
    /// lost to damage have a deleted slot of length 0).
    pub slots: VecDeque<Slot>,
    /// Frames ever indexed in this segment (deleted ones included).
    pub frames: u64,
    pub live_batches: u64,
    pub live_records: u64,
    pub live_bytes: u64,
    pub ack: Option<Arc<File>>,
    pub ack_len: u64,
}

/// What recovery found in a data file.
#[derive(Debug, Default)]
pub struct Scan {
    /// Bytes after the last whole, valid frame (a torn tail, or corruption).
    pub bad_tail: u64,
    /// Why the scan stopped early, if it did.
    pub reason: Option<String>,
    /// Damaged regions skipped before whole frames (the frames after them
    /// kept).
    pub damaged: Vec<Damage>,
}

pub fn seg_name(first_id: u64) -> String {
    format!("{first_id:020}.seg")
}

pub fn ack_name(first_id: u64) -> String {
    format!("{first_id:020}.ack")
}

/// Parses `<digits>.<ext>`.
pub fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn header_bytes(first_id: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_id.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn valid_header(h: &[u8], first_id: u64) -> bool {
    h.len() == SEGMENT_HEADER && h == header_bytes(first_id)
}

pub fn ack_entry(id: u64) -> [u8; ACK_ENTRY] {
    let mut e = [0u8; ACK_ENTRY];
    e[..8].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&e[..8]);
    e[8..].copy_from_slice(&crc.to_le_bytes());
    e
}

/// Syncs a directory so that file creations and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpillError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SpillError::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(unix)]
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Whether the frame at `pos` (body `blen` bytes) matches its checksum.
fn verified_at(file: &File, pos: u64, blen: usize, crc: u32) -> std::io::Result<bool> {
    let mut body = vec![0u8; blen];
    read_exact_at(file, &mut body, pos + FRAME_HEADER as u64)?;
    Ok(frame::check(&body, crc).is_some())
}

impl Segment {
    fn empty(dir: &Path, first_id: u64, file: File, len: u64) -> Self {
        Segment {
            first_id,
            path: dir.join(seg_name(first_id)),
            ack_path: dir.join(ack_name(first_id)),
            file: Arc::new(file),
            len,
            slots: VecDeque::new(),
            frames: 0,
            live_batches: 0,
            live_records: 0,
            live_bytes: 0,
            ack: None,
            ack_len: 0,
        }
    }

    /// Creates a new, empty segment durably (file synced, directory synced).
    pub fn create(dir: &Path, first_id: u64) -> Result<Self, SpillError> {
        let path = dir.join(seg_name(first_id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| SpillError::io(&path, e))?;
        write_all_at(&file, &header_bytes(first_id), 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| SpillError::io(&path, e))?;
        sync_dir(dir)?;
        Ok(Self::empty(dir, first_id, file, SEGMENT_HEADER as u64))
    }

    /// Rewrites a damaged header from the segment's name (its first id),
    /// durably, so that its frames can be recovered.
    pub fn repair_header(dir: &Path, first_id: u64) -> Result<(), SpillError> {
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
    pub fn open(
        dir: &Path,
        first_id: u64,
        verify: bool,
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
                Err(reason) => {
                    // Damage: resume at the next whole frame, if any.
                    match resync::next_frame(&file, &path, pos + 1, file_len, next_id)? {
                        Some((at, id)) => {
                            scan.damaged.push(Damage {
                                offset: pos,
                                bytes: at - pos,
                                lost: id - next_id,
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
        s.load_acks()?;
        Ok(Some((s, scan)))
    }

    /// Cuts the file after the last valid frame, durably.
    pub fn truncate_tail(&mut self) -> Result<(), SpillError> {
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| SpillError::io(&self.path, e))
    }

    /// Applies the ack file: marks the ids it lists deleted. A torn last
    /// entry is cut so that new entries stay aligned.
    fn load_acks(&mut self) -> Result<(), SpillError> {
        let data = match std::fs::read(&self.ack_path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SpillError::io(&self.ack_path, e)),
        };
        let whole = data.len() - data.len() % ACK_ENTRY;
        for e in data[..whole].chunks_exact(ACK_ENTRY) {
            let mut id = [0u8; 8];
            id.copy_from_slice(&e[..8]);
            let id = u64::from_le_bytes(id);
            if e == ack_entry(id) {
                self.mark_deleted(id);
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.ack_path)
            .map_err(|e| SpillError::io(&self.ack_path, e))?;
        if whole != data.len() {
            file.set_len(whole as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| SpillError::io(&self.ack_path, e))?;
        }
        self.ack = Some(Arc::new(file));
        self.ack_len = whole as u64;
        self.trim();
        Ok(())
    }

    /// The slot of `id`, if it is in this segment and not trimmed.
    pub fn slot_index(&self, id: u64) -> Option<usize> {
        let front = self.slots.front()?.id;
        let i = usize::try_from(id.checked_sub(front)?).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    /// Marks `id` deleted in memory; returns its slot if it was live.
    pub fn mark_deleted(&mut self, id: u64) -> Option<Slot> {
        let i = self.slot_index(id)?;
        let slot = &mut self.slots[i];
        if slot.deleted {
            return None;
        }
        slot.deleted = true;
        let s = *slot;
        self.live_batches -= 1;
        self.live_records -= u64::from(s.records);
        self.live_bytes -= u64::from(s.len);
        Some(s)
    }

    /// Drops deleted slots from the front of the index.
    pub fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.deleted) {
            self.slots.pop_front();
        }
    }

    /// Appends ack entries for `ids` (not synced); returns the file to sync.
    pub fn write_acks(&mut self, ids: &[u64]) -> Result<Arc<File>, SpillError> {
        let file = match &self.ack {
            Some(f) => f.clone(),
            None => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.ack_path)
                    .map_err(|e| SpillError::io(&self.ack_path, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| SpillError::io(&self.ack_path, e))?
                    .len();
                self.ack_len = len - len % ACK_ENTRY as u64;
                let f = Arc::new(f);
                self.ack = Some(f.clone());
                f
            }
        };
        let mut buf = Vec::with_capacity(ids.len() * ACK_ENTRY);
        for &id in ids {
            buf.extend_from_slice(&ack_entry(id));
        }
        write_all_at(&file, &buf, self.ack_len).map_err(|e| SpillError::io(&self.ack_path, e))?;
        self.ack_len += buf.len() as u64;
        Ok(file)
    }

    /// Bytes on disk: data file and ack file.
    pub fn disk_bytes(&self) -> u64 {
        self.len + self.ack_len
    }

    /// The id after the last frame of this segment.
    pub fn end_id(&self) -> u64 {
        self.first_id + self.frames
    }

    /// Removes the segment's files: data file first (then the directory is
    /// synced), so a crash in between leaves an orphan ack file (removed
    /// at open), never a data file without its acks.
    pub fn remove(&self, dir: &Path) -> Result<(), SpillError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(SpillError::io(&self.path, e)),
        }
        sync_dir(dir)?;
        match std::fs::remove_file(&self.ack_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpillError::io(&self.ack_path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name(&seg_name(42), "seg"), Some(42));
        assert_eq!(parse_name(&ack_name(42), "seg"), None);
        assert_eq!(parse_name("42.seg", "seg"), None);
    }
}

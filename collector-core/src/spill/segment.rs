//! One segment of the segment log: its data file (header, then frames),
//! its ack file (ids deleted from it), the in-memory index of its frames,
//! and recovery of both after a crash.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::resync::Damage;
use super::SpillError;

/// Segment file header: magic, version, first id, CRC of the 20 bytes before.
pub const SEGMENT_HEADER: usize = 24;
const MAGIC: &[u8; 8] = b"OPCSPILL";
/// The segment format's version.
pub const VERSION: u32 = 1;
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

pub(super) fn header_bytes(first_id: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_id.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(super) fn valid_header(h: &[u8], first_id: u64) -> bool {
    h.len() == SEGMENT_HEADER && h == header_bytes(first_id)
}

/// The format version of a whole header of ours: our magic and a checksum
/// that holds (`None`: not ours, or damaged, a damaged version field
/// included).
pub(super) fn header_version(h: &[u8]) -> Option<u32> {
    let whole = h.len() == SEGMENT_HEADER
        && &h[..8] == MAGIC
        && h[20..24] == crc32fast::hash(&h[..20]).to_le_bytes();
    whole.then(|| u32::from_le_bytes([h[8], h[9], h[10], h[11]]))
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

impl Segment {
    pub(super) fn empty(dir: &Path, first_id: u64, file: File, len: u64) -> Self {
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

    /// Cuts the file after the last valid frame, durably.
    pub fn truncate_tail(&mut self) -> Result<(), SpillError> {
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| SpillError::io(&self.path, e))
    }

    /// Applies the ack file: marks the ids it lists deleted. A torn last
    /// entry is cut so that new entries stay aligned. Returns the ids it
    /// lists when `collect` (to tell damage from delivered batches).
    pub(super) fn load_acks(&mut self, collect: bool) -> Result<HashSet<u64>, SpillError> {
        let mut acked = HashSet::new();
        let data = match std::fs::read(&self.ack_path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(acked),
            Err(e) => return Err(SpillError::io(&self.ack_path, e)),
        };
        let whole = data.len() - data.len() % ACK_ENTRY;
        for e in data[..whole].chunks_exact(ACK_ENTRY) {
            let mut id = [0u8; 8];
            id.copy_from_slice(&e[..8]);
            let id = u64::from_le_bytes(id);
            if e == ack_entry(id) {
                self.mark_deleted(id);
                if collect {
                    acked.insert(id);
                }
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
        Ok(acked)
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

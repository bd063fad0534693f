//! Finding the next whole frame after damage in a segment: a flipped bit
//! in a frame's length, or bytes overwritten in the middle of a file, must
//! cost the batches in the damaged bytes, not every batch after them.
//! Frames carry their id and a CRC of their body, so the next intact frame
//! is recognisable at any offset: a plausible length, the id expected next
//! (or a later one, when frames were lost), and a matching checksum.

use std::fs::File;
use std::path::Path;

use super::frame::{self, BODY_HEADER, FRAME_HEADER};
use super::segment::read_exact_at;
use super::SpillError;

/// Most ids a damaged region may swallow: a candidate frame whose id is
/// further ahead is not one of this segment's.
pub const MAX_LOST_IDS: u64 = 1 << 20;

/// A region of a segment skipped as damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first damaged byte.
    pub offset: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// The ids skipped with them.
    pub ids: std::ops::Range<u64>,
    /// Of those, the batches not delivered before (set once the segment's
    /// acks are read).
    pub lost: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// Bytes of the file read at a time while searching.
const WINDOW: usize = 1 << 20;

/// The first whole, valid frame starting in `from..file_len`, as `(offset,
/// id)`, with an id from `next_id` on and below `limit` (the next
/// segment's first id). Reads a window at a time, and a candidate's body
/// only once its length and id are plausible.
pub fn next_frame(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    next_id: u64,
    limit: Option<u64>,
) -> Result<Option<(u64, u64)>, SpillError> {
    let head = (FRAME_HEADER + BODY_HEADER) as u64;
    let io = |e| SpillError::io(path, e);
    let plausible =
        |id: u64| id >= next_id && id - next_id <= MAX_LOST_IDS && limit.is_none_or(|l| id < l);
    let mut start = from;
    let mut window = Vec::new();
    while start + head <= file_len {
        // A window and the head of a frame starting at its last offset.
        let len = usize::try_from((file_len - start).min(WINDOW as u64 + head)).unwrap_or(WINDOW);
        window.resize(len, 0);
        read_exact_at(file, &mut window, start).map_err(io)?;
        let starts = len.saturating_sub(head as usize - 1).min(WINDOW);
        for i in 0..starts {
            let Some((blen, crc, id)) = candidate(&window[i..]) else {
                continue;
            };
            let at = start + i as u64;
            if !plausible(id) || at + (FRAME_HEADER + blen) as u64 > file_len {
                continue;
            }
            let mut body = vec![0u8; blen];
            read_exact_at(file, &mut body, at + FRAME_HEADER as u64).map_err(io)?;
            if frame::check(&body, crc).is_some() {
                return Ok(Some((at, id)));
            }
        }
        start += starts.max(1) as u64;
    }
    Ok(None)
}

/// The body length, checksum and id of what looks like a frame at the
/// start of `data` (its header and body header, unchecked).
fn candidate(data: &[u8]) -> Option<(usize, u32, u64)> {
    let mut h = [0u8; FRAME_HEADER];
    h.copy_from_slice(data.get(..FRAME_HEADER)?);
    let (blen, crc) = frame::header(&h)?;
    let meta = frame::meta(data.get(FRAME_HEADER..FRAME_HEADER + BODY_HEADER)?)?;
    Some((blen, crc, meta.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::Compression;

    #[test]
    fn finds_the_next_frame_after_garbage() {
        let mut data = b"garbage, then frames".to_vec();
        let start = data.len() as u64;
        frame::encode(&mut data, 5, 0, 1, b"five", Compression::None).unwrap();
        frame::encode(&mut data, 6, 0, 1, b"six", Compression::None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let len = data.len() as u64;
        let find = |next, limit| next_frame(&file, &path, 0, len, next, limit).unwrap();
        assert_eq!(find(5, None), Some((start, 5)));
        assert_eq!(find(3, None), Some((start, 5)));
        // An id already passed is not taken; nor one of the next segment.
        let six = find(6, None).unwrap();
        assert_eq!(six.1, 6);
        assert!(six.0 > start);
        assert_eq!(find(5, Some(5)), None);
        assert_eq!(
            next_frame(&file, &path, 0, start + 10, 0, None).unwrap(),
            None
        );
    }
}

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
    /// Batches lost in them (ids skipped).
    pub lost: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// The first whole, valid frame starting in `from..file_len`, as `(offset,
/// id)`, with an id from `next_id` on. Reads the rest of the file (only
/// ever after damage).
pub fn next_frame(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    next_id: u64,
) -> Result<Option<(u64, u64)>, SpillError> {
    if from >= file_len {
        return Ok(None);
    }
    let len = usize::try_from(file_len - from).unwrap_or(usize::MAX);
    let mut data = vec![0u8; len];
    read_exact_at(file, &mut data, from).map_err(|e| SpillError::io(path, e))?;
    Ok(find(&data, next_id).map(|(i, id)| (from + i as u64, id)))
}

/// The offset in `data` and the id of the first valid frame there with an
/// id from `next_id` on.
fn find(data: &[u8], next_id: u64) -> Option<(usize, u64)> {
    let mut i = 0;
    while i + FRAME_HEADER + BODY_HEADER <= data.len() {
        let mut h = [0u8; FRAME_HEADER];
        h.copy_from_slice(&data[i..i + FRAME_HEADER]);
        if let Some((blen, crc)) = frame::header(&h) {
            if let Some(body) = data.get(i + FRAME_HEADER..i + FRAME_HEADER + blen) {
                let plausible = frame::meta(body)
                    .is_some_and(|m| m.id >= next_id && m.id - next_id <= MAX_LOST_IDS);
                if plausible {
                    if let Some(meta) = frame::check(body, crc) {
                        return Some((i, meta.id));
                    }
                }
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::Compression;

    #[test]
    fn finds_the_next_frame_after_garbage() {
        let mut data = b"garbage, then frames".to_vec();
        let start = data.len();
        frame::encode(&mut data, 5, 0, 1, b"five", Compression::None).unwrap();
        frame::encode(&mut data, 6, 0, 1, b"six", Compression::None).unwrap();
        assert_eq!(find(&data, 5), Some((start, 5)));
        assert_eq!(find(&data, 3), Some((start, 5)));
        // An id already passed is not taken.
        let six = find(&data, 6).unwrap();
        assert_eq!(six.1, 6);
        assert!(six.0 > start);
        assert_eq!(find(&data[..start + 10], 0), None);
    }
}

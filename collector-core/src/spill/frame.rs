//! The frame: one spilled batch as bytes, with its checksum. Both backends
//! store frames (the segment log back to back in a file, sled as values),
//! so a torn or rotten batch is detected the same way everywhere.
//!
//! ```text
//! offset size field
//!      0    4 body_len   u32 LE: bytes after the 8-byte frame header
//!      4    4 crc32      u32 LE: CRC-32 (IEEE) of the body
//!      8    8 id         u64 LE
//!     16    8 written_ms u64 LE: Unix milliseconds of the append
//!     24    4 records    u32 LE
//!     28    4 raw_len    u32 LE: payload length before compression
//!     32    1 codec      0 = none, 1 = LZ4 block
//!     33    n data       body_len - 25 bytes
//! ```

use super::{Compression, SpillError};

/// Bytes before the body: `body_len` and `crc32`.
pub const FRAME_HEADER: usize = 8;
/// Fixed part of the body before the data.
pub const BODY_HEADER: usize = 25;
/// The largest body accepted (a corrupt length beyond it is not trusted).
pub const MAX_BODY: usize = 256 << 20;

const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// The fixed fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The batch id.
    pub id: u64,
    /// Unix milliseconds of the append.
    pub written_ms: u64,
    /// Records in the batch.
    pub records: u32,
    /// Payload length before compression.
    pub raw_len: u32,
    /// Codec byte.
    pub codec: u8,
}

/// A payload compressed (or not) for a frame: the expensive part of
/// encoding, done before taking the store's lock.
#[derive(Debug)]
pub struct Packed<'a> {
    raw_len: u32,
    codec: u8,
    data: std::borrow::Cow<'a, [u8]>,
}

impl Packed<'_> {
    /// The frame length this payload will take.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + BODY_HEADER + self.data.len()
    }
}

/// Compresses a payload (kept raw when compression does not shrink it).
pub fn pack(payload: &[u8], compression: Compression) -> Result<Packed<'_>, SpillError> {
    let raw_len = u32::try_from(payload.len()).map_err(|_| SpillError::TooLarge(payload.len()))?;
    let packed = match compression {
        Compression::Lz4 => {
            let c = lz4_flex::block::compress(payload);
            (c.len() < payload.len()).then(|| Packed {
                raw_len,
                codec: CODEC_LZ4,
                data: c.into(),
            })
        }
        Compression::None => None,
    };
    let packed = packed.unwrap_or(Packed {
        raw_len,
        codec: CODEC_NONE,
        data: payload.into(),
    });
    if BODY_HEADER + packed.data.len() > MAX_BODY {
        return Err(SpillError::TooLarge(payload.len()));
    }
    Ok(packed)
}

/// Appends the frame of a packed batch to `out`; returns the frame length.
pub fn encode_packed(
    out: &mut Vec<u8>,
    id: u64,
    written_ms: u64,
    records: u32,
    p: &Packed<'_>,
) -> usize {
    let body_len = BODY_HEADER + p.data.len();
    let start = out.len();
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&written_ms.to_le_bytes());
    out.extend_from_slice(&records.to_le_bytes());
    out.extend_from_slice(&p.raw_len.to_le_bytes());
    out.push(p.codec);
    out.extend_from_slice(&p.data);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    FRAME_HEADER + body_len
}

/// Appends the frame of one batch to `out`; returns the frame's length.
/// (The stores pack first and frame with `encode_packed`; tests frame in
/// one step.)
#[cfg(test)]
pub fn encode(
    out: &mut Vec<u8>,
    id: u64,
    written_ms: u64,
    records: u32,
    payload: &[u8],
    compression: Compression,
) -> Result<usize, SpillError> {
    let p = pack(payload, compression)?;
    Ok(encode_packed(out, id, written_ms, records, &p))
}

/// Splits a frame header into `(body_len, crc)`; `None` if the length is
/// impossible.
pub fn header(h: &[u8; FRAME_HEADER]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (BODY_HEADER..=MAX_BODY)
        .contains(&len)
        .then_some((len, crc))
}

/// The fixed fields of a body (no checksum check: the caller has done it
/// or is only indexing).
pub fn meta(body: &[u8]) -> Option<FrameMeta> {
    let b = body.get(..BODY_HEADER)?;
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at = |i: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[i..i + 4]);
        u32::from_le_bytes(a)
    };
    let codec = b[24];
    (codec == CODEC_NONE || codec == CODEC_LZ4).then_some(FrameMeta {
        id: u64_at(0),
        written_ms: u64_at(8),
        records: u32_at(16),
        raw_len: u32_at(20),
        codec,
    })
}

/// Checks the body against its checksum and returns its fixed fields.
pub fn check(body: &[u8], crc: u32) -> Option<FrameMeta> {
    if crc32fast::hash(body) != crc {
        return None;
    }
    meta(body)
}

/// Checks a whole frame (header and body) and returns its fields and
/// decompressed payload.
pub fn decode(frame: &[u8]) -> Result<(FrameMeta, Vec<u8>), String> {
    let mut h = [0u8; FRAME_HEADER];
    h.copy_from_slice(frame.get(..FRAME_HEADER).ok_or("short frame")?);
    let (len, crc) = header(&h).ok_or("bad frame length")?;
    let body = frame
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or("frame shorter than its length")?;
    let meta = check(body, crc).ok_or("checksum mismatch")?;
    let data = &body[BODY_HEADER..];
    let payload = match meta.codec {
        CODEC_LZ4 => lz4_flex::block::decompress(data, meta.raw_len as usize)
            .map_err(|e| format!("lz4: {e}"))?,
        _ => data.to_vec(),
    };
    if payload.len() != meta.raw_len as usize {
        return Err("payload length mismatch".into());
    }
    Ok((meta, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        for compression in [Compression::None, Compression::Lz4] {
            let payload: Vec<u8> = b"abcabcabc".repeat(100);
            let mut out = Vec::new();
            let n = encode(&mut out, 7, 1234, 3, &payload, compression).unwrap();
            assert_eq!(n, out.len());
            let (m, p) = decode(&out).unwrap();
            assert_eq!((m.id, m.written_ms, m.records), (7, 1234, 3));
            assert_eq!(p, payload);
            let last = out.len() - 1;
            out[last] ^= 1;
            assert!(decode(&out).is_err());
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding answers (never panics).
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }

        /// A frame with one bit flipped anywhere, or cut anywhere, is
        /// refused: never taken for a batch (CRC-32 catches every
        /// single-bit error; a cut frame is shorter than its length).
        #[test]
        fn a_flipped_bit_or_a_cut_is_refused(
            payload in proptest::collection::vec(0u8..4, 0..400),
            lz4 in proptest::prelude::any::<bool>(),
            bit in proptest::prelude::any::<proptest::sample::Index>(),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let compression = if lz4 { Compression::Lz4 } else { Compression::None };
            let mut out = Vec::new();
            encode(&mut out, 9, 42, 2, &payload, compression).unwrap();
            let (m, p) = decode(&out).unwrap();
            proptest::prop_assert_eq!((m.id, m.records), (9, 2));
            proptest::prop_assert_eq!(&p, &payload);
            let mut flipped = out.clone();
            let i = bit.index(flipped.len() * 8);
            flipped[i / 8] ^= 1 << (i % 8);
            proptest::prop_assert!(decode(&flipped).is_err(), "bit {} flipped, accepted", i);
            let cut = cut.index(out.len());
            proptest::prop_assert!(decode(&out[..cut]).is_err(), "cut at {}, accepted", cut);
        }
    }

    #[test]
    fn incompressible_is_stored_raw() {
        let payload: Vec<u8> = (0..64u32).map(|i| (i * 151 % 251) as u8).collect();
        let mut out = Vec::new();
        encode(&mut out, 1, 0, 1, &payload, Compression::Lz4).unwrap();
        assert_eq!(out[32], CODEC_NONE);
        assert_eq!(decode(&out).unwrap().1, payload);
    }
}

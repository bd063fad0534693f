//! Per-device sequence numbers that never repeat, also across restarts.
//!
//! Consumers deduplicate by `(device_id, seq)`, so a restarted collector
//! must never hand out a number it used before. Every run starts its
//! devices at a *base* and counts up by one per record. The base is the
//! larger of the wall clock in microseconds and a floor persisted in
//! `state_dir` (when configured); each run persists `base + 2^32` as the
//! next floor before it reads anything. A run would need 2^32 records per
//! device to collide with the next one, and the clock advances a million
//! per second while a device makes at most 100 records per second, so
//! numbers stay unique even without a state dir unless the clock steps
//! back by more than the previous run's length.

use std::path::{Path, PathBuf};

use crate::error::CollectorError;

/// Room reserved for one run: more records per device than any run makes.
const RUN_SPAN: u64 = 1 << 32;
const FLOOR_FILE: &str = "seq-floor";

/// Where a run's sequence numbers start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqBase(pub(crate) u64);

impl SeqBase {
    /// Reserves this run's base, persisting the next floor when `state_dir` is set.
    pub(crate) fn reserve(state_dir: Option<&Path>) -> Result<SeqBase, CollectorError> {
        let now_us = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
        let Some(dir) = state_dir else {
            return Ok(SeqBase(now_us));
        };
        let err = |what: &str, p: &Path, e: std::io::Error| {
            CollectorError::Startup(format!("{what} {}: {e}", p.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create state dir", dir, e))?;
        let path = dir.join(FLOOR_FILE);
        let floor = match std::fs::read(&path) {
            Ok(bytes) => parse_floor(&bytes).map_err(|reason| {
                CollectorError::Startup(format!(
                    "{} is corrupt ({reason}): refusing to start, as this run's sequence numbers could repeat earlier ones. If this machine's clock is right, removing the file is safe (numbers then start from the clock); otherwise restore it from a backup",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err("cannot read", &path, e)),
        };
        let base = now_us.max(floor);
        let next = base.saturating_add(RUN_SPAN);
        write_durably(&path, &format_floor(next)).map_err(|e| err("cannot write", &path, e))?;
        Ok(SeqBase(base))
    }
}

/// `<floor> <crc32 of the floor's digits, hex>`: a flipped bit in the
/// number is caught, not taken for a lower floor.
fn format_floor(floor: u64) -> String {
    let digits = floor.to_string();
    format!("{digits} {:08x}\n", crc32fast::hash(digits.as_bytes()))
}

/// The floor in a file written by [`format_floor`], or by versions before
/// it (the number alone).
fn parse_floor(bytes: &[u8]) -> Result<u64, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text")?;
    let mut fields = text.split_ascii_whitespace();
    let digits = fields.next().ok_or("empty")?;
    let floor = digits.parse::<u64>().map_err(|_| "not a number")?;
    match (fields.next(), fields.next()) {
        (None, _) => Ok(floor),
        (Some(crc), None) => {
            let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
            if crc == crc32fast::hash(digits.as_bytes()) {
                Ok(floor)
            } else {
                Err("checksum mismatch")
            }
        }
        _ => Err("extra fields"),
    }
}

pub(crate) fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_never_overlap_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = SeqBase::reserve(Some(dir.path())).unwrap();
        let b = SeqBase::reserve(Some(dir.path())).unwrap();
        assert!(b.0 >= a.0 + RUN_SPAN, "{} {}", a.0, b.0);
        std::fs::write(dir.path().join(FLOOR_FILE), "garbage").unwrap();
        assert!(SeqBase::reserve(Some(dir.path())).is_err());
    }

    /// Every single-bit flip of a written floor file is refused (or reads
    /// the same number). A cut is refused, or leaves a prefix of the
    /// number that reads as the old format: at most a tenth of the floor,
    /// so below the clock, which then decides as without a file.
    #[test]
    fn a_damaged_floor_is_refused_with_its_path() {
        let good = format_floor(1_795_377_071_812_936);
        assert_eq!(parse_floor(good.as_bytes()), Ok(1_795_377_071_812_936));
        assert_eq!(parse_floor(b"1795377071812936"), Ok(1_795_377_071_812_936));
        for bit in 0..good.len() * 8 {
            let mut bytes = good.clone().into_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            match parse_floor(&bytes) {
                Err(_) => {}
                // Whitespace flipped into whitespace: the same fields.
                Ok(f) => assert_eq!(f, 1_795_377_071_812_936, "bit {bit}: {bytes:?}"),
            }
        }
        for cut in 0..good.len() {
            if let Ok(f) = parse_floor(&good.as_bytes()[..cut]) {
                assert!(
                    "1795377071812936".starts_with(&f.to_string()),
                    "cut at {cut}: {f}"
                );
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FLOOR_FILE);
        let mut bytes = good.into_bytes();
        bytes[3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = SeqBase::reserve(Some(dir.path())).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("checksum mismatch"),
            "{e}"
        );
    }

    #[test]
    fn clock_base_without_state_dir() {
        let a = SeqBase::reserve(None).unwrap();
        assert!(a.0 > 1_600_000_000_000_000);
    }
}

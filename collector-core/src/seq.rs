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
        let floor = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                CollectorError::Startup(format!(
                    "{} is corrupt (expected one integer); remove it only if no records were produced with this state dir",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err("cannot read", &path, e)),
        };
        let base = now_us.max(floor);
        let next = base.saturating_add(RUN_SPAN);
        write_durably(&path, &next.to_string()).map_err(|e| err("cannot write", &path, e))?;
        Ok(SeqBase(base))
    }
}

fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
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

    #[test]
    fn clock_base_without_state_dir() {
        let a = SeqBase::reserve(None).unwrap();
        assert!(a.0 > 1_600_000_000_000_000);
    }
}

//! Space under the queue pattern (sled issue #1333): a steady stream of
//! appends and deletes with a small live window, then a full drain. The
//! segment log must give the space back; sled's figures are printed for
//! `docs/spill.md` (run with `--nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use collector_core::spill::{self, NewBatch, SpillBackend, SpillConfig};

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pushes `total` batches of 4 KiB through a window of 256 live batches;
/// returns (peak live bytes, peak dir bytes, dir bytes after drain).
fn queue(backend: SpillBackend, total: u64) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpillConfig {
        backend,
        segment_bytes: 1 << 20,
        ..SpillConfig::new(dir.path())
    };
    let s = spill::open(&cfg).unwrap();
    let payloads: Vec<Vec<u8>> = (0..16).map(|i| noise(4096, i + 1)).collect();
    let group: Vec<NewBatch<'_>> = payloads
        .iter()
        .map(|p| NewBatch {
            payload: p,
            records: 1,
        })
        .collect();
    let (mut peak_live, mut peak_dir) = (0, 0);
    let mut n = 0;
    while n < total {
        s.append_many(&group).unwrap();
        n += 16;
        let st = s.stats();
        if st.batches > 256 {
            let old: Vec<_> = s.oldest(16).unwrap().iter().map(|b| b.id).collect();
            s.delete(&old).unwrap();
        }
        peak_live = peak_live.max(st.stored_bytes);
        if n % 1024 == 0 {
            peak_dir = peak_dir.max(dir_bytes(dir.path()));
        }
    }
    loop {
        let b: Vec<_> = s.oldest(64).unwrap().iter().map(|b| b.id).collect();
        if b.is_empty() {
            break;
        }
        s.delete(&b).unwrap();
    }
    s.flush().unwrap();
    drop(s);
    let after = dir_bytes(dir.path());
    eprintln!(
        "QUEUE {backend:?}: {total} x 4 KiB batches, peak live {peak_live} B, \
         peak dir {peak_dir} B, dir after drain {after} B"
    );
    (peak_live, peak_dir, after)
}

#[test]
fn segment_log_gives_space_back_under_a_queue_pattern() {
    let (live, peak, after) = queue(SpillBackend::SegmentLog, 16_384);
    // At most the live window plus a few segments, and ~nothing after.
    assert!(peak < live + 4 * (1 << 20), "peak {peak}, live {live}");
    assert!(after < 4096, "{after}");
}

#[test]
fn sled_space_under_a_queue_pattern_is_measured() {
    let (_live, _peak, _after) = queue(SpillBackend::Sled, 16_384);
}

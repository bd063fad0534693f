//! Random damage to a closed segment-log spill (the state a disk, a bad
//! copy or an operator can leave): bits flipped, byte runs overwritten and
//! files cut, in any segment, header included. Reopened, the store starts;
//! every batch the damage did not touch comes back intact; no damaged batch
//! comes back at all; the damage is counted; and the store takes and keeps
//! new batches afterwards.
//!
//! The test reads the frame layout of each segment itself (before the
//! damage) to know which batches a damaged byte belongs to.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use collector_core::spill::{self, Compression, SpillBackend, SpillConfig};
use rand::{Rng, SeedableRng};

const SEGMENT_HEADER: u64 = 24;
const SEEDS: u64 = 60;

fn cfg(dir: &Path) -> SpillConfig {
    SpillConfig {
        segment_bytes: 8 * 1024,
        backend: SpillBackend::SegmentLog,
        compression: Compression::None,
        ..SpillConfig::new(dir)
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("batch-{i}:")
        .repeat(5 + (i as usize * 7) % 60)
        .into_bytes()
}

/// Where each batch's frame is: file, start, end (exclusive).
fn frames(dir: &Path) -> BTreeMap<u64, (PathBuf, u64, u64)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut pos = SEGMENT_HEADER as usize;
        while pos + 16 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            let id = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
            let end = pos + 8 + len;
            out.insert(id, (path.clone(), pos as u64, end as u64));
            pos = end;
        }
    }
    out
}

#[test]
fn damage_costs_only_the_batches_it_touched() {
    let mut summary = (0u64, 0u64, 0u64);
    for seed in 0..SEEDS {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let c = cfg(dir);
        let mut written = BTreeMap::new();
        {
            let s = spill::open(&c).unwrap();
            for i in 0..80 {
                let p = payload(i);
                let id = s.append(&p, 1).unwrap();
                written.insert(id.0, p);
            }
        }
        let layout = frames(dir);
        assert_eq!(layout.len(), written.len());
        let files: Vec<PathBuf> = {
            let mut f: Vec<PathBuf> = layout.values().map(|(p, _, _)| p.clone()).collect();
            f.sort();
            f.dedup();
            f
        };
        // 1 to 3 kinds of damage, anywhere.
        let mut touched = std::collections::BTreeSet::new();
        let mut ranges: Vec<(PathBuf, u64, u64)> = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let file = &files[rng.random_range(0..files.len())];
            let mut bytes = std::fs::read(file).unwrap();
            let len = bytes.len() as u64;
            match rng.random_range(0..3) {
                0 => {
                    let at = rng.random_range(0..len);
                    bytes[at as usize] ^= 1 << rng.random_range(0..8);
                    ranges.push((file.clone(), at, at + 1));
                }
                1 => {
                    let at = rng.random_range(0..len);
                    let n = rng.random_range(1..40).min(len - at);
                    for b in &mut bytes[at as usize..(at + n) as usize] {
                        *b = rng.random();
                    }
                    ranges.push((file.clone(), at, at + n));
                }
                _ => {
                    let at = rng.random_range(SEGMENT_HEADER..len);
                    bytes.truncate(at as usize);
                    ranges.push((file.clone(), at, u64::MAX));
                }
            }
            std::fs::write(file, &bytes).unwrap();
        }
        for (id, (file, start, end)) in &layout {
            if ranges
                .iter()
                .any(|(f, a, b)| f == file && *a < *end && *b > *start)
            {
                touched.insert(*id);
            }
        }

        let s = spill::open(&c).unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
        let back = s.oldest(usize::MAX).unwrap();
        let stats = s.stats();
        for b in &back {
            let original = written
                .get(&b.id.0)
                .unwrap_or_else(|| panic!("seed {seed}: unknown id {}", b.id.0));
            assert_eq!(
                &b.payload, original,
                "seed {seed}: batch {} changed",
                b.id.0
            );
            assert!(
                !touched.contains(&b.id.0),
                "seed {seed}: damaged batch {} came back",
                b.id.0
            );
        }
        let got: std::collections::BTreeSet<u64> = back.iter().map(|b| b.id.0).collect();
        let lost_intact: Vec<u64> = written
            .keys()
            .filter(|id| !touched.contains(id) && !got.contains(id))
            .copied()
            .collect();
        assert!(
            lost_intact.is_empty(),
            "seed {seed}: intact batches lost: {lost_intact:?} (damage {ranges:?}, touched {touched:?})"
        );
        if !touched.is_empty() {
            assert!(
                stats.corrupt > 0 || stats.torn_bytes > 0,
                "seed {seed}: damage not counted: {stats:?}"
            );
        }
        // The store carries on: a new batch is kept across a reopen.
        let id = s.append(b"after the damage", 1).unwrap();
        drop(s);
        let s = spill::open(&c).unwrap();
        let again = s.oldest(usize::MAX).unwrap();
        assert_eq!(again.last().map(|b| b.id), Some(id), "seed {seed}");
        assert_eq!(again.len(), back.len() + 1, "seed {seed}");
        summary.0 += touched.len() as u64;
        summary.1 += back.len() as u64;
        summary.2 += stats.corrupt;
    }
    println!(
        "{SEEDS} damaged stores: {} batches touched, {} intact batches returned, {} counted corrupt",
        summary.0, summary.1, summary.2
    );
}

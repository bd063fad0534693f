//! SIGKILL torture of the spill store: a child process appends (3 threads,
//! group commit) and deletes (1 thread, out of order), and is killed at a
//! random moment; the parent reopens the store and checks that every
//! append the child was told is durable is still there, intact, unless the
//! child had asked to delete it. After the cycles the store is drained and
//! its directory measured.
//!
//! The child is this test binary itself, re-executed with
//! `SPILL_TORTURE_CHILD` set and filtered to [`torture_child`].
//!
//! `SPILL_TORTURE_CYCLES` overrides the cycle count (both backends).
//! Run with `--nocapture` to see the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collector_core::spill::{self, NewBatch, SpillBackend, SpillConfig, SpillStore};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "SPILL_TORTURE_CHILD";
const SEGMENT_BYTES: u64 = 256 * 1024;

/// The two torture tests share the machine's cores; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A batch whose content follows from its first 8 bytes (the seed): any
/// batch read back can be checked, acknowledged or not.
fn make_payload(seed: u64) -> (Vec<u8>, u32) {
    let mut x = seed | 1;
    let len = 16 + (xorshift(&mut x) % 6000) as usize;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&seed.to_le_bytes());
    while p.len() < len {
        // Text-like: compressible, like encoded records.
        p.push(b'a' + (xorshift(&mut x) % 12) as u8);
    }
    (p, 1 + (seed % 500) as u32)
}

fn check_payload(p: &[u8], records: u32) -> Option<u64> {
    let seed = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let (want, want_records) = make_payload(seed);
    (want == p && want_records == records).then_some(seed)
}

fn config(dir: &Path, backend: SpillBackend) -> SpillConfig {
    SpillConfig {
        backend,
        segment_bytes: SEGMENT_BYTES,
        ..SpillConfig::new(dir)
    }
}

fn backend_from(name: &str) -> SpillBackend {
    if name == "sled" {
        SpillBackend::Sled
    } else {
        SpillBackend::SegmentLog
    }
}

/// The child: runs until killed (or 20 s, as a safety net).
#[test]
fn torture_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let backend = backend_from(&std::env::var("SPILL_TORTURE_BACKEND").unwrap_or_default());
    let seed: u64 = std::env::var("SPILL_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let journal_path = PathBuf::from(std::env::var("SPILL_TORTURE_JOURNAL").unwrap_or_default());
    let journal = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&journal_path)
            .unwrap(),
    ));
    let log = |line: String| {
        // One write per line: a killed process leaves whole lines.
        journal.lock().unwrap().write_all(line.as_bytes()).unwrap();
    };
    let store: Arc<dyn SpillStore> = match spill::open(&config(Path::new(&dir), backend)) {
        Ok(s) => Arc::from(s),
        Err(e) => {
            eprintln!("child: open failed: {e}");
            std::process::exit(3);
        }
    };
    log("R\n".into());
    let mut threads = Vec::new();
    for t in 0..3u64 {
        let store = store.clone();
        let journal = journal.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = seed.wrapping_mul(31).wrapping_add(t + 1) | 1;
            for n in 0u64.. {
                let k = 1 + (xorshift(&mut x) % 3) as usize;
                let seeds: Vec<u64> = (0..k)
                    .map(|i| (seed << 32) ^ (t << 28) ^ (n << 3) ^ i as u64)
                    .collect();
                let made: Vec<_> = seeds.iter().map(|&s| make_payload(s)).collect();
                let batches: Vec<NewBatch<'_>> = made
                    .iter()
                    .map(|(p, r)| NewBatch {
                        payload: p,
                        records: *r,
                    })
                    .collect();
                match store.append_many(&batches) {
                    Ok(ids) => {
                        let mut line = String::new();
                        for (id, s) in ids.iter().zip(&seeds) {
                            line.push_str(&format!("A {} {s}\n", id.0));
                        }
                        journal.lock().unwrap().write_all(line.as_bytes()).unwrap();
                    }
                    Err(e) => {
                        eprintln!("child: append failed: {e}");
                        std::process::exit(4);
                    }
                }
            }
        }));
    }
    {
        let store = store.clone();
        let journal = journal.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = seed ^ 0xDEAD_BEEF;
            loop {
                if store.stats().batches < 300 {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let batches = match store.oldest(64) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("child: read failed: {e}");
                        std::process::exit(5);
                    }
                };
                for b in &batches {
                    if check_payload(&b.payload, b.records).is_none() {
                        eprintln!("child: batch {} has wrong content", b.id);
                        std::process::exit(6);
                    }
                }
                // Out of order: about 80 % now, the rest in a later round.
                let ids: Vec<_> = batches
                    .iter()
                    .map(|b| b.id)
                    .filter(|_| !xorshift(&mut x).is_multiple_of(5))
                    .collect();
                let mut line = String::new();
                for id in &ids {
                    line.push_str(&format!("D {}\n", id.0));
                }
                // Intent first: a deletion may take effect before the
                // journal would record its completion.
                journal.lock().unwrap().write_all(line.as_bytes()).unwrap();
                if let Err(e) = store.delete(&ids) {
                    eprintln!("child: delete failed: {e}");
                    std::process::exit(7);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(20));
    std::process::exit(0);
}

#[derive(Debug, Default)]
struct Figures {
    cycles: usize,
    cycles_with_appends: usize,
    acked: usize,
    deleted: usize,
    checked_present: usize,
    lost: usize,
    corrupt: u64,
    wrong_content: usize,
    torn_tails: usize,
    max_disk_bytes: u64,
    disk_after_drain: u64,
    disk_after_drain_reopen: u64,
    drain_batches: usize,
    elapsed: Duration,
}

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

fn torture(backend: SpillBackend, default_cycles: usize) -> Figures {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cycles = std::env::var("SPILL_TORTURE_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cycles);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let journal = root.path().join("journal");
    let stderr_path = root.path().join("child.stderr");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0001);
    // id -> seed of every acknowledged append not (asked to be) deleted.
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut f = Figures::default();
    let start = Instant::now();
    for cycle in 0..cycles {
        std::fs::write(&journal, b"").unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "torture_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env("SPILL_TORTURE_BACKEND", backend.label())
            .env("SPILL_TORTURE_SEED", (cycle as u64 + 1).to_string())
            .env("SPILL_TORTURE_JOURNAL", &journal)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        if cycle % 4 == 3 {
            // Now and then during startup and recovery.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=5)));
        } else {
            // Otherwise at a random moment of the work, 5-50 ms after the
            // child opened the store.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10)
                && !std::fs::read(&journal).unwrap().starts_with(b"R")
            {
                std::thread::sleep(Duration::from_micros(500));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(5..=50)));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "child of cycle {cycle} ended on its own ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        let text = std::fs::read_to_string(&journal).unwrap();
        let mut appended = 0;
        let mut deleted = HashSet::new();
        for line in text.lines() {
            let mut w = line.split(' ');
            match (w.next(), w.next(), w.next()) {
                (Some("A"), Some(id), Some(seed)) => {
                    let (id, seed): (u64, u64) = (id.parse().unwrap(), seed.parse().unwrap());
                    if let Some(old) = model.insert(id, seed) {
                        panic!("cycle {cycle}: acknowledged id {id} (seed {old}) reused for seed {seed}");
                    }
                    appended += 1;
                }
                (Some("D"), Some(id), None) => {
                    deleted.insert(id.parse::<u64>().unwrap());
                }
                _ => {}
            }
        }
        for id in &deleted {
            model.remove(id);
        }
        f.acked += appended;
        f.deleted += deleted.len();
        f.cycles_with_appends += usize::from(appended > 0);

        let store = spill::open(&config(&dir, backend)).unwrap();
        let stats = store.stats();
        f.corrupt += stats.corrupt;
        f.torn_tails += usize::from(stats.torn_bytes > 0);
        f.max_disk_bytes = f.max_disk_bytes.max(dir_bytes(&dir));
        let all = store.oldest(usize::MAX).unwrap();
        let mut present = HashSet::new();
        for b in &all {
            match check_payload(&b.payload, b.records) {
                Some(seed) => {
                    if let Some(&want) = model.get(&b.id.0) {
                        if want != seed {
                            f.wrong_content += 1;
                        }
                    }
                }
                None => f.wrong_content += 1,
            }
            present.insert(b.id.0);
        }
        f.corrupt += store.stats().corrupt - stats.corrupt;
        let lost: Vec<u64> = model
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        if !lost.is_empty() {
            eprintln!(
                "{backend:?} cycle {cycle}: {} acknowledged batches missing, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
            for id in &lost {
                model.remove(id);
            }
        }
        f.lost += lost.len();
        f.checked_present += model.len();
        f.cycles += 1;
    }
    // Drain everything and measure what is left on disk.
    {
        let store = spill::open(&config(&dir, backend)).unwrap();
        loop {
            let b = store.oldest(256).unwrap();
            if b.is_empty() {
                break;
            }
            f.drain_batches += b.len();
            store
                .delete(&b.iter().map(|b| b.id).collect::<Vec<_>>())
                .unwrap();
        }
        store.flush().unwrap();
        f.disk_after_drain = dir_bytes(&dir);
    }
    {
        let store = spill::open(&config(&dir, backend)).unwrap();
        assert_eq!(store.stats().batches, 0);
        f.disk_after_drain_reopen = dir_bytes(&dir);
    }
    f.elapsed = start.elapsed();
    eprintln!("TORTURE {backend:?}: {f:#?}");
    f
}

#[test]
fn torture_segment_log() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let f = torture(SpillBackend::SegmentLog, 120);
    assert!(f.cycles >= 100 || std::env::var("SPILL_TORTURE_CYCLES").is_ok());
    assert!(f.cycles_with_appends * 2 > f.cycles, "{f:?}");
    assert_eq!(f.lost, 0, "acknowledged batches lost: {f:?}");
    assert_eq!(f.corrupt, 0, "{f:?}");
    assert_eq!(f.wrong_content, 0, "{f:?}");
    assert!(
        f.disk_after_drain < SEGMENT_BYTES,
        "disk not given back after draining: {f:?}"
    );
}

#[test]
fn torture_sled() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let f = torture(SpillBackend::Sled, 100);
    assert_eq!(f.lost, 0, "acknowledged batches lost: {f:?}");
    assert_eq!(f.corrupt, 0, "{f:?}");
    assert_eq!(f.wrong_content, 0, "{f:?}");
    // Disk after draining is reported, not asserted: sled keeps its files
    // (see docs/spill.md).
}

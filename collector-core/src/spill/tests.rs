//! Unit tests of both backends through the trait, and of segment-log
//! recovery from damage that a crash can leave.

use std::io::Write;

use super::*;

fn cfg(dir: &Path, backend: SpillBackend) -> SpillConfig {
    SpillConfig {
        segment_bytes: 8 * 1024,
        backend,
        ..SpillConfig::new(dir)
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("batch-{i}-")
        .repeat(1 + (i as usize % 50))
        .into_bytes()
}

const BACKENDS: [SpillBackend; 2] = [SpillBackend::SegmentLog, SpillBackend::Sled];

#[test]
fn append_read_delete_reopen() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), backend);
        let ids: Vec<SpillId> = {
            let s = open(&c).unwrap();
            let ids: Vec<_> = (0..100)
                .map(|i| s.append(&payload(i), i as u32).unwrap())
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            let st = s.stats();
            assert_eq!(st.batches, 100);
            assert_eq!(st.records, (0..100).sum::<u64>());
            let got = s.oldest(10).unwrap();
            assert_eq!(got.len(), 10);
            assert_eq!(got[3].payload, payload(3));
            assert_eq!(got[3].records, 3);
            s.delete(&ids[..50]).unwrap();
            let page = s.oldest_after(Some(ids[60]), 5).unwrap();
            assert_eq!(page[0].id, ids[61]);
            ids
        };
        let s = open(&c).unwrap();
        let all = s.oldest(usize::MAX).unwrap();
        assert_eq!(all.len(), 50, "{backend:?}");
        assert_eq!(all[0].id, ids[50]);
        for (b, i) in all.iter().zip(50..) {
            assert_eq!(b.payload, payload(i));
        }
        // Ids keep increasing after a restart.
        let next = s.append(b"x", 1).unwrap();
        assert!(next > ids[99]);
        // Drain: everything deleted, ids still increase after reopen.
        let left: Vec<_> = s.oldest(usize::MAX).unwrap().iter().map(|b| b.id).collect();
        s.delete(&left).unwrap();
        assert_eq!(s.stats().batches, 0);
        drop(s);
        let s = open(&c).unwrap();
        assert!(s.oldest(10).unwrap().is_empty());
        assert!(s.append(b"y", 1).unwrap() > next, "{backend:?}");
    }
}

#[test]
fn segment_log_reclaims_space_when_drained() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&cfg(dir.path(), SpillBackend::SegmentLog)).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for _ in 0..40 {
        s.append(&big, 1).unwrap();
    }
    let full = s.stats().disk_bytes;
    assert!(full > 100_000, "{full}");
    loop {
        let b = s.oldest(7).unwrap();
        if b.is_empty() {
            break;
        }
        s.delete(&b.iter().map(|b| b.id).collect::<Vec<_>>())
            .unwrap();
    }
    let st = s.stats();
    assert_eq!(st.batches, 0);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    assert!(st.disk_bytes < 8 * 1024, "{} {files:?}", st.disk_bytes);
}

#[test]
fn segment_log_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), SpillBackend::SegmentLog);
    {
        let s = open(&c).unwrap();
        for i in 0..5 {
            s.append(&payload(i), 1).unwrap();
        }
    }
    // A torn append: half a frame at the end of the newest segment.
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let mut frame = Vec::new();
    frame::encode(
        &mut frame,
        6,
        0,
        1,
        b"never acknowledged",
        Compression::None,
    )
    .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    f.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(f);
    let s = open(&c).unwrap();
    let st = s.stats();
    assert_eq!(st.batches, 5);
    assert_eq!(st.torn_bytes, (frame.len() / 2) as u64);
    let id = s.append(b"after", 1).unwrap();
    drop(s);
    let s = open(&c).unwrap();
    let all = s.oldest(usize::MAX).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[5].id, id);
    assert_eq!(all[5].payload, b"after");
}

#[test]
fn segment_log_drops_a_rotten_frame_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), SpillBackend::SegmentLog);
    {
        let s = open(&c).unwrap();
        for i in 0..3 {
            s.append(&payload(i), 2).unwrap();
        }
    }
    let seg = dir.path().join(segment::seg_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte in the last frame's data: the newest segment is fully
    // checked at open, so this is cut as a bad tail.
    let n = bytes.len();
    bytes[n - 2] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    let s = open(&c).unwrap();
    assert_eq!(s.stats().batches, 2);
}

#[test]
fn second_open_of_a_directory_is_refused() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), backend);
        let _s = open(&c).unwrap();
        assert!(
            matches!(open(&c), Err(SpillError::Locked(_))),
            "{backend:?}"
        );
    }
}

/// sled can release its directory lock a moment after the handle is
/// dropped (a background job or deferred drop still holds the lock file);
/// a reopen right after a close must wait for it, not fail.
#[test]
fn reopen_right_after_close() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), backend);
        for i in 0..200u64 {
            let s = open(&c).unwrap_or_else(|e| panic!("{backend:?} reopen {i}: {e}"));
            s.append(&payload(i), 1).unwrap();
        }
        assert_eq!(open(&c).unwrap().stats().batches, 200, "{backend:?}");
    }
}

#[test]
fn append_many_shares_one_commit_and_keeps_order() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&cfg(dir.path(), backend)).unwrap();
        let ps: Vec<Vec<u8>> = (0..20).map(payload).collect();
        let batches: Vec<NewBatch<'_>> = ps
            .iter()
            .map(|p| NewBatch {
                payload: p,
                records: 1,
            })
            .collect();
        let ids = s.append_many(&batches).unwrap();
        assert_eq!(ids.len(), 20);
        let got = s.oldest(100).unwrap();
        assert_eq!(
            got.iter().map(|b| b.id).collect::<Vec<_>>(),
            ids,
            "{backend:?}"
        );
        assert_eq!(got[19].payload, ps[19]);
    }
}

/// A drained active segment too small to be rolled keeps its ack file;
/// recovery removes the segment with its acks and must not then fail on
/// the ack file it already removed (seen once in the torture test).
#[test]
fn segment_log_reopens_after_a_small_active_segment_was_drained() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), SpillBackend::SegmentLog);
    let first = {
        let s = open(&c).unwrap();
        let id = s.append(b"tiny", 1).unwrap();
        s.delete(&[id]).unwrap();
        s.flush().unwrap();
        let acks = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("ack".as_ref()))
            .count();
        assert_eq!(acks, 1, "the small active segment keeps its acks");
        id
    };
    let s = open(&c).unwrap();
    assert_eq!(s.stats().batches, 0);
    assert!(s.oldest(10).unwrap().is_empty());
    assert!(s.append(b"next", 1).unwrap() > first);
    drop(s);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".ack")), "{names:?}");
}

/// A frame length enlarged by damage in a sealed segment (opened without
/// checking every frame) must not swallow the intact frames after it; and
/// a damage is counted once, not at every start.
#[test]
fn an_enlarged_length_costs_one_batch_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), SpillBackend::SegmentLog);
    {
        let s = open(&c).unwrap();
        for i in 0..40 {
            s.append(&payload(i), 1).unwrap();
        }
    }
    let first = dir.path().join(segment::seg_name(1));
    let mut bytes = std::fs::read(&first).unwrap();
    // The second frame's length, doubled: still inside the file.
    let first_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    let second = 24 + 8 + first_len;
    let len = u32::from_le_bytes(bytes[second..second + 4].try_into().unwrap());
    bytes[second..second + 4].copy_from_slice(&(len * 2).to_le_bytes());
    std::fs::write(&first, &bytes).unwrap();
    let (kept, corrupt) = {
        let s = open(&c).unwrap();
        (s.oldest(usize::MAX).unwrap(), s.stats().corrupt)
    };
    assert_eq!(kept.len(), 39, "only the damaged batch is lost");
    assert!(kept.iter().all(|b| b.id.0 != 2));
    assert_eq!(corrupt, 1);
    let s = open(&c).unwrap();
    assert_eq!(s.oldest(usize::MAX).unwrap().len(), 39);
    assert_eq!(s.stats().corrupt, 0, "counted at the first start only");
}

/// A length enlarged to end exactly at the end of a sealed segment raises
/// no framing error; the last frame's checksum catches it, and the frame it
/// swallowed is recovered.
#[test]
fn a_length_enlarged_to_the_end_of_the_file_swallows_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), SpillBackend::SegmentLog);
    {
        let s = open(&c).unwrap();
        for i in 0..40 {
            s.append(&payload(i), 1).unwrap();
        }
    }
    let first = dir.path().join(segment::seg_name(1));
    let mut bytes = std::fs::read(&first).unwrap();
    // The frame before the last: its length made to reach the end.
    let mut offsets = Vec::new();
    let mut pos = 24;
    while pos < bytes.len() {
        offsets.push(pos);
        pos += 8 + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    assert!(offsets.len() >= 3, "{offsets:?}");
    let victim = offsets[offsets.len() - 2];
    let to_end = (bytes.len() - victim - 8) as u32;
    bytes[victim..victim + 4].copy_from_slice(&to_end.to_le_bytes());
    std::fs::write(&first, &bytes).unwrap();
    let s = open(&c).unwrap();
    let kept = s.oldest(usize::MAX).unwrap();
    assert_eq!(kept.len(), 39, "only the damaged batch is lost");
    let lost = offsets.len() as u64 - 1; // its id: frames are 1-based
    assert!(kept.iter().all(|b| b.id.0 != lost));
}

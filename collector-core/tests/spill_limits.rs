//! The spill's TTL and size cap, with small limits and an injected `now`:
//! the oldest data is dropped, returned in `Dropped`, counted in the
//! metrics and never comes back after a restart.

use std::time::{Duration, SystemTime};

use collector_core::metrics::names;
use collector_core::spill::{self, Compression, SpillBackend, SpillConfig};
use metrics_exporter_prometheus::PrometheusBuilder;

const BACKENDS: [SpillBackend; 2] = [SpillBackend::SegmentLog, SpillBackend::Sled];

/// Incompressible bytes, so sizes on disk are predictable.
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

fn cfg(dir: &std::path::Path, backend: SpillBackend) -> SpillConfig {
    SpillConfig {
        backend,
        ttl: Duration::from_secs(60),
        segment_bytes: 16 * 1024,
        compression: Compression::None,
        ..SpillConfig::new(dir)
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn ttl_drops_the_oldest_and_counts_them() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), backend);
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let s = spill::open(&c).unwrap();
            for i in 0..30 {
                s.append(&noise(1000, i), 3).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
            let mid = SystemTime::now();
            std::thread::sleep(Duration::from_millis(5));
            let young: Vec<_> = (0..10)
                .map(|i| s.append(&noise(1000, 100 + i), 1).unwrap())
                .collect();

            // Nothing is older than the TTL yet.
            let none = s.enforce_limits(SystemTime::now()).unwrap();
            assert!(none.expired.is_empty() && none.evicted.is_empty());

            // At `mid + ttl`, the 30 batches appended before `mid` expired.
            let dropped = s.enforce_limits(mid + c.ttl).unwrap();
            assert_eq!(dropped.expired.batches, 30, "{backend:?}");
            assert_eq!(dropped.expired.records, 90);
            assert!(dropped.expired.bytes >= 30_000);
            assert!(dropped.evicted.is_empty());
            let st = s.stats();
            assert_eq!(st.batches, 10);
            assert_eq!(st.expired.records, 90);
            let left: Vec<_> = s.oldest(100).unwrap().iter().map(|b| b.id).collect();
            assert_eq!(left, young);
            let text = handle.render();
            assert_eq!(metric(&text, names::SPILL_EXPIRED), 90.0, "{text}");
            assert_eq!(metric(&text, names::SPILL_RECORDS), 10.0, "{text}");
            drop(s);

            // Expired batches stay dropped after a restart.
            let s = spill::open(&c).unwrap();
            let left: Vec<_> = s.oldest(100).unwrap().iter().map(|b| b.id).collect();
            assert_eq!(left, young, "{backend:?}");

            // Everything expires eventually.
            let dropped = s
                .enforce_limits(SystemTime::now() + c.ttl + Duration::from_secs(1))
                .unwrap();
            assert_eq!(dropped.expired.batches, 10);
            assert_eq!(s.stats().batches, 0);
        });
    }
}

#[test]
fn size_cap_evicts_the_oldest_and_counts_them() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = SpillConfig {
            max_bytes: 64 * 1024,
            ..cfg(dir.path(), backend)
        };
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let s = spill::open(&c).unwrap();
            let ids: Vec<_> = (0..200)
                .map(|i| s.append(&noise(2000, i), 2).unwrap())
                .collect();
            let st = s.stats();
            let cap_measure = match backend {
                // The segment log caps the files on disk.
                SpillBackend::SegmentLog => st.disk_bytes,
                // sled caps the stored bytes (its files do not shrink).
                SpillBackend::Sled => st.stored_bytes,
            };
            assert!(cap_measure <= c.max_bytes, "{backend:?}: {st:?}");
            assert!(st.evicted.batches > 100, "{backend:?}: {st:?}");
            assert_eq!(st.evicted.batches + st.batches, 200, "{st:?}");
            assert_eq!(st.evicted.records, 2 * st.evicted.batches);
            // What is left is the newest data, in order.
            let left: Vec<_> = s.oldest(1000).unwrap().iter().map(|b| b.id).collect();
            assert_eq!(left[..], ids[ids.len() - left.len()..], "{backend:?}");
            let text = handle.render();
            assert_eq!(
                metric(&text, names::SPILL_EVICTED),
                st.evicted.records as f64,
                "{text}"
            );
        });
    }
}

#[test]
fn a_smaller_cap_at_restart_is_enforced_and_returned() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let big = cfg(dir.path(), backend);
        {
            let s = spill::open(&big).unwrap();
            for i in 0..100 {
                s.append(&noise(2000, i), 5).unwrap();
            }
        }
        let small = SpillConfig {
            max_bytes: 64 * 1024,
            segment_bytes: 16 * 1024,
            ..big
        };
        let s = spill::open(&small).unwrap();
        let dropped = s.enforce_limits(SystemTime::now()).unwrap();
        assert!(dropped.evicted.batches > 50, "{backend:?}: {dropped:?}");
        assert_eq!(dropped.evicted.records, 5 * dropped.evicted.batches);
        assert!(dropped.expired.is_empty());
        assert_eq!(s.stats().batches + dropped.evicted.batches, 100);
    }
}

//! Spill store throughput: append (durable, group commit) and replay
//! (read oldest + delete), for the default segment log and for sled.
//!
//! `cargo bench -p collector-benches --bench spill -- --warm-up-time 1 --measurement-time 3`
//!
//! A batch is N JSON-encoded records of 50 tags (the reference workload),
//! newline separated, as the dispatcher would spill them. Throughput is
//! reported in records/s (elements) and, for the `_bytes` variants, in
//! MB/s of uncompressed payload. The store lives in the system temp
//! directory: the figures are those of that disk's fsync.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use collector_core::record::{Record, Sample, Status, Value};
use collector_core::spill::{self, NewBatch, SpillBackend, SpillConfig, SpillStore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn record(seq: u64) -> Record {
    let now = Utc::now();
    let samples = (0..50)
        .map(|i| Sample {
            node_id: Arc::from(format!("ns=2;s=Tag{i:03}")),
            value: match i % 5 {
                0 => Value::Double(i as f64 * 1.2345 + seq as f64),
                1 => Value::Float(i as f32 * 0.5),
                2 => Value::Int32(i * 1000 + seq as i32),
                3 => Value::Boolean(i % 2 == 0),
                _ => Value::String(format!("state-{i}")),
            },
            status: Status::GOOD,
            source_timestamp: Some(now),
            server_timestamp: Some(now),
        })
        .collect();
    Record {
        device_id: Arc::from(format!("dev-{:05}", seq % 1000)),
        seq,
        read_time: now,
        samples,
        part: None,
        origin: Default::default(),
    }
}

/// `records` encoded records, one per line.
fn batch_payload(records: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..records {
        record(i as u64)
            .encode_json("opc-collector-0", &mut out)
            .unwrap_or_default();
        out.push(b'\n');
    }
    out
}

fn open(backend: SpillBackend) -> (tempfile::TempDir, Arc<dyn SpillStore>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = SpillConfig {
        backend,
        max_bytes: 4 << 30,
        ..SpillConfig::new(dir.path())
    };
    let store = spill::open(&cfg).unwrap_or_else(|e| panic!("open: {e}"));
    (dir, Arc::from(store))
}

/// Drains the store (untimed housekeeping between samples).
fn drain(store: &dyn SpillStore) {
    loop {
        let b = store.oldest(64).unwrap_or_default();
        if b.is_empty() {
            break;
        }
        let ids: Vec<_> = b.iter().map(|b| b.id).collect();
        let _ = store.delete(&ids);
    }
}

const BACKENDS: [SpillBackend; 2] = [SpillBackend::SegmentLog, SpillBackend::Sled];

fn append(c: &mut Criterion) {
    for records in [1usize, 100] {
        let payload = batch_payload(records);
        let mut group = c.benchmark_group(format!("spill_append_{records}rec"));
        group.throughput(Throughput::Elements(records as u64));
        for backend in BACKENDS {
            let label = backend.label();
            // One appender, one fsync per batch.
            let (_dir, store) = open(backend);
            group.bench_function(format!("{label}/1_thread"), |b| {
                b.iter_custom(|iters| {
                    drain(&*store);
                    let t = Instant::now();
                    for _ in 0..iters {
                        black_box(store.append(&payload, records as u32).ok());
                    }
                    t.elapsed()
                })
            });
            // Four appenders sharing fsyncs (group commit).
            group.bench_function(format!("{label}/4_threads"), |b| {
                b.iter_custom(|iters| {
                    drain(&*store);
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for k in 0..4u64 {
                            let store = &store;
                            let payload = &payload;
                            s.spawn(move || {
                                for _ in (k..iters).step_by(4) {
                                    black_box(store.append(payload, records as u32).ok());
                                }
                            });
                        }
                    });
                    t.elapsed()
                })
            });
            // The dispatcher's path: 8 batches, one append_many, one fsync.
            let eight: Vec<NewBatch<'_>> = (0..8)
                .map(|_| NewBatch {
                    payload: &payload,
                    records: records as u32,
                })
                .collect();
            group.bench_function(format!("{label}/append_many_8"), |b| {
                b.iter_custom(|iters| {
                    drain(&*store);
                    let t = Instant::now();
                    for _ in 0..iters.div_ceil(8) {
                        black_box(store.append_many(&eight).ok());
                    }
                    t.elapsed()
                })
            });
        }
        group.finish();
    }
}

fn replay(c: &mut Criterion) {
    let records = 100usize;
    let payload = batch_payload(records);
    let mut group = c.benchmark_group("spill_replay_100rec");
    group.throughput(Throughput::Elements(records as u64));
    for backend in BACKENDS {
        let (_dir, store) = open(backend);
        let sixteen: Vec<NewBatch<'_>> = (0..16)
            .map(|_| NewBatch {
                payload: &payload,
                records: records as u32,
            })
            .collect();
        // Read the oldest 16, delete them (one durable delete per 16).
        group.bench_function(format!("{}/oldest16_delete", backend.label()), |b| {
            b.iter_custom(|iters| {
                drain(&*store);
                for _ in 0..iters.div_ceil(16) {
                    let _ = store.append_many(&sixteen);
                }
                let t = Instant::now();
                let mut done = 0u64;
                while done < iters {
                    let got = store.oldest(16).unwrap_or_default();
                    if got.is_empty() {
                        break;
                    }
                    done += got.len() as u64;
                    let ids: Vec<_> = got.iter().map(|b| b.id).collect();
                    black_box(store.delete(&ids).ok());
                }
                t.elapsed()
            })
        });
    }
    group.finish();
    let mut bytes = c.benchmark_group("spill_bytes_100rec");
    bytes.throughput(Throughput::Bytes(payload.len() as u64));
    for backend in BACKENDS {
        let (_dir, store) = open(backend);
        bytes.bench_function(format!("{}/append_4_threads", backend.label()), |b| {
            b.iter_custom(|iters| {
                drain(&*store);
                let t = Instant::now();
                std::thread::scope(|s| {
                    for k in 0..4u64 {
                        let store = &store;
                        let payload = &payload;
                        s.spawn(move || {
                            for _ in (k..iters).step_by(4) {
                                black_box(store.append(payload, records as u32).ok());
                            }
                        });
                    }
                });
                t.elapsed()
            })
        });
    }
    bytes.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = append, replay
}
criterion_main!(benches);

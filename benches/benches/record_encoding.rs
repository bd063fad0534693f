//! Record encodings (JSON, the default, and `kafka.encoding: protobuf`):
//! the per-sample cost on the hot path to Kafka.
//!
//! `cargo bench -p collector-benches --bench record_encoding`

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use collector_core::record::{Record, Sample, Status, Value};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A record shaped like the reference workload: 50 tags of mixed types.
fn record(tags: usize) -> Record {
    let now = Utc::now();
    let samples = (0..tags)
        .map(|i| Sample {
            node_id: Arc::from(format!("ns=2;s=Tag{i:03}")),
            value: match i % 5 {
                0 => Value::Double(i as f64 * 1.2345),
                1 => Value::Float(i as f32 * 0.5),
                2 => Value::Int32(i as i32 * 1000),
                3 => Value::Boolean(i % 2 == 0),
                _ => Value::String(format!("state-{i}")),
            },
            status: Status::GOOD,
            source_timestamp: Some(now),
            server_timestamp: Some(now),
        })
        .collect();
    Record {
        device_id: Arc::from("dev-00042"),
        seq: 1_795_000_000_000_000,
        read_time: now,
        samples,
        part: None,
        origin: Default::default(),
    }
}

fn encode(c: &mut Criterion) {
    type Encode = fn(&Record, &mut Vec<u8>);
    let encodings: [(&str, Encode); 2] = [
        ("record_json", |r, out| {
            r.encode_json("opc-collector-0", out).unwrap_or_default()
        }),
        ("record_protobuf", |r, out| {
            r.encode_protobuf("opc-collector-0", out)
        }),
    ];
    for (name, encode) in encodings {
        let mut group = c.benchmark_group(name);
        for tags in [10usize, 50, 200] {
            let r = record(tags);
            let mut buf = Vec::with_capacity(64 * 1024);
            group.throughput(Throughput::Elements(tags as u64));
            group.bench_function(format!("{tags}_samples"), |b| {
                b.iter(|| {
                    buf.clear();
                    encode(black_box(&r), &mut buf);
                    black_box(buf.len())
                })
            });
        }
        group.finish();
    }

    // Sizes beside the timings: what each encoding puts on the wire.
    for tags in [10usize, 50, 200] {
        let r = record(tags);
        let (mut json, mut proto) = (Vec::new(), Vec::new());
        r.encode_json("opc-collector-0", &mut json)
            .unwrap_or_default();
        r.encode_protobuf("opc-collector-0", &mut proto);
        println!(
            "{tags} samples: JSON {} bytes, protobuf {} bytes ({:.2}x)",
            json.len(),
            proto.len(),
            json.len() as f64 / proto.len() as f64
        );
    }
}

criterion_group!(benches, encode);
criterion_main!(benches);

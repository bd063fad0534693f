//! `kafka.encoding: protobuf`: records encoded by the collector, decoded
//! with the published schema (`docs/record.proto`, compiled at run time,
//! read by reflection as a consumer without our code would), carry exactly
//! what their JSON encoding carries: the decoded record, written as the
//! JSON envelope, equals the JSON encoding of the same record, for every
//! value type, origin and part, and for random values.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use collector_core::record::{Origin, Record, RecordPart, Sample, Status, Value, Window};
use collector_core::sink::Message;
use collector_testkit::protobuf::Schema;
use proptest::prelude::*;
use serde_json::Value as Json;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::workspace().unwrap())
}

const COLLECTOR: &str = "opc-collector-7";

/// The record through both encodings: (from Protobuf, from JSON).
fn both(record: &Record) -> (Json, Json) {
    let proto = Message::protobuf(record, COLLECTOR);
    let json = Message::json(record, COLLECTOR).unwrap();
    assert_eq!(proto.key, json.key);
    assert_eq!(proto.read_time_us, json.read_time_us);
    let decoded = schema()
        .to_json(&proto.payload)
        .unwrap_or_else(|e| panic!("{e}: {record:?}"));
    (decoded, serde_json::from_slice(&json.payload).unwrap())
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn sample(node: &str, value: Value) -> Sample {
    Sample {
        node_id: Arc::from(node),
        value,
        status: Status::GOOD,
        source_timestamp: Some(time("2026-11-22T19:51:12.125Z")),
        server_timestamp: Some(time("2026-11-22T19:51:12.125Z")),
    }
}

fn every_value() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Boolean(false),
        Value::Boolean(true),
        Value::SByte(-128),
        Value::Byte(255),
        Value::Int16(i16::MIN),
        Value::UInt16(0),
        Value::Int32(-1),
        Value::Int32(0),
        Value::UInt32(u32::MAX),
        Value::Int64(i64::MIN),
        Value::Int64(i64::MAX),
        Value::UInt64(u64::MAX),
        Value::Float(1.1),
        Value::Float(f32::NAN),
        Value::Float(-0.0),
        Value::Double(122.181121),
        Value::Double(2.0),
        Value::Double(f64::INFINITY),
        Value::Double(f64::NEG_INFINITY),
        Value::Double(1e300),
        Value::String(String::new()),
        Value::String("Grüße, \"quoted\"\n".into()),
        Value::String("x".repeat(300)),
        Value::DateTime(time("1601-01-01T00:00:00Z")),
        Value::DateTime(time("2026-11-22T19:51:12.117421207Z")),
        Value::DateTime(time("1970-01-01T00:00:00Z")),
        Value::ByteString(vec![]),
        Value::ByteString((0..=255).collect()),
        Value::Guid("72962b91-fa75-4ae6-8d28-b404dc7daf63".into()),
        Value::StatusCode(0x8002_0000),
        Value::Other {
            type_name: "LocalizedText",
            text: "en: Pump 1".into(),
        },
        Value::Array {
            element_type: "Double",
            values: vec![Value::Double(1.5), Value::Null, Value::Double(-3.0)],
        },
        Value::Array {
            element_type: "String",
            values: vec![],
        },
    ]
}

#[test]
fn every_value_type_reads_back_as_its_json_encoding() {
    let mut samples: Vec<Sample> = every_value()
        .into_iter()
        .enumerate()
        .map(|(i, v)| sample(&format!("ns=2;s=Tag{i:03}"), v))
        .collect();
    // Bad and Uncertain statuses keep their names; timestamps may be
    // missing or differ.
    samples[0].status = Status {
        code: 0x808D_0000,
        name: "BadSensorFailure",
    };
    samples[0].source_timestamp = None;
    samples[1].server_timestamp = None;
    samples[2].status = Status {
        code: 0x4000_0000,
        name: "Uncertain",
    };
    samples[3].source_timestamp = Some(time("2026-11-22T19:51:12.000001Z"));
    // A leap second (chrono: nanos past 1e9) stays inside its second in
    // both encodings; the decoder refuses nanos past 999,999,999.
    samples[4].source_timestamp = Some(
        chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc(),
    );
    let record = Record::new(
        Arc::from("dev-00010"),
        1_795_377_071_812_936,
        time("2026-11-22T19:51:12.117421207Z"),
        samples,
    );
    let (decoded, json) = both(&record);
    assert_eq!(decoded, json);
    assert_eq!(decoded["samples"].as_array().unwrap().len(), 34);
    assert_eq!(decoded["samples"][0]["type"], "Null");
    assert_eq!(decoded["samples"][14]["value"], "NaN");
    assert_eq!(
        decoded["samples"][4]["source_timestamp"],
        "2016-12-31T23:59:59.999999999Z"
    );
}

#[test]
fn parts_origins_and_windows_read_back() {
    let samples: Vec<Sample> = (0..6)
        .map(|i| sample(&format!("ns=2;s=T{i}"), Value::Double(f64::from(i))))
        .collect();
    let whole = Record::new(Arc::from("dev-1"), 0, time("2026-01-01T00:00:00Z"), samples);
    let window = Window {
        from: time("2026-01-01T00:00:00Z"),
        to: time("2026-01-01T01:00:00.5Z"),
    };
    for origin in [Origin::Read, Origin::DataChange, Origin::Backfill(window)] {
        let read = whole.clone().with_origin(origin);
        let (decoded, json) = both(&read);
        assert_eq!(decoded, json, "{origin:?}");
        for index in 0..3 {
            let part = read.part(
                index as usize * 2..index as usize * 2 + 2,
                RecordPart { index, count: 3 },
            );
            let (decoded, json) = both(&part);
            assert_eq!(decoded, json, "{origin:?} part {index}");
            assert_eq!(decoded["part"], index);
            assert_eq!(decoded["parts"], 3);
        }
    }
}

#[test]
fn a_typical_read_is_a_third_of_its_json() {
    let samples: Vec<Sample> = (0..50)
        .map(|i| {
            sample(
                &format!("ns=2;s=Tag{i:03}"),
                Value::Double(f64::from(i) * 1.37),
            )
        })
        .collect();
    let record = Record::new(Arc::from("dev-00010"), 42, Utc::now(), samples);
    let proto = Message::protobuf(&record, COLLECTOR).payload.len();
    let json = Message::json(&record, COLLECTOR).unwrap().payload.len();
    println!("50 Doubles: protobuf {proto} bytes, JSON {json} bytes");
    assert!(proto * 3 <= json, "protobuf {proto} bytes, JSON {json}");
}

fn any_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        any::<i8>().prop_map(Value::SByte),
        any::<u8>().prop_map(Value::Byte),
        any::<i16>().prop_map(Value::Int16),
        any::<u16>().prop_map(Value::UInt16),
        any::<i32>().prop_map(Value::Int32),
        any::<u32>().prop_map(Value::UInt32),
        any::<i64>().prop_map(Value::Int64),
        any::<u64>().prop_map(Value::UInt64),
        any::<f32>().prop_map(Value::Float),
        any::<f64>().prop_map(Value::Double),
        ".{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::ByteString),
        any_time().prop_map(Value::DateTime),
        any::<u32>().prop_map(Value::StatusCode),
    ];
    prop_oneof![
        4 => scalar,
        1 => proptest::collection::vec(any::<f64>().prop_map(Value::Double), 0..8).prop_map(
            |values| Value::Array {
                element_type: "Double",
                values,
            }
        ),
    ]
}

/// Any instant OPC UA can carry (1601 to 9999), to the nanosecond.
fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    let from = Utc
        .with_ymd_and_hms(1601, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    let to = Utc
        .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
        .unwrap()
        .timestamp();
    (from..=to, 0u32..1_000_000_000).prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

proptest! {
    #[test]
    fn random_reads_read_back_as_their_json_encoding(
        values in proptest::collection::vec(any_value(), 0..20),
        seq in any::<u64>(),
        read_time in any_time(),
        code in any::<u32>(),
    ) {
        let samples = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let mut s = sample(&format!("ns=2;i={i}"), v);
                if i % 3 == 1 {
                    // A non-Good code: code 0 is Good, named by its code.
                    s.status = Status { code: code.max(1), name: "BadSomething" };
                }
                s
            })
            .collect();
        let record = Record::new(Arc::from("dev-p"), seq, read_time, samples);
        let (decoded, json) = both(&record);
        prop_assert_eq!(decoded, json);
    }
}

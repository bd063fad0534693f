//! Shared by the pipeline tests: a real simulator, a real (in-process)
//! Kafka cluster, and checks of what arrives on the topic.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use collector_core::config::Settings;
use collector_core::metrics::StatsSnapshot;
use collector_core::{Collector, CollectorConfig, Device};
use collector_opcua::OpcUaProtocol;
use collector_testkit::{consume_all, ConsumedMessage, EmbeddedKafka};
use opc_loadgen::model::{self, ModelValue};
use serde_json::Value as Json;

pub const TOPIC: &str = "opc-samples";

pub async fn kafka() -> EmbeddedKafka {
    tokio::task::spawn_blocking(|| EmbeddedKafka::start(1, TOPIC, 4))
        .await
        .unwrap()
        .unwrap()
}

/// A config for `devices`, with test-friendly batching and connect pacing.
pub fn config(bootstrap: &str, devices: Vec<Device>) -> CollectorConfig {
    let mut cfg = CollectorConfig::default();
    cfg.collector.id = Some("test-collector".into());
    cfg.kafka.brokers = bootstrap.to_string();
    cfg.kafka.topic = TOPIC.into();
    cfg.batch.interval = Duration::from_millis(500);
    // Local simulator: no need to pace connects as for a plant network.
    cfg.protocol.insert(
        "session".into(),
        Settings::from_json(serde_json::json!({ "max_connects_per_second": 1000 })),
    );
    cfg.devices = devices;
    cfg
}

/// The collector's device for a simulated one, read every `interval`.
pub fn device(d: &opc_loadgen::SimDevice, interval: Duration) -> Device {
    let refs: Vec<&str> = d.node_ids.iter().map(String::as_str).collect();
    collector_opcua::config::device(d.id.as_str(), d.endpoint_url.as_str(), &refs, interval)
        .unwrap()
}

/// The real OPC UA pipeline, built.
pub async fn build_collector(cfg: CollectorConfig) -> Collector {
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap()
}

/// Runs the real OPC UA pipeline for `run_for`, then drains; returns totals.
pub async fn run_collector(cfg: CollectorConfig, run_for: Duration) -> StatsSnapshot {
    let collector = build_collector(cfg).await;
    collector.run(tokio::time::sleep(run_for)).await.unwrap()
}

/// Every message on the topic, parsed, grouped by key.
pub struct Consumed {
    pub by_device: BTreeMap<String, Vec<Json>>,
    pub messages: usize,
}

pub async fn consume(bootstrap: &str, expected: usize) -> Consumed {
    consume_topic(bootstrap, TOPIC, expected).await
}

/// What a run delivered is on the topic: one record per successful read,
/// each device's sequence gap-free. Returns it for further checks.
pub async fn assert_all_delivered(bootstrap: &str, totals: &StatsSnapshot) -> Consumed {
    let consumed = consume(bootstrap, totals.records_delivered as usize).await;
    assert_eq!(consumed.messages as u64, totals.reads_ok);
    for (device, records) in &consumed.by_device {
        assert_gap_free(device, records);
    }
    consumed
}

/// Every message on `topic`, unparsed, once `expected` arrived and the
/// topic stayed quiet for 5 s.
pub async fn consume_messages(
    bootstrap: &str,
    topic: &str,
    expected: usize,
) -> Vec<ConsumedMessage> {
    let b = bootstrap.to_string();
    let t = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consume_all(
            &b,
            &t,
            expected,
            Duration::from_secs(5),
            Duration::from_secs(90),
        )
    })
    .await
    .unwrap()
    .unwrap()
}

pub async fn consume_topic(bootstrap: &str, topic: &str, expected: usize) -> Consumed {
    let msgs = consume_messages(bootstrap, topic, expected).await;
    let schema = schema_validator();
    let mut by_device: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for m in &msgs {
        let key = String::from_utf8(m.key.clone().expect("message has a key")).unwrap();
        let v: Json = serde_json::from_slice(&m.payload).expect("payload is JSON");
        let errors: Vec<String> = schema.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "record does not match the schema: {errors:?}\n{v}"
        );
        assert_eq!(
            v["device_id"],
            key.as_str(),
            "message key must be the device id"
        );
        by_device.entry(key).or_default().push(v);
    }
    Consumed {
        by_device,
        messages: msgs.len(),
    }
}

pub fn schema_validator() -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/record.schema.json");
    let schema: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// Asserts a device's seqs are unique and gap-free; returns how many.
pub fn assert_gap_free(device: &str, records: &[Json]) -> usize {
    let mut seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "{device}: duplicate seq");
    let span = seqs.last().unwrap() - seqs.first().unwrap() + 1;
    assert_eq!(span as usize, n, "{device}: gap in seq {seqs:?}");
    n
}

/// Asserts every sample equals the simulator's deterministic value at its
/// source timestamp, Bad nodes carry BadSensorFailure, and both timestamps
/// are present.
pub fn assert_model_values(record: &Json) {
    let device = model::device_index(record["device_id"].as_str().unwrap()).unwrap();
    for s in record["samples"].as_array().unwrap() {
        let node = s["node_id"].as_str().unwrap();
        let name = node.rsplit("s=").next().unwrap();
        let tag = model::tag_index(name).unwrap_or_else(|| panic!("node {node}"));
        let src = s["source_timestamp"].as_str().expect("source timestamp");
        assert!(
            s["server_timestamp"].is_string(),
            "server timestamp missing: {s}"
        );
        let at_ms = chrono::DateTime::parse_from_rfc3339(src)
            .unwrap()
            .timestamp_millis();
        if model::is_bad(tag) {
            assert_eq!(s["status"]["name"], "BadSensorFailure", "{s}");
            assert_eq!(
                s["status"]["code"],
                u64::from(model::BAD_SENSOR_FAILURE),
                "{s}"
            );
            assert!(s["value"].is_null());
            continue;
        }
        assert_eq!(s["status"]["code"], 0, "{s}");
        let expected = model::value_at(device, tag, at_ms);
        let ok = has_value(s, &expected);
        assert!(
            ok,
            "device {device} tag {tag} at {at_ms}: expected {expected:?}, got {s}"
        );
    }
}

/// Whether sample `s` (JSON) carries `expected` with its type.
pub fn has_value(s: &Json, expected: &ModelValue) -> bool {
    let v = &s["value"];
    match expected {
        ModelValue::Double(x) => s["type"] == "Double" && v.as_f64() == Some(*x),
        ModelValue::Float(x) => s["type"] == "Float" && v.as_f64().map(|f| f as f32) == Some(*x),
        ModelValue::Int32(x) => s["type"] == "Int32" && v.as_i64() == Some(i64::from(*x)),
        ModelValue::UInt16(x) => s["type"] == "UInt16" && v.as_u64() == Some(u64::from(*x)),
        ModelValue::Boolean(x) => s["type"] == "Boolean" && v.as_bool() == Some(*x),
        ModelValue::String(x) => s["type"] == "String" && v.as_str() == Some(x.as_str()),
        ModelValue::DateTime(x) => {
            s["type"] == "DateTime"
                && v.as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.to_utc())
                    == Some(*x)
        }
        ModelValue::DoubleArray(xs) => {
            s["type"] == "Double[]"
                && v.as_array()
                    .map(|a| a.iter().map(|e| e.as_f64()).collect::<Vec<_>>())
                    == Some(xs.iter().map(|x| Some(*x)).collect())
        }
    }
}

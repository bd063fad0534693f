//! `kafka.encoding: protobuf` end to end: the real pipeline writes
//! Protobuf records to a real Kafka protocol endpoint, and every one,
//! decoded with `docs/record.proto`, is the record the JSON tests expect:
//! valid against the JSON Schema once rewritten as the envelope, keyed by
//! its device, gap-free, with the simulator's values.

mod support;

use std::time::Duration;

use collector_core::config::RecordEncoding;
use collector_testkit::protobuf::Schema;
use opc_loadgen::{SimConfig, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_arrive_gap_free_with_the_simulators_values() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 20,
        tags: 20,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let interval = Duration::from_secs(1);
    let devices = sim
        .devices()
        .iter()
        .map(|d| support::device(d, interval))
        .collect();
    let mut cfg = support::config(kafka.bootstrap_servers(), devices);
    cfg.kafka.encoding = RecordEncoding::Protobuf;

    let totals = support::run_collector(cfg, Duration::from_secs(5)).await;
    sim.shutdown().await;
    assert_eq!(totals.reads_failed, 0, "{totals:?}");
    assert_eq!(totals.records_failed, 0, "{totals:?}");
    assert_eq!(totals.records_delivered, totals.reads_ok, "{totals:?}");
    assert!(totals.reads_ok >= 60, "20 devices x ~5 ticks: {totals:?}");

    let expected = totals.records_delivered as usize;
    let msgs = support::consume_messages(kafka.bootstrap_servers(), support::TOPIC, expected).await;
    assert_eq!(
        msgs.len(),
        expected,
        "consumed exactly what was acknowledged"
    );

    let schema = Schema::workspace().unwrap();
    let validator = support::schema_validator();
    let mut by_device = std::collections::BTreeMap::<String, Vec<_>>::new();
    for m in &msgs {
        assert_ne!(
            m.payload.first(),
            Some(&b'{'),
            "a Protobuf record, not JSON"
        );
        let key = String::from_utf8(m.key.clone().expect("message has a key")).unwrap();
        let record = schema.to_json(&m.payload).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&record)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{record}");
        assert_eq!(record["device_id"], key.as_str(), "key is the device id");
        assert_eq!(record["collector_id"], "test-collector");
        assert_eq!(record["samples"].as_array().unwrap().len(), 20);
        support::assert_model_values(&record);
        by_device.entry(key).or_default().push(record);
    }
    assert_eq!(by_device.len(), 20, "every device delivered");
    for (device, records) in &by_device {
        support::assert_gap_free(device, records);
    }
}

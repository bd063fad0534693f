//! Gaps filled from the server's history: two of six simulated devices
//! (5 tags, read every second) have their port closed for 60 s (the
//! simulator's flap fault); one of them keeps no history. After the port
//! opens again:
//!
//! - the historized device's missed window arrives in records flagged
//!   `origin: backfill` with the gap's `window`: exactly the values and
//!   source timestamps the simulator's history holds strictly inside it,
//!   for every tag (Bad ones with their status), each once;
//! - the device without history reports the gap as unrecoverable, once,
//!   with the reason, on `/devices`;
//! - the other devices' live reads go on without a pause; every device's
//!   seqs are gap-free.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use collector_core::config::Settings;
use collector_core::Device;
use opc_loadgen::model::{self, ModelValue};
use opc_loadgen::{history, Fault, FaultSpec, Selection, SimConfig, Simulator};
use serde_json::{json, Value as Json};

fn at(t: &Json) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .to_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_offline_is_backfilled_from_history() {
    const TAGS: u32 = 5;
    const HISTORIZED: u32 = 0;
    const NO_HISTORY: u32 = 1;
    let kafka = support::kafka().await;
    // Up 5 s, then the port is closed (and connections dropped) for 60 s.
    let flap = Fault::Flap {
        up: Duration::from_secs(5),
        down: Duration::from_secs(60),
    };
    let sim = Simulator::start(SimConfig {
        devices: 6,
        tags: TAGS,
        faults: vec![
            FaultSpec {
                fault: flap,
                select: Selection::Devices(vec![HISTORIZED, NO_HISTORY]),
            },
            FaultSpec {
                fault: Fault::NoHistory,
                select: Selection::Devices(vec![NO_HISTORY]),
            },
        ],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let devices: Vec<Device> = sim
        .devices()
        .iter()
        .map(|d| {
            Device::new(
                d.id.as_str(),
                d.endpoint_url.as_str(),
                Duration::from_secs(1),
            )
            .unwrap()
            .with_settings(Settings::from_json(json!({
                "nodes": d.node_ids,
                "backfill": { "enabled": true },
            })))
        })
        .collect();
    let cfg = support::config(kafka.bootstrap_servers(), devices);
    let collector = support::build_collector(cfg).await;
    let board = collector.devices();
    let totals = collector
        .run(tokio::time::sleep(Duration::from_secs(73)))
        .await
        .unwrap();
    sim.shutdown().await;

    let (_, statuses) = board.page(|_| true, 0, 100);
    let status = |i: u32| {
        let id = model::device_id(i);
        statuses.iter().find(|s| *s.id == *id).unwrap().clone()
    };
    let h = status(HISTORIZED);
    assert_eq!(h.backfill.gaps, 1, "{:?}", h.backfill);
    assert_eq!(h.backfill.unrecoverable, 0, "{:?}", h.backfill);
    let n = status(NO_HISTORY);
    assert_eq!(n.backfill.gaps, 1, "{:?}", n.backfill);
    assert_eq!(
        n.backfill.unrecoverable, 1,
        "reported once: {:?}",
        n.backfill
    );
    assert_eq!(n.backfill.values, 0);
    let why = n.backfill.last_unrecoverable.clone().unwrap();
    assert!(why.contains("no history"), "{why}");

    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    for (id, records) in &consumed.by_device {
        support::assert_gap_free(id, records);
    }
    // The historized device: its backfill records cover one window.
    let records = &consumed.by_device[&model::device_id(HISTORIZED)];
    let backfill: Vec<&Json> = records
        .iter()
        .filter(|r| r["origin"] == "backfill")
        .collect();
    assert!(!backfill.is_empty(), "no backfill records");
    let window = &backfill[0]["window"];
    let (from, to) = (at(&window["from"]), at(&window["to"]));
    assert!(
        (to - from).num_seconds() >= 55,
        "the gap is the outage: {from} .. {to}"
    );
    let mut got: BTreeMap<u32, Vec<(i64, Json)>> = BTreeMap::new();
    for r in &backfill {
        assert_eq!(&r["window"], window, "one gap, one window: {r}");
        for s in r["samples"].as_array().unwrap() {
            let node = s["node_id"].as_str().unwrap();
            let tag = model::tag_index(node.rsplit("s=").next().unwrap()).unwrap();
            let t = at(&s["source_timestamp"]);
            assert!(t > from && t < to, "{s} outside {from} .. {to}");
            got.entry(tag)
                .or_default()
                .push((t.timestamp_millis(), s.clone()));
        }
    }
    for tag in 0..TAGS {
        let expected: Vec<(i64, ModelValue)> = history::history_between(
            HISTORIZED,
            tag,
            from.timestamp_millis(),
            to.timestamp_millis() + 1,
            None,
        )
        .into_iter()
        .filter(|(ms, _)| {
            let t = DateTime::from_timestamp_millis(*ms).unwrap();
            t > from && t < to
        })
        .collect();
        let samples = got.remove(&tag).unwrap_or_default();
        let stamps: Vec<i64> = samples.iter().map(|(t, _)| *t).collect();
        let want: Vec<i64> = expected.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            stamps, want,
            "tag {tag}: every history entry once, in order"
        );
        for ((_, s), (_, value)) in samples.iter().zip(&expected) {
            if model::is_bad(tag) {
                assert_eq!(s["status"]["name"], "BadSensorFailure", "{s}");
            } else {
                assert!(
                    support::has_value(s, value),
                    "tag {tag}: expected {value:?}, got {s}"
                );
            }
        }
    }
    // The other devices never paused.
    for i in 2..6 {
        let times: Vec<DateTime<Utc>> = consumed.by_device[&model::device_id(i)]
            .iter()
            .map(|r| at(&r["read_time"]))
            .collect();
        let worst = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            worst.num_milliseconds() < 2_500,
            "device {i} paused {worst} during the backfill"
        );
    }
}

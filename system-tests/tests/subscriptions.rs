//! Subscribed devices against the simulator's step model (`change_rate`:
//! every tag steps to a new value once per period, with the step's start
//! as source timestamp), so the test knows exactly which changes must
//! arrive:
//!
//! - 50 devices x 20 tags, monitored items created in chunks of the
//!   server's MaxMonitoredItemsPerCall (8): every change the simulator made
//!   arrives exactly once per (device, node, source timestamp), nothing
//!   arrives that was not a change, Bad nodes arrive with their status,
//!   seqs are gap-free, every record is `origin: data_change` and matches
//!   the JSON Schema;
//! - one device's publishes answered with faults (the `mute` fault: the
//!   session and Reads work, no data and no keep-alive arrive): the
//!   watchdog recreates its subscription within its bound, data resumes
//!   after the fault, the other devices never pause;
//! - a server restart that renumbers its namespaces while subscribed
//!   (`nsu=` node ids): the subscription is set up on the new session and
//!   the values after it are the model's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use collector_core::config::Settings;
use collector_core::{CollectorConfig, Device};
use opc_loadgen::model;
use opc_loadgen::{steps, Fault, FaultSpec, Selection, SimConfig, Simulator};
use serde_json::{json, Value as Json};

/// A subscribed device for `nodes` of simulated device `d`.
fn subscribed(d: &opc_loadgen::SimDevice, nodes: &[String], subscription: Json) -> Device {
    Device::new(
        d.id.as_str(),
        d.endpoint_url.as_str(),
        Duration::from_secs(1),
    )
    .unwrap()
    .with_settings(Settings::from_json(json!({
        "nodes": nodes,
        "mode": "subscribe",
        "subscription": subscription,
    })))
}

fn config(bootstrap: &str, devices: Vec<Device>, read_timeout: &str) -> CollectorConfig {
    let mut cfg = support::config(bootstrap, devices);
    cfg.protocol.insert(
        "session".into(),
        Settings::from_json(json!({
            "max_connects_per_second": 1000,
            "read_timeout": read_timeout,
        })),
    );
    cfg
}

fn ms(t: &Json) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Samples of one device, by tag, in arrival order.
fn samples_by_tag(records: &[Json]) -> BTreeMap<u32, Vec<Json>> {
    let mut by_tag: BTreeMap<u32, Vec<Json>> = BTreeMap::new();
    for r in records {
        assert_eq!(r["origin"], "data_change", "{r}");
        for s in r["samples"].as_array().unwrap() {
            let node = s["node_id"].as_str().unwrap();
            let tag = model::tag_index(node.rsplit("s=").next().unwrap()).unwrap();
            by_tag.entry(tag).or_default().push(s.clone());
        }
    }
    by_tag
}

/// Every sample of a Good tag is a step of the model (its source timestamp
/// a step start, its value that step's); a Bad tag's samples carry
/// BadSensorFailure.
fn assert_steps(device: u32, tag: u32, samples: &[Json], period: i64) {
    for s in samples {
        if model::is_bad(tag) {
            assert_eq!(s["status"]["name"], "BadSensorFailure", "{s}");
            assert!(s["value"].is_null(), "{s}");
            continue;
        }
        assert_eq!(s["status"]["name"], "Good", "{s}");
        let at = ms(&s["source_timestamp"]);
        let (start, value) = steps::step_at(device, tag, at, period);
        assert_eq!(
            start, at,
            "device {device} tag {tag}: {s} is not a step start"
        );
        assert!(
            support::has_value(s, &value),
            "device {device} tag {tag}: expected {value:?}, got {s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_and_nothing_else() {
    const DEVICES: u32 = 50;
    const TAGS: u32 = 20;
    let change_rate = 0.5; // each tag steps every 2 s
    let period = steps::period_ms(change_rate);
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: DEVICES,
        tags: TAGS,
        change_rate: Some(change_rate),
        max_monitored_items_per_call: 8,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let devices = sim
        .devices()
        .iter()
        .map(|d| subscribed(d, &d.node_ids, json!({ "publishing_interval": "500ms" })))
        .collect();
    let cfg = config(kafka.bootstrap_servers(), devices, "5s");
    let collector = support::build_collector(cfg).await;
    let started = chrono::Utc::now().timestamp_millis();
    let run_for = Duration::from_secs(12);
    // When the stop begins (run() returns later, after the drain).
    let stopped = started + run_for.as_millis() as i64;
    let totals = collector.run(tokio::time::sleep(run_for)).await.unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;

    // 20 items per device, created 8 at a time (more per call is refused).
    for (i, d) in stats.iter().enumerate() {
        assert_eq!(
            d.monitored_items_created,
            u64::from(TAGS),
            "device {i}: {d:?}"
        );
    }
    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    assert_eq!(consumed.by_device.len(), DEVICES as usize);
    let (mut changes, mut duplicates) = (0usize, 0usize);
    for (id, records) in &consumed.by_device {
        support::assert_gap_free(id, records);
        let device = model::device_index(id).unwrap();
        let by_tag = samples_by_tag(records);
        assert_eq!(by_tag.len(), TAGS as usize, "{id}: every tag reported");
        for (tag, samples) in &by_tag {
            assert_steps(device, *tag, samples, period);
            let stamps: Vec<i64> = samples.iter().map(|s| ms(&s["source_timestamp"])).collect();
            let unique: BTreeSet<i64> = stamps.iter().copied().collect();
            duplicates += stamps.len() - unique.len();
            if model::is_bad(*tag) {
                assert_eq!(samples.len(), 1, "{id} tag {tag}: a Bad node never changes");
                continue;
            }
            // The first sample is the initial value (the step current when
            // the item was created, before the run); from there on every
            // change until shortly before the stop must have arrived.
            let first = stamps[0];
            assert!(first <= started + 5_000, "{id} tag {tag}: first {first}");
            let expected: BTreeSet<i64> =
                steps::changes_between(device, *tag, first, stopped - 1_500, period)
                    .into_iter()
                    .map(|(at, _)| at)
                    .collect();
            let missing: Vec<&i64> = expected.difference(&unique).collect();
            assert!(
                missing.is_empty(),
                "{id} tag {tag}: changes at {missing:?} did not arrive (got {stamps:?})"
            );
            changes += unique.len() - 1;
        }
    }
    assert_eq!(duplicates, 0, "no sample twice without a recreation");
    // Every Good tag of every device, one change per 2 s over ~10 s.
    let good = (0..TAGS).filter(|t| !model::is_bad(*t)).count() * DEVICES as usize;
    assert!(changes >= good * 4, "{changes} changes of {good} tags");
    println!("{changes} changes, {} records", consumed.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_recreated_and_the_others_run_on() {
    const MUTED: u32 = 3;
    let change_rate = 2.0; // every 500 ms
    let period = steps::period_ms(change_rate);
    let (mute_after, mute_for) = (Duration::from_secs(6), Duration::from_secs(10));
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 8,
        tags: 5,
        change_rate: Some(change_rate),
        faults: vec![FaultSpec {
            fault: Fault::Mute {
                after: mute_after,
                duration: mute_for,
            },
            select: Selection::Devices(vec![MUTED]),
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let sim_started = Instant::now();
    // bound = 500 ms x (2 + 1) + 2 s read_timeout = 3.5 s.
    let devices = sim
        .devices()
        .iter()
        .map(|d| {
            subscribed(
                d,
                &d.node_ids,
                json!({ "publishing_interval": "500ms", "keep_alive_count": 2 }),
            )
        })
        .collect();
    let cfg = config(kafka.bootstrap_servers(), devices, "2s");
    let collector = support::build_collector(cfg).await;
    let mute_start = chrono::Utc::now().timestamp_millis() + mute_after.as_millis() as i64
        - sim_started.elapsed().as_millis() as i64;
    let mute_end = mute_start + mute_for.as_millis() as i64;
    let run = tokio::spawn(collector.run(tokio::time::sleep(Duration::from_secs(22))));
    // Detected within the bound (3.5 s) plus one check (1 s) and set-up.
    tokio::time::sleep((mute_after + Duration::from_secs(6)).saturating_sub(sim_started.elapsed()))
        .await;
    let created = sim.device_stats()[MUTED as usize].monitored_items_created;
    assert!(
        created >= 10,
        "the muted device's subscription was not recreated within the bound: {created} items created"
    );
    let totals = run.await.unwrap().unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;
    for (i, d) in stats.iter().enumerate() {
        if i as u32 != MUTED {
            assert_eq!(d.monitored_items_created, 5, "device {i} untouched: {d:?}");
        }
    }
    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    for (id, records) in &consumed.by_device {
        support::assert_gap_free(id, records);
        let device = model::device_index(id).unwrap();
        for (tag, samples) in samples_by_tag(records) {
            assert_steps(device, tag, &samples, period);
        }
        let times: Vec<i64> = records.iter().map(|r| ms(&r["read_time"])).collect();
        if device == MUTED {
            assert!(
                times.iter().any(|t| *t > mute_end + 500),
                "{id}: data resumed after the fault: {times:?}"
            );
        } else {
            let worst = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
            assert!(worst < 2_000, "{id} paused for {worst} ms");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_renumbered_namespaces_resumes_the_subscription() {
    let change_rate = 2.0;
    let period = steps::period_ms(change_rate);
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 10,
        change_rate: Some(change_rate),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // By namespace URI: the index moves when the server restarts.
    let nodes: Vec<String> = (0..10)
        .map(|t| format!("nsu={};s={}", model::NAMESPACE_URI, model::node_name(t)))
        .collect();
    let devices = sim
        .devices()
        .iter()
        .map(|d| subscribed(d, &nodes, json!({ "publishing_interval": "500ms" })))
        .collect();
    let cfg = config(kafka.bootstrap_servers(), devices, "2s");
    let collector = support::build_collector(cfg).await;
    let run = tokio::spawn(collector.run(tokio::time::sleep(Duration::from_secs(12))));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted_at = chrono::Utc::now().timestamp_millis();
    sim.restart_device(0, true).await.unwrap();
    assert_eq!(sim.namespace_index(0), Some(3), "tags moved to ns=3");
    let totals = run.await.unwrap().unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;
    assert_eq!(stats[0].sessions_created, 2, "{:?}", stats[0]);
    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    for (id, records) in &consumed.by_device {
        support::assert_gap_free(id, records);
        let device = model::device_index(id).unwrap();
        for (tag, samples) in samples_by_tag(records) {
            assert_steps(device, tag, &samples, period);
        }
    }
    let restarted = &consumed.by_device["dev-00000"];
    let after: Vec<i64> = restarted
        .iter()
        .map(|r| ms(&r["read_time"]))
        .filter(|t| *t > restarted_at)
        .collect();
    let first = after.iter().min().expect("records after the restart");
    assert!(
        first - restarted_at < 4_000,
        "data resumed {} ms after the restart",
        first - restarted_at
    );
    // Every Good tag changed again after the restart.
    let by_tag = samples_by_tag(restarted);
    for (tag, samples) in by_tag {
        if !model::is_bad(tag) {
            assert!(
                samples
                    .iter()
                    .any(|s| ms(&s["source_timestamp"]) > restarted_at),
                "tag {tag}: no value after the restart"
            );
        }
    }
}

/// A network drop the session survives: the port closes and every
/// connection drops for 3 s, twice. The session is reactivated on the next
/// connection and the subscription transferred to it (the server never
/// creates its items again); changes resume within two seconds of each
/// return, every value is the model's, seqs gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_drop_transfers_the_subscription() {
    let change_rate = 2.0;
    let period = steps::period_ms(change_rate);
    let kafka = support::kafka().await;
    let (up, down) = (Duration::from_secs(5), Duration::from_secs(3));
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 5,
        change_rate: Some(change_rate),
        faults: vec![FaultSpec {
            fault: Fault::Flap { up, down },
            select: Selection::Devices(vec![0]),
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let devices = sim
        .devices()
        .iter()
        .map(|d| subscribed(d, &d.node_ids, json!({ "publishing_interval": "500ms" })))
        .collect();
    let cfg = config(kafka.bootstrap_servers(), devices, "2s");
    let collector = support::build_collector(cfg).await;
    let totals = collector
        .run(tokio::time::sleep(Duration::from_secs(18)))
        .await
        .unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;
    // Two outages: three connections, one session (reactivated twice).
    assert!(stats[0].connection_attempts >= 3, "{:?}", stats[0]);
    assert_eq!(stats[0].sessions_created, 1, "{:?}", stats[0]);
    assert_eq!(
        stats[0].monitored_items_created, 5,
        "the subscription was transferred, not created again: {:?}",
        stats[0]
    );
    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    for (id, records) in &consumed.by_device {
        support::assert_gap_free(id, records);
        let device = model::device_index(id).unwrap();
        for (tag, samples) in samples_by_tag(records) {
            assert_steps(device, tag, &samples, period);
        }
    }
    // Changes every 500 ms: the flapping device's longest silence is the
    // outage (3 s) plus reconnect and transfer, well under 5 s.
    let times: Vec<i64> = consumed.by_device["dev-00000"]
        .iter()
        .map(|r| ms(&r["read_time"]))
        .collect();
    let worst = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst < 5_000, "dev-00000 silent for {worst} ms");
    assert!(
        times.last().unwrap() - times.first().unwrap() > 14_000,
        "dev-00000 delivered to the end: {times:?}"
    );
}

//! The live device list, on a running daemon against the simulator (60
//! devices, its per-device counters at `--stats-addr`) and an in-process
//! Kafka, the device file mounted as a Kubernetes ConfigMap mounts it
//! (`devices.yaml -> ..data/devices.yaml`, `..data -> ..<version>`,
//! replaced by an atomic swap of `..data`):
//!
//! - 50 devices, then 10 added: they read within the check period plus an
//!   interval; the 50 keep their sessions (the simulator created exactly
//!   one session for each, all run) and their seqs continue;
//! - an invalid edit (a bad node id, a duplicate id): rejected whole with
//!   `file:line` in `/status`, counted, the running set unchanged;
//! - 10 removed (and one device's nodes changed, by SIGHUP): the removed
//!   stop, their sessions close on the simulator, their last records
//!   arrive; the changed one restarts alone and its seq continues;
//! - a list over the loading limit (`--max-devices-per-file`): rejected,
//!   the running set kept;
//! - every record of the run arrives, gap-free per device.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use collector_testkit::{consume_all, EmbeddedKafka};
use serde_json::Value;
use support::{
    free_port, http_get, loadgen_bin, metric_labelled, poll_until, port_below_ephemeral,
    start_loadgen_with, Daemon, LogsOnFailure, SeqSet,
};

const TAGS: usize = 5;

/// The device file's entries, by id, as the simulator wrote them.
fn entries(all: &str) -> Vec<String> {
    all.split("\n  - id: ")
        .skip(1)
        .map(|e| format!("  - id: {}\n", e.trim_end()))
        .collect()
}

/// Publishes `entries` as version `v` of a ConfigMap-style mount in `dir`.
fn publish(dir: &Path, v: u32, entries: &[String]) {
    collector_testkit::configmap::publish(
        dir,
        "devices.yaml",
        v,
        &format!("devices:\n{}", entries.concat()),
    )
    .unwrap();
}

fn json(addr: SocketAddr, path: &str) -> Value {
    match http_get(addr, path) {
        Some((200, body)) => serde_json::from_str(&body).unwrap(),
        other => panic!("GET {path}: {other:?}"),
    }
}

fn reads(addr: SocketAddr) -> BTreeMap<String, u64> {
    json(addr, "/devices?limit=1000")["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["reads_ok"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The simulator's per-device counters.
fn sim_stats(stats: SocketAddr) -> BTreeMap<String, Value> {
    json(stats, "/stats")["per_device"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d.clone()))
        .collect()
}

#[test]
fn devices_added_removed_changed_and_a_bad_edit_rejected_while_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let stats_addr = SocketAddr::from(([127, 0, 0, 1], port_below_ephemeral()));
    let generated = dir.join("all-devices.yaml");
    let mut sim = start_loadgen_with(
        &loadgen_bin(),
        dir,
        &generated,
        0,
        60,
        TAGS,
        "loadgen.log",
        &["--stats-addr", &stats_addr.to_string()],
    );
    let all = entries(&std::fs::read_to_string(&generated).unwrap());
    assert_eq!(all.len(), 60);
    let mount = dir.join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    publish(&mount, 1, &all[..50]);

    let kafka = EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  id: reload\n  state_dir: {}\nschedule:\n  interval: 1s\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {}\nsession:\n  max_connects_per_second: 1000\n\
             device_files: [{}]\n",
            dir.join("state").display(),
            kafka.bootstrap_servers(),
            mount.join("devices.yaml").display()
        ),
    )
    .unwrap();
    // The device list's loading limit, as an operator sets it.
    let mut daemon = Daemon::start_with(
        &config,
        addr,
        dir,
        "collector.log",
        &["--max-devices-per-file", "60"],
    );
    daemon.wait_ready(Duration::from_secs(30));
    poll_until("50 devices read", Duration::from_secs(30), || {
        let r = reads(addr);
        (r.len() == 50 && r.values().all(|n| *n >= 2))
            .then_some(())
            .ok_or_else(|| format!("{r:?}"))
    });

    // Add 10 (a ConfigMap update: the `..data` swap).
    let t = Instant::now();
    publish(&mount, 2, &all);
    let added_after = poll_until("the 10 added devices read", Duration::from_secs(15), || {
        let r = reads(addr);
        (r.len() == 60 && r.values().all(|n| *n >= 1))
            .then(|| t.elapsed())
            .ok_or_else(|| format!("{} devices", r.len()))
    });
    println!("10 devices added: all reading {added_after:?} after the swap");

    // An invalid edit: rejected whole, the 60 keep reading.
    let mut bad = all.clone();
    bad[3] = bad[3].replace("ns=2;s=Tag000", "ns=2;x=Tag000");
    // (In place of another entry: 61 entries would be over the limit.)
    bad[5] = all[0].clone();
    let failed_before = metric_labelled(
        &daemon.metrics(),
        "collector_config_reloads_total",
        "result=\"failed\"",
    );
    publish(&mount, 3, &bad);
    let status = poll_until("the bad edit rejected", Duration::from_secs(15), || {
        let s = json(addr, "/status");
        (!s["last_error"].is_null())
            .then_some(s)
            .ok_or("no error yet".to_string())
    });
    let problems = status["last_error"].to_string();
    println!("rejected: {problems}");
    assert!(
        problems.contains("devices.yaml:")
            && problems.contains("ns=2;x=Tag000")
            && problems.contains("duplicate device id"),
        "{status}"
    );
    assert_eq!(
        metric_labelled(
            &daemon.metrics(),
            "collector_config_reloads_total",
            "result=\"failed\""
        ),
        failed_before + 1.0
    );
    let before = reads(addr);
    std::thread::sleep(Duration::from_secs(2));
    let after = reads(addr);
    assert_eq!(after.len(), 60, "the running set is kept");
    assert!(
        after.iter().all(|(id, n)| *n > before[id]),
        "all keep reading"
    );

    // Remove 10, and change one device's nodes; applied on SIGHUP (the
    // file's own change is also seen, whichever comes first).
    let mut next: Vec<String> = all[..50].to_vec();
    next[7] = next[7].replace(", \"ns=2;s=Tag004\"", "");
    publish(&mount, 4, &next);
    daemon.proc.signal("HUP");
    poll_until("10 devices removed", Duration::from_secs(15), || {
        let r = reads(addr);
        (r.len() == 50)
            .then_some(())
            .ok_or(format!("{} devices", r.len()))
    });
    let changed_id = "dev-00007";
    std::thread::sleep(Duration::from_secs(3));
    let stats = sim_stats(stats_addr);
    for (id, d) in &stats {
        let index: usize = id[4..].parse().unwrap();
        assert_eq!(
            d["sessions_created"], 1,
            "{id}: one session all run (reconnects or restarts would create more): {d}"
        );
        if index >= 50 {
            assert_eq!(
                d["current_sessions"], 0,
                "{id} removed: its session closed: {d}"
            );
        } else {
            assert_eq!(d["current_sessions"], 1, "{id}: {d}");
        }
    }
    let status = json(addr, "/status");
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(status["devices"], 50, "{status}");

    // A list over the loading limit (61 entries, the limit 60): rejected
    // like any bad list, the 50 kept.
    let mut over = all.clone();
    over.push(all[59].replace("dev-00059", "dev-extra"));
    publish(&mount, 5, &over);
    let status = poll_until(
        "the oversized list rejected",
        Duration::from_secs(15),
        || {
            let s = json(addr, "/status");
            (!s["last_error"].is_null())
                .then_some(s)
                .ok_or("no error yet".to_string())
        },
    );
    assert!(
        status["last_error"]
            .to_string()
            .contains("61 devices in one list; the limit is 60"),
        "{status}"
    );
    assert_eq!(reads(addr).len(), 50);
    let metrics = daemon.metrics();
    assert_eq!(
        metric_labelled(
            &metrics,
            "collector_device_changes_total",
            "change=\"removed\""
        ),
        10.0
    );
    assert_eq!(
        metric_labelled(
            &metrics,
            "collector_device_changes_total",
            "change=\"changed\""
        ),
        1.0
    );

    daemon.stop(Duration::from_secs(30));
    let stopped = daemon.stopped_line();
    sim.terminate();
    let _ = sim.wait_timeout(Duration::from_secs(10));

    // Every record arrives; per device, seqs without holes across the
    // reloads (the changed device's too).
    let msgs = consume_all(
        kafka.bootstrap_servers(),
        "opc-samples",
        stopped.delivered as usize,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(msgs.len() as u64, stopped.delivered, "{stopped}");
    let mut by_device: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for m in &msgs {
        let r: Value = serde_json::from_slice(&m.payload).unwrap();
        by_device
            .entry(r["device_id"].as_str().unwrap().to_string())
            .or_default()
            .push((
                r["seq"].as_u64().unwrap(),
                r["samples"].as_array().unwrap().len(),
            ));
    }
    assert_eq!(by_device.len(), 60);
    for (id, recs) in &by_device {
        let seqs = SeqSet::new(recs.iter().map(|(s, _)| *s));
        assert_eq!(seqs.gaps(), None, "{id}");
        assert_eq!(seqs.duplicates, 0, "{id}");
    }
    let changed = &by_device[changed_id];
    assert!(
        changed.iter().any(|(_, n)| *n == TAGS) && changed.iter().any(|(_, n)| *n == TAGS - 1),
        "{changed_id} read with its old and its new nodes: {changed:?}"
    );
    logs.passed();
}

//! The PostgreSQL device registry (`source: postgres`), against a real
//! PostgreSQL (Debian's server, a throwaway cluster on a loopback port),
//! the simulator (500 devices) and an in-process Kafka:
//!
//! - `registry init` twice, `registry import` of 500 devices (then again:
//!   all unchanged; a file with a bad entry: exit 2 with `file:line`,
//!   nothing written); the database's shard cells are the shard function's;
//! - a replica started while the database is down waits (`/startupz` 503,
//!   `/healthz` 200) and starts when it comes up;
//! - 3 replicas of one fleet: each reads exactly its shard of the 500
//!   (`collector_core::shard::shard_of`), every device read;
//! - a row's nodes updated: that device restarts within the poll interval
//!   and its records carry the new node list; a row deleted: the device
//!   stops, its session closes on the simulator; an invalid row: skipped
//!   and reported (id and reason in `/status`, counted), the valid row
//!   written with it loads;
//! - PostgreSQL stopped while running: collection goes on, the registry
//!   shows down; started again: changes apply again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use collector_core::shard::{shard_of, spans};
use collector_testkit::postgres::Postgres;
use collector_testkit::{consume_all, EmbeddedKafka};
use serde_json::Value;
use support::{
    collector_bin, free_port, http_get, loadgen_bin, metric, metric_labelled, poll_until,
    port_below_ephemeral, start_loadgen_with, Daemon, LogsOnFailure,
};

const DEVICES: usize = 500;
const TAGS: usize = 3;
const SHARDS: u32 = 3;
/// The replicas' `registry.poll_interval`, seconds: a change applies
/// within it (plus the machine's slack: the test's own 10 s).
const POLL_S: u64 = 2;

fn json(addr: SocketAddr, path: &str) -> Value {
    match http_get(addr, path) {
        Some((200, body)) => serde_json::from_str(&body).unwrap(),
        other => panic!("GET {path}: {other:?}"),
    }
}

/// `opc-collector registry ...`: (exit code, stdout, stderr).
fn registry(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(collector_bin())
        .args(["--log-format", "json", "registry", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(dir: &Path, name: &str, url: &str, kafka: &str, shard: Option<u32>) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let shard = shard
        .map(|i| format!("shard:\n  index: {i}\n  count: {SHARDS}\n"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "collector:\n  id: {name}\n  state_dir: {}\nschedule:\n  interval: 1s\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {kafka}\nsession:\n  max_connects_per_second: 1000\n{shard}\
             source: postgres\nregistry:\n  url: {url}\n  poll_interval: {POLL_S}s\n  timeout: 3s\n",
            dir.join(format!("state-{name}")).display(),
        ),
    )
    .unwrap();
    path
}

/// The device ids a replica lists in `/devices`.
fn listed(addr: SocketAddr) -> BTreeSet<String> {
    json(addr, "/devices?limit=1000")["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

fn sim_device(stats: SocketAddr, id: &str) -> Value {
    json(stats, "/stats")["per_device"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("the simulator has no {id}"))
}

#[test]
fn a_fleet_reads_its_shards_from_postgres_and_follows_its_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let pg = Postgres::start().unwrap();
    pg.create_database("fleet").unwrap();
    let url = pg.url("fleet");

    let stats = SocketAddr::from(([127, 0, 0, 1], port_below_ephemeral()));
    let devices_file = dir.join("devices.yaml");
    let _sim = start_loadgen_with(
        &loadgen_bin(),
        dir,
        &devices_file,
        0,
        DEVICES,
        TAGS,
        "loadgen.log",
        &["--stats-addr", &stats.to_string()],
    );
    let kafka = EmbeddedKafka::start(1, "opc-samples", 3).unwrap();
    let admin = config(dir, "admin", &url, kafka.bootstrap_servers(), None);

    // The schema, twice (idempotent); the import, twice (an upsert).
    for _ in 0..2 {
        let (code, out, err) = registry(&admin, &["init"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = registry(&admin, &["import", devices_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("500 inserted, 0 updated, 0 unchanged"),
        "{out}"
    );
    let (code, out, _) = registry(&admin, &["import", devices_file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("0 inserted, 0 updated, 500 unchanged"),
        "{out}"
    );
    // A bad entry: every problem with file:line, exit 2, nothing written.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "devices:\n  - id: new-1\n    endpoint: opc.tcp://127.0.0.1:1\n    nodes: [\"ns=2;s=A\"]\n  \
         - id: new-2\n    endpoint: opc.tcp://127.0.0.1:1\n    interval: soon\n    nodes: [\"ns=2;s=A\"]\n",
    )
    .unwrap();
    let (code, _, err) = registry(&admin, &["import", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{}:7", bad.display())), "{err}");
    assert!(err.contains("nothing imported"), "{err}");
    assert_eq!(
        pg.psql("fleet", "SELECT count(*) FROM opc_collector.devices")
            .unwrap()
            .trim(),
        "500"
    );

    // TRUNCATE would go unseen by polling replicas: refused.
    let refused = pg
        .psql("fleet", "TRUNCATE opc_collector.devices")
        .unwrap_err();
    assert!(refused.to_string().contains("DELETE"), "{refused}");

    // The database computes each id's shard cells as the shard function does.
    let cells = pg
        .psql(
            "fleet",
            "SELECT id, array_to_string(shard_cells, ',') FROM opc_collector.devices",
        )
        .unwrap();
    let mut checked = 0;
    for line in cells.lines() {
        let (id, cells) = line.split_once('|').unwrap();
        let want: Vec<String> = spans(id, 4096)
            .into_iter()
            .map(|(b, next)| (b * 8192 + next).to_string())
            .collect();
        assert_eq!(cells, want.join(","), "{id}");
        checked += 1;
    }
    assert_eq!(checked, DEVICES);

    // A replica started while the database is down waits for it.
    pg.stop().unwrap();
    let addrs: Vec<SocketAddr> = (0..SHARDS)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let configs: Vec<PathBuf> = (0..SHARDS)
        .map(|i| {
            config(
                dir,
                &format!("replica-{i}"),
                &url,
                kafka.bootstrap_servers(),
                Some(i),
            )
        })
        .collect();
    let mut first = Daemon::start(&configs[0], addrs[0], dir, "replica-0.log");
    poll_until(
        "replica 0 says the registry is down",
        Duration::from_secs(20),
        || {
            let Some((200, body)) = http_get(addrs[0], "/status") else {
                return Err("no /status yet".to_string());
            };
            let s: Value = serde_json::from_str(&body).unwrap();
            (s["registry"]["up"] == false && s["registry"]["last_error"].is_string())
                .then_some(())
                .ok_or_else(|| s.to_string())
        },
    );
    assert_eq!(http_get(addrs[0], "/startupz").map(|r| r.0), Some(503));
    assert_eq!(http_get(addrs[0], "/healthz").map(|r| r.0), Some(200));
    pg.resume().unwrap();
    first.wait_ready(Duration::from_secs(30));
    let mut replicas = vec![first];
    for i in 1..SHARDS as usize {
        let mut d = Daemon::start(&configs[i], addrs[i], dir, &format!("replica-{i}.log"));
        d.wait_ready(Duration::from_secs(30));
        replicas.push(d);
    }

    // Each replica: exactly its shard, every device read.
    let all: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i:05}")).collect();
    let shard_set = |i: u32| -> BTreeSet<String> {
        all.iter()
            .filter(|id| shard_of(id, SHARDS) == i)
            .cloned()
            .collect()
    };
    for (i, d) in replicas.iter().enumerate() {
        let want = shard_set(i as u32);
        assert!(want.len() > 100, "{}", want.len());
        assert_eq!(listed(addrs[i]), want, "replica {i}");
        assert_eq!(
            json(addrs[i], "/status")["registry"]["rows"],
            want.len(),
            "replica {i}"
        );
        poll_until(
            &format!("replica {i} reads all its devices"),
            Duration::from_secs(60),
            || {
                let r = d.device_reads_ok();
                let unread: Vec<&String> = r
                    .iter()
                    .filter(|(_, n)| **n == 0)
                    .map(|(id, _)| id)
                    .collect();
                (r.len() == want.len() && unread.is_empty())
                    .then_some(())
                    .ok_or_else(|| format!("unread {unread:?}"))
            },
        );
    }

    // A row's nodes change: its device restarts within the poll interval.
    let changed = "dev-00007";
    let owner = shard_of(changed, SHARDS) as usize;
    pg.psql(
        "fleet",
        &format!(
            "UPDATE opc_collector.devices SET settings = '{{\"nodes\": [\"ns=2;s=Tag000\"]}}' WHERE id = '{changed}'"
        ),
    )
    .unwrap();
    poll_until(
        "the changed device restarts",
        Duration::from_secs(POLL_S + 10),
        || {
            let m = replicas[owner].metrics();
            (metric_labelled(&m, "collector_device_changes_total", "change=\"changed\"") >= 1.0)
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    );
    // A row deleted: the device stops and its session closes.
    let deleted = "dev-00011";
    let owner_d = shard_of(deleted, SHARDS) as usize;
    poll_until(
        "the device to delete has its session",
        Duration::from_secs(30),
        || {
            let d = sim_device(stats, deleted);
            (d["current_sessions"] == 1)
                .then_some(())
                .ok_or_else(|| d.to_string())
        },
    );
    pg.psql(
        "fleet",
        &format!("DELETE FROM opc_collector.devices WHERE id = '{deleted}'"),
    )
    .unwrap();
    poll_until("the deleted device stops", Duration::from_secs(10), || {
        (!listed(addrs[owner_d]).contains(deleted))
            .then_some(())
            .ok_or_else(|| "still listed".to_string())
    });
    poll_until("its session closes", Duration::from_secs(15), || {
        let d = sim_device(stats, deleted);
        (d["current_sessions"] == 0)
            .then_some(())
            .ok_or_else(|| d.to_string())
    });

    // An invalid row and a valid one in one transaction: the valid one
    // loads, the invalid one is reported.
    let valid_endpoint = pg
        .psql(
            "fleet",
            "SELECT endpoint FROM opc_collector.devices WHERE id = 'dev-00020'",
        )
        .unwrap();
    let (bad_id, good_id) = pick_two_of_shard(0);
    pg.psql(
        "fleet",
        &format!(
            "BEGIN; \
             INSERT INTO opc_collector.devices (id, endpoint, settings) VALUES ('{bad_id}', 'opc.tcp://127.0.0.1:1', '{{\"nodes\": 5}}'); \
             INSERT INTO opc_collector.devices (id, endpoint, settings) VALUES ('{good_id}', '{}', '{{\"nodes\": [\"ns=2;s=Tag001\"]}}'); \
             COMMIT;",
            valid_endpoint.trim()
        ),
    )
    .unwrap();
    poll_until(
        "the valid row loads, the invalid one is reported",
        Duration::from_secs(10),
        || {
            let s = json(addrs[0], "/status");
            let rejected = s["registry"]["rejected_rows"].to_string();
            (listed(addrs[0]).contains(&good_id)
                && !listed(addrs[0]).contains(&bad_id)
                && rejected.contains(&bad_id)
                && rejected.contains("nodes"))
            .then_some(())
            .ok_or_else(|| s.to_string())
        },
    );
    let m = replicas[0].metrics();
    assert_eq!(
        metric(&m, "collector_registry_rows_rejected_total"),
        Some(1.0),
        "{m}"
    );
    assert!(replicas[0].log_count(&bad_id) >= 1);

    // The database goes away: collection goes on, the registry shows down.
    let before: BTreeMap<String, u64> = replicas[1].device_reads_ok();
    pg.stop().unwrap();
    for (i, _) in replicas.iter().enumerate() {
        poll_until(
            &format!("replica {i} sees the registry down"),
            Duration::from_secs(15),
            || {
                let m = replicas[i].metrics();
                (metric(&m, "collector_registry_up") == Some(0.0))
                    .then_some(())
                    .ok_or_else(|| "up".to_string())
            },
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let during = replicas[1].device_reads_ok();
    assert_eq!(during.len(), before.len(), "the running set is kept");
    assert!(
        during.iter().all(|(id, n)| *n > before[id]),
        "every device still read while the registry is down"
    );
    assert!(listed(addrs[owner]).contains(changed));
    // Back: changes apply again (the deleted device returns).
    pg.resume().unwrap();
    pg.psql(
        "fleet",
        &format!(
            "INSERT INTO opc_collector.devices (id, endpoint, settings) \
             SELECT '{deleted}', endpoint, settings FROM opc_collector.devices WHERE id = 'dev-00020'"
        ),
    )
    .unwrap();
    poll_until(
        "a change after the database returned applies",
        Duration::from_secs(20),
        || {
            let m = replicas[owner_d].metrics();
            (listed(addrs[owner_d]).contains(deleted)
                && metric(&m, "collector_registry_up") == Some(1.0))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
        },
    );
    for (i, d) in replicas.iter_mut().enumerate() {
        assert!(
            d.log_count("device registry unreachable") >= 1,
            "replica {i}"
        );
        d.stop(Duration::from_secs(30));
    }
    // The changed device's records after its restart carry its new node
    // list (one sample), those before it the old one.
    let sizes: BTreeSet<usize> = consume_all(
        kafka.bootstrap_servers(),
        "opc-samples",
        usize::MAX,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .unwrap()
    .iter()
    .filter(|m| m.key.as_deref() == Some(changed.as_bytes()))
    .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
    .filter_map(|r| r["samples"].as_array().map(Vec::len))
    .collect();
    assert_eq!(sizes, BTreeSet::from([1, TAGS]));
    logs.passed();
}

/// Two new ids of `shard` of [`SHARDS`].
fn pick_two_of_shard(shard: u32) -> (String, String) {
    let mut ids = (0..)
        .map(|i| format!("extra-{i}"))
        .filter(|id| shard_of(id, SHARDS) == shard);
    (ids.next().unwrap(), ids.next().unwrap())
}

/// `validate` accepts `source: postgres` without a database, and points at
/// a malformed connection setting (exit 2).
#[test]
fn validate_checks_the_registry_settings_without_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.yaml");
    std::fs::write(
        &good,
        "kafka:\n  brokers: 127.0.0.1:9\nsource: postgres\nregistry:\n  url: postgres://collector@127.0.0.1:9/fleet\n  password_env: REGISTRY_PASSWORD\n",
    )
    .unwrap();
    let out = Command::new(collector_bin())
        .args(["validate", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("registry"));
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kafka:\n  brokers: 127.0.0.1:9\nsource: postgres\nregistry:\n  poll_interval: 10s\n  url: postgres://collector:hunter2@db/fleet\n\
         devices:\n  - id: a\n    endpoint: opc.tcp://h:1\n    nodes: [\"ns=2;s=A\"]\n",
    )
    .unwrap();
    let out = Command::new(collector_bin())
        .args(["validate", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:6", bad.display())) && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        err.contains(&format!("{}:7", bad.display())) && err.contains("registry import"),
        "{err}"
    );
}

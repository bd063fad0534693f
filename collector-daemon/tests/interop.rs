//! The daemon against independent OPC UA stacks, each a child process from
//! `tests/interop/`: Python's `asyncua`, open62541 (through the `o6`
//! package) and `node-opcua`. Every stack serves the same typed variables
//! (Double, UInt32 counter, Boolean, String, DateTime, Float array) and one
//! with a Bad status; the daemon reads them over security None with no user
//! (the token policy id must be the server's own: open62541 refuses any
//! other) and over Basic256Sha256 SignAndEncrypt with a username and a
//! pinned server certificate, delivering to the `tansu` broker. Checked in
//! the records: types, values, status names and codes, timestamps and
//! gap-free seqs; in the log: not one ERROR line. The asyncua run also has
//! a device with a wrong password (a clear authentication error), logs at
//! debug level, and checks that no secret (OPC UA passwords, the client's
//! private key, the Kafka SASL password) appears in the logs, `/devices`
//! or `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use collector_testkit::EmbeddedKafka;
use serde_json::Value as Json;
use support::stacks::{fingerprint, Stack, USER, VARIABLES};
use support::{
    create_topic, find_tansu, free_port, http_get, log_file, poll_until, read_topic, start_broker,
    LogsOnFailure, Proc, SeqSet,
};

const PASSWORD: &str = "interop-Pa55-s3cret";
const WRONG_PASSWORD: &str = "wrong-Pa55-s3cret";
const KAFKA_PASSWORD: &str = "kafka-Pa55-s3cret";
const TOPIC: &str = "opc-samples";
/// Reads each device must have made before the daemon is stopped.
const READS: u64 = 6;

fn start_daemon(dir: &Path, config: &str, addr: SocketAddr, level: &str) -> Proc {
    let path = dir.join("collector.yaml");
    std::fs::write(&path, config).unwrap();
    Proc::spawn(
        "opc-collector",
        Command::new(support::collector_bin())
            .args([
                "--log-format",
                "json",
                "--log-level",
                level,
                "run",
                "--config",
            ])
            .arg(&path)
            .arg("--http-addr")
            .arg(addr.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file(dir, "collector.stdout"))
            .stderr(log_file(dir, "collector.log")),
    )
}

fn get(addr: SocketAddr, path: &str) -> String {
    match http_get(addr, path) {
        Some((200, body)) => body,
        other => panic!("GET {path}: {other:?}"),
    }
}

fn devices(addr: SocketAddr) -> Vec<Json> {
    http_get(addr, "/devices?limit=100")
        .and_then(|(_, b)| serde_json::from_str::<Json>(&b).ok())
        .and_then(|d| d["devices"].as_array().cloned())
        .unwrap_or_default()
}

fn find<'a>(devices: &'a [Json], id: &str) -> &'a Json {
    devices
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or(&Json::Null)
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text.contains(s),
            "{what} contains a secret ({} chars)",
            s.len()
        );
    }
}

/// A device entry reading every variable of `info`'s fixture.
fn device_entry(id: &str, info: &Json, security: &str) -> String {
    let nodes: Vec<String> = VARIABLES
        .iter()
        .map(|n| format!("\"{}\"", info["nodes"][n].as_str().unwrap()))
        .collect();
    format!(
        "  - id: {id}\n    endpoint: {}\n    interval: 500ms\n    nodes: [{}]\n{security}",
        info["endpoint"].as_str().unwrap(),
        nodes.join(", ")
    )
}

/// The secure device's `security:`: Basic256Sha256 SignAndEncrypt, the
/// fixture's certificate pinned, `USER` with the password in `file`.
fn secure_settings(info: &Json, file: &Path) -> String {
    format!(
        "    security:\n      policy: basic256sha256\n      mode: sign_and_encrypt\n      server_fingerprint: \"{}\"\n      user: {{ username: {USER}, password_file: {} }}\n",
        fingerprint(info["cert_der"].as_str().unwrap()),
        file.display()
    )
}

const NONE_SETTINGS: &str = "    security:\n      policy: none\n";

/// Checks one device's records: every variable typed and valued as the
/// fixture serves it, the Bad one with its status, timestamps of this run,
/// and seqs without holes. Returns the number of records.
fn check_records(stack: Stack, device: &str, records: &[Json], info: &Json, since: DateTime<Utc>) {
    assert!(
        records.len() as u64 >= READS,
        "{device}: {} records",
        records.len()
    );
    let seqs = SeqSet::new(records.iter().map(|r| r["seq"].as_u64().unwrap()));
    assert_eq!(seqs.gaps(), None, "{device}: seqs with holes");
    let bad_code = info["bad_status"]["code"].as_u64().unwrap();
    let bad_name = info["bad_status"]["name"].as_str().unwrap();
    let until = Utc::now() + chrono::Duration::seconds(60);
    let recent = |t: &Json, what: &str| {
        let text = t
            .as_str()
            .unwrap_or_else(|| panic!("{device}: no {what}: {t}"));
        let t: DateTime<Utc> = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        // Fixtures stamp their values when they start, just before.
        assert!(
            t > since - chrono::Duration::seconds(120) && t < until,
            "{device}: {what} {t} is not of this run (since {since})"
        );
    };
    for record in records {
        assert_eq!(record["device_id"], device);
        recent(&record["read_time"], "read_time");
        let samples = record["samples"].as_array().unwrap();
        assert_eq!(samples.len(), VARIABLES.len(), "{record}");
        for (name, s) in VARIABLES.iter().zip(samples) {
            assert_eq!(
                s["node_id"], info["nodes"][name],
                "configuration order: {record}"
            );
            let (ty, value): (&str, Json) = match *name {
                "Temperature" => ("Double", 21.5.into()),
                "Counter" => ("UInt32", 3_000_000_000u64.into()),
                "Running" => ("Boolean", true.into()),
                "Name" => ("String", "line-1".into()),
                "Stamp" => ("DateTime", Json::Null),
                "Levels" => ("Float[]", serde_json::json!([1.5, 2.25, -3.0])),
                _ => {
                    assert_eq!(s["status"]["code"], bad_code, "{}: {s}", stack.name());
                    assert_eq!(s["status"]["name"], bad_name, "{}: {s}", stack.name());
                    assert_eq!(s["type"], "Null", "{}: {s}", stack.name());
                    assert!(s["value"].is_null(), "{s}");
                    continue;
                }
            };
            assert_eq!(s["status"]["code"], 0, "{}: {s}", stack.name());
            assert_eq!(s["status"]["name"], "Good", "{s}");
            assert_eq!(s["type"], ty, "{}: {s}", stack.name());
            if *name == "Stamp" {
                let t: DateTime<Utc> = s["value"].as_str().unwrap().parse().unwrap();
                assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00", "{s}");
            } else {
                assert_eq!(s["value"], value, "{}: {s}", stack.name());
            }
            recent(&s["source_timestamp"], "source_timestamp");
            if !s["server_timestamp"].is_null() {
                recent(&s["server_timestamp"], "server_timestamp");
            }
        }
    }
}

/// The records of each device in `ids`, in offset order, from the topic.
fn records_of(bootstrap: &str, ids: &[&str]) -> Vec<Vec<Json>> {
    let messages = read_topic(bootstrap, TOPIC);
    let all: Vec<Json> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    ids.iter()
        .map(|id| {
            all.iter()
                .filter(|r| r["device_id"] == *id)
                .cloned()
                .collect()
        })
        .collect()
}

/// The ERROR lines of a JSON log.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect()
}

/// One stack over security None (no user) and, where the fixture has it,
/// Basic256Sha256 SignAndEncrypt with a user: values through tansu, and no
/// ERROR line in the daemon's log.
fn interop(stack: Stack) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let since = Utc::now();
    let password = dir.join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let (mut server, info) = stack.start(dir, &password);
    let (_broker, bootstrap) = start_broker(&find_tansu(), dir);
    create_topic(&bootstrap, TOPIC, 1);
    let none_id = format!("{}-none", stack.name());
    let secure_id = format!("{}-secure", stack.name());
    let mut ids = vec![none_id.as_str()];
    let mut entries = device_entry(&none_id, &info, NONE_SETTINGS);
    if info["secure"] == true {
        ids.push(&secure_id);
        entries += &device_entry(&secure_id, &info, &secure_settings(&info, &password));
    }
    let config = format!(
        "collector:\n  id: interop\n  state_dir: {}\nkafka:\n  brokers: {bootstrap}\nbatch:\n  interval: 500ms\ndevices:\n{entries}",
        dir.join("state").display()
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut daemon = start_daemon(dir, &config, addr, "info");
    poll_until(
        &format!("{} devices read", stack.name()),
        Duration::from_secs(60),
        || {
            if let Some(status) = daemon.exited() {
                return Err(format!("opc-collector exited: {status}"));
            }
            if let Some(status) = server.exited() {
                return Err(format!("the {} server exited: {status}", stack.name()));
            }
            let d = devices(addr);
            let behind: Vec<String> = ids
                .iter()
                .map(|id| find(&d, id))
                .filter(|x| x["reads_ok"].as_u64().unwrap_or(0) < READS)
                .map(|x| x.to_string())
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind.join("; "))
            }
        },
    );
    daemon.terminate();
    let exit = daemon.wait_timeout(Duration::from_secs(30));
    assert!(matches!(exit, Some(s) if s.success()), "exit: {exit:?}");
    server.terminate();
    let _ = server.wait_timeout(Duration::from_secs(10));

    for (id, records) in ids.iter().zip(records_of(&bootstrap, &ids)) {
        check_records(stack, id, &records, &info, since);
        println!("{}: {id}: {} records checked", stack.name(), records.len());
    }
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap();
    let errors = error_lines(&log);
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
    logs.passed();
}

#[test]
fn open62541_over_none_and_secure() {
    interop(Stack::Open62541);
}

#[test]
fn node_opcua_over_none_and_secure() {
    interop(Stack::NodeOpcua);
}

/// asyncua over None and secure as the other stacks, plus a device with a
/// wrong password, at debug level, and no secret anywhere.
#[test]
fn asyncua_over_none_and_secure_with_a_wrong_password_and_no_secret_leaks() {
    let stack = Stack::Asyncua;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let since = Utc::now();
    let good = dir.join("password");
    let bad = dir.join("wrong-password");
    std::fs::write(&good, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(&bad, WRONG_PASSWORD).unwrap();
    let (mut server, info) = stack.start(dir, &good);
    let (_broker, bootstrap) = start_broker(&find_tansu(), dir);
    create_topic(&bootstrap, TOPIC, 1);
    let state = dir.join("state");
    let entries = [
        device_entry("plant-none", &info, NONE_SETTINGS),
        device_entry("plant-1", &info, &secure_settings(&info, &good)),
        device_entry("plant-2", &info, &secure_settings(&info, &bad)),
    ]
    .concat();
    let config = format!(
        "collector:\n  id: interop\n  state_dir: {}\nkafka:\n  brokers: {bootstrap}\nbatch:\n  interval: 500ms\ndevices:\n{entries}",
        state.display()
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut daemon = start_daemon(dir, &config, addr, "debug");
    poll_until("asyncua devices read", Duration::from_secs(60), || {
        if let Some(status) = daemon.exited() {
            return Err(format!("opc-collector exited: {status}"));
        }
        if let Some(status) = server.exited() {
            return Err(format!("the asyncua server exited: {status}"));
        }
        let d = devices(addr);
        let (n, p1, p2) = (
            find(&d, "plant-none"),
            find(&d, "plant-1"),
            find(&d, "plant-2"),
        );
        let ok = |x: &Json| x["reads_ok"].as_u64().unwrap_or(0) >= READS;
        if ok(n) && ok(p1) && p2["reads_failed"].as_u64().unwrap_or(0) >= 2 {
            Ok(())
        } else {
            Err(format!("plant-none {n}; plant-1 {p1}; plant-2 {p2}"))
        }
    });
    let devices_body = get(addr, "/devices?limit=100");
    let metrics = get(addr, "/metrics");
    let wrong = find(&devices(addr), "plant-2").clone();
    daemon.terminate();
    let exit = daemon.wait_timeout(Duration::from_secs(30));
    assert!(matches!(exit, Some(s) if s.success()), "exit: {exit:?}");
    server.terminate();

    // The wrong password: a clear authentication error, nothing read.
    let err = wrong["last_error"].as_str().unwrap_or("");
    println!("plant-2: {err}");
    assert!(
        err.contains("authentication failed") && err.contains(USER),
        "{wrong}"
    );
    assert_eq!(wrong["reads_ok"], 0, "{wrong}");
    assert!(
        metrics.contains("result=\"security_error\""),
        "security failures are counted apart"
    );

    // No secret anywhere, at debug level.
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap();
    let key = std::fs::read_to_string(state.join("pki/private/private.pem")).unwrap();
    // (PEM written with CR line endings by the crypto library.)
    let key_lines: Vec<&str> = key
        .split(['\r', '\n'])
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    assert!(!key_lines.is_empty());
    let mut secrets = vec![PASSWORD, WRONG_PASSWORD];
    secrets.extend(key_lines);
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logging is on");
    assert_no_secret("the log", &log, &secrets);
    assert_no_secret("/devices", &devices_body, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);
    // The only ERROR lines: the library's own about the refused login
    // (ours is a WARN naming the device and the fix).
    let errors: Vec<&str> = error_lines(&log)
        .into_iter()
        .filter(|l| {
            !l.contains("\"message\":\"activate_session failed\"")
                && !l.contains("BadUserAccessDenied")
        })
        .collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));

    let ids = ["plant-none", "plant-1"];
    for (id, records) in ids.iter().zip(records_of(&bootstrap, &ids)) {
        check_records(stack, id, &records, &info, since);
        println!("asyncua: {id}: {} records checked", records.len());
    }
    logs.passed();
}

#[test]
fn kafka_credentials_stay_out_of_logs_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pw = dir.join("kafka-password");
    std::fs::write(&pw, KAFKA_PASSWORD).unwrap();
    // A broker that does not speak SASL: authentication fails, and is
    // logged, repeatedly.
    let kafka = EmbeddedKafka::start(1, TOPIC, 1).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "kafka:
  brokers: {brokers}
  sasl:
    mechanism: SCRAM-SHA-512
    username: collector
    password_file: {pw}
devices:
  - id: d1
    endpoint: opc.tcp://127.0.0.1:1
    nodes: [\"ns=2;s=T\"]
    interval: 1s
",
        brokers = kafka.bootstrap_servers(),
        pw = pw.display()
    );
    let mut daemon = start_daemon(dir, &config, addr, "debug");
    poll_until("the daemon answers", Duration::from_secs(20), || {
        http_get(addr, "/startupz")
            .map(|_| ())
            .ok_or_else(|| "no answer".to_string())
    });
    std::thread::sleep(Duration::from_secs(4));
    let devices = get(addr, "/devices");
    let metrics = get(addr, "/metrics");
    daemon.terminate();
    let _ = daemon.wait_timeout(Duration::from_secs(30));
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap();
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logging is on");
    assert!(
        log.contains("kafka.sasl without kafka.tls"),
        "SASL over plaintext is warned about"
    );
    assert_no_secret("the log", &log, &[KAFKA_PASSWORD]);
    assert_no_secret("/devices", &devices, &[KAFKA_PASSWORD]);
    assert_no_secret("/metrics", &metrics, &[KAFKA_PASSWORD]);
}

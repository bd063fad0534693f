//! The daemon against an independent OPC UA implementation (the Python
//! `asyncua` server in `tests/interop/`), over Basic256Sha256
//! SignAndEncrypt with a username and a pinned server certificate, logging
//! at debug level: the typed values arrive in Kafka, a device with a wrong
//! password fails with an authentication error, and no secret (OPC UA
//! passwords, the client's private key, the Kafka SASL password) appears in
//! the logs, `/devices` or `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use collector_testkit::{consume_all, EmbeddedKafka};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use support::{free_port, http_get, log_file, poll_until, Proc};

const PASSWORD: &str = "interop-Pa55-s3cret";
const WRONG_PASSWORD: &str = "wrong-Pa55-s3cret";
const KAFKA_PASSWORD: &str = "kafka-Pa55-s3cret";

/// Starts the asyncua server; returns it and its JSON description.
fn start_asyncua(dir: &Path, password_file: &Path) -> (Proc, Json) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/asyncua_server.py");
    let probe = Command::new("python3")
        .args(["-c", "import asyncua"])
        .status();
    assert!(
        matches!(probe, Ok(s) if s.success()),
        "the interop test needs Python's asyncua on PATH: run it through .ci/test, which installs it in target/test-deps/venv"
    );
    let port = free_port();
    let mut proc = Proc::spawn(
        "asyncua server",
        Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--pki"])
            .arg(dir.join("server-pki"))
            .args(["--user", "collector", "--password-file"])
            .arg(password_file)
            .stdout(Stdio::piped())
            .stderr(log_file(dir, "asyncua.log")),
    );
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the asyncua server did not start within 60 s (see asyncua.log)");
    let info: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (proc, info)
}

fn fingerprint(der_file: &str) -> String {
    Sha256::digest(std::fs::read(der_file).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn start_daemon(dir: &Path, config: &str, addr: SocketAddr) -> Proc {
    let path = dir.join("collector.yaml");
    std::fs::write(&path, config).unwrap();
    Proc::spawn(
        "opc-collector",
        Command::new(support::collector_bin())
            .args([
                "--log-format",
                "json",
                "--log-level",
                "debug",
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

fn device_status(addr: SocketAddr, id: &str) -> Json {
    let body: Json = serde_json::from_str(&get(addr, "/devices?limit=100")).unwrap();
    body["devices"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == id).cloned())
        .unwrap_or(Json::Null)
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

#[test]
fn secure_username_session_with_asyncua_and_no_secret_leaks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = dir.join("password");
    let bad = dir.join("wrong-password");
    std::fs::write(&good, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(&bad, WRONG_PASSWORD).unwrap();
    let (server, info) = start_asyncua(dir, &good);
    let endpoint = info["endpoint"].as_str().unwrap();
    let pin = fingerprint(info["cert_der"].as_str().unwrap());
    let nodes = &info["nodes"];
    let node_list: Vec<String> = ["Temperature", "Count", "Running", "Name", "Level", "Status"]
        .iter()
        .map(|n| format!("\"{}\"", nodes[n].as_str().unwrap()))
        .collect();
    let kafka = EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let state = dir.join("state");
    let config = format!(
        "collector:
  id: interop
  state_dir: {state}
kafka:
  brokers: {brokers}
batch:
  interval: 500ms
security:
  policy: basic256sha256
  mode: sign_and_encrypt
devices:
  - id: plant-1
    endpoint: {endpoint}
    interval: 500ms
    nodes: [{nodes}]
    security:
      server_fingerprint: \"{pin}\"
      user: {{ username: collector, password_file: {good} }}
  - id: plant-2
    endpoint: {endpoint}
    interval: 500ms
    nodes: [{nodes}]
    security:
      server_fingerprint: \"{pin}\"
      user: {{ username: collector, password_file: {bad} }}
",
        state = state.display(),
        brokers = kafka.bootstrap_servers(),
        nodes = node_list.join(", "),
        good = good.display(),
        bad = bad.display(),
    );
    let mut daemon = start_daemon(dir, &config, addr);
    let ok = poll_until("plant-1 reads", Duration::from_secs(60), || {
        if let Some(status) = daemon.exited() {
            return Err(format!("opc-collector exited: {status}"));
        }
        let d = http_get(addr, "/devices?limit=100")
            .and_then(|(_, b)| serde_json::from_str::<Json>(&b).ok())
            .ok_or("no /devices yet")?;
        let find = |id: &str| {
            d["devices"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["id"] == id).cloned())
                .unwrap_or(Json::Null)
        };
        let (p1, p2) = (find("plant-1"), find("plant-2"));
        let reads = p1["reads_ok"].as_u64().unwrap_or(0);
        let failed = p2["reads_failed"].as_u64().unwrap_or(0);
        if reads >= 6 && failed >= 2 {
            Ok(reads)
        } else {
            Err(format!("plant-1 {p1}; plant-2 {p2}"))
        }
    });
    let devices = get(addr, "/devices?limit=100");
    let metrics = get(addr, "/metrics");
    let wrong = device_status(addr, "plant-2");
    daemon.terminate();
    let exit = daemon.wait_timeout(Duration::from_secs(30));
    assert!(matches!(exit, Some(s) if s.success()), "exit: {exit:?}");
    server.terminate();

    // The wrong password: a clear authentication error, nothing read.
    let err = wrong["last_error"].as_str().unwrap_or("");
    println!("plant-1 read {ok} times; plant-2: {err}");
    assert!(
        err.contains("authentication failed") && err.contains("collector"),
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
    assert_no_secret("/devices", &devices, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);

    // The values, typed as the independent server declared them.
    let msgs = consume_all(
        kafka.bootstrap_servers(),
        "opc-samples",
        ok as usize,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        msgs.len() as u64 >= ok,
        "{} records for {ok} reads",
        msgs.len()
    );
    let record: Json = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert_eq!(record["device_id"], "plant-1");
    let samples = record["samples"].as_array().unwrap();
    let expect = [
        ("Temperature", "Double", serde_json::json!(21.5)),
        ("Count", "Int32", serde_json::json!(42)),
        ("Running", "Boolean", serde_json::json!(true)),
        ("Name", "String", serde_json::json!("line-1")),
        ("Level", "Float", serde_json::json!(3.25)),
        ("Status", "UInt16", serde_json::json!(7)),
    ];
    for (name, ty, value) in expect {
        let s = samples
            .iter()
            .find(|s| {
                s["node_id"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("s={name}")))
            })
            .unwrap_or_else(|| panic!("no sample for {name}: {record}"));
        assert_eq!(s["type"], ty, "{s}");
        assert_eq!(s["value"], value, "{s}");
        assert_eq!(s["status"]["code"], 0, "{s}");
    }
}

#[test]
fn kafka_credentials_stay_out_of_logs_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pw = dir.join("kafka-password");
    std::fs::write(&pw, KAFKA_PASSWORD).unwrap();
    // A broker that does not speak SASL: authentication fails, and is
    // logged, repeatedly.
    let kafka = EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
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
    let mut daemon = start_daemon(dir, &config, addr);
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

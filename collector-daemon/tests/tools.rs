//! `opc-collector endpoints | browse | read`, the path from a server's
//! address to a device in the fleet:
//!
//! - against the simulator: `endpoints` lists its endpoint and token
//!   policy; `browse --emit-device` writes an entry that `validate`
//!   accepts and the daemon then reads completely (every variable in the
//!   records on the topic);
//! - against the independent stacks (asyncua, open62541, node-opcua):
//!   `endpoints` shows their own anonymous token policy ids and their
//!   certificate's fingerprint, `browse` finds their variables, `read`
//!   prints the values, types and statuses they serve;
//! - asyncua's secure endpoint with strict trust: `browse` fails with the
//!   trust hint, and succeeds with `--server-fingerprint` as `endpoints`
//!   printed it;
//! - a closed port, a black hole (accepts, never answers) and an unknown
//!   node id: each its error and exit code, within the timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use collector_testkit::{consume_all, EmbeddedKafka};
use serde_json::Value as Json;
use support::stacks::{fingerprint, Stack, USER, VARIABLES};
use support::{
    collector_bin, free_port, loadgen_bin, poll_until, start_loadgen, Daemon, LogsOnFailure,
};

/// `opc-collector ARGS` in `dir`: (exit code, stdout, stderr, time). A
/// tool still running after a minute is a hang: killed, and the test fails.
fn tool(dir: &Path, args: &[&str]) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(collector_bin())
        .args(["--log-format", "json"])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained as it comes, so a long output cannot fill the pipe.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("opc-collector {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
        started.elapsed(),
    )
}

#[test]
fn from_an_address_to_a_device_in_the_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let _sim = start_loadgen(&loadgen_bin(), dir, &dir.join("sim-devices.yaml"), 1, 6);
    let sim = std::fs::read_to_string(dir.join("sim-devices.yaml")).unwrap();
    let url = sim
        .lines()
        .find_map(|l| l.trim().strip_prefix("endpoint: "))
        .unwrap()
        .to_string();

    let (code, out, err, _) = tool(dir, &["endpoints", &url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let info: Json = serde_json::from_str(&out).unwrap();
    let eps = info["endpoints"].as_array().unwrap();
    assert!(
        eps.iter().any(|e| e["policy"] == "none"
            && e["user_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["kind"] == "anonymous")),
        "{out}"
    );
    assert!(
        info["chosen"].as_str().unwrap().starts_with("none/none"),
        "{out}"
    );
    assert!(
        info["session"]["operation_limits"]
            .to_string()
            .contains("MaxNodesPerRead"),
        "{out}"
    );

    // The tree, then a device entry for its variables.
    let (code, out, err, _) = tool(dir, &["browse", &url, "--depth", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        // The simulator's tags are historized (HistoryRead for backfill).
        out.contains("Tag005") && out.contains("Double [read, history, historizing]"),
        "{out}"
    );
    let entry = dir.join("plc-1.yaml");
    let (code, _, err, _) = tool(
        dir,
        &[
            "browse",
            &url,
            "--depth",
            "4",
            "--variables-only",
            "--filter",
            "Tag",
            "--emit-device",
            "plc-1",
            "--output",
            entry.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let written = std::fs::read_to_string(&entry).unwrap();
    assert_eq!(written.matches("nsu=").count(), 6, "{written}");

    let kafka = EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
    let config = dir.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  id: tools\nschedule:\n  interval: 500ms\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {}\ndevice_files: [{}]\n",
            kafka.bootstrap_servers(),
            entry.display()
        ),
    )
    .unwrap();
    let (code, out, err, _) = tool(dir, &["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 devices, 6 nodes"), "{out}");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut daemon = Daemon::start(&config, addr, dir, "collector.log");
    daemon.wait_ready(Duration::from_secs(30));
    poll_until("plc-1 read", Duration::from_secs(30), || {
        let r = daemon.device_reads_ok();
        (r.get("plc-1").copied().unwrap_or(0) >= 3)
            .then_some(())
            .ok_or_else(|| format!("{r:?}"))
    });
    daemon.stop(Duration::from_secs(30));
    let records: Vec<Json> = consume_all(
        kafka.bootstrap_servers(),
        "opc-samples",
        usize::MAX,
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .unwrap()
    .iter()
    .map(|m| serde_json::from_slice(&m.payload).unwrap())
    .collect();
    assert!(records.len() >= 3);
    for r in &records {
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 6, "{r}");
        assert!(
            samples.iter().all(|s| s["node_id"]
                .as_str()
                .unwrap()
                .starts_with("nsu=urn:opc-loadgen:devices;s=Tag")),
            "{r}"
        );
    }

    // `read` prints samples as the record carries them: the same node id,
    // type and status as the daemon's record of that node.
    let recorded = records[0]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"]["name"] == "Good")
        .unwrap()
        .clone();
    let node = recorded["node_id"].as_str().unwrap().to_string();
    let (code, out, err, _) = tool(dir, &["read", &url, &node]);
    assert_eq!(code, 0, "{err}");
    let sample: Json = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(sample["node_id"], node.as_str());
    assert_eq!(sample["type"], recorded["type"]);
    assert_eq!(sample["status"], recorded["status"]);
    assert!(
        sample["source_timestamp"].is_string() && sample["server_timestamp"].is_string(),
        "{sample}"
    );

    // An unknown node: its status, exit 1.
    let (code, out, err, took) = tool(dir, &["read", &url, "ns=2;s=NoSuchTag"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("BadNodeIdUnknown") && err.contains("BadNodeIdUnknown"),
        "{out}{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (code, _, err, _) = tool(dir, &["browse", &url, "ns=2;s=NoSuchFolder"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("BadNodeIdUnknown"), "{err}");
    // Usage errors: exit 2.
    let (code, _, err, _) = tool(dir, &["read", &url]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err, _) = tool(dir, &["browse", &url, "--security-policy", "rot13"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rot13"), "{err}");
    logs.passed();
}

#[test]
fn dead_servers_end_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let closed = free_port();
    let (code, _, err, took) = tool(
        dir,
        &[
            "endpoints",
            &format!("opc.tcp://127.0.0.1:{closed}"),
            "--timeout",
            "3s",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("GetEndpoints") || err.contains("connect"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Accepts, never answers.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("opc.tcp://{}", hole.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hole.incoming().take(4) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    // A server that stops answering after the session opened (every Read
    // takes 30 s): the read times out, and closing does not wait for it.
    let _slow = support::start_loadgen_with(
        &loadgen_bin(),
        dir,
        &dir.join("slow.yaml"),
        0,
        1,
        3,
        "slow.log",
        &["--fault", "slow=0:30s"],
    );
    let slow = std::fs::read_to_string(dir.join("slow.yaml")).unwrap();
    let slow_url = slow
        .lines()
        .find_map(|l| l.trim().strip_prefix("endpoint: "))
        .unwrap()
        .to_string();
    let (code, _, err, took) = tool(
        dir,
        &["read", &slow_url, "ns=2;s=Tag000", "--timeout", "2s"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    for args in [
        vec!["endpoints", hole_url.as_str(), "--timeout", "2s"],
        vec!["browse", hole_url.as_str(), "--timeout", "2s"],
        vec!["read", hole_url.as_str(), "i=2258", "--timeout", "2s"],
    ] {
        let (code, _, err, took) = tool(dir, &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(took < Duration::from_secs(15), "{args:?}: {took:?}");
    }
    drop(held);
}

fn check_stack(stack: Stack) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let password = dir.join("password");
    std::fs::write(&password, "interop-Pa55-s3cret").unwrap();
    let (_server, info) = stack.start(dir, &password);
    let url = info["endpoint"].as_str().unwrap();
    let pki = dir.join("pki");
    let pki = pki.to_str().unwrap();

    let (code, out, err, _) = tool(dir, &["endpoints", url, "--pki-dir", pki, "--json"]);
    assert_eq!(code, 0, "{err}");
    let got: Json = serde_json::from_str(&out).unwrap();
    let anonymous: Vec<&str> = got["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["user_tokens"].as_array().unwrap().iter())
        .filter(|t| t["kind"] == "anonymous")
        .map(|t| t["policy_id"].as_str().unwrap())
        .collect();
    let anonymous_over_none = got["endpoints"].as_array().unwrap().iter().any(|e| {
        e["policy"] == "none"
            && e["user_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["kind"] == "anonymous")
    });
    for id in info["anonymous_policy_ids"].as_array().unwrap() {
        assert!(
            anonymous.contains(&id.as_str().unwrap()),
            "{}: {out}",
            stack.name()
        );
    }
    if info["secure"] == true {
        let fp = fingerprint(info["cert_der"].as_str().unwrap());
        assert!(out.contains(&fp), "{}: {fp} not in {out}", stack.name());
    }
    // Over None when the stack takes anonymous users there, else secure
    // with the user and the pinned certificate.
    let mut security: Vec<String> = vec!["--pki-dir".into(), pki.into()];
    if !anonymous_over_none {
        security.extend([
            "--security-policy".into(),
            "basic256sha256".into(),
            "--user".into(),
            USER.into(),
            "--password-file".into(),
            password.display().to_string(),
            "--server-fingerprint".into(),
            fingerprint(info["cert_der"].as_str().unwrap()),
        ]);
    } else {
        security.extend(["--security-policy".into(), "none".into()]);
    }
    let sec: Vec<&str> = security.iter().map(String::as_str).collect();
    let mut args = vec!["browse", url, "--depth", "1", "--variables-only", "--json"];
    args.extend(&sec);
    let (code, out, err, _) = tool(dir, &args);
    assert_eq!(code, 0, "{}: {err}", stack.name());
    let browsed: Json = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = browsed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    for v in VARIABLES {
        assert!(names.contains(&v), "{}: {v} not in {names:?}", stack.name());
    }
    let ns_uri = info["namespace_uri"].as_str().unwrap_or("");
    let temperature = browsed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "Temperature")
        .unwrap();
    assert_eq!(
        temperature["data_type"],
        "Double",
        "{}: {temperature}",
        stack.name()
    );
    assert_eq!(temperature["readable"], true);
    if !ns_uri.is_empty() {
        assert!(
            temperature["node_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("nsu={ns_uri};")),
            "{temperature}"
        );
    }
    // `read` of every variable: the fixture's values, types and statuses.
    let nodes: Vec<String> = VARIABLES
        .iter()
        .map(|v| {
            browsed["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == *v)
                .unwrap()["node_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut args = vec!["read", url];
    args.extend(nodes.iter().map(String::as_str));
    args.extend(&sec);
    let (code, out, err, _) = tool(dir, &args);
    // `Broken` is Bad: exit 1, every sample printed all the same.
    assert_eq!(code, 1, "{}: {out}{err}", stack.name());
    let samples: Vec<Json> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), VARIABLES.len(), "{out}");
    let by = |v: &str| &samples[VARIABLES.iter().position(|x| *x == v).unwrap()];
    assert_eq!(by("Temperature")["type"], "Double");
    assert_eq!(by("Temperature")["value"], 21.5);
    assert_eq!(by("Counter")["type"], "UInt32");
    assert_eq!(by("Counter")["value"], 3_000_000_000u64);
    assert_eq!(by("Running")["value"], true);
    assert_eq!(by("Broken")["status"]["name"], info["bad_status"]["name"]);
    assert_eq!(by("Broken")["status"]["code"], info["bad_status"]["code"]);
    assert!(
        err.contains(info["bad_status"]["name"].as_str().unwrap()),
        "{err}"
    );
    logs.passed();
}

#[test]
fn asyncua_endpoints_browse_read_and_strict_trust() {
    check_stack(Stack::Asyncua);
    // The tree is printed depth first: each node under its parent.
    let tmp = tempfile::tempdir().unwrap();
    let password = tmp.path().join("password");
    std::fs::write(&password, "interop-Pa55-s3cret").unwrap();
    let (_server, info) = Stack::Asyncua.start(tmp.path(), &password);
    let (code, out, err, _) = tool(
        tmp.path(),
        &[
            "browse",
            info["endpoint"].as_str().unwrap(),
            "--depth",
            "2",
            "--security-policy",
            "none",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let server = lines
        .iter()
        .position(|l| l.starts_with("Server  i=2253"))
        .unwrap();
    assert!(lines[server + 1].starts_with("  "), "{out}");
    assert!(
        lines[server + 1..]
            .iter()
            .take_while(|l| l.starts_with("  "))
            .any(|l| l.trim_start().starts_with("NamespaceArray")),
        "{out}"
    );

    // Strict trust: refused with the hint, then pinned.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let password = dir.join("password");
    std::fs::write(&password, "interop-Pa55-s3cret").unwrap();
    let (_server, info) = Stack::Asyncua.start(dir, &password);
    let url = info["endpoint"].as_str().unwrap();
    let pki = dir.join("pki");
    let secure = [
        "--pki-dir",
        pki.to_str().unwrap(),
        "--security-policy",
        "basic256sha256",
        "--mode",
        "sign_and_encrypt",
        "--user",
        USER,
        "--password-file",
        password.to_str().unwrap(),
    ];
    let mut args = vec!["browse", url, "--depth", "1"];
    args.extend(secure);
    let (code, _, err, _) = tool(dir, &args);
    assert_eq!(code, 1, "{err}");
    let fp = fingerprint(info["cert_der"].as_str().unwrap());
    assert!(
        err.contains("rejected") && err.contains(&fp),
        "the trust hint: {err}"
    );
    args.extend(["--server-fingerprint", &fp]);
    let (code, out, err, _) = tool(dir, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Temperature"), "{out}");
    assert!(!out.contains("interop-Pa55") && !err.contains("interop-Pa55"));
}

#[test]
fn open62541_endpoints_browse_read() {
    check_stack(Stack::Open62541);
}

#[test]
fn node_opcua_endpoints_browse_read() {
    check_stack(Stack::NodeOpcua);
}

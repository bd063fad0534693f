//! The daemon's HTTP surface and signal handling, from outside the process:
//! `/healthz`, `/startupz`, `/readyz` (503 while Kafka is unreachable, 200
//! when it is), `/metrics`, and a clean exit 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector_testkit::EmbeddedKafka;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET on the daemon's port: (status, body), or None if nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    collector_testkit::http::get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path).ok()
}

fn wait_for(port: u16, path: &str, status: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        match get(port, path) {
            Some((s, body)) if s == status => return body,
            other if start.elapsed() > within => {
                panic!("{path}: wanted {status}, last answer {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device that accepts connections and never answers (a black hole):
/// each connect costs its timeout, the kind of failure the breaker backs
/// off from. The listener lives as long as the test process.
fn black_hole() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("opc.tcp://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

fn start(dir: &std::path::Path, brokers: &str, http_port: u16, spill: bool) -> Daemon {
    let dead_device = black_hole();
    let config = dir.join("collector.yaml");
    let state = if spill {
        format!("collector:\n  state_dir: {}\n", dir.join("state").display())
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "{state}kafka:\n  brokers: {brokers}\n  properties:\n    reconnect.backoff.max.ms: \"500\"\n\
             http:\n  addr: 127.0.0.1:{http_port}\n\
             schedule:\n  interval: 1s\n\
             session:\n  connect_timeout: 1s\n\
             devices:\n  - id: plc-1\n    endpoint: {dead_device}\n    nodes: [\"ns=2;s=Tag000\"]\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_opc-collector"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon(child)
}

fn sigterm_and_wait(mut d: Daemon) {
    let pid = d.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    loop {
        if let Some(status) = d.0.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn not_ready_while_kafka_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = start(
        dir.path(),
        &format!("127.0.0.1:{}", free_port()),
        port,
        false,
    );
    wait_for(port, "/healthz", 200, Duration::from_secs(20));
    wait_for(port, "/startupz", 200, Duration::from_secs(10));
    // The first probe needs its timeout to fail; readiness must stay 503.
    std::thread::sleep(Duration::from_secs(4));
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(1));
    assert!(body.contains("\"kafka\":false"), "{body}");
    let metrics = wait_for(port, "/metrics", 200, Duration::from_secs(1));
    for name in [
        "collector_build_info",
        "collector_devices 1",
        "collector_kafka_up 0",
        "collector_reads_total",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    // Nothing is exported that the metric table (and so docs/metrics.md,
    // see collector-core's metrics_doc test) does not declare.
    let declared = |family: &str| {
        collector_core::metrics::ALL
            .iter()
            .any(|m| m.name == family)
    };
    for sample in collector_testkit::Scrape::parse(&metrics).samples() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample
                    .name
                    .strip_suffix(suffix)
                    .filter(|base| declared(base))
            })
            .unwrap_or(&sample.name);
        assert!(
            declared(family),
            "{} is exported but not declared in collector_core::metrics",
            sample.name
        );
    }
    // The unreachable device shows in /devices: failing, then its breaker
    // opens (3 connect timeouts of 1 s at a 1 s interval).
    let failing = wait_for(port, "/devices?failing=true", 200, Duration::from_secs(1));
    assert!(failing.contains("\"id\":\"plc-1\""), "{failing}");
    assert!(
        failing.contains("\"last_error\":\"connect timed out"),
        "{failing}"
    );
    let start = Instant::now();
    loop {
        let (_, open) = get(port, "/devices?breaker=open").unwrap();
        if open.contains("\"id\":\"plc-1\"") {
            assert!(open.contains("\"total\":1"), "{open}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "breaker never opened: {open}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, none) = get(port, "/devices?breaker=closed").unwrap();
    assert!(none.contains("\"total\":0"), "{none}");
    sigterm_and_wait(d);
}

#[test]
fn ready_when_kafka_answers() {
    let kafka = EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = start(dir.path(), kafka.bootstrap_servers(), port, false);
    let body = wait_for(port, "/readyz", 200, Duration::from_secs(20));
    assert!(body.contains("\"ready\":true"), "{body}");
    sigterm_and_wait(d);
}

#[test]
fn ready_while_spilling_through_a_kafka_outage() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = start(
        dir.path(),
        &format!("127.0.0.1:{}", free_port()),
        port,
        true,
    );
    wait_for(port, "/startupz", 200, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    let body = wait_for(port, "/readyz", 200, Duration::from_secs(1));
    assert!(
        body.contains("\"kafka\":false") && body.contains("\"spill\":true"),
        "{body}"
    );
    sigterm_and_wait(d);
}

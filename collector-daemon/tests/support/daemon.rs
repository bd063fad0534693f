//! The `opc-collector` daemon as a child process: starting it, its HTTP
//! surface and log, a graceful stop, and the totals it logs when it stops.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector_testkit::StoppedLine;
use serde_json::Value;

use super::proc::{log_file, Proc};
use super::scrape::{http_get, metric, metric_sum};

/// The `opc-collector` binary cargo built for this test run.
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
        Daemon::start_with(config, addr, dir, log_name, &[])
    }

    /// [`Daemon::start`] with more global arguments (`--max-file-bytes`, ...).
    pub fn start_with(
        config: &Path,
        addr: SocketAddr,
        dir: &Path,
        log_name: &str,
        args: &[&str],
    ) -> Daemon {
        let proc = Proc::spawn(
            "opc-collector",
            Command::new(collector_bin())
                .args(args)
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

    /// The totals of the final `collector stopped` line of this run's log.
    pub fn stopped_line(&self) -> Stopped {
        Stopped::from_log(&self.log)
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

/// The totals of the daemon's final `collector stopped` line (fields via
/// `Deref`), printed as `reads_ok=.. reads_failed=.. ...` in messages.
#[derive(Debug, Clone)]
pub struct Stopped(pub StoppedLine);

impl Stopped {
    /// The totals of the last `collector stopped` line in `log`. Every
    /// total must be in the line as a number: `StoppedLine` reads an absent
    /// one as 0, which must not pass for "nothing undelivered".
    pub fn from_log(log: &Path) -> Stopped {
        let totals = StoppedLine::from_log(log).unwrap_or_else(|e| panic!("{e}"));
        let line = final_log_line(log);
        let names = serde_json::to_value(&totals).expect("StoppedLine serializes to JSON");
        for name in names
            .as_object()
            .expect("StoppedLine is a JSON object")
            .keys()
        {
            assert!(
                line[name].is_u64(),
                "`collector stopped` line lacks a numeric `{name}`: {line}"
            );
        }
        Stopped(totals)
    }
}

impl Deref for Stopped {
    type Target = StoppedLine;

    fn deref(&self) -> &StoppedLine {
        &self.0
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reads_ok={} reads_failed={} delivered={} failed={} spilled={} replayed={} undelivered={} dead_lettered={}",
            self.reads_ok,
            self.reads_failed,
            self.delivered,
            self.failed,
            self.spilled,
            self.replayed,
            self.undelivered,
            self.dead_lettered
        )
    }
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

//! The `opc-collector` child process: find the binary, write its
//! configuration, start it, scrape its HTTP endpoints, stop it with SIGTERM
//! and read its final `collector stopped` log line.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
pub use collector_testkit::StoppedLine;

const BIN: &str = "opc-collector";

/// Finds `opc-collector`: the given path, else next to the current
/// executable (the same cargo target folder), else on `PATH`.
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--collector-bin {}: no such file", p.display());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            // Next to us, or one level up (we may be a test binary in deps/).
            for d in [Some(dir), dir.parent()].into_iter().flatten() {
                let c = d.join(BIN);
                if c.is_file() {
                    return Ok(c);
                }
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join(BIN);
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    bail!(
        "cannot find the `{BIN}` binary: pass --collector-bin PATH, or build it next to \
         opc-loadgen (`cargo build --release -p collector-daemon`), or put it on PATH"
    )
}

/// What goes into the collector's configuration.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Read interval.
    pub interval: Duration,
    /// `batch.interval`; `None` = the collector's default.
    pub batch_interval: Option<Duration>,
    /// `kafka.encoding`.
    pub encoding: &'static str,
    /// `session.max_connects_per_second`.
    pub connect_rate: u32,
    /// `workers.permits`; `None` = the collector's default.
    pub permits: Option<u32>,
    /// `schedule.phase_slots`; `None` = the collector's default.
    pub phase_slots: Option<u32>,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Kafka topic.
    pub topic: String,
    /// Device files (absolute paths).
    pub device_files: Vec<PathBuf>,
    /// Subscribe to every device (`subscription: {mode: subscribe}`, the
    /// publishing interval defaulting to `interval`) instead of polling.
    pub subscribe: bool,
}

/// Writes `collector.yaml` into `dir` (state_dir `dir/state`) and returns its path.
pub fn write_config(dir: &Path, c: &CollectorConfig, http: SocketAddr) -> anyhow::Result<PathBuf> {
    let mut y = String::from("# written by opc-loadgen bench\n");
    y += &format!(
        "collector:\n  id: opc-bench\n  state_dir: \"{}\"\n",
        dir.join("state").display()
    );
    y += &format!("schedule:\n  interval: {}ms\n", c.interval.as_millis());
    if let Some(s) = c.phase_slots {
        y += &format!("  phase_slots: {s}\n");
    }
    if let Some(p) = c.permits {
        y += &format!("workers:\n  permits: {p}\n");
    }
    y += &format!("session:\n  max_connects_per_second: {}\n", c.connect_rate);
    if c.subscribe {
        // The publishing interval defaults to the device's interval.
        y += "subscription:\n  mode: subscribe\n";
    }
    if let Some(b) = c.batch_interval {
        y += &format!("batch:\n  interval: {}ms\n", b.as_millis());
    }
    y += &format!(
        "kafka:\n  brokers: \"{}\"\n  topic: \"{}\"\n  encoding: {}\n",
        c.brokers, c.topic, c.encoding
    );
    y += &format!("http:\n  addr: \"{http}\"\n");
    y += "device_files:\n";
    for f in &c.device_files {
        y += &format!("  - \"{}\"\n", f.display());
    }
    let path = dir.join("collector.yaml");
    std::fs::write(&path, y).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("finding a free port")
}

/// The running collector; killed (SIGKILL) if dropped while running.
pub struct Collector {
    child: Child,
    /// Its `/metrics` and health address.
    pub http: SocketAddr,
    /// Its stderr (JSON log lines).
    pub log: PathBuf,
}

impl Collector {
    /// Starts `bin --log-format json run --config CONFIG --http-addr HTTP`,
    /// logging to `dir/collector.log`.
    pub fn spawn(bin: &Path, config: &Path, http: SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(bin, config, http, dir.join("collector.log"), &[])
    }

    /// The same, logging to `log`, with `env` added to its environment.
    pub fn spawn_with(
        bin: &Path,
        config: &Path,
        http: SocketAddr,
        log: PathBuf,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .arg("--http-addr")
            .arg(http.to_string())
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Collector { child, http, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().context("checking on the collector")
    }

    /// Fails with the log's tail if the collector is no longer running.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.exited()? {
            bail!(
                "opc-collector exited ({s}); last log lines:\n{}",
                log_tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// Waits until `path` answers 200.
    pub fn wait_http_ok(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.ensure_running()?;
            if let Ok((200, _)) = http_get(self.http, path) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "opc-collector: {path} not 200 after {limit:?}; last log lines:\n{}",
                    log_tail(&self.log, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match http_get(self.http, "/metrics")? {
            (200, body) => Ok(body),
            (code, _) => bail!("/metrics answered {code}"),
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).context("collector pid")?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("kill -TERM {pid}: {}", std::io::Error::last_os_error());
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited()? {
                return Ok(s);
            }
            if start.elapsed() > limit {
                bail!("opc-collector did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The collector's final totals from its JSON log.
pub fn stopped_line(log: &Path) -> anyhow::Result<StoppedLine> {
    StoppedLine::from_log(log).map_err(|e| anyhow!(e))
}

/// The last `n` lines of a file (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    collector_testkit::stopped::tail(&std::fs::read_to_string(path).unwrap_or_default(), n)
}

/// A minimal HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    collector_testkit::http::get(addr, path).with_context(|| format!("GET http://{addr}{path}"))
}

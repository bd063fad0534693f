//! The simulated devices for a bench: in this process (the default), or
//! split over `opc-loadgen serve` child processes when one process would
//! run out of file descriptors. Either way the bench can read the bytes the
//! devices' fronts relayed (in process: [`Simulator::stats`]; children: their
//! `GET /stats`, on an OS-chosen port each announces on its ready line).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::bench::collector;
use crate::bench::procfs::{self, Pid};
use opc_loadgen::{SimConfig, Simulator};

/// File descriptors one device costs the simulator: two listeners (public
/// front and internal server) plus three per connection (accepted, relay,
/// server side); see loadgen/README.md.
pub const FDS_PER_DEVICE: u64 = 5;

/// Where the devices run.
pub enum Fleet {
    /// In the bench process.
    InProcess(Simulator),
    /// In child `opc-loadgen serve` processes.
    Children(Vec<SimChild>),
}

/// A simulator child process, killed if dropped while running.
pub struct SimChild {
    child: Child,
    /// Its `GET /stats` address, from its ready line.
    stats: Option<SocketAddr>,
}

impl Drop for SimChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Bytes the device fronts relayed since the simulator started (OPC UA over
/// TCP as on the wire, without TCP/IP headers), summed over the devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// From clients (the collector) to the devices.
    pub from_clients: u64,
    /// From the devices to clients.
    pub to_clients: u64,
}

impl WireBytes {
    /// The bytes relayed between `earlier` and `self`.
    pub fn since(self, earlier: WireBytes) -> WireBytes {
        WireBytes {
            from_clients: self.from_clients.saturating_sub(earlier.from_clients),
            to_clients: self.to_clients.saturating_sub(earlier.to_clients),
        }
    }
}

/// The totals of a child's `GET /stats` that the bench reads.
#[derive(serde::Deserialize)]
struct StatsTotals {
    bytes_from_clients: u64,
    bytes_to_clients: u64,
}

/// The stats address a `serve --stats-addr` ready line announces
/// (`ready: …; stats http://127.0.0.1:PORT/stats`).
fn stats_addr_of(ready_line: &str) -> Option<SocketAddr> {
    let (_, rest) = ready_line.split_once("; stats http://")?;
    rest.trim_end().strip_suffix("/stats")?.parse().ok()
}

/// How to start the fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Devices in all.
    pub devices: u32,
    /// Tags per device.
    pub tags: u32,
    /// Simulator processes; 0 = in process.
    pub processes: u32,
    /// First public port (device i on port_base + i); 0 = OS-chosen.
    pub port_base: u16,
    /// The step model: every tag changes this many times per second
    /// (`serve --change-rate`); `None` = values computed at each read.
    pub change_rate: Option<f64>,
    /// Serve subscriptions (`serve --subscriptions`; implied by a change rate).
    pub subscriptions: bool,
}

/// How many simulator processes a fleet needs: 0 (in process) while it fits
/// this process's open-files limit with room for Kafka and the rest.
pub fn processes_needed(devices: u32) -> u32 {
    let limit = procfs::open_files_limit();
    let per_process = (limit.saturating_sub(1000) / FDS_PER_DEVICE).max(1);
    if u64::from(devices) <= per_process {
        0
    } else {
        u32::try_from(u64::from(devices).div_ceil(per_process)).unwrap_or(u32::MAX)
    }
}

impl Fleet {
    /// Starts the devices and writes their device file(s) into `dir`;
    /// returns the fleet and the device files.
    pub async fn start(spec: &FleetSpec, dir: &Path) -> anyhow::Result<(Fleet, Vec<PathBuf>)> {
        if spec.processes == 0 {
            let sim = Simulator::start(SimConfig {
                devices: spec.devices,
                tags: spec.tags,
                port_base: spec.port_base,
                change_rate: spec.change_rate,
                subscriptions: spec.subscriptions || spec.change_rate.is_some(),
                ..SimConfig::default()
            })
            .await
            .context("starting the simulated devices")?;
            let file = dir.join("devices.yaml");
            sim.write_device_file(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            return Ok((Fleet::InProcess(sim), vec![file]));
        }
        let exe = std::env::current_exe().context("locating opc-loadgen itself")?;
        let per = spec.devices.div_ceil(spec.processes);
        let mut children = Vec::new();
        let mut files = Vec::new();
        let mut ready = Vec::new();
        for p in 0..spec.processes {
            let first = p * per;
            let n = per.min(spec.devices.saturating_sub(first));
            if n == 0 {
                break;
            }
            let file = dir.join(format!("devices-{p}.yaml"));
            let port = if spec.port_base == 0 {
                0
            } else {
                u16::try_from(u32::from(spec.port_base) + first)
                    .context("--port-base + devices exceeds 65535")?
            };
            let mut cmd = Command::new(&exe);
            cmd.args(["serve", "--port-base", &port.to_string()])
                .args([
                    "--devices",
                    &n.to_string(),
                    "--tags",
                    &spec.tags.to_string(),
                ])
                .args(["--first-device", &first.to_string()])
                // Port 0: the child announces the port on its ready line.
                .args(["--stats-addr", "127.0.0.1:0", "--write-devices"])
                .arg(&file);
            if let Some(r) = spec.change_rate {
                cmd.args(["--change-rate", &r.to_string()]);
            }
            if spec.subscriptions {
                cmd.arg("--subscriptions");
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(sim_log(dir, p)?)
                .spawn()
                .context("starting an `opc-loadgen serve` child")?;
            let stdout = child.stdout.take();
            children.push(SimChild { child, stats: None });
            files.push(file);
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                if let Some(out) = stdout {
                    let mut r = BufReader::new(out);
                    let _ = r.read_line(&mut line);
                    let _ = tx.send(line);
                    // Keep draining so the child never blocks on stdout.
                    let mut sink = String::new();
                    while matches!(r.read_line(&mut sink), Ok(n) if n > 0) {
                        sink.clear();
                    }
                }
            });
            ready.push(rx);
        }
        for (i, (rx, child)) in ready.into_iter().zip(children.iter_mut()).enumerate() {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(line) if line.starts_with("ready:") => child.stats = stats_addr_of(&line),
                Ok(line) => bail!("simulator process {i} did not start: {line:?}"),
                Err(_) => bail!("simulator process {i} not ready within 300 s"),
            }
        }
        Ok((Fleet::Children(children), files))
    }

    /// CPU seconds used so far by the simulator side: this process (which
    /// also hosts the mock Kafka) plus any simulator children.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut s = procfs::cpu_seconds(Pid::This)?;
        if let Fleet::Children(c) = self {
            for child in c {
                s += procfs::cpu_seconds(Pid::Other(child.child.id()))?;
            }
        }
        Ok(s)
    }

    /// Bytes the device fronts relayed so far: in process from the
    /// simulator's counters, else summed over the children's `GET /stats`.
    pub fn wire_bytes(&self) -> anyhow::Result<WireBytes> {
        match self {
            Fleet::InProcess(sim) => {
                let s = sim.stats();
                Ok(WireBytes {
                    from_clients: s.bytes_from_clients,
                    to_clients: s.bytes_to_clients,
                })
            }
            Fleet::Children(children) => {
                let mut sum = WireBytes::default();
                for (i, c) in children.iter().enumerate() {
                    let addr = c.stats.with_context(|| {
                        format!("simulator process {i} announced no stats address")
                    })?;
                    let (code, body) = collector::http_get(addr, "/stats")?;
                    if code != 200 {
                        bail!("simulator process {i}: GET /stats answered {code}");
                    }
                    let t: StatsTotals = serde_json::from_str(&body)
                        .with_context(|| format!("simulator process {i}: parsing /stats"))?;
                    sum.from_clients += t.bytes_from_clients;
                    sum.to_clients += t.bytes_to_clients;
                }
                Ok(sum)
            }
        }
    }

    /// Number of simulator processes (1 when in process).
    pub fn process_count(&self) -> usize {
        match self {
            Fleet::InProcess(_) => 1,
            Fleet::Children(c) => c.len(),
        }
    }

    /// Stops the devices.
    pub async fn shutdown(self) {
        match self {
            Fleet::InProcess(sim) => sim.shutdown().await,
            Fleet::Children(children) => {
                for mut c in children {
                    if let Ok(pid) = libc::pid_t::try_from(c.child.id()) {
                        // SAFETY: kill(2) on our own child's pid.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                    let _ = c.child.wait();
                }
            }
        }
    }
}

fn sim_log(dir: &Path, p: u32) -> anyhow::Result<Stdio> {
    let path = dir.join(format!("simulator-{p}.log"));
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Stdio::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stats_address_on_the_ready_line() {
        let line = "ready: 3 devices on 127.0.0.1:0 (OS-chosen ports, see the device file); \
                    stats http://127.0.0.1:39123/stats\n";
        assert_eq!(stats_addr_of(line), "127.0.0.1:39123".parse().ok());
        assert_eq!(
            stats_addr_of("ready: 3 devices on 127.0.0.1:4840..4842\n"),
            None
        );
    }

    #[test]
    fn wire_bytes_since() {
        let a = WireBytes {
            from_clients: 10,
            to_clients: 100,
        };
        let b = WireBytes {
            from_clients: 15,
            to_clients: 180,
        };
        assert_eq!(
            b.since(a),
            WireBytes {
                from_clients: 5,
                to_clients: 80
            }
        );
    }
}

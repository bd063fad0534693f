//! The simulated devices for a bench: in this process (the default), or
//! split over `opc-loadgen serve` child processes when one process would
//! run out of file descriptors.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

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
pub struct SimChild(Child);

impl Drop for SimChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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
            let mut child = Command::new(&exe)
                .args(["serve", "--port-base", &port.to_string()])
                .args([
                    "--devices",
                    &n.to_string(),
                    "--tags",
                    &spec.tags.to_string(),
                ])
                .args(["--first-device", &first.to_string(), "--write-devices"])
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(sim_log(dir, p)?)
                .spawn()
                .context("starting an `opc-loadgen serve` child")?;
            let stdout = child.stdout.take();
            children.push(SimChild(child));
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
        let fleet = Fleet::Children(children);
        for (i, rx) in ready.into_iter().enumerate() {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(line) if line.starts_with("ready:") => {}
                Ok(line) => bail!("simulator process {i} did not start: {line:?}"),
                Err(_) => bail!("simulator process {i} not ready within 300 s"),
            }
        }
        Ok((fleet, files))
    }

    /// CPU seconds used so far by the simulator side: this process (which
    /// also hosts the mock Kafka) plus any simulator children.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut s = procfs::cpu_seconds(Pid::This)?;
        if let Fleet::Children(c) = self {
            for child in c {
                s += procfs::cpu_seconds(Pid::Other(child.0.id()))?;
            }
        }
        Ok(s)
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
                    if let Ok(pid) = libc::pid_t::try_from(c.0.id()) {
                        // SAFETY: kill(2) on our own child's pid.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                    let _ = c.0.wait();
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

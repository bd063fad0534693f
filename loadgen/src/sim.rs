//! The simulator: starts one OPC UA server per device in the current tokio runtime,
//! describes them (device list, device file), counts what they serve and stops them.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    device_file,
    device_server::{spawn_device, DeviceSpec, RunningServer, ServerLimits},
    model,
    node_manager::Counters,
    SimError,
};

/// How long [`Simulator::start`] waits for all servers to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Simulator::shutdown`] waits for the servers to close their connections.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Simulator configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of devices (one OPC UA server each).
    pub devices: u32,
    /// Number of tags per device (`Tag000` ..).
    pub tags: u32,
    /// IP address to listen on (default `127.0.0.1`).
    pub listen: String,
    /// Port of the first device; device `i` listens on `port_base + i`.
    /// `0` lets the OS pick a free port for every device (useful in tests).
    pub port_base: u16,
    /// `MaxNodesPerRead` operation limit, served at i=11705 and enforced (default 1000).
    pub max_nodes_per_read: u32,
    /// Index of the first device (default 0): devices are `first_device ..
    /// first_device + devices`, which lets several simulators share a fleet.
    pub first_device: u32,
    /// Maximum concurrent sessions per device server (default 100).
    pub max_sessions: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            devices: 1,
            tags: 20,
            listen: "127.0.0.1".to_string(),
            port_base: 0,
            max_nodes_per_read: 1000,
            first_device: 0,
            max_sessions: 100,
        }
    }
}

/// One simulated device, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    /// Device index, the `device` input of [`model::value_at`].
    pub index: u32,
    /// Device id, [`model::device_id`] of `index`.
    pub id: String,
    /// Endpoint URL, `opc.tcp://127.0.0.1:PORT`.
    pub endpoint_url: String,
    /// Node ids of the tags, `ns=2;s=Tag000` ...
    pub node_ids: Vec<String>,
}

/// Counters across all device servers of a simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Device servers started.
    pub devices: usize,
    /// Sessions currently held by the servers' session managers (created and not yet
    /// closed or expired; a session whose connection dropped counts until it times out).
    pub open_sessions: u64,
    /// Sessions created since start (async-opcua's CumulatedSessionCount, summed).
    pub total_sessions: u64,
    /// Read service calls that reached a device (each call counts once).
    pub reads: u64,
    /// Node/attribute operations answered by those Read calls.
    pub nodes_read: u64,
}

/// A running fleet of simulated devices.
pub struct Simulator {
    cfg: SimConfig,
    devices: Vec<SimDevice>,
    servers: Vec<RunningServer>,
    counters: Arc<Counters>,
    token: CancellationToken,
}

fn server_limits(cfg: &SimConfig) -> ServerLimits {
    let nodes = cfg.max_nodes_per_read as usize;
    ServerLimits {
        max_sessions: cfg.max_sessions as usize,
        max_nodes_per_read: nodes,
        // Decoding happens before the operation limit is checked, so allow a bit more
        // than the limit in order to answer BadTooManyOperations instead of a decoding error.
        max_array_length: nodes.max(10_000) * 2,
        max_message_size: 64 * 1024 * 1024,
        max_chunk_count: 4096,
    }
}

/// Host name written in endpoint URLs: the listen address, or loopback for a wildcard.
fn endpoint_host(ip: IpAddr) -> String {
    let ip = if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    };
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn pki_dir() -> PathBuf {
    std::env::temp_dir().join("opc-loadgen-pki")
}

impl Simulator {
    /// Start one server per device and wait until all of them accept connections.
    ///
    /// Must be called inside a tokio runtime; the servers run as tasks of that runtime.
    pub async fn start(cfg: SimConfig) -> Result<Simulator, SimError> {
        let ip: IpAddr = cfg
            .listen
            .parse()
            .map_err(|e| SimError::Config(format!("listen address {:?}: {e}", cfg.listen)))?;
        if cfg.port_base != 0 && u32::from(cfg.port_base) + cfg.devices > 65_536 {
            return Err(SimError::Config(format!(
                "{} devices from port {} go past port 65535",
                cfg.devices, cfg.port_base
            )));
        }
        if cfg.first_device.checked_add(cfg.devices).is_none() {
            return Err(SimError::Config("device indexes overflow u32".into()));
        }
        if cfg.max_nodes_per_read == 0 || cfg.max_sessions == 0 {
            return Err(SimError::Config(
                "max_nodes_per_read and max_sessions must be positive".into(),
            ));
        }
        let pki = pki_dir();
        std::fs::create_dir_all(&pki).map_err(|source| SimError::Io {
            context: format!("creating {}", pki.display()),
            source,
        })?;
        let host = endpoint_host(ip);
        let limits = server_limits(&cfg);
        let counters = Arc::new(Counters::default());
        let token = CancellationToken::new();
        let node_ids: Vec<String> = (0..cfg.tags).map(model::node_id_string).collect();

        let mut sim = Simulator {
            devices: Vec::with_capacity(cfg.devices as usize),
            servers: Vec::with_capacity(cfg.devices as usize),
            counters,
            token,
            cfg,
        };
        let started = Instant::now();
        for i in 0..sim.cfg.devices {
            let index = sim.cfg.first_device + i;
            let port = if sim.cfg.port_base == 0 {
                0
            } else {
                // Checked above: port_base + devices <= 65536.
                u16::try_from(u32::from(sim.cfg.port_base) + i).unwrap_or(u16::MAX)
            };
            let addr = SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SimError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let server = spawn_device(
                DeviceSpec {
                    index,
                    tags: sim.cfg.tags,
                    host: &host,
                    listener,
                    pki_dir: &pki,
                },
                limits,
                sim.counters.clone(),
                sim.token.child_token(),
            )?;
            sim.devices.push(SimDevice {
                index,
                id: model::device_id(index),
                endpoint_url: format!("opc.tcp://{host}:{}", server.addr.port()),
                node_ids: node_ids.clone(),
            });
            sim.servers.push(server);
        }
        debug!(elapsed = ?started.elapsed(), "device servers spawned");
        sim.wait_listening().await?;
        info!(
            devices = sim.devices.len(),
            tags = sim.cfg.tags,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "all device servers accept connections"
        );
        Ok(sim)
    }

    async fn wait_listening(&mut self) -> Result<(), SimError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut next = 0;
        while next < self.servers.len() {
            let server = &self.servers[next];
            if server.is_listening() {
                next += 1;
                continue;
            }
            let device = self.devices[next].id.clone();
            if server.task.is_finished() {
                return Err(SimError::Startup {
                    device,
                    reason: "server task exited".into(),
                });
            }
            if Instant::now() > deadline {
                return Err(SimError::Startup {
                    device,
                    reason: format!("not listening after {STARTUP_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The configuration the simulator was started with.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The simulated devices, in index order.
    pub fn devices(&self) -> &[SimDevice] {
        &self.devices
    }

    /// The device file (YAML) describing all devices; see [`Simulator::write_device_file`].
    pub fn device_file_yaml(&self) -> String {
        device_file::render(&self.devices, self.cfg.tags)
    }

    /// Write [`Simulator::device_file_yaml`] to `path` (atomically: temp file + rename).
    pub fn write_device_file(&self, path: &Path) -> io::Result<()> {
        let yaml = self.device_file_yaml();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, path)
    }

    /// Current counters summed over all device servers.
    pub fn stats(&self) -> SimStats {
        let mut stats = SimStats {
            devices: self.servers.len(),
            reads: self.counters.reads.load(Ordering::Relaxed),
            nodes_read: self.counters.nodes_read.load(Ordering::Relaxed),
            ..Default::default()
        };
        for s in &self.servers {
            stats.open_sessions += s.current_sessions();
            stats.total_sessions += s.cumulated_sessions();
        }
        stats
    }

    /// Stop all servers: close their connections, wait for them to finish (up to 10 s,
    /// then abort the stragglers) and release the ports.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        let servers = std::mem::take(&mut self.servers);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        let mut aborted = 0usize;
        for server in servers {
            let mut task = server.task;
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(addr = %server.addr, "device server failed: {e}"),
                Ok(Err(e)) => warn!(addr = %server.addr, "device server task failed: {e}"),
                Err(_) => {
                    task.abort();
                    aborted += 1;
                }
            }
        }
        if aborted > 0 {
            warn!(
                aborted,
                "device servers did not stop in time and were aborted"
            );
        }
        info!("simulator stopped");
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // A simulator dropped without `shutdown` still stops its servers.
        self.token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("0.0.0.0".parse().unwrap()), "127.0.0.1");
        assert_eq!(endpoint_host("10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(endpoint_host("::1".parse().unwrap()), "[::1]");
    }

    #[tokio::test]
    async fn rejects_port_overflow() {
        let cfg = SimConfig {
            devices: 10,
            port_base: 65_530,
            ..Default::default()
        };
        assert!(matches!(
            Simulator::start(cfg).await,
            Err(SimError::Config(_))
        ));
    }
}

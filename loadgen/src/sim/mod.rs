//! The simulator: starts one OPC UA server per device in the current tokio runtime,
//! describes them (device list, device file), injects faults, counts what they serve,
//! restarts and stops them.
//!
//! This file holds the running [`Simulator`] and the per-device state it keeps; the
//! rest is split by concept: the configuration (`config`, `security`), one device's
//! OPC UA server (`server`), starting and stopping the fleet (`lifecycle`),
//! namespace-shifting restarts (`restart`) and the counters (`stats`).

mod config;
mod lifecycle;
mod restart;
mod security;
mod server;
mod stats;

use std::{
    io,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU16, Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    device_file,
    device_server::{RunningServer, SecureServing, ServerLimits},
    fault::Fault,
    front::Front,
    node_manager::Counters,
    stats::DeviceCounters,
    SimError,
};

pub use config::SimConfig;
pub use security::SimSecurity;
pub use stats::SimStats;

/// How long [`Simulator::start`] waits for all servers to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Simulator::shutdown`] waits for the servers to close their connections.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// One simulated device, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    /// Device index, the `device` input of [`model::value_at`](crate::model::value_at).
    pub index: u32,
    /// Device id, [`model::device_id`](crate::model::device_id) of `index`.
    pub id: String,
    /// Endpoint URL, `opc.tcp://127.0.0.1:PORT`.
    pub endpoint_url: String,
    /// Node ids of the tags, `ns=2;s=Tag000` ... (with the initial namespace index;
    /// see [`Simulator::namespace_index`] after a shifting restart).
    pub node_ids: Vec<String>,
    /// The faults injected into this device (empty: healthy).
    pub faults: Vec<Fault>,
}

/// Everything about one device that lives as long as the simulator.
struct DeviceSlot {
    index: u32,
    public_port: u16,
    faults: Vec<Fault>,
    counters: Arc<DeviceCounters>,
    front: Front,
    /// The OPC UA server; `None` for a dead device (and while restarting).
    server: Mutex<Option<RunningServer>>,
    namespace_index: AtomicU16,
    /// Serializes restarts of this device.
    restart: tokio::sync::Mutex<()>,
}

impl DeviceSlot {
    fn is_dead(&self) -> bool {
        self.faults.contains(&Fault::Dead)
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Option<RunningServer>> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every server of the fleet shares.
struct Fleet {
    host: String,
    pki: PathBuf,
    secure: Option<SecureServing>,
    limits: ServerLimits,
    counters: Arc<Counters>,
    token: CancellationToken,
}

struct Inner {
    cfg: SimConfig,
    fleet: Fleet,
    devices: Vec<SimDevice>,
    slots: Vec<DeviceSlot>,
    /// Extra tasks (the stats HTTP server), stopped with the fleet token.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running fleet of simulated devices.
pub struct Simulator {
    inner: Arc<Inner>,
}

impl Simulator {
    /// The configuration the simulator was started with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The simulated devices, in index order.
    pub fn devices(&self) -> &[SimDevice] {
        &self.inner.devices
    }

    /// The fleet's secure endpoint settings, if it serves one (its
    /// [`SimSecurity::certificate_path`] is the server certificate a
    /// client must trust or pin).
    pub fn security(&self) -> Option<&SimSecurity> {
        self.inner.cfg.security.as_ref()
    }

    /// The device file (YAML) describing all devices; see [`Simulator::write_device_file`].
    pub fn device_file_yaml(&self) -> String {
        device_file::render(&self.inner.devices, self.inner.cfg.tags)
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

    fn slot(&self, index: u32) -> Result<&DeviceSlot, SimError> {
        index
            .checked_sub(self.inner.cfg.first_device)
            .and_then(|pos| self.inner.slots.get(pos as usize))
            .ok_or(SimError::UnknownDevice(index))
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // A simulator dropped without `shutdown` still stops its servers.
        self.inner.fleet.token.cancel();
    }
}

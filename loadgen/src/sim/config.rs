//! The simulator's configuration ([`SimConfig`]) and its defaults, apart from the
//! code that acts on it.

use crate::fault::FaultSpec;

use super::SimSecurity;

/// Simulator configuration.
#[derive(Debug, Clone, PartialEq)]
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
    /// Injected faults (default none); see [`Fault`](crate::Fault) and [`crate::Selection`].
    pub faults: Vec<FaultSpec>,
    /// Serve a secure endpoint (with users) instead of security None.
    pub security: Option<SimSecurity>,
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
            faults: Vec::new(),
            security: None,
        }
    }
}

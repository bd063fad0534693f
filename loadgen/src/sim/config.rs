//! The simulator's configuration ([`SimConfig`]) and its defaults, apart from the
//! code that acts on it.

use std::time::Duration;

use crate::{fault::FaultSpec, history};

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
    /// Step model (`--change-rate R`, default `None`): every tag changes `R` times per
    /// second (`0 < R <= 1000`), holding each value for a period of `round(1000 / R)` ms
    /// served with the step's start as source timestamp; see [`crate::steps`]. `None`:
    /// values are computed at the instant of each read or sample.
    pub change_rate: Option<f64>,
    /// Serve subscriptions (default false; implied by `change_rate`): runs
    /// async-opcua's subscription tick, one timer wake-up per device server every
    /// 100 ms (~8 % of a core per 1,000 idle devices), which a polling fleet does not
    /// need. Without it monitored items are refused (`BadServiceUnsupported`).
    pub subscriptions: bool,
    /// `MaxMonitoredItemsPerCall` operation limit, served at i=11714 and enforced
    /// (default 1000).
    pub max_monitored_items_per_call: u32,
    /// HistoryRead retention (default 1 h, `--history-retention`): history entries
    /// older than the instant of the call minus this are not served; see
    /// [`crate::history`].
    pub history_retention: Duration,
    /// Most values a HistoryRead returns per node and call before a continuation point
    /// (default 1000, `--max-history-values`; served as MaxReturnDataValues, i=11273).
    pub max_history_values_per_call: u32,
    /// `MaxNodesPerHistoryReadData` operation limit, served at i=12165 and enforced
    /// (default 100, `--max-nodes-per-history-read`).
    pub max_nodes_per_history_read_data: u32,
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
            change_rate: None,
            subscriptions: false,
            max_monitored_items_per_call: 1000,
            history_retention: history::DEFAULT_RETENTION,
            max_history_values_per_call: history::DEFAULT_MAX_VALUES_PER_CALL,
            max_nodes_per_history_read_data: history::DEFAULT_MAX_NODES_PER_READ,
        }
    }
}

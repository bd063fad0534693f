//! What the HTTP server shows of the live device list: `/status`'s list
//! section and the devices handing over in `/devices`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::handover::HandoverView;
use crate::registry::RegistryView;

/// What `/status` shows of the device list.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ListStatus {
    /// This replica's shard.
    pub shard_index: u32,
    /// Shards in the fleet, as last read.
    pub shard_count: u32,
    /// Changes of `shard_count` read since start.
    pub shard_generation: u64,
    /// Devices of other shards still read here until their handover
    /// grace ends (`/devices?handover=true` lists them).
    pub handovers: usize,
    /// Devices in the list (all shards).
    pub listed: usize,
    /// Devices of this shard in the list.
    pub devices: usize,
    /// Reloads applied since start.
    pub reloads_ok: u64,
    /// Reloads rejected since start.
    pub reloads_failed: u64,
    /// When the running list was read (RFC 3339).
    pub loaded_at: String,
    /// The problems of the last rejected reload, until one is applied.
    pub last_error: Option<Vec<String>>,
    /// The device registry, with `source: postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryView>,
}

/// What the HTTP server shows of the fleet: `/status`, and the devices
/// handing over in `/devices`.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    /// `/status`.
    pub status: ListStatus,
    /// The devices handing over, by id.
    pub handovers: HashMap<Arc<str>, HandoverView>,
}

/// Shared with the HTTP server.
pub(crate) type SharedStatus = Arc<Mutex<Fleet>>;

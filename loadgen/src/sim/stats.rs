//! What the fleet served: [`SimStats`] over all devices, the per-device
//! [`DeviceStats`], and the `GET /stats` HTTP endpoint serving both as JSON.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, PoisonError},
};

use tokio::net::TcpListener;

use crate::{
    device_server::RunningServer,
    stats::{self, DeviceStats},
    SimError,
};

use super::{Inner, Simulator};

/// Counters across all device servers of a simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Device servers started.
    pub devices: usize,
    /// Sessions currently held by the servers' session managers (created and not yet
    /// closed or expired; a session whose connection dropped counts until it times out).
    pub open_sessions: u64,
    /// Sessions created since start (async-opcua's CumulatedSessionCount, summed over
    /// the servers running now).
    pub total_sessions: u64,
    /// Read service calls of device tags (each call counts once; reads of server nodes
    /// only, such as keep-alives, do not count).
    pub reads: u64,
    /// Node/attribute operations answered by those Read calls.
    pub nodes_read: u64,
    /// Largest [`DeviceStats::peak_sessions`] of any device.
    pub peak_sessions_per_endpoint: u64,
    /// [`DeviceStats::connection_attempts`] summed over the devices.
    pub connection_attempts: u64,
    /// [`DeviceStats::monitored_items`] summed over the devices.
    pub monitored_items: u64,
    /// [`DeviceStats::data_change_notifications`] summed over the devices.
    pub data_change_notifications: u64,
    /// [`DeviceStats::bytes_from_clients`] summed over the devices: bytes the device
    /// fronts relayed from clients to the servers since start.
    pub bytes_from_clients: u64,
    /// [`DeviceStats::bytes_to_clients`] summed over the devices: bytes the device
    /// fronts relayed from the servers to clients since start.
    pub bytes_to_clients: u64,
}

impl Simulator {
    /// Counters of every device endpoint, in index order.
    pub fn device_stats(&self) -> Vec<DeviceStats> {
        device_stats_of(&self.inner)
    }

    /// Current counters summed over all device servers.
    pub fn stats(&self) -> SimStats {
        stats_of(&self.inner)
    }

    /// [`Simulator::stats`] and [`Simulator::device_stats`] as the JSON document served
    /// at `GET /stats` (see the README).
    pub fn stats_json(&self) -> String {
        render_stats(&self.inner)
    }

    /// Serve `GET /stats` ([`Simulator::stats_json`]) over HTTP/1.1 on `addr` until
    /// shutdown; returns the bound address (`addr` may have port 0).
    pub async fn serve_stats(&self, addr: SocketAddr) -> Result<SocketAddr, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| SimError::Io {
            context: "local address of the stats listener".into(),
            source,
        })?;
        // A weak reference: the stats server must not keep the fleet alive.
        let weak = Arc::downgrade(&self.inner);
        let render = move || {
            weak.upgrade()
                .map_or_else(|| "{}\n".to_string(), |inner| render_stats(&inner))
        };
        let task = tokio::spawn(stats::serve_http(
            listener,
            self.inner.fleet.token.child_token(),
            render,
        ));
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        Ok(bound)
    }
}

fn stats_of(inner: &Inner) -> SimStats {
    let mut stats = SimStats {
        devices: inner.slots.len(),
        reads: inner.fleet.counters.reads.load(Ordering::Relaxed),
        nodes_read: inner.fleet.counters.nodes_read.load(Ordering::Relaxed),
        ..Default::default()
    };
    for slot in &inner.slots {
        if let Some(s) = slot.server().as_ref() {
            stats.open_sessions += s.current_sessions();
            stats.total_sessions += s.cumulated_sessions();
        }
        stats.peak_sessions_per_endpoint = stats
            .peak_sessions_per_endpoint
            .max(slot.counters.peak_sessions.load(Ordering::Relaxed));
        stats.connection_attempts += slot.counters.connection_attempts.load(Ordering::Relaxed);
        stats.monitored_items += slot.counters.monitored_items.load(Ordering::Relaxed);
        stats.data_change_notifications += slot
            .counters
            .data_change_notifications
            .load(Ordering::Relaxed);
        stats.bytes_from_clients += slot.counters.bytes_from_clients.load(Ordering::Relaxed);
        stats.bytes_to_clients += slot.counters.bytes_to_clients.load(Ordering::Relaxed);
    }
    stats
}

fn device_stats_of(inner: &Inner) -> Vec<DeviceStats> {
    inner
        .slots
        .iter()
        .map(|slot| {
            let server_sessions = slot
                .server()
                .as_ref()
                .map_or(0, RunningServer::current_sessions);
            DeviceStats::from_counters(
                slot.index,
                &slot.faults,
                &slot.counters,
                server_sessions,
                slot.namespace_index.load(Ordering::Relaxed),
            )
        })
        .collect()
}

fn render_stats(inner: &Inner) -> String {
    stats::render_json(&stats_of(inner), &device_stats_of(inner))
}

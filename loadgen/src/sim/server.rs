//! One device's OPC UA server: its limits, starting it behind an internal
//! listener, waiting until it listens, and stopping it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tracing::warn;

use crate::{
    device_server::{spawn_device, DeviceSpec, RunningServer, ServerLimits},
    fault::Fault,
    history::HistorySettings,
    model,
    node_manager::ReadFaults,
    stats::DeviceCounters,
    steps, SimError,
};

use super::{Fleet, SimConfig, STARTUP_TIMEOUT};

/// Subscriptions per session of every device server.
const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 10;

pub(super) fn server_limits(cfg: &SimConfig) -> ServerLimits {
    let nodes = cfg.max_nodes_per_read as usize;
    ServerLimits {
        max_nodes_per_read: nodes,
        // Decoding happens before the operation limit is checked, so allow a bit more
        // than the limit in order to answer BadTooManyOperations instead of a decoding error.
        max_array_length: nodes.max(10_000) * 2,
        max_message_size: 64 * 1024 * 1024,
        max_chunk_count: 4096,
        max_monitored_items_per_call: cfg.max_monitored_items_per_call as usize,
        // Every tag of a device in one subscription, and at least 10,000.
        max_monitored_items_per_sub: (cfg.tags as usize)
            .max(cfg.max_monitored_items_per_call as usize)
            .max(10_000),
        max_subscriptions_per_session: MAX_SUBSCRIPTIONS_PER_SESSION,
        subscriptions: cfg.subscriptions || cfg.change_rate.is_some(),
    }
}

/// Host name written in endpoint URLs: the listen address, or loopback for a wildcard.
pub(super) fn endpoint_host(ip: IpAddr) -> String {
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

pub(super) fn pki_dir() -> PathBuf {
    std::env::temp_dir().join("opc-loadgen-pki")
}

fn read_faults(faults: &[Fault]) -> ReadFaults {
    ReadFaults {
        delay: faults.iter().find_map(|f| match f {
            Fault::Slow(d) => Some(*d),
            _ => None,
        }),
        bad_status: faults.contains(&Fault::BadStatus),
    }
}

/// How a device with these faults serves HistoryRead.
fn history_settings(cfg: &SimConfig, faults: &[Fault]) -> HistorySettings {
    HistorySettings {
        enabled: !faults.contains(&Fault::NoHistory),
        retention: cfg.history_retention,
        max_values_per_call: cfg.max_history_values_per_call,
        max_nodes_per_read: cfg.max_nodes_per_history_read_data,
    }
}

/// Bind the internal listener of a device server and spawn the server.
pub(super) async fn start_server(
    cfg: &SimConfig,
    fleet: &Fleet,
    index: u32,
    public_port: u16,
    faults: &[Fault],
    counters: &Arc<DeviceCounters>,
    device_namespace: u16,
) -> Result<RunningServer, SimError> {
    let internal = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let listener = TcpListener::bind(internal)
        .await
        .map_err(|source| SimError::Bind {
            addr: internal.to_string(),
            source,
        })?;
    let max_sessions = faults
        .iter()
        .find_map(|f| match f {
            Fault::MaxSessions(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(cfg.max_sessions);
    // A secure device keeps the client certificates it trusts in a
    // directory of its own: async-opcua's store writes an unknown
    // certificate there (truncate, then write) and compares the file with
    // it, so devices sharing `trusted/` failed a concurrent first connect
    // with `BadUnexpectedError` when one read what another was writing.
    let device_pki = match fleet.secure {
        Some(_) => fleet.pki.join("devices").join(model::device_id(index)),
        None => fleet.pki.clone(),
    };
    spawn_device(
        DeviceSpec {
            index,
            tags: cfg.tags,
            host: &fleet.host,
            public_port,
            listener,
            device_namespace,
            max_sessions: max_sessions as usize,
            read_faults: read_faults(faults),
            counters: counters.clone(),
            pki_dir: &device_pki,
            security: fleet.secure.as_ref(),
            period_ms: cfg.change_rate.map(steps::period_ms),
            history: history_settings(cfg, faults),
        },
        fleet.limits,
        fleet.counters.clone(),
        fleet.token.child_token(),
    )
}

/// Wait until `server` accepts connections, then make it advertise its public port.
pub(super) async fn wait_listening(
    server: &RunningServer,
    index: u32,
    deadline: Instant,
) -> Result<(), SimError> {
    while !server.is_listening() {
        let device = model::device_id(index);
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
    server.advertise_public_port();
    Ok(())
}

/// Stop one server: cancel it and wait for its task (then abort it) until `deadline`.
/// Returns whether it had to be aborted.
pub(super) async fn stop_server(server: RunningServer, deadline: tokio::time::Instant) -> bool {
    server.handle.cancel();
    let mut task = server.task;
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(Ok(()))) => false,
        Ok(Ok(Err(e))) => {
            warn!(addr = %server.addr, "device server failed: {e}");
            false
        }
        Ok(Err(e)) => {
            warn!(addr = %server.addr, "device server task failed: {e}");
            false
        }
        Err(_) => {
            task.abort();
            true
        }
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
}

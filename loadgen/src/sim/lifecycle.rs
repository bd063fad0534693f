//! Starting the fleet (bind every public port, spawn every server, wait until all
//! listen, then put a front before each) and shutting it down.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{atomic::AtomicU16, Arc, Mutex, PoisonError},
    time::Instant,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    fault::{self, Fault},
    front::{Front, FrontMode},
    model,
    mute::MuteWindow,
    node_manager::Counters,
    stats::DeviceCounters,
    steps, SimError,
};

use super::{
    server::{endpoint_host, pki_dir, server_limits, start_server, stop_server, wait_listening},
    DeviceSlot, Fleet, Inner, SimConfig, SimDevice, Simulator, SHUTDOWN_TIMEOUT, STARTUP_TIMEOUT,
};

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
        if cfg.max_nodes_per_read == 0
            || cfg.max_sessions == 0
            || cfg.max_monitored_items_per_call == 0
            || cfg.max_history_values_per_call == 0
            || cfg.max_nodes_per_history_read_data == 0
        {
            return Err(SimError::Config(
                "max_nodes_per_read, max_sessions, max_monitored_items_per_call, \
                 max_history_values_per_call and max_nodes_per_history_read_data must be \
                 positive"
                    .into(),
            ));
        }
        if let Some(rate) = cfg.change_rate {
            steps::check_change_rate(rate).map_err(SimError::Config)?;
        }
        let pki = pki_dir();
        std::fs::create_dir_all(&pki).map_err(|source| SimError::Io {
            context: format!("creating {}", pki.display()),
            source,
        })?;
        let host = endpoint_host(ip);
        let (pki, secure) = match &cfg.security {
            None => (pki, None),
            Some(sec) => (sec.pki_dir.clone(), Some(sec.serving(&host)?)),
        };
        let fleet = Fleet {
            host,
            pki,
            secure,
            limits: server_limits(&cfg),
            counters: Arc::new(Counters::default()),
            token: CancellationToken::new(),
        };
        let node_ids: Vec<String> = (0..cfg.tags).map(model::node_id_string).collect();
        let assigned = fault::assign(&cfg.faults, cfg.first_device, cfg.devices);

        let started = Instant::now();
        // Bind every public port and spawn every server; fronts start once all listen.
        let mut pending = Vec::with_capacity(cfg.devices as usize);
        let mut devices = Vec::with_capacity(cfg.devices as usize);
        for (i, faults) in (0..cfg.devices).zip(assigned) {
            let index = cfg.first_device + i;
            let port = if cfg.port_base == 0 {
                0
            } else {
                // Checked above: port_base + devices <= 65536.
                u16::try_from(u32::from(cfg.port_base) + i).unwrap_or(u16::MAX)
            };
            let addr = SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SimError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let public = listener.local_addr().map_err(|source| SimError::Io {
                context: format!("local address of {}", model::device_id(index)),
                source,
            })?;
            let counters = Arc::new(DeviceCounters::default());
            let server = if faults.contains(&Fault::Dead) {
                None
            } else {
                Some(
                    start_server(
                        &cfg,
                        &fleet,
                        index,
                        public.port(),
                        &faults,
                        &counters,
                        model::DEVICE_NAMESPACE_INDEX,
                    )
                    .await?,
                )
            };
            devices.push(SimDevice {
                index,
                id: model::device_id(index),
                endpoint_url: format!("opc.tcp://{}:{}", fleet.host, public.port()),
                node_ids: node_ids.clone(),
                faults: faults.clone(),
            });
            pending.push((listener, public, server, faults, counters));
        }
        debug!(elapsed = ?started.elapsed(), "device servers spawned");
        let deadline = started + STARTUP_TIMEOUT;
        for (i, (_, _, server, _, _)) in pending.iter().enumerate() {
            if let Some(server) = server {
                wait_listening(server, cfg.first_device + i as u32, deadline).await?;
            }
        }
        let mut slots = Vec::with_capacity(pending.len());
        let mut flapping = 0u32;
        // The instant `mute` windows count from: the fronts start now and `start` returns.
        let fronts_start = tokio::time::Instant::now();
        for (i, (listener, public, server, faults, counters)) in pending.into_iter().enumerate() {
            let mode = FrontMode {
                dead: faults.contains(&Fault::Dead),
                flap: faults.iter().find_map(|f| match f {
                    Fault::Flap { up, down } => {
                        // Spread the flapping devices over the cycle: the k-th one stays
                        // up (k mod 10)/10 of a cycle longer the first time.
                        let extra = (*up + *down).mul_f64(f64::from(flapping % 10) / 10.0);
                        flapping += 1;
                        Some((*up, *down, extra))
                    }
                    _ => None,
                }),
                hostile: faults.iter().find_map(|f| match f {
                    Fault::Hostile(h) => Some(*h),
                    _ => None,
                }),
                mute: faults.iter().find_map(|f| match f {
                    Fault::Mute { after, duration } => Some(MuteWindow {
                        from: fronts_start + *after,
                        until: fronts_start + *after + *duration,
                    }),
                    _ => None,
                }),
            };
            let front = Front::spawn(
                listener,
                public,
                server.as_ref().map(|s| s.addr),
                mode,
                counters.clone(),
                fleet.token.child_token(),
            );
            slots.push(DeviceSlot {
                index: cfg.first_device + i as u32,
                public_port: public.port(),
                faults,
                counters,
                front,
                server: Mutex::new(server),
                namespace_index: AtomicU16::new(model::DEVICE_NAMESPACE_INDEX),
                restart: tokio::sync::Mutex::new(()),
            });
        }
        let faulty = devices.iter().filter(|d| !d.faults.is_empty()).count();
        info!(
            devices = devices.len(),
            faulty,
            tags = cfg.tags,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "all device servers accept connections"
        );
        Ok(Simulator {
            inner: Arc::new(Inner {
                cfg,
                fleet,
                devices,
                slots,
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Stop all servers: close their connections, wait for them to finish (up to 10 s,
    /// then abort the stragglers) and release the ports.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        inner.fleet.token.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        let mut aborted = 0usize;
        for slot in &inner.slots {
            let server = slot.server().take();
            if let Some(server) = server {
                if stop_server(server, deadline).await {
                    aborted += 1;
                }
            }
        }
        let mut tasks: Vec<JoinHandle<()>> = inner
            .slots
            .iter()
            .filter_map(|s| s.front.take_task())
            .collect();
        tasks.extend(
            inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..),
        );
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_change_rates_and_limits() {
        for cfg in [
            SimConfig {
                change_rate: Some(0.0),
                ..Default::default()
            },
            SimConfig {
                change_rate: Some(1001.0),
                ..Default::default()
            },
            SimConfig {
                max_monitored_items_per_call: 0,
                ..Default::default()
            },
            SimConfig {
                max_history_values_per_call: 0,
                ..Default::default()
            },
            SimConfig {
                max_nodes_per_history_read_data: 0,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Simulator::start(cfg).await,
                Err(SimError::Config(_))
            ));
        }
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

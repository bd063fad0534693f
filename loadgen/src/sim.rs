//! The simulator: starts one OPC UA server per device in the current tokio runtime,
//! describes them (device list, device file), injects faults, counts what they serve,
//! restarts and stops them.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use opcua::crypto::{CertificateStore, X509Data};
use opcua_server::ServerEndpoint;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    device_file,
    device_server::{
        spawn_device, DeviceSpec, MakeEndpoint, RunningServer, SecureServing, ServerLimits,
        SECURE_APPLICATION_URI,
    },
    fault::{self, Fault, FaultSpec},
    front::{Front, FrontMode},
    model,
    node_manager::{Counters, ReadFaults},
    stats::{self, DeviceCounters, DeviceStats},
    SimError,
};

/// How long [`Simulator::start`] waits for all servers to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Simulator::shutdown`] waits for the servers to close their connections.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Device namespace index after [`Simulator::restart_device`] with `shift_namespace`.
const SHIFTED_NAMESPACE_INDEX: u16 = model::DEVICE_NAMESPACE_INDEX + 1;

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
    /// Injected faults (default none); see [`Fault`] and [`crate::Selection`].
    pub faults: Vec<FaultSpec>,
    /// Serve a secure endpoint (with users) instead of security None.
    pub security: Option<SimSecurity>,
}

/// A secure endpoint for every device of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSecurity {
    /// `basic256sha256`, `aes128_sha256_rsaoaep` or `aes256_sha256_rsapss`.
    pub policy: String,
    /// `sign` or `sign_and_encrypt`.
    pub mode: String,
    /// Accepted users (name, password); empty: anonymous only.
    pub users: Vec<(String, String)>,
    /// PKI directory: the fleet's server certificate (`own/cert.der`,
    /// generated once if absent, shared by every device) and the client
    /// certificates seen (`trusted/`: every client is accepted).
    pub pki_dir: PathBuf,
}

impl SimSecurity {
    fn endpoint(&self) -> Result<MakeEndpoint, SimError> {
        let f: MakeEndpoint = match (self.policy.as_str(), self.mode.as_str()) {
            // Deprecated by async-opcua, still run in plants: serve it when asked.
            #[allow(deprecated)]
            ("basic256sha256", "sign") => |p, ids| ServerEndpoint::new_basic256sha256_sign(p, ids),
            ("basic256sha256", "sign_and_encrypt") => {
                |p, ids| ServerEndpoint::new_basic256sha256_sign_encrypt(p, ids)
            }
            ("aes128_sha256_rsaoaep", "sign") => {
                |p, ids| ServerEndpoint::new_aes128_sha256_rsaoaep_sign(p, ids)
            }
            ("aes128_sha256_rsaoaep", "sign_and_encrypt") => {
                |p, ids| ServerEndpoint::new_aes128_sha256_rsaoaep_sign_encrypt(p, ids)
            }
            ("aes256_sha256_rsapss", "sign") => {
                |p, ids| ServerEndpoint::new_aes256_sha256_rsapss_sign(p, ids)
            }
            ("aes256_sha256_rsapss", "sign_and_encrypt") => {
                |p, ids| ServerEndpoint::new_aes256_sha256_rsapss_sign_encrypt(p, ids)
            }
            (p, m) => {
                return Err(SimError::Config(format!(
                    "unsupported security {p}/{m}: policy basic256sha256, aes128_sha256_rsaoaep or aes256_sha256_rsapss; mode sign or sign_and_encrypt"
                )))
            }
        };
        Ok(f)
    }

    /// The fleet's server certificate (DER).
    pub fn certificate_path(&self) -> PathBuf {
        self.pki_dir.join("own").join("cert.der")
    }

    fn private_key_path(&self) -> PathBuf {
        self.pki_dir.join("private").join("private.pem")
    }

    /// Generates the shared server certificate unless it exists.
    fn serving(&self, host: &str) -> Result<SecureServing, SimError> {
        let endpoint = self.endpoint()?;
        let (cert, key) = (self.certificate_path(), self.private_key_path());
        if !(cert.is_file() && key.is_file()) {
            for d in [cert.parent(), key.parent()].into_iter().flatten() {
                std::fs::create_dir_all(d).map_err(|source| SimError::Io {
                    context: format!("creating {}", d.display()),
                    source,
                })?;
            }
            let description = opcua::types::ApplicationDescription {
                application_uri: SECURE_APPLICATION_URI.into(),
                application_name: opcua::types::LocalizedText::new("", "opc-loadgen"),
                ..Default::default()
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let data = X509Data::from((description, Some(vec![host.to_string()])));
            CertificateStore::create_certificate_and_key(&data, true, &cert, &key)
                .map_err(SimError::Config)?;
        }
        Ok(SecureServing {
            endpoint,
            users: self.users.clone(),
            certificate: cert,
            private_key: key,
        })
    }
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

/// One simulated device, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    /// Device index, the `device` input of [`model::value_at`].
    pub index: u32,
    /// Device id, [`model::device_id`] of `index`.
    pub id: String,
    /// Endpoint URL, `opc.tcp://127.0.0.1:PORT`.
    pub endpoint_url: String,
    /// Node ids of the tags, `ns=2;s=Tag000` ... (with the initial namespace index;
    /// see [`Simulator::namespace_index`] after a shifting restart).
    pub node_ids: Vec<String>,
    /// The faults injected into this device (empty: healthy).
    pub faults: Vec<Fault>,
}

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
    /// Read service calls that reached a device (each call counts once).
    pub reads: u64,
    /// Node/attribute operations answered by those Read calls.
    pub nodes_read: u64,
    /// Largest [`DeviceStats::peak_sessions`] of any device.
    pub peak_sessions_per_endpoint: u64,
    /// [`DeviceStats::connection_attempts`] summed over the devices.
    pub connection_attempts: u64,
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

fn server_limits(cfg: &SimConfig) -> ServerLimits {
    let nodes = cfg.max_nodes_per_read as usize;
    ServerLimits {
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

fn read_faults(faults: &[Fault]) -> ReadFaults {
    ReadFaults {
        delay: faults.iter().find_map(|f| match f {
            Fault::Slow(d) => Some(*d),
            _ => None,
        }),
        bad_status: faults.contains(&Fault::BadStatus),
    }
}

/// Bind the internal listener of a device server and spawn the server.
async fn start_server(
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
            pki_dir: &fleet.pki,
            security: fleet.secure.as_ref(),
        },
        fleet.limits,
        fleet.counters.clone(),
        fleet.token.child_token(),
    )
}

/// Wait until `server` accepts connections, then make it advertise its public port.
async fn wait_listening(
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
async fn stop_server(server: RunningServer, deadline: tokio::time::Instant) -> bool {
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

    /// Current namespace index of the tags of device `index`: [`model::DEVICE_NAMESPACE_INDEX`]
    /// (2), or 3 after [`Simulator::restart_device`] with `shift_namespace`.
    /// `None` for an index outside the simulator.
    pub fn namespace_index(&self, index: u32) -> Option<u16> {
        self.slot(index)
            .ok()
            .map(|s| s.namespace_index.load(Ordering::Relaxed))
    }

    /// Restart the server of device `index`: drop its connections, stop it, and start it
    /// again behind the same port. With `shift_namespace` the namespace array gets a
    /// placeholder URI before the device namespace, so the tags move to `ns=3` and
    /// `ns=2;s=TagNNN` answers `BadNodeIdUnknown`; without, they are (back) at `ns=2`.
    ///
    /// Counters of the device carry over; sessions do not (the new server has none).
    /// A dead device stays dead (only its namespace index is recorded).
    pub async fn restart_device(&self, index: u32, shift_namespace: bool) -> Result<(), SimError> {
        let slot = self.slot(index)?;
        let _serial = slot.restart.lock().await;
        let namespace = if shift_namespace {
            SHIFTED_NAMESPACE_INDEX
        } else {
            model::DEVICE_NAMESPACE_INDEX
        };
        slot.namespace_index.store(namespace, Ordering::Relaxed);
        if slot.is_dead() {
            return Ok(());
        }
        slot.front.set_target(None);
        slot.front.drop_connections();
        let old = slot.server().take();
        if let Some(old) = old {
            if stop_server(old, tokio::time::Instant::now() + SHUTDOWN_TIMEOUT).await {
                warn!(index, "device server did not stop in time and was aborted");
            }
        }
        let server = start_server(
            &self.inner.cfg,
            &self.inner.fleet,
            index,
            slot.public_port,
            &slot.faults,
            &slot.counters,
            namespace,
        )
        .await?;
        if let Err(e) = wait_listening(&server, index, Instant::now() + STARTUP_TIMEOUT).await {
            server.handle.cancel();
            return Err(e);
        }
        slot.front.set_target(Some(server.addr));
        *slot.server() = Some(server);
        info!(index, namespace, "device restarted");
        Ok(())
    }

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

impl Drop for Simulator {
    fn drop(&mut self) {
        // A simulator dropped without `shutdown` still stops its servers.
        self.inner.fleet.token.cancel();
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

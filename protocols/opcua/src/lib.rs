//! # collector-opcua
//!
//! The OPC UA protocol adapter for `collector-core`, on async-opcua.
//!
//! - `session`: one session per endpoint, our own reconnect backoff and a
//!   fleet-wide connect rate limit; the library's own retry loop is off.
//! - `reader`: per-device reads, chunked to the server's MaxNodesPerRead,
//!   with `nsu=` node ids re-resolved whenever the session is new.
//! - `security`: endpoint choice (policy, mode, identity), server trust
//!   (trust list, pinned fingerprint, opt-in auto-accept) and the client's
//!   application certificate.
//! - `subscribe`: subscribed devices (`mode: subscribe`): one subscription
//!   per device on the shared session, monitored items in chunks, and a
//!   watchdog that recreates a subscription that went silent.
//! - `history`: backfill of a device's gaps from its server's history
//!   (HistoryRead), under a fleet-wide budget.
//! - `convert`: OPC UA values to the collector's record types.
//! - `inspect`: what the operator tools (`endpoints`, `browse`, `read`)
//!   ask a server, through the same sessions and security.
//!
//! ```no_run
//! # async fn demo(cfg: collector_core::CollectorConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let protocol = Arc::new(collector_opcua::OpcUaProtocol::new(&cfg)?);
//! let collector = collector_core::Collector::builder(cfg).protocol(protocol).build().await?;
//! collector.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod config;
mod convert;
mod history;
pub mod inspect;
mod reader;
mod security;
mod session;
mod subscribe;

use std::sync::Arc;

use async_trait::async_trait;
use collector_core::config::Device;
use collector_core::error::ConfigErrors;
use collector_core::protocol::{DeviceReader, Protocol};
use collector_core::{CollectorConfig, ReadError};

use config::{OpcUaSettings, TrustMode};

use reader::OpcUaReader;
use session::Pool;

/// Largest array (and so Read request/response) the client will decode.
/// The library default (1000) fails a Read of more than 1000 nodes.
pub(crate) const MAX_ARRAY_LENGTH: usize = 1_000_000;
/// Chunk size for what the client sends: 8 KiB, the smallest the
/// standard allows. The library preallocates (and zeroes) one send buffer
/// of this size (plus 1 KiB) per connection: its default of 64 KiB cost
/// ~66 KiB of RSS per session, 16 KiB ~17 KiB (heap profile,
/// BENCHMARKS.md). Read requests are small (a 50-node Read is ~1.5 KiB; a
/// 1,000-node Read ~30 KiB goes as four chunks, which every server must
/// take), so nothing is lost. Responses keep the 64 KiB receive chunks (no
/// preallocation).
pub(crate) const SEND_CHUNK_SIZE: usize = 8 * 1024;

/// Why the adapter could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    /// The OPC UA client configuration was rejected.
    #[error("OPC UA client configuration: {0}")]
    Client(String),
    /// The adapter's part of the configuration is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
}

/// The OPC UA protocol: owns the session pool.
pub struct OpcUaProtocol {
    pool: Arc<Pool>,
    settings: OpcUaSettings,
    backfill: Arc<history::Budget>,
}

impl OpcUaProtocol {
    /// Creates the adapter from the `session:` and `security:` sections;
    /// no session opens until a device is read, and the client certificate
    /// is generated (or loaded) at the first secure connect.
    pub fn new(cfg: &CollectorConfig) -> Result<Self, OpcUaError> {
        let settings =
            OpcUaSettings::from_config(cfg).map_err(|e| OpcUaError::Config(ConfigErrors(e)))?;
        let pki_dir = settings
            .security
            .pki_dir
            .clone()
            .or_else(|| cfg.collector.state_dir.as_ref().map(|d| d.join("pki")))
            .unwrap_or_else(|| std::path::PathBuf::from("pki"));
        let auto_accept: Vec<&str> = cfg
            .devices
            .iter()
            .filter(|d| {
                settings.device(d).is_ok_and(|d| {
                    d.security.trust == TrustMode::AutoAccept
                        && d.security.server_fingerprint.is_none()
                })
            })
            .map(|d| d.id.as_ref())
            .collect();
        if !auto_accept.is_empty() {
            tracing::warn!(
                devices = auto_accept.len(),
                first = auto_accept[0],
                "security.trust: auto_accept: these devices accept any server certificate, so a man-in-the-middle goes unnoticed; trust or pin the servers' certificates instead"
            );
        }
        let clients = security::Clients::new(
            &settings.session,
            &settings.security,
            pki_dir,
            &cfg.collector_id(),
        )
        .map_err(OpcUaError::Client)?;
        Ok(Self {
            pool: Arc::new(Pool::new(clients, settings.session.clone())),
            backfill: Arc::new(history::Budget::new(settings.backfill.budget())),
            settings,
        })
    }
}

#[async_trait]
impl Protocol for OpcUaProtocol {
    fn attach(&self, device: &Device) -> Result<Box<dyn DeviceReader>, ReadError> {
        let opc = self
            .settings
            .device(device)
            .map_err(|e| ReadError::Config(ConfigErrors(e).to_string()))?;
        Ok(match opc.mode {
            config::Mode::Poll => {
                let mut reader = OpcUaReader::new(self.pool.clone(), device, opc.clone())?;
                if let Some(settings) = opc.backfill {
                    reader.history = Some(Arc::new(history::OpcUaHistory {
                        pool: self.pool.clone(),
                        endpoint: reader.endpoint(),
                        device: device.id.clone(),
                        nodes: opc.nodes,
                        settings,
                        budget: self.backfill.clone(),
                        unsupported: Default::default(),
                    }));
                }
                Box::new(reader)
            }
            config::Mode::Subscribe => Box::new(subscribe::OpcUaSubscriber::new(
                self.pool.clone(),
                device,
                opc,
            )),
        })
    }

    fn connected_sessions(&self) -> usize {
        self.pool.connected()
    }

    async fn shutdown(&self) {
        self.pool.close_all().await;
    }
}

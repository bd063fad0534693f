//! # collector-opcua
//!
//! The OPC UA protocol adapter for `collector-core`, on async-opcua.
//!
//! - `session`: one session per endpoint, our own reconnect backoff and a
//!   fleet-wide connect rate limit; the library's own retry loop is off.
//! - `reader`: per-device reads, chunked to the server's MaxNodesPerRead,
//!   with `nsu=` node ids re-resolved whenever the session is new.
//! - `convert`: OPC UA values to the collector's record types.
//!
//! ```no_run
//! # async fn demo(cfg: collector_core::CollectorConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let protocol = Arc::new(collector_opcua::OpcUaProtocol::new(&cfg.session)?);
//! let collector = collector_core::Collector::builder(cfg).protocol(protocol).build()?;
//! collector.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod convert;
mod reader;
mod session;

use std::sync::Arc;

use async_trait::async_trait;
use collector_core::config::{Device, SessionConfig};
use collector_core::protocol::{DeviceReader, Protocol};
use collector_core::ReadError;
use opcua::client::ClientBuilder;

use reader::OpcUaReader;
use session::Pool;

/// Largest array (and so Read request/response) the client will decode.
/// The library default (1000) fails a Read of more than 1000 nodes.
const MAX_ARRAY_LENGTH: usize = 1_000_000;
/// Largest message the client will accept (bytes).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Why the adapter could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    /// The OPC UA client configuration was rejected.
    #[error("OPC UA client configuration: {0}")]
    Client(String),
}

/// The OPC UA protocol: owns the session pool.
pub struct OpcUaProtocol {
    pool: Arc<Pool>,
}

impl OpcUaProtocol {
    /// Creates the adapter; no session opens until a device is read.
    pub fn new(cfg: &SessionConfig) -> Result<Self, OpcUaError> {
        let pki_dir = std::env::temp_dir().join("opc-collector-pki");
        let client = ClientBuilder::new()
            .application_name(cfg.application_name.clone())
            .application_uri("urn:opc-collector")
            .product_uri("urn:opc-collector")
            .create_sample_keypair(false)
            .trust_server_certs(false)
            .pki_dir(pki_dir)
            // We own reconnects (see `session`): the library tries once.
            .session_retry_limit(0)
            .keep_alive_interval(cfg.keep_alive_interval)
            .max_failed_keep_alive_count(u64::from(cfg.max_failed_keep_alives))
            .request_timeout(cfg.read_timeout)
            .max_array_length(MAX_ARRAY_LENGTH)
            .max_message_size(MAX_MESSAGE_SIZE)
            .max_chunk_count(0)
            .client()
            .map_err(|errs| OpcUaError::Client(errs.join("; ")))?;
        Ok(Self {
            pool: Arc::new(Pool::new(client, cfg.clone())),
        })
    }
}

#[async_trait]
impl Protocol for OpcUaProtocol {
    fn attach(&self, device: &Device) -> Result<Box<dyn DeviceReader>, ReadError> {
        Ok(Box::new(OpcUaReader::new(self.pool.clone(), device)?))
    }

    fn connected_sessions(&self) -> usize {
        self.pool.connected()
    }

    async fn shutdown(&self) {
        self.pool.close_all().await;
    }
}

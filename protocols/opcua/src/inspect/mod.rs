//! What the operator tools ask a server (`opc-collector endpoints`,
//! `browse`, `read`): through the collector's own session pool, security
//! choice and trust checks, so that what works in a tool works in the
//! fleet, and a refusal carries the same actionable reason.

mod browse;
mod server;

use collector_core::config::Device;
use collector_core::protocol::Protocol;
use collector_core::record::Sample;
use collector_core::{CollectorConfig, ReadError};

use crate::{OpcUaError, OpcUaProtocol};

pub use browse::{BrowseOptions, Browsed, BrowsedNode};
pub use server::{CertificateInfo, OfferedEndpoint, ServerInfo, SessionInfo, UserToken};

/// Asks servers about themselves, with a configuration's `session:` and
/// `security:` settings and its devices' own security.
pub struct Inspector {
    protocol: OpcUaProtocol,
}

impl Inspector {
    /// The sessions and security of `cfg` (no session opens yet).
    pub fn new(cfg: &CollectorConfig) -> Result<Self, OpcUaError> {
        Ok(Self {
            protocol: OpcUaProtocol::new(cfg)?,
        })
    }

    /// What the server at `device`'s endpoint offers (GetEndpoints), what
    /// `device`'s security settings pick among it and why, and, when a
    /// session opens with them, its namespaces and operation limits.
    pub async fn endpoints(&self, device: &Device) -> Result<ServerInfo, ReadError> {
        server::endpoints(&self.protocol, device).await
    }

    /// The address space below a node, through a session with `device`'s
    /// settings.
    pub async fn browse(
        &self,
        device: &Device,
        opts: &BrowseOptions,
    ) -> Result<Browsed, ReadError> {
        browse::browse(&self.protocol, device, opts).await
    }

    /// One Read of `device`'s nodes, as the collector reads them (the
    /// samples its record would carry).
    pub async fn read(&self, device: &Device) -> Result<Vec<Sample>, ReadError> {
        let mut reader = self.protocol.attach(device)?;
        reader.prepare().await;
        reader.read().await
    }

    /// Closes the sessions opened, waiting at most the connect timeout
    /// (a server that stopped answering would otherwise hold the close:
    /// its session is then left to time out on the server).
    pub async fn close(&self) {
        let limit = self.protocol.pool.config().connect_timeout;
        let _ = tokio::time::timeout(limit, self.protocol.shutdown()).await;
    }
}

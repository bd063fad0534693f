//! The OPC UA clients sessions are built from: the options they share, the
//! client for security None, and the secure clients (one per trust mode)
//! created on the first secure connect.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{SecuritySection, SessionConfig};
use opcua::client::{Client, ClientBuilder};

use crate::{MAX_ARRAY_LENGTH, SEND_CHUNK_SIZE};

use super::SecurityError;

/// The clients sessions are built from: one for security None (needs no
/// certificate), and, created on the first secure connect, one per trust
/// mode sharing the application certificate.
pub(crate) struct Clients {
    plain: Client,
    pub(super) session: SessionConfig,
    pub(super) settings: SecuritySection,
    pub(super) pki_dir: PathBuf,
    pub(super) default_application_uri: String,
    /// Created on the first secure connect; a failure is retried at the
    /// next one (e.g. once the PKI directory is writable).
    secure: Mutex<Option<Arc<SecureClients>>>,
}

pub(super) struct SecureClients {
    pub(super) strict: Client,
    pub(super) pinned: Client,
    pub(super) auto_accept: Client,
}

/// The library's keep-alive period: out of the way (see `base_builder`).
/// The library's keep-alive also measured the round trip that sizes how
/// many Publish requests stay outstanding (more than two per subscription
/// only when a round trip exceeds the publishing interval); parked, the
/// library keeps its 10 ms floor: two per subscription, enough while a
/// round trip stays under the publishing interval.
const LIBRARY_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Options every client shares: limits, timeouts, our own reconnects.
pub(super) fn base_builder(cfg: &SessionConfig, settings: &SecuritySection) -> ClientBuilder {
    ClientBuilder::new()
        .application_name(cfg.application_name.clone())
        .product_uri("urn:opc-collector")
        // We own reconnects (see `session`): the library tries once.
        .session_retry_limit(0)
        .session_timeout(u32::try_from(cfg.session_timeout.as_millis()).unwrap_or(u32::MAX))
        // Subscriptions move to the next session in `subscribe` (each
        // session is a new client object: nothing for the library to carry).
        .recreate_subscriptions(false)
        // The keep-alive is ours (`session::keep_alive`: only when no read
        // proved the session alive); the library's timer, which reads
        // every interval regardless, fires once at connect and then
        // yearly, and never ends a session.
        .keep_alive_interval(LIBRARY_KEEP_ALIVE)
        .max_failed_keep_alive_count(0)
        .request_timeout(cfg.read_timeout)
        .max_array_length(MAX_ARRAY_LENGTH)
        .max_message_size(usize::try_from(cfg.max_message_size).unwrap_or(usize::MAX))
        // No chunk count: the library preallocates a queue of that many
        // entries per session for what it sends (~64 bytes each: a count
        // for 16 MiB of 8 KiB chunks cost ~100 KiB per session, measured),
        // and bounds incoming messages by nothing else. `session::wire`
        // bounds an incoming message by `max_message_size` itself.
        .max_chunk_count(0)
        .max_chunk_size(SEND_CHUNK_SIZE)
        // Told to servers in Hello; `session::wire` holds them to it.
        .max_incoming_chunk_size(crate::session::RECEIVE_CHUNK_SIZE)
        .channel_lifetime(u32::try_from(settings.channel_lifetime.as_millis()).unwrap_or(u32::MAX))
}

impl Clients {
    /// `pki_dir`: resolved by the caller (`security.pki_dir`, else
    /// `<state_dir>/pki`, else `./pki`).
    pub(crate) fn new(
        session: &SessionConfig,
        settings: &SecuritySection,
        pki_dir: PathBuf,
        collector_id: &str,
    ) -> Result<Self, String> {
        // Security None needs no PKI: point it at a scratch dir it may
        // create or not, never at the real one. The library logs a client
        // without a certificate at ERROR ("missing its application
        // instance certificate", "Failed to get cert and private key");
        // for this client that is the design, so its construction logs
        // nothing (the secure clients' construction does).
        let plain =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                base_builder(session, settings)
                    .application_uri("urn:opc-collector")
                    .create_sample_keypair(false)
                    .trust_server_certs(false)
                    .pki_dir(std::env::temp_dir().join("opc-collector-pki-none"))
                    .client()
            })
            .map_err(|errs| errs.join("; "))?;
        Ok(Self {
            plain,
            session: session.clone(),
            settings: settings.clone(),
            pki_dir,
            default_application_uri: format!("urn:opc-collector:{collector_id}"),
            secure: Mutex::new(None),
        })
    }

    /// The client for security None (also used for discovery).
    pub(crate) fn plain(&self) -> &Client {
        &self.plain
    }

    /// The secure clients, creating the application certificate on first
    /// use (blocking: call from the blocking pool).
    pub(super) fn secure(&self) -> Result<Arc<SecureClients>, SecurityError> {
        let mut slot = self.secure.lock();
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let created = Arc::new(self.create_secure().map_err(SecurityError::Setup)?);
        *slot = Some(created.clone());
        Ok(created)
    }
}

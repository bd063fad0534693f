//! Builds and runs the async-opcua server of one simulated device: one TCP port, one
//! endpoint (security None and anonymous, or the fleet's [`SecureServing`] with its
//! users), one [`DeviceNodeManager`] (reads, browsing, monitored items and
//! HistoryRead) and nothing else.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::Ordering, Arc},
};

use opcua::types::VariableId;
use opcua_server::{
    ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    history::HistorySettings,
    model,
    node_manager::{Counters, DeviceNodeManager, ReadFaults},
    nodes::DeviceSpace,
    stats::DeviceCounters,
    SimError,
};

/// Encoding/transport limits applied to every device server, sized so that a Read of
/// 10,000 nodes (and its response) decodes.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// `MaxNodesPerRead` operation limit, enforced and served at i=11705.
    pub max_nodes_per_read: usize,
    /// Maximum array length when decoding (a Read request is an array of ReadValueIds).
    pub max_array_length: usize,
    /// Maximum encoded message size in bytes.
    pub max_message_size: usize,
    /// Maximum chunks per message.
    pub max_chunk_count: usize,
    /// `MaxMonitoredItemsPerCall` operation limit, enforced (by async-opcua) and served
    /// at i=11714.
    pub max_monitored_items_per_call: usize,
    /// Monitored items per subscription.
    pub max_monitored_items_per_sub: usize,
    /// Subscriptions per session.
    pub max_subscriptions_per_session: usize,
    /// Serve subscriptions: run the subscription tick and accept monitored items.
    pub subscriptions: bool,
}

/// Period of async-opcua's subscription tick in ms.
const SUBSCRIPTION_TICK_MS: u64 = 100;

/// Builds a server endpoint (policy and mode) for a path and user token ids.
pub type MakeEndpoint = fn(&str, &[String]) -> ServerEndpoint;

/// A secure endpoint served by every device of a fleet, with one shared
/// server certificate (see [`crate::SimSecurity`]).
#[derive(Debug, Clone)]
pub struct SecureServing {
    /// The endpoint (policy and mode), built for a path and user token ids.
    pub endpoint: MakeEndpoint,
    /// Accepted users (name, password); none: anonymous.
    pub users: Vec<(String, String)>,
    /// Server certificate (DER), shared by the fleet.
    pub certificate: std::path::PathBuf,
    /// Its private key (PEM).
    pub private_key: std::path::PathBuf,
}

/// The application URI of every secure device: the one in the shared
/// certificate.
pub const SECURE_APPLICATION_URI: &str = "urn:opc-loadgen";

/// Per-device inputs.
pub struct DeviceSpec<'a> {
    /// Device index.
    pub index: u32,
    /// Number of tags.
    pub tags: u32,
    /// Host written in endpoint descriptions.
    pub host: &'a str,
    /// Public port (the device's front), written in endpoint descriptions.
    pub public_port: u16,
    /// Already bound internal listener the front relays to.
    pub listener: TcpListener,
    /// Namespace index of the device tags.
    pub device_namespace: u16,
    /// Maximum sessions of this server (the fleet's limit or a `MaxSessions` fault).
    pub max_sessions: usize,
    /// Injected Read faults.
    pub read_faults: ReadFaults,
    /// Counters of this device.
    pub counters: Arc<DeviceCounters>,
    /// Directory for the PKI store (trusted/rejected client certificates).
    pub pki_dir: &'a Path,
    /// Serve this secure endpoint instead of security None.
    pub security: Option<&'a SecureServing>,
    /// Step period of the tag values in ms (`--change-rate`), see [`crate::steps`].
    pub period_ms: Option<i64>,
    /// How the device serves HistoryRead (its MaxNodesPerHistoryReadData is enforced).
    pub history: HistorySettings,
}

/// A started device server.
pub struct RunningServer {
    /// Internal address the listener is bound to (the front relays to it).
    pub addr: SocketAddr,
    /// Public port advertised in endpoint descriptions.
    pub public_port: u16,
    /// Handle of the running server.
    pub handle: ServerHandle,
    /// Task running the server; resolves once it has stopped.
    pub task: JoinHandle<Result<(), String>>,
}

impl RunningServer {
    /// Whether the server finished initialising and is accepting connections.
    pub fn is_listening(&self) -> bool {
        self.handle.info().port.load(Ordering::Relaxed) != 0
    }

    /// Once listening: make endpoint descriptions (GetEndpoints, CreateSession) name the
    /// public port instead of the internal one async-opcua recorded.
    pub fn advertise_public_port(&self) {
        self.handle
            .info()
            .port
            .store(self.public_port, Ordering::Relaxed);
    }

    fn diagnostic_u32(&self, id: VariableId) -> u64 {
        self.handle
            .info()
            .diagnostics
            .get(id)
            .and_then(|dv| dv.value)
            .and_then(|v| match v {
                opcua::types::Variant::UInt32(n) => Some(u64::from(n)),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Sessions currently held by the server's session manager.
    pub fn current_sessions(&self) -> u64 {
        self.diagnostic_u32(
            VariableId::Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount,
        )
    }

    /// Sessions created since the server started.
    pub fn cumulated_sessions(&self) -> u64 {
        self.diagnostic_u32(
            VariableId::Server_ServerDiagnostics_ServerDiagnosticsSummary_CumulatedSessionCount,
        )
    }
}

/// Build the server of one device and spawn it on `listener`.
pub fn spawn_device(
    spec: DeviceSpec<'_>,
    limits: ServerLimits,
    counters: Arc<Counters>,
    token: CancellationToken,
) -> Result<RunningServer, SimError> {
    let id = model::device_id(spec.index);
    let addr = spec.listener.local_addr().map_err(|source| SimError::Io {
        context: format!("local address of {id}"),
        source,
    })?;
    let application_uri = match spec.security {
        Some(_) => SECURE_APPLICATION_URI.to_string(),
        None => format!("urn:opc-loadgen:{id}"),
    };
    let space = DeviceSpace {
        device: spec.index,
        tags: spec.tags,
        application_uri: application_uri.clone(),
        max_nodes_per_read: u32::try_from(limits.max_nodes_per_read).unwrap_or(u32::MAX),
        max_monitored_items_per_call: u32::try_from(limits.max_monitored_items_per_call)
            .unwrap_or(u32::MAX),
        period_ms: spec.period_ms,
        subscriptions: limits.subscriptions,
        device_namespace: spec.device_namespace,
        history: spec.history,
    };
    let mut builder = ServerBuilder::new()
        // Drop the generated core node managers in case a feature elsewhere in the
        // build turned them on: the device node manager serves namespace 0 itself.
        .without_node_managers()
        .application_name(format!("opc-loadgen {id}"))
        .application_uri(application_uri)
        .product_uri("urn:opc-loadgen")
        .host(spec.host)
        .port(spec.public_port)
        .discovery_urls(vec!["/".to_owned()])
        .create_sample_keypair(false)
        .pki_dir(spec.pki_dir)
        .max_sessions(spec.max_sessions)
        .max_array_length(limits.max_array_length)
        .max_message_size(limits.max_message_size)
        .max_chunk_count(limits.max_chunk_count)
        // The subscription tick (publishing intervals, keep-alives, lifetimes): one
        // timer wake-up per server every 100 ms, async-opcua's default and its minimum
        // publishing interval.
        .subscription_poll_interval_ms(if limits.subscriptions {
            SUBSCRIPTION_TICK_MS
        } else {
            0
        })
        // Enables the server-wide session counters read by `current_sessions`.
        .diagnostics_enabled(true)
        .token(token.clone())
        .with_node_manager(DeviceNodeManager::builder(
            space,
            counters,
            spec.counters,
            spec.read_faults,
            token.child_token(),
        ));
    builder = match spec.security {
        None => builder.add_endpoint(
            "none",
            ServerEndpoint::new_none("/", &[ANONYMOUS_USER_TOKEN_ID.to_string()]),
        ),
        Some(sec) => {
            let mut ids = Vec::new();
            for (i, (user, pass)) in sec.users.iter().enumerate() {
                let token_id = format!("user-{i}");
                builder = builder.add_user_token(
                    token_id.clone(),
                    ServerUserToken::user_pass(user.as_str(), pass.as_str()),
                );
                ids.push(token_id);
            }
            if ids.is_empty() {
                ids.push(ANONYMOUS_USER_TOKEN_ID.to_string());
            }
            builder
                .add_endpoint("secure", (sec.endpoint)("/", &ids))
                .certificate_path(sec.certificate.clone())
                .private_key_path(sec.private_key.clone())
                // A test peer: any client certificate is accepted.
                .trust_client_certs(true)
        }
    };
    let server_limits = builder.limits_mut();
    server_limits.operational.max_nodes_per_read = limits.max_nodes_per_read;
    server_limits.operational.max_monitored_items_per_call = limits.max_monitored_items_per_call;
    server_limits.operational.max_nodes_per_history_read_data =
        spec.history.max_nodes_per_read as usize;
    server_limits.subscriptions.max_monitored_items_per_sub = limits.max_monitored_items_per_sub;
    server_limits.subscriptions.max_subscriptions_per_session =
        limits.max_subscriptions_per_session;
    let (server, handle) = builder.build().map_err(|message| SimError::Build {
        device: id.clone(),
        message,
    })?;
    let task = tokio::spawn(server.run_with(spec.listener));
    Ok(RunningServer {
        addr,
        public_port: spec.public_port,
        handle,
        task,
    })
}

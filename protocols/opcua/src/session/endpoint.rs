//! One endpoint's session slot (its state, backoff bookkeeping and user
//! count) and the live session it holds, with the task driving it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::DeviceSecurity;
use collector_core::protocol::SessionState;
use collector_core::ReadError;
use opcua::client::Session;
use opcua::types::{EndpointDescription, NodeId};
use parking_lot::Mutex as SyncMutex;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A task that is aborted when this handle is dropped: a session's event
/// loop owns its TCP connection, so a connect abandoned half-way (e.g. by
/// the connect timeout) must not leave the loop, and the connection,
/// running.
pub(crate) struct LoopTask(pub(super) tokio::task::JoinHandle<()>);

impl LoopTask {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    pub(super) fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for LoopTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a connected session knows about its server.
pub(crate) struct Live {
    pub(crate) session: Arc<Session>,
    /// Cleared when the event loop ends (transport lost, keep-alive failed).
    pub(super) alive: Arc<AtomicBool>,
    pub(super) loop_task: LoopTask,
    /// Namespace URI -> index, read at connect.
    pub(crate) namespaces: HashMap<String, u16>,
    /// The server's namespace array as read (index = position).
    pub(crate) namespace_array: Vec<String>,
    /// Namespace indexes that moved since the first session on this
    /// endpoint (old index -> new index, or None if the URI is gone):
    /// configured `ns=` ids keep meaning what they meant at first connect.
    pub(crate) remap: HashMap<u16, Option<u16>>,
    /// Nodes per Read request: min(server's MaxNodesPerRead, our cap).
    pub(crate) max_nodes_per_read: usize,
    /// Monitored items per CreateMonitoredItems request: min(server's
    /// MaxMonitoredItemsPerCall, [`super::MONITORED_ITEMS_PER_CALL_CAP`]).
    pub(crate) max_monitored_items_per_call: usize,
    /// The server's MaxNodesPerHistoryReadData (0: none stated).
    pub(crate) max_nodes_per_history_read: usize,
    /// Publish requests the server answered with BadNoSubscription or
    /// BadSubscriptionIdInvalid: the server lost this session's
    /// subscriptions, so each subscriber recreates its own.
    pub(crate) subscriptions_lost: Arc<AtomicU64>,
    /// When the server last answered on this session (our keep-alive
    /// skips its Read while reads keep proving it).
    pub(crate) liveness: Arc<super::keep_alive::Liveness>,
    /// Cancelled when the session's event loop ends.
    pub(crate) ended: tokio_util::sync::CancellationToken,
    /// Increases with every new session on this endpoint, so readers know
    /// to re-resolve their node ids.
    pub(crate) generation: u64,
}

impl Live {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && !self.loop_task.is_finished()
    }

    /// What reactivating this session on a new connection takes.
    pub(super) fn resume(&self) -> Option<Resume> {
        let session_id = self.session.server_session_id();
        let auth_token = opcua::client::services::Read::new(&self.session)
            .header()
            .authentication_token
            .clone();
        (!session_id.is_null() && !auth_token.is_null()).then_some(Resume {
            session_id,
            auth_token,
        })
    }
}

/// A session whose connection was lost, still alive on the server until
/// its timeout: the next connect reactivates it (OPC UA Part 4,
/// re-establishing connections) instead of leaving it behind and creating
/// another.
#[derive(Debug, Clone)]
pub(super) struct Resume {
    pub(super) session_id: NodeId,
    pub(super) auth_token: NodeId,
}

#[derive(Default)]
pub(super) struct SlotState {
    pub(super) live: Option<Arc<Live>>,
    /// The server's endpoints from its last GetEndpoints: discovery runs
    /// once, and again only after a connect failed on security grounds
    /// (e.g. a new server certificate).
    pub(super) offered: Option<Vec<EndpointDescription>>,
    pub(super) consecutive_failures: u32,
    /// Consecutive slow failures (timeouts, security refusals): what the
    /// reconnect delay escalates on.
    pub(super) slow_failures: u32,
    pub(super) next_attempt: Option<Instant>,
    /// Why the last connect failed: reads refused during the backoff say it.
    pub(super) last_failure: Option<ReadError>,
    /// The session to reactivate on the next connect, if any.
    pub(super) resume: Option<Resume>,
}

/// One endpoint's session slot (per URL and security settings: devices
/// that share both share the session).
pub(crate) struct Endpoint {
    pub(crate) url: String,
    pub(super) security: DeviceSecurity,
    pub(super) state: Mutex<SlotState>,
    pub(super) generation: AtomicU64,
    /// Devices attached to this endpoint; the session closes when it drops to 0.
    pub(super) users: AtomicI64,
    /// The NamespaceArray seen at the first connect: what `ns=N` in the
    /// configuration refers to.
    pub(super) first_namespaces: SyncMutex<Option<Vec<String>>>,
}

impl Endpoint {
    /// The session's state, without waiting (a locked slot is connecting).
    pub(crate) fn state(&self) -> SessionState {
        match self.state.try_lock() {
            Err(_) => SessionState::Connecting,
            Ok(st) => match (&st.live, st.next_attempt) {
                (Some(l), _) if l.is_alive() => SessionState::Connected,
                (_, Some(at)) if at > Instant::now() => SessionState::Backoff,
                _ => SessionState::Disconnected,
            },
        }
    }
}

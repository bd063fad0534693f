//! Reads one device: resolves its node ids against the current session
//! (namespace URIs can move when a server restarts), splits the Read into
//! chunks of at most MaxNodesPerRead, and maps results to samples. A node
//! the server rejects becomes a Bad sample; only session-level failures
//! fail the read.

use std::sync::Arc;

use async_trait::async_trait;
use collector_core::config::Device;

use crate::config::{Identifier, Namespace, NodeAddress, OpcUaDevice};
use collector_core::metrics::names;
use collector_core::protocol::{DeviceReader, SessionState};
use collector_core::record::Sample;
use collector_core::ReadError;
use opcua::types::{ByteString, Guid, NodeId, ReadValueId, StatusCode, TimestampsToReturn};

use crate::convert;
use crate::session::{Endpoint, Live, Pool};

/// A node ready to read (its ReadValueId is next in `to_read`), or the
/// reason it cannot be.
enum Resolved {
    Read,
    Unavailable(StatusCode),
}

pub(crate) struct OpcUaReader {
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
    nodes: Vec<NodeAddress>,
    /// Resolution for session generation `.0`, and the nodes to request
    /// (the resolved ones, in order), built once per session.
    resolved: Option<(u64, Vec<Resolved>)>,
    to_read: Vec<ReadValueId>,
    released: bool,
    /// The session `prepare` opened (or failed to) for the next read:
    /// connecting happens there, before the scheduler hands out a worker
    /// permit, so a device that takes its connect timeout to fail (a black
    /// hole) never holds a permit the healthy devices need.
    prepared: Option<Result<Arc<Live>, ReadError>>,
    /// The device's history, when its gaps are backfilled.
    pub(crate) history: Option<Arc<crate::history::OpcUaHistory>>,
    /// `collector_read_requests_total`, registered once.
    read_requests: metrics::Counter,
}

impl OpcUaReader {
    pub(crate) fn new(
        pool: Arc<Pool>,
        device: &Device,
        opc: OpcUaDevice,
    ) -> Result<Self, ReadError> {
        let endpoint = pool.endpoint(&device.endpoint, &opc.security);
        Ok(Self {
            pool,
            endpoint,
            nodes: opc.nodes,
            resolved: None,
            to_read: Vec::new(),
            released: false,
            prepared: None,
            history: None,
            read_requests: metrics::counter!(names::READ_REQUESTS),
        })
    }

    /// The endpoint slot this reader holds.
    pub(crate) fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.clone()
    }

    /// Resolves the node ids for `live` unless already done for it.
    fn resolve(&mut self, live: &Live) {
        let fresh = !matches!(&self.resolved, Some((g, _)) if *g == live.generation);
        if fresh {
            let mut to_read = Vec::with_capacity(self.nodes.len());
            let list: Vec<Resolved> = self
                .nodes
                .iter()
                .map(|n| match resolve_one(n, live) {
                    Ok(id) => {
                        to_read.push(id);
                        Resolved::Read
                    }
                    Err(code) => Resolved::Unavailable(code),
                })
                .collect();
            self.to_read = to_read;
            self.resolved = Some((live.generation, list));
        }
    }
}

fn resolve_one(n: &NodeAddress, live: &Live) -> Result<ReadValueId, StatusCode> {
    node_id_of(n, live).map(ReadValueId::from)
}

/// The node id `n` means on `live`'s server (its namespace index now).
pub(crate) fn node_id_of(n: &NodeAddress, live: &Live) -> Result<NodeId, StatusCode> {
    let ns = match &n.namespace {
        Namespace::Index(i) => match live.remap.get(i) {
            None => *i,
            Some(Some(moved)) => *moved,
            Some(None) => return Err(StatusCode::BadNodeIdUnknown),
        },
        Namespace::Uri(uri) => match live.namespaces.get(uri) {
            Some(i) => *i,
            None => return Err(StatusCode::BadNodeIdUnknown),
        },
    };
    let id = match &n.identifier {
        Identifier::Numeric(i) => NodeId::new(ns, *i),
        Identifier::String(s) => NodeId::new(ns, s.as_str()),
        Identifier::Guid(g) => match g.parse::<Guid>() {
            Ok(g) => NodeId::new(ns, g),
            Err(_) => return Err(StatusCode::BadNodeIdInvalid),
        },
        Identifier::Opaque(b) => match ByteString::from_base64(b) {
            Some(b) => NodeId::new(ns, b),
            None => return Err(StatusCode::BadNodeIdInvalid),
        },
    };
    Ok(id)
}

#[async_trait]
impl DeviceReader for OpcUaReader {
    async fn prepare(&mut self) {
        if self.prepared.is_none() && self.pool.needs_connect(&self.endpoint) {
            self.prepared = Some(self.pool.session(&self.endpoint).await);
        }
    }

    async fn read(&mut self) -> Result<Vec<Sample>, ReadError> {
        let live = match self.prepared.take() {
            Some(prepared) => prepared?,
            None => self.pool.session(&self.endpoint).await?,
        };
        let read_timeout = self.pool.config().read_timeout;
        self.resolve(&live);
        let mut values = Vec::with_capacity(self.to_read.len());
        for chunk in self.to_read.chunks(live.max_nodes_per_read.max(1)) {
            self.read_requests.increment(1);
            let result = tokio::time::timeout(
                read_timeout,
                live.session.read(chunk, TimestampsToReturn::Both, 0.0),
            )
            .await;
            let err = match result {
                Ok(Ok(dvs)) if dvs.len() == chunk.len() => {
                    live.liveness.proven();
                    values.extend(dvs);
                    continue;
                }
                Ok(Ok(dvs)) => ReadError::Service(format!(
                    "server returned {} results for {} nodes",
                    dvs.len(),
                    chunk.len()
                )),
                Ok(Err(e)) => ReadError::Service(e.to_string()),
                Err(_) => ReadError::Timeout {
                    what: "read",
                    after: read_timeout,
                },
            };
            // The session may be dead-but-open or confused: start afresh.
            self.pool.invalidate(&self.endpoint, live.generation).await;
            return Err(err);
        }
        let mut values = values.into_iter();
        let mut samples = Vec::with_capacity(self.nodes.len());
        let resolved = match &self.resolved {
            Some((_, r)) => r,
            None => return Err(ReadError::Service("node resolution missing".into())),
        };
        for (node, r) in self.nodes.iter().zip(resolved) {
            match r {
                Resolved::Read => match values.next() {
                    Some(dv) => samples.push(convert::sample(&node.text, dv)),
                    None => return Err(ReadError::Service("fewer results than nodes".into())),
                },
                Resolved::Unavailable(code) => samples.push(convert::missing(&node.text, *code)),
            }
        }
        Ok(samples)
    }

    fn session_state(&self) -> SessionState {
        self.endpoint.state()
    }

    fn history(&self) -> Option<Arc<dyn collector_core::protocol::History>> {
        self.history
            .clone()
            .map(|h| h as Arc<dyn collector_core::protocol::History>)
    }

    async fn close(&mut self) {
        if !self.released {
            self.released = true;
            self.pool.release(&self.endpoint).await;
        }
    }
}

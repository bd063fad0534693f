//! Reads one device: resolves its node ids against the current session
//! (namespace URIs can move when a server restarts), splits the Read into
//! chunks of at most MaxNodesPerRead, and maps results to samples. A node
//! the server rejects becomes a Bad sample; only session-level failures
//! fail the read.
//!
//! The request's node list is built for each read and handed to the
//! library, which would otherwise copy a kept list every time: keeping one
//! per device held ~5 KiB per 50-node device (10 MB at 2,000 devices) to
//! save nothing.

use std::sync::Arc;

use async_trait::async_trait;
use collector_core::config::Device;

use crate::config::{Identifier, Namespace, NodeAddress, OpcUaDevice};
use collector_core::metrics::names;
use collector_core::protocol::{DeviceReader, SessionState};
use collector_core::record::Sample;
use collector_core::ReadError;
use opcua::client::services::Read;
use opcua::client::UARequest;
use opcua::types::{ByteString, Guid, NodeId, ReadValueId, StatusCode, TimestampsToReturn};

use crate::convert;
use crate::session::{Endpoint, Live, Pool};

pub(crate) struct OpcUaReader {
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
    nodes: Vec<NodeAddress>,
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
}

/// The node id `n` means on `live`'s server (its namespace index now).
pub(crate) fn node_id_of(n: &NodeAddress, live: &Live) -> Result<NodeId, StatusCode> {
    let ns = match n.namespace() {
        Namespace::Index(i) => match live.remap.get(&i) {
            None => i,
            Some(Some(moved)) => *moved,
            Some(None) => return Err(StatusCode::BadNodeIdUnknown),
        },
        Namespace::Uri(uri) => match live.namespaces.get(uri) {
            Some(i) => *i,
            None => return Err(StatusCode::BadNodeIdUnknown),
        },
    };
    let id = match n.identifier() {
        Identifier::Numeric(i) => NodeId::new(ns, i),
        Identifier::String(s) => NodeId::new(ns, s),
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
        // Resolved against this session: a node whose namespace it lacks
        // is not asked for and becomes a Bad sample. The rest go in
        // requests of at most the server's MaxNodesPerRead.
        let per_request = live.max_nodes_per_read.max(1);
        let mut refused: Vec<Option<StatusCode>> = Vec::with_capacity(self.nodes.len());
        let mut requests: Vec<Vec<ReadValueId>> = Vec::new();
        for node in &self.nodes {
            match node_id_of(node, &live) {
                Ok(id) => {
                    match requests.last_mut() {
                        Some(request) if request.len() < per_request => request.push(id.into()),
                        _ => {
                            let left = self.nodes.len() - refused.len();
                            let mut request = Vec::with_capacity(left.min(per_request));
                            request.push(id.into());
                            requests.push(request);
                        }
                    }
                    refused.push(None);
                }
                Err(code) => refused.push(Some(code)),
            }
        }
        let mut values = Vec::new();
        for chunk in requests {
            let asked = chunk.len();
            self.read_requests.increment(1);
            let request = Read::new(&live.session)
                .nodes_to_read(chunk)
                .timestamps_to_return(TimestampsToReturn::Both)
                .max_age(0.0)
                .send(live.session.channel());
            let err = match tokio::time::timeout(read_timeout, request).await {
                Ok(Ok(response)) => {
                    let dvs = response.results.unwrap_or_default();
                    if dvs.len() == asked {
                        live.liveness.proven();
                        // One request (the usual case): its results are
                        // the values, not copied.
                        if values.is_empty() {
                            values = dvs;
                        } else {
                            values.extend(dvs);
                        }
                        continue;
                    }
                    ReadError::Service(format!(
                        "server returned {} results for {asked} nodes",
                        dvs.len()
                    ))
                }
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
        for (node, refused) in self.nodes.iter().zip(refused) {
            match refused {
                None => match values.next() {
                    Some(dv) => samples.push(convert::sample(node.text(), dv)),
                    None => return Err(ReadError::Service("fewer results than nodes".into())),
                },
                Some(code) => samples.push(convert::missing(node.text(), code)),
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

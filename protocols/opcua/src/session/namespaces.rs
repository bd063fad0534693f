//! Namespace resolution: the server's NamespaceArray (and MaxNodesPerRead)
//! read at connect, and configured `ns=` indexes remapped by URI when the
//! server's array changed since the first session on an endpoint.

use std::collections::HashMap;

use collector_core::ReadError;
use opcua::client::Session;
use opcua::types::{ReadValueId, TimestampsToReturn, VariableId, Variant};

use super::Endpoint;

impl Endpoint {
    /// Maps configured namespace indexes onto the current server's.
    pub(super) fn remap(&self, current: &[String]) -> HashMap<u16, Option<u16>> {
        let mut guard = self.first_namespaces.lock();
        let first = guard.get_or_insert_with(|| current.to_vec());
        let mut remap = HashMap::new();
        for (old, uri) in first.iter().enumerate() {
            let Ok(old) = u16::try_from(old) else { break };
            let new = current
                .iter()
                .position(|u| u == uri)
                .and_then(|i| u16::try_from(i).ok());
            if new != Some(old) {
                remap.insert(old, new);
            }
        }
        if !remap.is_empty() {
            tracing::warn!(endpoint = %self.url, ?remap, "server namespace array changed since first connect; remapping configured ns= indexes by URI");
        }
        remap
    }
}

/// What a session learns about its server at connect.
pub(super) struct Discovered {
    pub(super) namespaces: Vec<String>,
    /// MaxNodesPerRead; 0 = no limit.
    pub(super) max_nodes_per_read: usize,
    /// MaxMonitoredItemsPerCall; 0 = no limit.
    pub(super) max_monitored_items_per_call: usize,
    /// MaxNodesPerHistoryReadData; 0 = no limit.
    pub(super) max_nodes_per_history_read: usize,
}

/// Reads the namespace array and the operation limits the collector
/// honours, in one request.
pub(super) async fn discover(session: &Session) -> Result<Discovered, ReadError> {
    let ids = [
        VariableId::Server_NamespaceArray,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
    ]
    .map(|v| ReadValueId::from(opcua::types::NodeId::from(v)));
    let results = session
        .read(&ids, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| ReadError::Service(format!("reading NamespaceArray/operation limits: {e}")))?;
    let mut namespaces = Vec::new();
    if let Some(Some(Variant::Array(a))) = results.first().map(|dv| dv.value.clone()) {
        for v in &a.values {
            namespaces.push(match v {
                Variant::String(s) => s.as_ref().to_string(),
                _ => String::new(),
            });
        }
    }
    let limit = |i: usize| match results.get(i).and_then(|dv| dv.value.clone()) {
        Some(Variant::UInt32(n)) => n as usize,
        _ => 0,
    };
    Ok(Discovered {
        namespaces,
        max_nodes_per_read: limit(1),
        max_monitored_items_per_call: limit(2),
        max_nodes_per_history_read: limit(3),
    })
}

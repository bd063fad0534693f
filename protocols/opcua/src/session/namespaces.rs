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

/// Reads the namespace array and MaxNodesPerRead in one request.
pub(super) async fn discover(session: &Session) -> Result<(Vec<String>, usize), ReadError> {
    let ids = [
        ReadValueId::from(opcua::types::NodeId::from(
            VariableId::Server_NamespaceArray,
        )),
        ReadValueId::from(opcua::types::NodeId::from(
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        )),
    ];
    let results = session
        .read(&ids, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| ReadError::Service(format!("reading NamespaceArray/MaxNodesPerRead: {e}")))?;
    let mut namespaces = Vec::new();
    if let Some(Some(Variant::Array(a))) = results.first().map(|dv| dv.value.clone()) {
        for v in &a.values {
            namespaces.push(match v {
                Variant::String(s) => s.as_ref().to_string(),
                _ => String::new(),
            });
        }
    }
    let max = match results.get(1).and_then(|dv| dv.value.clone()) {
        Some(Variant::UInt32(n)) => n as usize,
        _ => 0,
    };
    Ok((namespaces, max))
}

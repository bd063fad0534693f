//! `browse`: the address space below a node, breadth first along
//! hierarchical references, bounded by a depth and a node count,
//! continuation points followed (and released when the count is reached);
//! each variable with its data type, access level and historizing flag,
//! and its node id written with its namespace URI (`nsu=`), which survives
//! a server renumbering its namespaces.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use collector_core::config::Device;
use collector_core::ReadError;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResult, BrowseResultMask, ByteString,
    DataTypeId, Identifier, NodeClass, NodeClassMask, NodeId, ObjectId, ReadValueId,
    ReferenceTypeId, StatusCode, TimestampsToReturn, Variant,
};

use crate::config::NodeAddress;
use crate::session::Live;
use crate::OpcUaProtocol;

/// What to browse.
#[derive(Debug, Clone)]
pub struct BrowseOptions {
    /// The node to start from, as in a device's `nodes` (`ns=`, `nsu=`,
    /// `i=`...). Default: the Objects folder.
    pub start: Option<String>,
    /// Levels below the start node (1: its children).
    pub depth: u32,
    /// Nodes listed at most; the walk stops there (and says so).
    pub max_nodes: usize,
}

/// One node found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrowsedNode {
    /// Levels below the start node (1: a child).
    pub depth: u32,
    /// Display name.
    pub name: String,
    /// Browse name (`ns:name`).
    pub browse_name: String,
    /// The node id with its namespace URI (`nsu=...;s=...`; `i=...` in
    /// namespace 0), as a device's `nodes` takes it.
    pub node_id: String,
    /// `Object`, `Variable`, `Method`, ...
    pub node_class: String,
    /// Variables: the data type's name (or node id).
    pub data_type: Option<String>,
    /// Variables: whether the current value is readable (AccessLevel
    /// CurrentRead, as this user).
    pub readable: bool,
    /// Variables: whether history is readable (HistoryRead).
    pub history_readable: bool,
    /// Variables: whether the server historizes it.
    pub historizing: bool,
    /// The display names from the start node down to this one.
    pub path: Vec<String>,
}

/// What a browse found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Browsed {
    /// The nodes, breadth first.
    pub nodes: Vec<BrowsedNode>,
    /// True when `max_nodes` stopped the walk before `depth`.
    pub truncated: bool,
    /// The server's namespace array.
    pub namespaces: Vec<String>,
}

/// Nodes per Browse request when the server gives no MaxNodesPerBrowse.
const BROWSE_BATCH: usize = 100;

pub(super) async fn browse(
    protocol: &OpcUaProtocol,
    device: &Device,
    opts: &BrowseOptions,
) -> Result<Browsed, ReadError> {
    let opc = protocol
        .settings
        .device(device)
        .map_err(|e| ReadError::Config(collector_core::error::ConfigErrors(e).to_string()))?;
    let ep = protocol.pool.endpoint(&device.endpoint, &opc.security);
    let live = protocol.pool.session(&ep).await?;
    let timeout = protocol.pool.config().read_timeout;
    let mut namespaces = vec![String::new(); live.namespaces.len()];
    for (uri, i) in &live.namespaces {
        if let Some(slot) = namespaces.get_mut(usize::from(*i)) {
            *slot = uri.clone();
        }
    }
    let start = match &opts.start {
        None => NodeId::from(ObjectId::ObjectsFolder),
        Some(text) => {
            let address: NodeAddress = text
                .parse()
                .map_err(|e: String| ReadError::Config(format!("start node {text:?}: {e}")))?;
            crate::reader::node_id_of(&address, &live)
                .map_err(|code| ReadError::Service(format!("start node {text}: {code}")))?
        }
    };
    // The start node must exist: a typo fails here, not as an empty tree.
    let check = read_attrs(
        &live,
        std::slice::from_ref(&start),
        &[AttributeId::NodeClass],
        timeout,
    )
    .await?;
    if let Some(code) = check.first().and_then(|v| v.1).filter(|c| c.is_bad()) {
        return Err(ReadError::Service(format!("start node {start}: {code}")));
    }

    let mut out: Vec<BrowsedNode> = Vec::new();
    let mut found: Vec<NodeId> = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::from([start.clone()]);
    let mut frontier: VecDeque<(NodeId, u32, Vec<String>)> =
        VecDeque::from([(start, 0, Vec::new())]);
    let mut truncated = false;
    let batch = BROWSE_BATCH;
    'walk: while !frontier.is_empty() {
        let level: Vec<(NodeId, u32, Vec<String>)> = frontier.drain(..).collect();
        for chunk in level.chunks(batch) {
            let depth = chunk[0].1 + 1;
            if depth > opts.depth {
                break 'walk;
            }
            let results =
                browse_all(&live, chunk.iter().map(|c| c.0.clone()).collect(), timeout).await?;
            for ((_, _, path), refs) in chunk.iter().zip(results) {
                for r in refs {
                    let id = r.node_id.node_id.clone();
                    if !r.node_id.namespace_uri.is_empty()
                        || r.node_id.server_index != 0
                        || !seen.insert(id.clone())
                    {
                        continue;
                    }
                    if out.len() >= opts.max_nodes {
                        truncated = true;
                        break 'walk;
                    }
                    let name = r.display_name.text.to_string();
                    let mut node_path = path.clone();
                    node_path.push(name.clone());
                    found.push(id.clone());
                    out.push(BrowsedNode {
                        depth,
                        name,
                        browse_name: format!(
                            "{}:{}",
                            r.browse_name.namespace_index, r.browse_name.name
                        ),
                        node_id: with_uri(&id, &namespaces),
                        node_class: format!("{:?}", r.node_class),
                        data_type: None,
                        readable: false,
                        history_readable: false,
                        historizing: false,
                        path: node_path.clone(),
                    });
                    if matches!(r.node_class, NodeClass::Object | NodeClass::Variable) {
                        frontier.push_back((id, depth, node_path));
                    }
                }
            }
        }
    }
    describe_variables(&live, &mut out, &found, &namespaces, timeout).await?;
    Ok(Browsed {
        nodes: out,
        truncated,
        namespaces,
    })
}

/// The forward hierarchical references of each node, continuation points
/// followed to the end.
async fn browse_all(
    live: &Live,
    nodes: Vec<NodeId>,
    timeout: Duration,
) -> Result<Vec<Vec<opcua::types::ReferenceDescription>>, ReadError> {
    let descriptions: Vec<BrowseDescription> = nodes
        .into_iter()
        .map(|node_id| BrowseDescription {
            node_id,
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: (NodeClassMask::OBJECT
                | NodeClassMask::VARIABLE
                | NodeClassMask::METHOD)
                .bits(),
            result_mask: BrowseResultMask::All as u32,
        })
        .collect();
    let results = bounded(timeout, live.session.browse(&descriptions, 1000, None)).await?;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.push(follow(live, r, timeout).await?);
    }
    Ok(out)
}

/// A browse result's references, with those behind its continuation points.
async fn follow(
    live: &Live,
    mut r: BrowseResult,
    timeout: Duration,
) -> Result<Vec<opcua::types::ReferenceDescription>, ReadError> {
    let mut refs = r.references.take().unwrap_or_default();
    let mut cp: ByteString = r.continuation_point;
    // Bounded: a server that keeps returning continuation points cannot
    // hold the tool (10,000 pages).
    for _ in 0..10_000 {
        if cp.is_null_or_empty() {
            return Ok(refs);
        }
        let next = bounded(
            timeout,
            live.session.browse_next(false, std::slice::from_ref(&cp)),
        )
        .await?;
        let Some(mut n) = next.into_iter().next() else {
            return Ok(refs);
        };
        refs.extend(n.references.take().unwrap_or_default());
        cp = n.continuation_point;
    }
    let _ = live.session.browse_next(true, &[cp]).await;
    Ok(refs)
}

async fn bounded<T, E: std::fmt::Display>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ReadError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ReadError::Service(e.to_string())),
        Err(_) => Err(ReadError::Timeout {
            what: "request",
            after: timeout,
        }),
    }
}

/// Reads `attrs` of each of `nodes`: (value, bad status) per node and
/// attribute, node-major.
async fn read_attrs(
    live: &Live,
    nodes: &[NodeId],
    attrs: &[AttributeId],
    timeout: Duration,
) -> Result<Vec<(Option<Variant>, Option<StatusCode>)>, ReadError> {
    let ids: Vec<ReadValueId> = nodes
        .iter()
        .flat_map(|n| {
            attrs.iter().map(move |a| ReadValueId {
                node_id: n.clone(),
                attribute_id: *a as u32,
                ..Default::default()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(live.max_nodes_per_read.max(1)) {
        let dvs = bounded(
            timeout,
            live.session.read(chunk, TimestampsToReturn::Neither, 0.0),
        )
        .await?;
        out.extend(
            dvs.into_iter()
                .map(|dv| (dv.value, dv.status.filter(|s| s.is_bad()))),
        );
    }
    Ok(out)
}

/// Fills in the variables' data type, access level and historizing.
async fn describe_variables(
    live: &Live,
    nodes: &mut [BrowsedNode],
    found: &[NodeId],
    namespaces: &[String],
    timeout: Duration,
) -> Result<(), ReadError> {
    let vars: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].node_class == "Variable")
        .collect();
    if vars.is_empty() {
        return Ok(());
    }
    let ids: Vec<NodeId> = vars.iter().map(|i| found[*i].clone()).collect();
    let attrs = [
        AttributeId::DataType,
        AttributeId::UserAccessLevel,
        AttributeId::Historizing,
    ];
    let values = read_attrs(live, &ids, &attrs, timeout).await?;
    for (k, i) in vars.into_iter().enumerate() {
        let n = &mut nodes[i];
        let v = |a: usize| values.get(k * attrs.len() + a).and_then(|v| v.0.clone());
        if let Some(Variant::NodeId(t)) = v(0) {
            n.data_type = Some(type_name(&t, namespaces));
        }
        let access = match v(1) {
            Some(Variant::Byte(b)) => b,
            _ => 0,
        };
        n.readable = access & 0x01 != 0;
        n.history_readable = access & 0x04 != 0;
        n.historizing = matches!(v(2), Some(Variant::Boolean(true)));
    }
    Ok(())
}

/// A data type's name: the standard ones by name, others by node id.
fn type_name(t: &NodeId, namespaces: &[String]) -> String {
    if t.namespace == 0 {
        if let Identifier::Numeric(n) = t.identifier {
            if let Ok(known) = DataTypeId::try_from(n) {
                return format!("{known:?}");
            }
        }
    }
    with_uri(t, namespaces)
}

/// `id` as a device's `nodes` takes it: with its namespace URI.
fn with_uri(id: &NodeId, namespaces: &[String]) -> String {
    let ident = match &id.identifier {
        Identifier::Numeric(n) => format!("i={n}"),
        Identifier::String(s) => format!("s={s}"),
        Identifier::Guid(g) => format!("g={g}"),
        Identifier::ByteString(b) => format!("b={}", b.as_base64()),
    };
    match id.namespace {
        0 => ident,
        ns => match namespaces.get(usize::from(ns)).filter(|u| !u.is_empty()) {
            Some(uri) => format!("nsu={uri};{ident}"),
            None => format!("ns={ns};{ident}"),
        },
    }
}

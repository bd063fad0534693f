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
    ReferenceDescription, ReferenceTypeId, StatusCode, TimestampsToReturn, VariableId, Variant,
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
    /// The index of its parent in [`Browsed::nodes`] (None: a child of the
    /// start node).
    pub parent: Option<usize>,
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
    /// Nodes whose children could not be listed (the node and the
    /// server's status): the tree is incomplete below them.
    pub incomplete: Vec<String>,
    /// References to nodes of other servers (not followed).
    pub skipped_remote: usize,
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
    let start_address: Option<NodeAddress> = match &opts.start {
        None => None,
        Some(text) => Some(
            text.parse()
                .map_err(|e: String| ReadError::Config(format!("start node {text:?}: {e}")))?,
        ),
    };
    let ep = protocol.pool.endpoint(&device.endpoint, &opc.security);
    let live = protocol.pool.session(&ep).await?;
    let timeout = protocol.pool.config().read_timeout;
    let namespaces = live.namespace_array.clone();
    let start = match (&start_address, &opts.start) {
        (Some(address), Some(text)) => crate::reader::node_id_of(address, &live)
            .map_err(|code| ReadError::Service(format!("start node {text}: {code}")))?,
        _ => NodeId::from(ObjectId::ObjectsFolder),
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
    // Nodes per Browse request: the server's MaxNodesPerBrowse, at most ours.
    let limit = read_attrs(
        &live,
        &[NodeId::from(
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
        )],
        &[AttributeId::Value],
        timeout,
    )
    .await?;
    let batch = match limit.first().and_then(|v| v.0.clone()) {
        Some(Variant::UInt32(n)) if n > 0 => (n as usize).min(BROWSE_BATCH),
        _ => BROWSE_BATCH,
    };

    let mut walk = Walk {
        out: Vec::new(),
        found: Vec::new(),
        seen: HashSet::from([start.clone()]),
        incomplete: Vec::new(),
        skipped_remote: 0,
        namespaces: &namespaces,
    };
    // (node, its index in `out` (None: the start node), depth, path)
    let mut frontier: VecDeque<(NodeId, Option<usize>, u32, Vec<String>)> =
        VecDeque::from([(start, None, 0, Vec::new())]);
    let mut truncated = false;
    'walk: while !frontier.is_empty() {
        let level: Vec<_> = frontier.drain(..).collect();
        for chunk in level.chunks(batch) {
            let depth = chunk[0].2 + 1;
            if depth > opts.depth {
                break 'walk;
            }
            let ids: Vec<NodeId> = chunk.iter().map(|c| c.0.clone()).collect();
            let budget = opts.max_nodes.saturating_sub(walk.out.len());
            let results = browse_all(&live, &ids, budget, timeout, &mut walk.incomplete).await?;
            for ((_, parent, _, path), refs) in chunk.iter().zip(results) {
                for r in refs {
                    let Some(id) = walk.local(&r) else { continue };
                    if walk.out.len() >= opts.max_nodes {
                        truncated = true;
                        break 'walk;
                    }
                    let index = walk.push(&r, id.clone(), *parent, depth, path);
                    if matches!(r.node_class, NodeClass::Object | NodeClass::Variable) {
                        let path = walk.out[index].path.clone();
                        frontier.push_back((id, Some(index), depth, path));
                    }
                }
            }
        }
    }
    let Walk {
        mut out,
        found,
        incomplete,
        skipped_remote,
        ..
    } = walk;
    describe_variables(&live, &mut out, &found, &namespaces, timeout).await?;
    Ok(Browsed {
        nodes: out,
        truncated,
        incomplete,
        skipped_remote,
        namespaces,
    })
}

/// What the walk has found so far.
struct Walk<'a> {
    out: Vec<BrowsedNode>,
    /// The node ids of `out`, in order.
    found: Vec<NodeId>,
    seen: HashSet<NodeId>,
    incomplete: Vec<String>,
    skipped_remote: usize,
    namespaces: &'a [String],
}

impl Walk<'_> {
    /// The reference's target as a node id of this server, if it is one
    /// not seen before (one on another server is counted and skipped).
    fn local(&mut self, r: &ReferenceDescription) -> Option<NodeId> {
        if r.node_id.server_index != 0 {
            self.skipped_remote += 1;
            return None;
        }
        let mut id = r.node_id.node_id.clone();
        if !r.node_id.namespace_uri.is_empty() {
            let uri = r.node_id.namespace_uri.as_ref();
            match self.namespaces.iter().position(|u| u == uri) {
                Some(i) => id.namespace = u16::try_from(i).ok()?,
                None => {
                    self.skipped_remote += 1;
                    return None;
                }
            }
        }
        self.seen.insert(id.clone()).then_some(id)
    }

    /// Adds a node; its index in `out`.
    fn push(
        &mut self,
        r: &ReferenceDescription,
        id: NodeId,
        parent: Option<usize>,
        depth: u32,
        path: &[String],
    ) -> usize {
        let name = r.display_name.text.to_string();
        let mut node_path = path.to_vec();
        node_path.push(name.clone());
        self.out.push(BrowsedNode {
            depth,
            parent,
            name,
            browse_name: format!("{}:{}", r.browse_name.namespace_index, r.browse_name.name),
            node_id: with_uri(&id, self.namespaces),
            node_class: format!("{:?}", r.node_class),
            data_type: None,
            readable: false,
            history_readable: false,
            historizing: false,
            path: node_path,
        });
        self.found.push(id);
        self.out.len() - 1
    }
}

/// The forward hierarchical references of each node, continuation points
/// followed until `budget` references were gathered for a node (then
/// released). A node the server could not browse (its status) is listed in
/// `incomplete`; one refused for lack of continuation points is browsed
/// again alone.
async fn browse_all(
    live: &Live,
    nodes: &[NodeId],
    budget: usize,
    timeout: Duration,
    incomplete: &mut Vec<String>,
) -> Result<Vec<Vec<ReferenceDescription>>, ReadError> {
    let description = |node_id: &NodeId| BrowseDescription {
        node_id: node_id.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE | NodeClassMask::METHOD)
            .bits(),
        result_mask: BrowseResultMask::All as u32,
    };
    let descriptions: Vec<BrowseDescription> = nodes.iter().map(description).collect();
    let results = bounded(timeout, live.session.browse(&descriptions, 1000, None)).await?;
    if results.len() != nodes.len() {
        return Err(ReadError::Service(format!(
            "Browse of {} nodes returned {} results",
            nodes.len(),
            results.len()
        )));
    }
    let mut out = Vec::with_capacity(results.len());
    for (node, r) in nodes.iter().zip(results) {
        let r = if r.status_code == StatusCode::BadNoContinuationPoints {
            // Alone, its continuation point is the only one.
            let again = bounded(
                timeout,
                live.session.browse(&[description(node)], 1000, None),
            )
            .await?;
            match again.into_iter().next() {
                Some(r) => r,
                None => {
                    incomplete.push(format!("{node}: no result"));
                    out.push(Vec::new());
                    continue;
                }
            }
        } else {
            r
        };
        if r.status_code.is_bad() {
            incomplete.push(format!("{node}: {}", r.status_code));
            out.push(Vec::new());
            continue;
        }
        out.push(follow(live, node, r, budget, timeout, incomplete).await?);
    }
    Ok(out)
}

/// A browse result's references, with those behind its continuation
/// points, up to `budget` (the rest released on the server).
async fn follow(
    live: &Live,
    node: &NodeId,
    mut r: BrowseResult,
    budget: usize,
    timeout: Duration,
    incomplete: &mut Vec<String>,
) -> Result<Vec<ReferenceDescription>, ReadError> {
    let mut refs = r.references.take().unwrap_or_default();
    let mut cp: ByteString = r.continuation_point;
    while !cp.is_null_or_empty() {
        if refs.len() >= budget {
            // Enough for the node cap: release the server's state.
            let _ = bounded(timeout, live.session.browse_next(true, &[cp])).await;
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
        if n.status_code.is_bad() {
            incomplete.push(format!("{node}: BrowseNext {}", n.status_code));
            return Ok(refs);
        }
        refs.extend(n.references.take().unwrap_or_default());
        cp = n.continuation_point;
    }
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
        if dvs.len() != chunk.len() {
            return Err(ReadError::Service(format!(
                "Read of {} attributes returned {} values",
                chunk.len(),
                dvs.len()
            )));
        }
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

/// `id` as a device's `nodes` takes it: with its namespace URI when that
/// reads back as the same node (a URI without `;`, listed once), else with
/// its index.
fn with_uri(id: &NodeId, namespaces: &[String]) -> String {
    let ident = match &id.identifier {
        Identifier::Numeric(n) => format!("i={n}"),
        Identifier::String(s) => format!("s={s}"),
        Identifier::Guid(g) => format!("g={g}"),
        Identifier::ByteString(b) => format!("b={}", b.as_base64()),
    };
    match id.namespace {
        0 => ident,
        ns => match namespaces.get(usize::from(ns)).filter(|u| {
            !u.is_empty() && !u.contains(';') && namespaces.iter().filter(|o| o == u).count() == 1
        }) {
            Some(uri) => format!("nsu={uri};{ident}"),
            None => format!("ns={ns};{ident}"),
        },
    }
}

//! The async-opcua `NodeManager` of a device server: plugs [`crate::nodes::DeviceSpace`]
//! into the server in place of the (heavy) generated core address space, serves its
//! monitored items through [`crate::monitor`] and its HistoryRead through
//! [`crate::history`].

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use opcua::types::{
    AttributeId, DateTime, MonitoringMode, NodeClass, NodeId, NumericRange, ReadRawModifiedDetails,
    ReferenceTypeId, StatusCode, TimestampsToReturn,
};
use opcua_nodes::DefaultTypeTree;
use opcua_server::{
    diagnostics::NamespaceMetadata,
    node_manager::{
        BrowseNode, HistoryNode, MonitoredItemRef, MonitoredItemUpdateRef, NodeManager,
        ParsedReadValueId, ReadNode, RequestContext, ServerContext,
    },
    CreateMonitoredItem, ServerStatusWrapper,
};
use tokio_util::sync::CancellationToken;

use crate::{
    history, model,
    monitor::{Monitor, NewItem, Source},
    nodes::{DeviceSpace, Node, StatusSnapshot, SHIFTED_NAMESPACE_URI},
    stats::DeviceCounters,
};

/// Counters shared by every device server of a simulator.
#[derive(Debug, Default)]
pub struct Counters {
    /// Read service calls of at least one of the device's tags.
    pub reads: AtomicU64,
    /// Node values/attributes answered by those calls.
    pub nodes_read: AtomicU64,
}

/// Injected misbehaviour of the Read service (see [`crate::Fault`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadFaults {
    /// Sleep this long before answering every Read and HistoryRead (`Fault::Slow`).
    pub delay: Option<Duration>,
    /// Answer every third Read with `BadCommunicationError` for all nodes (`Fault::BadStatus`).
    pub bad_status: bool,
}

/// Node manager owning namespace 0 and the device namespace of one simulated device.
pub struct DeviceNodeManager {
    space: DeviceSpace,
    status: Arc<ServerStatusWrapper>,
    counters: Arc<Counters>,
    device: Arc<DeviceCounters>,
    faults: ReadFaults,
    monitor: Monitor,
}

impl DeviceNodeManager {
    /// Builder closure for `ServerBuilder::with_node_manager`; the sampler of monitored
    /// items stops with `token` (the server's) or with the node manager.
    pub(crate) fn builder(
        space: DeviceSpace,
        counters: Arc<Counters>,
        device: Arc<DeviceCounters>,
        faults: ReadFaults,
        token: CancellationToken,
    ) -> impl FnOnce(ServerContext) -> DeviceNodeManager {
        move |ctx: ServerContext| DeviceNodeManager {
            monitor: Monitor::new(space.device, space.period_ms, device.clone(), token),
            space,
            status: ctx.status.clone(),
            counters,
            device,
            faults,
        }
    }
}

/// Live server status for the namespace 0 variables.
fn snapshot(status: &ServerStatusWrapper, service_level: u8) -> StatusSnapshot {
    StatusSnapshot {
        state: status.state(),
        start_time: status.start_time(),
        build_info: status.build_info(),
        service_level,
    }
}

/// The current instant truncated to whole milliseconds.
pub fn now_ms() -> DateTime {
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    chrono::DateTime::from_timestamp_millis(ms)
        .map(DateTime::from)
        .unwrap_or_else(|| DateTime::from(now))
}

#[async_trait]
impl NodeManager for DeviceNodeManager {
    fn owns_node(&self, id: &NodeId) -> bool {
        self.space.owns(id)
    }

    fn name(&self) -> &str {
        "opc-loadgen-device"
    }

    fn namespaces_for_user(&self, _context: &RequestContext) -> Vec<NamespaceMetadata> {
        self.space
            .namespace_array()
            .into_iter()
            .enumerate()
            .map(|(i, uri)| NamespaceMetadata {
                namespace_uri: uri,
                namespace_index: u16::try_from(i).unwrap_or(u16::MAX),
                ..Default::default()
            })
            .collect()
    }

    async fn init(&self, type_tree: &mut DefaultTypeTree, context: ServerContext) {
        let namespaces = type_tree.namespaces_mut();
        namespaces.add_namespace(&self.space.application_uri);
        for i in model::DEVICE_NAMESPACE_INDEX..self.space.device_namespace {
            namespaces.add_namespace(&format!("{SHIFTED_NAMESPACE_URI}:{i}"));
        }
        namespaces.add_namespace(model::NAMESPACE_URI);
        let status = self.status.clone();
        let level = context.info.service_level.clone();
        let source = Source {
            space: self.space.clone(),
            status: Box::new(move || snapshot(&status, level.load(Ordering::Relaxed))),
        };
        self.monitor.start(source, context.subscriptions.clone());
    }

    async fn read(
        &self,
        context: &RequestContext,
        _max_age: f64,
        timestamps_to_return: TimestampsToReturn,
        nodes_to_read: &mut [&mut ReadNode],
    ) -> Result<(), StatusCode> {
        // A Read of server nodes only (a keep-alive, the namespace array,
        // the operation limits) is not a read of the device's tags: not
        // counted, never made Bad; slow all the same.
        let of_tags = nodes_to_read
            .iter()
            .any(|n| n.node().node_id.namespace != 0);
        let nth = if of_tags {
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            self.counters
                .nodes_read
                .fetch_add(nodes_to_read.len() as u64, Ordering::Relaxed);
            Some(self.device.reads.fetch_add(1, Ordering::Relaxed))
        } else {
            None
        };
        if let Some(delay) = self.faults.delay {
            tokio::time::sleep(delay).await;
        }
        if self.faults.bad_status && nth.is_some_and(|n| n % 3 == 2) {
            for node in nodes_to_read.iter_mut() {
                node.set_error(StatusCode::BadCommunicationError);
            }
            return Ok(());
        }
        let now = now_ms();
        let status = || {
            snapshot(
                &self.status,
                context.info.service_level.load(Ordering::Relaxed),
            )
        };
        for node in nodes_to_read.iter_mut() {
            let item = node.node();
            let Some(resolved) = self.space.resolve(&item.node_id) else {
                node.set_error(StatusCode::BadNodeIdUnknown);
                continue;
            };
            let result = self
                .space
                .read(resolved, item, timestamps_to_return, now, &status);
            node.set_result(result);
        }
        Ok(())
    }

    /// HistoryRead, Read Raw: see [`crate::history`]. Counted per device
    /// (`history_reads`, `history_values`); delayed by a `slow` fault like a Read.
    async fn history_read_raw_modified(
        &self,
        _context: &RequestContext,
        details: &ReadRawModifiedDetails,
        nodes: &mut [&mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        self.device.history_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(delay) = self.faults.delay {
            tokio::time::sleep(delay).await;
        }
        let now = now_ms().as_chrono().timestamp_millis();
        let values = history::read_raw(&self.space, details, nodes, timestamps_to_return, now);
        self.device
            .history_values
            .fetch_add(values, Ordering::Relaxed);
        Ok(())
    }

    /// Each item: the node resolved as a Read does (unknown: `BadNodeIdUnknown`, an
    /// attribute the node lacks: `BadAttributeIdInvalid`), its initial value a Read of
    /// the whole value with both timestamps (bad tags: their Bad status). With a change
    /// rate, a tag's Value item samples at most every step period (its sampling interval
    /// is revised down to the period) so that no step change is held back.
    async fn create_monitored_items(
        &self,
        context: &RequestContext,
        items: &mut [&mut CreateMonitoredItem],
    ) -> Result<(), StatusCode> {
        if !self.space.subscriptions {
            return Err(StatusCode::BadServiceUnsupported);
        }
        let now = now_ms();
        let status = || {
            snapshot(
                &self.status,
                context.info.service_level.load(Ordering::Relaxed),
            )
        };
        for item in items.iter_mut() {
            let target = item.item_to_monitor();
            let Some(node) = self.space.resolve(&target.node_id) else {
                item.set_status(StatusCode::BadNodeIdUnknown);
                continue;
            };
            // The server applies the index range to every value it is handed.
            let whole = ParsedReadValueId {
                index_range: NumericRange::None,
                ..target.clone()
            };
            let initial = self
                .space
                .read(node, &whole, TimestampsToReturn::Both, now, &status);
            if initial.status == Some(StatusCode::BadAttributeIdInvalid) {
                item.set_status(StatusCode::BadAttributeIdInvalid);
                continue;
            }
            if let (Some(period), Node::Tag(_), AttributeId::Value) =
                (self.space.period_ms, node, whole.attribute_id)
            {
                item.revise_sampling_interval(period as f64);
            }
            self.monitor.add(NewItem {
                handle: item.handle(),
                node_id: &whole.node_id,
                attribute: whole.attribute_id,
                node,
                sampling_interval_ms: item.sampling_interval(),
                mode: item.monitoring_mode(),
                initial: &initial,
            });
            item.set_initial_value(initial);
            item.set_status(StatusCode::Good);
        }
        Ok(())
    }

    async fn modify_monitored_items(
        &self,
        _context: &RequestContext,
        items: &[&MonitoredItemUpdateRef],
    ) {
        for item in items.iter().filter(|i| i.status_code().is_good()) {
            self.monitor.set_interval(
                item.handle(),
                item.node_id(),
                item.update().revised_sampling_interval,
            );
        }
    }

    async fn set_monitoring_mode(
        &self,
        _context: &RequestContext,
        mode: MonitoringMode,
        items: &[&MonitoredItemRef],
    ) {
        for item in items {
            self.monitor.set_mode(item.handle(), item.node_id(), mode);
        }
    }

    async fn delete_monitored_items(&self, _context: &RequestContext, items: &[&MonitoredItemRef]) {
        for item in items {
            self.monitor.remove(item.handle(), item.node_id());
        }
    }

    /// Browse: the Objects folder organizes the device's tags (so an
    /// operator tool can find them); every other node has no children.
    /// References beyond the client's per-node maximum come back through a
    /// continuation point.
    async fn browse(
        &self,
        _context: &RequestContext,
        nodes_to_browse: &mut [BrowseNode],
    ) -> Result<(), StatusCode> {
        for node in nodes_to_browse.iter_mut() {
            let Some(resolved) = self.space.resolve(node.node_id()) else {
                node.set_status(StatusCode::BadNodeIdUnknown);
                continue;
            };
            node.set_status(StatusCode::Good);
            // Namespace 0, numeric: Organizes (35), or with subtypes
            // HierarchicalReferences (33) and References (31); or any.
            let t = node.reference_type_id();
            let numeric = match (&t.identifier, t.namespace) {
                (opcua::types::Identifier::Numeric(n), 0) => Some(*n),
                _ => None,
            };
            let hierarchical = t.is_null()
                || numeric == Some(ReferenceTypeId::Organizes as u32)
                || (node.include_subtypes()
                    && matches!(
                        numeric,
                        Some(n) if n == ReferenceTypeId::HierarchicalReferences as u32
                            || n == ReferenceTypeId::References as u32
                    ));
            if resolved != Node::Objects
                || !hierarchical
                || !node.allows_forward()
                || !node.allows_node_class(NodeClass::Variable)
            {
                continue;
            }
            let mut next = node.take_continuation_point::<u32>().map_or(0, |b| *b);
            while next < self.space.tags && node.remaining() > 0 {
                node.add_unchecked(self.space.tag_reference(next));
                next += 1;
            }
            if next < self.space.tags {
                node.set_next_continuation_point(Box::new(next));
            }
        }
        Ok(())
    }
}

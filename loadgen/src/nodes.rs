//! The virtual address space of one simulated device: which node ids exist, their
//! attributes, and how a Read of each is answered, without storing any node.
//!
//! Nothing is kept per node: a node id is parsed back into a [`Node`] on every read and
//! tag values are computed from [`crate::model::value_at`] (or, with a change rate, from
//! the step model of [`crate::steps`]), which is what keeps a device server down to a few
//! kilobytes.

use opcua::types::{
    AttributeId, DataTypeId, DataValue, DateTime, ExtensionObject, Identifier, LocalizedText,
    NodeClass, NodeId, NumericRange, QualifiedName, ReferenceDescription, ReferenceTypeId,
    ServerState, ServerStatusDataType, StatusCode, TimestampsToReturn, UAString, VariableId,
    VariableTypeId, Variant,
};

use opcua_server::node_manager::ParsedReadValueId;

use crate::{
    history::{HistorySettings, ACCESS_CURRENT_READ},
    model::{self, ModelValue, TagKind, DEVICE_NAMESPACE_INDEX},
    steps,
};

/// URI of the OPC UA base namespace (index 0).
pub const OPC_UA_NAMESPACE_URI: &str = "http://opcfoundation.org/UA/";

/// Prefix of the placeholder namespace URIs a shifting restart inserts before
/// [`model::NAMESPACE_URI`].
pub const SHIFTED_NAMESPACE_URI: &str = "urn:opc-loadgen:shifted";

/// The namespace 0 variables every simulated server serves (numeric ids in namespace 0).
pub const SERVED_NS0_VARIABLES: [VariableId; 12] = [
    VariableId::Server_ServerArray,
    VariableId::Server_NamespaceArray,
    VariableId::Server_ServerStatus,
    VariableId::Server_ServerStatus_StartTime,
    VariableId::Server_ServerStatus_CurrentTime,
    VariableId::Server_ServerStatus_State,
    VariableId::Server_ServiceLevel,
    VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
    VariableId::HistoryServerCapabilities_AccessHistoryDataCapability,
    VariableId::HistoryServerCapabilities_MaxReturnDataValues,
];

/// A node of the virtual address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The Objects folder (`i=85`): browsing it lists the device's tags.
    Objects,
    /// One of [`SERVED_NS0_VARIABLES`].
    Server(VariableId),
    /// Device tag with this index (`ns=2;s=TagNNN`).
    Tag(u32),
}

/// Per-server state needed to answer reads.
#[derive(Debug, Clone)]
pub struct DeviceSpace {
    /// Device index, input of the value model.
    pub device: u32,
    /// Number of tags; `Tag000` .. `Tag{tags-1}` exist.
    pub tags: u32,
    /// ApplicationUri of the server (namespace index 1).
    pub application_uri: String,
    /// Value served as `MaxNodesPerRead`.
    pub max_nodes_per_read: u32,
    /// Value served as `MaxMonitoredItemsPerCall` (i=11714).
    pub max_monitored_items_per_call: u32,
    /// Step period in ms with a change rate ([`crate::steps`]); `None`: tag values are
    /// [`model::value_at`] the instant of the read.
    pub period_ms: Option<i64>,
    /// Whether monitored items are accepted (see [`crate::SimConfig::subscriptions`]).
    pub subscriptions: bool,
    /// Namespace index of the device tags: [`DEVICE_NAMESPACE_INDEX`], or more after a
    /// restart that shifted the namespace array (placeholder URIs fill the gap).
    pub device_namespace: u16,
    /// How the device serves HistoryRead (see [`crate::history`]).
    pub history: HistorySettings,
}

/// Live server status inputs, read from the running server.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    /// Server state.
    pub state: ServerState,
    /// Server start time.
    pub start_time: DateTime,
    /// Build information.
    pub build_info: opcua::types::BuildInfo,
    /// Service level, 0..=255.
    pub service_level: u8,
}

impl DeviceSpace {
    /// Whether a node id falls in a namespace a device with the initial namespace array
    /// answers for (0 or 2); see [`DeviceSpace::owns`] for this device.
    pub fn owns_namespace(id: &NodeId) -> bool {
        id.namespace == 0 || id.namespace == DEVICE_NAMESPACE_INDEX
    }

    /// Whether a node id falls in a namespace this device answers for: 0 and 2 up to the
    /// device namespace (ids in a placeholder namespace are answered `BadNodeIdUnknown`).
    pub fn owns(&self, id: &NodeId) -> bool {
        id.namespace == 0
            || (DEVICE_NAMESPACE_INDEX..=self.device_namespace).contains(&id.namespace)
    }

    /// The namespace array: `[OPC UA, application uri, NAMESPACE_URI]`, with placeholder
    /// URIs (`urn:opc-loadgen:shifted:N`) before `NAMESPACE_URI` when the device namespace
    /// was shifted.
    pub fn namespace_array(&self) -> Vec<String> {
        let mut array = vec![
            OPC_UA_NAMESPACE_URI.to_string(),
            self.application_uri.clone(),
        ];
        for i in DEVICE_NAMESPACE_INDEX..self.device_namespace {
            array.push(format!("{SHIFTED_NAMESPACE_URI}:{i}"));
        }
        array.push(model::NAMESPACE_URI.to_string());
        array
    }

    /// Resolve a node id to a node of this device, if it exists.
    pub fn resolve(&self, id: &NodeId) -> Option<Node> {
        match (id.namespace, &id.identifier) {
            (0, Identifier::Numeric(85)) => Some(Node::Objects),
            (0, Identifier::Numeric(n)) => SERVED_NS0_VARIABLES
                .iter()
                .find(|v| **v as u32 == *n)
                .map(|v| Node::Server(*v)),
            (ns, Identifier::String(s)) if ns == self.device_namespace => {
                let tag = model::tag_index(s.value().as_deref()?)?;
                (tag < self.tags).then_some(Node::Tag(tag))
            }
            _ => None,
        }
    }

    /// Answer a read of `item` (node id, attribute, index range), already resolved to
    /// `node`, at instant `now` (whole milliseconds).
    pub fn read(
        &self,
        node: Node,
        item: &ParsedReadValueId,
        timestamps: TimestampsToReturn,
        now: DateTime,
        status: &dyn Fn() -> StatusSnapshot,
    ) -> DataValue {
        let node_id = &item.node_id;
        if node == Node::Objects {
            let v: Variant = match item.attribute_id {
                AttributeId::NodeId => node_id.clone().into(),
                AttributeId::NodeClass => (NodeClass::Object as i32).into(),
                AttributeId::BrowseName => QualifiedName::new(0, "Objects").into(),
                AttributeId::DisplayName => LocalizedText::new("", "Objects").into(),
                AttributeId::EventNotifier => 0u8.into(),
                _ => return status_only(StatusCode::BadAttributeIdInvalid),
            };
            return DataValue {
                value: Some(v),
                status: Some(StatusCode::Good),
                ..Default::default()
            };
        }
        let index_range = &item.index_range;
        let (data_type, value_rank) = data_type_of(node);
        let attr_value: Variant = match item.attribute_id {
            AttributeId::Value => {
                return self.read_value(node, index_range, timestamps, now, status);
            }
            AttributeId::NodeId => node_id.clone().into(),
            AttributeId::NodeClass => (NodeClass::Variable as i32).into(),
            AttributeId::BrowseName => {
                QualifiedName::new(node_id.namespace, browse_name(node)).into()
            }
            AttributeId::DisplayName | AttributeId::Description => {
                LocalizedText::new("", &browse_name(node)).into()
            }
            AttributeId::WriteMask | AttributeId::UserWriteMask => 0u32.into(),
            AttributeId::DataType => NodeId::from(data_type).into(),
            AttributeId::ValueRank => value_rank.into(),
            AttributeId::ArrayDimensions => {
                if value_rank == 1 {
                    vec![0u32].into()
                } else {
                    Variant::Empty
                }
            }
            AttributeId::AccessLevel | AttributeId::UserAccessLevel => match node {
                Node::Tag(_) => self.history.tag_access_level().into(),
                _ => ACCESS_CURRENT_READ.into(),
            },
            AttributeId::MinimumSamplingInterval => 0.0f64.into(),
            AttributeId::Historizing => {
                (matches!(node, Node::Tag(_)) && self.history.enabled).into()
            }
            _ => return status_only(StatusCode::BadAttributeIdInvalid),
        };
        DataValue {
            value: Some(attr_value),
            status: Some(StatusCode::Good),
            ..Default::default()
        }
    }

    /// The whole Value of `node` (no index range) at `now`, with both timestamps, as a
    /// Read returns it: what monitored items are sampled with.
    pub fn sample_value(
        &self,
        node: Node,
        now: DateTime,
        status: &dyn Fn() -> StatusSnapshot,
    ) -> DataValue {
        self.read_value(
            node,
            &NumericRange::None,
            TimestampsToReturn::Both,
            now,
            status,
        )
    }

    fn read_value(
        &self,
        node: Node,
        index_range: &NumericRange,
        timestamps: TimestampsToReturn,
        now: DateTime,
        status: &dyn Fn() -> StatusSnapshot,
    ) -> DataValue {
        // The source timestamp: now, or the start of the tag's current step.
        let mut source_ts = now;
        let value = match node {
            Node::Tag(tag) if model::is_bad(tag) => None,
            Node::Tag(tag) => {
                let at_ms = now.as_chrono().timestamp_millis();
                match self.period_ms {
                    Some(period) => {
                        let (start, value) = steps::step_at(self.device, tag, at_ms, period);
                        source_ts = datetime_ms(start).unwrap_or(now);
                        Some(model_to_variant(value))
                    }
                    None => Some(model_to_variant(model::value_at(self.device, tag, at_ms))),
                }
            }
            Node::Server(id) => Some(self.server_value(id, now, &status())),
            Node::Objects => None,
        };
        let (value, code) = match value {
            None => (None, StatusCode::from(model::BAD_SENSOR_FAILURE)),
            Some(v) if matches!(index_range, NumericRange::None) => (Some(v), StatusCode::Good),
            Some(v) => match v.range_of(index_range) {
                Ok(v) => (Some(v), StatusCode::Good),
                Err(e) => (None, e),
            },
        };
        let (source, server) = match timestamps {
            TimestampsToReturn::Source => (Some(source_ts), None),
            TimestampsToReturn::Server => (None, Some(now)),
            TimestampsToReturn::Both => (Some(source_ts), Some(now)),
            TimestampsToReturn::Neither | TimestampsToReturn::Invalid => (None, None),
        };
        DataValue {
            value,
            status: Some(code),
            source_timestamp: source,
            server_timestamp: server,
            ..Default::default()
        }
    }

    fn server_value(&self, id: VariableId, now: DateTime, status: &StatusSnapshot) -> Variant {
        match id {
            VariableId::Server_ServerArray => vec![self.application_uri.clone()].into(),
            VariableId::Server_NamespaceArray => self.namespace_array().into(),
            VariableId::Server_ServerStatus => {
                ExtensionObject::from_message(ServerStatusDataType {
                    start_time: status.start_time,
                    current_time: now,
                    state: status.state,
                    build_info: status.build_info.clone(),
                    seconds_till_shutdown: 0,
                    shutdown_reason: LocalizedText::null(),
                })
                .into()
            }
            VariableId::Server_ServerStatus_StartTime => status.start_time.into(),
            VariableId::Server_ServerStatus_CurrentTime => now.into(),
            VariableId::Server_ServerStatus_State => (status.state as i32).into(),
            VariableId::Server_ServiceLevel => status.service_level.into(),
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead => {
                self.max_nodes_per_read.into()
            }
            VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall => {
                self.max_monitored_items_per_call.into()
            }
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData => {
                self.history.max_nodes_per_read.into()
            }
            VariableId::HistoryServerCapabilities_AccessHistoryDataCapability => {
                self.history.enabled.into()
            }
            VariableId::HistoryServerCapabilities_MaxReturnDataValues => {
                self.history.max_values_per_call.into()
            }
            _ => Variant::Empty,
        }
    }

    /// The reference from the Objects folder to tag `tag` (`Organizes`).
    pub fn tag_reference(&self, tag: u32) -> ReferenceDescription {
        let name = model::node_name(tag);
        ReferenceDescription {
            reference_type_id: ReferenceTypeId::Organizes.into(),
            is_forward: true,
            node_id: NodeId::new(self.device_namespace, name.as_str()).into(),
            browse_name: QualifiedName::new(self.device_namespace, name.as_str()),
            display_name: LocalizedText::new("", &name),
            node_class: NodeClass::Variable,
            type_definition: NodeId::from(VariableTypeId::BaseDataVariableType).into(),
        }
    }
}

/// The OPC UA date and time of `ms` milliseconds since the Unix epoch (`None` out of
/// chrono's range).
pub fn datetime_ms(ms: i64) -> Option<DateTime> {
    chrono::DateTime::from_timestamp_millis(ms).map(DateTime::from)
}

fn status_only(code: StatusCode) -> DataValue {
    DataValue {
        status: Some(code),
        ..Default::default()
    }
}

fn browse_name(node: Node) -> String {
    match node {
        Node::Objects => "Objects".to_string(),
        Node::Tag(tag) => model::node_name(tag),
        Node::Server(id) => {
            let name = format!("{id:?}");
            name.rsplit('_').next().unwrap_or(&name).to_string()
        }
    }
}

/// OPC UA data type and ValueRank of a tag kind.
pub fn kind_data_type(kind: TagKind) -> (DataTypeId, i32) {
    match kind {
        TagKind::Double => (DataTypeId::Double, -1),
        TagKind::Float => (DataTypeId::Float, -1),
        TagKind::Int32 => (DataTypeId::Int32, -1),
        TagKind::UInt16 => (DataTypeId::UInt16, -1),
        TagKind::Boolean => (DataTypeId::Boolean, -1),
        TagKind::String => (DataTypeId::String, -1),
        TagKind::DateTime => (DataTypeId::DateTime, -1),
        TagKind::DoubleArray => (DataTypeId::Double, 1),
    }
}

fn data_type_of(node: Node) -> (DataTypeId, i32) {
    match node {
        Node::Objects => (DataTypeId::BaseDataType, -1),
        Node::Tag(tag) => kind_data_type(model::tag_kind(tag)),
        Node::Server(id) => match id {
            VariableId::Server_ServerArray | VariableId::Server_NamespaceArray => {
                (DataTypeId::String, 1)
            }
            VariableId::Server_ServerStatus => (DataTypeId::ServerStatusDataType, -1),
            VariableId::Server_ServerStatus_StartTime
            | VariableId::Server_ServerStatus_CurrentTime => (DataTypeId::UtcTime, -1),
            VariableId::Server_ServerStatus_State => (DataTypeId::ServerState, -1),
            VariableId::Server_ServiceLevel => (DataTypeId::Byte, -1),
            VariableId::HistoryServerCapabilities_AccessHistoryDataCapability => {
                (DataTypeId::Boolean, -1)
            }
            _ => (DataTypeId::UInt32, -1),
        },
    }
}

/// Convert a model value to the OPC UA variant a read returns.
pub fn model_to_variant(value: ModelValue) -> Variant {
    match value {
        ModelValue::Double(v) => v.into(),
        ModelValue::Float(v) => v.into(),
        ModelValue::Int32(v) => v.into(),
        ModelValue::UInt16(v) => v.into(),
        ModelValue::Boolean(v) => v.into(),
        ModelValue::String(v) => UAString::from(v).into(),
        ModelValue::DateTime(v) => DateTime::from(v).into(),
        ModelValue::DoubleArray(v) => v.into(),
    }
}

#[cfg(test)]
mod tests;

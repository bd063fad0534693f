//! Unit tests of the virtual address space.

use super::*;

fn space() -> DeviceSpace {
    DeviceSpace {
        device: 3,
        tags: 20,
        application_uri: "urn:x".into(),
        max_nodes_per_read: 1000,
        max_monitored_items_per_call: 1000,
        period_ms: None,
        subscriptions: true,
        device_namespace: DEVICE_NAMESPACE_INDEX,
        history: HistorySettings::default(),
    }
}

#[test]
fn shifted_namespace() {
    let s = DeviceSpace {
        device_namespace: 3,
        ..space()
    };
    assert_eq!(s.resolve(&NodeId::new(3, "Tag019")), Some(Node::Tag(19)));
    assert_eq!(s.resolve(&NodeId::new(2, "Tag019")), None);
    assert!(s.owns(&NodeId::new(2, "Tag019")));
    assert!(!s.owns(&NodeId::new(4, "Tag019")));
    assert_eq!(
        s.namespace_array(),
        [
            OPC_UA_NAMESPACE_URI,
            "urn:x",
            "urn:opc-loadgen:shifted:2",
            model::NAMESPACE_URI
        ]
    );
}

#[test]
fn resolves_served_nodes_only() {
    let s = space();
    assert_eq!(s.resolve(&NodeId::new(2, "Tag019")), Some(Node::Tag(19)));
    assert_eq!(s.resolve(&NodeId::new(2, "Tag020")), None);
    assert_eq!(s.resolve(&NodeId::new(1, "Tag001")), None);
    assert_eq!(
        s.resolve(&NodeId::new(0, 2255u32)),
        Some(Node::Server(VariableId::Server_NamespaceArray))
    );
    assert_eq!(
        s.resolve(&NodeId::new(0, 11705u32)),
        Some(Node::Server(
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
        ))
    );
    // The Objects folder (browsed by the operator tools); not the root.
    assert_eq!(s.resolve(&NodeId::new(0, 85u32)), Some(Node::Objects));
    assert_eq!(s.resolve(&NodeId::new(0, 84u32)), None);
}

fn snapshot() -> StatusSnapshot {
    StatusSnapshot {
        state: ServerState::Running,
        start_time: DateTime::now(),
        build_info: Default::default(),
        service_level: 255,
    }
}

#[test]
fn stepped_reads_carry_the_step_start() {
    let s = DeviceSpace {
        period_ms: Some(500),
        ..space()
    };
    let now_ms = 1_767_225_600_123;
    let now = datetime_ms(now_ms).unwrap();
    for tag in [0, 2, 5, 15] {
        let dv = s.sample_value(Node::Tag(tag), now, &snapshot);
        let (start, value) = steps::step_at(3, tag, now_ms, 500);
        assert_eq!(dv.value, Some(model_to_variant(value)), "tag {tag}");
        assert_eq!(dv.source_timestamp, datetime_ms(start));
        assert_eq!(dv.server_timestamp, Some(now));
        assert_eq!(dv.status, Some(StatusCode::Good));
    }
    let bad = s.sample_value(Node::Tag(7), now, &snapshot);
    assert_eq!(bad.value, None);
    assert_eq!(
        bad.status,
        Some(StatusCode::from(model::BAD_SENSOR_FAILURE))
    );
    // Without a change rate: the model at the instant of the read.
    let dv = space().sample_value(Node::Tag(2), now, &snapshot);
    assert_eq!(
        dv.value,
        Some(model_to_variant(model::value_at(3, 2, now_ms)))
    );
    assert_eq!(dv.source_timestamp, Some(now));
    let limit = s.sample_value(
        Node::Server(
            VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        ),
        now,
        &snapshot,
    );
    assert_eq!(limit.value, Some(Variant::UInt32(1000)));
}

#[test]
fn browse_names() {
    assert_eq!(browse_name(Node::Tag(3)), "Tag003");
    assert_eq!(
        browse_name(Node::Server(VariableId::Server_NamespaceArray)),
        "NamespaceArray"
    );
}

#[test]
fn history_attributes_and_capabilities() {
    let attr = |s: &DeviceSpace, node: Node, id: NodeId, attribute: AttributeId| {
        let item = ParsedReadValueId {
            node_id: id,
            attribute_id: attribute,
            index_range: NumericRange::None,
            data_encoding: Default::default(),
        };
        s.read(
            node,
            &item,
            TimestampsToReturn::Both,
            DateTime::now(),
            &snapshot,
        )
        .value
    };
    let tag = NodeId::new(2, "Tag002");
    let historized = space();
    let plain = DeviceSpace {
        history: HistorySettings {
            enabled: false,
            ..HistorySettings::default()
        },
        ..space()
    };
    for (s, level, historizing) in [(&historized, 5u8, true), (&plain, 1u8, false)] {
        for a in [AttributeId::AccessLevel, AttributeId::UserAccessLevel] {
            assert_eq!(
                attr(s, Node::Tag(2), tag.clone(), a),
                Some(Variant::Byte(level))
            );
        }
        assert_eq!(
            attr(s, Node::Tag(2), tag.clone(), AttributeId::Historizing),
            Some(Variant::Boolean(historizing))
        );
        let capability = VariableId::HistoryServerCapabilities_AccessHistoryDataCapability;
        assert_eq!(
            s.resolve(&NodeId::new(0, capability as u32)),
            Some(Node::Server(capability))
        );
        let v = s.sample_value(Node::Server(capability), DateTime::now(), &snapshot);
        assert_eq!(v.value, Some(Variant::Boolean(historizing)));
    }
    let status = VariableId::Server_ServerStatus_State;
    let level = attr(
        &historized,
        Node::Server(status),
        NodeId::new(0, status as u32),
        AttributeId::AccessLevel,
    );
    assert_eq!(level, Some(Variant::Byte(1)));
    for (id, expected) in [
        (
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
            100u32,
        ),
        (
            VariableId::HistoryServerCapabilities_MaxReturnDataValues,
            1000,
        ),
    ] {
        let v = historized.sample_value(Node::Server(id), DateTime::now(), &snapshot);
        assert_eq!(v.value, Some(Variant::UInt32(expected)), "{id:?}");
    }
}

//! End-to-end: start a few simulated devices and read them with the async-opcua client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{str::FromStr, sync::Arc, time::Duration};

use opc_loadgen::{
    model::{self, ModelValue, TagKind},
    nodes::model_to_variant,
    SimConfig, Simulator,
};
use opcua::{
    client::{ClientBuilder, IdentityToken, Session},
    crypto::SecurityPolicy,
    types::{
        AttributeId, DataTypeId, DataValue, EndpointDescription, MessageSecurityMode, NodeId,
        ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy, Variant,
    },
};

struct Conn {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<opcua::types::StatusCode>,
    _pki: tempfile::TempDir,
}

async fn connect(url: &str) -> Conn {
    let pki = tempfile::tempdir().unwrap();
    let mut client = ClientBuilder::new()
        .application_name("opc-loadgen test")
        .application_uri("urn:opc-loadgen:test")
        .create_sample_keypair(false)
        .trust_server_certs(true)
        .pki_dir(pki.path())
        .session_retry_limit(2)
        .max_array_length(100_000)
        .max_message_size(64 * 1024 * 1024)
        .max_chunk_count(4096)
        .client()
        .unwrap();
    let endpoint: EndpointDescription = (
        url,
        SecurityPolicy::None.to_uri(),
        MessageSecurityMode::None,
        UserTokenPolicy::anonymous(),
    )
        .into();
    let (session, event_loop) = client
        .connect_to_endpoint_directly(endpoint, IdentityToken::Anonymous)
        .unwrap();
    let event_loop = event_loop.spawn();
    assert!(
        tokio::time::timeout(Duration::from_secs(20), session.wait_for_connection())
            .await
            .unwrap(),
        "no connection to {url}"
    );
    Conn {
        session,
        event_loop,
        _pki: pki,
    }
}

impl Conn {
    async fn read(&self, ids: &[ReadValueId]) -> Result<Vec<DataValue>, StatusCode> {
        self.session
            .read(ids, TimestampsToReturn::Both, 0.0)
            .await
            .map_err(|e| e.status())
    }

    async fn close(self) {
        self.session.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.event_loop).await;
    }
}

fn attr(node: &NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id: node.clone(),
        attribute_id: attribute as u32,
        ..Default::default()
    }
}

fn value_ids(ids: &[String]) -> Vec<ReadValueId> {
    ids.iter()
        .map(|s| ReadValueId::from(NodeId::from_str(s).unwrap()))
        .collect()
}

fn ms(dv: &DataValue) -> i64 {
    dv.source_timestamp.unwrap().as_chrono().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_match_the_model() {
    let sim = Simulator::start(SimConfig {
        devices: 3,
        tags: 20,
        first_device: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.devices().len(), 3);
    assert_eq!(sim.devices()[1].id, "dev-00006");
    assert_eq!(sim.devices()[1].node_ids[7], "ns=2;s=Tag007");

    for dev in sim.devices() {
        let conn = connect(&dev.endpoint_url).await;

        // Namespace 0 server variables.
        let ns0: Vec<ReadValueId> = [2255u32, 2259, 11705, 2256, 2258]
            .iter()
            .map(|i| ReadValueId::from(NodeId::new(0, *i)))
            .collect();
        let r = conn.read(&ns0).await.unwrap();
        let nss = match &r[0].value {
            Some(Variant::Array(a)) => a
                .values
                .iter()
                .map(|v| match v {
                    Variant::String(s) => s.to_string(),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("namespace array: {other:?}"),
        };
        assert_eq!(nss.len(), 3);
        assert_eq!(nss[0], "http://opcfoundation.org/UA/");
        assert_eq!(nss[1], format!("urn:opc-loadgen:{}", dev.id));
        assert_eq!(nss[2], model::NAMESPACE_URI);
        assert_eq!(r[1].value, Some(Variant::Int32(0)), "state Running");
        assert_eq!(r[2].value, Some(Variant::UInt32(1000)));
        assert!(
            matches!(r[3].value, Some(Variant::ExtensionObject(_))),
            "{:?}",
            r[3]
        );
        assert!(matches!(r[4].value, Some(Variant::DateTime(_))));

        // Tags: values equal the model at the returned source timestamp.
        let r = conn.read(&value_ids(&dev.node_ids)).await.unwrap();
        assert_eq!(r.len(), 20);
        for (tag, dv) in r.iter().enumerate() {
            let tag = tag as u32;
            assert_eq!(dv.source_timestamp, dv.server_timestamp);
            let at = ms(dv);
            if model::is_bad(tag) {
                assert_eq!(dv.status, Some(StatusCode::BadSensorFailure));
                assert_eq!(dv.status.unwrap().bits(), model::BAD_SENSOR_FAILURE);
                assert!(dv.value.is_none());
                continue;
            }
            assert!(dv.status.unwrap_or(StatusCode::Good).is_good(), "{dv:?}");
            let expected = model::value_at(dev.index, tag, at);
            assert_eq!(
                dv.value.as_ref(),
                Some(&model_to_variant(expected.clone())),
                "device {} tag {tag}",
                dev.index
            );
            // The variant types are the documented ones.
            match (model::tag_kind(tag), dv.value.as_ref().unwrap()) {
                (TagKind::Double, Variant::Double(_))
                | (TagKind::Float, Variant::Float(_))
                | (TagKind::Int32, Variant::Int32(_))
                | (TagKind::UInt16, Variant::UInt16(_))
                | (TagKind::Boolean, Variant::Boolean(_))
                | (TagKind::String, Variant::String(_))
                | (TagKind::DateTime, Variant::DateTime(_)) => {}
                (TagKind::DoubleArray, Variant::Array(a)) => assert_eq!(a.values.len(), 4),
                (k, v) => panic!("tag {tag}: kind {k:?} but {v:?}"),
            }
            if let ModelValue::DateTime(dt) = expected {
                assert_eq!(dt.timestamp(), at.div_euclid(1000) + i64::from(dev.index));
            }
        }

        // Attributes: DataType and ValueRank match the kinds.
        let mut ids = Vec::new();
        for tag in 0..8u32 {
            let node = NodeId::new(2, model::node_name(tag));
            ids.push(attr(&node, AttributeId::DataType));
            ids.push(attr(&node, AttributeId::ValueRank));
        }
        let r = conn.read(&ids).await.unwrap();
        let expected = [
            (DataTypeId::Double, -1),
            (DataTypeId::Float, -1),
            (DataTypeId::Int32, -1),
            (DataTypeId::UInt16, -1),
            (DataTypeId::Boolean, -1),
            (DataTypeId::String, -1),
            (DataTypeId::DateTime, -1),
            (DataTypeId::Double, 1),
        ];
        for (tag, (dt, rank)) in expected.iter().enumerate() {
            assert_eq!(
                r[2 * tag].value,
                Some(Variant::NodeId(Box::new(NodeId::from(*dt)))),
                "tag {tag}"
            );
            assert_eq!(r[2 * tag + 1].value, Some(Variant::Int32(*rank)));
        }

        // Unknown nodes.
        let r = conn
            .read(&value_ids(&[
                "ns=2;s=Tag020".to_string(),
                "ns=2;s=Nope".to_string(),
                "ns=0;i=84".to_string(),
            ]))
            .await
            .unwrap();
        for dv in r {
            assert_eq!(dv.status, Some(StatusCode::BadNodeIdUnknown));
        }
        // The Objects folder exists (it is browsable) but has no Value.
        let r = conn
            .read(&value_ids(&["ns=0;i=85".to_string()]))
            .await
            .unwrap();
        assert_eq!(r[0].status, Some(StatusCode::BadAttributeIdInvalid));
        conn.close().await;
    }

    let stats = sim.stats();
    assert_eq!(stats.devices, 3);
    assert_eq!(stats.total_sessions, 3);
    assert_eq!(stats.open_sessions, 0);
    // Per device: values, attributes, unknown nodes; the Objects folder
    // (namespace 0 only, like a client's keep-alives) is not a read of tags.
    assert_eq!(stats.reads, 9, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_reads_and_operation_limit() {
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 10_000,
        max_nodes_per_read: 10_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let dev = &sim.devices()[0];
    let conn = connect(&dev.endpoint_url).await;
    assert_eq!(sim.stats().open_sessions, 1);

    let r = conn.read(&value_ids(&dev.node_ids)).await.unwrap();
    assert_eq!(r.len(), 10_000);
    for (tag, dv) in r.iter().enumerate() {
        let tag = tag as u32;
        if model::is_bad(tag) {
            assert_eq!(dv.status, Some(StatusCode::BadSensorFailure));
        } else {
            assert_eq!(
                dv.value,
                Some(model_to_variant(model::value_at(0, tag, ms(dv))))
            );
        }
    }

    // One more than MaxNodesPerRead is refused as a whole.
    let mut ids = value_ids(&dev.node_ids);
    ids.push(ids[0].clone());
    assert_eq!(
        conn.read(&ids).await.unwrap_err(),
        StatusCode::BadTooManyOperations
    );
    conn.close().await;
    sim.shutdown().await;
}

/// A port `p` such that `p` and `p + 1` are free right now.
fn free_port_pair() -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (0..2_000u16)
        .map(|i| start + 7 * i)
        .find(|p| {
            let a = std::net::TcpListener::bind(("127.0.0.1", *p));
            let b = std::net::TcpListener::bind(("127.0.0.1", *p + 1));
            a.is_ok() && b.is_ok()
        })
        .expect("no free pair of ports")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_ports_device_file_and_restart() {
    let base = free_port_pair();
    let cfg = SimConfig {
        devices: 2,
        tags: 3,
        port_base: base,
        ..Default::default()
    };
    let sim = Simulator::start(cfg.clone()).await.unwrap();
    assert_eq!(
        sim.devices()[1].endpoint_url,
        format!("opc.tcp://127.0.0.1:{}", base + 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.yaml");
    sim.write_device_file(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, sim.device_file_yaml());
    assert!(text.starts_with("# generated by opc-loadgen: 2 devices x 3 tags\ndevices:\n"));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let devices = yaml["devices"].as_sequence().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1]["id"].as_str(), Some("dev-00001"));
    assert_eq!(
        devices[1]["endpoint"].as_str(),
        Some(sim.devices()[1].endpoint_url.as_str())
    );
    assert_eq!(devices[0]["nodes"][2].as_str(), Some("ns=2;s=Tag002"));

    let conn = connect(&sim.devices()[0].endpoint_url).await;
    // Shutdown with a session still open closes it and frees the ports.
    sim.shutdown().await;
    drop(conn);
    let sim = Simulator::start(cfg).await.unwrap();
    sim.shutdown().await;
}

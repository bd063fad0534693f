//! End-to-end HistoryRead (Read Raw) against the simulated devices with the async-opcua
//! client: the history equals `history::history_between`, continuation points page it
//! without loss, retention, the `no-history` fault and the refused requests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{sync::Arc, time::Duration};

use opc_loadgen::{
    history::history_between,
    model,
    nodes::{datetime_ms, model_to_variant},
    Fault, SimConfig, Simulator,
};
use opcua::{
    client::{ClientBuilder, HistoryReadAction, IdentityToken, Session},
    crypto::SecurityPolicy,
    types::{
        AttributeId, ByteString, DataValue, DateTime, EndpointDescription, HistoryData,
        HistoryReadResult, HistoryReadValueId, MessageSecurityMode, NodeId, ReadRawModifiedDetails,
        ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy, Variant,
    },
};

/// The window the tests read: the last 30 s.
const WINDOW_MS: i64 = 30_000;

struct Conn {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<StatusCode>,
    _pki: tempfile::TempDir,
}

async fn connect(url: &str) -> Conn {
    let pki = tempfile::tempdir().unwrap();
    let mut client = ClientBuilder::new()
        .application_name("opc-loadgen history test")
        .application_uri("urn:opc-loadgen:test")
        .create_sample_keypair(false)
        .trust_server_certs(true)
        .pki_dir(pki.path())
        .session_retry_limit(2)
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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn tag_id(tag: u32) -> NodeId {
    NodeId::new(model::DEVICE_NAMESPACE_INDEX, model::node_name(tag))
}

fn raw(start: Option<i64>, end: Option<i64>, count: u32) -> ReadRawModifiedDetails {
    let at = |ms: Option<i64>| ms.map_or_else(DateTime::null, |ms| datetime_ms(ms).unwrap());
    ReadRawModifiedDetails {
        is_read_modified: false,
        start_time: at(start),
        end_time: at(end),
        num_values_per_node: count,
        return_bounds: false,
    }
}

fn values(r: &HistoryReadResult) -> Vec<DataValue> {
    r.history_data
        .inner_as::<HistoryData>()
        .and_then(|h| h.data_values.clone())
        .unwrap_or_default()
}

impl Conn {
    async fn history(
        &self,
        details: ReadRawModifiedDetails,
        timestamps: TimestampsToReturn,
        release: bool,
        nodes: &[(NodeId, ByteString)],
    ) -> Result<Vec<HistoryReadResult>, StatusCode> {
        let ids: Vec<HistoryReadValueId> = nodes
            .iter()
            .map(|(node_id, cp)| HistoryReadValueId {
                node_id: node_id.clone(),
                continuation_point: cp.clone(),
                ..Default::default()
            })
            .collect();
        self.session
            .history_read(
                HistoryReadAction::ReadRawModifiedDetails(details),
                timestamps,
                release,
                &ids,
            )
            .await
            .map_err(|e| e.status())
    }

    /// One node's history, following continuation points: the pages, in order.
    async fn pages(&self, node: NodeId, details: ReadRawModifiedDetails) -> Vec<Vec<DataValue>> {
        let mut pages = Vec::new();
        let mut cp = ByteString::null();
        loop {
            let r = self
                .history(
                    details.clone(),
                    TimestampsToReturn::Both,
                    false,
                    &[(node.clone(), cp)],
                )
                .await
                .unwrap();
            assert!(r[0].status_code.is_good(), "{:?}", r[0].status_code);
            pages.push(values(&r[0]));
            cp = r[0].continuation_point.clone();
            if cp.is_null_or_empty() {
                return pages;
            }
            assert!(pages.len() < 1000, "continuation points never end");
        }
    }

    async fn read_attr(&self, node: NodeId, attribute: AttributeId) -> Option<Variant> {
        let id = ReadValueId {
            node_id: node,
            attribute_id: attribute as u32,
            ..Default::default()
        };
        let r = self
            .session
            .read(&[id], TimestampsToReturn::Both, 0.0)
            .await
            .unwrap();
        r[0].value.clone()
    }

    async fn close(self) {
        self.session.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.event_loop).await;
    }
}

/// `dvs` are exactly the history entries `expected` of `tag`, with both timestamps.
fn assert_entries(tag: u32, dvs: &[DataValue], expected: &[(i64, model::ModelValue)]) {
    let at: Vec<i64> = expected.iter().map(|(at, _)| *at).collect();
    let got: Vec<i64> = dvs
        .iter()
        .map(|dv| dv.source_timestamp.unwrap().as_chrono().timestamp_millis())
        .collect();
    assert_eq!(got, at, "tag {tag}: timestamps");
    for (dv, (at, value)) in dvs.iter().zip(expected) {
        assert_eq!(dv.server_timestamp, datetime_ms(*at), "tag {tag}");
        if model::is_bad(tag) {
            assert_eq!(dv.status, Some(StatusCode::BadSensorFailure), "tag {tag}");
            assert_eq!(dv.value, None, "tag {tag}");
        } else {
            assert_eq!(dv.status.unwrap_or(StatusCode::Good), StatusCode::Good);
            assert_eq!(dv.value, Some(model_to_variant(value.clone())), "tag {tag}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_equals_the_model_with_and_without_change_rate() {
    for (rate, per_window) in [(Some(2.0), 60), (None, 30)] {
        let sim = Simulator::start(SimConfig {
            devices: 1,
            tags: 20,
            first_device: 4,
            change_rate: rate,
            ..Default::default()
        })
        .await
        .unwrap();
        let dev = &sim.devices()[0];
        let conn = connect(&dev.endpoint_url).await;
        let (mut calls, mut served) = (0u64, 0u64);
        let end = now_ms();
        let start = end - WINDOW_MS;

        // Every tag (bad ones included) in one call, no limit.
        let nodes: Vec<_> = (0..20).map(|t| (tag_id(t), ByteString::null())).collect();
        let r = conn
            .history(
                raw(Some(start), Some(end), 0),
                TimestampsToReturn::Both,
                false,
                &nodes,
            )
            .await
            .unwrap();
        calls += 1;
        assert_eq!(r.len(), 20);
        for (tag, result) in (0u32..).zip(&r) {
            assert_eq!(result.status_code, StatusCode::Good, "tag {tag}");
            assert!(result.continuation_point.is_null_or_empty());
            let expected = history_between(4, tag, start, end, rate);
            assert!(
                (per_window - 1..=per_window).contains(&expected.len()),
                "{rate:?}: {} entries in 30 s",
                expected.len()
            );
            let dvs = values(result);
            served += dvs.len() as u64;
            assert_entries(tag, &dvs, &expected);
        }

        // Pages of 7 through continuation points: the same values.
        let whole = values(&r[2]);
        let pages = conn.pages(tag_id(2), raw(Some(start), Some(end), 7)).await;
        calls += pages.len() as u64;
        served += whole.len() as u64;
        assert_eq!(pages.len(), whole.len().div_ceil(7));
        assert!(pages.iter().all(|p| p.len() <= 7 && !p.is_empty()));
        assert_eq!(pages.concat(), whole);

        // Timestamps to return.
        for (ts, source, server) in [
            (TimestampsToReturn::Source, true, false),
            (TimestampsToReturn::Server, false, true),
        ] {
            let r = conn
                .history(
                    raw(Some(start), Some(end), 3),
                    ts,
                    false,
                    &[(tag_id(0), ByteString::null())],
                )
                .await
                .unwrap();
            calls += 1;
            let dvs = values(&r[0]);
            served += dvs.len() as u64;
            assert_eq!(dvs.len(), 3);
            assert!(dvs.iter().all(|dv| dv.source_timestamp.is_some() == source
                && dv.server_timestamp.is_some() == server));
            // Release the continuation point this left.
            let released = conn
                .history(
                    raw(Some(start), Some(end), 3),
                    ts,
                    true,
                    &[(tag_id(0), r[0].continuation_point.clone())],
                )
                .await
                .unwrap();
            assert_eq!(released[0].status_code, StatusCode::Good);
        }

        // The tags advertise their history.
        assert_eq!(
            conn.read_attr(tag_id(0), AttributeId::AccessLevel).await,
            Some(Variant::Byte(0x05))
        );
        assert_eq!(
            conn.read_attr(tag_id(0), AttributeId::Historizing).await,
            Some(Variant::Boolean(true))
        );

        let stats = &sim.device_stats()[0];
        assert_eq!(stats.history_reads, calls);
        assert_eq!(stats.history_values, served);
        assert!(sim.stats_json().contains(&format!(
            "\"history_reads\":{calls},\"history_values\":{served}"
        )));
        conn.close().await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cap_continuation_points_and_refused_requests() {
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 20,
        max_history_values_per_call: 8,
        max_nodes_per_history_read_data: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = connect(&sim.devices()[0].endpoint_url).await;
    let end = now_ms();
    let start = end - WINDOW_MS;
    let expected = history_between(0, 3, start, end, None);

    // The server's cap pages a read without a count.
    let pages = conn.pages(tag_id(3), raw(Some(start), Some(end), 0)).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [8, 8, 8, 6],
        "30 values in pages of 8"
    );
    assert_entries(3, &pages.concat(), &expected);

    // A released continuation point is gone.
    let node = |cp: &ByteString| [(tag_id(3), cp.clone())];
    let details = raw(Some(start), Some(end), 0);
    let ts = TimestampsToReturn::Both;
    let r = conn
        .history(details.clone(), ts, false, &node(&ByteString::null()))
        .await
        .unwrap();
    let cp = r[0].continuation_point.clone();
    assert!(!cp.is_null_or_empty());
    let r = conn
        .history(details.clone(), ts, true, &node(&cp))
        .await
        .unwrap();
    assert_eq!(r[0].status_code, StatusCode::Good);
    assert!(values(&r[0]).is_empty());
    let r = conn.history(details, ts, false, &node(&cp)).await.unwrap();
    assert_eq!(r[0].status_code, StatusCode::BadContinuationPointInvalid);

    // Start and a count only: that many values from start on.
    let r = conn
        .history(
            raw(Some(start), None, 5),
            ts,
            false,
            &node(&ByteString::null()),
        )
        .await
        .unwrap();
    assert_entries(3, &values(&r[0]), &expected[..5]);
    assert!(r[0].continuation_point.is_null_or_empty());

    // Refused: reverse order, too few parameters, read modified, no timestamps.
    let mut modified = raw(Some(start), Some(end), 0);
    modified.is_read_modified = true;
    for (details, ts, code) in [
        (
            raw(Some(end), Some(start), 0),
            ts,
            StatusCode::BadInvalidArgument,
        ),
        (raw(None, Some(end), 5), ts, StatusCode::BadInvalidArgument),
        (
            raw(None, None, 0),
            ts,
            StatusCode::BadInvalidTimestampArgument,
        ),
        (
            raw(Some(start), None, 0),
            ts,
            StatusCode::BadInvalidTimestampArgument,
        ),
        (modified, ts, StatusCode::BadHistoryOperationUnsupported),
        (
            raw(Some(start), Some(end), 0),
            TimestampsToReturn::Neither,
            StatusCode::BadTimestampsToReturnInvalid,
        ),
    ] {
        let r = conn
            .history(details.clone(), ts, false, &node(&ByteString::null()))
            .await
            .unwrap();
        assert_eq!(r[0].status_code, code, "{details:?} {ts:?}");
        assert!(values(&r[0]).is_empty());
    }

    // Unknown nodes, namespace 0 variables, an empty window.
    let nodes = [
        (tag_id(20), ByteString::null()),
        (NodeId::new(0, 2259u32), ByteString::null()),
        (tag_id(1), ByteString::null()),
    ];
    let r = conn
        .history(
            raw(Some(end + 60_000), Some(end + 70_000), 0),
            ts,
            false,
            &nodes,
        )
        .await
        .unwrap();
    assert_eq!(r[0].status_code, StatusCode::BadNodeIdUnknown);
    assert_eq!(r[1].status_code, StatusCode::BadHistoryOperationUnsupported);
    assert_eq!(r[2].status_code, StatusCode::GoodNoData);

    // MaxNodesPerHistoryReadData is served and enforced; MaxReturnDataValues served.
    assert_eq!(
        conn.read_attr(NodeId::new(0, 12165u32), AttributeId::Value)
            .await,
        Some(Variant::UInt32(5))
    );
    assert_eq!(
        conn.read_attr(NodeId::new(0, 11273u32), AttributeId::Value)
            .await,
        Some(Variant::UInt32(8))
    );
    let six: Vec<_> = (0..6).map(|t| (tag_id(t), ByteString::null())).collect();
    let refused = conn
        .history(raw(Some(start), Some(end), 0), ts, false, &six)
        .await;
    assert_eq!(refused.unwrap_err(), StatusCode::BadTooManyOperations);
    conn.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_devices_without_history() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 20,
        history_retention: Duration::from_secs(10),
        faults: vec!["no-history=1".parse().unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.devices()[1].faults, vec![Fault::NoHistory]);
    let ts = TimestampsToReturn::Both;

    // Only the last 10 s of a 30 s window are served.
    let conn = connect(&sim.devices()[0].endpoint_url).await;
    let end = now_ms();
    let start = end - WINDOW_MS;
    let before = now_ms();
    let r = conn
        .history(
            raw(Some(start), Some(end), 0),
            ts,
            false,
            &[(tag_id(2), ByteString::null())],
        )
        .await
        .unwrap();
    let after = now_ms();
    let dvs = values(&r[0]);
    let first = dvs[0]
        .source_timestamp
        .unwrap()
        .as_chrono()
        .timestamp_millis();
    assert!(first >= before - 10_000, "{first} older than the retention");
    assert!(first - 1000 < after - 10_000, "{first}: entries missing");
    assert_entries(2, &dvs, &history_between(0, 2, first, end, None));
    conn.close().await;

    // A device without history.
    let conn = connect(&sim.devices()[1].endpoint_url).await;
    let nodes = [
        (tag_id(0), ByteString::null()),
        (tag_id(7), ByteString::null()),
        (tag_id(99), ByteString::null()),
        (NodeId::new(0, 2259u32), ByteString::null()),
    ];
    let r = conn
        .history(raw(Some(start), Some(end), 0), ts, false, &nodes)
        .await
        .unwrap();
    for result in &r {
        assert_eq!(
            result.status_code,
            StatusCode::BadHistoryOperationUnsupported
        );
        assert!(values(result).is_empty());
    }
    assert_eq!(
        conn.read_attr(tag_id(0), AttributeId::AccessLevel).await,
        Some(Variant::Byte(0x01))
    );
    assert_eq!(
        conn.read_attr(tag_id(0), AttributeId::Historizing).await,
        Some(Variant::Boolean(false))
    );
    assert_eq!(
        conn.read_attr(NodeId::new(0, 11193u32), AttributeId::Value)
            .await,
        Some(Variant::Boolean(false))
    );
    conn.close().await;
    let stats = sim.device_stats();
    assert_eq!(
        (stats[0].history_reads, stats[1].history_reads),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats[1].history_values, 0);
    sim.shutdown().await;
}

//! Subscriptions, observed with the async-opcua client: with `--change-rate` the data
//! changes a client receives are exactly the step model's; without, values follow the
//! value model at their sampling instants; and the `mute` fault silences Publish
//! responses for its window only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use opc_loadgen::{model, nodes::model_to_variant, steps, SimConfig, Simulator};
use opcua::{
    client::{
        ClientBuilder, DataChangeCallback, IdentityToken, Session, SessionPollResult,
        SubscriptionActivity,
    },
    crypto::SecurityPolicy,
    types::{
        DataValue, EndpointDescription, MessageSecurityMode, MonitoredItemCreateRequest,
        MonitoringMode, MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn,
        UserTokenPolicy, Variant,
    },
};

/// What the client's subscription event loop reported, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activity {
    Publish,
    PublishFailed(StatusCode),
}

/// A data change: when it arrived, the tag, the value.
type Received = (Instant, u32, DataValue);

struct Conn {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<()>,
    activity: Arc<Mutex<Vec<(Instant, Activity)>>>,
    _pki: tempfile::TempDir,
}

async fn connect(url: &str) -> Conn {
    let pki = tempfile::tempdir().unwrap();
    let mut client = ClientBuilder::new()
        .application_name("opc-loadgen subscription test")
        .application_uri("urn:opc-loadgen:subscription-test")
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
    let activity = Arc::new(Mutex::new(Vec::new()));
    let seen = activity.clone();
    let event_loop = tokio::spawn(async move {
        let stream = event_loop.enter();
        tokio::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            let a = match event {
                SessionPollResult::Subscription(SubscriptionActivity::Publish) => Activity::Publish,
                SessionPollResult::Subscription(SubscriptionActivity::PublishFailed(s)) => {
                    Activity::PublishFailed(s)
                }
                _ => continue,
            };
            seen.lock().unwrap().push((Instant::now(), a));
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(20), session.wait_for_connection())
            .await
            .unwrap(),
        "no connection to {url}"
    );
    Conn {
        session,
        event_loop,
        activity,
        _pki: pki,
    }
}

impl Conn {
    /// A subscription (publishing every 100 ms) whose data changes land in the result.
    async fn subscribe(&self) -> (u32, Arc<Mutex<Vec<Received>>>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let id = self
            .session
            .create_subscription(
                Duration::from_millis(100),
                600,
                10,
                0,
                0,
                true,
                DataChangeCallback::new(move |dv, item| {
                    let tag = match &item.item_to_monitor().node_id.identifier {
                        opcua::types::Identifier::String(s) => {
                            model::tag_index(s.as_ref()).unwrap()
                        }
                        other => panic!("{other:?}"),
                    };
                    sink.lock().unwrap().push((Instant::now(), tag, dv));
                }),
            )
            .await
            .unwrap();
        (id, received)
    }

    async fn monitor(
        &self,
        subscription: u32,
        tags: impl Iterator<Item = u32>,
        sampling_interval: f64,
    ) -> Result<Vec<f64>, StatusCode> {
        let requests = tags
            .map(|t| MonitoredItemCreateRequest {
                item_to_monitor: ReadValueId::from(
                    NodeId::from_str(&model::node_id_string(t)).unwrap(),
                ),
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    sampling_interval,
                    queue_size: 10,
                    discard_oldest: true,
                    ..Default::default()
                },
            })
            .collect();
        let created = self
            .session
            .create_monitored_items(subscription, TimestampsToReturn::Both, requests)
            .await
            .map_err(|e| e.status())?;
        for c in &created {
            assert_eq!(c.result.status_code, StatusCode::Good);
        }
        Ok(created
            .iter()
            .map(|c| c.result.revised_sampling_interval)
            .collect())
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.session.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.event_loop).await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn source_ms(dv: &DataValue) -> i64 {
    dv.source_timestamp.unwrap().as_chrono().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_exactly_the_step_changes() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 20,
        change_rate: Some(2.0),
        max_monitored_items_per_call: 25,
        ..Default::default()
    })
    .await
    .unwrap();
    let (device, period) = (1u32, steps::period_ms(2.0));
    assert_eq!(period, 500);
    let conn = connect(&sim.devices()[1].endpoint_url).await;

    // Reads return the step too, with its start as source timestamp; the limit is served.
    let ids: Vec<ReadValueId> = (0..20)
        .map(|t| ReadValueId::from(NodeId::from_str(&model::node_id_string(t)).unwrap()))
        .chain([ReadValueId::from(NodeId::new(0, 11714u32))])
        .collect();
    let read = conn
        .session
        .read(&ids, TimestampsToReturn::Both, 0.0)
        .await
        .unwrap();
    for (tag, dv) in (0..20).zip(&read) {
        if model::is_bad(tag) {
            assert_eq!(dv.status, Some(StatusCode::from(model::BAD_SENSOR_FAILURE)));
            assert_eq!(dv.value, None);
            continue;
        }
        let (start, value) = steps::step_at(device, tag, source_ms(dv), period);
        assert_eq!(source_ms(dv), start, "tag {tag}: not a step start");
        assert_eq!(dv.value, Some(model_to_variant(value)), "tag {tag}");
        let server = dv.server_timestamp.unwrap().as_chrono().timestamp_millis();
        assert!(
            server >= start && server < start + period + 1000,
            "tag {tag}"
        );
    }
    assert_eq!(read[20].value, Some(Variant::UInt32(25)));

    let (subscription, received) = conn.subscribe().await;
    // MaxMonitoredItemsPerCall is enforced.
    assert_eq!(
        conn.monitor(subscription, 0..26, 100.0).await.unwrap_err(),
        StatusCode::BadTooManyOperations
    );
    let before = now_ms();
    // A sampling interval above the period is revised down to it.
    let revised = conn.monitor(subscription, 0..20, 1000.0).await.unwrap();
    let after = now_ms();
    assert_eq!(revised, vec![500.0; 20]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = now_ms();
    // The changes up to `end` must all arrive; wait for late ones on a loaded machine
    // (a change is due 50 ms + one publishing interval after its step starts).
    let deadline = Instant::now() + Duration::from_secs(5);
    let received = loop {
        let r = received.lock().unwrap().clone();
        let arrived = (0..20).filter(|t| !model::is_bad(*t)).all(|tag| {
            let last = r
                .iter()
                .filter(|(_, t, _)| *t == tag)
                .map(|(_, _, dv)| source_ms(dv))
                .max();
            let first = r
                .iter()
                .find(|(_, t, _)| *t == tag)
                .map(|(_, _, dv)| source_ms(dv));
            match (first, last) {
                (Some(first), Some(last)) => {
                    steps::changes_between(device, tag, first, end - 200, period)
                        .last()
                        .is_none_or(|(ts, _)| *ts <= last)
                }
                _ => false,
            }
        });
        if arrived || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let stats = &sim.device_stats()[1];
    assert_eq!(stats.monitored_items, 20);
    assert_eq!(stats.monitored_items_created, 20);
    assert_eq!(sim.device_stats()[0].monitored_items_created, 0);

    let mut changes = 0;
    for tag in 0..20 {
        let got: Vec<&DataValue> = received
            .iter()
            .filter(|(_, t, _)| *t == tag)
            .map(|(_, _, dv)| dv)
            .collect();
        let (initial, rest) = got.split_first().expect("an initial value");
        if model::is_bad(tag) {
            assert_eq!(
                initial.status,
                Some(StatusCode::from(model::BAD_SENSOR_FAILURE))
            );
            assert_eq!(initial.value, None);
            assert!(rest.is_empty(), "bad tag {tag} changed: {rest:?}");
            continue;
        }
        // Every value is a step of the model, at its start.
        for dv in &got {
            let ts = source_ms(dv);
            let (start, value) = steps::step_at(device, tag, ts, period);
            assert_eq!(ts, start, "tag {tag}: source timestamp not a step start");
            assert_eq!(dv.value, Some(model_to_variant(value)), "tag {tag} at {ts}");
            assert_eq!(dv.status, Some(StatusCode::Good), "tag {tag}");
        }
        // The initial value is the step current at creation.
        let initial_ts = source_ms(initial);
        assert!(
            initial_ts <= after && initial_ts + period > before,
            "tag {tag}"
        );
        // The changes after it are the model's, the last 200 ms aside.
        let edge = end - 200;
        let expected = steps::changes_between(device, tag, initial_ts, edge, period);
        let got: Vec<(i64, Option<Variant>)> = rest
            .iter()
            .map(|dv| (source_ms(dv), dv.value.clone()))
            .filter(|(ts, _)| *ts <= edge)
            .collect();
        let expected: Vec<(i64, Option<Variant>)> = expected
            .into_iter()
            .map(|(ts, v)| (ts, Some(model_to_variant(v))))
            .collect();
        assert_eq!(got, expected, "tag {tag}");
        assert!(got.len() >= 5, "tag {tag}: only {} changes", got.len());
        changes += rest.len() as u64;
    }
    let notified = sim.device_stats()[1].data_change_notifications;
    assert!(
        notified >= changes,
        "{notified} notified, {changes} received"
    );
    assert!(sim.stats_json().contains("\"monitored_items_created\":20"));

    conn.session
        .delete_subscription(subscription)
        .await
        .unwrap();
    assert_eq!(sim.device_stats()[1].monitored_items, 0);
    conn.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_change_rate_samples_follow_the_value_model() {
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 4,
        subscriptions: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = connect(&sim.devices()[0].endpoint_url).await;
    let (subscription, received) = conn.subscribe().await;
    let revised = conn.monitor(subscription, 0..4, 200.0).await.unwrap();
    assert_eq!(revised, vec![200.0; 4]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let received = received.lock().unwrap().clone();
    for tag in 0..4 {
        let got: Vec<&DataValue> = received
            .iter()
            .filter(|(_, t, _)| *t == tag)
            .map(|(_, _, dv)| dv)
            .collect();
        for dv in &got {
            let ts = source_ms(dv);
            let value = model_to_variant(model::value_at(0, tag, ts));
            assert_eq!(dv.value, Some(value), "tag {tag} at {ts}");
        }
        // Double and Float change continuously, Int32 and UInt16 every second.
        let least = if tag < 2 { 8 } else { 2 };
        assert!(got.len() >= least, "tag {tag}: {} values", got.len());
    }
    // A client gone without a goodbye: its items stay until the server goes.
    conn.session.disable_reconnects();
    conn.event_loop.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.device_stats()[0].monitored_items, 4);
    sim.restart_device(0, false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.device_stats()[0].monitored_items != 0 {
        assert!(Instant::now() < deadline, "items outlived their server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.device_stats()[0].monitored_items_created, 4);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_silences_publish_responses_for_its_window() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 5,
        change_rate: Some(10.0),
        faults: vec!["mute=1:2s/2s".parse().unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let conn = connect(&sim.devices()[1].endpoint_url).await;
    let (subscription, received) = conn.subscribe().await;
    conn.monitor(subscription, 0..5, 100.0).await.unwrap();
    let at = |s: f64| started + Duration::from_secs_f64(s);

    // Reads work while muted.
    tokio::time::sleep_until(at(3.0).into()).await;
    let ids = [ReadValueId::from(
        NodeId::from_str(&model::node_id_string(2)).unwrap(),
    )];
    let read = conn
        .session
        .read(&ids, TimestampsToReturn::Both, 0.0)
        .await
        .unwrap();
    assert_eq!(read[0].status, Some(StatusCode::Good));

    tokio::time::sleep_until(at(6.0).into()).await;
    let received = received.lock().unwrap().clone();
    let activity = conn.activity.lock().unwrap().clone();
    let data_in = |from: f64, to: f64| {
        received
            .iter()
            .filter(|(t, _, _)| *t >= at(from) && *t < at(to))
            .count()
    };
    let activity_in = |from: f64, to: f64, what: &dyn Fn(Activity) -> bool| {
        activity
            .iter()
            .filter(|(t, a)| *t >= at(from) && *t < at(to) && what(*a))
            .count()
    };
    let publish = |a: Activity| a == Activity::Publish;
    let timeout = |a: Activity| a == Activity::PublishFailed(StatusCode::BadTimeout);
    assert!(data_in(0.5, 2.0) > 0, "no data before the window");
    assert_eq!(data_in(2.1, 3.9), 0, "data while muted");
    assert_eq!(
        activity_in(2.1, 3.9, &publish),
        0,
        "publish responses while muted"
    );
    assert!(activity_in(2.0, 4.0, &timeout) > 0, "{activity:?}");
    assert!(data_in(4.5, 6.0) > 0, "data did not resume: {activity:?}");
    assert!(activity_in(4.5, 6.0, &publish) > 0);
    assert_eq!(activity_in(0.0, 2.0, &timeout), 0);
    // Received values are still the model's.
    for (_, tag, dv) in &received {
        let (start, value) = steps::step_at(1, *tag, source_ms(dv), 100);
        assert_eq!(source_ms(dv), start);
        assert_eq!(dv.value, Some(model_to_variant(value)));
    }
    conn.close().await;
    sim.shutdown().await;
}

//! A connect cut off after the server created the session: the simulator's
//! `trickle` device passes the handshake (the session is created) and then
//! answers the collector's read of the namespace array at connect at one
//! byte per second, so every connect runs into `connect_timeout` with a
//! fresh session on the server. Each such session stays there until its
//! timeout; none may go uncounted: `collector_sessions_abandoned_total`
//! covers at least every session the server still holds of ours.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use collector_core::config::Settings;
use metrics_exporter_prometheus::PrometheusBuilder;
use opc_loadgen::{Fault, FaultSpec, Hostile, Selection, SimConfig, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_by_cut_off_connects_are_counted() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 5,
        faults: vec![FaultSpec {
            fault: Fault::Hostile(Hostile::Trickle),
            select: Selection::Devices(vec![0]),
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let device = support::device(&sim.devices()[0], Duration::from_secs(1));
    let mut cfg = support::config(kafka.bootstrap_servers(), vec![device]);
    cfg.protocol.insert(
        "session".into(),
        Settings::from_json(serde_json::json!({
            "max_connects_per_second": 1000,
            "connect_timeout": "2s",
        })),
    );
    cfg.collector.shutdown_grace = Duration::from_secs(2);
    let collector = support::build_collector(cfg).await;
    collector
        .run(tokio::time::sleep(Duration::from_secs(12)))
        .await
        .unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;
    let held = stats[0].server_sessions;
    let created = stats[0].sessions_created;
    let counted = prometheus
        .render()
        .lines()
        .find(|l| l.starts_with("collector_sessions_abandoned_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "cut-off connects: {created} sessions created, {held} still held by the server, {counted} counted as left behind"
    );
    assert!(
        held >= 1,
        "the trickle device should hold a session: {stats:?}"
    );
    assert!(
        counted >= held as f64,
        "{held} sessions left on the server, {counted} counted"
    );
}

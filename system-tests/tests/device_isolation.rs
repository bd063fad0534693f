//! Devices that cannot be reached fail alone: the others deliver every
//! scheduled read, and the failures are counted in the metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use collector_core::Device;
use metrics_exporter_prometheus::PrometheusBuilder;
use opc_loadgen::{SimConfig, Simulator};

/// A port nothing listens on: bind, note it, close it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_devices_do_not_hurt_the_others() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 90,
        tags: 20,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let interval = Duration::from_secs(1);
    let mut devices: Vec<Device> = sim
        .devices()
        .iter()
        .map(|d| {
            let refs: Vec<&str> = d.node_ids.iter().map(String::as_str).collect();
            collector_opcua::config::device(d.id.as_str(), d.endpoint_url.as_str(), &refs, interval)
                .unwrap()
        })
        .collect();
    let dead: Vec<String> = (0..10).map(|i| format!("dead-{i}")).collect();
    for id in &dead {
        let url = format!("opc.tcp://127.0.0.1:{}", closed_port());
        devices.push(
            collector_opcua::config::device(id.as_str(), &url, &["ns=2;s=Tag000"], interval)
                .unwrap(),
        );
    }
    let cfg = support::config(kafka.bootstrap_servers(), devices);
    let run_for = Duration::from_secs(6);
    let totals = support::run_collector(cfg, run_for).await;
    sim.shutdown().await;

    // Every tick of a dead device fails fast (refused, or in backoff); every
    // other tick is a healthy device's read, and none was skipped.
    assert_eq!(totals.ticks_skipped, 0, "{totals:?}");
    assert!(totals.reads_failed >= 10, "{totals:?}");
    assert_eq!(
        totals.ticks,
        totals.reads_ok + totals.reads_failed,
        "{totals:?}"
    );
    assert_eq!(totals.records_delivered, totals.reads_ok, "{totals:?}");
    assert_eq!(totals.records_failed, 0);

    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    assert_eq!(consumed.by_device.len(), 90, "only healthy devices deliver");
    assert!(dead.iter().all(|d| !consumed.by_device.contains_key(d)));
    let mut n = 0;
    for (device, recs) in &consumed.by_device {
        let count = support::assert_gap_free(device, recs);
        assert!(count >= 5, "{device}: {count} records");
        n += count;
    }
    assert_eq!(n as u64, totals.reads_ok, "every healthy read delivered");

    let text = prometheus.render();
    let connect_errors = metric(&text, "collector_reads_total{result=\"connect_error\"}");
    assert_eq!(
        connect_errors as u64, totals.reads_failed,
        "failures counted by result:\n{text}"
    );
    let attempts = metric(&text, "collector_session_connects_total{result=\"error\"}");
    // A refused connection is a cheap failure: retried at the next read,
    // never more than once per interval per dead device (and the breaker
    // stays closed for it), so at most one attempt per tick.
    let ticks_per_device = (run_for.as_secs_f64() / interval.as_secs_f64()).ceil() + 1.0;
    assert!(
        (10.0..=dead.len() as f64 * ticks_per_device).contains(&attempts),
        "connect attempts {attempts} for {} dead devices in {run_for:?} at {interval:?}:\n{text}",
        dead.len()
    );
    assert_eq!(
        metric(&text, "collector_sessions{state=\"connected\"}"),
        0.0,
        "sessions closed at shutdown"
    );
}

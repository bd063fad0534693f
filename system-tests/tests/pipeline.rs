//! End to end through the real parts: simulator (OPC UA servers) -> OPC UA
//! sessions -> scheduler -> batcher -> idempotent Kafka producer -> an
//! in-process Kafka cluster -> a consumer that checks every record.

mod support;

use std::time::Duration;

use opc_loadgen::model::NAMESPACE_URI;
use opc_loadgen::{SimConfig, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_arrives_with_the_simulators_values() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 100,
        tags: 20,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let interval = Duration::from_secs(1);
    // Half the devices name their nodes by namespace URI (resolved at
    // connect), half by index.
    let devices = sim
        .devices()
        .iter()
        .map(|d| {
            let nodes: Vec<String> = if d.index % 2 == 0 {
                d.node_ids.clone()
            } else {
                d.node_ids
                    .iter()
                    .map(|n| n.replacen("ns=2;", &format!("nsu={NAMESPACE_URI};"), 1))
                    .collect()
            };
            let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
            collector_opcua::config::device(d.id.as_str(), d.endpoint_url.as_str(), &refs, interval)
                .unwrap()
        })
        .collect();
    let cfg = support::config(kafka.bootstrap_servers(), devices);

    let totals = support::run_collector(cfg, Duration::from_secs(6)).await;
    sim.shutdown().await;

    assert_eq!(totals.devices, 100);
    assert_eq!(totals.reads_failed, 0, "{totals:?}");
    assert_eq!(totals.ticks_skipped, 0, "{totals:?}");
    assert_eq!(totals.records_failed, 0, "{totals:?}");
    assert_eq!(
        totals.records_delivered, totals.reads_ok,
        "every read must be acknowledged: {totals:?}"
    );
    assert!(totals.reads_ok >= 500, "100 devices x ~6 ticks: {totals:?}");

    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    assert_eq!(consumed.by_device.len(), 100, "every device delivered");
    let mut records = 0;
    for (device, recs) in &consumed.by_device {
        let n = support::assert_gap_free(device, recs);
        assert!(n >= 5, "{device}: only {n} records in 6 s at 1 s");
        records += n;
        for r in recs {
            assert_eq!(r["collector_id"], "test-collector");
            assert_eq!(r["samples"].as_array().unwrap().len(), 20);
            support::assert_model_values(r);
        }
    }
    assert_eq!(
        records as u64, totals.records_delivered,
        "consumed exactly what was acknowledged"
    );
}

/// A device with more nodes than the server's MaxNodesPerRead is read in
/// several requests (the simulator refuses a larger one as a whole), and
/// the values come back each on its own node, in the configured order,
/// also when a node in between cannot be resolved on this server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_over_the_servers_limit_is_chunked_and_stays_in_order() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 3,
        tags: 25,
        max_nodes_per_read: 7,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let ghost = "nsu=urn:not-on-this-server;s=Ghost";
    // Each device's nodes as configured (and expected in its records): the
    // unresolvable one between the first two requests' nodes.
    let expected_order: Vec<Vec<String>> = sim
        .devices()
        .iter()
        .map(|d| {
            let mut nodes = d.node_ids.clone();
            nodes.insert(6, ghost.to_string());
            nodes
        })
        .collect();
    let devices = sim
        .devices()
        .iter()
        .zip(&expected_order)
        .map(|(d, nodes)| {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            collector_opcua::config::device(
                d.id.as_str(),
                d.endpoint_url.as_str(),
                &nodes,
                Duration::from_secs(1),
            )
            .unwrap()
        })
        .collect();
    let cfg = support::config(kafka.bootstrap_servers(), devices);

    let totals = support::run_collector(cfg, Duration::from_secs(4)).await;
    sim.shutdown().await;

    assert_eq!(totals.reads_failed, 0, "{totals:?}");
    assert!(totals.reads_ok >= 6, "3 devices x ~4 ticks: {totals:?}");
    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    assert_eq!(consumed.by_device.len(), 3, "every device delivered");
    for (device, recs) in &consumed.by_device {
        let index = opc_loadgen::model::device_index(device).unwrap() as usize;
        for r in recs {
            let samples = r["samples"].as_array().unwrap();
            let order: Vec<&str> = samples
                .iter()
                .map(|s| s["node_id"].as_str().unwrap())
                .collect();
            assert_eq!(order, expected_order[index], "{device}: sample order");
            let lost = &samples[6];
            assert_eq!(lost["status"]["name"], "BadNodeIdUnknown", "{lost}");
            assert!(lost["value"].is_null(), "{lost}");
            let mut rest = r.clone();
            rest["samples"].as_array_mut().unwrap().remove(6);
            support::assert_model_values(&rest);
        }
    }
}

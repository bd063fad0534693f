//! Kafka goes away for longer than the message timeout and comes back:
//! nothing is lost. Records spill to disk during the outage and replay in
//! order afterwards; a consumer finds every seq of every device.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use collector_core::{Collector, Device};
use collector_opcua::OpcUaProtocol;
use opc_loadgen::{SimConfig, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_spills_and_replays_without_gaps() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 50,
        tags: 10,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let devices: Vec<Device> = sim
        .devices()
        .iter()
        .map(|d| {
            let refs: Vec<&str> = d.node_ids.iter().map(String::as_str).collect();
            collector_opcua::config::device(
                d.id.as_str(),
                d.endpoint_url.as_str(),
                &refs,
                Duration::from_secs(1),
            )
            .unwrap()
        })
        .collect();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = support::config(kafka.bootstrap_servers(), devices);
    cfg.collector.state_dir = Some(state.path().to_path_buf());
    cfg.kafka.message_timeout = Duration::from_secs(5);
    cfg.kafka
        .properties
        .insert("reconnect.backoff.max.ms".into(), "500".into());

    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    let collector = Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap();
    let stats = collector.stats();
    let spill = collector.spill().expect("state_dir configures a spill");
    let health = collector.health();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_outage = stats.snapshot();
    assert!(before_outage.records_delivered > 0, "{before_outage:?}");
    kafka.brokers_down();
    tokio::time::sleep(Duration::from_secs(22)).await;
    let during = stats.snapshot();
    assert!(
        during.records_spilled > 0,
        "nothing spilled during the outage: {during:?}"
    );
    assert!(spill.stats().records > 0);
    assert!(health.is_ready(), "spilling keeps the replica ready");
    kafka.brokers_up();

    // Wait for the replay to drain the spill.
    let mut drained = false;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if spill.stats().batches == 0 && stats.snapshot().records_replayed > 0 {
            drained = true;
            break;
        }
    }
    assert!(
        drained,
        "spill not drained: {:?} {:?}",
        spill.stats(),
        stats.snapshot()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(());
    let totals = run.await.unwrap().unwrap();
    sim.shutdown().await;

    assert_eq!(totals.records_undelivered, 0, "{totals:?}");
    assert_eq!(totals.reads_failed, 0, "{totals:?}");
    assert!(
        totals.records_replayed >= totals.records_spilled,
        "{totals:?}"
    );

    // Every read made it, possibly more than once.
    let consumed = support::consume(
        kafka.bootstrap_servers(),
        (totals.records_delivered + totals.records_replayed) as usize,
    )
    .await;
    assert_eq!(consumed.by_device.len(), 50);
    let mut unique = 0;
    let mut duplicates = 0;
    for (device, recs) in &consumed.by_device {
        let seqs: BTreeSet<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        duplicates += recs.len() - seqs.len();
        let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
        assert_eq!(
            (hi - lo + 1) as usize,
            seqs.len(),
            "{device}: gap in {seqs:?}"
        );
        unique += seqs.len();
    }
    assert_eq!(
        unique as u64, totals.reads_ok,
        "every read delivered at least once"
    );
    println!(
        "outage: {} reads, {} spilled, {} replayed, {} duplicates on the topic",
        totals.reads_ok, totals.records_spilled, totals.records_replayed, duplicates
    );
}

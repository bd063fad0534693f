//! `opc-collector demo`: the real pipeline (OPC UA sessions, scheduler,
//! batcher, idempotent Kafka producer) against simulated devices and an
//! in-process Kafka cluster, with a summary line per interval, one record
//! read back from Kafka, and a final line of totals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use collector_core::config::Settings;
use collector_core::metrics::StatsSnapshot;
use collector_core::protocol::Protocol;
use collector_core::{Collector, CollectorConfig};
use collector_opcua::OpcUaProtocol;
use collector_testkit::{consume_all, EmbeddedKafka};
use opc_loadgen::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::{http, run, telemetry, Failure};

const TOPIC: &str = "opc-samples";

pub(crate) async fn run(args: DemoArgs) -> Result<(), Failure> {
    let metrics = telemetry::install_metrics()?;
    let kafka = tokio::task::spawn_blocking(|| EmbeddedKafka::start(1, TOPIC, 6))
        .await
        .map_err(|e| anyhow!("{e}"))?
        .map_err(|e| anyhow!("in-process Kafka: {e}"))?;
    let sim = Simulator::start(SimConfig {
        devices: args.devices,
        tags: args.tags,
        ..SimConfig::default()
    })
    .await
    .context("starting the simulator")?;
    // A state dir of its own (the spill, the seq floor), removed at exit, so
    // the demo runs with the delivery promise of a production collector.
    let state = tempfile::Builder::new()
        .prefix("opc-collector-demo-")
        .tempdir()
        .context("creating the demo's temporary state dir")?;
    println!(
        "demo: {} simulated devices x {} tags every {:?} for {:?}; Kafka (in-process) at {}; state in {} (removed at exit)",
        args.devices,
        args.tags,
        args.interval,
        args.duration,
        kafka.bootstrap_servers(),
        state.path().display()
    );

    let mut cfg = CollectorConfig::default();
    cfg.collector.id = Some("opc-collector-demo".into());
    cfg.collector.state_dir = Some(state.path().to_path_buf());
    cfg.kafka.brokers = kafka.bootstrap_servers().to_string();
    cfg.kafka.topic = TOPIC.into();
    // The demo shows delivery within a second; production batches default to 10 s.
    cfg.batch.interval = args.interval.min(Duration::from_secs(1));
    // Local simulator: no need to pace connects as for a plant network.
    cfg.protocol.insert(
        "session".into(),
        Settings::from_json(serde_json::json!({ "max_connects_per_second": 1000 })),
    );
    for d in sim.devices() {
        let nodes: Vec<&str> = d.node_ids.iter().map(String::as_str).collect();
        let device = collector_opcua::config::device(
            d.id.as_str(),
            d.endpoint_url.as_str(),
            &nodes,
            args.interval,
        )
        .map_err(|e| anyhow!("simulated device {}: {e}", d.id))?;
        cfg.devices.push(device);
    }
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).context("OPC UA client")?);
    let collector = Collector::builder(cfg)
        .protocol(protocol.clone())
        .build()
        .await
        .context("building the collector")?;
    let stats = collector.stats();

    let stop = CancellationToken::new();
    let mut http_task = None;
    if let Some(addr) = args.http_addr {
        let surface = http::AppState {
            metrics,
            health: collector.health(),
            devices: collector.devices(),
            list: None,
        };
        let (_, t) = http::serve(addr, surface, stop.clone()).await?;
        http_task = Some(t);
    }
    let summary = tokio::spawn(summaries(
        stats.clone(),
        protocol.clone(),
        args.devices,
        args.interval.max(Duration::from_secs(1)),
        kafka.bootstrap_servers().to_string(),
        stop.clone(),
    ));

    let duration = args.duration;
    let started = Instant::now();
    let shutdown = async move {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = run::shutdown_signal() => {}
        }
    };
    let totals = collector.run(shutdown).await.context("collector")?;
    stop.cancel();
    let _ = summary.await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    sim.shutdown().await;
    drop(kafka);
    println!("{}", final_line(&totals, started.elapsed()));
    Ok(())
}

/// Prints a line per `every` and, once, a record read back from Kafka.
async fn summaries(
    stats: Arc<collector_core::metrics::Stats>,
    protocol: Arc<OpcUaProtocol>,
    devices: u32,
    every: Duration,
    bootstrap: String,
    stop: CancellationToken,
) {
    let start = Instant::now();
    let mut prev = stats.snapshot();
    let mut printed_sample = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = stats.snapshot();
        let secs = every.as_secs_f64();
        println!(
            "[{:>5.1}s] devices connected {}/{} | reads/s {:.1} | points/s {:.0} | records delivered {} | read failures {} | failed deliveries {}",
            start.elapsed().as_secs_f64(),
            protocol.connected_sessions(),
            devices,
            (now.reads_ok - prev.reads_ok) as f64 / secs,
            (now.samples - prev.samples) as f64 / secs,
            now.records_delivered,
            now.reads_failed,
            now.records_failed,
        );
        if !printed_sample && now.records_delivered > 0 {
            printed_sample = true;
            let b = bootstrap.clone();
            let first = tokio::task::spawn_blocking(move || {
                consume_all(&b, TOPIC, 1, Duration::from_secs(3), Duration::from_secs(5))
            })
            .await;
            match first {
                Ok(Ok(msgs)) if !msgs.is_empty() => {
                    println!(
                        "sample record: {}",
                        String::from_utf8_lossy(&msgs[0].payload)
                    );
                }
                Ok(Ok(_)) => println!("sample record: (none read back yet)"),
                Ok(Err(e)) => println!("sample record: could not read back: {e}"),
                Err(e) => println!("sample record: could not read back: {e}"),
            }
        }
        prev = now;
    }
}

fn final_line(t: &StatsSnapshot, elapsed: Duration) -> String {
    let scheduled = t.scheduled();
    let pct = if scheduled == 0 {
        0.0
    } else {
        100.0 * t.records_delivered as f64 / scheduled as f64
    };
    format!(
        "demo totals: {:.1}s, scheduled reads {}, delivered to Kafka {} ({:.2}%), read failures {}, skipped ticks {}, failed deliveries {}, points {}",
        elapsed.as_secs_f64(),
        scheduled,
        t.records_delivered,
        pct,
        t.reads_failed,
        t.ticks_skipped,
        t.records_failed,
        t.samples
    )
}

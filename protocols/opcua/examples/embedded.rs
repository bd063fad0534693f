//! Embedding the collector in your own program: devices built in code, the
//! OPC UA adapter, a custom sink (here: print a line per batch), and a
//! shutdown of your choosing. It prints one `batch:` line per delivered
//! batch and a final `totals:` line.
//!
//! Runs against the simulator, in-process, with no setup:
//!
//! ```text
//! cargo run -p collector-opcua --example embedded
//! ```
//!
//! Replace the simulator with your devices and `PrintSink` with
//! `KafkaSink` (the default when no sink is given) for the real thing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collector_core::error::SinkError;
use collector_core::sink::{DeliveryReport, Message, Sink};
use collector_core::{Collector, CollectorConfig, Record};
use collector_opcua::OpcUaProtocol;
use opc_loadgen::{SimConfig, Simulator};

/// A sink that acknowledges every record after printing a summary line.
struct PrintSink;

#[async_trait]
impl Sink for PrintSink {
    fn encode(&self, record: &Record) -> Result<Message, SinkError> {
        Message::json(record, "embedded-example")
    }

    async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport {
        let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
        println!(
            "batch: {} records, {} bytes of JSON; first key: {}",
            messages.len(),
            bytes,
            messages.first().map(|m| m.key.as_str()).unwrap_or("-"),
        );
        DeliveryReport::default()
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Ten simulated devices, five tags each.
    let sim = Simulator::start(SimConfig {
        devices: 10,
        tags: 5,
        ..SimConfig::default()
    })
    .await?;

    let mut config = CollectorConfig::default();
    config.batch.interval = Duration::from_secs(1);
    for d in sim.devices() {
        let nodes: Vec<&str> = d.node_ids.iter().map(String::as_str).collect();
        config.devices.push(collector_opcua::config::device(
            d.id.as_str(),
            d.endpoint_url.as_str(),
            &nodes,
            Duration::from_millis(500),
        )?);
    }

    let protocol = Arc::new(OpcUaProtocol::new(&config)?);
    let collector = Collector::builder(config)
        .protocol(protocol)
        .sink(Arc::new(PrintSink))
        .build()
        .await?;
    let stats = collector.stats();

    // Stop after three seconds; a daemon would wait for SIGTERM instead.
    let totals = collector
        .run(tokio::time::sleep(Duration::from_secs(3)))
        .await?;
    println!("totals: {totals:?}");
    assert_eq!(stats.snapshot(), totals);
    sim.shutdown().await;
    Ok(())
}

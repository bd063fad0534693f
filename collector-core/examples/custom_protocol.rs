//! A protocol that is not OPC UA, through the whole pipeline: scheduler,
//! worker pool, per-device circuit breaker, batcher and a sink.
//!
//! The "devices" are three simulated tank-level sensors living inside this
//! example; `tank-3` drops off the network after its fourth read, so its
//! breaker opens while the other two keep their schedule. Records go to a
//! sink that prints one line per record.
//!
//! ```text
//! cargo run -p collector-core --example custom_protocol
//! ```
//!
//! It prints a `record:` line per record (device, seq, level), a
//! `breaker:` line for the device whose breaker opened, and a final
//! `totals:` line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collector_core::device_status::BreakerState;
use collector_core::error::{ReadError, SinkError};
use collector_core::protocol::{DeviceReader, Protocol};
use collector_core::record::{Sample, Status, Value};
use collector_core::sink::{DeliveryReport, Message, Sink};
use collector_core::{Collector, CollectorConfig, Device, Record};

/// The "field bus": answers level reads for the tanks it knows.
struct TankBus {
    /// Reads served per tank.
    reads: HashMap<String, AtomicU64>,
}

impl TankBus {
    fn read_level(&self, tank: &str) -> Result<f64, String> {
        let n = self
            .reads
            .get(tank)
            .ok_or_else(|| format!("no tank {tank} on the bus"))?
            .fetch_add(1, Ordering::Relaxed);
        if tank == "tank-3" && n >= 4 {
            return Err("no answer from tank-3 (cable unplugged)".into());
        }
        // A level that rises and falls between 20 % and 80 %.
        Ok(50.0 + 30.0 * ((n as f64) / 3.0).sin())
    }
}

/// The protocol adapter: one reader per device, all sharing the bus.
struct TankProtocol {
    bus: Arc<TankBus>,
}

struct TankReader {
    bus: Arc<TankBus>,
    tank: String,
}

#[async_trait]
impl DeviceReader for TankReader {
    async fn read(&mut self) -> Result<Vec<Sample>, ReadError> {
        let level = self
            .bus
            .read_level(&self.tank)
            // A tank that does not answer costs the bus a timeout: the
            // kind of failure the circuit breaker backs off from.
            .map_err(|_| ReadError::Timeout {
                what: "read",
                after: Duration::from_millis(200),
            })?;
        Ok(vec![Sample {
            node_id: Arc::from("level_percent"),
            value: Value::Double(level),
            status: Status::GOOD,
            source_timestamp: Some(chrono::Utc::now()),
            server_timestamp: None,
        }])
    }

    async fn close(&mut self) {}
}

#[async_trait]
impl Protocol for TankProtocol {
    fn attach(&self, device: &Device) -> Result<Box<dyn DeviceReader>, ReadError> {
        Ok(Box::new(TankReader {
            bus: self.bus.clone(),
            tank: device.id.to_string(),
        }))
    }

    fn connected_sessions(&self) -> usize {
        self.bus.reads.len()
    }

    async fn shutdown(&self) {}
}

/// Prints each record as it is "delivered".
struct PrintSink;

#[async_trait]
impl Sink for PrintSink {
    fn encode(&self, record: &Record) -> Result<Message, SinkError> {
        Message::json(record, "custom-protocol-example")
    }

    async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport {
        for m in messages {
            let json: serde_json::Value =
                serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
            println!(
                "record: {} seq {} level {:.1}",
                m.key,
                json["seq"],
                json["samples"][0]["value"].as_f64().unwrap_or(f64::NAN)
            );
        }
        DeliveryReport::default()
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tanks = ["tank-1", "tank-2", "tank-3"];
    let mut config = CollectorConfig::default();
    config.batch.interval = Duration::from_millis(200);
    config.breaker.failure_threshold = 2;
    for tank in tanks {
        // The core needs an id, an endpoint URL and an interval; this
        // protocol needs no settings of its own.
        config.devices.push(Device::new(
            tank,
            format!("tankbus://{tank}"),
            Duration::from_millis(250),
        )?);
    }
    let bus = Arc::new(TankBus {
        reads: tanks
            .iter()
            .map(|t| (t.to_string(), AtomicU64::new(0)))
            .collect(),
    });
    let collector = Collector::builder(config)
        .protocol(Arc::new(TankProtocol { bus }))
        .sink(Arc::new(PrintSink))
        .build()
        .await?;
    let board = collector.devices();
    let totals = collector
        .run(tokio::time::sleep(Duration::from_secs(3)))
        .await?;
    let (_, devices) = board.page(|_| true, 0, 10);
    for d in devices.iter().filter(|d| d.breaker != BreakerState::Closed) {
        println!(
            "breaker: {} is {} after {} consecutive failures",
            d.id,
            d.breaker.label(),
            d.consecutive_failures
        );
    }
    println!(
        "totals: reads ok {}, reads failed {}, records delivered {}",
        totals.reads_ok, totals.reads_failed, totals.records_delivered
    );
    Ok(())
}

//! [`KafkaSink`]: builds the producer from [`KafkaConfig`], encodes and
//! enqueues records with backpressure on a full queue, awaits their
//! acknowledgements, and probes the cluster for readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use super::delivery::{BatchAck, Context, Pending};
use crate::config::KafkaConfig;
use crate::error::SinkError;
use crate::metrics::names;
use crate::sink::{Batch, DeliveryReport, Sink};

/// How often the cluster is probed for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Wait before retrying a send that found the producer queue full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Delivers records to one Kafka topic.
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Context>>,
    topic: String,
    collector_id: String,
    up: Arc<AtomicBool>,
}

impl KafkaSink {
    /// Creates the producer. No broker is contacted yet; call
    /// [`KafkaSink::spawn_probe`] to track reachability.
    pub fn new(cfg: &KafkaConfig, collector_id: &str) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("client.id", collector_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.codec", &cfg.compression)
            .set("linger.ms", cfg.linger_ms.to_string())
            .set(
                "message.timeout.ms",
                cfg.message_timeout.as_millis().to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                cfg.queue_max_messages.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                cfg.queue_max_kbytes.to_string(),
            );
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let up = Arc::new(AtomicBool::new(false));
        let producer: ThreadedProducer<Context> = cc
            .create_with_context(Context { up: up.clone() })
            .map_err(|e| SinkError::Config(redact(&e.to_string())))?;
        Ok(KafkaSink {
            producer: Arc::new(producer),
            topic: cfg.topic.clone(),
            collector_id: collector_id.to_string(),
            up,
        })
    }

    /// Probes the cluster every few seconds (metadata request) until
    /// `stop`, keeping [`Sink::is_healthy`] current.
    pub fn spawn_probe(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let up = self.up.clone();
        tokio::spawn(async move {
            loop {
                let p = producer.clone();
                let t = topic.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    p.client().fetch_metadata(Some(&t), PROBE_TIMEOUT).is_ok()
                })
                .await
                .unwrap_or(false);
                let was = up.swap(ok, Ordering::Relaxed);
                metrics::gauge!(names::KAFKA_UP).set(if ok { 1.0 } else { 0.0 });
                if was != ok {
                    if ok {
                        tracing::info!("kafka reachable");
                    } else {
                        tracing::warn!("kafka unreachable (metadata probe failed)");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
            }
        })
    }
}

/// librdkafka errors can echo configuration; never let a password through.
fn redact(msg: &str) -> String {
    if msg.to_ascii_lowercase().contains("password") {
        "invalid producer configuration (details withheld: they mention a password)".to_string()
    } else {
        msg.to_string()
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn deliver(&self, batch: &Batch) -> DeliveryReport {
        let ack = BatchAck::new(batch.records.len());
        let mut buf = Vec::with_capacity(4096);
        for (index, record) in batch.records.iter().enumerate() {
            buf.clear();
            if let Err(e) = record.encode_json(&self.collector_id, &mut buf) {
                metrics::counter!(names::KAFKA_FAILED, "reason" => "encode").increment(1);
                ack.settle_failed(index, format!("encode: {e}"));
                continue;
            }
            let read_time_us = record.read_time.timestamp_micros();
            let mut opaque = Box::new(Pending {
                ack: ack.clone(),
                index,
                enqueued: Instant::now(),
                read_time_us,
            });
            loop {
                let msg = BaseRecord::with_opaque_to(&self.topic, opaque)
                    .key(&*record.device_id)
                    .payload(&buf)
                    .timestamp(read_time_us / 1000);
                match self.producer.send(msg) {
                    Ok(()) => {
                        metrics::gauge!(names::KAFKA_IN_FLIGHT).increment(1.0);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        metrics::counter!(names::KAFKA_QUEUE_FULL).increment(1);
                        opaque = back.delivery_opaque;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((e, _)) => {
                        metrics::counter!(names::KAFKA_FAILED, "reason" => "enqueue").increment(1);
                        ack.settle_failed(index, e.to_string());
                        break;
                    }
                }
            }
        }
        let (failed, error) = ack.wait().await;
        if failed.is_empty() {
            self.up.store(true, Ordering::Relaxed);
        }
        DeliveryReport {
            failed,
            error: error.map(SinkError::Delivery),
        }
    }

    fn is_healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.flush(timeout))
            .await
            .map_err(|e| SinkError::Delivery(format!("flush task: {e}")))?
            .map_err(|e| SinkError::Delivery(format!("flush: {e}")))
    }
}

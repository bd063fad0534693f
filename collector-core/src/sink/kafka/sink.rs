//! [`KafkaSink`]: builds the producer from [`KafkaConfig`], encodes and
//! enqueues records with backpressure on a full queue, awaits their
//! acknowledgements, probes the cluster for readiness, and replaces the
//! producer when the broker fences it (a producer whose idempotence state
//! the broker no longer accepts would otherwise fail every send forever).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use tokio_util::sync::CancellationToken;

use super::delivery::{BatchAck, Context, MessageMetrics, Pending};
use super::producer::PolledProducer;
use crate::config::{KafkaConfig, RecordEncoding};
use crate::error::SinkError;
use crate::metrics::names;
use crate::record::Record;
use crate::sink::{DeliveryReport, Message, Reachability, SharedReachability, Sink};

/// How often the cluster is probed for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Wait before retrying a send that found the producer queue full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// The producer in use, and what is needed to make a new one.
struct ProducerSlot {
    current: RwLock<Arc<PolledProducer>>,
    config: ClientConfig,
    up: Arc<SharedReachability>,
    /// Set by the delivery callback when the broker fenced the producer.
    fenced: Arc<AtomicBool>,
    /// Shared with every producer's delivery callback.
    metrics: MessageMetrics,
}

impl ProducerSlot {
    fn create(
        config: &ClientConfig,
        up: &Arc<SharedReachability>,
        fenced: &Arc<AtomicBool>,
        metrics: &MessageMetrics,
    ) -> Result<PolledProducer, SinkError> {
        PolledProducer::create(
            config,
            Context {
                metrics: metrics.clone(),
                up: up.clone(),
                fenced: fenced.clone(),
            },
        )
        .map_err(|e| SinkError::Config(redact(&e)))
    }

    fn get(&self) -> Arc<PolledProducer> {
        self.current.read().clone()
    }

    /// Replaces a fenced producer (new producer id and epoch). What the old
    /// one still holds is purged: those deliveries fail and are spilled.
    fn renew_if_fenced(&self) {
        let fatal = self.get().client().fatal_error();
        if !self.fenced.swap(false, Ordering::AcqRel) && fatal.is_none() {
            return;
        }
        match Self::create(&self.config, &self.up, &self.fenced, &self.metrics) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.current.write(), Arc::new(fresh));
                metrics::counter!(names::KAFKA_PRODUCER_RENEWED).increment(1);
                tracing::warn!(fatal = ?fatal.map(|f| f.1), "kafka producer fenced or failed; replaced it with a new one");
                // Purging takes librdkafka's locks: off the executor. The
                // old producer's poll thread serves the purged reports.
                tokio::task::spawn_blocking(move || {
                    old.purge(PurgeConfig::default().queue().inflight());
                    drop(old);
                });
            }
            Err(e) => {
                self.fenced.store(true, Ordering::Release);
                tracing::error!(error = %e, "cannot recreate the kafka producer");
            }
        }
    }
}

/// Delivers records to one Kafka topic.
pub struct KafkaSink {
    slot: Arc<ProducerSlot>,
    topic: String,
    collector_id: String,
    /// `kafka.encoding`.
    encoding: RecordEncoding,
    /// `kafka.max_record_bytes` (or its default).
    max_record_bytes: u64,
    /// The broker's reachability as last observed.
    up: Arc<SharedReachability>,
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
        // TLS/SASL (secrets read now, never logged), then the pass-through
        // properties, which win.
        let security =
            super::properties::kafka_security_properties(cfg).map_err(SinkError::Config)?;
        for (k, v) in &security {
            cc.set(*k, v);
        }
        if cfg.sasl.is_some() && cfg.tls.is_none() {
            tracing::warn!("kafka.sasl without kafka.tls: credentials and records cross the network unencrypted");
        }
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let up = Arc::new(SharedReachability::new(Reachability::Unknown));
        let fenced = Arc::new(AtomicBool::new(false));
        let metrics = MessageMetrics::register();
        let producer = ProducerSlot::create(&cc, &up, &fenced, &metrics)?;
        Ok(KafkaSink {
            slot: Arc::new(ProducerSlot {
                current: RwLock::new(Arc::new(producer)),
                config: cc,
                up: up.clone(),
                fenced,
                metrics,
            }),
            topic: cfg.topic.clone(),
            collector_id: collector_id.to_string(),
            encoding: cfg.encoding,
            max_record_bytes: cfg.max_record_bytes(),
            up,
        })
    }

    /// Probes the cluster every few seconds (metadata request) until
    /// `stop`, keeping [`Sink::reachability`] current.
    pub fn spawn_probe(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let slot = self.slot.clone();
        let topic = self.topic.clone();
        let up = self.up.clone();
        let max_record_bytes = self.max_record_bytes;
        let mut limit_checked = false;
        tokio::spawn(async move {
            loop {
                let p = slot.get();
                let t = topic.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    p.client().fetch_metadata(Some(&t), PROBE_TIMEOUT).is_ok()
                })
                .await
                .unwrap_or(false);
                let now = if ok {
                    Reachability::Up
                } else {
                    Reachability::Down
                };
                if ok && !limit_checked {
                    limit_checked = true;
                    let (config, topic) = (slot.config.clone(), topic.clone());
                    tokio::spawn(async move {
                        super::topic_limit::check(&config, &topic, max_record_bytes).await;
                    });
                }
                let was = up.swap(now).is_up();
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
    fn encode(&self, record: &Record) -> Result<Message, SinkError> {
        Message::encode(record, &self.collector_id, self.encoding)
    }

    async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport {
        self.slot.renew_if_fenced();
        let producer = self.slot.get();
        let ack = BatchAck::new(messages.len());
        for (index, m) in messages.iter().enumerate() {
            let mut opaque = Box::new(Pending {
                ack: ack.clone(),
                index,
                enqueued: Instant::now(),
                read_time_us: m.read_time_us,
            });
            loop {
                let msg = BaseRecord::with_opaque_to(&self.topic, opaque)
                    .key(m.key.as_str())
                    .payload(&m.payload)
                    .timestamp(m.read_time_us / 1000);
                match producer.send(msg) {
                    Ok(()) => {
                        self.slot.metrics.in_flight.increment(1.0);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        metrics::counter!(names::KAFKA_QUEUE_FULL).increment(1);
                        opaque = back.delivery_opaque;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((e, _)) => {
                        let reason = super::delivery::permanent(e.rdkafka_error_code())
                            .map_or("enqueue", |c| c.label());
                        metrics::counter!(names::KAFKA_FAILED, "reason" => reason).increment(1);
                        ack.settle_error(index, &e);
                        break;
                    }
                }
            }
        }
        let settled = ack.wait().await;
        if settled.failed.is_empty() && !messages.is_empty() {
            self.up.set(Reachability::Up);
        }
        DeliveryReport {
            failed: settled.failed,
            error: settled.first_error.map(SinkError::Delivery),
            rejected: settled.rejected,
        }
    }

    fn max_message_bytes(&self) -> Option<usize> {
        Some(usize::try_from(self.max_record_bytes).unwrap_or(usize::MAX))
    }

    fn reachability(&self) -> Reachability {
        self.up.get()
    }

    fn abort_pending(&self) {
        // Delivery callbacks fire with "purged" errors for everything queued
        // or in flight, so those records are spilled rather than lost.
        self.slot
            .get()
            .purge(PurgeConfig::default().queue().inflight());
    }

    fn close(&self) {
        self.slot.get().close();
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let p = self.slot.get();
        tokio::task::spawn_blocking(move || p.flush(timeout))
            .await
            .map_err(|e| SinkError::Delivery(format!("flush task: {e}")))?
            .map_err(|e| SinkError::Delivery(format!("flush: {e}")))
    }
}

//! Delivery tracking: each message carries a [`Pending`] opaque back
//! through librdkafka's delivery callback, which settles it in its batch's
//! [`BatchAck`]; the batch's `deliver()` wakes when the last one settles.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::Notify;

use crate::metrics::names;

/// Outstanding acknowledgements of one batch.
pub(crate) struct BatchAck {
    remaining: AtomicUsize,
    failed: Mutex<Vec<usize>>,
    first_error: Mutex<Option<String>>,
    done: Notify,
}

impl BatchAck {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(n),
            failed: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
            done: Notify::new(),
        })
    }

    pub(crate) fn settle_ok(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    pub(crate) fn settle_failed(&self, index: usize, error: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.push(index);
        }
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(error);
        }
        self.settle_ok();
    }

    /// Waits until every message is settled; returns failed indexes and the first error.
    pub(crate) async fn wait(&self) -> (Vec<usize>, Option<String>) {
        while self.remaining.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
        let mut failed = self
            .failed
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        failed.sort_unstable();
        let err = self.first_error.lock().ok().and_then(|mut e| e.take());
        (failed, err)
    }
}

/// The per-message opaque.
pub(crate) struct Pending {
    pub(crate) ack: Arc<BatchAck>,
    pub(crate) index: usize,
    pub(crate) enqueued: Instant,
    /// The record's read time, microseconds since the epoch.
    pub(crate) read_time_us: i64,
}

/// Producer context: settles deliveries and tracks broker reachability.
pub(crate) struct Context {
    /// Reachability, see `sink::UNKNOWN`/`UP`/`DOWN`.
    pub(crate) up: Arc<AtomicU8>,
    /// Set when the broker rejects the producer's identity or epoch: the
    /// sink then replaces the producer (and reports Kafka down meanwhile,
    /// so new batches go to the spill instead of failing one by one).
    pub(crate) fenced: Arc<AtomicBool>,
}

/// Errors after which this producer will never deliver again.
fn is_fencing(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::Fatal
        )
    )
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if is_fencing(code) {
            self.fenced.store(true, Ordering::Release);
        }
        if is_fencing(code) || matches!(code, Some(RDKafkaErrorCode::AllBrokersDown)) {
            let was = self.up.swap(super::sink::DOWN, Ordering::Relaxed);
            metrics::gauge!(names::KAFKA_UP).set(0.0);
            // librdkafka repeats these on every reconnect attempt during an
            // outage: warn once per transition, not per attempt.
            if was == super::sink::DOWN {
                tracing::debug!(error = %error, reason, "kafka client error");
                return;
            }
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, p: Box<Pending>) {
        metrics::gauge!(names::KAFKA_IN_FLIGHT).decrement(1.0);
        match result {
            Ok(_) => {
                metrics::counter!(names::KAFKA_DELIVERED).increment(1);
                metrics::histogram!(names::KAFKA_ACK_LATENCY)
                    .record(p.enqueued.elapsed().as_secs_f64());
                let now_us = chrono::Utc::now().timestamp_micros();
                metrics::histogram!(names::SAMPLE_TO_ACK)
                    .record((now_us - p.read_time_us).max(0) as f64 / 1e6);
                p.ack.settle_ok();
            }
            Err((e, _)) => {
                if is_fencing(e.rdkafka_error_code()) && !self.fenced.swap(true, Ordering::AcqRel) {
                    self.up.store(super::sink::DOWN, Ordering::Relaxed);
                    metrics::gauge!(names::KAFKA_UP).set(0.0);
                }
                let reason = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageTimedOut) => "timeout",
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => "too_large",
                    Some(RDKafkaErrorCode::PurgeQueue) | Some(RDKafkaErrorCode::PurgeInflight) => {
                        "purged"
                    }
                    _ => "error",
                };
                metrics::counter!(names::KAFKA_FAILED, "reason" => reason).increment(1);
                p.ack.settle_failed(p.index, e.to_string());
            }
        }
    }
}

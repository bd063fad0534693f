//! Delivery tracking: each message carries a [`Pending`] opaque back
//! through librdkafka's delivery callback, which settles it in its batch's
//! [`BatchAck`]; [`BatchAck::wait`] returns when the last one settles.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::Notify;

use crate::metrics::names;
use crate::sink::{Reachability, SharedReachability};

/// Outstanding acknowledgements of one batch.
pub(crate) struct BatchAck {
    remaining: AtomicUsize,
    /// What failed. A parking_lot lock: a panic elsewhere while it was held
    /// cannot make a later settlement lose its index (a failed record
    /// counted as delivered and never spilled).
    settled: Mutex<Failures>,
    done: Notify,
}

#[derive(Default)]
struct Failures {
    indexes: Vec<usize>,
    first_error: Option<String>,
}

impl BatchAck {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(n),
            settled: Mutex::new(Failures::default()),
            done: Notify::new(),
        })
    }

    pub(crate) fn settle_ok(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    pub(crate) fn settle_failed(&self, index: usize, error: String) {
        {
            let mut f = self.settled.lock();
            f.indexes.push(index);
            f.first_error.get_or_insert(error);
        }
        self.settle_ok();
    }

    /// Waits until every message is settled; returns failed indexes and the first error.
    pub(crate) async fn wait(&self) -> (Vec<usize>, Option<String>) {
        while self.remaining.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
        let Failures {
            mut indexes,
            first_error,
        } = std::mem::take(&mut *self.settled.lock());
        indexes.sort_unstable();
        (indexes, first_error)
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
    /// The broker's reachability as the sink reports it.
    pub(crate) up: Arc<SharedReachability>,
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
            let was = self.up.swap(Reachability::Down);
            metrics::gauge!(names::KAFKA_UP).set(0.0);
            // librdkafka repeats these on every reconnect attempt during an
            // outage: warn once per transition, not per attempt.
            if was == Reachability::Down {
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
                    self.up.set(Reachability::Down);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic on another thread while the settlement lock was held must
    /// not make later failures vanish (with std's Mutex and the old
    /// `if let Ok(..)`, the poisoned lock dropped the index: the record was
    /// counted delivered and never spilled).
    #[tokio::test]
    async fn a_panic_while_settling_does_not_lose_failed_indexes() {
        let ack = BatchAck::new(3);
        let held = ack.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.settled.lock();
            panic!("a delivery callback panicked while settling");
        })
        .join();
        assert!(panicked.is_err());
        ack.settle_ok();
        ack.settle_failed(2, "MessageTimedOut".into());
        ack.settle_failed(0, "second".into());
        let (failed, error) = ack.wait().await;
        assert_eq!(failed, vec![0, 2]);
        assert_eq!(error.as_deref(), Some("MessageTimedOut"));
    }
}

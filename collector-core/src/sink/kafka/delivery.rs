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
use crate::sink::{Reachability, RejectCause, Rejected, SharedReachability};

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
    rejected: Vec<Rejected>,
    first_error: Option<String>,
}

/// What [`BatchAck::wait`] found.
pub(crate) struct Settled {
    /// Transient failures, sorted.
    pub(crate) failed: Vec<usize>,
    /// Permanent refusals.
    pub(crate) rejected: Vec<Rejected>,
    /// The first error of either kind.
    pub(crate) first_error: Option<String>,
}

/// The explicit list of errors after which the broker will never take the
/// message as it is; every other error is transient (spill and replay).
pub(crate) fn permanent(code: Option<RDKafkaErrorCode>) -> Option<RejectCause> {
    use RDKafkaErrorCode as C;
    Some(match code? {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            RejectCause::TooLarge
        }
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => RejectCause::NotAuthorized,
        C::InvalidRecord
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        | C::InvalidRequiredAcks => RejectCause::Invalid,
        C::UnknownTopic | C::InvalidTopic | C::UnknownTopicId => RejectCause::UnknownTopic,
        _ => return None,
    })
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

    /// Settles a message the broker refused for good.
    pub(crate) fn settle_rejected(&self, index: usize, cause: RejectCause, detail: String) {
        {
            let mut f = self.settled.lock();
            f.first_error.get_or_insert_with(|| detail.clone());
            f.rejected.push(Rejected {
                index,
                cause,
                detail,
            });
        }
        self.settle_ok();
    }

    /// Settles a message by the outcome of its error: rejected when
    /// [`permanent`], failed otherwise.
    pub(crate) fn settle_error(&self, index: usize, error: &KafkaError) {
        match permanent(error.rdkafka_error_code()) {
            Some(cause) => self.settle_rejected(index, cause, error.to_string()),
            None => self.settle_failed(index, error.to_string()),
        }
    }

    /// Waits until every message is settled.
    pub(crate) async fn wait(&self) -> Settled {
        while self.remaining.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
        let Failures {
            mut indexes,
            rejected,
            first_error,
        } = std::mem::take(&mut *self.settled.lock());
        indexes.sort_unstable();
        Settled {
            failed: indexes,
            rejected,
            first_error,
        }
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

/// The metrics every message touches, registered once per sink: the
/// delivery callback runs for every record, and a registry look-up per
/// metric per record was all it did besides settling.
#[derive(Clone)]
pub(crate) struct MessageMetrics {
    /// `collector_kafka_in_flight_records`: up at enqueue, down at delivery.
    pub(crate) in_flight: metrics::Gauge,
    delivered: metrics::Counter,
    ack_latency: metrics::Histogram,
    sample_to_ack: metrics::Histogram,
}

impl MessageMetrics {
    pub(crate) fn register() -> Self {
        Self {
            in_flight: metrics::gauge!(names::KAFKA_IN_FLIGHT),
            delivered: metrics::counter!(names::KAFKA_DELIVERED),
            ack_latency: metrics::histogram!(names::KAFKA_ACK_LATENCY),
            sample_to_ack: metrics::histogram!(names::SAMPLE_TO_ACK),
        }
    }
}

/// Producer context: settles deliveries and tracks broker reachability.
pub(crate) struct Context {
    /// The per-message metrics.
    pub(crate) metrics: MessageMetrics,
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
        let m = &self.metrics;
        m.in_flight.decrement(1.0);
        match result {
            Ok(_) => {
                m.delivered.increment(1);
                m.ack_latency.record(p.enqueued.elapsed().as_secs_f64());
                let now_us = chrono::Utc::now().timestamp_micros();
                m.sample_to_ack
                    .record((now_us - p.read_time_us).max(0) as f64 / 1e6);
                p.ack.settle_ok();
            }
            Err((e, _)) => {
                if is_fencing(e.rdkafka_error_code()) && !self.fenced.swap(true, Ordering::AcqRel) {
                    self.up.set(Reachability::Down);
                    metrics::gauge!(names::KAFKA_UP).set(0.0);
                }
                let code = e.rdkafka_error_code();
                let reason = match (code, permanent(code)) {
                    (_, Some(cause)) => cause.label(),
                    (Some(RDKafkaErrorCode::MessageTimedOut), _) => "timeout",
                    (Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight), _) => {
                        "purged"
                    }
                    _ => "error",
                };
                metrics::counter!(names::KAFKA_FAILED, "reason" => reason).increment(1);
                p.ack.settle_error(p.index, e);
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
        let settled = ack.wait().await;
        assert_eq!(settled.failed, vec![0, 2]);
        assert_eq!(settled.first_error.as_deref(), Some("MessageTimedOut"));
    }
}

#[cfg(test)]
mod classification {
    use super::*;

    /// Refusals that will never pass are rejected (dead letters); outages,
    /// timeouts and leader moves stay transient (spill and replay).
    #[tokio::test]
    async fn permanent_errors_are_rejected_and_transient_ones_failed() {
        use RDKafkaErrorCode as C;
        for (code, cause) in [
            (C::MessageSizeTooLarge, RejectCause::TooLarge),
            (C::TopicAuthorizationFailed, RejectCause::NotAuthorized),
            (C::InvalidRecord, RejectCause::Invalid),
            (C::UnknownTopic, RejectCause::UnknownTopic),
        ] {
            assert_eq!(permanent(Some(code)), Some(cause), "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::QueueFull,
            C::RequestTimedOut,
            C::PurgeInflight,
            C::NotEnoughReplicas,
            C::UnknownTopicOrPartition,
        ] {
            assert_eq!(permanent(Some(code)), None, "{code:?}");
        }
        let ack = BatchAck::new(2);
        ack.settle_error(0, &KafkaError::MessageProduction(C::MessageSizeTooLarge));
        ack.settle_error(1, &KafkaError::MessageProduction(C::MessageTimedOut));
        let settled = ack.wait().await;
        assert_eq!(settled.failed, vec![1]);
        assert_eq!(settled.rejected.len(), 1);
        assert_eq!(settled.rejected[0].index, 0);
        assert_eq!(settled.rejected[0].cause, RejectCause::TooLarge);
    }
}

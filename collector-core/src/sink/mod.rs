//! Where batches of records go. A sink acknowledges per record, so a
//! partial failure names exactly the records that must be retried or
//! spilled; nothing is ever counted as delivered before the destination
//! confirmed it.

pub mod kafka;

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::SinkError;
use crate::record::Record;

/// A record as the destination stores it (for Kafka: key and JSON value).
/// This is what the spill keeps, so a replay sends exactly the bytes the
/// first attempt would have sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message key (the device id).
    pub key: String,
    /// The encoded record.
    pub payload: Vec<u8>,
    /// The record's read time, microseconds since the Unix epoch.
    pub read_time_us: i64,
}

/// Why the batcher flushed a batch (the `reason` label of
/// `collector_batches_flushed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `batch.interval` elapsed.
    Interval,
    /// `batch.max_records` reached.
    Count,
    /// `batch.max_bytes` reached.
    Bytes,
    /// The collector is stopping.
    Shutdown,
}

impl FlushReason {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            FlushReason::Interval => "interval",
            FlushReason::Count => "count",
            FlushReason::Bytes => "bytes",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

/// Records grouped for delivery.
#[derive(Debug)]
pub struct Batch {
    /// The records, in the order they were read.
    pub records: Vec<Record>,
    /// The batcher's size estimate.
    pub estimated_bytes: usize,
    /// Why it was flushed.
    pub reason: FlushReason,
    /// When it was flushed.
    pub flushed_at: Instant,
}

/// The outcome of delivering one batch.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    /// Indexes (into `Batch::records`) of records that were not delivered.
    pub failed: Vec<usize>,
    /// The first error seen, for the log.
    pub error: Option<SinkError>,
}

/// A batch encoded by its sink, so that encoding (milliseconds for a large
/// batch) can run apart from delivery, off the executor threads.
#[derive(Debug)]
pub struct Encoded {
    /// The messages to deliver.
    pub messages: Vec<Message>,
    /// For each message, the index of its record in the batch.
    index: Vec<usize>,
    /// Records that could not be encoded.
    failed: Vec<usize>,
    /// The first encoding error.
    error: Option<SinkError>,
}

impl Encoded {
    /// Encodes every record of `batch` with `sink`.
    pub fn new<S: Sink + ?Sized>(sink: &S, batch: &Batch) -> Encoded {
        let mut encoded = Encoded {
            messages: Vec::with_capacity(batch.records.len()),
            index: Vec::with_capacity(batch.records.len()),
            failed: Vec::new(),
            error: None,
        };
        for (i, r) in batch.records.iter().enumerate() {
            match sink.encode(r) {
                Ok(m) => {
                    encoded.messages.push(m);
                    encoded.index.push(i);
                }
                Err(e) => {
                    encoded.failed.push(i);
                    encoded.error.get_or_insert(e);
                }
            }
        }
        encoded
    }

    /// The batch's report from the delivery report of its messages:
    /// failed indexes refer to the batch's records.
    pub fn settle(self, report: DeliveryReport) -> DeliveryReport {
        let mut failed = self.failed;
        failed.extend(
            report
                .failed
                .iter()
                .filter_map(|&j| self.index.get(j).copied()),
        );
        failed.sort_unstable();
        DeliveryReport {
            failed,
            error: self.error.or(report.error),
        }
    }
}

/// A destination for records.
///
/// A sink works on encoded [`Message`]s so that what it could not deliver
/// can be spilled and replayed byte for byte; [`Sink::deliver`] is the
/// convenience for typed batches.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Encodes one record the way this sink stores it.
    fn encode(&self, record: &Record) -> Result<Message, SinkError>;

    /// Delivers messages; resolves once every one is acknowledged or has
    /// definitely failed. `DeliveryReport::failed` indexes `messages`.
    async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport;

    /// Delivers a batch of records (encode, then deliver); failed indexes
    /// refer to `batch.records`.
    async fn deliver(&self, batch: &Batch) -> DeliveryReport {
        let encoded = Encoded::new(self, batch);
        let report = self.deliver_messages(&encoded.messages).await;
        encoded.settle(report)
    }

    /// Whether the destination is reachable now (drives `/readyz`).
    fn is_healthy(&self) -> bool {
        true
    }

    /// False only when the destination is known to be down; then the
    /// pipeline spills new batches instead of queueing them in memory.
    fn is_accepting(&self) -> bool {
        true
    }

    /// Gives up on messages still waiting for an acknowledgement: their
    /// deliveries resolve as failed now (so they can be spilled). Used when
    /// the shutdown grace period runs out.
    fn abort_pending(&self) {}

    /// Waits (at most `timeout`) for anything still buffered in the sink.
    async fn flush(&self, timeout: Duration) -> Result<(), SinkError>;

    /// Stops what the sink runs in the background (threads, connections)
    /// after the pipeline's last flush, so that it ends before the process
    /// does. Blocking: the pipeline calls it on the blocking pool. The
    /// default does nothing.
    fn close(&self) {}
}

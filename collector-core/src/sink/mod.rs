//! Where batches of records go. A sink acknowledges per record, so a
//! partial failure names exactly the records that must be retried or
//! spilled; nothing is ever counted as delivered before the destination
//! confirmed it.

pub mod kafka;

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::SinkError;
use crate::record::Record;

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

/// A destination for records.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch; resolves once every record is acknowledged or has
    /// definitely failed.
    async fn deliver(&self, batch: &Batch) -> DeliveryReport;

    /// Whether the destination is reachable now (drives `/readyz`).
    fn is_healthy(&self) -> bool {
        true
    }

    /// Waits (at most `timeout`) for anything still buffered in the sink.
    async fn flush(&self, timeout: Duration) -> Result<(), SinkError>;
}

//! Where batches of records go. A sink acknowledges per record, so a
//! partial failure names exactly the records that must be retried or
//! spilled; nothing is ever counted as delivered before the destination
//! confirmed it.

#[cfg(feature = "kafka")]
pub mod kafka;
mod reachability;
mod split;

pub use reachability::Reachability;
#[cfg(feature = "kafka")]
pub(crate) use reachability::SharedReachability;

use std::time::Duration;

use async_trait::async_trait;

use crate::config::RecordEncoding;
use crate::error::SinkError;
use crate::record::Record;

thread_local! {
    /// Where [`Message::json`] encodes, reused by the thread's next record.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scratch capacity kept between records (a larger one, after a huge
/// record, is given back).
const SCRATCH_KEEP: usize = 1 << 20;

/// A record as the destination stores it (for Kafka: key and encoded value).
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

impl Message {
    /// `record` in the documented JSON format (`docs/record-format.md`),
    /// keyed by its device id, stamped with `collector_id`: what the Kafka
    /// sink sends, for any sink that stores the same bytes.
    pub fn json(record: &Record, collector_id: &str) -> Result<Message, SinkError> {
        Self::encoded(record, |out| record.encode_json(collector_id, out))
            .map_err(|e| SinkError::Delivery(format!("encode: {e}")))
    }

    /// `record` as a `Record` of `docs/record.proto`, keyed and stamped as
    /// [`Message::json`]: what the Kafka sink sends with
    /// `kafka.encoding: protobuf`.
    pub fn protobuf(record: &Record, collector_id: &str) -> Message {
        let encoded = Self::encoded(record, |out| {
            record.encode_protobuf(collector_id, out);
            Ok::<_, std::convert::Infallible>(())
        });
        match encoded {
            Ok(m) => m,
            Err(never) => match never {},
        }
    }

    /// `record` in the encoding `encoding`.
    pub fn encode(
        record: &Record,
        collector_id: &str,
        encoding: RecordEncoding,
    ) -> Result<Message, SinkError> {
        match encoding {
            RecordEncoding::Json => Self::json(record, collector_id),
            RecordEncoding::Protobuf => Ok(Self::protobuf(record, collector_id)),
        }
    }

    fn encoded<E>(
        record: &Record,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Message, E> {
        // Encoded into this thread's scratch buffer, then copied into an
        // allocation of the exact size: no reallocation while it grows,
        // and a batch holds its records' bytes and no more. (Growing each
        // payload from an estimate reallocated most of them once, and the
        // fresh memory of every 10 s batch cost ~14 % of the collector's
        // CPU in page faults at the reference workload; BENCHMARKS.md.)
        let payload = SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode(scratch)?;
            let payload = scratch.as_slice().to_vec();
            if scratch.capacity() > SCRATCH_KEEP {
                *scratch = Vec::new();
            }
            Ok(payload)
        })?;
        Ok(Message {
            key: record.device_id.to_string(),
            payload,
            read_time_us: record.read_time.timestamp_micros(),
        })
    }
}

/// Why the batcher flushed a batch (the `reason` label of
/// `collector_batches_flushed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushReason {
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
    pub(crate) fn label(&self) -> &'static str {
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
pub(crate) struct Batch {
    /// The records, in the order they were read.
    pub(crate) records: Vec<Record>,
    /// Why it was flushed.
    pub(crate) reason: FlushReason,
}

/// The outcome of delivering one batch.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    /// Indexes (into the delivered messages) of those that were not
    /// delivered for a reason that may pass (timeout, broker down, leader
    /// change, full queue): they are spilled and retried.
    pub failed: Vec<usize>,
    /// The first error seen, for the log.
    pub error: Option<SinkError>,
    /// Messages the destination will never accept as they are (too large,
    /// not authorised, invalid): they go to the dead letters instead of
    /// being retried. An index both here and in `failed` counts as rejected.
    pub rejected: Vec<Rejected>,
}

/// A message the destination refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the delivered messages.
    pub index: usize,
    /// The class of the refusal (the metric label).
    pub cause: RejectCause,
    /// What the destination said, for the log and `deadletter inspect`.
    pub detail: String,
}

/// Why a destination refused a message for good: the explicit list of
/// permanent failures. Everything else is transient (spill and replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectCause {
    /// Larger than the destination accepts (and not splittable further).
    TooLarge,
    /// The collector's identity may not write there.
    NotAuthorized,
    /// The destination judged the record invalid (timestamp, format, policy).
    Invalid,
    /// The topic does not exist and will not be created.
    UnknownTopic,
    /// Any other refusal the sink knows to be permanent.
    Rejected,
}

impl RejectCause {
    /// Every cause, in label order.
    pub const ALL: [RejectCause; 5] = [
        RejectCause::TooLarge,
        RejectCause::NotAuthorized,
        RejectCause::Invalid,
        RejectCause::UnknownTopic,
        RejectCause::Rejected,
    ];

    /// The `cause` label of `collector_records_dead_lettered_total`.
    pub fn label(self) -> &'static str {
        match self {
            RejectCause::TooLarge => "too_large",
            RejectCause::NotAuthorized => "not_authorized",
            RejectCause::Invalid => "invalid",
            RejectCause::UnknownTopic => "unknown_topic",
            RejectCause::Rejected => "rejected",
        }
    }

    /// The cause with this label.
    pub fn from_label(label: &str) -> Option<RejectCause> {
        RejectCause::ALL.into_iter().find(|c| c.label() == label)
    }
}

/// A batch encoded by its sink, so that encoding (milliseconds for a large
/// batch) can run apart from delivery, off the executor threads.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The messages to deliver (a read too large for the sink is split
    /// into several, see [`split`]).
    pub(crate) messages: Vec<Message>,
    /// For each message, the index of its record in the batch.
    pub(crate) index: Vec<usize>,
    /// Records that could not be encoded.
    pub(crate) failed: Vec<usize>,
    /// The first encoding error.
    pub(crate) error: Option<SinkError>,
    /// Parts that stay above the sink's size limit however the read is
    /// split (one huge value): dead letters, with why.
    pub(crate) too_large: Vec<(Message, String)>,
}

impl Encoded {
    /// Encodes every record of `batch` with `sink`, splitting those whose
    /// encoding exceeds [`Sink::max_message_bytes`].
    pub(crate) fn new<S: Sink + ?Sized>(sink: &S, batch: &Batch) -> Encoded {
        let max = sink.max_message_bytes();
        let mut encoded = Encoded {
            messages: Vec::with_capacity(batch.records.len()),
            index: Vec::with_capacity(batch.records.len()),
            failed: Vec::new(),
            error: None,
            too_large: Vec::new(),
        };
        for (i, r) in batch.records.iter().enumerate() {
            match split::encode_within(sink, r, max) {
                Ok(fitted) => {
                    for m in fitted.messages {
                        encoded.messages.push(m);
                        encoded.index.push(i);
                    }
                    encoded.too_large.extend(fitted.too_large);
                }
                Err(e) => {
                    encoded.failed.push(i);
                    encoded.error.get_or_insert(e);
                }
            }
        }
        encoded
    }
}

/// A destination for records.
///
/// A sink works on encoded [`Message`]s so that what it could not deliver
/// can be spilled and replayed byte for byte. What the pipeline calls, and
/// when:
///
/// - [`Sink::encode`] once per record, on the blocking pool (never twice:
///   a record that fails delivery is spilled from its first encoding);
/// - [`Sink::deliver_messages`] for each batch and each replayed spill
///   entry: at most `batch.max_in_flight` live batches at a time, plus one
///   replayed entry;
/// - [`Sink::reachability`] before each batch (down: straight to the
///   spill) and for `/readyz`;
/// - at shutdown, [`Sink::abort_pending`] (on the blocking pool) if the
///   grace runs short, then [`Sink::flush`] and [`Sink::close`].
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Encodes one record the way this sink stores it.
    fn encode(&self, record: &Record) -> Result<Message, SinkError>;

    /// Delivers messages; resolves once every one is acknowledged or has
    /// definitely failed. `DeliveryReport::failed` and `rejected` index
    /// `messages`.
    async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport;

    /// The largest message (key plus payload, in bytes) the destination
    /// accepts. A read whose encoding is larger is split into parts
    /// ([`crate::record::RecordPart`]); a part that stays larger (one huge
    /// value) goes to the dead letters. Default: no limit.
    fn max_message_bytes(&self) -> Option<usize> {
        None
    }

    /// Whether the destination can take records, as last observed. `Up`
    /// makes `/readyz` pass and lets the replay run; `Down` sends new
    /// batches straight to the spill instead of queueing them in memory.
    /// Default: always `Up`.
    fn reachability(&self) -> Reachability {
        Reachability::Up
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

//! What one device read produces, and how it is written on Kafka.
//!
//! A [`Record`] is one successful read of one device: every configured node
//! with its value, status and timestamps, in configuration order. Non-Good
//! samples are kept. The JSON encoding ([`Record::encode_json`], in `json`)
//! is the public contract with consumers and is documented in
//! `docs/record-format.md`, with a JSON Schema in `docs/record.schema.json`;
//! the same record in Protobuf (`docs/record.proto`) is written by
//! [`Record::encode_protobuf`] (in `protobuf`). This module holds the types.

mod json;
mod protobuf;

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// The version of the record (`schema`, in JSON and Protobuf); bumped on
/// incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// One successful read of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The device's configured id; also the Kafka message key.
    pub device_id: Arc<str>,
    /// Per-device sequence number: increases by one per record within a
    /// run and never repeats across restarts (see `docs/record-format.md`).
    pub seq: u64,
    /// When the read request was sent (collector clock).
    pub read_time: DateTime<Utc>,
    /// One sample per configured node, in configuration order (of this
    /// part, when the read was split).
    pub samples: Vec<Sample>,
    /// Set when one read was split into several records because its
    /// encoding exceeded what the sink accepts (see [`RecordPart`]);
    /// `None` for a whole read.
    pub part: Option<RecordPart>,
    /// How the samples were obtained: a read of every node, or the data
    /// changes of one publish response of a subscription.
    pub origin: Origin,
}

/// How a record's samples were obtained (`origin` in the JSON encoding,
/// written only when it is not [`Origin::Read`], so polled records are
/// unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Origin {
    /// A read of every configured node, in configuration order.
    #[default]
    Read,
    /// The data changes of one publish response: only the nodes that
    /// changed (a node may appear more than once, oldest first), each
    /// with its own timestamps and status.
    DataChange,
    /// Values the server kept for a stretch of time the collector did not
    /// read (a device outage, a collector restart), read from its history
    /// afterwards: any nodes, several values per node, oldest first per
    /// node, all with source timestamps inside the window.
    Backfill(Window),
}

/// A stretch of time: `from` exclusive, `to` exclusive (the last read
/// before a gap and the first one after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The last successful read before the gap.
    pub from: DateTime<Utc>,
    /// The first successful read after it.
    pub to: DateTime<Utc>,
}

impl Origin {
    /// The name written in the record (`read`, `data_change`).
    pub fn label(&self) -> &'static str {
        match self {
            Origin::Read => "read",
            Origin::DataChange => "data_change",
            Origin::Backfill(_) => "backfill",
        }
    }
}

/// Which part of a split read a record is: parts share `device_id`, `seq`
/// and `read_time`, and their samples, concatenated in `index` order, are
/// the read's samples in configuration order. Consumers deduplicate on
/// `(device_id, seq, part)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPart {
    /// 0-based index of this part.
    pub index: u32,
    /// How many parts the read was split into.
    pub count: u32,
}

/// One node's value as the server returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The node id as configured (e.g. `ns=2;s=Tag007`).
    pub node_id: Arc<str>,
    /// The value; [`Value::Null`] when the server sent none (Bad status).
    pub value: Value,
    /// The server's status for this value.
    pub status: Status,
    /// The source (device) timestamp, when the server sent one.
    pub source_timestamp: Option<DateTime<Utc>>,
    /// The server timestamp, when the server sent one.
    pub server_timestamp: Option<DateTime<Utc>>,
}

/// A status code with its symbolic name (OPC UA Part 4, 7.39).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The full 32-bit code (severity, sub-code and info bits).
    pub code: u32,
    /// The symbolic name of the sub-code, e.g. `Good`, `BadSensorFailure`.
    pub name: &'static str,
}

impl Status {
    /// The Good status.
    pub const GOOD: Status = Status {
        code: 0,
        name: "Good",
    };

    /// Good, Uncertain or Bad, from the two severity bits.
    pub fn quality(&self) -> Quality {
        match self.code >> 30 {
            0 => Quality::Good,
            1 => Quality::Uncertain,
            _ => Quality::Bad,
        }
    }
}

/// The severity class of a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Severity bits 00.
    Good,
    /// Severity bits 01.
    Uncertain,
    /// Severity bits 10 or 11.
    Bad,
}

impl Quality {
    /// Lower-case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
}

/// A typed value. The variant names are the OPC UA built-in type names and
/// appear verbatim as the `type` field of the JSON encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value (Bad samples, or an empty variant).
    Null,
    /// Boolean.
    Boolean(bool),
    /// SByte.
    SByte(i8),
    /// Byte.
    Byte(u8),
    /// Int16.
    Int16(i16),
    /// UInt16.
    UInt16(u16),
    /// Int32.
    Int32(i32),
    /// UInt32.
    UInt32(u32),
    /// Int64 (JSON number; may exceed 2^53).
    Int64(i64),
    /// UInt64 (JSON number; may exceed 2^53).
    UInt64(u64),
    /// Float.
    Float(f32),
    /// Double.
    Double(f64),
    /// String.
    String(String),
    /// DateTime, encoded as RFC 3339 UTC.
    DateTime(DateTime<Utc>),
    /// ByteString, encoded as base64.
    ByteString(Vec<u8>),
    /// Guid, as its canonical text.
    Guid(String),
    /// StatusCode value.
    StatusCode(u32),
    /// Any other built-in type, as text, with its OPC UA type name.
    Other {
        /// The OPC UA type name (e.g. `LocalizedText`).
        type_name: &'static str,
        /// A readable rendering of the value.
        text: String,
    },
    /// A one-dimensional array of one element type.
    Array {
        /// The element type name, e.g. `Double`.
        element_type: &'static str,
        /// The elements.
        values: Vec<Value>,
    },
}

impl Value {
    /// The OPC UA type name as written in the JSON `type` field; arrays
    /// are written `Element[]`.
    pub fn type_name(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            Value::Null => Borrowed("Null"),
            Value::Boolean(_) => Borrowed("Boolean"),
            Value::SByte(_) => Borrowed("SByte"),
            Value::Byte(_) => Borrowed("Byte"),
            Value::Int16(_) => Borrowed("Int16"),
            Value::UInt16(_) => Borrowed("UInt16"),
            Value::Int32(_) => Borrowed("Int32"),
            Value::UInt32(_) => Borrowed("UInt32"),
            Value::Int64(_) => Borrowed("Int64"),
            Value::UInt64(_) => Borrowed("UInt64"),
            Value::Float(_) => Borrowed("Float"),
            Value::Double(_) => Borrowed("Double"),
            Value::String(_) => Borrowed("String"),
            Value::DateTime(_) => Borrowed("DateTime"),
            Value::ByteString(_) => Borrowed("ByteString"),
            Value::Guid(_) => Borrowed("Guid"),
            Value::StatusCode(_) => Borrowed("StatusCode"),
            Value::Other { type_name, .. } => Borrowed(type_name),
            Value::Array { element_type, .. } => Owned(format!("{element_type}[]")),
        }
    }

    /// A rough size of the encoded value, for the batcher's byte limit.
    fn estimated_bytes(&self) -> usize {
        match self {
            Value::String(s) | Value::Guid(s) => s.len() + 2,
            Value::Other { text, .. } => text.len() + 2,
            Value::ByteString(b) => b.len() * 4 / 3 + 4,
            Value::Array { values, .. } => {
                2 + values
                    .iter()
                    .map(|v| v.estimated_bytes() + 1)
                    .sum::<usize>()
            }
            Value::DateTime(_) => 32,
            _ => 20,
        }
    }
}

impl Record {
    /// A whole read (not a part).
    pub fn new(
        device_id: Arc<str>,
        seq: u64,
        read_time: DateTime<Utc>,
        samples: Vec<Sample>,
    ) -> Record {
        Record {
            device_id,
            seq,
            read_time,
            samples,
            part: None,
            origin: Origin::Read,
        }
    }

    /// The same record with `origin`.
    pub fn with_origin(mut self, origin: Origin) -> Record {
        self.origin = origin;
        self
    }

    /// The samples in `range` as part `part` of this read (same device,
    /// `seq` and read time).
    pub fn part(&self, range: std::ops::Range<usize>, part: RecordPart) -> Record {
        Record {
            device_id: self.device_id.clone(),
            seq: self.seq,
            read_time: self.read_time,
            samples: self
                .samples
                .get(range)
                .map(<[Sample]>::to_vec)
                .unwrap_or_default(),
            part: Some(part),
            origin: self.origin,
        }
    }

    /// A rough size of the encoded record in bytes, used by the batcher's
    /// byte limit without encoding twice.
    pub fn estimated_bytes(&self) -> usize {
        160 + self.device_id.len()
            + self
                .samples
                .iter()
                .map(Sample::estimated_bytes)
                .sum::<usize>()
    }
}

impl Sample {
    /// A rough size of the encoded sample in bytes.
    pub(crate) fn estimated_bytes(&self) -> usize {
        150 + self.node_id.len() + self.value.estimated_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_from_severity_bits() {
        assert_eq!(Status::GOOD.quality(), Quality::Good);
        let bad = Status {
            code: 0x808B_0000,
            name: "BadSensorFailure",
        };
        assert_eq!(bad.quality(), Quality::Bad);
        let unc = Status {
            code: 0x4000_0000,
            name: "Uncertain",
        };
        assert_eq!(unc.quality(), Quality::Uncertain);
    }
}

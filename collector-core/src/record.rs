//! What one device read produces, and how it is written on Kafka.
//!
//! A [`Record`] is one successful read of one device: every configured node
//! with its value, status and timestamps, in configuration order. Non-Good
//! samples are kept. The JSON encoding is the public contract with
//! consumers and is documented in `docs/record-format.md`, with a JSON
//! Schema in `docs/record.schema.json`.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// The version of the JSON envelope; bumped on incompatible changes.
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
    /// One sample per configured node, in configuration order.
    pub samples: Vec<Sample>,
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
    /// A rough size of the encoded record in bytes, used by the batcher's
    /// byte limit without encoding twice.
    pub fn estimated_bytes(&self) -> usize {
        160 + self.device_id.len()
            + self
                .samples
                .iter()
                .map(|s| 150 + s.node_id.len() + s.value.estimated_bytes())
                .sum::<usize>()
    }

    /// Appends the JSON encoding of this record to `out`.
    pub fn encode_json(
        &self,
        collector_id: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        serde_json::to_writer(
            out,
            &Envelope {
                record: self,
                collector_id,
            },
        )
    }
}

/// RFC 3339 in UTC with the fraction in 0, 3, 6 or 9 digits (as chrono's
/// `SecondsFormat::AutoSi`), written into a stack buffer: timestamps are
/// three per sample, so the encoder must not allocate for them.
struct Rfc3339<'a>(&'a DateTime<Utc>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 30];
        let n = format_rfc3339(self.0, &mut buf);
        // Only ASCII digits and separators were written.
        s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default())
    }
}

fn format_rfc3339(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> usize {
    use chrono::{Datelike, Timelike};
    fn put(buf: &mut [u8], at: usize, v: u32, width: usize) {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let year = t.year().clamp(0, 9999) as u32;
    put(buf, 0, year, 4);
    buf[4] = b'-';
    put(buf, 5, t.month(), 2);
    buf[7] = b'-';
    put(buf, 8, t.day(), 2);
    buf[10] = b'T';
    put(buf, 11, t.hour(), 2);
    buf[13] = b':';
    put(buf, 14, t.minute(), 2);
    buf[16] = b':';
    put(buf, 17, t.second(), 2);
    let mut n = 19;
    // A leap second carries nanos >= 1e9; keep it inside the second.
    let nanos = t.nanosecond().min(999_999_999);
    if nanos != 0 {
        buf[n] = b'.';
        n += 1;
        let (value, width) = if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        put(buf, n, value, width);
        n += width;
    }
    buf[n] = b'Z';
    n + 1
}

/// The JSON envelope: a record plus the collector that produced it.
struct Envelope<'a> {
    record: &'a Record,
    collector_id: &'a str,
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("schema", &SCHEMA_VERSION)?;
        m.serialize_entry("device_id", &*r.device_id)?;
        m.serialize_entry("seq", &r.seq)?;
        m.serialize_entry("collector_id", self.collector_id)?;
        m.serialize_entry("read_time", &Rfc3339(&r.read_time))?;
        m.serialize_entry("samples", &Samples(&r.samples))?;
        m.end()
    }
}

struct Samples<'a>(&'a [Sample]);

impl Serialize for Samples<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for sample in self.0 {
            seq.serialize_element(sample)?;
        }
        seq.end()
    }
}

impl Serialize for Sample {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("node_id", &*self.node_id)?;
        m.serialize_entry("type", &TypeName(&self.value))?;
        m.serialize_entry("value", &self.value)?;
        m.serialize_entry("status", &StatusJson(&self.status))?;
        if let Some(t) = &self.source_timestamp {
            m.serialize_entry("source_timestamp", &Rfc3339(t))?;
        }
        if let Some(t) = &self.server_timestamp {
            m.serialize_entry("server_timestamp", &Rfc3339(t))?;
        }
        m.end()
    }
}

/// The `type` field, written without allocating (also for `Type[]`).
struct TypeName<'a>(&'a Value);

impl Serialize for TypeName<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Array { element_type, .. } => s.collect_str(&format_args!("{element_type}[]")),
            other => s.serialize_str(&other.type_name()),
        }
    }
}

struct StatusJson<'a>(&'a Status);

impl Serialize for StatusJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("code", &self.0.code)?;
        m.serialize_entry("name", self.0.name)?;
        m.end()
    }
}

/// Non-finite floats have no JSON number; they are written as the strings
/// `"NaN"`, `"Infinity"` and `"-Infinity"`.
fn serialize_float<S: Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("NaN")
    } else if v.is_infinite() {
        s.serialize_str(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(v)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Boolean(v) => s.serialize_bool(*v),
            Value::SByte(v) => s.serialize_i8(*v),
            Value::Byte(v) => s.serialize_u8(*v),
            Value::Int16(v) => s.serialize_i16(*v),
            Value::UInt16(v) => s.serialize_u16(*v),
            Value::Int32(v) => s.serialize_i32(*v),
            Value::UInt32(v) => s.serialize_u32(*v),
            Value::Int64(v) => s.serialize_i64(*v),
            Value::UInt64(v) => s.serialize_u64(*v),
            Value::Float(v) if v.is_finite() => s.serialize_f32(*v),
            Value::Float(v) => serialize_float(f64::from(*v), s),
            Value::Double(v) => serialize_float(*v, s),
            Value::String(v) | Value::Guid(v) => s.serialize_str(v),
            Value::Other { text, .. } => s.serialize_str(text),
            Value::DateTime(t) => Rfc3339(t).serialize(s),
            Value::ByteString(b) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::StatusCode(c) => s.serialize_u32(*c),
            Value::Array { values, .. } => {
                let mut seq = s.serialize_seq(Some(values.len()))?;
                for v in values {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: Value, status: Status) -> Sample {
        Sample {
            node_id: Arc::from("ns=2;s=Tag000"),
            value,
            status,
            source_timestamp: Some(DateTime::from_timestamp_millis(1_700_000_000_123).unwrap()),
            server_timestamp: None,
        }
    }

    #[test]
    fn encodes_envelope_and_types() {
        let record = Record {
            device_id: Arc::from("dev-1"),
            seq: 42,
            read_time: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            samples: vec![
                sample(Value::Double(1.5), Status::GOOD),
                sample(
                    Value::Null,
                    Status {
                        code: 0x808B_0000,
                        name: "BadSensorFailure",
                    },
                ),
                sample(
                    Value::Array {
                        element_type: "Double",
                        values: vec![Value::Double(1.0), Value::Double(f64::NAN)],
                    },
                    Status::GOOD,
                ),
            ],
        };
        let mut out = Vec::new();
        record.encode_json("c-1", &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["device_id"], "dev-1");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["collector_id"], "c-1");
        assert_eq!(v["read_time"], "2023-11-14T22:13:20Z");
        let s = &v["samples"];
        assert_eq!(s[0]["type"], "Double");
        assert_eq!(s[0]["value"], 1.5);
        assert_eq!(s[0]["source_timestamp"], "2023-11-14T22:13:20.123Z");
        assert!(s[0].get("server_timestamp").is_none());
        assert_eq!(s[1]["value"], serde_json::Value::Null);
        assert_eq!(s[1]["status"]["code"], 0x808B_0000u32);
        assert_eq!(s[1]["status"]["name"], "BadSensorFailure");
        assert_eq!(s[2]["type"], "Double[]");
        assert_eq!(s[2]["value"][1], "NaN");
        assert!(record.estimated_bytes() >= out.len() / 2);
    }

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

    #[test]
    fn timestamps_match_chrono_autosi() {
        use chrono::SecondsFormat;
        for nanos in [0u32, 123_000_000, 123_456_000, 123_456_789, 1, 999_999_999] {
            for secs in [0i64, 1_700_000_000, 4_102_444_799] {
                let t = DateTime::from_timestamp(secs, nanos).unwrap();
                let mut buf = [0u8; 30];
                let n = format_rfc3339(&t, &mut buf);
                assert_eq!(
                    std::str::from_utf8(&buf[..n]).unwrap(),
                    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
                );
            }
        }
    }

    #[test]
    fn float_roundtrips_exactly() {
        let v = Value::Float(0.1f32);
        let text = serde_json::to_string(&v).unwrap();
        let back: f32 = serde_json::from_str(&text).unwrap();
        assert_eq!(back, 0.1f32);
    }
}

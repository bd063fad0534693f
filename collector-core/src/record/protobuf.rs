//! The record's Protobuf encoding (`kafka.encoding: protobuf`): the
//! messages of `docs/record.proto`, written by hand.
//!
//! No generated code and no intermediate structs: the record is walked
//! once and written straight into the caller's buffer, as the JSON encoder
//! does. A nested message's length is written before its body, which is
//! not known yet; the body is written after a one-byte length (samples and
//! timestamps are shorter than 128 bytes) and moved along in the rare case
//! its length needs more bytes.

use chrono::{DateTime, Utc};

use super::{Origin, Record, Sample, Value, SCHEMA_VERSION};

/// Wire types (Protobuf encoding guide, "Message Structure").
const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

impl Record {
    /// Appends the Protobuf encoding of this record to `out`: a
    /// `opc_collector.record.v1.Record` of `docs/record.proto`, the same
    /// fields as [`Record::encode_json`].
    pub fn encode_protobuf(&self, collector_id: &str, out: &mut Vec<u8>) {
        uint(out, 1, u64::from(SCHEMA_VERSION));
        string(out, 2, &self.device_id);
        uint(out, 3, self.seq);
        if let Some(part) = &self.part {
            uint(out, 4, u64::from(part.index));
            uint(out, 5, u64::from(part.count));
        }
        match &self.origin {
            Origin::Read => {}
            Origin::DataChange => uint(out, 6, 1),
            Origin::Backfill(w) => {
                uint(out, 6, 2);
                nested(out, 7, |out| {
                    timestamp(out, 1, &w.from);
                    timestamp(out, 2, &w.to);
                });
            }
        }
        string(out, 8, collector_id);
        timestamp(out, 9, &self.read_time);
        for sample in &self.samples {
            nested(out, 10, |out| sample.encode_protobuf(out));
        }
    }
}

impl Sample {
    fn encode_protobuf(&self, out: &mut Vec<u8>) {
        string(out, 1, &self.node_id);
        if !matches!(self.value, Value::Null) {
            nested(out, 2, |out| self.value.encode_protobuf(out));
        }
        uint(out, 3, u64::from(self.status.code));
        if self.status.code != 0 {
            string(out, 4, self.status.name);
        }
        if let Some(t) = &self.source_timestamp {
            timestamp(out, 5, t);
        }
        if let Some(t) = &self.server_timestamp {
            timestamp(out, 6, t);
        }
    }
}

impl Value {
    /// The body of a `Value` message: the oneof case, written even when
    /// it holds its type's zero (a oneof case is present once set).
    /// Nothing for [`Value::Null`].
    fn encode_protobuf(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => {}
            Value::Boolean(v) => scalar(out, 1, u64::from(*v)),
            Value::SByte(v) => scalar(out, 2, zigzag(i64::from(*v))),
            Value::Byte(v) => scalar(out, 3, u64::from(*v)),
            Value::Int16(v) => scalar(out, 4, zigzag(i64::from(*v))),
            Value::UInt16(v) => scalar(out, 5, u64::from(*v)),
            Value::Int32(v) => scalar(out, 6, zigzag(i64::from(*v))),
            Value::UInt32(v) => scalar(out, 7, u64::from(*v)),
            Value::Int64(v) => scalar(out, 8, zigzag(*v)),
            Value::UInt64(v) => scalar(out, 9, *v),
            Value::Float(v) => {
                key(out, 10, I32);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Double(v) => {
                key(out, 11, I64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::String(v) => bytes(out, 12, v.as_bytes()),
            Value::DateTime(t) => timestamp(out, 13, t),
            Value::ByteString(v) => bytes(out, 14, v),
            Value::Guid(v) => bytes(out, 15, v.as_bytes()),
            Value::StatusCode(v) => scalar(out, 16, u64::from(*v)),
            Value::Other { type_name, text } => nested(out, 17, |out| {
                string(out, 1, type_name);
                string(out, 2, text);
            }),
            Value::Array {
                element_type,
                values,
            } => nested(out, 18, |out| {
                string(out, 1, element_type);
                for v in values {
                    nested(out, 2, |out| v.encode_protobuf(out));
                }
            }),
        }
    }
}

/// A field's key: its number and wire type.
fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from((field << 3) | wire));
}

/// Base-128 varint, least significant group first.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// ZigZag, for `sint32`/`sint64`: small negative numbers stay short. A
/// value sign-extended from 32 bits gives the `sint32` encoding.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// A varint field, always written (a oneof case).
fn scalar(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

/// A varint field, left out when 0 (proto3's default).
fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        scalar(out, field, v);
    }
}

/// A length-delimited field, always written (a oneof case).
fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(out, field, LEN);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// A string field, left out when empty (proto3's default).
fn string(out: &mut Vec<u8>, field: u32, v: &str) {
    if !v.is_empty() {
        bytes(out, field, v.as_bytes());
    }
}

/// An embedded message written by `body`, always written (present even
/// when empty).
fn nested(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len as u64);
        out.splice(at..=at, prefix);
    }
}

/// A `google.protobuf.Timestamp`: seconds since the Unix epoch (negative
/// before it) and the non-negative nanoseconds within the second.
fn timestamp(out: &mut Vec<u8>, field: u32, t: &DateTime<Utc>) {
    nested(out, field, |out| {
        uint(out, 1, t.timestamp() as u64);
        // A leap second carries nanos >= 1e9; keep it inside the second.
        uint(
            out,
            2,
            u64::from(t.timestamp_subsec_nanos().min(999_999_999)),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn varints_and_zigzag_match_the_encoding_guide() {
        assert_eq!(encoded(|o| varint(o, 150)), [0x96, 0x01]);
        assert_eq!(encoded(|o| varint(o, 0)), [0]);
        assert_eq!(encoded(|o| varint(o, u64::MAX)).len(), 10);
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(-2), 3);
        assert_eq!(zigzag(i64::from(i32::MIN)), u64::from(u32::MAX));
    }

    #[test]
    fn a_long_nested_message_gets_a_longer_length() {
        let body = vec![b'x'; 300];
        let out = encoded(|o| nested(o, 1, |o| bytes(o, 2, &body)));
        // key 0x0a, length 303 as a two-byte varint, then the body: key
        // 0x12, length 300 (two bytes), the bytes.
        assert_eq!(&out[..3], &[0x0a, 0xaf, 0x02]);
        assert_eq!(&out[3..6], &[0x12, 0xac, 0x02]);
        assert_eq!(out.len(), 3 + 303);
    }
}

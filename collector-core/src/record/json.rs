//! The JSON encoding of a record (`docs/record-format.md`, the default on
//! Kafka), written by hand: it runs once per sample on the hot path.

use base64::Engine as _;
use chrono::{DateTime, Utc};

use super::{Origin, Record, Sample, Value, SCHEMA_VERSION};

impl Record {
    /// Appends the JSON encoding of this record to `out` (the format of
    /// `docs/record-format.md`).
    ///
    /// Written by hand rather than through serde: this runs once per sample
    /// on the hot path, and fixed keys, timestamps, type and status names
    /// need no escaping; only strings from the device or the configuration
    /// (ids, node ids, string values) go through serde_json's escaper.
    pub fn encode_json(
        &self,
        collector_id: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"schema\":");
        push_display(out, SCHEMA_VERSION);
        out.extend_from_slice(b",\"device_id\":");
        push_str(out, &self.device_id)?;
        out.extend_from_slice(b",\"seq\":");
        push_display(out, self.seq);
        if let Some(part) = &self.part {
            out.extend_from_slice(b",\"part\":");
            push_display(out, part.index);
            out.extend_from_slice(b",\"parts\":");
            push_display(out, part.count);
        }
        if self.origin != Origin::Read {
            out.extend_from_slice(b",\"origin\":\"");
            out.extend_from_slice(self.origin.label().as_bytes());
            out.push(b'"');
        }
        if let Origin::Backfill(w) = &self.origin {
            let mut times = TimeCache::default();
            out.extend_from_slice(b",\"window\":{\"from\":");
            times.push(out, &w.from);
            out.extend_from_slice(b",\"to\":");
            times.push(out, &w.to);
            out.push(b'}');
        }
        out.extend_from_slice(b",\"collector_id\":");
        push_str(out, collector_id)?;
        let mut times = TimeCache::default();
        out.extend_from_slice(b",\"read_time\":");
        times.push(out, &self.read_time);
        out.extend_from_slice(b",\"samples\":[");
        for (i, sample) in self.samples.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            sample.encode_json(out, &mut times)?;
        }
        out.extend_from_slice(b"]}");
        Ok(())
    }
}

impl Sample {
    fn encode_json(
        &self,
        out: &mut Vec<u8>,
        times: &mut TimeCache,
    ) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"node_id\":");
        push_str(out, &self.node_id)?;
        out.extend_from_slice(b",\"type\":");
        match &self.value {
            Value::Array { element_type, .. } => {
                out.push(b'"');
                push_name(out, element_type);
                out.extend_from_slice(b"[]\"");
            }
            other => {
                out.push(b'"');
                push_name(out, &other.type_name());
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"value\":");
        self.value.encode_json(out, times)?;
        out.extend_from_slice(b",\"status\":{\"code\":");
        push_display(out, self.status.code);
        out.extend_from_slice(b",\"name\":\"");
        push_name(out, self.status.name);
        out.extend_from_slice(b"\"}");
        if let Some(t) = &self.source_timestamp {
            out.extend_from_slice(b",\"source_timestamp\":");
            times.push(out, t);
        }
        if let Some(t) = &self.server_timestamp {
            out.extend_from_slice(b",\"server_timestamp\":");
            times.push(out, t);
        }
        out.push(b'}');
        Ok(())
    }
}

impl Value {
    fn encode_json(
        &self,
        out: &mut Vec<u8>,
        times: &mut TimeCache,
    ) -> Result<(), serde_json::Error> {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Boolean(v) => out.extend_from_slice(if *v { b"true" } else { b"false" }),
            Value::SByte(v) => push_display(out, *v),
            Value::Byte(v) => push_display(out, *v),
            Value::Int16(v) => push_display(out, *v),
            Value::UInt16(v) => push_display(out, *v),
            Value::Int32(v) => push_display(out, *v),
            Value::UInt32(v) => push_display(out, *v),
            Value::Int64(v) => push_display(out, *v),
            Value::UInt64(v) => push_display(out, *v),
            Value::StatusCode(v) => push_display(out, *v),
            Value::Float(v) if v.is_finite() => serde_json::to_writer(&mut *out, v)?,
            Value::Float(v) => push_non_finite(out, f64::from(*v)),
            Value::Double(v) if v.is_finite() => serde_json::to_writer(&mut *out, v)?,
            Value::Double(v) => push_non_finite(out, *v),
            Value::String(v) | Value::Guid(v) => push_str(out, v)?,
            Value::Other { text, .. } => push_str(out, text)?,
            Value::DateTime(t) => times.push(out, t),
            Value::ByteString(b) => {
                // The base64 alphabet needs no escaping.
                out.push(b'"');
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(b)
                        .as_bytes(),
                );
                out.push(b'"');
            }
            Value::Array { values, .. } => {
                out.push(b'[');
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.encode_json(out, times)?;
                }
                out.push(b']');
            }
        }
        Ok(())
    }
}

/// A JSON string, escaped.
fn push_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, s)
}

/// A name from a fixed table (type and status names): identifiers, which
/// need no escaping; anything else is escaped to stay valid JSON.
fn push_name(out: &mut Vec<u8>, name: &str) {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        out.extend_from_slice(name.as_bytes());
    } else {
        for c in name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            out.push(c as u8);
        }
    }
}

/// An integer.
fn push_display(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Non-finite floats have no JSON number; they are written as the strings
/// `"NaN"`, `"Infinity"` and `"-Infinity"`.
fn push_non_finite(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(if v.is_nan() {
        b"\"NaN\"".as_slice()
    } else if v > 0.0 {
        b"\"Infinity\"".as_slice()
    } else {
        b"\"-Infinity\"".as_slice()
    });
}

/// Timestamps as quoted RFC 3339 strings, remembering the last one: the
/// samples of one read usually share their source and server timestamps,
/// so most are copied rather than formatted again.
#[derive(Default)]
struct TimeCache {
    last: Option<DateTime<Utc>>,
    buf: [u8; 30],
    len: usize,
}

impl TimeCache {
    fn push(&mut self, out: &mut Vec<u8>, t: &DateTime<Utc>) {
        if self.last != Some(*t) {
            self.len = format_rfc3339(t, &mut self.buf);
            self.last = Some(*t);
        }
        out.push(b'"');
        out.extend_from_slice(&self.buf[..self.len]);
        out.push(b'"');
    }
}

/// RFC 3339 in UTC with the fraction in 0, 3, 6 or 9 digits (as chrono's
/// `SecondsFormat::AutoSi`), written into a stack buffer: timestamps are
/// three per sample, so the encoder must not allocate for them.
fn format_rfc3339(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> usize {
    use chrono::{Datelike, Timelike};
    fn put(buf: &mut [u8], at: usize, v: u32, width: usize) {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let t = t.naive_utc();
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
        let (value, width) = if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{RecordPart, Status, Window};

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
            part: None,
            origin: Origin::Read,
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
        assert!(v.get("origin").is_none(), "a read's record is unchanged");
        let mut out = Vec::new();
        let changes = record.clone().with_origin(Origin::DataChange);
        changes.encode_json("c-1", &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["origin"], "data_change");
        let part = changes.part(0..1, RecordPart { index: 0, count: 2 });
        assert_eq!(part.origin, Origin::DataChange);
        let window = Window {
            from: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            to: DateTime::from_timestamp_millis(1_700_000_060_500).unwrap(),
        };
        let mut out = Vec::new();
        record
            .clone()
            .with_origin(Origin::Backfill(window))
            .encode_json("c-1", &mut out)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["origin"], "backfill");
        assert_eq!(v["window"]["from"], "2023-11-14T22:13:20Z");
        assert_eq!(v["window"]["to"], "2023-11-14T22:14:20.500Z");
    }

    #[test]
    fn escapes_what_comes_from_outside() {
        let record = Record {
            device_id: Arc::from("dev \"1\"\n"),
            seq: 1,
            read_time: DateTime::from_timestamp_millis(0).unwrap(),
            samples: vec![Sample {
                node_id: Arc::from("ns=2;s=A\\B"),
                value: Value::String("line\u{1}\"q\"".into()),
                status: Status::GOOD,
                source_timestamp: None,
                server_timestamp: None,
            }],
            part: None,
            origin: Origin::Read,
        };
        let mut out = Vec::new();
        record.encode_json("c\"x", &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["device_id"], "dev \"1\"\n");
        assert_eq!(v["collector_id"], "c\"x");
        assert_eq!(v["samples"][0]["node_id"], "ns=2;s=A\\B");
        assert_eq!(v["samples"][0]["value"], "line\u{1}\"q\"");
        assert_eq!(v["read_time"], "1970-01-01T00:00:00Z");
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

    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::Int64),
            any::<u64>().prop_map(Value::UInt64),
            any::<f32>().prop_map(Value::Float),
            any::<f64>().prop_map(Value::Double),
            "\\PC*".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::ByteString),
            (-8_000_000_000_000i64..8_000_000_000_000).prop_map(|ms| Value::DateTime(
                DateTime::from_timestamp_millis(ms).unwrap_or_default()
            )),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(|values| Value::Array {
                element_type: "Variant",
                values,
            })
        })
    }

    proptest::proptest! {
        /// Whatever the values, ids and node ids, the encoding is JSON that
        /// reads back to the same device, seq and node ids.
        #[test]
        fn any_record_encodes_to_valid_json(
            values in proptest::collection::vec(value(), 0..16),
            device in proptest::prelude::any::<String>(),
            node in proptest::prelude::any::<String>(),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let record = Record::new(
                Arc::from(device.as_str()),
                seq,
                Utc::now(),
                values
                    .into_iter()
                    .map(|value| Sample {
                        node_id: Arc::from(node.as_str()),
                        value,
                        status: Status::GOOD,
                        source_timestamp: None,
                        server_timestamp: None,
                    })
                    .collect(),
            );
            let mut out = Vec::new();
            record.encode_json("c", &mut out).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(v["device_id"].as_str(), Some(device.as_str()));
            proptest::prop_assert_eq!(v["seq"].as_u64(), Some(seq));
            for s in v["samples"].as_array().unwrap() {
                proptest::prop_assert_eq!(s["node_id"].as_str(), Some(node.as_str()));
            }
        }
    }

    #[test]
    fn float_roundtrips_exactly() {
        let v = Value::Float(0.1f32);
        let mut out = Vec::new();
        v.encode_json(&mut out, &mut TimeCache::default()).unwrap();
        let back: f32 = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, 0.1f32);
    }
}

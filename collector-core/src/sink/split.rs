//! Keeps every message within the sink's size limit: a read whose
//! encoding is too large (a gateway exposing a whole line as 12,000 tags)
//! is split into parts, each a valid record of its own with the same
//! device id and `seq` ([`RecordPart`]), instead of a message the broker
//! refuses forever. A part that stays too large whatever the split (one
//! huge value) is returned apart, for the dead letters.

use std::ops::Range;

use crate::error::SinkError;
use crate::record::{Record, RecordPart};
use crate::sink::{Message, Sink};

/// What [`encode_within`] made of one record.
#[derive(Debug, Default)]
pub(crate) struct Fitted {
    /// Messages within the limit, in part order.
    pub(crate) messages: Vec<Message>,
    /// Parts above the limit, each with why (device, node, sizes).
    pub(crate) too_large: Vec<(Message, String)>,
}

/// A part number with as many digits as any real one: encoding with it
/// gives an upper bound of the part's final size.
const WIDEST: RecordPart = RecordPart {
    index: u32::MAX,
    count: u32::MAX,
};

/// The size a sink's limit applies to.
fn size(m: &Message) -> usize {
    m.key.len() + m.payload.len()
}

/// Encodes `record` with `sink`; if the message exceeds `max`, splits the
/// samples into consecutive ranges whose parts fit (packed by estimated
/// size, then halved until each fits or holds one sample).
pub(crate) fn encode_within<S: Sink + ?Sized>(
    sink: &S,
    record: &Record,
    max: Option<usize>,
) -> Result<Fitted, SinkError> {
    let whole = sink.encode(record)?;
    let max = match max {
        Some(max) if size(&whole) > max && record.part.is_none() => max,
        Some(max) if size(&whole) > max => {
            // Already a part (a replayed or hand-made one): not split again.
            let why = too_large_why(record, &whole, max);
            return Ok(Fitted {
                too_large: vec![(whole, why)],
                ..Fitted::default()
            });
        }
        _ => {
            return Ok(Fitted {
                messages: vec![whole],
                ..Fitted::default()
            })
        }
    };
    let mut fitted: Vec<Range<usize>> = Vec::new();
    // Ranges still to check, the next one last.
    let mut todo = pack(record, size(&whole), max);
    todo.reverse();
    while let Some(r) = todo.pop() {
        if r.len() > 1 {
            let probe = sink.encode(&record.part(r.clone(), WIDEST))?;
            if size(&probe) > max {
                let mid = r.start + r.len() / 2;
                todo.push(mid..r.end);
                todo.push(r.start..mid);
                continue;
            }
        }
        fitted.push(r);
    }
    if fitted.len() == 1 {
        // One sample (or none) larger than the limit: nothing to split.
        let why = too_large_why(record, &whole, max);
        return Ok(Fitted {
            too_large: vec![(whole, why)],
            ..Fitted::default()
        });
    }
    let count = u32::try_from(fitted.len()).unwrap_or(u32::MAX);
    let mut out = Fitted::default();
    for (index, r) in (0u32..).zip(fitted) {
        let part = record.part(r, RecordPart { index, count });
        let m = sink.encode(&part)?;
        if size(&m) > max {
            let why = too_large_why(&part, &m, max);
            out.too_large.push((m, why));
        } else {
            out.messages.push(m);
        }
    }
    Ok(out)
}

/// Consecutive sample ranges of about three quarters of `max` each, by the
/// samples' estimated sizes scaled to the real encoding (`encoded` bytes).
fn pack(record: &Record, encoded: usize, max: usize) -> Vec<Range<usize>> {
    let estimated = record.estimated_bytes().max(1) as f64;
    let scale = encoded as f64 / estimated;
    let budget = max as f64 * 0.75;
    let mut ranges = Vec::new();
    let (mut start, mut acc) = (0usize, 0f64);
    for (i, s) in record.samples.iter().enumerate() {
        let cost = s.estimated_bytes() as f64 * scale;
        if i > start && acc + cost > budget {
            ranges.push(start..i);
            start = i;
            acc = 0.0;
        }
        acc += cost;
    }
    ranges.push(start..record.samples.len());
    ranges
}

/// The log line of a part that cannot be made small enough.
fn too_large_why(part: &Record, m: &Message, max: usize) -> String {
    let nodes: Vec<&str> = part.samples.iter().map(|s| &*s.node_id).take(3).collect();
    let more = part.samples.len().saturating_sub(nodes.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "device {} seq {}: a record of {} bytes cannot be split below the sink's limit of {max} bytes (node {}{more})",
        part.device_id,
        part.seq,
        size(m),
        nodes.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::record::{Sample, Status, Value};
    use crate::sink::DeliveryReport;

    struct Limited(usize);

    #[async_trait]
    impl Sink for Limited {
        fn encode(&self, record: &Record) -> Result<Message, SinkError> {
            Message::json(record, "c")
        }
        async fn deliver_messages(&self, _messages: &[Message]) -> DeliveryReport {
            DeliveryReport::default()
        }
        fn max_message_bytes(&self) -> Option<usize> {
            Some(self.0)
        }
        async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn record(values: Vec<Value>) -> Record {
        Record::new(
            Arc::from("gw-1"),
            7,
            chrono::Utc::now(),
            values
                .into_iter()
                .enumerate()
                .map(|(i, value)| Sample {
                    node_id: Arc::from(format!("ns=2;s=Tag{i:05}")),
                    value,
                    status: Status::GOOD,
                    source_timestamp: None,
                    server_timestamp: None,
                })
                .collect(),
        )
    }

    fn json(m: &Message) -> serde_json::Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    #[test]
    fn a_record_within_the_limit_is_one_message_without_part_fields() {
        let r = record(vec![Value::Double(1.0); 10]);
        let f = encode_within(&Limited(100_000), &r, Some(100_000)).unwrap();
        assert_eq!(f.messages.len(), 1);
        assert!(f.too_large.is_empty());
        assert!(json(&f.messages[0]).get("part").is_none());
    }

    #[test]
    fn a_large_read_is_split_into_parts_that_fit_and_reassemble() {
        // 12,000 tags of varied size against a 64 KiB limit.
        let values: Vec<Value> = (0..12_000)
            .map(|i| {
                if i % 100 == 0 {
                    Value::String("x".repeat(2_000))
                } else {
                    Value::Double(f64::from(i) * 0.5)
                }
            })
            .collect();
        let r = record(values);
        let max = 64 * 1024;
        let f = encode_within(&Limited(max), &r, Some(max)).unwrap();
        assert!(f.too_large.is_empty());
        assert!(f.messages.len() > 1);
        let count = f.messages.len() as u64;
        let mut nodes = Vec::new();
        for (i, m) in f.messages.iter().enumerate() {
            assert!(size(m) <= max, "part {i} has {} bytes", size(m));
            let v = json(m);
            assert_eq!(v["seq"], 7);
            assert_eq!(v["part"], i as u64);
            assert_eq!(v["parts"], count);
            assert_eq!(m.key, "gw-1");
            for s in v["samples"].as_array().unwrap() {
                nodes.push(s["node_id"].as_str().unwrap().to_string());
            }
        }
        let expected: Vec<String> = (0..12_000).map(|i| format!("ns=2;s=Tag{i:05}")).collect();
        assert_eq!(nodes, expected, "parts reassemble to the read in order");
    }

    #[test]
    fn a_single_huge_value_is_set_apart_whole_without_part_fields() {
        let r = record(vec![Value::String("y".repeat(10_000))]);
        let f = encode_within(&Limited(4_096), &r, Some(4_096)).unwrap();
        assert!(f.messages.is_empty());
        assert_eq!(f.too_large.len(), 1);
        assert!(json(&f.too_large[0].0).get("part").is_none());
    }

    #[test]
    fn a_value_too_large_on_its_own_is_set_apart_and_the_rest_delivered() {
        let mut values = vec![Value::Double(1.0); 50];
        values[20] = Value::String("y".repeat(10_000));
        let r = record(values);
        let f = encode_within(&Limited(4_096), &r, Some(4_096)).unwrap();
        assert_eq!(f.too_large.len(), 1);
        let (m, why) = &f.too_large[0];
        assert!(
            why.contains("gw-1") && why.contains("ns=2;s=Tag00020"),
            "{why}"
        );
        assert_eq!(json(m)["samples"][0]["node_id"], "ns=2;s=Tag00020");
        let delivered: usize = f
            .messages
            .iter()
            .map(|m| json(m)["samples"].as_array().unwrap().len())
            .sum();
        assert_eq!(delivered, 49);
        let parts: Vec<u64> = f
            .messages
            .iter()
            .chain(std::iter::once(m))
            .map(|m| json(m)["parts"].as_u64().unwrap())
            .collect();
        assert!(parts.windows(2).all(|w| w[0] == w[1]), "one part count");
    }
}

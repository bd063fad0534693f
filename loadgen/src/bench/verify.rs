//! Reads the topic back while the bench (or a fleet run) runs, so a broker
//! that trims old segments, like librdkafka's mock cluster, loses nothing
//! before it is read; for the bench, once the collector stopped, checks
//! every device's records: sequence numbers unique and gap-free from the
//! first to the last one seen. It also counts the samples of every record
//! (polled: one per node; subscribed, `"origin": "data_change"`: only the
//! changed nodes), in all and by the message's timestamp, so the bench can
//! count the points read in its measurement window.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Records and samples counted together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records (messages that parsed as one).
    pub records: u64,
    /// Samples in them (the lengths of their `samples` arrays).
    pub samples: u64,
}

/// What the topic held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicCheck {
    /// Messages read.
    pub consumed: u64,
    /// Distinct (device, seq) records.
    pub unique: u64,
    /// Messages that repeated a (device, seq).
    pub duplicates: u64,
    /// Sequence numbers missing between a device's first and last record.
    pub seq_gaps: u64,
    /// Devices with at least one record.
    pub devices_seen: u64,
    /// Messages that were not a record (no device_id/seq).
    pub malformed: u64,
    /// Samples in all the records read (duplicates included).
    pub samples: u64,
    /// Records and samples by message timestamp (ms since the Unix epoch: the
    /// collector stamps each message with its read time, for a subscribed
    /// device when the publish response arrived); records without a timestamp
    /// are not in it. See [`TopicCheck::in_window`].
    pub by_time: BTreeMap<i64, Counts>,
}

impl TopicCheck {
    /// Records and samples whose message timestamp is in `[from_ms, to_ms)`.
    pub fn in_window(&self, from_ms: i64, to_ms: i64) -> Counts {
        if to_ms <= from_ms {
            return Counts::default();
        }
        self.by_time
            .range(from_ms..to_ms)
            .fold(Counts::default(), |a, (_, c)| Counts {
                records: a.records + c.records,
                samples: a.samples + c.samples,
            })
    }
}

/// The fields of a record the check needs.
struct Envelope {
    device_id: String,
    seq: u64,
    /// How many samples it holds.
    samples: u64,
}

/// A JSON record's fields the check needs; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct JsonEnvelope {
    device_id: String,
    seq: u64,
    /// Only counted: `IgnoredAny` skips each sample without building it.
    #[serde(default)]
    samples: Vec<serde::de::IgnoredAny>,
}

/// A record in either encoding (`kafka.encoding`): a JSON record is an
/// object, a Protobuf one starts with its `schema` field.
fn envelope(payload: &[u8]) -> Option<Envelope> {
    if payload.first() == Some(&b'{') {
        let e = serde_json::from_slice::<JsonEnvelope>(payload).ok()?;
        Some(Envelope {
            device_id: e.device_id,
            seq: e.seq,
            samples: e.samples.len() as u64,
        })
    } else {
        protobuf_envelope(payload)
    }
}

/// The top-level fields of a `docs/record.proto` `Record`: `schema` (1),
/// `device_id` (2), `seq` (3) and the `samples` (10) counted, not decoded.
fn protobuf_envelope(mut p: &[u8]) -> Option<Envelope> {
    fn varint(p: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = p.split_first()?;
            *p = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (p.get(..n)?, p.get(n..)?);
        *p = rest;
        Some(head)
    }
    let (mut schema, mut device_id, mut seq, mut samples) = (None, None, 0, 0);
    while !p.is_empty() {
        let key = varint(&mut p)?;
        match (key >> 3, key & 7) {
            (1, 0) => schema = Some(varint(&mut p)?),
            (3, 0) => seq = varint(&mut p)?,
            (_, 0) => {
                varint(&mut p)?;
            }
            (_, 1) => {
                take(&mut p, 8)?;
            }
            (_, 5) => {
                take(&mut p, 4)?;
            }
            (field, 2) => {
                let len = usize::try_from(varint(&mut p)?).ok()?;
                let body = take(&mut p, len)?;
                match field {
                    2 => device_id = Some(String::from_utf8(body.to_vec()).ok()?),
                    10 => samples += 1,
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    schema?;
    Some(Envelope {
        device_id: device_id?,
        seq,
        samples,
    })
}

/// The bench reader's state: each device's seqs, and the totals.
type SeqState = (HashMap<String, Vec<u64>>, TopicCheck);

/// Folds one message (payload and timestamp, ms) into the bench's check.
fn fold_record(state: &mut SeqState, payload: Option<&[u8]>, timestamp_ms: Option<i64>) {
    let (seqs, check) = state;
    check.consumed += 1;
    match payload.and_then(envelope) {
        Some(e) => {
            let samples = e.samples;
            check.samples += samples;
            if let Some(t) = timestamp_ms {
                let c = check.by_time.entry(t).or_default();
                c.records += 1;
                c.samples += samples;
            }
            seqs.entry(e.device_id).or_default().push(e.seq);
        }
        None => check.malformed += 1,
    }
}

/// A topic reader on its own thread, folding each message into `S`.
pub struct Reader<S = TopicCheck> {
    expected: Arc<AtomicU64>,
    thread: JoinHandle<anyhow::Result<S>>,
}

impl Reader<TopicCheck> {
    /// Starts reading `topic` from the beginning, checking each device's
    /// sequence numbers and counting samples.
    pub fn start(bootstrap: &str, topic: &str) -> anyhow::Result<Reader> {
        let state: SeqState = (HashMap::new(), TopicCheck::default());
        let reader = Reader::start_timed(bootstrap, topic, state, fold_record)?;
        Ok(Reader {
            expected: reader.expected,
            thread: std::thread::spawn(move || {
                let (mut seqs, mut check) = reader
                    .thread
                    .join()
                    .map_err(|_| anyhow!("the topic reader panicked"))??;
                for v in seqs.values_mut() {
                    tally(v, &mut check);
                }
                check.devices_seen = seqs.len() as u64;
                Ok(check)
            }),
        })
    }
}

impl<S: Send + 'static> Reader<S> {
    /// Starts reading `topic` from the beginning, each message's payload
    /// folded into `state` by `fold`.
    pub fn start_with(
        bootstrap: &str,
        topic: &str,
        state: S,
        fold: fn(&mut S, Option<&[u8]>),
    ) -> anyhow::Result<Reader<S>> {
        Self::start_timed(bootstrap, topic, state, move |s, p, _| fold(s, p))
    }

    /// [`Reader::start_with`], `fold` also given the message's timestamp (ms
    /// since the Unix epoch), if it has one.
    pub fn start_timed(
        bootstrap: &str,
        topic: &str,
        state: S,
        fold: impl FnMut(&mut S, Option<&[u8]>, Option<i64>) + Send + 'static,
    ) -> anyhow::Result<Reader<S>> {
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let (b, t, e) = (bootstrap.to_string(), topic.to_string(), expected.clone());
        let thread = std::thread::Builder::new()
            .name("topic-reader".into())
            .spawn(move || read_topic(&b, &t, &e, Duration::from_secs(10), state, fold))
            .context("starting the topic reader")?;
        Ok(Reader { expected, thread })
    }

    /// Tells the reader how many messages to expect; it stops when it has
    /// them, or nothing arrived for 10 s. Blocking.
    pub fn finish(self, expected: u64) -> anyhow::Result<S> {
        self.expected.store(expected, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow!("the topic reader panicked"))?
    }
}

/// Reads `topic` from the beginning until `expected` (once known) messages
/// were read, or nothing arrived for `idle` after it became known.
fn read_topic<S>(
    bootstrap: &str,
    topic: &str,
    expected: &AtomicU64,
    idle: Duration,
    mut state: S,
    mut fold: impl FnMut(&mut S, Option<&[u8]>, Option<i64>),
) -> anyhow::Result<S> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "opc-loadgen-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.max.bytes", "104857600")
        .set("log_level", "3")
        .create()
        .context("creating the Kafka consumer")?;
    // A topic that a real broker auto-creates appears with the collector's
    // first records: wait for its partitions (until told what to expect).
    let mut tpl = TopicPartitionList::new();
    loop {
        let md = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(md) => md,
            // A broker still starting: try again until told what to expect.
            Err(_) if expected.load(Ordering::SeqCst) == u64::MAX => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => return Err(e).context("fetching topic metadata"),
        };
        for t in md.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .context("assigning partitions")?;
            }
        }
        if tpl.count() > 0 || expected.load(Ordering::SeqCst) != u64::MAX {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    let mut last = Instant::now();
    let mut consumed = 0u64;
    loop {
        let want = expected.load(Ordering::SeqCst);
        if want != u64::MAX && (consumed >= want || last.elapsed() > idle) {
            break;
        }
        if want == u64::MAX {
            last = Instant::now();
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                consumed += 1;
                last = Instant::now();
                fold(&mut state, m.payload(), m.timestamp().to_millis());
            }
            Some(Err(e)) => return Err(anyhow!("consuming {topic}: {e}")),
            None => {}
        }
    }
    Ok(state)
}

/// Adds one device's sequence numbers to the totals.
fn tally(v: &mut Vec<u64>, check: &mut TopicCheck) {
    v.sort_unstable();
    let n = v.len() as u64;
    v.dedup();
    let unique = v.len() as u64;
    check.unique += unique;
    check.duplicates += n - unique;
    if let (Some(first), Some(last)) = (v.first(), v.last()) {
        check.seq_gaps += (last - first + 1) - unique;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_and_gaps() {
        let mut c = TopicCheck::default();
        tally(&mut vec![5, 3, 4, 4, 8], &mut c);
        assert_eq!((c.unique, c.duplicates, c.seq_gaps), (4, 1, 2));
        tally(&mut vec![], &mut c);
        assert_eq!((c.unique, c.duplicates, c.seq_gaps), (4, 1, 2));
    }

    const POLLED: &str = r#"{"schema":1,"device_id":"dev-00001","seq":7,"collector_id":"c",
        "read_time":"2026-11-22T19:51:12.117Z","samples":[
        {"node_id":"ns=2;s=Tag000","type":"Double","value":1.5,"status":{"code":0,"name":"Good"}},
        {"node_id":"ns=2;s=Tag001","type":"Double[]","value":[1,2],"status":{"code":0,"name":"Good"}},
        {"node_id":"ns=2;s=Tag002","type":"Null","value":null,"status":{"code":2156658688,"name":"BadSensorFailure"}}]}"#;
    const CHANGED: &str = r#"{"schema":1,"device_id":"dev-00001","seq":8,"origin":"data_change",
        "collector_id":"c","read_time":"2026-11-22T19:51:13.5Z","samples":[
        {"node_id":"ns=2;s=Tag002","type":"Int32","value":3,"status":{"code":0,"name":"Good"},
         "source_timestamp":"2026-11-22T19:51:13.4Z"}]}"#;

    #[test]
    fn counts_samples_of_polled_and_data_change_records() {
        let mut s: SeqState = Default::default();
        fold_record(&mut s, Some(POLLED.as_bytes()), Some(1_000));
        fold_record(&mut s, Some(CHANGED.as_bytes()), Some(1_500));
        fold_record(
            &mut s,
            Some(br#"{"device_id":"dev-00002","seq":1}"#),
            Some(1_700),
        );
        fold_record(&mut s, Some(b"not json"), Some(1_800));
        fold_record(&mut s, None, None);
        let (seqs, check) = &mut s;
        assert_eq!((check.consumed, check.malformed, check.samples), (5, 2, 4));
        let c = |records, samples| Counts { records, samples };
        assert_eq!(check.in_window(0, 2_000), c(3, 4));
        assert_eq!(check.in_window(1_000, 1_500), c(1, 3));
        assert_eq!(check.in_window(1_001, 1_501), c(1, 1));
        assert_eq!(check.in_window(1_500, 1_000), c(0, 0));
        for v in seqs.values_mut() {
            tally(v, check);
        }
        // A data-change record continues the device's seqs: no gap.
        assert_eq!((check.unique, check.seq_gaps), (3, 0));
    }

    #[test]
    fn reads_protobuf_records_as_the_collector_writes_them() {
        use collector_core::record::{Record, Sample, Status, Value};
        let now = chrono::Utc::now();
        let record = Record {
            device_id: "dev-00003".into(),
            seq: 1_795_000_000_000_042,
            read_time: now,
            samples: (0..3)
                .map(|i| Sample {
                    node_id: format!("ns=2;s=Tag{i:03}").into(),
                    value: Value::Double(f64::from(i)),
                    status: Status::GOOD,
                    source_timestamp: Some(now),
                    server_timestamp: None,
                })
                .collect(),
            part: None,
            origin: Default::default(),
        };
        let mut payload = Vec::new();
        record.encode_protobuf("opc-bench", &mut payload);
        let e = envelope(&payload).expect("a protobuf record");
        assert_eq!(
            (e.device_id.as_str(), e.seq, e.samples),
            ("dev-00003", 1_795_000_000_000_042, 3)
        );
        // Cut short, it is malformed, not miscounted.
        assert!(envelope(&payload[..payload.len() - 1]).is_none());
        // schema 1, then: a varint of 11 bytes; a length past the end; a
        // group (wire type 3); no device_id.
        let overlong = [&[0x08, 0x01, 0x18][..], &[0xff; 10], &[0x01]].concat();
        assert!(envelope(&overlong).is_none());
        assert!(envelope(&[0x08, 0x01, 0x12, 0x7f, b'd']).is_none());
        assert!(envelope(&[0x08, 0x01, 0x1b]).is_none());
        assert!(envelope(&[0x08, 0x01, 0x18, 0x05]).is_none());
    }
}

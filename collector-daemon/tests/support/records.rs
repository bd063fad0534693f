//! Reading back what the daemon delivered: each message checked against
//! the record format and grouped into per-device sequence numbers, then
//! checked for missing devices, holes and partition changes.

use std::collections::{BTreeMap, BTreeSet};

use collector_testkit::ConsumedMessage;
use serde_json::Value;

/// One record as read back: where it was and its `seq`.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub seq: u64,
}

/// Validates every message (schema 1, key == device_id, collector id,
/// `tags` samples in configuration order, numeric seq) and groups them by
/// device, in (partition, offset) order.
pub fn records_by_device(
    messages: &[ConsumedMessage],
    collector_id: &str,
    tags: usize,
) -> BTreeMap<String, Vec<Seen>> {
    let mut per_device: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for m in messages {
        let key = m
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| panic!("message without key at {}:{}", m.partition, m.offset));
        let rec: Value = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|e| panic!("message {}:{} is not JSON: {e}", m.partition, m.offset));
        assert_eq!(
            rec["schema"], 1,
            "schema at {}:{}: {rec}",
            m.partition, m.offset
        );
        assert_eq!(
            rec["device_id"],
            key.as_str(),
            "key != device_id at {}:{}",
            m.partition,
            m.offset
        );
        assert_eq!(rec["collector_id"], collector_id, "collector_id: {rec}");
        let samples = rec["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no samples: {rec}"));
        assert_eq!(samples.len(), tags, "samples of {key}: {rec}");
        for (i, s) in samples.iter().enumerate() {
            assert_eq!(
                s["node_id"],
                format!("ns=2;s=Tag{i:03}"),
                "sample order of {key}: {rec}"
            );
        }
        let seq = rec["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("seq is not a u64: {rec}"));
        per_device.entry(key).or_default().push(Seen {
            partition: m.partition,
            offset: m.offset,
            seq,
        });
    }
    for recs in per_device.values_mut() {
        recs.sort_by_key(|r| (r.partition, r.offset));
    }
    per_device
}

/// Panics unless exactly the devices in `expected` have records.
pub fn assert_devices<V>(per_device: &BTreeMap<String, V>, expected: &[String]) {
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let seen: BTreeSet<&str> = per_device.keys().map(String::as_str).collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    let unexpected: Vec<_> = seen.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "devices without any record: {missing:?}"
    );
    assert!(
        unexpected.is_empty(),
        "records of unknown devices: {unexpected:?}"
    );
}

/// One device's sequence numbers, deduplicated.
#[derive(Debug, Clone)]
pub struct SeqSet {
    /// Distinct seqs, ascending.
    pub unique: Vec<u64>,
    /// Records read back minus distinct seqs.
    pub duplicates: usize,
}

impl SeqSet {
    pub fn new(seqs: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut unique: Vec<u64> = seqs.into_iter().collect();
        unique.sort_unstable();
        let n = unique.len();
        unique.dedup();
        SeqSet {
            duplicates: n - unique.len(),
            unique,
        }
    }

    pub fn len(&self) -> usize {
        self.unique.len()
    }

    pub fn first(&self) -> Option<u64> {
        self.unique.first().copied()
    }

    pub fn last(&self) -> Option<u64> {
        self.unique.last().copied()
    }

    /// `None` if the distinct seqs form one range without holes, else a
    /// description of the holes.
    pub fn gaps(&self) -> Option<String> {
        let (first, last) = (self.first()?, self.last()?);
        let span = last - first + 1;
        if span == self.unique.len() as u64 {
            return None;
        }
        let holes: Vec<String> = self
            .unique
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .take(5)
            .map(|w| format!("{}..={}", w[0] + 1 - first, w[1] - 1 - first))
            .collect();
        Some(format!(
            "{} record(s) missing from seq {first}..={last} (holes, relative to the first: {})",
            span - self.unique.len() as u64,
            holes.join(", ")
        ))
    }
}

/// Devices whose records are on more than one partition (the key is the
/// device id, so there must be one). Order within the partition is not
/// checked here: replayed records arrive after newer live ones.
pub fn partition_problems(per_device: &BTreeMap<String, Vec<Seen>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, recs) in per_device {
        let partitions: BTreeSet<i32> = recs.iter().map(|r| r.partition).collect();
        if partitions.len() != 1 {
            problems.push(format!(
                "{id}: records on several partitions {partitions:?}"
            ));
        }
    }
    problems
}

/// Splits one run's seqs from the next run's: every run starts its devices at
/// a base at least 2^32 above the previous run's (docs/record-format.md), so
/// a seq below `lowest + 2^31` belongs to the first run. Returns
/// (first run's base, threshold).
pub fn first_run_base(per_device: &BTreeMap<String, Vec<Seen>>) -> (u64, u64) {
    let base = per_device
        .values()
        .flatten()
        .map(|r| r.seq)
        .min()
        .expect("no records at all");
    (base, base + (1 << 31))
}

/// For diagnosis: prints, for up to `max_devices` devices with holes, every
/// record as `partition:offset=seq` (seq relative to `base`) in offset order.
pub fn print_device_records(
    per_device: &BTreeMap<String, Vec<Seen>>,
    base: u64,
    max_devices: usize,
) {
    let with_holes = per_device
        .iter()
        .filter(|(_, recs)| SeqSet::new(recs.iter().map(|r| r.seq)).gaps().is_some())
        .take(max_devices);
    for (id, recs) in with_holes {
        let list: Vec<String> = recs
            .iter()
            .map(|r| format!("{}:{}={}", r.partition, r.offset, r.seq.wrapping_sub(base)))
            .collect();
        eprintln!(
            "[records] {id} (partition:offset=seq-base): {}",
            list.join(" ")
        );
    }
}

/// Every record on `topic`, parsed, in the order read (waits until the
/// topic has been idle for 3 s, at most 60 s).
pub fn all_records(bootstrap: &str, topic: &str) -> Vec<Value> {
    collector_testkit::consume_all(
        bootstrap,
        topic,
        1_000_000,
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(60),
    )
    .expect("read the topic back")
    .iter()
    .map(|m| serde_json::from_slice(&m.payload).expect("a JSON record"))
    .collect()
}

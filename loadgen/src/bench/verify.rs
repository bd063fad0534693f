//! Reads the topic back while the bench (or a fleet run) runs, so a broker
//! that trims old segments, like librdkafka's mock cluster, loses nothing
//! before it is read; for the bench, once the collector stopped, checks
//! every device's records: sequence numbers unique and gap-free from the
//! first to the last one seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

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
}

#[derive(serde::Deserialize)]
struct Envelope {
    device_id: String,
    seq: u64,
}

/// A topic reader on its own thread, folding each message into `S`.
pub struct Reader<S = TopicCheck> {
    expected: Arc<AtomicU64>,
    thread: JoinHandle<anyhow::Result<S>>,
}

impl Reader<TopicCheck> {
    /// Starts reading `topic` from the beginning, checking each device's
    /// sequence numbers.
    pub fn start(bootstrap: &str, topic: &str) -> anyhow::Result<Reader> {
        let seqs: HashMap<String, Vec<u64>> = HashMap::new();
        let reader =
            Reader::start_with(bootstrap, topic, (seqs, TopicCheck::default()), |s, p| {
                let (seqs, check) = s;
                check.consumed += 1;
                match p.and_then(|p| serde_json::from_slice::<Envelope>(p).ok()) {
                    Some(e) => seqs.entry(e.device_id).or_default().push(e.seq),
                    None => check.malformed += 1,
                }
            })?;
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
    fold: fn(&mut S, Option<&[u8]>),
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
                fold(&mut state, m.payload());
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
}

//! Records Kafka will never take, through a real Kafka protocol endpoint
//! (librdkafka's mock cluster) and the real Kafka sink, spill and dead
//! letters:
//!
//! * a read larger than `kafka.max_record_bytes` arrives as parts that
//!   reassemble to the whole read; a single value too large on its own
//!   lands in the dead letters, every read of it;
//! * Produce requests refused with a non-retriable error (topic
//!   authorisation) land in the dead letters, do not stop the replay of
//!   the other spilled batches, and `deadletter::requeue` plus a restart
//!   delivers them once the error is lifted: nothing lost, gap-free.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use collector_core::deadletter;
use collector_core::error::ReadError;
use collector_core::protocol::{DeviceReader, Protocol};
use collector_core::record::{Sample, Status, Value};
use collector_core::spill::{self, SpillStore, StoreRole};
use collector_core::{Collector, CollectorConfig, Device};
use collector_testkit::kafka::{consume_all, EmbeddedKafka, RDKafkaRespErr};

/// Devices by id prefix: `gw*` read 2,000 Doubles, `huge*` one 40 kB
/// string, others one counter.
struct Generator;

struct GenReader {
    id: String,
    n: u64,
}

#[async_trait]
impl DeviceReader for GenReader {
    async fn read(&mut self) -> Result<Vec<Sample>, ReadError> {
        self.n += 1;
        let sample = |i: usize, value: Value| Sample {
            node_id: Arc::from(format!("ns=2;s=Tag{i:05}")),
            value,
            status: Status::GOOD,
            source_timestamp: None,
            server_timestamp: None,
        };
        Ok(if self.id.starts_with("gw") {
            (0..2_000)
                .map(|i| sample(i, Value::Double(i as f64 + self.n as f64)))
                .collect()
        } else if self.id.starts_with("huge") {
            vec![sample(0, Value::String("z".repeat(40_000)))]
        } else {
            vec![sample(0, Value::UInt64(self.n))]
        })
    }

    async fn close(&mut self) {}
}

#[async_trait]
impl Protocol for Generator {
    fn attach(&self, device: &Device) -> Result<Box<dyn DeviceReader>, ReadError> {
        Ok(Box::new(GenReader {
            id: device.id.to_string(),
            n: 0,
        }))
    }

    fn connected_sessions(&self) -> usize {
        0
    }

    async fn shutdown(&self) {}
}

fn config(bootstrap: &str, topic: &str, state: &std::path::Path, ids: &[&str]) -> CollectorConfig {
    let mut cfg = CollectorConfig::default();
    cfg.collector.id = Some("dead-letter-test".into());
    cfg.collector.state_dir = Some(state.to_path_buf());
    cfg.collector.shutdown_grace = Duration::from_secs(10);
    cfg.batch.interval = Duration::from_millis(100);
    cfg.kafka.brokers = bootstrap.to_string();
    cfg.kafka.topic = topic.to_string();
    cfg.kafka.message_timeout = Duration::from_secs(3);
    cfg.kafka.linger_ms = 5;
    for id in ids {
        cfg.devices
            .push(Device::new(*id, format!("gen://{id}"), Duration::from_millis(200)).unwrap());
    }
    cfg
}

/// Starts a collector; returns its stop switch and its task.
async fn start(
    cfg: CollectorConfig,
) -> (
    Arc<collector_core::metrics::Stats>,
    Arc<dyn SpillStore>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<collector_core::metrics::StatsSnapshot>,
) {
    let collector = Collector::builder(cfg)
        .protocol(Arc::new(Generator))
        .build()
        .await
        .unwrap();
    let stats = collector.stats();
    let spill = collector.spill().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        collector
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap()
    });
    (stats, spill, tx, run)
}

async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message on the topic, as JSON.
async fn read_topic(bootstrap: &str, topic: &str) -> Vec<serde_json::Value> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        consume_all(
            &b,
            &t,
            usize::MAX,
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
        .unwrap()
    })
    .await
    .unwrap()
    .into_iter()
    .map(|m| serde_json::from_slice(&m.payload).unwrap())
    .collect()
}

fn open(cfg: Option<spill::SpillConfig>) -> Box<dyn SpillStore> {
    spill::open(&cfg.unwrap()).unwrap()
}

/// (device, seq) of every message a store holds.
fn stored(store: &dyn SpillStore, kind: StoreRole) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    deadletter::for_each_batch(store, |b| {
        for m in deadletter::batch_messages(kind, b).unwrap().messages {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            out.push((m.key.clone(), v["seq"].as_u64().unwrap()));
        }
    })
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_reads_arrive_as_parts_and_a_huge_value_is_dead_lettered() {
    const TOPIC: &str = "parts";
    let kafka = EmbeddedKafka::start(1, TOPIC, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        kafka.bootstrap_servers(),
        TOPIC,
        dir.path(),
        &["gw-1", "huge-1", "plain-1"],
    );
    cfg.kafka.max_record_bytes = Some(32 * 1024);
    let dead_cfg = cfg.dead_letter_config();
    let (stats, _spill, stop, run) = start(cfg).await;
    until("30 reads", Duration::from_secs(20), || {
        stats.snapshot().reads_ok >= 30
    })
    .await;
    stop.send(()).unwrap();
    let totals = run.await.unwrap();
    assert_eq!(totals.records_undelivered, 0, "{totals:?}");

    let messages = read_topic(kafka.bootstrap_servers(), TOPIC).await;
    let mut reads: BTreeMap<(String, u64), Vec<&serde_json::Value>> = BTreeMap::new();
    for m in &messages {
        let key = (
            m["device_id"].as_str().unwrap().to_string(),
            m["seq"].as_u64().unwrap(),
        );
        reads.entry(key).or_default().push(m);
    }
    let gw: Vec<_> = reads.iter().filter(|((d, _), _)| d == "gw-1").collect();
    assert!(gw.len() >= 5, "gw-1 delivered {} reads", gw.len());
    let expected: Vec<String> = (0..2_000).map(|i| format!("ns=2;s=Tag{i:05}")).collect();
    for ((_, seq), parts) in &gw {
        let count = parts[0]["parts"]
            .as_u64()
            .expect("a 2,000-tag read is split");
        assert!(
            count >= 4,
            "seq {seq}: {count} parts of at most 32 KiB for ~200 kB"
        );
        let mut by_index: BTreeMap<u64, &serde_json::Value> = BTreeMap::new();
        for p in parts.iter() {
            assert_eq!(
                p["parts"].as_u64(),
                Some(count),
                "seq {seq}: one part count"
            );
            assert!(serde_json::to_vec(p).unwrap().len() <= 32 * 1024);
            by_index.insert(p["part"].as_u64().unwrap(), p);
        }
        assert_eq!(
            by_index.keys().copied().collect::<Vec<_>>(),
            (0..count).collect::<Vec<_>>(),
            "seq {seq}: every part"
        );
        let nodes: Vec<String> = by_index
            .values()
            .flat_map(|p| p["samples"].as_array().unwrap())
            .map(|s| s["node_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(nodes, expected, "seq {seq}: parts reassemble to the read");
    }
    assert!(
        reads.keys().all(|(d, _)| d != "huge-1"),
        "a 40 kB value was sent"
    );
    assert!(reads.keys().any(|(d, _)| d == "plain-1"));
    // Every read of huge-1 is a dead letter.
    let dead = open(dead_cfg);
    let huge: BTreeSet<u64> = stored(&*dead, StoreRole::DeadLetters)
        .into_iter()
        .filter(|(d, _)| d == "huge-1")
        .map(|(_, s)| s)
        .collect();
    assert!(!huge.is_empty());
    assert_eq!(totals.records_dead_lettered, huge.len() as u64);
    assert_eq!(
        huge.last().unwrap() - huge.first().unwrap() + 1,
        huge.len() as u64,
        "gap-free"
    );
    let inv = deadletter::inventory(&*dead, StoreRole::DeadLetters).unwrap();
    let (n, detail) = inv.causes.values().next().unwrap();
    assert_eq!(*n, huge.len() as u64);
    assert!(
        detail.contains("huge-1") && detail.contains("ns=2;s=Tag00000"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_dead_lettered_without_stalling_the_replay_and_requeue_delivers_them() {
    const TOPIC: &str = "refusals";
    let ids = ["d0", "d1", "d2", "d3"];
    let kafka = EmbeddedKafka::start(1, TOPIC, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(kafka.bootstrap_servers(), TOPIC, dir.path(), &ids);
    // Replay paced slowly enough that the first Produce request after the
    // broker returns (the one refused) cannot hold the whole backlog, even
    // when reconnecting is slow on a loaded machine: a CI run once saw
    // every spilled batch go out in that one request, leaving nothing to
    // replay behind it.
    cfg.spill.replay_batches_per_second = 5;
    let (spill_cfg, dead_cfg) = (cfg.spill_config(), cfg.dead_letter_config());
    let (stats, spill, stop, run) = start(cfg.clone()).await;
    until("records delivered", Duration::from_secs(20), || {
        stats.snapshot().records_delivered >= 20
    })
    .await;

    // An outage fills the spill; the broker comes back refusing the next
    // Produce requests for good.
    kafka.brokers_down();
    until("records spilled", Duration::from_secs(30), || {
        stats.snapshot().records_spilled >= 80
    })
    .await;
    kafka.fail_produce_requests(&[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    kafka.brokers_up();
    until(
        "dead letters and a drained spill",
        Duration::from_secs(60),
        || stats.snapshot().records_dead_lettered > 0 && spill.stats().batches == 0,
    )
    .await;
    let s = stats.snapshot();
    assert!(
        s.records_replayed > 0,
        "replay went on behind the refused batches: {s:?}"
    );
    stop.send(()).unwrap();
    let totals = run.await.unwrap();
    drop(spill);
    assert_eq!(totals.records_undelivered, 0, "{totals:?}");

    // What is on the topic plus what is in the dead letters is every read.
    let on_topic = |messages: &[serde_json::Value]| -> BTreeMap<String, BTreeSet<u64>> {
        let mut m: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for v in messages {
            m.entry(v["device_id"].as_str().unwrap().to_string())
                .or_default()
                .insert(v["seq"].as_u64().unwrap());
        }
        m
    };
    let delivered = on_topic(&read_topic(kafka.bootstrap_servers(), TOPIC).await);
    let dead = open(dead_cfg.clone());
    let refused = stored(&*dead, StoreRole::DeadLetters);
    assert_eq!(refused.len() as u64, totals.records_dead_lettered);
    let mut all = delivered.clone();
    for (d, s) in &refused {
        assert!(
            !delivered[d].contains(s),
            "{d} seq {s} both delivered and dead-lettered"
        );
        all.entry(d.clone()).or_default().insert(*s);
    }
    let mut reads = 0u64;
    for id in ids {
        let seqs = &all[id];
        reads += seqs.len() as u64;
        let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
        assert_eq!(
            last - first + 1,
            seqs.len() as u64,
            "{id}: delivered + dead letters have a gap"
        );
    }
    assert_eq!(reads, totals.reads_ok);

    // The operator lifts the cause and requeues; the next run delivers.
    let spill_store = open(spill_cfg);
    let moved = deadletter::requeue(&*dead, &*spill_store).unwrap();
    assert_eq!(moved.records, refused.len() as u64);
    drop((dead, spill_store));
    let (stats, spill, stop, run) = start(cfg).await;
    until("requeued records replayed", Duration::from_secs(30), || {
        stats.snapshot().records_replayed >= refused.len() as u64 && spill.stats().batches == 0
    })
    .await;
    stop.send(()).unwrap();
    let second = run.await.unwrap();
    assert_eq!(
        (second.records_undelivered, second.records_dead_lettered),
        (0, 0)
    );
    let delivered = on_topic(&read_topic(kafka.bootstrap_servers(), TOPIC).await);
    for (d, s) in &refused {
        assert!(
            delivered[d].contains(s),
            "{d} seq {s} requeued but not delivered"
        );
    }
}

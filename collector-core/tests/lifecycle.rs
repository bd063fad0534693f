//! The collector's life as an embedder sees it, with a protocol and a sink
//! written here (no OPC UA, no broker): a collector built and dropped
//! stops what it started; shutdown never waits past its grace, even for a
//! protocol whose session close hangs; devices added to, removed from and
//! changed in a running pipeline start, stop and restart while the others
//! keep their reader (session) and `seq`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use collector_core::error::{ReadError, SinkError};
use collector_core::protocol::{DeviceReader, Protocol};
use collector_core::record::{Sample, Status, Value};
use collector_core::sink::{DeliveryReport, Message, Sink};
use collector_core::{Collector, CollectorConfig, Device, Record};

/// A protocol whose devices each return one counter sample, and whose
/// shutdown can be made to hang. Counts attaches and closes per device.
#[derive(Default)]
struct Counter {
    hang_on_shutdown: bool,
    attached: Mutex<BTreeMap<String, usize>>,
    closed: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Counter {
    fn attaches(&self, id: &str) -> usize {
        self.attached.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn closes(&self, id: &str) -> usize {
        self.closed.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

struct CounterReader {
    id: String,
    n: u64,
    closed: Arc<Mutex<BTreeMap<String, usize>>>,
}

#[async_trait]
impl DeviceReader for CounterReader {
    async fn read(&mut self) -> Result<Vec<Sample>, ReadError> {
        self.n += 1;
        Ok(vec![Sample {
            node_id: Arc::from("count"),
            value: Value::UInt64(self.n),
            status: Status::GOOD,
            source_timestamp: None,
            server_timestamp: None,
        }])
    }

    async fn close(&mut self) {
        *self
            .closed
            .lock()
            .unwrap()
            .entry(self.id.clone())
            .or_default() += 1;
    }
}

#[async_trait]
impl Protocol for Counter {
    fn attach(&self, device: &Device) -> Result<Box<dyn DeviceReader>, ReadError> {
        if device.endpoint.contains("reject") {
            return Err(ReadError::Config(format!(
                "{} is not served",
                device.endpoint
            )));
        }
        *self
            .attached
            .lock()
            .unwrap()
            .entry(device.id.to_string())
            .or_default() += 1;
        Ok(Box::new(CounterReader {
            id: device.id.to_string(),
            n: 0,
            closed: self.closed.clone(),
        }))
    }

    fn connected_sessions(&self) -> usize {
        0
    }

    async fn shutdown(&self) {
        if self.hang_on_shutdown {
            std::future::pending::<()>().await;
        }
    }
}

/// Acknowledges everything, counts it and keeps each device's seqs.
#[derive(Default)]
struct Counting {
    delivered: AtomicUsize,
    seqs: Mutex<BTreeMap<String, Vec<u64>>>,
}

impl Counting {
    fn seqs(&self, id: &str) -> Vec<u64> {
        self.seqs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Sink for Counting {
    fn encode(&self, record: &Record) -> Result<Message, SinkError> {
        Message::json(record, "test")
    }

    async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport {
        self.delivered.fetch_add(messages.len(), Ordering::SeqCst);
        let mut seqs = self.seqs.lock().unwrap();
        for m in messages {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            seqs.entry(m.key.clone())
                .or_default()
                .push(v["seq"].as_u64().unwrap());
        }
        DeliveryReport::default()
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

fn device(id: &str, interval_ms: u64) -> Device {
    Device::new(
        id,
        format!("counter://{id}"),
        Duration::from_millis(interval_ms),
    )
    .unwrap()
}

fn config(devices: usize) -> CollectorConfig {
    let mut cfg = CollectorConfig::default();
    cfg.batch.interval = Duration::from_millis(100);
    for i in 0..devices {
        cfg.devices.push(device(&format!("d{i}"), 100));
    }
    cfg
}

/// Waits until `cond` holds (or panics with `what` after 10 s).
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Batches may be delivered concurrently, so order is not checked here.
fn assert_gap_free(id: &str, seqs: &[u64]) {
    assert!(!seqs.is_empty(), "{id}: no records");
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{id}: seq gap or repeat in {seqs:?}");
    }
}

/// The device-source seam: a running pipeline takes a new device set.
/// Added devices start, removed ones stop (their reader closed, their last
/// record delivered), a changed one restarts alone with its `seq`
/// continuing, and the untouched one keeps its reader and `seq` run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_added_removed_and_changed_on_a_running_pipeline() {
    let mut cfg = config(0);
    cfg.collector.shutdown_grace = Duration::from_secs(5);
    let (set, source) = collector_core::source::channel(vec![device("a", 50), device("b", 50)]);
    let protocol = Arc::new(Counter::default());
    let sink = Arc::new(Counting::default());
    let collector = Collector::builder(cfg)
        .protocol(protocol.clone())
        .sink(sink.clone())
        .source(source)
        .build()
        .await
        .unwrap();
    let stats = collector.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));
    until("a and b deliver", || {
        sink.seqs("a").len() >= 3 && sink.seqs("b").len() >= 3
    })
    .await;

    // Remove b, add c.
    assert!(set.send(vec![device("a", 50), device("c", 50)]));
    until("b's reader closed", || protocol.closes("b") == 1).await;
    until("c delivers", || sink.seqs("c").len() >= 3).await;
    until("devices gauge follows", || stats.snapshot().devices == 2).await;
    let b_after_removal = sink.seqs("b").len();

    // Change a's interval: a restarts alone, c is untouched.
    let a_before = sink.seqs("a").len();
    assert!(set.send(vec![device("a", 40), device("c", 50)]));
    until("a restarted", || protocol.closes("a") == 1).await;
    until("a delivers after its restart", || {
        sink.seqs("a").len() >= a_before + 3
    })
    .await;

    // A change the adapter rejects leaves the running version reading.
    let c_before = sink.seqs("c").len();
    let rejected = Device::new("c", "counter://reject", Duration::from_millis(50)).unwrap();
    assert!(set.send(vec![device("a", 40), rejected]));
    until("c keeps delivering after a rejected change", || {
        sink.seqs("c").len() >= c_before + 3
    })
    .await;
    assert_eq!(protocol.closes("c"), 0, "c's running reader was kept");

    stop_tx.send(()).unwrap();
    let totals = run.await.unwrap().unwrap();

    assert_eq!(
        sink.seqs("b").len(),
        b_after_removal,
        "b read after its removal"
    );
    assert_eq!(
        protocol.attaches("a"),
        2,
        "a attached once, then once for its change"
    );
    assert_eq!(protocol.attaches("b"), 1);
    assert_eq!(
        protocol.attaches("c"),
        1,
        "c kept its reader across a's change"
    );
    assert_eq!(protocol.closes("c"), 1, "c closed once, at shutdown");
    for id in ["a", "b", "c"] {
        assert_gap_free(id, &sink.seqs(id));
    }
    assert_eq!(totals.records_delivered, totals.reads_ok);
    assert_eq!(
        totals.records_delivered,
        sink.delivered.load(Ordering::SeqCst) as u64
    );
}

/// `build` starts the Kafka sink's reachability probe; a collector that is
/// dropped without running must stop it (it used to run until the process
/// ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_but_never_run_collector_stops_its_background_tasks() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let mut cfg = config(1);
    // Nothing listens there: the probe fails fast and loops.
    cfg.kafka.brokers = "127.0.0.1:9".into();
    let collector = Collector::builder(cfg)
        .protocol(Arc::new(Counter::default()))
        .build()
        .await
        .unwrap();
    assert!(
        metrics.num_alive_tasks() > before,
        "the Kafka probe should be running"
    );
    drop(collector);
    let start = Instant::now();
    while metrics.num_alive_tasks() > before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "background tasks still alive 10 s after the collector was dropped: {}",
            metrics.num_alive_tasks() - before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A protocol whose session close never returns cannot hold the process
/// past `collector.shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_never_overruns_the_grace() {
    let mut cfg = config(3);
    cfg.collector.shutdown_grace = Duration::from_secs(1);
    let sink = Arc::new(Counting::default());
    let collector = Collector::builder(cfg)
        .protocol(Arc::new(Counter {
            hang_on_shutdown: true,
            ..Counter::default()
        }))
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    stop_tx.send(()).unwrap();
    let totals = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run() did not return: shutdown waited for the hanging protocol")
        .unwrap()
        .unwrap();
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "shutdown took {took:?} with a 1 s grace"
    );
    assert!(totals.reads_ok > 0);
    assert_eq!(
        totals.records_delivered,
        sink.delivered.load(Ordering::SeqCst) as u64
    );
    assert_eq!(totals.records_delivered, totals.reads_ok);
}

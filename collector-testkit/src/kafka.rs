//! Kafka for tests, demos and the bench: an in-process Kafka-protocol cluster
//! (librdkafka's mock cluster, on a real TCP port, so child processes can
//! use it too) and a reader that drains a topic.
//!
//! The mock cluster handle is `!Send`, so it lives on its own thread and
//! is driven through a channel.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaApiKey;
/// Kafka protocol error codes, for [`EmbeddedKafka::fail_produce_requests`].
pub use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

enum Command {
    BrokersDown,
    BrokersUp,
    ProduceErrors(Vec<RDKafkaRespErr>),
    Stop,
}

/// An in-process Kafka cluster that lives until dropped.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: std_mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts `brokers` mock brokers with `topic` created with `partitions`
    /// partitions.
    pub fn start(brokers: i32, topic: &str, partitions: i32) -> Result<EmbeddedKafka, String> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<String, String>>();
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<Command>();
        let topic = topic.to_string();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("mock cluster: {e}")));
                        return;
                    }
                };
                if let Err(e) = cluster.create_topic(&topic, partitions, brokers.min(3)) {
                    let _ = ready_tx.send(Err(format!("create topic: {e}")));
                    return;
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = cmd_rx.recv() {
                    let r = match cmd {
                        Command::BrokersDown => cluster.broker_down(-1),
                        Command::BrokersUp => cluster.broker_up(-1),
                        Command::ProduceErrors(errors) => {
                            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
                            Ok(())
                        }
                        Command::Stop => break,
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "embedded kafka command failed");
                    }
                }
            })
            .map_err(|e| format!("spawn: {e}"))?;
        let bootstrap = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| format!("embedded kafka did not start: {e}"))??;
        Ok(EmbeddedKafka {
            bootstrap,
            commands: cmd_tx,
            thread: Some(thread),
        })
    }

    /// `host:port,...` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Takes every broker down (an outage).
    pub fn brokers_down(&self) {
        let _ = self.commands.send(Command::BrokersDown);
    }

    /// Brings every broker back.
    pub fn brokers_up(&self) {
        let _ = self.commands.send(Command::BrokersUp);
    }

    /// Makes the next `errors.len()` Produce requests fail, each with the
    /// next error of `errors` (librdkafka's mock request errors), e.g.
    /// `RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED`.
    pub fn fail_produce_requests(&self, errors: &[RDKafkaRespErr]) {
        let _ = self.commands.send(Command::ProduceErrors(errors.to_vec()));
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct ConsumedMessage {
    /// The message key (device id).
    pub key: Option<Vec<u8>>,
    /// The payload (a JSON record).
    pub payload: Vec<u8>,
    /// The partition it was on.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// Reads `topic` from the beginning of every partition (no consumer group)
/// until `max` messages were read, no message arrived for `idle`, or
/// `deadline` passed. Blocking: call from a plain thread or `spawn_blocking`.
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    max: usize,
    idle: Duration,
    deadline: Duration,
) -> Result<Vec<ConsumedMessage>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "collector-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| format!("assign: {e}"))?;
        }
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while out.len() < max && last.elapsed() < idle && start.elapsed() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(ConsumedMessage {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    partition: m.partition(),
                    offset: m.offset(),
                });
                last = Instant::now();
            }
            Some(Err(e)) => return Err(format!("consume: {e}")),
            None => {}
        }
    }
    Ok(out)
}

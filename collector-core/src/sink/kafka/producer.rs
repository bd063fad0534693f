//! [`PolledProducer`]: rdkafka's `BaseProducer` with a thread of ours
//! serving its delivery reports.
//!
//! It replaces rdkafka's `ThreadedProducer`, whose thread polls with a
//! 100 ms timeout. rdkafka rounds what is left of a poll's deadline down to
//! whole milliseconds for librdkafka, so every poll ends in a busy loop of
//! zero-timeout polls for up to a millisecond: measured at ~0.7 % of a core
//! on an idle daemon (BENCHMARKS.md). Reports are served as they arrive
//! whatever the timeout, so a long one costs no latency; it only sets how
//! rarely the spin happens and how long [`PolledProducer::close`] waits for
//! the thread.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;

use super::delivery::Context;

/// How long one poll waits when no delivery report comes.
const POLL_WAIT: Duration = Duration::from_secs(1);

/// A producer whose delivery reports are served by a background thread
/// until [`PolledProducer::close`] or the handle's drop.
pub(crate) struct PolledProducer {
    producer: Arc<BaseProducer<Context>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PolledProducer {
    /// Creates the producer and starts its poll thread.
    pub(crate) fn create(config: &ClientConfig, context: Context) -> Result<Self, String> {
        let producer: Arc<BaseProducer<Context>> = Arc::new(
            config
                .create_with_context(context)
                .map_err(|e| e.to_string())?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (producer.clone(), stop.clone());
        // Joined by `close`; not on drop, which must not block for up to
        // POLL_WAIT: the thread then ends after its current poll and drops
        // its reference to the producer.
        let thread = std::thread::Builder::new()
            .name("kafka-poll".to_string())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    p.poll(POLL_WAIT);
                }
            })
            .map_err(|e| format!("cannot start the kafka poll thread: {e}"))?;
        Ok(PolledProducer {
            producer,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the poll thread and waits for it (at most POLL_WAIT). Reports
    /// after this are served only by `flush`.
    pub(crate) fn close(&self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::warn!("the kafka poll thread panicked");
            }
        }
    }
}

impl Deref for PolledProducer {
    type Target = BaseProducer<Context>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {

    use std::time::Instant;

    use rdkafka::producer::BaseRecord;

    use super::*;
    use crate::sink::kafka::delivery::{BatchAck, Pending};
    use collector_testkit::EmbeddedKafka;

    fn producer(kafka: &EmbeddedKafka) -> PolledProducer {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", kafka.bootstrap_servers())
            .set("linger.ms", "0");
        let context = Context {
            up: Arc::new(crate::sink::SharedReachability::new(
                crate::sink::Reachability::Unknown,
            )),
            fenced: Arc::new(AtomicBool::new(false)),
        };
        PolledProducer::create(&cc, context).unwrap()
    }

    /// Sends one message and waits for its delivery report.
    async fn send_one(p: &PolledProducer, i: usize) {
        let ack = BatchAck::new(1);
        let opaque = Box::new(Pending {
            ack: ack.clone(),
            index: 0,
            enqueued: Instant::now(),
            read_time_us: 0,
        });
        let payload = format!("m{i}");
        p.send(
            BaseRecord::with_opaque_to("t", opaque)
                .key("k")
                .payload(&payload),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        let settled = ack.wait().await;
        assert!(settled.failed.is_empty(), "{:?}", settled.first_error);
    }

    /// Reports are served as they arrive: had the thread waited between
    /// polls, 30 one-at-a-time sends would take ~15 s.
    #[tokio::test]
    async fn delivery_reports_do_not_wait_for_the_poll_timeout() {
        let kafka = EmbeddedKafka::start(1, "t", 1).unwrap();
        let p = producer(&kafka);
        send_one(&p, 0).await; // metadata, connection
        let start = Instant::now();
        for i in 1..=30 {
            send_one(&p, i).await;
        }
        let took = start.elapsed();
        assert!(took < 10 * POLL_WAIT, "30 acks took {took:?}");
    }

    /// Dropping the handle ends the poll thread, which drops the producer.
    #[tokio::test]
    async fn dropping_the_handle_ends_the_poll_thread() {
        let kafka = EmbeddedKafka::start(1, "t", 1).unwrap();
        let p = producer(&kafka);
        send_one(&p, 0).await;
        let weak = Arc::downgrade(&p.producer);
        drop(p);
        let deadline = Instant::now() + 5 * POLL_WAIT;
        while weak.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "poll thread still holds the producer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(weak.strong_count(), 0);
    }

    /// `close` returns once the thread has ended (within one poll).
    #[tokio::test]
    async fn close_joins_the_poll_thread() {
        let kafka = EmbeddedKafka::start(1, "t", 1).unwrap();
        let p = producer(&kafka);
        send_one(&p, 0).await;
        let start = Instant::now();
        p.close();
        assert!(start.elapsed() <= 3 * POLL_WAIT, "{:?}", start.elapsed());
        assert_eq!(
            Arc::strong_count(&p.producer),
            1,
            "the thread's reference is gone"
        );
        p.close(); // idempotent
    }
}

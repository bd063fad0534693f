//! [`PolledProducer`]: rdkafka's `BaseProducer` with a thread of ours
//! serving its delivery reports, woken by librdkafka when one arrives.
//!
//! It replaces rdkafka's `ThreadedProducer`, whose thread polls with a
//! 100 ms timeout. rdkafka rounds what is left of a poll's deadline down to
//! whole milliseconds for librdkafka, so every timed poll ends in a busy
//! loop of zero-timeout polls for up to a millisecond: ~0.7 % of a core on
//! an idle daemon with 100 ms polls, and with 1 s polls still 3 % of the
//! collector's CPU at the reference workload and 14 % of an idle fleet's
//! (BENCHMARKS.md). So the thread never makes a timed poll: librdkafka
//! writes a byte to a socket of ours when an event lands on the producer's
//! empty event queue (`rd_kafka_queue_io_event_enable`), the thread sleeps
//! in a read of that socket, and serves the queue with zero-timeout polls
//! until it is empty.

use std::io::{ErrorKind, Read, Write};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use super::delivery::Context;

/// How long the thread sleeps when no event comes: the bound on a missed
/// wake-up, and how often it checks that it should stop.
const POLL_WAIT: Duration = Duration::from_secs(1);

/// Zero-timeout polls per wake-up at most (each serves one event, which
/// carries many delivery reports); the rest waits for the next round.
const MAX_POLLS_PER_WAKE: usize = 10_000;

/// The byte librdkafka writes to wake the thread.
const WAKE: [u8; 1] = [1];

/// A producer whose delivery reports are served by a background thread
/// until [`PolledProducer::close`] or the handle's drop.
pub(crate) struct PolledProducer {
    producer: Arc<Woken>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The producer, its event queue registered to write to `wake`.
struct Woken {
    producer: BaseProducer<Context>,
    /// A handle on the producer's event queue (librdkafka's "main" queue,
    /// the one `BaseProducer::poll` serves), owned: destroyed on drop.
    queue: *mut rdsys::rd_kafka_queue_t,
    /// The end librdkafka writes to (non-blocking, as librdkafka requires).
    wake: UnixStream,
}

// SAFETY: `queue` is only passed to librdkafka's queue functions, which
// are thread-safe; it lives as long as the producer (see `Drop`).
unsafe impl Send for Woken {}
unsafe impl Sync for Woken {}

impl Woken {
    /// Events waiting on the queue.
    fn queued(&self) -> usize {
        // SAFETY: `queue` is a live handle until `drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.queue) }
    }

    /// Wakes the thread (for `close`): a full socket already wakes it.
    fn wake(&self) {
        let _ = (&self.wake).write(&WAKE);
    }
}

impl Drop for Woken {
    fn drop(&mut self) {
        // SAFETY: unregisters the socket before it is closed (a closed
        // descriptor's number can be reused by another file) and releases
        // the handle; the producer itself is dropped after this.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(self.queue, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

impl PolledProducer {
    /// Creates the producer and starts its poll thread.
    pub(crate) fn create(config: &ClientConfig, context: Context) -> Result<Self, String> {
        let producer: BaseProducer<Context> = config
            .create_with_context(context)
            .map_err(|e| e.to_string())?;
        let (wake, mut woken) = UnixStream::pair()
            .map_err(|e| format!("cannot create the kafka wake-up socket: {e}"))?;
        wake.set_nonblocking(true)
            .and_then(|()| woken.set_read_timeout(Some(POLL_WAIT)))
            .map_err(|e| format!("cannot set up the kafka wake-up socket: {e}"))?;
        // SAFETY: the client pointer is live (we own the producer); the
        // returned handle is owned by `Woken`, whose drop unregisters the
        // descriptor and destroys the handle before the socket closes.
        let producer = unsafe {
            let queue = rdsys::rd_kafka_queue_get_main(producer.client().native_ptr());
            if queue.is_null() {
                return Err("librdkafka has no event queue for the producer".to_string());
            }
            rdsys::rd_kafka_queue_io_event_enable(
                queue,
                wake.as_raw_fd(),
                WAKE.as_ptr().cast(),
                WAKE.len(),
            );
            Arc::new(Woken {
                producer,
                queue,
                wake,
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (producer.clone(), stop.clone());
        // Joined by `close`; not on drop, which must not block: the thread
        // then ends at its next wake-up (the drop sends one) and drops its
        // reference to the producer.
        let thread = std::thread::Builder::new()
            .name("kafka-poll".to_string())
            .spawn(move || {
                let mut buf = [0u8; 64];
                let mut degraded = false;
                while !s.load(Ordering::Acquire) {
                    // Each poll marks the queue served: an event arriving
                    // after it writes a new wake-up.
                    let mut polls = 0;
                    while p.queued() > 0 && polls < MAX_POLLS_PER_WAKE {
                        p.producer.poll(Duration::ZERO);
                        polls += 1;
                    }
                    match woken.read(&mut buf) {
                        Ok(n) if n > 0 => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                            ) => {}
                        // Neither an end of file (the write end lives as
                        // long as `p`) nor another error is expected: serve
                        // the queue once a second, and say so once.
                        other => {
                            if !degraded {
                                degraded = true;
                                tracing::warn!(result = ?other, "the kafka wake-up socket failed; delivery reports are served once a second");
                            }
                            std::thread::sleep(POLL_WAIT);
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the kafka poll thread: {e}"))?;
        Ok(PolledProducer {
            producer,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the poll thread and waits for it. Reports after this are
    /// served only by `flush`.
    pub(crate) fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.producer.wake();
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
        &self.producer.producer
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.producer.wake();
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
            metrics: crate::sink::kafka::delivery::MessageMetrics::register(),
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

    /// Reports are served as they arrive: had librdkafka's wake-up not
    /// reached the thread, each report would wait for its read timeout
    /// (30 one-at-a-time sends: ~30 s, measured with it unregistered).
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

    /// `close` returns once the thread has ended (it wakes the thread).
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

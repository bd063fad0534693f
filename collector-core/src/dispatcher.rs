//! Sends flushed batches to the sink, at most `batch.max_in_flight` at a
//! time, and settles each one: delivered records are counted; records the
//! sink could not deliver go to the spill, and those it refused for good
//! (or too large to send at all) to the dead letters. While the sink is
//! known to be down, batches go straight to the spill, so memory stays
//! bounded during an outage of any length. Only when there is no spill or
//! dead-letter store (or it fails) is a record lost, and then it is
//! counted and logged.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::deadletter::{self, Refused};
use crate::internal_events::delivery::{
    DeliveryFailed, RecordsDelivered, RecordsLost, RecordsSpilled, RecordsUnencodable, SpillReason,
};
use crate::metrics::Stats;
use crate::record::Record;
use crate::sink::{Batch, Encoded, Message, RejectCause, Sink};
use crate::spill::{payload, SpillStore};

/// Where batches go and what happens to failures.
#[derive(Clone)]
pub(crate) struct Dispatch {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) spill: Option<Arc<dyn SpillStore>>,
    /// Where refused records go.
    pub(crate) dead_letters: Option<Arc<dyn SpillStore>>,
    pub(crate) stats: Arc<Stats>,
}

pub(crate) async fn run_dispatcher(
    mut batches: mpsc::Receiver<Batch>,
    dispatch: Dispatch,
    max_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    while let Some(batch) = batches.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // Reap finished deliveries so the set stays small.
        while tasks.try_join_next().is_some() {}
        Stats::add(&dispatch.stats.batches, 1);
        let d = dispatch.clone();
        tasks.spawn(async move {
            d.handle(batch).await;
            drop(slot);
        });
    }
    while tasks.join_next().await.is_some() {}
}

impl Dispatch {
    async fn handle(&self, batch: Batch) {
        let total = batch.records.len();
        // Encoding a large batch takes milliseconds (2,000 records of 50
        // samples: ~30 ms): on the blocking pool, not on the executor
        // threads whose delay would show as schedule lateness. Each record
        // is encoded once; what fails delivery is spilled from these bytes.
        let mut batch = Arc::new(batch);
        let (sink, shared) = (self.sink.clone(), batch.clone());
        let encoded = match tokio::task::spawn_blocking(move || Encoded::new(&*sink, &shared)).await
        {
            Ok(encoded) => encoded,
            Err(e) => {
                RecordsUnencodable {
                    stats: &self.stats,
                    count: total,
                }
                .emit();
                self.lost(
                    total,
                    batch.records.first(),
                    &format!("encoding task failed: {e}"),
                );
                return;
            }
        };
        // The samples live on in the messages: while those are delivered
        // (and the producer holds its copies), the batch keeps only what
        // its logs name, each record's device and seq (at 2,000 devices x
        // 50 tags, ~10 MB less at each flush).
        if let Some(b) = Arc::get_mut(&mut batch) {
            for r in &mut b.records {
                r.samples = Vec::new();
            }
        }
        let Encoded {
            messages,
            index,
            failed: unencodable,
            error: encode_error,
            too_large,
        } = encoded;
        if !too_large.is_empty() {
            Stats::add(&self.stats.records_failed, too_large.len() as u64);
            let refused = too_large
                .into_iter()
                .map(|(message, detail)| Refused {
                    message,
                    cause: RejectCause::TooLarge,
                    detail,
                })
                .collect();
            self.dead_letter(refused).await;
        }
        if !unencodable.is_empty() {
            // Never deliverable, so not worth spilling: counted and logged.
            RecordsUnencodable {
                stats: &self.stats,
                count: unencodable.len(),
            }
            .emit();
            let first = unencodable.first().and_then(|&i| batch.records.get(i));
            let why = encode_error.map(|e| e.to_string()).unwrap_or_default();
            self.lost(unencodable.len(), first, &why);
        }
        if self.spill.is_some() && !self.sink.reachability().accepts() {
            let first = index.first().and_then(|&i| batch.records.get(i));
            self.spill_messages(messages, first, SpillReason::SinkDown)
                .await;
            return;
        }
        let report = self.sink.deliver_messages(&messages).await;
        if report.failed.is_empty() && report.rejected.is_empty() {
            RecordsDelivered {
                stats: &self.stats,
                count: messages.len(),
            }
            .emit();
            return;
        }
        // Whatever order a sink reports its failures in (repeats and
        // out-of-range indexes ignored), each message is delivered, failed
        // or rejected, exactly one of them.
        let outcome = Outcome::settle(messages.len(), &report);
        RecordsDelivered {
            stats: &self.stats,
            count: outcome.delivered(),
        }
        .emit();
        let mut messages: Vec<Option<Message>> = messages.into_iter().map(Some).collect();
        let refused = outcome.take_rejected(&mut messages);
        if !refused.is_empty() {
            Stats::add(&self.stats.records_failed, refused.len() as u64);
            self.dead_letter(refused).await;
        }
        let is_failed = outcome.failed;
        let failed = is_failed.iter().filter(|&&f| f).count();
        if failed == 0 {
            return;
        }
        DeliveryFailed {
            stats: &self.stats,
            count: failed,
            error: report.error.as_ref().map(|e| e.to_string()),
            flushed_by: batch.reason.label(),
        }
        .emit();
        let first = is_failed
            .iter()
            .position(|&f| f)
            .and_then(|j| index.get(j))
            .and_then(|&i| batch.records.get(i));
        let failed_messages: Vec<Message> = messages
            .into_iter()
            .zip(is_failed)
            .filter_map(|(m, f)| if f { m } else { None })
            .collect();
        self.spill_messages(failed_messages, first, SpillReason::DeliveryFailed)
            .await;
    }

    /// Writes encoded records to the spill (durably, framed on the blocking
    /// pool); counts them as undelivered if there is no spill or it fails.
    /// `first` is the first one's record, for the loss log.
    async fn spill_messages(
        &self,
        messages: Vec<Message>,
        first: Option<&Record>,
        reason: SpillReason,
    ) {
        let n = messages.len();
        if n == 0 {
            return;
        }
        let Some(store) = self.spill.clone() else {
            self.lost(n, first, "no spill configured");
            return;
        };
        let appended = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(
                messages
                    .iter()
                    .map(|m| m.payload.len() + m.key.len() + 16)
                    .sum(),
            );
            payload::encode(&messages, &mut buf);
            store.append(&buf, n as u32)
        })
        .await;
        match appended {
            Ok(Ok(spill_id)) => RecordsSpilled {
                stats: &self.stats,
                count: n,
                reason,
                spill_id,
            }
            .emit(),
            Ok(Err(e)) => self.lost(n, first, &format!("spill append failed: {e}")),
            Err(e) => self.lost(n, first, &format!("spill task failed: {e}")),
        }
    }

    /// Stores refused messages in the dead letters; counts them as lost
    /// when there is no dead-letter store or it fails.
    async fn dead_letter(&self, refused: Vec<Refused>) {
        let n = refused.len();
        let why = match &self.dead_letters {
            Some(store) => match deadletter::store(store, &self.stats, refused).await {
                Ok(()) => return,
                Err(e) => e,
            },
            None => {
                let first = refused
                    .first()
                    .map(|r| r.detail.clone())
                    .unwrap_or_default();
                format!("refused by the sink and no dead-letter store configured: {first}")
            }
        };
        self.lost(n, None, &why);
    }

    fn lost(&self, count: usize, first: Option<&Record>, why: &str) {
        RecordsLost {
            stats: &self.stats,
            count,
            first,
            why,
        }
        .emit();
    }
}

/// How each message of a delivery ended.
pub(crate) struct Outcome {
    /// Failed for a reason that may pass: spill.
    pub(crate) failed: Vec<bool>,
    /// Refused for good, with why: dead letters.
    pub(crate) rejected: Vec<Option<(RejectCause, String)>>,
}

impl Outcome {
    /// Reads a sink's report for `n` messages (repeats and out-of-range
    /// indexes ignored; rejected wins over failed).
    pub(crate) fn settle(n: usize, report: &crate::sink::DeliveryReport) -> Outcome {
        let mut failed = vec![false; n];
        let mut rejected = vec![None; n];
        for &j in &report.failed {
            if let Some(f) = failed.get_mut(j) {
                *f = true;
            }
        }
        for r in &report.rejected {
            if let (Some(slot), Some(f)) = (rejected.get_mut(r.index), failed.get_mut(r.index)) {
                *slot = Some((r.cause, r.detail.clone()));
                *f = false;
            }
        }
        Outcome { failed, rejected }
    }

    /// Messages delivered.
    pub(crate) fn delivered(&self) -> usize {
        self.failed
            .iter()
            .zip(&self.rejected)
            .filter(|(f, r)| !**f && r.is_none())
            .count()
    }

    /// Takes the rejected messages out of `messages`.
    pub(crate) fn take_rejected(&self, messages: &mut [Option<Message>]) -> Vec<Refused> {
        self.rejected
            .iter()
            .zip(messages.iter_mut())
            .filter_map(|(r, m)| {
                let (cause, detail) = r.clone()?;
                Some(Refused {
                    message: m.take()?,
                    cause,
                    detail,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::error::SinkError;
    use crate::sink::{DeliveryReport, FlushReason, Reachability};
    use crate::spill::SpillConfig;

    /// A sink that counts encodings and fails every delivery, as a broker
    /// that times out would; optionally reports itself down.
    struct FailingSink {
        encodes: AtomicUsize,
        down: bool,
    }

    #[async_trait]
    impl Sink for FailingSink {
        fn encode(&self, record: &Record) -> Result<Message, SinkError> {
            self.encodes.fetch_add(1, Ordering::SeqCst);
            Message::json(record, "t")
        }

        async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport {
            DeliveryReport {
                failed: (0..messages.len()).collect(),
                error: Some(SinkError::Delivery("Local: Message timed out".into())),
                ..DeliveryReport::default()
            }
        }

        fn reachability(&self) -> Reachability {
            if self.down {
                Reachability::Down
            } else {
                Reachability::Up
            }
        }

        async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn batch(n: u64) -> Batch {
        Batch {
            records: (0..n)
                .map(|seq| Record {
                    device_id: Arc::from("dev-1"),
                    seq,
                    read_time: chrono::Utc::now(),
                    samples: Vec::new(),
                    part: None,
                    origin: Default::default(),
                })
                .collect(),
            reason: FlushReason::Count,
        }
    }

    async fn dispatch_one(
        down: bool,
    ) -> (usize, Arc<Stats>, Arc<dyn SpillStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SpillStore> =
            Arc::from(crate::spill::open(&SpillConfig::new(dir.path())).unwrap());
        let sink = Arc::new(FailingSink {
            encodes: AtomicUsize::new(0),
            down,
        });
        let stats = Arc::new(Stats::default());
        let d = Dispatch {
            sink: sink.clone(),
            spill: Some(store.clone()),
            dead_letters: None,
            stats: stats.clone(),
        };
        d.handle(batch(5)).await;
        (sink.encodes.load(Ordering::SeqCst), stats, store, dir)
    }

    /// A sink that reports failures out of order, twice, or out of range
    /// still has each record counted delivered or spilled, exactly once.
    #[tokio::test]
    async fn any_order_of_reported_failures_is_settled_exactly() {
        struct Messy;
        #[async_trait]
        impl Sink for Messy {
            fn encode(&self, record: &Record) -> Result<Message, SinkError> {
                Message::json(record, "t")
            }
            async fn deliver_messages(&self, _messages: &[Message]) -> DeliveryReport {
                DeliveryReport {
                    failed: vec![3, 1, 3, 99],
                    error: None,
                    ..DeliveryReport::default()
                }
            }
            async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SpillStore> =
            Arc::from(crate::spill::open(&SpillConfig::new(dir.path())).unwrap());
        let stats = Arc::new(Stats::default());
        let d = Dispatch {
            sink: Arc::new(Messy),
            spill: Some(store.clone()),
            dead_letters: None,
            stats: stats.clone(),
        };
        d.handle(batch(5)).await;
        let s = stats.snapshot();
        assert_eq!((s.records_delivered, s.records_failed), (3, 2));
        assert_eq!((s.records_spilled, s.records_undelivered), (2, 0));
        let spilled = store.oldest(10).unwrap();
        let messages = crate::spill::payload::decode(&spilled[0].payload).unwrap();
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![1, 3]);
    }

    /// A failed delivery spills the bytes of the first encoding: each
    /// record is encoded once, and every one is in the spill.
    #[tokio::test]
    async fn failed_records_are_spilled_without_encoding_them_again() {
        let (encodes, stats, store, _dir) = dispatch_one(false).await;
        assert_eq!(encodes, 5, "each record encoded exactly once");
        let s = stats.snapshot();
        assert_eq!((s.records_failed, s.records_spilled), (5, 5));
        assert_eq!(s.records_undelivered, 0);
        let spilled = store.oldest(10).unwrap();
        assert_eq!(spilled.iter().map(|b| b.records as u64).sum::<u64>(), 5);
    }

    /// While the sink is down, batches go straight to the spill, encoded
    /// once, off the executor.
    #[tokio::test]
    async fn batches_for_a_down_sink_are_spilled_encoded_once() {
        let (encodes, stats, _store, _dir) = dispatch_one(true).await;
        assert_eq!(encodes, 5);
        let s = stats.snapshot();
        assert_eq!((s.records_failed, s.records_spilled), (0, 5));
    }
}

//! Sends flushed batches to the sink, at most `batch.max_in_flight` at a
//! time, and settles each one: delivered records are counted; records the
//! sink could not deliver go to the spill. While the sink is known to be
//! down, batches go straight to the spill, so memory stays bounded during
//! an outage of any length. Only when there is no spill (or it fails) is a
//! record lost, and then it is counted and logged.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::error::SinkError;
use crate::metrics::{names, Stats};
use crate::record::Record;
use crate::sink::{Batch, DeliveryReport, Encoded, Sink};
use crate::spill::{payload, SpillStore};

/// Where batches go and what happens to failures.
#[derive(Clone)]
pub(crate) struct Dispatch {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) spill: Option<Arc<dyn SpillStore>>,
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
        if self.spill.is_some() && !self.sink.is_accepting() {
            let refs: Vec<&Record> = batch.records.iter().collect();
            self.spill_records(&refs, "kafka_down").await;
            return;
        }
        // Encoding a large batch takes milliseconds (2,000 records of 50
        // samples: ~30 ms): on the blocking pool, not on the executor
        // threads whose delay would show as schedule lateness.
        let batch = Arc::new(batch);
        let (sink, shared) = (self.sink.clone(), batch.clone());
        let report = match tokio::task::spawn_blocking(move || Encoded::new(&*sink, &shared)).await
        {
            Ok(encoded) => {
                let report = self.sink.deliver_messages(&encoded.messages).await;
                encoded.settle(report)
            }
            Err(e) => DeliveryReport {
                failed: (0..batch.records.len()).collect(),
                error: Some(SinkError::Delivery(format!("encoding task failed: {e}"))),
            },
        };
        let failed = report.failed.len();
        Stats::add(
            &self.stats.records_delivered,
            (batch.records.len() - failed) as u64,
        );
        if failed == 0 {
            return;
        }
        Stats::add(&self.stats.records_failed, failed as u64);
        let records: Vec<&Record> = report
            .failed
            .iter()
            .filter_map(|&i| batch.records.get(i))
            .collect();
        tracing::warn!(
            records = failed,
            error = report.error.as_ref().map(|e| e.to_string()),
            "delivery failed; spilling"
        );
        self.spill_records(&records, "delivery_failed").await;
    }

    /// Writes records to the spill (durably); counts them as undelivered
    /// if there is no spill or it fails.
    async fn spill_records(&self, records: &[&Record], reason: &'static str) {
        if records.is_empty() {
            return;
        }
        let Some(store) = self.spill.clone() else {
            self.undelivered(records, "no spill configured");
            return;
        };
        let mut messages = Vec::with_capacity(records.len());
        for r in records {
            match self.sink.encode(r) {
                Ok(m) => messages.push(m),
                Err(e) => self.undelivered(&[*r], &e.to_string()),
            }
        }
        let mut buf = Vec::with_capacity(
            messages
                .iter()
                .map(|m| m.payload.len() + m.key.len() + 16)
                .sum(),
        );
        payload::encode(&messages, &mut buf);
        let n = messages.len();
        let appended = tokio::task::spawn_blocking(move || store.append(&buf, n as u32)).await;
        match appended {
            Ok(Ok(id)) => {
                Stats::add(&self.stats.records_spilled, n as u64);
                metrics::counter!(names::RECORDS_SPILLED, "reason" => reason).increment(n as u64);
                tracing::debug!(records = n, spill_id = %id, reason, "records spilled");
            }
            Ok(Err(e)) => self.undelivered(records, &format!("spill append failed: {e}")),
            Err(e) => self.undelivered(records, &format!("spill task failed: {e}")),
        }
    }

    fn undelivered(&self, records: &[&Record], why: &str) {
        Stats::add(&self.stats.records_undelivered, records.len() as u64);
        metrics::counter!(names::RECORDS_UNDELIVERED).increment(records.len() as u64);
        let first = records.first();
        tracing::error!(
            records = records.len(),
            first_device = first.map(|r| &*r.device_id),
            first_seq = first.map(|r| r.seq),
            why,
            "records lost: neither delivered nor spilled"
        );
    }
}

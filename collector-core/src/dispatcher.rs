//! Sends flushed batches to the sink, at most `batch.max_in_flight` at a
//! time, and settles each one: delivered records are counted, failed ones
//! are handed to the failure path. The spill (disk) will plug in at
//! [`on_undelivered`]; until then undelivered records are counted and
//! logged, never silently dropped.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::{names, Stats};
use crate::sink::{Batch, DeliveryReport, Sink};

pub(crate) async fn run_dispatcher(
    mut batches: mpsc::Receiver<Batch>,
    sink: Arc<dyn Sink>,
    max_in_flight: usize,
    stats: Arc<Stats>,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    while let Some(batch) = batches.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // Reap finished deliveries so the set stays small.
        while tasks.try_join_next().is_some() {}
        Stats::add(&stats.batches, 1);
        let sink = sink.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            let report = sink.deliver(&batch).await;
            settle(&batch, report, &stats);
            drop(slot);
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn settle(batch: &Batch, report: DeliveryReport, stats: &Stats) {
    let failed = report.failed.len();
    let delivered = batch.records.len() - failed;
    Stats::add(&stats.records_delivered, delivered as u64);
    if failed > 0 {
        Stats::add(&stats.records_failed, failed as u64);
        on_undelivered(batch, &report);
    }
}

/// The seam for the spill: records the sink could not deliver.
fn on_undelivered(batch: &Batch, report: &DeliveryReport) {
    metrics::counter!(names::RECORDS_UNDELIVERED).increment(report.failed.len() as u64);
    let first = report.failed.first().and_then(|&i| batch.records.get(i));
    tracing::error!(
        records = report.failed.len(),
        batch_records = batch.records.len(),
        first_device = first.map(|r| &*r.device_id),
        first_seq = first.map(|r| r.seq),
        error = report.error.as_ref().map(|e| e.to_string()),
        "records could not be delivered"
    );
}

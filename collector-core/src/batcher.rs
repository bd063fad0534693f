//! Groups records into batches and flushes on time, count or bytes,
//! whichever comes first. Runs as one task between the device schedules
//! and the dispatcher; when every schedule has stopped (the record channel
//! closes) it flushes what it holds and ends.

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::metrics::names;
use crate::record::Record;
use crate::sink::{Batch, FlushReason};

pub(crate) async fn run_batcher(
    mut records: mpsc::Receiver<Record>,
    cfg: BatchConfig,
    batches: mpsc::Sender<Batch>,
) {
    let mut buf: Vec<Record> = Vec::new();
    let mut bytes = 0usize;
    let mut next_flush = Instant::now() + cfg.interval;
    let queued = metrics::gauge!(names::QUEUE_RECORDS);
    loop {
        let reason = tokio::select! {
            r = records.recv() => match r {
                Some(record) => {
                    bytes += record.estimated_bytes();
                    buf.push(record);
                    if buf.len() >= cfg.max_records {
                        Some(FlushReason::Count)
                    } else if bytes as u64 >= cfg.max_bytes {
                        Some(FlushReason::Bytes)
                    } else {
                        None
                    }
                }
                None => {
                    flush(&mut buf, &mut bytes, FlushReason::Shutdown, &batches).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(next_flush) => Some(FlushReason::Interval),
        };
        queued.set(records.len() as f64);
        if let Some(reason) = reason {
            if !flush(&mut buf, &mut bytes, reason, &batches).await {
                tracing::error!("dispatcher gone; batcher stopping");
                return;
            }
            next_flush = Instant::now() + cfg.interval;
        }
    }
}

/// Hands the buffered records on; false if the dispatcher is gone.
async fn flush(
    buf: &mut Vec<Record>,
    bytes: &mut usize,
    reason: FlushReason,
    out: &mpsc::Sender<Batch>,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let records = std::mem::take(buf);
    metrics::counter!(names::BATCHES_FLUSHED, "reason" => reason.label()).increment(1);
    metrics::histogram!(names::BATCH_RECORDS).record(records.len() as f64);
    metrics::histogram!(names::BATCH_BYTES).record(*bytes as f64);
    *bytes = 0;
    let batch = Batch { records, reason };
    out.send(batch).await.is_ok()
}

/// The interval used when a test needs "never by time".
#[cfg(test)]
const NEVER: std::time::Duration = std::time::Duration::from_secs(3600);
#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn record(seq: u64) -> Record {
        Record {
            device_id: Arc::from("d"),
            seq,
            read_time: chrono::Utc::now(),
            samples: Vec::new(),
            part: None,
            origin: Default::default(),
        }
    }

    fn cfg(interval: Duration, max_records: usize, max_bytes: u64) -> BatchConfig {
        BatchConfig {
            interval,
            max_records,
            max_bytes,
            ..BatchConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_on_count_then_on_close() {
        let (tx, rx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(10);
        let task = tokio::spawn(run_batcher(rx, cfg(NEVER, 3, u64::MAX), btx));
        for i in 0..4 {
            tx.send(record(i)).await.unwrap();
        }
        let b = brx.recv().await.unwrap();
        assert_eq!((b.records.len(), b.reason), (3, FlushReason::Count));
        drop(tx);
        let b = brx.recv().await.unwrap();
        assert_eq!((b.records.len(), b.reason), (1, FlushReason::Shutdown));
        assert_eq!(b.records[0].seq, 3);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_on_interval_and_bytes() {
        let (tx, rx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(10);
        tokio::spawn(run_batcher(
            rx,
            cfg(Duration::from_secs(1), 1000, u64::MAX),
            btx,
        ));
        tx.send(record(0)).await.unwrap();
        let b = brx.recv().await.unwrap();
        assert_eq!(b.reason, FlushReason::Interval);

        let (tx, rx) = mpsc::channel(100);
        let (btx, mut brx) = mpsc::channel(10);
        let one = record(0).estimated_bytes() as u64;
        tokio::spawn(run_batcher(rx, cfg(NEVER, 1000, one * 2), btx));
        tx.send(record(0)).await.unwrap();
        tx.send(record(1)).await.unwrap();
        let b = brx.recv().await.unwrap();
        assert_eq!((b.records.len(), b.reason), (2, FlushReason::Bytes));
    }
}

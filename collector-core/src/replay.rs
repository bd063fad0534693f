//! Replays the spill to the sink, oldest first, whenever the sink is
//! healthy, at a bounded pace (governor) so live traffic keeps its latency.
//! A spilled batch is deleted only after every message in it is
//! acknowledged; if any fails, the batch stays and is retried whole later
//! (consumers dedupe the repeats by `(device_id, seq)`). Also applies the
//! spill's TTL and size cap periodically.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::internal_events::delivery::{BatchReplayed, RecordsLost, ReplayFailed};
use crate::metrics::Stats;
use crate::sink::Sink;
use crate::spill::{self, payload, SpillStore};

/// How often TTL and size cap are applied.
const LIMITS_EVERY: Duration = Duration::from_secs(10);
/// Pause when there is nothing to do (sink down, spill empty).
const IDLE: Duration = Duration::from_secs(1);
/// Pause after a failed replay delivery.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Spilled batches read per visit to the store.
const READ_AHEAD: usize = 4;

pub(crate) async fn run_replay(
    store: Arc<dyn SpillStore>,
    sink: Arc<dyn Sink>,
    batches_per_second: u32,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let limiter = RateLimiter::direct(Quota::per_second(
        NonZeroU32::new(batches_per_second).unwrap_or(NonZeroU32::MIN),
    ));
    let mut next_limits = tokio::time::Instant::now();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if tokio::time::Instant::now() >= next_limits {
            next_limits += LIMITS_EVERY;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.enforce_limits(SystemTime::now())).await {
                Ok(Err(e)) => tracing::error!(error = %e, "spill limits"),
                Err(e) => tracing::error!(error = %e, "spill limits task"),
                Ok(Ok(_)) => {}
            }
        }
        let pause = if !sink.reachability().is_up() {
            Some(IDLE)
        } else {
            replay_some(&store, &sink, &limiter, &stats, &stop).await
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Replays up to [`READ_AHEAD`] batches; returns how long to pause, if at all.
async fn replay_some(
    store: &Arc<dyn SpillStore>,
    sink: &Arc<dyn Sink>,
    limiter: &governor::DefaultDirectRateLimiter,
    stats: &Stats,
    stop: &CancellationToken,
) -> Option<Duration> {
    let s = store.clone();
    let batches = match tokio::task::spawn_blocking(move || s.oldest(READ_AHEAD)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading the spill");
            return Some(RETRY_AFTER);
        }
        Err(e) => {
            tracing::error!(error = %e, "spill read task");
            return Some(RETRY_AFTER);
        }
    };
    if batches.is_empty() {
        return Some(IDLE);
    }
    for batch in batches {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = limiter.until_ready() => {}
        }
        let messages = match payload::decode(&batch.payload) {
            Ok(m) => m,
            Err(e) => {
                // Passed the store's checksum yet does not decode: a bug, not
                // bit rot. Keeping it would block the replay forever.
                RecordsLost {
                    stats,
                    count: batch.records as usize,
                    first: None,
                    why: &format!("spilled batch {} does not decode: {e}", batch.id),
                }
                .emit();
                delete(store, batch.id).await;
                continue;
            }
        };
        let report = sink.deliver_messages(&messages).await;
        if !report.failed.is_empty() {
            ReplayFailed {
                spill_id: batch.id,
                failed: report.failed.len(),
                error: report.error.map(|e| e.to_string()),
            }
            .emit();
            return Some(RETRY_AFTER);
        }
        delete(store, batch.id).await;
        BatchReplayed {
            stats,
            count: messages.len(),
        }
        .emit();
    }
    None
}

async fn delete(store: &Arc<dyn SpillStore>, id: spill::SpillId) {
    let s = store.clone();
    match tokio::task::spawn_blocking(move || s.delete(&[id])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(spill_id = %id, error = %e, "deleting a replayed batch (it will be replayed again)")
        }
        Err(e) => tracing::error!(spill_id = %id, error = %e, "spill delete task"),
    }
}

//! Replays the spill to the sink, oldest first, whenever the sink is
//! healthy, at a bounded pace (governor) so live traffic keeps its latency.
//!
//! A spilled batch is deleted once every message in it is settled:
//! delivered, or refused for good and moved to the dead letters
//! ([`crate::deadletter`]). A batch whose delivery fails for a reason that
//! may pass is set aside with a growing backoff (kept in memory) and the
//! batches behind it go on, so no batch can stall the replay; when only
//! part of it failed, that part is spilled again as a new batch and the
//! original deleted, so what was delivered is not sent twice. Two failing
//! batches in a row mean the sink is in trouble, not the batch: the replay
//! then pauses. Consumers dedupe the repeats a retry can cause by
//! `(device_id, seq, part)`. Also applies the TTL and size cap of the
//! spill and the dead letters.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadletter;
use crate::dispatcher::Outcome;
use crate::internal_events::delivery::{BatchReplayed, RecordsLost, ReplayDeferred};
use crate::metrics::Stats;
use crate::sink::{Message, Sink};
use crate::spill::{self, payload, SpillId, SpillStore, SpilledBatch};

/// How often TTL and size cap are applied.
const LIMITS_EVERY: Duration = Duration::from_secs(10);
/// Pause when there is nothing to do (sink down, spill empty).
const IDLE: Duration = Duration::from_secs(1);
/// Pause when the sink fails batch after batch, or the store fails.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// First wait before a set-aside batch is tried again; doubles per attempt.
const SET_ASIDE_FIRST: Duration = Duration::from_secs(5);
/// Longest wait before a set-aside batch is tried again.
const SET_ASIDE_MAX: Duration = Duration::from_secs(300);
/// Set-aside batches remembered; with more, the replay pauses instead.
const MAX_SET_ASIDE: usize = 1024;
/// Failing batches in a row after which the replay pauses.
const FAILURES_IN_A_ROW: usize = 2;
/// Spilled batches read per visit to the store.
const READ_AHEAD: usize = 4;

/// What the replay works with.
pub(crate) struct Replay {
    pub(crate) store: Arc<dyn SpillStore>,
    pub(crate) dead_letters: Option<Arc<dyn SpillStore>>,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) stats: Arc<Stats>,
}

/// A batch whose replay failed, and when to try it again.
#[derive(Debug, Clone, Copy)]
struct SetAside {
    attempts: u32,
    until: Instant,
}

impl SetAside {
    fn next(attempts: u32) -> SetAside {
        let wait = SET_ASIDE_FIRST
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
            .min(SET_ASIDE_MAX);
        SetAside {
            attempts,
            until: Instant::now() + wait,
        }
    }
}

/// Where the replay is in the spill, across passes.
#[derive(Default)]
struct Cursor {
    /// The last batch looked at in this round (None: start from the oldest).
    after: Option<SpillId>,
    /// Batches set aside, by id.
    set_aside: HashMap<SpillId, SetAside>,
    /// Set-aside batches met in this round (the others are gone: pruned
    /// when the round ends).
    met: Vec<SpillId>,
    /// Whether this round sent anything (a round of set-aside batches
    /// only ends in a pause, not in an immediate rescan).
    sent: bool,
}

/// What became of one batch.
enum Settled {
    /// Every message delivered or dead-lettered; the batch is deleted.
    Done,
    /// Some messages failed; the batch (or its failed part) is set aside.
    SetAside,
}

pub(crate) async fn run_replay(replay: Replay, batches_per_second: u32, stop: CancellationToken) {
    let limiter = RateLimiter::direct(Quota::per_second(
        NonZeroU32::new(batches_per_second).unwrap_or(NonZeroU32::MIN),
    ));
    let mut next_limits = Instant::now();
    let mut cursor = Cursor::default();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if Instant::now() >= next_limits {
            next_limits += LIMITS_EVERY;
            for store in std::iter::once(&replay.store).chain(&replay.dead_letters) {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.enforce_limits(SystemTime::now())).await
                {
                    Ok(Err(e)) => tracing::error!(error = %e, "spill limits"),
                    Err(e) => tracing::error!(error = %e, "spill limits task"),
                    Ok(Ok(_)) => {}
                }
            }
        }
        let pause = if !replay.sink.reachability().is_up() {
            Some(IDLE)
        } else {
            replay.pass(&limiter, &mut cursor, &stop).await
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

impl Replay {
    /// Replays up to [`READ_AHEAD`] batches from the cursor on; returns
    /// how long to pause, if at all.
    async fn pass(
        &self,
        limiter: &governor::DefaultDirectRateLimiter,
        cursor: &mut Cursor,
        stop: &CancellationToken,
    ) -> Option<Duration> {
        let s = self.store.clone();
        let after = cursor.after;
        let batches =
            match tokio::task::spawn_blocking(move || s.oldest_after(after, READ_AHEAD)).await {
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
            // End of a round: forget set-aside batches that are gone, and
            // start again from the oldest.
            let met: std::collections::HashSet<SpillId> = cursor.met.drain(..).collect();
            cursor.set_aside.retain(|id, _| met.contains(id));
            let idle = !std::mem::take(&mut cursor.sent);
            cursor.after = None;
            return idle.then_some(IDLE);
        }
        let mut failures = 0;
        for batch in batches {
            cursor.after = Some(batch.id);
            let earlier = cursor.set_aside.get(&batch.id).copied();
            if let Some(a) = earlier {
                cursor.met.push(batch.id);
                if Instant::now() < a.until {
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = limiter.until_ready() => {}
            }
            cursor.sent = true;
            match self.replay_batch(batch, earlier, cursor).await {
                Settled::Done => failures = 0,
                Settled::SetAside => {
                    failures += 1;
                    if failures >= FAILURES_IN_A_ROW || cursor.set_aside.len() >= MAX_SET_ASIDE {
                        return Some(RETRY_AFTER);
                    }
                }
            }
        }
        None
    }

    /// Delivers one spilled batch and settles it.
    async fn replay_batch(
        &self,
        batch: SpilledBatch,
        earlier: Option<SetAside>,
        cursor: &mut Cursor,
    ) -> Settled {
        let id = batch.id;
        let messages = match payload::decode(&batch.payload) {
            Ok(m) => m,
            Err(e) => {
                // Passed the store's checksum yet does not decode: a bug, not
                // bit rot. Keeping it would only fail again.
                RecordsLost {
                    stats: &self.stats,
                    count: batch.records as usize,
                    first: None,
                    why: &format!("spilled batch {id} does not decode: {e}"),
                }
                .emit();
                self.delete(id).await;
                return Settled::Done;
            }
        };
        let report = self.sink.deliver_messages(&messages).await;
        let outcome = Outcome::settle(messages.len(), &report);
        let delivered = outcome.delivered();
        let mut slots: Vec<Option<Message>> = messages.into_iter().map(Some).collect();
        let refused = outcome.take_rejected(&mut slots);
        let refused_n = refused.len();
        let attempts = earlier.map_or(0, |a| a.attempts) + 1;
        let error = report.error.map(|e| e.to_string());
        if !refused.is_empty() {
            let stored = match &self.dead_letters {
                Some(store) => deadletter::store(store, &self.stats, refused).await,
                None => Err("no dead-letter store configured".to_string()),
            };
            if let Err(e) = stored {
                // Kept in the spill: retried (and refused) again later.
                tracing::error!(spill_id = %id, error = %e, "cannot store refused records in the dead letters; the batch stays in the spill");
                return self.set_aside(id, refused_n, attempts, Some(e), cursor);
            }
        }
        let failed: Vec<Message> = slots
            .into_iter()
            .zip(&outcome.failed)
            .filter_map(|(m, &f)| if f { m } else { None })
            .collect();
        if failed.is_empty() {
            self.settled(id, delivered, cursor).await;
            return Settled::Done;
        }
        if delivered + refused_n == 0 {
            return self.set_aside(id, failed.len(), attempts, error, cursor);
        }
        // Part of it went: spill the rest anew (behind the others) and
        // drop the original, so the delivered part is not sent again.
        let n = failed.len();
        let s = self.store.clone();
        let respilled = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            payload::encode(&failed, &mut buf);
            s.append(&buf, n as u32)
        })
        .await;
        match respilled {
            Ok(Ok(new_id)) => {
                self.settled(id, delivered, cursor).await;
                // The sink works (part went): not a failure in a row.
                self.set_aside(new_id, n, attempts, error, cursor);
                Settled::Done
            }
            Ok(Err(e)) => self.set_aside(id, n, attempts, Some(e.to_string()), cursor),
            Err(e) => self.set_aside(id, n, attempts, Some(e.to_string()), cursor),
        }
    }

    /// Deletes a batch whose messages are all accounted for (`delivered`
    /// of them by the sink) and records the replay.
    async fn settled(&self, id: SpillId, delivered: usize, cursor: &mut Cursor) {
        self.delete(id).await;
        cursor.set_aside.remove(&id);
        BatchReplayed {
            stats: &self.stats,
            count: delivered,
        }
        .emit();
    }

    fn set_aside(
        &self,
        id: SpillId,
        failed: usize,
        attempts: u32,
        error: Option<String>,
        cursor: &mut Cursor,
    ) -> Settled {
        let next = SetAside::next(attempts);
        cursor.set_aside.insert(id, next);
        // Met in this round: kept when the round ends.
        cursor.met.push(id);
        ReplayDeferred {
            spill_id: id,
            failed,
            attempts,
            retry_in: next.until.saturating_duration_since(Instant::now()),
            error,
        }
        .emit();
        Settled::SetAside
    }

    async fn delete(&self, id: spill::SpillId) {
        let s = self.store.clone();
        match tokio::task::spawn_blocking(move || s.delete(&[id])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(spill_id = %id, error = %e, "deleting a replayed batch (it will be replayed again)")
            }
            Err(e) => tracing::error!(spill_id = %id, error = %e, "spill delete task"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use parking_lot::Mutex;

    use super::*;
    use crate::deadletter;
    use crate::error::SinkError;
    use crate::record::Record;
    use crate::sink::{DeliveryReport, RejectCause, Rejected};
    use crate::spill::{SpillConfig, StoreRole};

    /// Refuses `poison` for good, fails `flaky` every time, delivers the
    /// rest (and remembers what it delivered, in order).
    #[derive(Default)]
    struct Picky {
        delivered: Mutex<Vec<String>>,
        flaky_attempts: Mutex<usize>,
    }

    #[async_trait]
    impl Sink for Picky {
        fn encode(&self, _record: &Record) -> Result<Message, SinkError> {
            Err(SinkError::Delivery("not used".into()))
        }
        async fn deliver_messages(&self, messages: &[Message]) -> DeliveryReport {
            let mut report = DeliveryReport::default();
            for (i, m) in messages.iter().enumerate() {
                match m.payload.as_slice() {
                    b"poison" => report.rejected.push(Rejected {
                        index: i,
                        cause: RejectCause::TooLarge,
                        detail: "MessageSizeTooLarge".into(),
                    }),
                    b"flaky" => {
                        *self.flaky_attempts.lock() += 1;
                        report.failed.push(i);
                    }
                    _ => self.delivered.lock().push(m.key.clone()),
                }
            }
            report
        }
        async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn message(key: &str, payload: &str) -> Message {
        Message {
            key: key.into(),
            payload: payload.as_bytes().to_vec(),
            read_time_us: 0,
        }
    }

    /// A refused batch, a batch that always fails and one that half fails
    /// sit at the head of the spill: the batches behind them are replayed
    /// at once; the refused one is in the dead letters, the failing ones
    /// stay in the spill (the half-failed one reduced to its failed part).
    #[tokio::test]
    async fn no_batch_stalls_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SpillStore> =
            Arc::from(crate::spill::open(&SpillConfig::new(dir.path().join("spill"))).unwrap());
        let dead: Arc<dyn SpillStore> = Arc::from(
            crate::spill::open(&SpillConfig {
                role: StoreRole::DeadLetters,
                ..SpillConfig::new(dir.path().join("dead-letters"))
            })
            .unwrap(),
        );
        for batch in [
            vec![message("a", "ok")],
            vec![message("p", "poison")],
            vec![message("f", "flaky")],
            vec![message("b", "ok"), message("g", "flaky")],
            vec![message("c", "ok")],
            vec![message("d", "ok")],
        ] {
            let mut buf = Vec::new();
            payload::encode(&batch, &mut buf);
            store.append(&buf, batch.len() as u32).unwrap();
        }
        let sink = Arc::new(Picky::default());
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_replay(
            Replay {
                store: store.clone(),
                dead_letters: Some(dead.clone()),
                sink: sink.clone(),
                stats: stats.clone(),
            },
            100,
            stop.clone(),
        ));
        let start = std::time::Instant::now();
        while sink.delivered.lock().len() < 4 && start.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Rounds go on (100 batches/s); the failing ones wait out their
        // 5 s backoff instead of being retried at that pace.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.cancel();
        task.await.unwrap();
        assert_eq!(*sink.delivered.lock(), vec!["a", "b", "c", "d"]);
        let flaky = *sink.flaky_attempts.lock();
        assert_eq!(
            flaky, 2,
            "each failing message tried once within its backoff, not {flaky} times"
        );
        let s = stats.snapshot();
        assert_eq!((s.records_replayed, s.records_dead_lettered), (4, 1));
        let refused = deadletter::inventory(&*dead, StoreRole::DeadLetters).unwrap();
        assert_eq!(refused.devices.keys().collect::<Vec<_>>(), vec!["p"]);
        let left = deadletter::inventory(&*store, StoreRole::Spill).unwrap();
        assert_eq!((left.batches, left.records), (2, 2));
        assert_eq!(left.devices.keys().collect::<Vec<_>>(), vec!["f", "g"]);
    }
}

//! One schedule per device: reads on a fixed grid, phase-spread over the
//! interval from a hash of the device id, so 2,000 devices at 10 s become
//! 20 reads every 100 ms (`schedule.phase_slots`) instead of a burst every
//! 10 s; the reads of one phase share the runtime's wake-ups. A read that
//! overruns its interval makes the schedule skip (and count) the ticks it
//! missed; work is never queued up behind a slow device.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backfill::{self, Backfill};
use crate::breaker::{Admit, Breaker, BreakerState};
use crate::config::{BreakerConfig, Device};
use crate::device_status::{DeviceBoard, DeviceStatus};
use crate::internal_events::schedule::{
    AfterRead, BreakerTransitioned, DeviceTelemetry, ReadFailed, ReadSucceeded, ReadTiming,
    TickFired, TickSkipped,
};
use crate::last_reads::Watermarks;
use crate::metrics::{names, Stats};
use crate::protocol::{Delivery, DeviceReader};
use crate::record::{Record, Window};
use crate::worker::WorkerPool;

/// The offset of a device's first tick within its interval: a stable hash
/// of its id, so a restart (or another replica) keeps the same phase.
/// Devices on the same of `slots` phases fire in the same timer tick, so
/// their reads share the runtime's wake-ups (one timer wake, one epoll
/// return for their responses) instead of each paying its own: at 2,000
/// devices every 10 s and 100 slots, 20 reads every 100 ms rather than
/// one every 5 ms.
pub(crate) fn phase_offset(device_id: &str, interval: Duration, slots: u32) -> Duration {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let slots = u64::from(slots.max(1));
    let slot = u128::from(h % slots);
    let offset = interval.as_nanos() * slot / u128::from(slots);
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// A device's first deadline: the first point of its grid (`epoch` + its
/// phase + whole intervals) that is not before `now`. A device added to a
/// running pipeline starts on its own phase, not all at once.
pub(crate) fn first_deadline(
    epoch: Instant,
    phase: Duration,
    interval: Duration,
    now: Instant,
) -> Instant {
    let start = epoch + phase;
    if start >= now {
        return start;
    }
    next_deadline(start, interval, now).0
}

/// The next deadline after `deadline` that is not in the past, and how many
/// grid points were skipped to reach it.
pub(crate) fn next_deadline(deadline: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    let next = deadline + interval;
    if next > now {
        return (next, 0);
    }
    let behind = now.duration_since(next).as_nanos();
    let skipped = (behind / interval.as_nanos().max(1)) as u64 + 1;
    (
        next + interval * u32::try_from(skipped).unwrap_or(u32::MAX),
        skipped,
    )
}

/// Everything a device's schedule shares with the rest of the pipeline.
pub(crate) struct ScheduleContext {
    pub(crate) pool: WorkerPool,
    pub(crate) records: mpsc::Sender<Record>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) board: DeviceBoard,
    pub(crate) breaker: BreakerConfig,
    pub(crate) epoch: Instant,
    /// `schedule.phase_slots`.
    pub(crate) phase_slots: u32,
    /// Where a device's first `seq` starts in this run.
    pub(crate) seq_base: u64,
    /// The previous run's last successful reads (gaps across a restart).
    pub(crate) watermarks: Arc<Watermarks>,
    /// Backfill tasks (awaited at shutdown, like the schedules).
    pub(crate) backfills: TaskTracker,
}

/// Runs one device's schedule until `stop`; an in-flight read is
/// finished (and its record queued) before returning. Records take their
/// `seq` from `seq`, which outlives this schedule (see `reconcile`).
pub(crate) async fn run_device(
    device: Arc<Device>,
    mut reader: Box<dyn DeviceReader>,
    ctx: Arc<ScheduleContext>,
    status: Arc<Mutex<DeviceStatus>>,
    seq: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    if reader.delivery() == Delivery::Push {
        return crate::push::run_pushed(device, reader, ctx, status, seq, stop).await;
    }
    let history = reader.history();
    // The last success before this schedule (a restart, a re-add, a
    // changed device): the first success compares with it by time; later
    // ones see a gap only if a scheduled read produced nothing (a late
    // read is no gap). The status lock is let go before the watermarks'
    // is taken: no lock here is held while another is taken (see
    // `Watermarks::persist`).
    let known = status.lock().last_success;
    let mut last_ok = known.or_else(|| ctx.watermarks.last(&device.id));
    let mut first = true;
    let mut missed = false;
    let t = DeviceTelemetry::new(
        device.id.clone(),
        ctx.stats.clone(),
        status.clone(),
        ctx.watermarks.clone(),
    );
    let mut breaker = Breaker::new(ctx.breaker.clone());
    metrics::gauge!(names::BREAKERS, "state" => breaker.state().label()).increment(1.0);
    let interval = device.interval;
    let mut deadline = first_deadline(
        ctx.epoch,
        phase_offset(&device.id, interval, ctx.phase_slots),
        interval,
        Instant::now(),
    );
    let transition = |from: BreakerState, breaker: &Breaker| {
        BreakerTransitioned::of(&device.id, from, breaker).emit()
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let before = breaker.state();
        if breaker.admit(Instant::now()) == Admit::Skip {
            missed = true;
            TickSkipped::BreakerOpen { device: &t }.emit();
            deadline = next_deadline(deadline, interval, Instant::now()).0;
            continue;
        }
        transition(before, &breaker);
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = async {
                reader.prepare().await;
                ctx.pool.acquire().await
            } => p,
        };
        let Some(permit) = permit else { break };
        // Counted once the read will happen: a tick that the stop cut off
        // while it waited for its connection or a permit is not a read, so
        // ticks = reads ok + reads failed.
        TickFired { device: &t }.emit();
        let started = Instant::now();
        let lateness = started.duration_since(deadline).as_secs_f64();
        let read_time = chrono::Utc::now();
        let result = reader.read().await;
        drop(permit);
        let duration = started.elapsed().as_secs_f64();
        let before = breaker.state();
        match &result {
            Ok(_) => breaker.success(),
            Err(e) => breaker.failure(Instant::now(), e.cost()),
        };
        let after = AfterRead {
            breaker: breaker.state(),
            consecutive_failures: breaker.consecutive_failures(),
            session: reader.session_state(),
            timing: Some(ReadTiming { lateness, duration }),
        };
        let record = match result {
            Ok(samples) => {
                let window = match last_ok {
                    Some(l) if first => backfill::gap(l, read_time, interval),
                    Some(from) if missed => Some(Window {
                        from,
                        to: read_time,
                    }),
                    _ => None,
                };
                (first, missed) = (false, false);
                if let Some(window) = window {
                    backfill::gap_detected(&device.id, &status, window);
                    if let (Some(history), false) = (&history, stop.is_cancelled()) {
                        ctx.backfills.spawn(backfill::run_backfill(
                            Backfill {
                                device: device.id.clone(),
                                history: history.clone(),
                                window,
                                seq: seq.clone(),
                                records: ctx.records.clone(),
                                status: status.clone(),
                            },
                            stop.clone(),
                        ));
                    }
                }
                last_ok = Some(read_time);
                ReadSucceeded {
                    device: &t,
                    samples: &samples,
                    read_time,
                    after,
                }
                .emit();
                Some(Record {
                    device_id: device.id.clone(),
                    seq: crate::reconcile::next_seq(&seq),
                    read_time,
                    samples,
                    part: None,
                    origin: crate::record::Origin::Read,
                })
            }
            Err(error) => {
                missed = true;
                ReadFailed {
                    device: &t,
                    error: &error,
                    after,
                }
                .emit();
                None
            }
        };
        transition(before, &breaker);
        if let Some(record) = record {
            if ctx.records.send(record).await.is_err() {
                tracing::error!(device = %device.id, "record queue closed; stopping schedule");
                break;
            }
        }
        let (next, skipped) = next_deadline(deadline, interval, Instant::now());
        if skipped > 0 {
            missed = true;
            TickSkipped::Overrun {
                device: &t,
                count: skipped,
            }
            .emit();
        }
        deadline = next;
    }
    metrics::gauge!(names::BREAKERS, "state" => breaker.state().label()).decrement(1.0);
    reader.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_added_later_starts_on_its_own_grid_point() {
        let epoch = Instant::now();
        let i = Duration::from_secs(10);
        let phase = Duration::from_secs(3);
        assert_eq!(first_deadline(epoch, phase, i, epoch), epoch + phase);
        // Added 25 s into the run: the grid is 3, 13, 23, 33 s: the next
        // point is 33 s, not "now" (which would bunch added devices).
        let now = epoch + Duration::from_secs(25);
        assert_eq!(
            first_deadline(epoch, phase, i, now),
            epoch + Duration::from_secs(33)
        );
    }

    #[test]
    fn phases_are_stable_and_spread() {
        let i = Duration::from_secs(10);
        assert_eq!(phase_offset("dev-1", i, 100), phase_offset("dev-1", i, 100));
        let mut buckets = [0u32; 10];
        let mut phases = std::collections::HashSet::new();
        for n in 0..2000 {
            let p = phase_offset(&format!("dev-{n:05}"), i, 100);
            // On one of the 100 slots: a whole multiple of 100 ms.
            assert_eq!(p.as_nanos() % 100_000_000, 0, "{p:?}");
            phases.insert(p);
            assert!(p < i);
            buckets[(p.as_secs()) as usize] += 1;
        }
        // 200 expected per second-bucket; a decent hash stays well within 2x.
        assert!(
            buckets.iter().all(|&b| (100..300).contains(&b)),
            "{buckets:?}"
        );
        // Every slot used; one slot: every device on the interval's start.
        assert_eq!(phases.len(), 100);
        assert_eq!(phase_offset("dev-7", i, 1), Duration::ZERO);
        // Slots finer than a nanosecond stay inside the interval.
        assert!(phase_offset("dev-7", Duration::from_nanos(3), u32::MAX) < Duration::from_nanos(3));
    }

    #[tokio::test(start_paused = true)]
    async fn missed_ticks_are_skipped_not_queued() {
        let start = Instant::now();
        let i = Duration::from_secs(1);
        // On time: the next grid point.
        assert_eq!(
            next_deadline(start, i, start + Duration::from_millis(10)),
            (start + i, 0)
        );
        // A read that took 3.5 intervals: skip 3 grid points, land on the next future one.
        let (next, skipped) = next_deadline(start, i, start + Duration::from_millis(3500));
        assert_eq!(skipped, 3);
        assert_eq!(next, start + Duration::from_secs(4));
    }
}

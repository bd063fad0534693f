//! One schedule per device: reads on a fixed grid, phase-spread over the
//! interval from a hash of the device id, so 2,000 devices at 10 s become
//! a steady 200 reads/s instead of a burst every 10 s. A read that overruns
//! its interval makes the schedule skip (and count) the ticks it missed;
//! work is never queued up behind a slow device.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admit, Breaker, BreakerState};
use crate::config::{BreakerConfig, Device};
use crate::device_status::DeviceBoard;
use crate::metrics::{names, Stats};
use crate::protocol::DeviceReader;
use crate::record::{Quality, Record};
use crate::worker::WorkerPool;

/// The offset of a device's first tick within its interval: a stable hash
/// of its id, so a restart (or another replica) keeps the same phase.
pub(crate) fn phase_offset(device_id: &str, interval: Duration) -> Duration {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let nanos = interval.as_nanos().max(1);
    Duration::from_nanos((u128::from(h) % nanos) as u64)
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
    pub(crate) seq_base: u64,
    pub(crate) stop: CancellationToken,
}

/// Metric handles registered once per device (hot path: no lookups).
struct DeviceMetrics {
    ok: Counter,
    ticks: Counter,
    skipped: Counter,
    skipped_open: Counter,
    lateness: Histogram,
    duration: Histogram,
    good: Counter,
    uncertain: Counter,
    bad: Counter,
}

impl DeviceMetrics {
    fn new() -> Self {
        Self {
            ok: metrics::counter!(names::READS, "result" => "ok"),
            ticks: metrics::counter!(names::TICKS),
            skipped: metrics::counter!(names::TICKS_SKIPPED, "reason" => "overrun"),
            skipped_open: metrics::counter!(names::TICKS_SKIPPED, "reason" => "breaker_open"),
            lateness: metrics::histogram!(names::SCHEDULE_LATENESS),
            duration: metrics::histogram!(names::READ_DURATION),
            good: metrics::counter!(names::SAMPLES, "quality" => "good"),
            uncertain: metrics::counter!(names::SAMPLES, "quality" => "uncertain"),
            bad: metrics::counter!(names::SAMPLES, "quality" => "bad"),
        }
    }
}

/// Moves the breaker gauges and logs a transition.
fn breaker_transition(device: &str, from: BreakerState, to: BreakerState, failures: u32) {
    if from == to {
        return;
    }
    metrics::gauge!(names::BREAKERS, "state" => from.label()).decrement(1.0);
    metrics::gauge!(names::BREAKERS, "state" => to.label()).increment(1.0);
    metrics::counter!(names::BREAKER_TRANSITIONS, "to" => to.label()).increment(1);
    match to {
        BreakerState::Open => tracing::warn!(
            device,
            consecutive_failures = failures,
            "circuit breaker opened"
        ),
        BreakerState::HalfOpen => tracing::debug!(device, "circuit breaker half-open: probing"),
        BreakerState::Closed => {
            tracing::info!(device, "circuit breaker closed: device reads again")
        }
    }
}

/// Runs one device's schedule until `ctx.stop`; an in-flight read is
/// finished (and its record queued) before returning.
pub(crate) async fn run_device(
    device: Device,
    mut reader: Box<dyn DeviceReader>,
    ctx: Arc<ScheduleContext>,
) {
    let m = DeviceMetrics::new();
    let status = ctx.board.register(device.id.clone(), &device.endpoint);
    let mut breaker = Breaker::new(ctx.breaker.clone());
    metrics::gauge!(names::BREAKERS, "state" => breaker.state().label()).increment(1.0);
    let interval = device.interval;
    let mut deadline = ctx.epoch + phase_offset(&device.id, interval);
    let mut seq = ctx.seq_base;
    loop {
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let before = breaker.state();
        if breaker.admit(Instant::now()) == Admit::Skip {
            m.skipped_open.increment(1);
            Stats::add(&ctx.stats.ticks_breaker_open, 1);
            if let Ok(mut st) = status.lock() {
                st.ticks_skipped_open += 1;
            }
            deadline = next_deadline(deadline, interval, Instant::now()).0;
            continue;
        }
        breaker_transition(
            &device.id,
            before,
            breaker.state(),
            breaker.consecutive_failures(),
        );
        m.ticks.increment(1);
        Stats::add(&ctx.stats.ticks, 1);
        let permit = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break,
            p = async {
                reader.prepare().await;
                ctx.pool.acquire().await
            } => p,
        };
        let Some(permit) = permit else { break };
        let started = Instant::now();
        let lateness = started.duration_since(deadline).as_secs_f64();
        m.lateness.record(lateness);
        let read_time = chrono::Utc::now();
        let result = reader.read().await;
        drop(permit);
        m.duration.record(started.elapsed().as_secs_f64());
        let before = breaker.state();
        let outcome = match result {
            Ok(samples) => {
                m.ok.increment(1);
                Stats::add(&ctx.stats.reads_ok, 1);
                Stats::add(&ctx.stats.samples, samples.len() as u64);
                count_quality(&m, &samples);
                breaker.success();
                Ok(Record {
                    device_id: device.id.clone(),
                    seq,
                    read_time,
                    samples,
                })
            }
            Err(e) => {
                metrics::counter!(names::READS, "result" => e.label()).increment(1);
                Stats::add(&ctx.stats.reads_failed, 1);
                if breaker.consecutive_failures() == 0 {
                    tracing::warn!(device = %device.id, error = %e, "read failed");
                } else {
                    tracing::debug!(device = %device.id, error = %e, "read failed");
                }
                breaker.failure(Instant::now());
                Err(e)
            }
        };
        breaker_transition(
            &device.id,
            before,
            breaker.state(),
            breaker.consecutive_failures(),
        );
        if let Ok(mut st) = status.lock() {
            st.lateness.record(lateness);
            st.breaker = breaker.state().label();
            st.session = reader.session_state();
            st.consecutive_failures = breaker.consecutive_failures();
            match &outcome {
                Ok(_) => {
                    st.reads_ok += 1;
                    st.last_success = Some(read_time);
                }
                Err(e) => {
                    st.reads_failed += 1;
                    st.last_error_at = Some(chrono::Utc::now());
                    st.last_error = Some(e.to_string());
                }
            }
        }
        if let Ok(record) = outcome {
            seq += 1;
            if ctx.records.send(record).await.is_err() {
                tracing::error!(device = %device.id, "record queue closed; stopping schedule");
                break;
            }
        }
        let (next, skipped) = next_deadline(deadline, interval, Instant::now());
        if skipped > 0 {
            m.skipped.increment(skipped);
            Stats::add(&ctx.stats.ticks_skipped, skipped);
        }
        deadline = next;
    }
    metrics::gauge!(names::BREAKERS, "state" => breaker.state().label()).decrement(1.0);
    reader.close().await;
}

fn count_quality(m: &DeviceMetrics, samples: &[crate::record::Sample]) {
    let (mut g, mut u, mut b) = (0u64, 0u64, 0u64);
    for s in samples {
        match s.status.quality() {
            Quality::Good => g += 1,
            Quality::Uncertain => u += 1,
            Quality::Bad => b += 1,
        }
    }
    m.good.increment(g);
    m.uncertain.increment(u);
    m.bad.increment(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_stable_and_spread() {
        let i = Duration::from_secs(10);
        assert_eq!(phase_offset("dev-1", i), phase_offset("dev-1", i));
        let mut buckets = [0u32; 10];
        for n in 0..2000 {
            let p = phase_offset(&format!("dev-{n:05}"), i);
            assert!(p < i);
            buckets[(p.as_secs()) as usize] += 1;
        }
        // 200 expected per second-bucket; a decent hash stays well within 2x.
        assert!(
            buckets.iter().all(|&b| (100..300).contains(&b)),
            "{buckets:?}"
        );
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

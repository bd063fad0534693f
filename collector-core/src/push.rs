//! One loop per pushed device (an OPC UA subscription, for instance): the
//! adapter sets up what it needs and hands over batches of changes; each
//! batch becomes one record with the device's next `seq`. The breaker
//! gates the set-up exactly as it gates reads: a device whose subscription
//! keeps failing is probed on its interval, not retried in a loop.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admit, Breaker, BreakerState};
use crate::config::Device;
use crate::device_status::DeviceStatus;
use crate::internal_events::schedule::{
    AfterRead, BreakerTransitioned, DeviceTelemetry, ReadFailed, ReadSucceeded, TickSkipped,
};
use crate::metrics::names;
use crate::protocol::{Delivery, DeviceReader};
use crate::record::{Origin, Record};
use crate::scheduler::ScheduleContext;

/// Runs one pushed device until `stop`; a batch already received is
/// queued before returning. Records take their `seq` from `seq`, as polled
/// ones do.
pub(crate) async fn run_pushed(
    device: Arc<Device>,
    mut reader: Box<dyn DeviceReader>,
    ctx: Arc<ScheduleContext>,
    status: Arc<Mutex<DeviceStatus>>,
    seq: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    status.lock().delivery = Delivery::Push;
    let t = DeviceTelemetry::new(
        device.id.clone(),
        ctx.stats.clone(),
        status,
        ctx.watermarks.clone(),
    );
    let mut breaker = Breaker::new(ctx.breaker.clone());
    metrics::gauge!(names::BREAKERS, "state" => breaker.state().label()).increment(1.0);
    let transition = |from: BreakerState, breaker: &Breaker| {
        BreakerTransitioned::of(&device.id, from, breaker).emit()
    };
    // After a failure the next attempt waits one interval (the breaker may
    // then skip it): a refused subscription is not retried in a loop.
    let mut not_before: Option<Instant> = None;
    loop {
        if let Some(at) = not_before.take() {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let before = breaker.state();
        if breaker.admit(Instant::now()) == Admit::Skip {
            TickSkipped::BreakerOpen { device: &t }.emit();
            not_before = Some(Instant::now() + device.interval);
            continue;
        }
        transition(before, &breaker);
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = async {
                reader.prepare().await;
                reader.changes().await
            } => r,
        };
        let before = breaker.state();
        let received = chrono::Utc::now();
        match &result {
            Ok(_) => breaker.success(),
            Err(e) => breaker.failure(Instant::now(), e.cost()),
        };
        let after = AfterRead {
            breaker: breaker.state(),
            consecutive_failures: breaker.consecutive_failures(),
            session: reader.session_state(),
            timing: None,
        };
        let record = match result {
            Ok(samples) => {
                ReadSucceeded {
                    device: &t,
                    samples: &samples,
                    read_time: received,
                    after,
                }
                .emit();
                Some(
                    Record::new(
                        device.id.clone(),
                        crate::reconcile::next_seq(&seq),
                        received,
                        samples,
                    )
                    .with_origin(Origin::DataChange),
                )
            }
            Err(error) => {
                ReadFailed {
                    device: &t,
                    error: &error,
                    after,
                }
                .emit();
                not_before = Some(Instant::now() + device.interval);
                None
            }
        };
        transition(before, &breaker);
        if let Some(record) = record {
            if ctx.records.send(record).await.is_err() {
                tracing::error!(device = %device.id, "record queue closed; stopping");
                break;
            }
        }
    }
    metrics::gauge!(names::BREAKERS, "state" => breaker.state().label()).decrement(1.0);
    reader.close().await;
}

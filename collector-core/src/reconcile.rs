//! Applies each version of the device set (from a [`DeviceSource`]) to the
//! running pipeline: one schedule task per device, each with its own
//! cancellation child of the pipeline's stop token, so a device starts,
//! stops or restarts while the others run on untouched.
//!
//! - added: attached to the protocol and scheduled on its own phase;
//! - removed: stopped after its in-flight read (its record is still
//!   delivered), then its reader is closed;
//! - changed (any setting): the old schedule is stopped and the new one
//!   starts when the old has finished, so the device is never read twice
//!   at once; the new reader is attached first, so a shared session stays
//!   open across the change;
//! - unchanged: nothing happens (same reader, session, breaker and `seq`).
//!
//! A device's `seq` counter outlives its schedule: a restarted or re-added
//! device continues where it stopped, so `(device_id, seq)` never repeats.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Device;
use crate::metrics::{names, Stats};
use crate::protocol::{DeviceReader, Protocol};
use crate::scheduler::{run_device, ScheduleContext};
use crate::source::DeviceSource;

/// A device's running schedule.
struct Running {
    /// Shared with the schedule task: one copy of the device per device.
    device: Arc<Device>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What one reconciliation did (for the log and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) changed: usize,
    pub(crate) rejected: usize,
}

/// Owns the device schedules.
pub(crate) struct Reconciler {
    protocol: Arc<dyn Protocol>,
    ctx: Arc<ScheduleContext>,
    tracker: TaskTracker,
    /// Parent of every device's stop token: the pipeline's "stop scheduling".
    stop: CancellationToken,
    running: HashMap<Arc<str>, Running>,
    /// Schedules stopped but maybe not finished yet; a re-added device waits
    /// for its old one.
    retiring: HashMap<Arc<str>, JoinHandle<()>>,
    /// Per-device `seq` counters, kept across restarts and removals.
    seqs: HashMap<Arc<str>, Arc<AtomicU64>>,
}

impl Reconciler {
    pub(crate) fn new(
        protocol: Arc<dyn Protocol>,
        ctx: Arc<ScheduleContext>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            protocol,
            ctx,
            tracker,
            stop,
            running: HashMap::new(),
            retiring: HashMap::new(),
            seqs: HashMap::new(),
        }
    }

    /// Devices scheduled now.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    /// Makes `desired` the running set.
    pub(crate) fn apply(&mut self, desired: Vec<Device>) -> Applied {
        let mut applied = Applied::default();
        // In the order given (the `/devices` order), first of a duplicate id.
        let mut wanted: HashSet<Arc<str>> = HashSet::with_capacity(desired.len());
        let mut ordered = Vec::with_capacity(desired.len());
        for d in desired {
            if !wanted.insert(d.id.clone()) {
                tracing::error!(device = %d.id, "device id listed twice in the device set; keeping the first");
                applied.rejected += 1;
                continue;
            }
            ordered.push(d);
        }
        self.retiring.retain(|_, task| !task.is_finished());

        let gone: Vec<Arc<str>> = self
            .running
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(r) = self.running.remove(&id) {
                r.stop.cancel();
                self.ctx.board.remove(&id);
                self.retiring.insert(id.clone(), r.task);
                tracing::info!(device = %id, "device removed: stopping after its in-flight read");
                applied.removed += 1;
            }
        }

        for device in ordered {
            let id = device.id.clone();
            match self.running.get(&id) {
                Some(r) if *r.device == device => {}
                Some(_) => {
                    // Attach the new version first: if the adapter rejects
                    // it, the running version keeps reading.
                    let Some(reader) = self.attach(&device) else {
                        tracing::error!(device = %id, "changed device rejected; the running version keeps its schedule");
                        applied.rejected += 1;
                        continue;
                    };
                    if let Some(old) = self.running.remove(&id) {
                        old.stop.cancel();
                        self.spawn(device, reader, Some(old.task));
                        tracing::info!(device = %id, "device changed: restarting its schedule");
                        applied.changed += 1;
                    }
                }
                None => match self.attach(&device) {
                    Some(reader) => {
                        let previous = self.retiring.remove(&id);
                        self.spawn(device, reader, previous);
                        applied.added += 1;
                    }
                    None => applied.rejected += 1,
                },
            }
        }
        Stats::set(&self.ctx.stats.devices, self.running.len() as u64);
        metrics::gauge!(names::DEVICES).set(self.running.len() as f64);
        for (change, n) in [
            ("added", applied.added),
            ("removed", applied.removed),
            ("changed", applied.changed),
            ("rejected", applied.rejected),
        ] {
            if n > 0 {
                metrics::counter!(names::DEVICE_CHANGES, "change" => change).increment(n as u64);
            }
        }
        applied
    }

    /// The adapter's reader for `device`, or `None` (logged) if it
    /// rejects it.
    fn attach(&self, device: &Device) -> Option<Box<dyn DeviceReader>> {
        match self.protocol.attach(device) {
            Ok(reader) => Some(reader),
            Err(e) => {
                tracing::error!(device = %device.id, error = %e, "device rejected by the protocol adapter; not scheduled");
                None
            }
        }
    }

    /// Schedules `device` with `reader`, after `previous` (its old
    /// schedule) has finished.
    fn spawn(
        &mut self,
        device: Device,
        reader: Box<dyn DeviceReader>,
        previous: Option<JoinHandle<()>>,
    ) {
        let seq = self
            .seqs
            .entry(device.id.clone())
            .or_insert_with(|| Arc::new(AtomicU64::new(self.ctx.seq_base)))
            .clone();
        let stop = self.stop.child_token();
        let ctx = self.ctx.clone();
        // Registered here, not in the task, so `/devices` lists devices in
        // the order of the set.
        let status = ctx.board.register(device.id.clone(), &device.endpoint);
        let device = Arc::new(device);
        let (d, s) = (device.clone(), stop.clone());
        let task = self.tracker.spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            if !s.is_cancelled() {
                run_device(d, reader, ctx, status, seq, s).await;
            } else {
                let mut reader = reader;
                reader.close().await;
            }
        });
        self.running
            .insert(device.id.clone(), Running { device, stop, task });
    }

    /// Applies every new version from `source` until the pipeline stops.
    pub(crate) async fn follow(mut self, mut source: Box<dyn DeviceSource>) {
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                next = source.next() => match next {
                    Some(set) => {
                        let a = self.apply(set);
                        tracing::info!(
                            devices = self.len(),
                            added = a.added,
                            removed = a.removed,
                            changed = a.changed,
                            rejected = a.rejected,
                            "device set changed"
                        );
                    }
                    None => {
                        self.stop.cancelled().await;
                        break;
                    }
                },
            }
        }
    }
}

/// The seq counter's next value, taken by a schedule for its next record.
pub(crate) fn next_seq(seq: &AtomicU64) -> u64 {
    seq.fetch_add(1, Ordering::Relaxed)
}

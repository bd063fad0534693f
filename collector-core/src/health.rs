//! Liveness, readiness and startup, as latches the HTTP server reads.
//!
//! Live: the process answers. Started: the device list is loaded and every
//! device's schedule is running. Ready: started, not stopping, and data has
//! a safe place to go: Kafka answered its last probe, or a spill is
//! configured. A replica that is spilling through a Kafka outage is doing
//! its job; failing its readiness would only make Kubernetes restart or
//! reroute a pod that loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sink::{Reachability, Sink};

/// A cheap, cloneable view of the collector's health. It exists before the
/// collector is built ([`CollectorBuilder::health`](crate::CollectorBuilder::health)),
/// so an HTTP server can answer `/healthz` during a long spill recovery.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    started: AtomicBool,
    stopping: AtomicBool,
    /// The sink and whether a spill backs it, once the collector is built.
    attached: OnceLock<(Arc<dyn Sink>, bool)>,
}

impl Health {
    /// Latches with nothing started and no sink yet (not ready).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Called once by `build`, when the sink and the spill exist.
    pub(crate) fn attach(&self, sink: Arc<dyn Sink>, spill: bool) {
        let _ = self.inner.attached.set((sink, spill));
    }

    /// Device list loaded and schedules started.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Started, not shutting down, and the sink is reachable or the spill
    /// takes what it cannot.
    pub fn is_ready(&self) -> bool {
        self.is_started()
            && !self.inner.stopping.load(Ordering::Relaxed)
            && (self.has_spill() || self.sink_reachability().is_up())
    }

    /// Whether a spill is configured.
    pub fn has_spill(&self) -> bool {
        self.inner.attached.get().is_some_and(|(_, spill)| *spill)
    }

    /// The sink's reachability (for `/readyz` detail); `Unknown` before
    /// the collector is built.
    pub fn sink_reachability(&self) -> Reachability {
        self.inner
            .attached
            .get()
            .map_or(Reachability::Unknown, |(sink, _)| sink.reachability())
    }

    pub(crate) fn set_started(&self) {
        self.inner.started.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }
}

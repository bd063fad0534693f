//! Liveness, readiness and startup, as latches the HTTP server reads.
//!
//! Live: the process answers. Started: the device list is loaded and every
//! device's schedule is running. Ready: started, not stopping, and data has
//! a safe place to go: Kafka answered its last probe, or a spill is
//! configured. A replica that is spilling through a Kafka outage is doing
//! its job; failing its readiness would only make Kubernetes restart or
//! reroute a pod that loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::sink::Sink;

/// A cheap, cloneable view of the collector's health.
#[derive(Clone)]
pub struct Health {
    started: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    sink: Arc<dyn Sink>,
    spill: bool,
}

impl Health {
    pub(crate) fn new(sink: Arc<dyn Sink>, spill: bool) -> Self {
        Self {
            started: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            sink,
            spill,
        }
    }

    /// Device list loaded and schedules started.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Started, not shutting down, and the sink is reachable or the spill
    /// takes what it cannot.
    pub fn is_ready(&self) -> bool {
        self.is_started()
            && !self.stopping.load(Ordering::Relaxed)
            && (self.spill || self.sink.is_healthy())
    }

    /// Whether a spill is configured.
    pub fn has_spill(&self) -> bool {
        self.spill
    }

    /// Whether the sink reports itself healthy (for `/readyz` detail).
    pub fn sink_healthy(&self) -> bool {
        self.sink.is_healthy()
    }

    pub(crate) fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

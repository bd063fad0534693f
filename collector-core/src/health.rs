//! Liveness, readiness and startup, as latches the HTTP server reads.
//!
//! Live: the process answers. Started: the device list is loaded and every
//! device's schedule is running. Ready: started, not stopping, and the sink
//! can take data (Kafka answered its last probe).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::sink::Sink;

/// A cheap, cloneable view of the collector's health.
#[derive(Clone)]
pub struct Health {
    started: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    sink: Arc<dyn Sink>,
}

impl Health {
    pub(crate) fn new(sink: Arc<dyn Sink>) -> Self {
        Self {
            started: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            sink,
        }
    }

    /// Device list loaded and schedules started.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Started, not shutting down, and the sink is reachable.
    pub fn is_ready(&self) -> bool {
        self.is_started() && !self.stopping.load(Ordering::Relaxed) && self.sink.is_healthy()
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

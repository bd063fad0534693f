//! What each device is doing, for the operator's `/devices` view: breaker
//! and session state, last success, last error, failure streak. Metrics
//! carry no device labels (cardinality); this is where a shard is debugged
//! device by device.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::breaker::BreakerState;
use crate::histogram::LatencyHistogram;
use crate::protocol::{Delivery, SessionState};

/// One device's state, as served by `/devices`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    /// Device id.
    pub id: Arc<str>,
    /// Endpoint URL.
    pub endpoint: String,
    /// The device's circuit breaker (`closed`, `open`, `half_open`).
    pub breaker: BreakerState,
    /// The session as the protocol adapter sees it.
    pub session: SessionState,
    /// How the device's data arrives (`poll` or `push`).
    pub delivery: Delivery,
    /// When the last successful read started (for a pushed device: when
    /// its last changes arrived).
    pub last_success: Option<DateTime<Utc>>,
    /// Seconds since `last_success` when this view was taken: how stale
    /// the device's data is (a subscription that stopped delivering shows
    /// here first).
    pub last_data_age_seconds: Option<f64>,
    /// When the last read failed, and why.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The last error (no secrets: errors never carry credentials).
    pub last_error: Option<String>,
    /// Failed reads since the last success.
    pub consecutive_failures: u32,
    /// Successful reads since start.
    pub reads_ok: u64,
    /// Failed reads since start.
    pub reads_failed: u64,
    /// Ticks skipped because the breaker was open.
    pub ticks_skipped_open: u64,
    /// This device's schedule lateness (scheduled time to read start).
    pub lateness: LatencyHistogram,
    /// Gaps in its reads and their backfill.
    pub backfill: BackfillStatus,
}

/// A device's gaps and what was filled (see `docs/backfill.md`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillStatus {
    /// Gaps detected since start.
    pub gaps: u64,
    /// Values delivered from the server's history.
    pub values: u64,
    /// Gaps (or parts) that stay gaps.
    pub unrecoverable: u64,
    /// The last of them: its window and why.
    pub last_unrecoverable: Option<String>,
}

/// Every scheduled device's status; cheap to clone and read.
#[derive(Debug, Clone, Default)]
pub struct DeviceBoard {
    devices: Arc<RwLock<Vec<Arc<Mutex<DeviceStatus>>>>>,
}

impl DeviceBoard {
    /// The entry of device `id`: the existing one when the device is
    /// restarted (its history stays), else a new one.
    pub(crate) fn register(&self, id: Arc<str>, endpoint: &str) -> Arc<Mutex<DeviceStatus>> {
        let mut all = self.devices.write();
        if let Some(existing) = all.iter().find(|e| e.lock().id == id) {
            existing.lock().endpoint = endpoint.to_string();
            return existing.clone();
        }
        let entry = Arc::new(Mutex::new(DeviceStatus {
            id,
            endpoint: endpoint.to_string(),
            breaker: BreakerState::Closed,
            session: SessionState::Unknown,
            delivery: Delivery::Poll,
            last_success: None,
            last_data_age_seconds: None,
            last_error_at: None,
            last_error: None,
            consecutive_failures: 0,
            reads_ok: 0,
            reads_failed: 0,
            ticks_skipped_open: 0,
            lateness: LatencyHistogram::default(),
            backfill: BackfillStatus::default(),
        }));
        all.push(entry.clone());
        entry
    }

    /// Every device's last successful read (for `state_dir/last_reads.json`).
    pub(crate) fn last_successes(&self) -> Vec<(Arc<str>, DateTime<Utc>)> {
        self.devices
            .read()
            .iter()
            .filter_map(|e| {
                let s = e.lock();
                s.last_success.map(|at| (s.id.clone(), at))
            })
            .collect()
    }

    /// Forgets a device that was removed from the set.
    pub(crate) fn remove(&self, id: &str) {
        self.devices.write().retain(|e| &*e.lock().id != id);
    }

    /// A page of devices (in configuration order) matching `filter`,
    /// and how many match in total.
    pub fn page(
        &self,
        filter: impl Fn(&DeviceStatus) -> bool,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<DeviceStatus>) {
        let all = self.devices.read();
        let now = Utc::now();
        let mut total = 0;
        let mut page = Vec::new();
        for entry in all.iter() {
            let s = entry.lock();
            if filter(&s) {
                if total >= offset && page.len() < limit {
                    let mut view = s.clone();
                    view.last_data_age_seconds = view
                        .last_success
                        .map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
                    page.push(view);
                }
                total += 1;
            }
        }
        (total, page)
    }
}

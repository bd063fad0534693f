//! What each device is doing, for the operator's `/devices` view: breaker
//! and session state, last success, last error, failure streak. Metrics
//! carry no device labels (cardinality); this is where a shard is debugged
//! device by device.

use std::collections::{BTreeMap, HashMap};
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
    devices: Arc<RwLock<Entries>>,
}

/// The board's devices in registration (configuration) order, and where
/// each id is: registering or removing one of 20,000 devices looks it up
/// instead of scanning (and locking) every entry before it.
#[derive(Debug, Default)]
struct Entries {
    /// Registration number -> device, so iteration keeps the order.
    list: BTreeMap<u64, (Arc<str>, Arc<Mutex<DeviceStatus>>)>,
    /// Device id -> its registration number.
    index: HashMap<Arc<str>, u64>,
    /// The next registration number.
    next: u64,
}

impl DeviceBoard {
    /// The entry of device `id`: the existing one when the device is
    /// restarted (its history stays), else a new one.
    pub(crate) fn register(&self, id: Arc<str>, endpoint: &str) -> Arc<Mutex<DeviceStatus>> {
        let mut all = self.devices.write();
        if let Some((_, existing)) = all.index.get(&id).and_then(|n| all.list.get(n)) {
            let existing = existing.clone();
            existing.lock().endpoint = endpoint.to_string();
            return existing;
        }
        let entry = Arc::new(Mutex::new(DeviceStatus {
            id: id.clone(),
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
        let n = all.next;
        all.next += 1;
        all.list.insert(n, (id.clone(), entry.clone()));
        all.index.insert(id, n);
        entry
    }

    /// Forgets a device that was removed from the set.
    pub(crate) fn remove(&self, id: &str) {
        let mut all = self.devices.write();
        if let Some(n) = all.index.remove(id) {
            all.list.remove(&n);
        }
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
        for (_, entry) in all.list.values() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(board: &DeviceBoard) -> Vec<String> {
        let (_, page) = board.page(|_| true, 0, usize::MAX);
        page.iter().map(|s| s.id.to_string()).collect()
    }

    #[test]
    fn devices_keep_their_entry_and_order_across_removals() {
        let board = DeviceBoard::default();
        let a = board.register(Arc::from("dev-a"), "opc.tcp://a:1");
        board.register(Arc::from("dev-b"), "opc.tcp://b:1");
        let c = board.register(Arc::from("dev-c"), "opc.tcp://c:1");
        a.lock().reads_ok = 7;
        // Registered again (a restarted schedule): the same entry, its
        // history kept, its endpoint the new one.
        let again = board.register(Arc::from("dev-a"), "opc.tcp://a:2");
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.lock().reads_ok, 7);
        assert_eq!(again.lock().endpoint, "opc.tcp://a:2");
        // A removal before the others: they keep their entries and order.
        board.remove("dev-a");
        board.remove("dev-unknown");
        assert_eq!(ids(&board), ["dev-b", "dev-c"]);
        assert!(Arc::ptr_eq(
            &c,
            &board.register(Arc::from("dev-c"), "opc.tcp://c:1")
        ));
        // Added again after its removal: a fresh entry, at the end.
        let fresh = board.register(Arc::from("dev-a"), "opc.tcp://a:3");
        assert!(!Arc::ptr_eq(&a, &fresh));
        assert_eq!(fresh.lock().reads_ok, 0);
        assert_eq!(ids(&board), ["dev-b", "dev-c", "dev-a"]);
        board.remove("dev-b");
        board.remove("dev-a");
        assert_eq!(ids(&board), ["dev-c"]);
        assert!(Arc::ptr_eq(
            &c,
            &board.register(Arc::from("dev-c"), "opc.tcp://c:1")
        ));
    }
}

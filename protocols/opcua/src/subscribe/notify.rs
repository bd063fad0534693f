//! What runs inside the session's event loop for each publish response of
//! one device's subscription: it must never block there, so it converts
//! the data changes into samples and hands them over with `try_send` on a
//! bounded queue, and it notes that the subscription was heard from (a
//! keep-alive counts) for the watchdog. When the queue is full the samples
//! wait in a bounded overflow (they go out with a later batch); only past
//! its bound are the oldest dropped, counted and logged once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use collector_core::metrics::names;
use collector_core::record::Sample;
use metrics::Counter;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::types::{
    match_extension_object_owned, DataChangeNotification, NotificationMessage,
    StatusChangeNotification,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::convert;

/// Publish responses a device may have waiting before new ones are
/// dropped (and counted): ~64 publishing intervals of backlog.
pub(super) const QUEUE: usize = 64;

/// Samples held at most in a device's overflow.
const OVERFLOW: usize = 100_000;

/// Where samples wait while the queue is full.
#[derive(Default)]
pub(super) struct Overflow {
    samples: parking_lot::Mutex<std::collections::VecDeque<Sample>>,
}

impl Overflow {
    /// Everything waiting, oldest first.
    pub(super) fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.samples.lock()).into()
    }

    /// Adds `samples`; returns how many of the oldest had to go.
    fn push(&self, samples: Vec<Sample>) -> usize {
        let mut held = self.samples.lock();
        held.extend(samples);
        let excess = held.len().saturating_sub(OVERFLOW);
        held.drain(..excess);
        excess
    }
}

/// Shared between the callback and the device's subscriber.
pub(super) struct Heard {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last publish response (data or
    /// keep-alive) of this subscription.
    last_ms: AtomicU64,
    /// The status of a StatusChangeNotification (the server ended the
    /// subscription), 0 while none came.
    ended: AtomicU32,
}

impl Heard {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            ended: AtomicU32::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the subscription was last heard from (its creation counts).
    pub(super) fn last(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Marks the subscription heard from now.
    pub(super) fn reset(&self) {
        self.touch();
    }

    /// The status the server ended the subscription with, if it did.
    pub(super) fn ended(&self) -> Option<opcua::types::StatusCode> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            code => Some(opcua::types::StatusCode::from(code)),
        }
    }
}

/// The callback registered with the library for one subscription.
pub(super) struct Notifications {
    pub(super) device: Arc<str>,
    /// Node ids as configured; a monitored item's client handle is its
    /// index here plus one.
    pub(super) nodes: Arc<[Arc<str>]>,
    pub(super) tx: mpsc::Sender<Vec<Sample>>,
    pub(super) heard: Arc<Heard>,
    pub(super) overflow: Arc<Overflow>,
    pub(super) metrics: CallbackMetrics,
}

/// Metric handles registered once per subscription.
pub(super) struct CallbackMetrics {
    notifications: Counter,
    keepalives: Counter,
    overflows: Counter,
    /// Whether this subscription's first drop was logged.
    warned: bool,
}

impl CallbackMetrics {
    pub(super) fn new() -> Self {
        Self {
            notifications: metrics::counter!(names::SUBSCRIPTION_NOTIFICATIONS),
            keepalives: metrics::counter!(names::SUBSCRIPTION_KEEPALIVES),
            overflows: metrics::counter!(names::SUBSCRIPTION_QUEUE_OVERFLOWS),
            warned: false,
        }
    }
}

impl OnSubscriptionNotificationCore for Notifications {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        self.heard.touch();
        let data = match notification.notification_data {
            Some(d) if !d.is_empty() => d,
            _ => {
                self.metrics.keepalives.increment(1);
                return;
            }
        };
        let mut samples = Vec::new();
        for obj in data {
            match_extension_object_owned!(obj,
                v: DataChangeNotification => {
                    for item in v.monitored_items.into_iter().flatten() {
                        let index = (item.client_handle as usize).wrapping_sub(1);
                        match self.nodes.get(index) {
                            Some(node) => samples.push(convert::sample(node, item.value)),
                            None => tracing::debug!(device = %self.device, handle = item.client_handle, "data change for an unknown client handle"),
                        }
                    }
                },
                v: StatusChangeNotification => {
                    self.heard.ended.store(v.status.bits().max(1), Ordering::Relaxed);
                }
            )
        }
        if samples.is_empty() {
            return;
        }
        self.metrics.notifications.increment(1);
        if let Err(mpsc::error::TrySendError::Full(samples)) = self.tx.try_send(samples) {
            let dropped = self.overflow.push(samples);
            if dropped > 0 {
                self.metrics.overflows.increment(dropped as u64);
                if !self.metrics.warned {
                    self.metrics.warned = true;
                    tracing::warn!(device = %self.device, dropped, "subscription overflow full: the oldest samples were dropped (records are not taken fast enough); counted in collector_subscription_queue_overflows_total");
                }
            }
        }
    }
}

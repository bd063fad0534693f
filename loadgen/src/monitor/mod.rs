//! Monitored items of one device server: which items watch which node, and the sampler
//! task that hands their data changes to async-opcua's subscriptions (which queue,
//! filter and publish them).
//!
//! One task per device server wakes every [`MIN_TICK`] while the server has tag items
//! with a change rate (or the smallest sampling interval of its other items, if larger),
//! and sleeps while it has none:
//!
//! * with a change rate, a tag item gets **every step change** since the last one it got
//!   ([`steps::changes_between`]), each with the step's start as its source timestamp,
//!   so a subscription sees exactly the model's changes, at most one tick after they
//!   happen;
//! * otherwise (and for the namespace 0 variables) an item is sampled at its sampling
//!   interval and gets the value when it differs from the one it got last.
//!
//! Bad tags and attributes other than Value never change: they only get their initial
//! value. An item the server does not know (yet) is skipped without losing its backlog:
//! the server creates its items only after the node manager returned.

mod round;

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use opcua::types::{AttributeId, DataValue, DateTime, MonitoringMode, NodeId, Variant};
use opcua_server::{MonitoredItemHandle, SubscriptionCache};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    model,
    nodes::{DeviceSpace, Node, StatusSnapshot},
    stats::DeviceCounters,
    steps,
};

/// Shortest pause of the sampler between two rounds.
pub(crate) const MIN_TICK: Duration = Duration::from_millis(50);
/// Sampling interval of an item that samples at its subscription's publishing
/// interval (a negative sampling interval), which the node manager does not know.
const SUBSCRIPTION_INTERVAL: Duration = Duration::from_millis(100);

/// What the sampler reads values from.
pub(crate) struct Source {
    /// The device's address space (device index, step period, values).
    pub space: DeviceSpace,
    /// Live server status, for the namespace 0 variables.
    pub status: Box<dyn Fn() -> StatusSnapshot + Send + Sync>,
}

/// A monitored item the server is creating, as the node manager accepted it.
pub(crate) struct NewItem<'a> {
    /// Its handle.
    pub handle: MonitoredItemHandle,
    /// The node it monitors.
    pub node_id: &'a NodeId,
    /// The attribute it monitors.
    pub attribute: AttributeId,
    /// The node, resolved.
    pub node: Node,
    /// Sampling interval in ms, as revised (negative: the publishing interval).
    pub sampling_interval_ms: f64,
    /// Monitoring mode.
    pub mode: MonitoringMode,
    /// The value it is created with (a Read of the node at creation).
    pub initial: &'a DataValue,
}

/// One monitored item of a node that changes.
#[derive(Debug)]
struct Item {
    interval: Duration,
    disabled: bool,
    /// Step model: start of the last step the item got (its initial value's).
    last_step: i64,
    /// Sampled nodes: when the item was last sampled and the value it got last.
    last_sample: Instant,
    last_value: Option<Variant>,
    /// Since when the server's subscriptions do not list the (enabled) item.
    missing_since: Option<Instant>,
}

/// The items of one node (Value attribute).
#[derive(Debug)]
struct Watch {
    node: Node,
    items: HashMap<MonitoredItemHandle, Item>,
}

#[derive(Debug, Default)]
struct Items {
    /// Value items of nodes that can change, by node.
    watched: HashMap<NodeId, Watch>,
    /// Items that never change (bad tags, other attributes, the Objects folder).
    fixed: HashSet<MonitoredItemHandle>,
    /// Items in `watched` and `fixed`.
    count: u64,
}

struct Shared {
    items: Mutex<Items>,
    wake: Notify,
    counters: Arc<DeviceCounters>,
    /// Device index and step period, for the step model.
    device: u32,
    period_ms: Option<i64>,
}

impl Shared {
    fn items(&self) -> MutexGuard<'_, Items> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, n: u64) {
        if n > 0 {
            let _ = self.counters.monitored_items.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |v| Some(v.saturating_sub(n)),
            );
        }
    }
}

impl Drop for Shared {
    /// The server is gone, and its items with it.
    fn drop(&mut self) {
        let n = self.items().count;
        self.forget(n);
    }
}

/// The monitored items of one device server and its sampler task; dropping it stops
/// the task.
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    token: CancellationToken,
    _guard: DropGuard,
}

/// A sampling interval in ms as the server revised it; negative: the publishing interval.
fn interval_of(ms: f64) -> Duration {
    if ms < 0.0 || !ms.is_finite() {
        SUBSCRIPTION_INTERVAL
    } else {
        Duration::from_secs_f64(ms / 1000.0)
    }
}

fn epoch_ms(dt: &DateTime) -> i64 {
    dt.as_chrono().timestamp_millis()
}

impl Monitor {
    /// No items yet for device `device` (step period `period_ms` with a change rate);
    /// the sampler stops with `token` (the server's) or when dropped.
    pub fn new(
        device: u32,
        period_ms: Option<i64>,
        counters: Arc<DeviceCounters>,
        token: CancellationToken,
    ) -> Monitor {
        Monitor {
            shared: Arc::new(Shared {
                items: Mutex::new(Items::default()),
                wake: Notify::new(),
                counters,
                device,
                period_ms,
            }),
            _guard: token.clone().drop_guard(),
            token,
        }
    }

    /// Start the sampler task (once, from the node manager's `init`).
    pub fn start(&self, source: Source, subscriptions: Arc<SubscriptionCache>) {
        tokio::spawn(round::run(
            self.shared.clone(),
            source,
            subscriptions,
            self.token.clone(),
        ));
    }

    /// Track a created item.
    pub fn add(&self, new: NewItem<'_>) {
        let NewItem {
            handle,
            node_id,
            attribute,
            node,
            sampling_interval_ms,
            mode,
            initial,
        } = new;
        let changes = attribute == AttributeId::Value
            && match node {
                Node::Tag(tag) => !model::is_bad(tag),
                Node::Server(_) => true,
                Node::Objects => false,
            };
        let mut items = self.shared.items();
        let added = if changes {
            let watch = items
                .watched
                .entry(node_id.clone())
                .or_insert_with(|| Watch {
                    node,
                    items: HashMap::new(),
                });
            let item = Item {
                interval: interval_of(sampling_interval_ms),
                disabled: mode == MonitoringMode::Disabled,
                last_step: initial.source_timestamp.as_ref().map_or(0, epoch_ms),
                last_sample: Instant::now(),
                last_value: initial.value.clone(),
                missing_since: None,
            };
            watch.items.insert(handle, item).is_none()
        } else {
            items.fixed.insert(handle)
        };
        if added {
            items.count += 1;
            let c = &self.shared.counters;
            c.monitored_items.fetch_add(1, Ordering::Relaxed);
            c.monitored_items_created.fetch_add(1, Ordering::Relaxed);
        }
        drop(items);
        if changes {
            self.shared.wake.notify_one();
        }
    }

    /// Forget a deleted item (unknown ones are ignored).
    pub fn remove(&self, handle: MonitoredItemHandle, node_id: &NodeId) {
        let mut items = self.shared.items();
        let mut removed = items.fixed.remove(&handle);
        if !removed {
            if let Some(watch) = items.watched.get_mut(node_id) {
                removed = watch.items.remove(&handle).is_some();
                if watch.items.is_empty() {
                    items.watched.remove(node_id);
                }
            }
        }
        if removed {
            items.count -= 1;
            drop(items);
            self.shared.forget(1);
        }
    }

    fn with_item(
        &self,
        handle: MonitoredItemHandle,
        node_id: &NodeId,
        f: impl FnOnce(Node, &mut Item),
    ) {
        let mut items = self.shared.items();
        if let Some(watch) = items.watched.get_mut(node_id) {
            let node = watch.node;
            if let Some(item) = watch.items.get_mut(&handle) {
                f(node, item);
            }
        }
    }

    /// A modified item's new sampling interval (ms, as revised by the server).
    pub fn set_interval(&self, handle: MonitoredItemHandle, node_id: &NodeId, ms: f64) {
        self.with_item(handle, node_id, |_, item| item.interval = interval_of(ms));
    }

    /// An item's new monitoring mode. Re-enabled, it gets the current value again (the
    /// server's filter drops it if it did not change) and no backlog.
    pub fn set_mode(&self, handle: MonitoredItemHandle, node_id: &NodeId, mode: MonitoringMode) {
        let disabled = mode == MonitoringMode::Disabled;
        let (device, period) = (self.shared.device, self.shared.period_ms);
        self.with_item(handle, node_id, |node, item| {
            if item.disabled && !disabled {
                if let (Node::Tag(tag), Some(p)) = (node, period) {
                    let now = epoch_ms(&crate::node_manager::now_ms());
                    let n = steps::step_index(device, tag, now, p);
                    item.last_step = steps::step_start(device, tag, n - 1, p);
                }
                item.last_value = None;
                item.missing_since = None;
            }
            item.disabled = disabled;
        });
        if !disabled {
            self.shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{round::pause, *};

    fn handle(id: u32) -> MonitoredItemHandle {
        MonitoredItemHandle {
            subscription_id: 1,
            monitored_item_id: id,
        }
    }

    #[test]
    fn tracks_items_and_counts_them() {
        let counters = Arc::new(DeviceCounters::default());
        let monitor = Monitor::new(3, None, counters.clone(), CancellationToken::new());
        let tag = NodeId::new(2, "Tag000");
        let bad = NodeId::new(2, "Tag007");
        let initial = DataValue::default();
        let add = |id: u32, node_id: &NodeId, attribute: AttributeId, node: Node, ms: f64| {
            monitor.add(NewItem {
                handle: handle(id),
                node_id,
                attribute,
                node,
                sampling_interval_ms: ms,
                mode: MonitoringMode::Reporting,
                initial: &initial,
            })
        };
        add(1, &tag, AttributeId::Value, Node::Tag(0), 100.0);
        add(2, &tag, AttributeId::Value, Node::Tag(0), 250.0);
        add(3, &bad, AttributeId::Value, Node::Tag(7), 100.0);
        add(4, &tag, AttributeId::DisplayName, Node::Tag(0), 100.0);
        // The same handle twice counts once.
        add(4, &tag, AttributeId::DisplayName, Node::Tag(0), 100.0);
        assert_eq!(counters.monitored_items.load(Ordering::Relaxed), 4);
        assert_eq!(counters.monitored_items_created.load(Ordering::Relaxed), 4);
        {
            let items = monitor.shared.items();
            assert_eq!(items.watched.len(), 1);
            assert_eq!(items.fixed.len(), 2);
            assert_eq!(pause(&items, false), Some(Duration::from_millis(100)));
            assert_eq!(pause(&items, true), Some(MIN_TICK));
        }
        monitor.set_mode(handle(1), &tag, MonitoringMode::Disabled);
        monitor.set_interval(handle(2), &tag, 20.0);
        assert_eq!(pause(&monitor.shared.items(), false), Some(MIN_TICK));
        monitor.set_interval(handle(2), &tag, -1.0);
        assert_eq!(
            pause(&monitor.shared.items(), false),
            Some(SUBSCRIPTION_INTERVAL)
        );
        monitor.remove(handle(2), &tag);
        monitor.remove(handle(2), &tag);
        monitor.remove(handle(9), &tag);
        assert_eq!(
            pause(&monitor.shared.items(), false),
            None,
            "only a disabled item left"
        );
        monitor.remove(handle(3), &bad);
        assert_eq!(counters.monitored_items.load(Ordering::Relaxed), 2);
        drop(monitor);
        assert_eq!(counters.monitored_items.load(Ordering::Relaxed), 0);
        assert_eq!(counters.monitored_items_created.load(Ordering::Relaxed), 4);
    }
}

//! `subscription:` and a device's `mode:`/`subscription:` — whether a
//! device is polled or subscribed to, and how its subscription and
//! monitored items are set up (fleet defaults, per-device and per-node
//! overrides).

use std::collections::BTreeMap;
use std::time::Duration;

use collector_core::config::opt_duration;
use serde::Deserialize;

/// How a device's values are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A Read of every node on the device's interval (the default).
    #[default]
    Poll,
    /// One subscription per device: the server samples the nodes and sends
    /// only what changed (report by exception).
    Subscribe,
}

/// What makes a sample a change (OPC UA DataChangeTrigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A change of the status only.
    Status,
    /// A change of the status or the value (the OPC UA default).
    #[default]
    StatusValue,
    /// A change of the status, the value or the source timestamp.
    StatusValueTimestamp,
}

/// The kind of a deadband.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadbandKind {
    /// Every change is reported.
    #[default]
    None,
    /// A change smaller than `value` (in the value's unit) is not reported.
    Absolute,
    /// A change smaller than `value` percent of the node's EURange is not
    /// reported; the server refuses it for a node without an EURange (the
    /// node is then reported with that status).
    Percent,
}

/// A deadband: `{type: absolute, value: 0.5}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadband {
    /// `none`, `absolute` or `percent`.
    #[serde(rename = "type")]
    pub kind: DeadbandKind,
    /// The threshold (>= 0; at most 100 for `percent`).
    #[serde(default)]
    pub value: f64,
}

/// Monitored item settings as written (fleet, device or one node): unset
/// fields fall back to the level above.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawItem {
    /// How often the server samples the node. Default: the publishing
    /// interval.
    #[serde(default, with = "opt_duration")]
    pub sampling_interval: Option<Duration>,
    /// Samples the server keeps per node between publishes. Default: as
    /// many as fit in one publishing interval (publishing / sampling
    /// interval, at least 1), so no sample is discarded between publishes.
    pub queue_size: Option<u32>,
    /// When the queue is full, drop the oldest sample (default true).
    pub discard_oldest: Option<bool>,
    /// What counts as a change. Default `status_value`.
    pub trigger: Option<Trigger>,
    /// Default: none.
    pub deadband: Option<Deadband>,
}

impl RawItem {
    fn over(&self, base: &RawItem) -> RawItem {
        RawItem {
            sampling_interval: self.sampling_interval.or(base.sampling_interval),
            queue_size: self.queue_size.or(base.queue_size),
            discard_oldest: self.discard_oldest.or(base.discard_oldest),
            trigger: self.trigger.or(base.trigger),
            deadband: self.deadband.or(base.deadband),
        }
    }
}

/// `subscription:` as written, in the fleet section or a device entry
/// (`nodes` only in a device entry).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    /// Fleet default mode (the section only; a device writes `mode:`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// How often the server sends what changed. Default: the device's
    /// interval.
    #[serde(default, with = "opt_duration")]
    pub publishing_interval: Option<Duration>,
    /// Publishing intervals without a change after which the server sends
    /// a keep-alive. Default 10.
    pub keep_alive_count: Option<u32>,
    /// Publishing intervals without a Publish request after which the
    /// server drops the subscription; at least 3 x `keep_alive_count`.
    /// Default: 3 x `keep_alive_count`, or more so that it outlives a lost
    /// connection the session survives (`session.session_timeout` +
    /// `session.connect_timeout`), so a reactivated session still has it.
    pub lifetime_count: Option<u32>,
    /// See [`RawItem::sampling_interval`].
    #[serde(default, with = "opt_duration")]
    pub sampling_interval: Option<Duration>,
    /// See [`RawItem::queue_size`].
    pub queue_size: Option<u32>,
    /// See [`RawItem::discard_oldest`].
    pub discard_oldest: Option<bool>,
    /// See [`RawItem::trigger`].
    pub trigger: Option<Trigger>,
    /// See [`RawItem::deadband`].
    pub deadband: Option<Deadband>,
    /// Per-node overrides, keyed by the node id as written in `nodes`.
    #[serde(default)]
    pub nodes: BTreeMap<String, RawItem>,
}

impl RawSubscription {
    fn item(&self) -> RawItem {
        RawItem {
            sampling_interval: self.sampling_interval,
            queue_size: self.queue_size,
            discard_oldest: self.discard_oldest,
            trigger: self.trigger,
            deadband: self.deadband,
        }
    }
}

/// One monitored item's settings, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemSettings {
    /// Requested sampling interval.
    pub sampling_interval: Duration,
    /// Requested queue size.
    pub queue_size: u32,
    /// Discard the oldest sample when the queue is full.
    pub discard_oldest: bool,
    /// What counts as a change.
    pub trigger: Trigger,
    /// The deadband.
    pub deadband: Deadband,
}

/// A subscribed device's subscription, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSettings {
    /// Requested publishing interval.
    pub publishing_interval: Duration,
    /// Requested keep-alive count.
    pub keep_alive_count: u32,
    /// Requested lifetime count.
    pub lifetime_count: u32,
    /// One entry per configured node, in configuration order.
    pub items: Vec<ItemSettings>,
}

/// Default keep-alive count.
pub const DEFAULT_KEEP_ALIVE_COUNT: u32 = 10;

/// A problem in a subscription's settings: the key path below
/// `subscription` and what is wrong.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) key: Vec<String>,
    pub(crate) message: String,
}

fn check_item(item: &RawItem, key: &[String], problems: &mut Vec<Problem>) {
    let mut bad = |field: &str, message: String| {
        let mut k = key.to_vec();
        k.push(field.to_string());
        problems.push(Problem { key: k, message });
    };
    if item.sampling_interval.is_some_and(|d| d.is_zero()) {
        bad("sampling_interval", "must be > 0".into());
    }
    if item.queue_size == Some(0) {
        bad("queue_size", "must be at least 1".into());
    }
    if let Some(d) = item.deadband {
        let ok = d.value.is_finite()
            && d.value >= 0.0
            && (d.kind != DeadbandKind::Percent || d.value <= 100.0);
        if !ok {
            bad(
                "deadband",
                format!("value {} must be >= 0 (and <= 100 for percent)", d.value),
            );
        }
    }
}

/// Resolves a device's subscription: its own settings over the fleet's,
/// per node over both. `nodes` are the device's node ids as written;
/// `interval` its interval; `outlive` how long a lost connection may last
/// while the session survives it (the default lifetime covers it). Every
/// problem is returned.
pub(crate) fn resolve(
    fleet: &RawSubscription,
    device: Option<&RawSubscription>,
    nodes: &[&str],
    interval: Duration,
    outlive: Duration,
) -> Result<SubscriptionSettings, Vec<Problem>> {
    let empty = RawSubscription::default();
    let dev = device.unwrap_or(&empty);
    let mut problems = Vec::new();
    for (name, item) in &dev.nodes {
        if !nodes.contains(&name.as_str()) {
            problems.push(Problem {
                key: vec!["nodes".into(), name.clone()],
                message: format!("node {name:?} is not in this device's `nodes`"),
            });
        }
        check_item(item, &["nodes".into(), name.clone()], &mut problems);
    }
    check_item(&dev.item(), &[], &mut problems);
    let publishing_interval = dev
        .publishing_interval
        .or(fleet.publishing_interval)
        .unwrap_or(interval);
    if publishing_interval.is_zero() {
        problems.push(Problem {
            key: vec!["publishing_interval".into()],
            message: "must be > 0".into(),
        });
    }
    let keep_alive_count = dev
        .keep_alive_count
        .or(fleet.keep_alive_count)
        .unwrap_or(DEFAULT_KEEP_ALIVE_COUNT);
    if keep_alive_count == 0 {
        problems.push(Problem {
            key: vec!["keep_alive_count".into()],
            message: "must be at least 1".into(),
        });
    }
    let lifetime_count = dev
        .lifetime_count
        .or(fleet.lifetime_count)
        .unwrap_or_else(|| {
            let pi = publishing_interval.as_millis().max(1);
            let cover = u32::try_from(outlive.as_millis().div_ceil(pi)).unwrap_or(u32::MAX);
            keep_alive_count
                .saturating_mul(3)
                .max(cover.saturating_add(keep_alive_count))
        });
    if lifetime_count < keep_alive_count.saturating_mul(3) {
        problems.push(Problem {
            key: vec!["lifetime_count".into()],
            message: format!(
                "{lifetime_count} is less than 3 x keep_alive_count ({keep_alive_count}); OPC UA requires at least that"
            ),
        });
    }
    let base = dev.item().over(&fleet.item());
    let items = nodes
        .iter()
        .map(|n| {
            let raw = dev.nodes.get(*n).map_or(base.clone(), |o| o.over(&base));
            let sampling_interval = raw.sampling_interval.unwrap_or(publishing_interval);
            let fit = publishing_interval.as_nanos() / sampling_interval.as_nanos().max(1);
            ItemSettings {
                sampling_interval,
                queue_size: raw
                    .queue_size
                    .unwrap_or_else(|| u32::try_from(fit).unwrap_or(u32::MAX).max(1)),
                discard_oldest: raw.discard_oldest.unwrap_or(true),
                trigger: raw.trigger.unwrap_or_default(),
                deadband: raw.deadband.unwrap_or_default(),
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(SubscriptionSettings {
            publishing_interval,
            keep_alive_count,
            lifetime_count,
            items,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: serde_json::Value) -> RawSubscription {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn device_over_fleet_and_node_over_device() {
        let fleet = raw(
            serde_json::json!({"publishing_interval": "2s", "queue_size": 5,
            "deadband": {"type": "absolute", "value": 0.5}}),
        );
        let dev = raw(serde_json::json!({"sampling_interval": "500ms",
            "nodes": {"b": {"deadband": {"type": "percent", "value": 2.0}}}}));
        let s = resolve(
            &fleet,
            Some(&dev),
            &["a", "b"],
            Duration::from_secs(10),
            Duration::from_secs(55),
        )
        .unwrap();
        assert_eq!(s.publishing_interval, Duration::from_secs(2));
        assert_eq!(s.keep_alive_count, 10);
        // 3 x 10 intervals of 2 s outlive a 55 s outage already.
        assert_eq!(s.lifetime_count, 38);
        assert_eq!(s.items[0].sampling_interval, Duration::from_millis(500));
        assert_eq!(s.items[0].queue_size, 5);
        assert_eq!(s.items[0].deadband.kind, DeadbandKind::Absolute);
        assert_eq!(s.items[1].deadband.kind, DeadbandKind::Percent);
        assert_eq!(s.items[1].queue_size, 5);
    }

    #[test]
    fn defaults_follow_the_interval() {
        let s = resolve(
            &RawSubscription::default(),
            Some(&raw(serde_json::json!({"sampling_interval": "250ms"}))),
            &["a"],
            Duration::from_secs(1),
            Duration::from_secs(55),
        )
        .unwrap();
        assert_eq!(s.publishing_interval, Duration::from_secs(1));
        // Outlives a 55 s outage the session survives: 55 + 10 intervals.
        assert_eq!(s.lifetime_count, 65);
        // Four samples fit in one publishing interval: none is discarded.
        assert_eq!(s.items[0].queue_size, 4);
        assert!(s.items[0].discard_oldest);
        assert_eq!(s.items[0].trigger, Trigger::StatusValue);
    }

    #[test]
    fn problems_name_their_keys() {
        let dev = raw(
            serde_json::json!({"keep_alive_count": 10, "lifetime_count": 5,
            "queue_size": 0, "nodes": {"zz": {"deadband": {"type": "percent", "value": 150.0}}}}),
        );
        let problems = resolve(
            &RawSubscription::default(),
            Some(&dev),
            &["a"],
            Duration::from_secs(1),
            Duration::from_secs(55),
        )
        .unwrap_err();
        let keys: Vec<String> = problems.iter().map(|p| p.key.join(".")).collect();
        assert!(keys.contains(&"lifetime_count".to_string()), "{keys:?}");
        assert!(keys.contains(&"queue_size".to_string()), "{keys:?}");
        assert!(keys.contains(&"nodes.zz".to_string()), "{keys:?}");
        assert!(keys.contains(&"nodes.zz.deadband".to_string()), "{keys:?}");
    }
}

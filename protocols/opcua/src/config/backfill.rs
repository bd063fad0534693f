//! `backfill:` and a device's `backfill:` — whether gaps in a device's
//! reads are filled from its server's history (HistoryRead), how far back
//! and how fast (fleet-wide budget, so live reads keep priority).

use std::time::Duration;

use collector_core::config::opt_duration;
use serde::Deserialize;

/// `backfill:` as written, in the fleet section or a device entry (the
/// budget fields only in the fleet section).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackfill {
    /// Fill gaps from the server's history. Default false.
    pub enabled: Option<bool>,
    /// The longest stretch asked for; the older part of a longer gap is
    /// reported as unrecoverable. Default `1h`.
    #[serde(default, with = "opt_duration")]
    pub max_window: Option<Duration>,
    /// Values read per node and gap at most. Default 10,000.
    pub max_values_per_node: Option<u32>,
    /// Fleet: backfills running at once. Default 2.
    pub max_concurrent: Option<u32>,
    /// Fleet: HistoryRead requests per second, all devices together.
    /// Default 20.
    pub requests_per_second: Option<u32>,
    /// Fleet: attempts of a backfill whose reads fail half-way. Default 3.
    pub attempts: Option<u32>,
}

/// A device's backfill, resolved (present only when enabled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackfillSettings {
    /// See [`RawBackfill::max_window`].
    pub max_window: Duration,
    /// See [`RawBackfill::max_values_per_node`].
    pub max_values_per_node: u32,
}

/// The fleet-wide backfill budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackfillBudget {
    /// Backfills at once.
    pub max_concurrent: u32,
    /// HistoryRead requests per second.
    pub requests_per_second: u32,
    /// Attempts per backfill.
    pub attempts: u32,
}

impl RawBackfill {
    /// The budget of the fleet section.
    pub fn budget(&self) -> BackfillBudget {
        BackfillBudget {
            max_concurrent: self.max_concurrent.unwrap_or(2).max(1),
            requests_per_second: self.requests_per_second.unwrap_or(20).max(1),
            attempts: self.attempts.unwrap_or(3).max(1),
        }
    }
}

/// Problems of a `backfill:` block (key below `backfill`, message).
pub(crate) fn check(raw: &RawBackfill, fleet: bool) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if raw.max_window.is_some_and(|w| w.is_zero()) {
        problems.push(("max_window", "must be > 0".to_string()));
    }
    if raw.max_values_per_node == Some(0) {
        problems.push(("max_values_per_node", "must be at least 1".to_string()));
    }
    let budget = [
        ("max_concurrent", raw.max_concurrent),
        ("requests_per_second", raw.requests_per_second),
        ("attempts", raw.attempts),
    ];
    for (key, v) in budget {
        match (fleet, v) {
            (true, Some(0)) => problems.push((key, "must be at least 1".to_string())),
            (false, Some(_)) => problems.push((
                key,
                "is a fleet-wide budget: set it in the top-level `backfill:` section".to_string(),
            )),
            _ => {}
        }
    }
    problems
}

/// A device's backfill: its own settings over the fleet's; `None` unless
/// enabled.
pub(crate) fn resolve(
    fleet: &RawBackfill,
    device: Option<&RawBackfill>,
) -> Option<BackfillSettings> {
    let d = device.cloned().unwrap_or_default();
    if !d.enabled.or(fleet.enabled).unwrap_or(false) {
        return None;
    }
    Some(BackfillSettings {
        max_window: d
            .max_window
            .or(fleet.max_window)
            .unwrap_or(Duration::from_secs(3600)),
        max_values_per_node: d
            .max_values_per_node
            .or(fleet.max_values_per_node)
            .unwrap_or(10_000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_device_over_fleet() {
        let fleet: RawBackfill =
            serde_json::from_value(serde_json::json!({"max_window": "10m"})).unwrap();
        assert_eq!(resolve(&fleet, None), None);
        let dev: RawBackfill =
            serde_json::from_value(serde_json::json!({"enabled": true, "max_values_per_node": 5}))
                .unwrap();
        let s = resolve(&fleet, Some(&dev)).unwrap();
        assert_eq!(s.max_window, Duration::from_secs(600));
        assert_eq!(s.max_values_per_node, 5);
        assert!(check(&dev, false).is_empty());
        let bad: RawBackfill =
            serde_json::from_value(serde_json::json!({"max_concurrent": 3})).unwrap();
        assert_eq!(check(&bad, false)[0].0, "max_concurrent");
        assert!(check(&bad, true).is_empty());
    }
}

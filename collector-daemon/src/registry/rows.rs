//! Registry rows and device entries. A row is a device file's entry in
//! columns (id, endpoint, interval, the adapter's keys as JSON) plus an
//! `enabled` flag; it is checked by the same code as a device file, so a
//! row is valid exactly when the same entry in YAML would be.

use std::path::Path;

use collector_core::config::{Device, LoadLimits, REGISTRY_MAX_SHARDS};
use collector_core::shard::Shard;
use collector_core::CollectorConfig;
use collector_opcua::config::OpcUaConfig;
use serde_json::{Map, Value};

/// The columns a replica reads, in [`Row::from_pg`]'s order.
pub(crate) const COLUMNS: &str = r#"id, endpoint, "interval", settings, enabled, version"#;

/// The keys of a device entry that have columns of their own.
const CORE_KEYS: [&str; 3] = ["id", "endpoint", "interval"];

/// Cells are `bucket * CELL_STRIDE + next` (schema.sql's shard_cells).
const CELL_STRIDE: i32 = 8192;

/// One row of `opc_collector.devices`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub id: String,
    pub endpoint: String,
    pub interval: Option<String>,
    /// The adapter's keys (nodes, security, ...), a JSON object.
    pub settings: Value,
    pub enabled: bool,
    /// Bumped by the database on every write (0 for rows not yet stored).
    pub version: i64,
}

impl Row {
    /// A row of a query of [`COLUMNS`].
    pub(crate) fn from_pg(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
        Ok(Row {
            id: r.try_get(0)?,
            endpoint: r.try_get(1)?,
            interval: r.try_get(2)?,
            settings: r.try_get(3)?,
            enabled: r.try_get(4)?,
            version: r.try_get(5)?,
        })
    }

    /// An accepted device file entry as a row (enabled).
    pub(crate) fn from_entry(entry: &Value) -> Row {
        let text = |key: &str| match entry.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let settings: Map<String, Value> = entry
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !CORE_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Row {
            id: text("id").unwrap_or_default(),
            endpoint: text("endpoint").unwrap_or_default(),
            interval: text("interval"),
            settings: Value::Object(settings),
            enabled: true,
            version: 0,
        }
    }

    /// The row as a device file entry.
    pub(crate) fn entry(&self) -> Result<Value, String> {
        let Value::Object(settings) = &self.settings else {
            return Err(format!(
                "settings must be a JSON object of the device's keys (nodes, security, ...), not {}",
                kind(&self.settings)
            ));
        };
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("endpoint".into(), Value::String(self.endpoint.clone()));
        if let Some(i) = &self.interval {
            m.insert("interval".into(), Value::String(i.clone()));
        }
        for (k, v) in settings {
            if CORE_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "settings holds `{k}`, which is a column of its own"
                ));
            }
            m.insert(k.clone(), v.clone());
        }
        Ok(Value::Object(m))
    }

    /// The device this row describes, checked as a device file entry
    /// against `base` (its default interval and protocol sections); or
    /// why it is not one.
    pub(crate) fn device(
        &self,
        base: &CollectorConfig,
        limits: LoadLimits,
    ) -> Result<Device, String> {
        let entry = self.entry()?;
        let doc = serde_json::json!({ "devices": [entry] }).to_string();
        match base.devices_from_yaml(&doc, None, &OpcUaConfig, limits) {
            Ok(mut devices) if devices.len() == 1 => Ok(devices.remove(0).0),
            Ok(_) => Err("not one device".into()),
            Err(errors) => Err(errors
                .iter()
                .map(|e| match &e.hint {
                    Some(h) => format!("{} ({h})", e.message),
                    None => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The cells whose rows are `shard`'s: `index * 8192 + t` for every `t`
/// from the count to the registry's limit (none for an index not below
/// the count: such a replica reads nothing).
pub(crate) fn shard_cells(shard: Shard) -> Vec<i32> {
    if shard.index >= shard.count || shard.count > REGISTRY_MAX_SHARDS {
        return Vec::new();
    }
    let base = shard.index as i32 * CELL_STRIDE;
    (shard.count..=REGISTRY_MAX_SHARDS)
        .map(|t| base + t as i32)
        .collect()
}

/// The cells the database stores for `id` (for tests against its
/// function).
#[cfg(test)]
pub(crate) fn cells_of(id: &str) -> Vec<i32> {
    collector_core::shard::spans(id, REGISTRY_MAX_SHARDS)
        .into_iter()
        .map(|(b, next)| b as i32 * CELL_STRIDE + next as i32)
        .collect()
}

/// Parses a device file into rows, every problem reported with `file:line`
/// (the same checks as the daemon's, against `base`).
pub(crate) fn rows_of_file(
    base: &CollectorConfig,
    path: &Path,
    limits: LoadLimits,
) -> Result<Vec<Row>, Vec<String>> {
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() > limits.max_file_bytes => {
            return Err(vec![format!(
                "{}: {} bytes; the limit is {} (--max-file-bytes)",
                path.display(),
                m.len(),
                limits.max_file_bytes
            )])
        }
        _ => std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?,
    };
    base.devices_from_yaml(&text, Some(path), &OpcUaConfig, limits)
        .map(|devices| {
            devices
                .iter()
                .map(|(_, entry)| Row::from_entry(entry))
                .collect()
        })
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use collector_core::shard::shard_of;

    #[test]
    fn a_shards_cells_select_exactly_its_devices() {
        for count in [1u32, 2, 3, 7, 600, 4096] {
            for i in 0..300 {
                let id = format!("dev-{i:05}");
                let mine = shard_of(&id, count);
                for index in [0, mine, count.saturating_sub(1)] {
                    let wanted = shard_cells(Shard { index, count });
                    let hit = cells_of(&id).iter().any(|c| wanted.contains(c));
                    assert_eq!(hit, index == mine, "{id}: shard {index} of {count}");
                }
            }
        }
        assert!(shard_cells(Shard { index: 3, count: 3 }).is_empty());
    }

    #[test]
    fn entries_and_rows_round_trip() {
        let entry = serde_json::json!({
            "id": "plc-1", "endpoint": "opc.tcp://h:4840", "interval": "5s",
            "nodes": ["ns=2;s=a"]
        });
        let row = Row::from_entry(&entry);
        assert_eq!(row.interval.as_deref(), Some("5s"));
        assert_eq!(row.settings, serde_json::json!({"nodes": ["ns=2;s=a"]}));
        assert_eq!(row.entry().unwrap(), entry);
        let mut bad = row.clone();
        bad.settings = serde_json::json!({"id": "other"});
        assert!(bad.entry().unwrap_err().contains("`id`"));
        bad.settings = serde_json::json!(["x"]);
        assert!(bad.entry().unwrap_err().contains("an array"));
    }
}

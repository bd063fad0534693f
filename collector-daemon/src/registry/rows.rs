//! Registry rows and device entries. A row is a device file's entry in
//! columns (id, endpoint, interval, the adapter's keys as JSON) plus an
//! `enabled` flag; it is checked by the same code as a device file, so a
//! row is valid exactly when the same entry in YAML would be.

use std::path::Path;

use collector_core::config::{Device, EnvExpansion, LoadLimits, REGISTRY_MAX_SHARDS};
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
    /// Why the row could not even be decoded (its settings), if so.
    pub undecodable: Option<String>,
}

impl Row {
    /// A row of a query of [`COLUMNS`].
    pub(crate) fn from_pg(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
        // As text, parsed here: jsonb holds values serde_json refuses
        // (numbers beyond f64, deep nesting); such a row is rejected alone
        // instead of failing the shard's read.
        let settings: String = r.try_get(3)?;
        let (settings, undecodable) = match serde_json::from_str(&settings) {
            Ok(v) => (v, None),
            Err(e) => (Value::Null, Some(format!("settings cannot be read: {e}"))),
        };
        Ok(Row {
            id: r.try_get(0)?,
            endpoint: r.try_get(1)?,
            interval: r.try_get(2)?,
            settings,
            enabled: r.try_get(4)?,
            version: r.try_get(5)?,
            undecodable,
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
            undecodable: None,
        }
    }

    /// The row as a device file entry.
    pub(crate) fn entry(&self) -> Result<Value, String> {
        if let Some(why) = &self.undecodable {
            return Err(why.clone());
        }
        if self.id.trim() != self.id {
            return Err(format!(
                "id {:?} has blanks around it (it would hash to another shard than the device it names)",
                self.id
            ));
        }
        // A row must not make the daemon read this pod's files or
        // environment (and send them to the row's endpoint as a password).
        if let Some(sec) = self.settings.get("security") {
            if let Some(key) = ["user", "user_certificate"]
                .iter()
                .find(|k| sec.get(**k).is_some())
            {
                return Err(format!(
                    "security.{key} cannot be set in a registry row (its password or key files would be read from the collector's pod for whoever can write rows); set it in the configuration's `security:` section"
                ));
            }
        }
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
        match base.devices_from_yaml(&doc, None, EnvExpansion::Literal, &OpcUaConfig, limits) {
            Ok(mut devices) if devices.len() == 1 => Ok(devices.remove(0).0),
            Ok(_) => Err("not one device".into()),
            Err(errors) => Err(errors.iter().map(reason_of).collect::<Vec<_>>().join("; ")),
        }
    }
}

/// Every row's device, or why it is not one: checked as one device file
/// (one entry a line), so the checks' fixed costs are paid once per read,
/// not once per row. Rows with a problem are then told apart by the line
/// it is reported at (a problem without one: each row checked alone).
pub(crate) fn devices_of(
    rows: &[Row],
    base: &CollectorConfig,
    limits: LoadLimits,
) -> Vec<Result<Device, String>> {
    let mut out: Vec<Option<Result<Device, String>>> = vec![None; rows.len()];
    let mut entries = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        match row.entry() {
            Ok(e) => entries.push((i, e)),
            Err(reason) => out[i] = Some(Err(reason)),
        }
    }
    let limits = LoadLimits {
        max_devices_per_file: usize::MAX,
        ..limits
    };
    // Two rounds: all entries; then those without a problem of their own.
    for _ in 0..2 {
        if entries.is_empty() {
            break;
        }
        let mut doc = String::from("devices:\n");
        for (_, e) in &entries {
            doc.push_str("  - ");
            doc.push_str(&e.to_string());
            doc.push('\n');
        }
        match base.devices_from_yaml(&doc, None, EnvExpansion::Literal, &OpcUaConfig, limits) {
            Ok(devices) if devices.len() == entries.len() => {
                for ((i, _), (d, _)) in entries.iter().zip(devices) {
                    out[*i] = Some(Ok(d));
                }
                entries.clear();
            }
            Ok(_) => break,
            Err(errors) => {
                let mut by_line: std::collections::HashMap<usize, Vec<String>> = Default::default();
                let mut unplaced = false;
                for e in errors.iter() {
                    match e
                        .line
                        .and_then(|l| l.checked_sub(2))
                        .filter(|k| *k < entries.len())
                    {
                        Some(k) => by_line.entry(k).or_default().push(reason_of(e)),
                        None => unplaced = true,
                    }
                }
                if unplaced || by_line.is_empty() {
                    break;
                }
                let mut rest = Vec::with_capacity(entries.len());
                for (k, (i, e)) in entries.into_iter().enumerate() {
                    match by_line.remove(&k) {
                        Some(reasons) => out[i] = Some(Err(reasons.join("; "))),
                        None => rest.push((i, e)),
                    }
                }
                entries = rest;
            }
        }
    }
    // What the rounds could not place: each row alone.
    for (i, _) in entries {
        out[i] = Some(rows[i].device(base, limits));
    }
    out.into_iter()
        .map(|d| d.unwrap_or_else(|| Err("not checked".into())))
        .collect()
}

fn reason_of(e: &collector_core::ConfigError) -> String {
    match &e.hint {
        Some(h) => format!("{} ({h})", e.message),
        None => e.message.clone(),
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

/// The cells whose rows are `shard`'s, as a range `lo..=hi`: `index *
/// 8192 + t` for every `t` from the count to the registry's limit (an
/// empty range for an index not below the count: it reads nothing).
pub(crate) fn cell_range(shard: Shard) -> (i32, i32) {
    if shard.index >= shard.count || shard.count > REGISTRY_MAX_SHARDS {
        return (1, 0);
    }
    let base = shard.index as i32 * CELL_STRIDE;
    (base + shard.count as i32, base + REGISTRY_MAX_SHARDS as i32)
}

/// The cells of [`cell_range`], listed (for tests).
#[cfg(test)]
fn shard_cells(shard: Shard) -> Vec<i32> {
    let (lo, hi) = cell_range(shard);
    (lo..=hi).collect()
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
    let devices = base
        .devices_from_yaml(
            &text,
            Some(path),
            EnvExpansion::Expand,
            &OpcUaConfig,
            limits,
        )
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let mut problems = Vec::new();
    let rows = devices
        .iter()
        .map(|(device, entry)| {
            let mut row = Row::from_entry(entry);
            row.id = device.id.to_string();
            if let Err(why) = row.entry() {
                problems.push(format!("{}: device `{}`: {why}", path.display(), row.id));
            }
            row
        })
        .collect();
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
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

    fn row(id: &str, settings: Value) -> Row {
        Row {
            id: id.into(),
            endpoint: "opc.tcp://127.0.0.1:4840".into(),
            interval: None,
            settings,
            enabled: true,
            version: 1,
            undecodable: None,
        }
    }

    #[test]
    fn bad_rows_are_told_apart_from_good_ones_in_one_check() {
        let base = CollectorConfig::from_yaml(
            "kafka:\n  brokers: k:9092\nschedule:\n  interval: 7s\nsource: postgres\nregistry:\n  url: host=db\n",
            None,
            &OpcUaConfig,
        )
        .unwrap();
        let nodes = serde_json::json!({"nodes": ["ns=2;s=A"]});
        let mut rows = vec![
            row("good-1", nodes.clone()),
            row("bad-nodes", serde_json::json!({"nodes": 5})),
            row("good-2", nodes.clone()),
            row("bad-settings", serde_json::json!("x")),
            row("bad id", nodes.clone()),
            row(" padded", nodes.clone()),
            row(
                "user",
                serde_json::json!({"nodes": ["ns=2;s=A"], "security": {"user": {"username": "u", "password_file": "/etc/shadow"}}}),
            ),
            row("env", nodes.clone()),
        ];
        // Taken literally: a row cannot read the collector's environment.
        rows[7].endpoint = "opc.tcp://${HOME}:4840".into();
        rows[2].interval = Some("2s".into());
        let out = devices_of(&rows, &base, LoadLimits::default());
        let good: Vec<_> = out.iter().filter_map(|d| d.as_ref().ok()).collect();
        assert_eq!(good.len(), 3, "{out:?}");
        assert_eq!(good[0].interval, std::time::Duration::from_secs(7));
        assert_eq!(good[1].interval, std::time::Duration::from_secs(2));
        assert!(out[1].as_ref().unwrap_err().contains("nodes"), "{out:?}");
        assert!(
            out[3].as_ref().unwrap_err().contains("JSON object"),
            "{out:?}"
        );
        assert!(out[4].as_ref().unwrap_err().contains("bad id"), "{out:?}");
        assert!(out[5].as_ref().unwrap_err().contains("blanks"), "{out:?}");
        assert!(
            out[6].as_ref().unwrap_err().contains("security.user"),
            "{out:?}"
        );
        // `${HOME}` stays as written (here even a host the URL parser takes).
        let env = out[7].as_ref().unwrap();
        assert_eq!(env.endpoint, "opc.tcp://${HOME}:4840");
        // Each alone gives the same verdicts.
        for (r, d) in rows.iter().zip(&out) {
            assert_eq!(
                r.device(&base, LoadLimits::default()).is_ok(),
                d.is_ok(),
                "{}",
                r.id
            );
        }
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

//! The parts of the configuration a protocol adapter owns: its top-level
//! sections (for OPC UA `security:` and `session:`) and its keys of each
//! device entry (for OPC UA `nodes:` and `security:`). The core keeps them
//! as written, with their file and lines, and never interprets them; the
//! adapter deserializes and checks them through [`Settings`] and declares
//! what it owns through [`ProtocolConfig`], so its problems are reported
//! with `file:line` alongside the core's.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::yaml::Node;
use super::CollectorConfig;
use crate::error::ConfigError;

/// Settings as written in the configuration, with their positions.
///
/// Shared, not copied, by its clones: a device's entry is held by the
/// loaded configuration, the device list, the reload's last-applied list
/// and the adapter's device, and a deep copy of each (its `nodes:` list,
/// every node id a string) cost ~2 KiB per 50-node device per copy.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A mapping (or nothing, when the entry has none of the adapter's keys).
    node: Option<Arc<Node>>,
    file: Option<Arc<Path>>,
    /// The line of the entry or section the settings belong to.
    line: Option<usize>,
}

/// Two settings are equal when they say the same thing, wherever they are
/// written: a device entry that only moved in its file is unchanged.
impl PartialEq for Settings {
    fn eq(&self, other: &Self) -> bool {
        self.to_json() == other.to_json()
    }
}

impl Settings {
    pub(crate) fn from_node(node: Node, file: Option<&Path>, line: Option<usize>) -> Self {
        Self {
            node: Some(Arc::new(node)),
            file: file.map(Arc::from),
            line,
        }
    }

    /// Settings built in code (no file, no lines), e.g.
    /// `serde_json::json!({"nodes": ["ns=2;s=T"]})`.
    pub fn from_json(value: serde_json::Value) -> Self {
        Self {
            node: Some(Arc::new(Node::from_json(&value))),
            file: None,
            line: None,
        }
    }

    /// The settings as JSON (`null` when there are none).
    pub fn to_json(&self) -> serde_json::Value {
        self.node
            .as_ref()
            .map_or(serde_json::Value::Null, |n| n.to_json())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        match self.node.as_deref() {
            None => true,
            Some(Node::Map { entries, .. }) => entries.is_empty(),
            Some(_) => false,
        }
    }

    /// The keys set, in the order written.
    pub fn keys(&self) -> Vec<&str> {
        match self.node.as_deref() {
            Some(Node::Map { entries, .. }) => entries.iter().map(|(k, _, _)| &**k).collect(),
            _ => Vec::new(),
        }
    }

    /// Deserializes the whole settings into `T` (missing: `T::default()`);
    /// an error names the file and the line of the offending field.
    /// `context` prefixes the message (e.g. `security` or `device plc-1`).
    pub fn deserialize<T: DeserializeOwned + Default>(
        &self,
        context: &str,
    ) -> Result<T, ConfigError> {
        match &self.node {
            None => Ok(T::default()),
            Some(node) => super::yaml::deserialize(node, context).map_err(|e| self.place(e)),
        }
    }

    /// Deserializes the value under `key` into `T` (missing: `T::default()`).
    pub fn get<T: DeserializeOwned + Default>(
        &self,
        key: &str,
        context: &str,
    ) -> Result<T, ConfigError> {
        match self.node.as_ref().and_then(|n| n.get(key)) {
            None => Ok(T::default()),
            Some((node, _)) => super::yaml::deserialize(node, context).map_err(|e| self.place(e)),
        }
    }

    /// The texts of the list of scalars under `key`, shared with these
    /// settings rather than copied; `None` when `key` is missing or is not
    /// a list of scalars. For an adapter that keeps many strings a device
    /// (node ids): a devices file repeats a model's node ids on every
    /// device, the file's parser keeps each distinct text once, and this
    /// hands out that one allocation. Check the list with
    /// [`Settings::get`] first: the texts are as written, untyped.
    pub fn texts(&self, key: &str) -> Option<Vec<Arc<str>>> {
        match self.node.as_ref()?.get(key)? {
            (Node::Seq { items, .. }, _) => items
                .iter()
                .map(|item| match item {
                    Node::Scalar { text, .. } => Some(text.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The line of `key`, else of the entry.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.node
            .as_ref()
            .and_then(|n| n.get(key))
            .map(|(_, l)| l)
            .or(self.line)
    }

    /// The line of the nested key `path` (`["security", "user",
    /// "password_env"]`), else of the deepest of its parents that is
    /// written, else of the entry.
    pub fn line_at(&self, path: &[&str]) -> Option<usize> {
        let mut line = self.line;
        let mut node = self.node.as_deref();
        for key in path {
            match node.and_then(|n| n.get(key)) {
                Some((child, l)) => {
                    line = Some(l);
                    node = Some(child);
                }
                None => break,
            }
        }
        line
    }

    /// The line of item `index` of the list under `key`, else of `key`.
    pub fn item_line(&self, key: &str, index: usize) -> Option<usize> {
        match self.node.as_ref().and_then(|n| n.get(key)) {
            Some((Node::Seq { items, .. }, _)) => items.get(index).map(Node::line),
            _ => None,
        }
        .or_else(|| self.line_of(key))
    }

    /// A problem with `key` (or the whole entry), placed at its file and
    /// line.
    pub fn error(&self, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        let line = match key {
            Some(k) => self.line_of(k),
            None => self.line,
        };
        self.place(ConfigError::new(message).at(None, line))
    }

    /// A problem with the nested key `path`, placed at its line (see
    /// [`Settings::line_at`]).
    pub fn error_at(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        self.place(ConfigError::new(message).at(None, self.line_at(path)))
    }

    /// A problem with item `index` of the list under `key`.
    pub fn item_error(&self, key: &str, index: usize, message: impl Into<String>) -> ConfigError {
        self.place(ConfigError::new(message).at(None, self.item_line(key, index)))
    }

    /// Adds the file (and the entry's line when the error has none);
    /// settings built in code have no positions to give.
    fn place(&self, mut e: ConfigError) -> ConfigError {
        if self.file.is_none() && self.line.is_none() {
            e.line = None;
            return e;
        }
        e.at(self.file.as_deref(), self.line)
    }
}

/// What a protocol adapter owns in the configuration, and how it checks it.
/// The core loads every section and device entry; the keys it does not own
/// go to the adapter named here, and anything neither owns is an error.
pub trait ProtocolConfig {
    /// Top-level sections the adapter owns (OPC UA: `security`, `session`).
    fn sections(&self) -> &[&'static str];

    /// Keys of a device entry the adapter owns, besides the core's `id`,
    /// `endpoint` and `interval` (OPC UA: `nodes`, `security`).
    fn device_keys(&self) -> &[&'static str];

    /// Every problem with the adapter's sections and devices' settings,
    /// each placed with [`Settings::error`]. Pure: no network, no sessions.
    fn validate(&self, cfg: &CollectorConfig) -> Vec<ConfigError>;
}

/// For collectors whose devices carry no adapter settings (devices built
/// in code for a protocol that needs none): owns nothing, checks nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProtocolConfig;

impl ProtocolConfig for NoProtocolConfig {
    fn sections(&self) -> &[&'static str] {
        &[]
    }

    fn device_keys(&self) -> &[&'static str] {
        &[]
    }

    fn validate(&self, _cfg: &CollectorConfig) -> Vec<ConfigError> {
        Vec::new()
    }
}

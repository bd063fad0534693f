//! Loading: the configuration file and the device files it names, parsed
//! into positioned YAML, split between the core's sections and the
//! adapter's, and validated, every problem reported with `file:line`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::check::check_sections;
use super::device::validate_device;
use super::model::RawDevice;
use super::yaml::{self, Node};
use super::{CollectorConfig, Device, ProtocolConfig, Settings, SourceKind};
use crate::error::{ConfigError, ConfigErrors};

/// The largest configuration or device file read, checked before reading
/// it (a Kubernetes ConfigMap holds at most 1 MiB; a fleet's 1.2 M devices
/// belong in a registry, not a file).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most device entries one file may hold.
pub const MAX_DEVICES_PER_FILE: usize = 250_000;

/// What loading a configuration may cost, checked before or while parsing
/// each file, so that a hostile or mistaken file is refused, never loaded.
/// The same limits hold for every file the configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// The largest configuration or device file read, checked before
    /// reading it. Default [`MAX_FILE_BYTES`] (64 MiB).
    pub max_file_bytes: u64,
    /// The most entries in one `devices:` list. Default
    /// [`MAX_DEVICES_PER_FILE`] (250,000).
    pub max_devices_per_file: usize,
    /// The most YAML nodes aliases may add to one document (a "billion
    /// laughs" file is refused at the alias that crosses it). Default
    /// 1,000,000.
    pub max_alias_nodes: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: MAX_FILE_BYTES,
            max_devices_per_file: MAX_DEVICES_PER_FILE,
            max_alias_nodes: yaml::MAX_ALIAS_NODES,
        }
    }
}

/// Reads a configuration or device file within `max` bytes.
fn read_bounded(path: &Path, what: &str, max: u64) -> Result<String, ConfigError> {
    let too_big = |len: u64| {
        ConfigError::new(format!(
            "{what} is {len} bytes; the limit is {max} ({} MiB)",
            max >> 20
        ))
        .at(Some(path), None)
        .hint("split the devices over several device_files, or use a device registry")
    };
    let file = std::fs::File::open(path)
        .map_err(|e| ConfigError::new(format!("cannot read {what}: {e}")).at(Some(path), None))?;
    if let Ok(meta) = file.metadata() {
        if meta.len() > max {
            return Err(too_big(meta.len()));
        }
    }
    // Read at most one byte past the limit, in case the file grew.
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, max.saturating_add(1)),
        &mut text,
    )
    .map_err(|e| ConfigError::new(format!("cannot read {what}: {e}")).at(Some(path), None))?;
    if text.len() as u64 > max {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

impl CollectorConfig {
    /// Loads and validates a YAML configuration file (and the device files
    /// it names), reporting every problem found, the adapter's included.
    pub fn load(
        path: &Path,
        adapter: &dyn ProtocolConfig,
    ) -> Result<CollectorConfig, ConfigErrors> {
        Self::load_within(path, adapter, LoadLimits::default())
    }

    /// [`CollectorConfig::load`] within other [`LoadLimits`].
    pub fn load_within(
        path: &Path,
        adapter: &dyn ProtocolConfig,
        limits: LoadLimits,
    ) -> Result<CollectorConfig, ConfigErrors> {
        let text = read_bounded(path, "config", limits.max_file_bytes)
            .map_err(|e| ConfigErrors(vec![e]))?;
        Self::from_yaml_within(&text, Some(path), adapter, limits)
    }

    /// Parses and validates YAML text; `path` (if any) names the file in
    /// errors and anchors relative `device_files`.
    pub fn from_yaml(
        text: &str,
        path: Option<&Path>,
        adapter: &dyn ProtocolConfig,
    ) -> Result<CollectorConfig, ConfigErrors> {
        Self::from_yaml_within(text, path, adapter, LoadLimits::default())
    }

    /// [`CollectorConfig::from_yaml`] within other [`LoadLimits`].
    pub fn from_yaml_within(
        text: &str,
        path: Option<&Path>,
        adapter: &dyn ProtocolConfig,
        limits: LoadLimits,
    ) -> Result<CollectorConfig, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let root = match yaml::parse_within(text, limits.max_alias_nodes) {
            Ok(root) => root,
            Err(errs) => {
                return Err(ConfigErrors(
                    errs.into_iter().map(|e| e.at(path, None)).collect(),
                ));
            }
        };
        let mut cfg = CollectorConfig::default();
        let mut raw_devices: Vec<RawEntry> = Vec::new();
        let owned = Owned {
            device_keys: adapter.device_keys(),
            limits,
        };

        let Node::Map { entries, .. } = &root else {
            errors.push(
                ConfigError::new("the configuration must be a mapping of sections")
                    .at(path, Some(root.line()))
                    .hint("see config/default.yaml"),
            );
            return Err(errors);
        };
        for (key, line, node) in entries.iter() {
            let line = *line as usize;
            let at = |e: ConfigError| e.at(path, None);
            macro_rules! section {
                ($field:expr) => {
                    match yaml::deserialize(node, key) {
                        Ok(v) => $field = v,
                        Err(e) => errors.push(at(e)),
                    }
                };
            }
            match &**key {
                "collector" => section!(cfg.collector),
                "schedule" => section!(cfg.schedule),
                "workers" => section!(cfg.workers),
                "breaker" => section!(cfg.breaker),
                "batch" => section!(cfg.batch),
                "kafka" => section!(cfg.kafka),
                "spill" => section!(cfg.spill),
                "dead_letters" => section!(cfg.dead_letters),
                "http" => section!(cfg.http),
                "shard" => section!(cfg.shard),
                "source" => section!(cfg.source),
                "registry" => section!(cfg.registry),
                "devices" => collect_devices(node, path, &owned, &mut raw_devices, &mut errors),
                "device_files" => match yaml::deserialize::<Vec<PathBuf>>(node, key) {
                    Ok(files) => {
                        for f in files {
                            let full = match path.and_then(Path::parent) {
                                Some(dir) if f.is_relative() => dir.join(&f),
                                _ => f.clone(),
                            };
                            load_device_file(&full, &owned, &mut raw_devices, &mut errors);
                            cfg.device_files.push(full);
                        }
                    }
                    Err(e) => errors.push(at(e)),
                },
                other if adapter.sections().contains(&other) => {
                    cfg.protocol.insert(
                        other.to_string(),
                        Settings::from_node(node.clone(), path, Some(line)),
                    );
                }
                other => {
                    let mut sections = CORE_SECTIONS.to_vec();
                    sections.extend_from_slice(adapter.sections());
                    errors.push(
                        ConfigError::new(format!("unknown section `{other}`"))
                            .at(path, Some(line))
                            .hint(format!("sections are {}", sections.join(", "))),
                    )
                }
            }
        }

        check_sections(&cfg, path, &root, &mut errors);

        cfg.devices = finish_devices(raw_devices, cfg.schedule.interval, &mut errors);
        // Devices the core found problems with are still checked by the
        // adapter (every problem at once); the result is an error anyway.
        errors.0.extend(adapter.validate(&cfg));
        if cfg.source == SourceKind::Postgres {
            if let Some((_, line)) = root.get("devices").or_else(|| root.get("device_files")) {
                errors.push(
                    ConfigError::new("`source: postgres` reads the devices from the registry; this file lists devices too")
                        .at(path, Some(line))
                        .hint("import them with `opc-collector registry import`, then remove them here"),
                );
            }
        } else if cfg.devices.is_empty() && errors.is_empty() {
            errors.push(
                ConfigError::new("no devices configured")
                    .at(path, None)
                    .hint("add a `devices:` list or `device_files:` (opc-loadgen serve --write-devices makes one)"),
            );
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            errors.0.sort_by_key(|e| (e.file.clone(), e.line));
            Err(errors)
        }
    }

    /// The devices of a device-file document (a top-level `devices:`
    /// list: an import file, a registry row), checked as the loader checks
    /// a device file, against this configuration's defaults and protocol
    /// sections; `origin` names the document in errors. Each device comes
    /// with its entry as written, as JSON (for tools that store entries).
    /// `expansion` says whether `${VAR}` is replaced from the environment
    /// (a device file, as `device_files` reads it) or scalars are taken
    /// literally (a document from elsewhere, e.g. a registry row, which
    /// must not read this process's environment).
    pub fn devices_from_yaml(
        &self,
        text: &str,
        origin: Option<&Path>,
        expansion: EnvExpansion,
        adapter: &dyn ProtocolConfig,
        limits: LoadLimits,
    ) -> Result<Vec<(Device, serde_json::Value)>, ConfigErrors> {
        let parse = match expansion {
            EnvExpansion::Expand => yaml::parse_within,
            EnvExpansion::Literal => yaml::parse_literal_within,
        };
        let root = parse(text, limits.max_alias_nodes)
            .map_err(|errs| ConfigErrors(errs.into_iter().map(|e| e.at(origin, None)).collect()))?;
        let mut errors = ConfigErrors::default();
        let owned = Owned {
            device_keys: adapter.device_keys(),
            limits,
        };
        let mut raw = Vec::new();
        match root.get("devices") {
            Some((node, _)) => collect_devices(node, origin, &owned, &mut raw, &mut errors),
            None => errors.push(
                ConfigError::new("a device file must have a top-level `devices:` list")
                    .at(origin, Some(root.line())),
            ),
        }
        let entries: Vec<serde_json::Value> = raw.iter().map(|r| r.node.to_json()).collect();
        let mut probe = CollectorConfig {
            devices: Vec::new(),
            ..self.clone()
        };
        probe.devices = finish_devices(raw, self.schedule.interval, &mut errors);
        errors.0.extend(adapter.validate(&probe));
        if !errors.is_empty() {
            errors.0.sort_by_key(|e| (e.file.clone(), e.line));
            return Err(errors);
        }
        Ok(probe.devices.into_iter().zip(entries).collect())
    }
}

/// The core's checks of each entry, and of ids across entries: the valid
/// devices (the caller knows from `errors` whether all were).
fn finish_devices(
    raw_devices: Vec<RawEntry>,
    default_interval: std::time::Duration,
    errors: &mut ConfigErrors,
) -> Vec<Device> {
    let mut devices = Vec::with_capacity(raw_devices.len());
    let mut seen: HashMap<Arc<str>, (Option<PathBuf>, usize)> = HashMap::new();
    for RawEntry {
        raw,
        line,
        file,
        node,
        settings,
    } in raw_devices
    {
        let file_ref = file.as_deref();
        let before = errors.0.len();
        let device = validate_device(raw, default_interval, Some(line), errors)
            .map(|d| d.with_settings(settings));
        for e in &mut errors.0[before..] {
            if e.file.is_none() {
                e.file = file.clone();
            }
            if e.line.is_none() {
                e.line = Some(line);
            }
        }
        if let Some(device) = device {
            if let Some((first_file, first_line)) = seen.get(&device.id) {
                let first = match first_file {
                    Some(f) => format!("{}:{first_line}", f.display()),
                    None => format!("line {first_line}"),
                };
                errors.push(
                    ConfigError::new(format!(
                        "duplicate device id `{}` (first defined at {first})",
                        device.id
                    ))
                    .at(file_ref, node.get("id").map(|(_, l)| l).or(Some(line)))
                    .hint("device ids must be unique across all device files"),
                );
                continue;
            }
            seen.insert(device.id.clone(), (file.clone(), line));
            devices.push(device);
        }
    }
    devices
}

/// Whether `${VAR}` in a document is replaced from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvExpansion {
    /// `${VAR}` and `${VAR:-default}` replaced, `$$` a literal `$` (the
    /// configuration and its device files).
    Expand,
    /// Every scalar as written.
    Literal,
}

/// The sections the core owns.
const CORE_SECTIONS: &[&str] = &[
    "collector",
    "schedule",
    "workers",
    "breaker",
    "batch",
    "kafka",
    "spill",
    "dead_letters",
    "http",
    "shard",
    "source",
    "registry",
    "devices",
    "device_files",
];

/// What the adapter owns of a device entry.
struct Owned<'a> {
    device_keys: &'a [&'static str],
    limits: LoadLimits,
}

/// One device entry as read: the core's part, where it was, and the
/// adapter's part.
struct RawEntry {
    raw: RawDevice,
    line: usize,
    file: Option<PathBuf>,
    node: Node,
    settings: Settings,
}

fn collect_devices(
    node: &Node,
    file: Option<&Path>,
    owned: &Owned<'_>,
    out: &mut Vec<RawEntry>,
    errors: &mut ConfigErrors,
) {
    let Node::Seq { items, .. } = node else {
        errors.push(
            ConfigError::new("`devices` must be a list")
                .at(file, Some(node.line()))
                .hint("write `devices:` followed by `- id: ...` entries"),
        );
        return;
    };
    let max = owned.limits.max_devices_per_file;
    if items.len() > max {
        errors.push(
            ConfigError::new(format!(
                "{} devices in one list; the limit is {max}",
                items.len()
            ))
            .at(file, Some(node.line()))
            .hint("split the devices over several device_files, or use a device registry"),
        );
        return;
    }
    for (i, item) in items.iter().enumerate() {
        let mut adapter_entries = Vec::new();
        if let Node::Map { entries, .. } = item {
            for (key, line, value) in entries.iter() {
                if owned.device_keys.contains(&&**key) {
                    adapter_entries.push((key.clone(), *line, value.clone()));
                } else if !RawDevice::FIELDS.contains(&&**key) {
                    let mut fields = RawDevice::FIELDS.to_vec();
                    fields.extend_from_slice(owned.device_keys);
                    errors.push(
                        ConfigError::new(format!("devices[{i}]: unknown field `{key}`"))
                            .at(file, Some(*line as usize))
                            .hint(format!("device fields are {}", fields.join(", "))),
                    );
                }
            }
        }
        let settings = Settings::from_node(
            Node::Map {
                entries: adapter_entries.into_boxed_slice(),
                line: yaml::line32(item.line()),
            },
            file,
            Some(item.line()),
        );
        let context = format!("devices[{i}]");
        if !matches!(item, Node::Map { .. }) {
            match yaml::deserialize::<RawDevice>(item, &context) {
                Ok(_) => errors.push(
                    ConfigError::new(format!("{context}: a device must be a mapping"))
                        .at(file, Some(item.line())),
                ),
                Err(e) => errors.push(e.at(file, None)),
            }
            continue;
        }
        // Field by field, so that a type error in one (`interval: soon`)
        // neither hides the others nor keeps the adapter from checking the
        // rest of the entry: every problem at once.
        let mut raw = RawDevice::default();
        let field = |key: &str| -> Option<Node> { item.get(key).map(|(n, _)| n.clone()) };
        let mut push = |e: ConfigError| errors.push(e.at(file, None));
        if let Some(n) = field("id") {
            match yaml::deserialize::<Option<String>>(&n, &format!("{context}.id")) {
                Ok(v) => raw.id = v,
                Err(e) => push(e),
            }
        }
        if let Some(n) = field("endpoint") {
            match yaml::deserialize::<Option<String>>(&n, &format!("{context}.endpoint")) {
                Ok(v) => raw.endpoint = v,
                Err(e) => push(e),
            }
        }
        // A device whose interval did not parse is still checked (the load
        // fails on the error anyway).
        if let Some(n) = field("interval") {
            match yaml::deserialize::<IntervalField>(&n, &format!("{context}.interval")) {
                Ok(v) => raw.interval = v.0,
                Err(e) => push(e),
            }
        }
        out.push(RawEntry {
            raw,
            line: item.line(),
            file: file.map(Path::to_path_buf),
            node: item.clone(),
            settings,
        });
    }
}

/// A device's `interval` on its own (`10s`, `500ms`).
#[derive(Default, serde::Deserialize)]
#[serde(transparent)]
struct IntervalField(#[serde(with = "super::model::opt_duration")] Option<std::time::Duration>);

fn load_device_file(
    path: &Path,
    owned: &Owned<'_>,
    out: &mut Vec<RawEntry>,
    errors: &mut ConfigErrors,
) {
    let text = match read_bounded(path, "device file", owned.limits.max_file_bytes) {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            return;
        }
    };
    match yaml::parse_within(&text, owned.limits.max_alias_nodes) {
        Err(errs) => errors
            .0
            .extend(errs.into_iter().map(|e| e.at(Some(path), None))),
        Ok(root) => match root.get("devices") {
            Some((node, _)) => collect_devices(node, Some(path), owned, out, errors),
            None => errors.push(
                ConfigError::new("a device file must have a top-level `devices:` list")
                    .at(Some(path), Some(root.line())),
            ),
        },
    }
}

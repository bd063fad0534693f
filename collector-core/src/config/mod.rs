//! Configuration: the model (serde structs with documented defaults), YAML
//! loading with `${ENV}` expansion, and validation that reports every
//! problem at once with `file:line` and a hint.
//!
//! The core owns the engine's sections (collector, schedule, workers,
//! breaker, batch, kafka, spill, http) and a device's `id`, `endpoint` and
//! `interval`; the protocol adapter owns the rest (its sections and its
//! keys of each device entry, kept as [`Settings`]) and checks them through
//! [`ProtocolConfig`]. Validation is pure (no network, no sessions);
//! building the pipeline does the I/O.

mod kafka;
mod model;
mod secret;
mod settings;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use kafka::{KafkaConfig, KafkaSasl, KafkaTls, SASL_MECHANISMS};
pub use model::{
    duration, BatchConfig, BreakerConfig, CollectorSection, HttpConfig, ScheduleConfig,
    SpillSection, WorkerConfig,
};
pub use secret::{Secret, SecretSource};
pub use settings::{NoProtocolConfig, ProtocolConfig, Settings};

use crate::error::{ConfigError, ConfigErrors};
use model::RawDevice;
use yaml::Node;

/// The smallest read interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The whole configuration of one collector.
#[derive(Debug, Clone, Default)]
pub struct CollectorConfig {
    /// Identity and state.
    pub collector: CollectorSection,
    /// Default read interval.
    pub schedule: ScheduleConfig,
    /// Read concurrency.
    pub workers: WorkerConfig,
    /// Per-device circuit breaker.
    pub breaker: BreakerConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// The Kafka sink.
    pub kafka: KafkaConfig,
    /// The disk spill.
    pub spill: SpillSection,
    /// The daemon's HTTP server.
    pub http: HttpConfig,
    /// The protocol adapter's own top-level sections, as written (for OPC
    /// UA: `security`, `session`), by section name.
    pub protocol: BTreeMap<String, Settings>,
    /// The devices to read, validated.
    pub devices: Vec<Device>,
}

/// A device to read: what the engine needs (identity, endpoint, schedule)
/// and what its protocol adapter reads from it ([`Settings`], e.g. OPC UA
/// node ids and security), which the core never interprets.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Unique id; the Kafka key of its records.
    pub id: Arc<str>,
    /// Endpoint URL (`scheme://...`, e.g. `opc.tcp://plc-1:4840`); the
    /// adapter checks the scheme.
    pub endpoint: String,
    /// Read interval.
    pub interval: Duration,
    /// The adapter's settings of this device, as written.
    pub settings: Settings,
}

impl Device {
    /// Builds a device in code (what the YAML loader does per entry, for the
    /// core's part); add the adapter's part with [`Device::with_settings`].
    pub fn new(
        id: impl Into<Arc<str>>,
        endpoint: impl Into<String>,
        interval: Duration,
    ) -> Result<Device, ConfigErrors> {
        let raw = RawDevice {
            id: Some(id.into().to_string()),
            endpoint: Some(endpoint.into()),
            interval: Some(interval),
        };
        let mut errors = ConfigErrors::default();
        let device = validate_device(raw, interval, None, &mut errors);
        match device {
            Some(d) if errors.is_empty() => Ok(d),
            _ => Err(errors),
        }
    }

    /// The device with the adapter's settings `settings`.
    pub fn with_settings(mut self, settings: Settings) -> Device {
        self.settings = settings;
        self
    }
}

impl CollectorConfig {
    /// Loads and validates a YAML configuration file (and the device files
    /// it names), reporting every problem found, the adapter's included.
    pub fn load(
        path: &Path,
        adapter: &dyn ProtocolConfig,
    ) -> Result<CollectorConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![
                ConfigError::new(format!("cannot read config: {e}")).at(Some(path), None)
            ])
        })?;
        Self::from_yaml(&text, Some(path), adapter)
    }

    /// Parses and validates YAML text; `path` (if any) names the file in
    /// errors and anchors relative `device_files`.
    pub fn from_yaml(
        text: &str,
        path: Option<&Path>,
        adapter: &dyn ProtocolConfig,
    ) -> Result<CollectorConfig, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let root = match yaml::parse(text) {
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
        };

        let Node::Map { entries, .. } = &root else {
            errors.push(
                ConfigError::new("the configuration must be a mapping of sections")
                    .at(path, Some(root.line()))
                    .hint("see config/default.yaml"),
            );
            return Err(errors);
        };
        for (key, line, node) in entries {
            let at = |e: ConfigError| e.at(path, None);
            macro_rules! section {
                ($field:expr) => {
                    match yaml::deserialize(node, key) {
                        Ok(v) => $field = v,
                        Err(e) => errors.push(at(e)),
                    }
                };
            }
            match key.as_str() {
                "collector" => section!(cfg.collector),
                "schedule" => section!(cfg.schedule),
                "workers" => section!(cfg.workers),
                "breaker" => section!(cfg.breaker),
                "batch" => section!(cfg.batch),
                "kafka" => section!(cfg.kafka),
                "spill" => section!(cfg.spill),
                "http" => section!(cfg.http),
                "devices" => collect_devices(node, path, &owned, &mut raw_devices, &mut errors),
                "device_files" => match yaml::deserialize::<Vec<PathBuf>>(node, key) {
                    Ok(files) => {
                        for f in files {
                            let full = match path.and_then(Path::parent) {
                                Some(dir) if f.is_relative() => dir.join(&f),
                                _ => f.clone(),
                            };
                            load_device_file(&full, &owned, &mut raw_devices, &mut errors);
                        }
                    }
                    Err(e) => errors.push(at(e)),
                },
                other if adapter.sections().contains(&other) => {
                    cfg.protocol.insert(
                        other.to_string(),
                        Settings::from_node(node.clone(), path, Some(*line)),
                    );
                }
                other => {
                    let mut sections = CORE_SECTIONS.to_vec();
                    sections.extend_from_slice(adapter.sections());
                    errors.push(
                        ConfigError::new(format!("unknown section `{other}`"))
                            .at(path, Some(*line))
                            .hint(format!("sections are {}", sections.join(", "))),
                    )
                }
            }
        }

        check_sections(&cfg, path, &root, &mut errors);

        let default_interval = cfg.schedule.interval;
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
            let device = validate_device(raw, default_interval, Some(line), &mut errors)
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
                cfg.devices.push(device);
            }
        }
        // Devices the core found problems with are still checked by the
        // adapter (every problem at once); the result is an error anyway.
        errors.0.extend(adapter.validate(&cfg));
        if cfg.devices.is_empty() && errors.is_empty() {
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

    /// Checks a configuration built in code: the core's sections and
    /// devices (the adapter checks its own part when it is created).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let root = Node::Map {
            entries: Vec::new(),
            line: 0,
        };
        check_sections(self, None, &root, &mut errors);
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            if !seen.insert(d.id.clone()) {
                errors.push(ConfigError::new(format!("duplicate device id `{}`", d.id)));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The spill store's settings, or None when no directory is configured.
    pub fn spill_config(&self) -> Option<crate::spill::SpillConfig> {
        let dir = self
            .spill
            .dir
            .clone()
            .or_else(|| self.collector.state_dir.as_ref().map(|d| d.join("spill")))?;
        let mut c = crate::spill::SpillConfig::new(dir);
        c.max_bytes = self.spill.max_bytes;
        c.ttl = self.spill.ttl;
        c.segment_bytes = self.spill.segment_bytes;
        c.backend = self.spill.backend;
        Some(c)
    }

    /// The collector id: configured, else `$HOSTNAME`, else `opc-collector`.
    pub fn collector_id(&self) -> String {
        self.collector
            .id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "opc-collector".to_string())
    }
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
    "http",
    "devices",
    "device_files",
];

/// What the adapter owns of a device entry.
struct Owned<'a> {
    device_keys: &'a [&'static str],
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
    for (i, item) in items.iter().enumerate() {
        let mut adapter_entries = Vec::new();
        if let Node::Map { entries, .. } = item {
            for (key, line, value) in entries {
                if owned.device_keys.contains(&key.as_str()) {
                    adapter_entries.push((key.clone(), *line, value.clone()));
                } else if !RawDevice::FIELDS.contains(&key.as_str()) {
                    let mut fields = RawDevice::FIELDS.to_vec();
                    fields.extend_from_slice(owned.device_keys);
                    errors.push(
                        ConfigError::new(format!("devices[{i}]: unknown field `{key}`"))
                            .at(file, Some(*line))
                            .hint(format!("device fields are {}", fields.join(", "))),
                    );
                }
            }
        }
        let settings = Settings::from_node(
            Node::Map {
                entries: adapter_entries,
                line: item.line(),
            },
            file,
            Some(item.line()),
        );
        match yaml::deserialize::<RawDevice>(item, &format!("devices[{i}]")) {
            Ok(raw) => out.push(RawEntry {
                raw,
                line: item.line(),
                file: file.map(Path::to_path_buf),
                node: item.clone(),
                settings,
            }),
            Err(e) => errors.push(e.at(file, None)),
        }
    }
}

fn load_device_file(
    path: &Path,
    owned: &Owned<'_>,
    out: &mut Vec<RawEntry>,
    errors: &mut ConfigErrors,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(
                ConfigError::new(format!("cannot read device file: {e}")).at(Some(path), None),
            );
            return;
        }
    };
    match yaml::parse(&text) {
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

/// Whether `s` looks like `scheme://rest` (the adapter checks the scheme).
fn is_url(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// The core's checks of a device entry. Returns the device whenever it has
/// an id, problems or not, so the adapter can report its own problems with
/// the same entry; the caller knows from `errors` whether it is valid.
fn validate_device(
    raw: RawDevice,
    default_interval: Duration,
    line: Option<usize>,
    errors: &mut ConfigErrors,
) -> Option<Device> {
    let id = match raw.id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            errors.push(
                ConfigError::new("device has no `id`")
                    .at(None, line)
                    .hint("every device needs a unique id"),
            );
            return None;
        }
    };
    let endpoint = match raw.endpoint.as_deref().map(str::trim) {
        Some(e) if is_url(e) => e.to_string(),
        Some(e) => {
            errors.push(
                ConfigError::new(format!("device `{id}`: endpoint {e:?} is not a URL"))
                    .at(None, line)
                    .hint("write e.g. opc.tcp://plc-1.example:4840"),
            );
            e.to_string()
        }
        None => {
            errors.push(
                ConfigError::new(format!("device `{id}`: missing `endpoint`"))
                    .at(None, line)
                    .hint("add e.g. `endpoint: opc.tcp://host:port`"),
            );
            String::new()
        }
    };
    let interval = raw.interval.unwrap_or(default_interval);
    if interval < MIN_INTERVAL {
        errors.push(
            ConfigError::new(format!(
                "device `{id}`: interval {interval:?} is below the minimum of 10ms"
            ))
            .at(None, line),
        );
    }
    Some(Device {
        id: Arc::from(id),
        endpoint,
        interval,
        settings: Settings::default(),
    })
}

fn check_sections(
    cfg: &CollectorConfig,
    path: Option<&Path>,
    root: &Node,
    errors: &mut ConfigErrors,
) {
    let line_of = |section: &str, field: &str| {
        root.get(section)
            .and_then(|(n, l)| n.get(field).map(|(_, fl)| fl).or(Some(l)))
    };
    let mut check = |cond: bool, section: &str, field: &str, msg: &str| {
        if !cond {
            errors.push(
                ConfigError::new(format!("{section}.{field}: {msg}"))
                    .at(path, line_of(section, field)),
            );
        }
    };
    check(
        cfg.schedule.interval >= MIN_INTERVAL,
        "schedule",
        "interval",
        "must be at least 10ms",
    );
    check(
        cfg.workers.permits >= 1,
        "workers",
        "permits",
        "must be at least 1",
    );
    check(
        !cfg.batch.interval.is_zero(),
        "batch",
        "interval",
        "must be > 0",
    );
    check(
        cfg.batch.max_records >= 1,
        "batch",
        "max_records",
        "must be at least 1",
    );
    check(
        cfg.batch.max_bytes >= 1024,
        "batch",
        "max_bytes",
        "must be at least 1KiB",
    );
    check(
        cfg.batch.max_in_flight >= 1,
        "batch",
        "max_in_flight",
        "must be at least 1",
    );
    check(
        cfg.batch.queue_capacity >= 1,
        "batch",
        "queue_capacity",
        "must be at least 1",
    );
    check(
        !cfg.kafka.brokers.trim().is_empty(),
        "kafka",
        "brokers",
        "must name at least one broker",
    );
    check(
        !cfg.kafka.topic.is_empty()
            && cfg.kafka.topic.len() <= 249
            && cfg
                .kafka
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "kafka",
        "topic",
        "must be 1-249 characters of [a-zA-Z0-9._-]",
    );
    check(
        ["none", "gzip", "snappy", "lz4", "zstd"].contains(&cfg.kafka.compression.as_str()),
        "kafka",
        "compression",
        "must be one of none, gzip, snappy, lz4, zstd",
    );
    check(
        !cfg.kafka.message_timeout.is_zero(),
        "kafka",
        "message_timeout",
        "must be > 0",
    );
    if let Some(id) = &cfg.collector.id {
        check(
            !id.trim().is_empty(),
            "collector",
            "id",
            "must not be empty",
        );
    }
    for (field, msg) in kafka::check_kafka(&cfg.kafka) {
        errors.push(
            ConfigError::new(msg)
                .at(path, line_of("kafka", field))
                .hint("see docs/security.md"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An adapter that owns a `nodes:` key per device and a `plc:` section,
    /// and checks that every device has nodes.
    struct TestAdapter;

    impl ProtocolConfig for TestAdapter {
        fn sections(&self) -> &[&'static str] {
            &["plc"]
        }

        fn device_keys(&self) -> &[&'static str] {
            &["nodes"]
        }

        fn validate(&self, cfg: &CollectorConfig) -> Vec<ConfigError> {
            cfg.devices
                .iter()
                .filter_map(|d| match d.settings.get::<Vec<String>>("nodes", "nodes") {
                    Ok(n) if n.is_empty() => Some(d.settings.error(None, "no nodes")),
                    Ok(n) => n.iter().position(|n| n.contains("two")).map(|i| {
                        d.settings
                            .item_error("nodes", i, format!("bad node {}", n[i]))
                    }),
                    Err(e) => Some(e),
                })
                .collect()
        }
    }

    #[test]
    fn loads_defaults_and_devices() {
        let cfg = CollectorConfig::from_yaml(
            "kafka:\n  brokers: k:9092\nplc:\n  speed: 3\ndevices:\n  - id: a\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n    interval: 1s\n",
            None,
            &TestAdapter,
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "k:9092");
        assert_eq!(cfg.workers.permits, 100);
        assert_eq!(cfg.devices.len(), 1);
        assert_eq!(cfg.devices[0].interval, Duration::from_secs(1));
        assert_eq!(
            cfg.devices[0].settings.to_json(),
            serde_json::json!({"nodes": ["ns=2;s=T"]})
        );
        assert_eq!(
            cfg.protocol["plc"].to_json(),
            serde_json::json!({"speed": 3})
        );
    }

    /// Settings that say the same thing are equal wherever they are
    /// written (a device that only moved in its file is unchanged).
    #[test]
    fn settings_compare_by_content_not_position() {
        let text = "devices:\n  - id: a\n    endpoint: x://h\n    nodes: [n1]\n";
        let moved = "devices:\n\n\n  - id: a\n    endpoint: x://h\n    nodes:\n      - n1\n";
        let a = CollectorConfig::from_yaml(text, None, &TestAdapter).unwrap();
        let b = CollectorConfig::from_yaml(moved, None, &TestAdapter).unwrap();
        assert_eq!(a.devices, b.devices);
        let coded = Device::new("a", "x://h", a.devices[0].interval)
            .unwrap()
            .with_settings(Settings::from_json(serde_json::json!({"nodes": ["n1"]})));
        assert_eq!(a.devices[0], coded);
    }

    /// A misspelt backend used to mean the segment log, silently.
    #[test]
    fn an_unknown_spill_backend_is_an_error_with_its_line() {
        let text = "kafka:\n  brokers: k:9092\nspill:\n  backend: sledd\n";
        let errs =
            CollectorConfig::from_yaml(text, Some(Path::new("c.yaml")), &TestAdapter).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("c.yaml:4:"), "{msgs:?}");
        assert!(msgs[0].contains("sledd"), "{msgs:?}");
        let sled = CollectorConfig::from_yaml(
            "kafka:\n  brokers: k:9092\nspill:\n  backend: sled\n  dir: /tmp/x\ndevices:\n  - id: a\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n",
            None,
            &TestAdapter,
        )
        .unwrap();
        assert_eq!(
            sled.spill_config().unwrap().backend,
            crate::spill::SpillBackend::Sled
        );
    }

    /// The core's problems and the adapter's, all at once, each at its line;
    /// keys neither owns are reported with both lists.
    #[test]
    fn reports_every_problem_with_lines() {
        let text = "\
kafka:
  brokers: k:9092
  bogus: 1
devices:
  - id: a
    endpoint: opc.tcp://h:4840
    nodes: [\"ns=2;s=T\"]
  - id: b
    endpoint: opc.tcp://h:4841
    nodes:
      - ns=2;s=ok
      - ns=two;s=T
  - id: a
    endpoint: opc.tcp://h:4842
    nodes: [\"ns=2;s=T\"]
  - id: c
    nodes: [\"ns=2;s=T\"]
  - id: d
    endpoint: opc.tcp://h:4843
    nodes: [\"ns=2;s=T\"]
    interval: soon
  - id: e
    endpoint: not a url
    nodes: [n]
    colour: red
unknown_section: 1
";
        let errs =
            CollectorConfig::from_yaml(text, Some(Path::new("c.yaml")), &TestAdapter).unwrap_err();
        let lines: Vec<(usize, String)> = errs
            .iter()
            .map(|e| (e.line.unwrap(), e.message.clone()))
            .collect();
        let has =
            |line: usize, text: &str| lines.iter().any(|(l, m)| *l == line && m.contains(text));
        assert_eq!(errs.0.len(), 8, "{errs}");
        assert!(has(3, "bogus"), "{lines:?}");
        assert!(has(12, "bad node ns=two"), "{lines:?}");
        assert!(has(13, "duplicate"), "{lines:?}");
        assert!(has(16, "missing `endpoint`"), "{lines:?}");
        assert!(has(21, "invalid duration"), "{lines:?}");
        assert!(has(22, "is not a URL"), "{lines:?}");
        assert!(has(25, "unknown field `colour`"), "{lines:?}");
        assert!(has(26, "unknown section `unknown_section`"), "{lines:?}");
        let text = errs.to_string();
        assert!(text.contains("c.yaml:3:"), "{text}");
        assert!(text.contains("id, endpoint, interval, nodes"), "{text}");
        assert!(text.contains("plc"), "{text}");
    }
}

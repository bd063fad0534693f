//! Configuration: the model (serde structs with documented defaults), YAML
//! loading with `${ENV}` expansion, and validation that reports every
//! problem at once with `file:line` and a hint.
//!
//! Validation is pure (no network, no sessions); building the pipeline
//! does the I/O.

mod model;
mod node_id;
mod security;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use model::{
    BatchConfig, BreakerConfig, CollectorSection, HttpConfig, KafkaConfig, ScheduleConfig,
    SessionConfig, SpillSection, WorkerConfig,
};
pub use node_id::{Identifier, Namespace, NodeAddress};
pub use security::{
    kafka_security_properties, DeviceSecurity, Fingerprint, Identity, KafkaSasl, KafkaTls, Secret,
    SecretSource, SecurityMode, SecurityPolicy, SecuritySection, TrustMode, UserCertificate,
    UserPassword, SASL_MECHANISMS,
};

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
    /// Session and read behaviour.
    pub session: SessionConfig,
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
    /// OPC UA security defaults and the client certificate.
    pub security: SecuritySection,
    /// The devices to read, validated.
    pub devices: Vec<Device>,
}

/// A device to read, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Unique id; the Kafka key of its records.
    pub id: Arc<str>,
    /// Endpoint URL, e.g. `opc.tcp://plc-1:4840`.
    pub endpoint: String,
    /// Nodes read on every tick, in this order.
    pub nodes: Vec<NodeAddress>,
    /// Read interval.
    pub interval: Duration,
    /// Security policy, mode, trust and identity.
    pub security: DeviceSecurity,
}

impl Device {
    /// Builds a device in code (what the YAML loader does per entry).
    pub fn new(
        id: impl Into<Arc<str>>,
        endpoint: impl Into<String>,
        nodes: &[&str],
        interval: Duration,
    ) -> Result<Device, ConfigErrors> {
        let raw = RawDevice {
            id: Some(id.into().to_string()),
            endpoint: Some(endpoint.into()),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            interval: Some(interval),
            security: None,
        };
        let mut errors = ConfigErrors::default();
        let fleet = SecuritySection::default();
        let device = validate_device(raw, interval, &fleet, None, &|_| None, &mut errors);
        match device {
            Some(d) if errors.is_empty() => Ok(d),
            _ => Err(errors),
        }
    }
}

impl CollectorConfig {
    /// Loads and validates a YAML configuration file (and the device files
    /// it names), reporting every problem found.
    pub fn load(path: &Path) -> Result<CollectorConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![
                ConfigError::new(format!("cannot read config: {e}")).at(Some(path), None)
            ])
        })?;
        Self::from_yaml(&text, Some(path))
    }

    /// Parses and validates YAML text; `path` (if any) names the file in
    /// errors and anchors relative `device_files`.
    pub fn from_yaml(text: &str, path: Option<&Path>) -> Result<CollectorConfig, ConfigErrors> {
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
        let mut raw_devices: Vec<(RawDevice, usize, Option<PathBuf>, Node)> = Vec::new();

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
                "session" => section!(cfg.session),
                "breaker" => section!(cfg.breaker),
                "batch" => section!(cfg.batch),
                "kafka" => section!(cfg.kafka),
                "spill" => section!(cfg.spill),
                "http" => section!(cfg.http),
                "security" => section!(cfg.security),
                "devices" => collect_devices(node, path, &mut raw_devices, &mut errors),
                "device_files" => match yaml::deserialize::<Vec<PathBuf>>(node, key) {
                    Ok(files) => {
                        for f in files {
                            let full = match path.and_then(Path::parent) {
                                Some(dir) if f.is_relative() => dir.join(&f),
                                _ => f.clone(),
                            };
                            load_device_file(&full, &mut raw_devices, &mut errors);
                        }
                    }
                    Err(e) => errors.push(at(e)),
                },
                other => errors.push(
                    ConfigError::new(format!("unknown section `{other}`"))
                        .at(path, Some(*line))
                        .hint("sections are collector, schedule, workers, session, security, breaker, batch, kafka, spill, http, devices, device_files"),
                ),
            }
        }

        check_sections(&cfg, path, &root, &mut errors);

        let default_interval = cfg.schedule.interval;
        let mut seen: HashMap<Arc<str>, (Option<PathBuf>, usize)> = HashMap::new();
        for (raw, line, file, node) in raw_devices {
            let file_ref = file.as_deref();
            let node_line = |i: usize| match node.get("nodes") {
                Some((Node::Seq { items, .. }, _)) => items.get(i).map(Node::line),
                _ => None,
            };
            let before = errors.0.len();
            let device = validate_device(
                raw,
                default_interval,
                &cfg.security,
                Some(line),
                &node_line,
                &mut errors,
            );
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

    /// Checks a configuration built in code (sections and devices).
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

fn collect_devices(
    node: &Node,
    file: Option<&Path>,
    out: &mut Vec<(RawDevice, usize, Option<PathBuf>, Node)>,
    errors: &mut ConfigErrors,
) {
    let Node::Seq { items, .. } = node else {
        errors.push(
            ConfigError::new("`devices` must be a list")
                .at(file, Some(node.line()))
                .hint("devices:\n  - id: plc-1\n    endpoint: opc.tcp://host:4840\n    nodes: [\"ns=2;s=Tag1\"]"),
        );
        return;
    };
    for (i, item) in items.iter().enumerate() {
        if let Node::Map { entries, .. } = item {
            for (key, line, _) in entries {
                if !RawDevice::FIELDS.contains(&key.as_str()) {
                    errors.push(
                        ConfigError::new(format!("devices[{i}]: unknown field `{key}`"))
                            .at(file, Some(*line))
                            .hint(format!(
                                "device fields are {}",
                                RawDevice::FIELDS.join(", ")
                            )),
                    );
                }
            }
        }
        match yaml::deserialize::<RawDevice>(item, &format!("devices[{i}]")) {
            Ok(raw) => out.push((raw, item.line(), file.map(Path::to_path_buf), item.clone())),
            Err(e) => errors.push(e.at(file, None)),
        }
    }
}

fn load_device_file(
    path: &Path,
    out: &mut Vec<(RawDevice, usize, Option<PathBuf>, Node)>,
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
            Some((node, _)) => collect_devices(node, Some(path), out, errors),
            None => errors.push(
                ConfigError::new("a device file must have a top-level `devices:` list")
                    .at(Some(path), Some(root.line())),
            ),
        },
    }
}

fn validate_device(
    raw: RawDevice,
    default_interval: Duration,
    fleet: &SecuritySection,
    line: Option<usize>,
    node_line: &dyn Fn(usize) -> Option<usize>,
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
    let mut ok = true;
    let endpoint = match raw.endpoint.as_deref().map(str::trim) {
        Some(e) if e.starts_with("opc.tcp://") && e.len() > "opc.tcp://".len() => e.to_string(),
        Some(e) => {
            errors.push(
                ConfigError::new(format!(
                    "device `{id}`: endpoint {e:?} is not an opc.tcp:// URL"
                ))
                .at(None, line)
                .hint("write e.g. opc.tcp://plc-1.example:4840"),
            );
            ok = false;
            String::new()
        }
        None => {
            errors.push(
                ConfigError::new(format!("device `{id}`: missing `endpoint`"))
                    .at(None, line)
                    .hint("add `endpoint: opc.tcp://host:port`"),
            );
            ok = false;
            String::new()
        }
    };
    if raw.nodes.is_empty() {
        errors.push(
            ConfigError::new(format!("device `{id}`: no `nodes` to read"))
                .at(None, line)
                .hint("add `nodes: [\"ns=2;s=Tag1\"]`"),
        );
        ok = false;
    }
    let mut nodes = Vec::with_capacity(raw.nodes.len());
    for (i, text) in raw.nodes.iter().enumerate() {
        match text.parse::<NodeAddress>() {
            Ok(n) => nodes.push(n),
            Err(msg) => {
                errors.push(
                    ConfigError::new(format!("device `{id}`: {msg}"))
                        .at(None, node_line(i).or(line))
                        .hint("node ids look like `ns=2;s=Name`, `ns=3;i=1001` or `nsu=urn:vendor:ns;s=Name`"),
                );
                ok = false;
            }
        }
    }
    let interval = raw.interval.unwrap_or(default_interval);
    if interval < MIN_INTERVAL {
        errors.push(
            ConfigError::new(format!(
                "device `{id}`: interval {interval:?} is below the minimum of 10ms"
            ))
            .at(None, line),
        );
        ok = false;
    }
    let security = match fleet.resolve(raw.security.as_ref()) {
        Ok(s) => s,
        Err(msgs) => {
            for m in msgs {
                errors.push(
                    ConfigError::new(format!("device `{id}`: {m}"))
                        .at(None, line)
                        .hint("see docs/security.md"),
                );
            }
            ok = false;
            DeviceSecurity::default()
        }
    };
    ok.then(|| Device {
        id: Arc::from(id),
        endpoint,
        nodes,
        interval,
        security,
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
        !cfg.session.connect_timeout.is_zero(),
        "session",
        "connect_timeout",
        "must be > 0",
    );
    check(
        !cfg.session.read_timeout.is_zero(),
        "session",
        "read_timeout",
        "must be > 0",
    );
    check(
        cfg.session.max_connects_per_second >= 1,
        "session",
        "max_connects_per_second",
        "must be at least 1",
    );
    check(
        cfg.session.reconnect_initial <= cfg.session.reconnect_max,
        "session",
        "reconnect_initial",
        "must not exceed reconnect_max",
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
    for msg in cfg.security.check() {
        let field = msg
            .strip_prefix("security.")
            .and_then(|m| m.split([':', '.']).next())
            .unwrap_or("");
        errors.push(
            ConfigError::new(msg.clone())
                .at(path, line_of("security", field))
                .hint("see docs/security.md"),
        );
    }
    for (field, msg) in security::check_kafka(&cfg.kafka) {
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

    #[test]
    fn loads_defaults_and_devices() {
        let cfg = CollectorConfig::from_yaml(
            "kafka:\n  brokers: k:9092\ndevices:\n  - id: a\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n    interval: 1s\n",
            None,
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "k:9092");
        assert_eq!(cfg.workers.permits, 100);
        assert_eq!(cfg.devices.len(), 1);
        assert_eq!(cfg.devices[0].interval, Duration::from_secs(1));
    }

    #[test]
    fn device_security_overrides_the_fleet_defaults() {
        std::env::set_var("OPC_COLLECTOR_TEST_PW", "pw");
        let text = "\
security:
  policy: basic256sha256
  user: { username: fleet, password_env: OPC_COLLECTOR_TEST_PW }
devices:
  - id: a
    endpoint: opc.tcp://h:4840
    nodes: [\"ns=2;s=T\"]
  - id: b
    endpoint: opc.tcp://h:4841
    nodes: [\"ns=2;s=T\"]
    security:
      mode: sign
      server_fingerprint: \"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"
      user_certificate: { cert: Cargo.toml, key: Cargo.toml }
  - id: c
    endpoint: opc.tcp://h:4842
    nodes: [\"ns=2;s=T\"]
    security:
      server_fingerprint: nope
      policy: none
      mode: sign_and_encrypt
";
        let errs = CollectorConfig::from_yaml(text, Some(Path::new("s.yaml"))).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs.iter()
                .all(|m| m.starts_with("s.yaml:15:") && m.contains("device `c`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("server_fingerprint")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("policy None cannot sign")),
            "{msgs:?}"
        );

        let ok = text.split("  - id: c").next().unwrap();
        let cfg = CollectorConfig::from_yaml(ok, None).unwrap();
        let (a, b) = (&cfg.devices[0].security, &cfg.devices[1].security);
        assert_eq!(a.policy, SecurityPolicy::Basic256Sha256);
        assert_eq!(a.mode, SecurityMode::Auto);
        assert!(matches!(&a.identity, Identity::UserName { username, .. } if username == "fleet"));
        assert_eq!(b.policy, SecurityPolicy::Basic256Sha256);
        assert_eq!(b.mode, SecurityMode::Sign);
        assert!(matches!(b.identity, Identity::Certificate { .. }));
        assert_eq!(b.server_fingerprint.unwrap().0[1], 0x11);
    }

    /// A misspelt backend used to mean the segment log, silently.
    #[test]
    fn an_unknown_spill_backend_is_an_error_with_its_line() {
        let text = "kafka:\n  brokers: k:9092\nspill:\n  backend: sledd\n";
        let errs = CollectorConfig::from_yaml(text, Some(Path::new("c.yaml"))).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("c.yaml:4:"), "{msgs:?}");
        assert!(msgs[0].contains("sledd"), "{msgs:?}");
        let sled = CollectorConfig::from_yaml(
            "kafka:\n  brokers: k:9092\nspill:\n  backend: sled\n  dir: /tmp/x\ndevices:\n  - id: a\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n",
            None,
        )
        .unwrap();
        assert_eq!(
            sled.spill_config().unwrap().backend,
            crate::spill::SpillBackend::Sled
        );
    }

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
";
        let errs = CollectorConfig::from_yaml(text, Some(Path::new("c.yaml"))).unwrap_err();
        let lines: Vec<(usize, String)> = errs
            .iter()
            .map(|e| (e.line.unwrap(), e.message.clone()))
            .collect();
        assert_eq!(errs.0.len(), 5, "{errs}");
        assert!(
            lines.iter().any(|(l, m)| *l == 3 && m.contains("bogus")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|(l, m)| *l == 12 && m.contains("ns=two")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 13 && m.contains("duplicate")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 16 && m.contains("missing `endpoint`")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 21 && m.contains("invalid duration")),
            "{lines:?}"
        );
        assert!(errs.to_string().contains("c.yaml:3:"));
    }
}

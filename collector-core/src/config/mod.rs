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

mod check;
mod device;
mod kafka;
mod load;
mod model;
#[cfg(test)]
mod props;
mod registry;
mod secret;
mod settings;
mod yaml;

use std::collections::BTreeMap;

pub use device::{check_device_id, check_endpoint, Device, MAX_DEVICE_ID_LEN};
pub use kafka::{KafkaConfig, KafkaSasl, KafkaTls, RecordEncoding, SASL_MECHANISMS};
pub use load::{EnvExpansion, LoadLimits, MAX_DEVICES_PER_FILE, MAX_FILE_BYTES};
pub use model::{
    byte_size, duration, opt_duration, parse_byte_size, BatchConfig, BreakerConfig,
    CollectorSection, DeadLetterSection, HttpConfig, ScheduleConfig, ShardSection, SpillSection,
    WorkerConfig, MIN_PHASE_SLOTS, READS_PER_PHASE,
};
pub use registry::{
    check_connection_string, RegistrySection, RegistryUrl, SourceKind, REGISTRY_MAX_SHARDS,
};
pub use secret::{Secret, SecretSource};
pub use settings::{NoProtocolConfig, ProtocolConfig, Settings};

use crate::error::{ConfigError, ConfigErrors};
use check::check_sections;
use yaml::Node;

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
    /// Records the sink refused for good.
    pub dead_letters: DeadLetterSection,
    /// The daemon's HTTP server.
    pub http: HttpConfig,
    /// This replica's part of a fleet.
    pub shard: ShardSection,
    /// Where the device list comes from: `file` (default) or `postgres`.
    pub source: SourceKind,
    /// The device registry, for `source: postgres`.
    pub registry: RegistrySection,
    /// The device files read (`device_files`, resolved against the
    /// configuration's directory), for watching.
    pub device_files: Vec<std::path::PathBuf>,
    /// The protocol adapter's own top-level sections, as written (for OPC
    /// UA: `security`, `session`), by section name.
    pub protocol: BTreeMap<String, Settings>,
    /// The devices to read, validated.
    pub devices: Vec<Device>,
}

impl CollectorConfig {
    /// Checks a configuration built in code: the core's sections and
    /// devices (the adapter checks its own part when it is created).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let root = Node::empty_map(0);
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

    /// The dead-letter store's settings, or None when no directory is
    /// configured (see [`DeadLetterSection::dir`]).
    pub fn dead_letter_config(&self) -> Option<crate::spill::SpillConfig> {
        let dir = self
            .dead_letters
            .dir
            .clone()
            .or_else(|| {
                self.collector
                    .state_dir
                    .as_ref()
                    .map(|d| d.join("dead-letters"))
            })
            .or_else(|| {
                self.spill.dir.as_ref().map(|d| {
                    let mut name = d.as_os_str().to_owned();
                    name.push(".dead-letters");
                    std::path::PathBuf::from(name)
                })
            })?;
        let mut c = crate::spill::SpillConfig::new(dir);
        c.max_bytes = self.dead_letters.max_bytes;
        c.ttl = self.dead_letters.ttl;
        c.segment_bytes = self.spill.segment_bytes;
        c.backend = crate::spill::SpillBackend::SegmentLog;
        c.role = crate::spill::StoreRole::DeadLetters;
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

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

    /// A file over the size limit is refused before it is read (a sparse
    /// file: nothing is written or read).
    #[test]
    fn an_oversized_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.yaml");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let errs = CollectorConfig::load(&path, &TestAdapter).unwrap_err();
        let msg = errs.to_string();
        assert!(
            msg.contains("huge.yaml") && msg.contains("the limit is"),
            "{msg}"
        );
    }

    /// An alias bomb in a configuration is a config error with its file.
    #[test]
    fn an_alias_bomb_is_a_config_error() {
        let text = yaml::alias_bomb();
        let errs = CollectorConfig::from_yaml(&text, Some(Path::new("bomb.yaml")), &TestAdapter)
            .unwrap_err();
        assert!(errs.to_string().starts_with("bomb.yaml:"), "{errs}");
        assert!(errs.to_string().contains("alias bomb"), "{errs}");
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

    /// `kafka.encoding` takes `json` or `protobuf`; anything else is named
    /// at its line.
    #[test]
    fn kafka_encoding_is_json_or_protobuf() {
        let yaml = |enc: &str| {
            format!(
                "kafka:\n  brokers: k:9092\n  encoding: {enc}\ndevices:\n  - id: a\n    \
                 endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n"
            )
        };
        let parsed = |enc: &str| {
            CollectorConfig::from_yaml(&yaml(enc), Some(Path::new("c.yaml")), &TestAdapter)
                .map(|c| c.kafka.encoding)
        };
        assert_eq!(parsed("protobuf").unwrap(), RecordEncoding::Protobuf);
        assert_eq!(parsed("json").unwrap(), RecordEncoding::Json);
        let errs = parsed("avro").unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("c.yaml:3:"), "{msgs:?}");
        assert!(msgs[0].contains("avro"), "{msgs:?}");
    }

    #[test]
    fn phase_slots_default_to_one_per_twenty_devices_and_at_least_a_hundred() {
        let auto = ScheduleConfig::default();
        assert_eq!(auto.phase_slots_for(0), 100);
        assert_eq!(auto.phase_slots_for(2_000), 100);
        assert_eq!(auto.phase_slots_for(2_001), 101);
        assert_eq!(auto.phase_slots_for(19_000), 950);
        let set = ScheduleConfig {
            phase_slots: Some(7),
            ..ScheduleConfig::default()
        };
        assert_eq!(set.phase_slots_for(19_000), 7);
    }

    #[test]
    fn phase_slots_are_at_least_one() {
        let parsed = |slots: &str| {
            let yaml = format!(
                "kafka:\n  brokers: k:9092\nschedule:\n  phase_slots: {slots}\ndevices:\n  - id: a\n    \
                 endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n"
            );
            CollectorConfig::from_yaml(&yaml, Some(Path::new("c.yaml")), &TestAdapter)
                .map(|c| c.schedule.phase_slots)
        };
        assert_eq!(parsed("1000").unwrap(), Some(1000));
        let errs = parsed("0").unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("c.yaml:4:"), "{msgs:?}");
        assert!(msgs[0].contains("phase_slots"), "{msgs:?}");
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

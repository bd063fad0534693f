//! Checks of the core's sections that serde cannot express (ranges,
//! relations between fields), each placed at the line of its field.

use std::path::Path;

use super::device::MIN_INTERVAL;
use super::yaml::Node;
use super::{kafka, CollectorConfig, SourceKind, REGISTRY_MAX_SHARDS};
use crate::error::{ConfigError, ConfigErrors};

pub(crate) fn check_sections(
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
        cfg.schedule.phase_slots != Some(0),
        "schedule",
        "phase_slots",
        "must be at least 1",
    );
    check(cfg.shard.count >= 1, "shard", "count", "must be at least 1");
    check(
        cfg.shard.index.is_none_or(|i| i < cfg.shard.count),
        "shard",
        "index",
        "must be below shard.count (shards are 0..count-1)",
    );
    check(
        cfg.shard
            .handover_grace
            .is_none_or(|g| g <= std::time::Duration::from_secs(24 * 3600)),
        "shard",
        "handover_grace",
        "must be at most 24h",
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
    check(
        cfg.kafka.max_record_bytes() >= 4096,
        "kafka",
        "max_record_bytes",
        "must be at least 4KiB (also when derived from properties.message.max.bytes, less 1KiB)",
    );
    check(
        cfg.dead_letters.max_bytes >= 1 << 20,
        "dead_letters",
        "max_bytes",
        "must be at least 1MiB",
    );
    check(
        !cfg.dead_letters.ttl.is_zero(),
        "dead_letters",
        "ttl",
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
    if cfg.source == SourceKind::Postgres {
        let line = |field: &str| {
            root.get("registry")
                .and_then(|(n, l)| n.get(field).map(|(_, fl)| fl).or(Some(l)))
                .or_else(|| root.get("source").map(|(_, l)| l))
        };
        if let Err((field, msg)) = cfg.registry.connection() {
            errors.push(
                ConfigError::new(msg)
                    .at(path, line(field))
                    .hint("see docs/registry.md"),
            );
        }
        if cfg.registry.poll_interval < std::time::Duration::from_secs(1)
            || cfg.registry.poll_interval > std::time::Duration::from_secs(3600)
        {
            errors.push(
                ConfigError::new("registry.poll_interval: must be 1s to 1h")
                    .at(path, line("poll_interval")),
            );
        }
        if cfg.registry.timeout.is_zero() {
            errors
                .push(ConfigError::new("registry.timeout: must be > 0").at(path, line("timeout")));
        }
        if cfg.shard.count > REGISTRY_MAX_SHARDS {
            errors.push(
                ConfigError::new(format!(
                    "shard.count: must be at most {REGISTRY_MAX_SHARDS} with `source: postgres` (the registry's shard index covers that many)"
                ))
                .at(path, line_of("shard", "count")),
            );
        }
    }
    for (field, msg) in kafka::check_kafka(&cfg.kafka) {
        errors.push(
            ConfigError::new(msg)
                .at(path, line_of("kafka", field))
                .hint("see docs/security.md"),
        );
    }
}

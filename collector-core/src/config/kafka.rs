//! `kafka:` — the Kafka sink's settings as configuration data: brokers,
//! topic, producer tuning, TLS and SASL. What they become as librdkafka
//! properties is the sink's business (`sink::kafka`), not the
//! configuration's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::SecretSource;

/// `kafka:` — where records go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default `localhost:9092`.
    pub brokers: String,
    /// Topic for records. Default `opc-samples`.
    pub topic: String,
    /// How records are written in message values: `json` (the documented
    /// JSON envelope) or `protobuf` (the same record as
    /// `docs/record.proto`'s `Record`, ~3.7x smaller). Every record on a
    /// topic shares one encoding; switch on a new topic. Default `json`.
    pub encoding: RecordEncoding,
    /// `compression.codec`. Default `snappy`.
    pub compression: String,
    /// `linger.ms`: how long the producer waits to fill a request. Default 20.
    pub linger_ms: u32,
    /// `message.timeout.ms`: when an undelivered record is declared
    /// failed and spilled. Also bounds how long a batch already handed to
    /// the producer waits when Kafka goes down (new batches go straight to
    /// the spill once the outage is detected). Default `30s`.
    #[serde(with = "super::model::duration")]
    pub message_timeout: Duration,
    /// `queue.buffering.max.messages`: producer queue bound; a full queue
    /// is backpressure, not loss. Default 200000.
    pub queue_max_messages: u32,
    /// `queue.buffering.max.kbytes`. Default 262144 (256 MiB).
    pub queue_max_kbytes: u32,
    /// The largest record (key plus encoded value) sent as one message; a
    /// read whose record is larger is split into parts
    /// (`docs/record-format.md`), and a part that cannot be made small
    /// enough goes to the dead letters. Default: the producer's
    /// `message.max.bytes` (`properties.message.max.bytes`, else
    /// librdkafka's 1000000) less 1KiB for the message's framing. Keep it
    /// below the topic's `max.message.bytes` too (the broker's default is
    /// 1048588).
    #[serde(deserialize_with = "super::model::opt_byte_size")]
    pub max_record_bytes: Option<u64>,
    /// TLS to the brokers. Default: none (plaintext).
    pub tls: Option<KafkaTls>,
    /// SASL authentication. Default: none.
    pub sasl: Option<KafkaSasl>,
    /// Any other librdkafka property, passed through verbatim; these win
    /// over the settings above (but may not repeat what `tls`/`sasl` set).
    /// Values are never logged.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".to_string(),
            topic: "opc-samples".to_string(),
            encoding: RecordEncoding::Json,
            compression: "snappy".to_string(),
            linger_ms: 20,
            message_timeout: Duration::from_secs(30),
            queue_max_messages: 200_000,
            queue_max_kbytes: 262_144,
            max_record_bytes: None,
            tls: None,
            sasl: None,
            properties: BTreeMap::new(),
        }
    }
}

/// `kafka.encoding`: how a record is written in a message value
/// (`docs/record-format.md`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordEncoding {
    /// The JSON envelope (`docs/record.schema.json`).
    #[default]
    Json,
    /// `opc_collector.record.v1.Record` of `docs/record.proto`.
    Protobuf,
}

/// librdkafka's default `message.max.bytes`.
const PRODUCER_MESSAGE_MAX_BYTES: u64 = 1_000_000;
/// What a message's framing inside a produce request may add to its key
/// and value (record headers, lengths, timestamps).
const MESSAGE_FRAMING: u64 = 1024;

impl KafkaConfig {
    /// `max_record_bytes`, or its default derived from the producer's
    /// `message.max.bytes`.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes.unwrap_or_else(|| {
            self.properties
                .get("message.max.bytes")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(PRODUCER_MESSAGE_MAX_BYTES)
                .saturating_sub(MESSAGE_FRAMING)
        })
    }
}

/// `kafka.tls:` — TLS to the brokers (`security.protocol` SSL, or SASL_SSL
/// with `kafka.sasl`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// CA certificate(s) (PEM) to verify the brokers. Default: the
    /// system's trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub certificate: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Environment variable holding the key's passphrase, if encrypted.
    pub key_password_env: Option<String>,
    /// File holding the key's passphrase, if encrypted.
    pub key_password_file: Option<PathBuf>,
    /// Skip broker hostname verification (`ssl.endpoint.identification.algorithm=none`).
    /// Default false.
    pub insecure_skip_hostname_verification: bool,
}

/// `kafka.sasl:` — SASL authentication.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// The user name.
    pub username: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
}

/// The SASL mechanisms accepted in `kafka.sasl.mechanism`.
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Problems with `kafka.tls` / `kafka.sasl`: (field under `kafka`, message).
pub(crate) fn check_kafka(cfg: &KafkaConfig) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if let Some(tls) = &cfg.tls {
        for (what, p) in [
            ("ca", &tls.ca),
            ("certificate", &tls.certificate),
            ("key", &tls.key),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    errors.push((
                        "tls",
                        format!("kafka.tls.{what}: {} is not a readable file", p.display()),
                    ));
                }
            }
        }
        if tls.certificate.is_some() != tls.key.is_some() {
            errors.push((
                "tls",
                "kafka.tls: `certificate` and `key` go together (mutual TLS)".to_string(),
            ));
        }
        if tls.key_password_env.is_some() || tls.key_password_file.is_some() {
            match SecretSource::from_pair(
                tls.key_password_env.as_deref(),
                tls.key_password_file.as_ref(),
                "key_password",
            )
            .and_then(|s| s.read())
            {
                Ok(_) => {}
                Err(e) => errors.push(("tls", format!("kafka.tls.{e}"))),
            }
        }
    }
    if let Some(sasl) = &cfg.sasl {
        if !SASL_MECHANISMS.contains(&sasl.mechanism.as_str()) {
            errors.push((
                "sasl",
                format!(
                    "kafka.sasl.mechanism: {:?} is not one of {}",
                    sasl.mechanism,
                    SASL_MECHANISMS.join(", ")
                ),
            ));
        }
        if sasl.username.trim().is_empty() {
            errors.push(("sasl", "kafka.sasl.username: must not be empty".to_string()));
        }
        if let Err(e) = SecretSource::from_pair(
            sasl.password_env.as_deref(),
            sasl.password_file.as_ref(),
            "password",
        )
        .and_then(|s| s.read())
        {
            errors.push(("sasl", format!("kafka.sasl.{e}")));
        }
    }
    #[cfg(feature = "kafka")]
    for msg in crate::sink::kafka::conflicting_properties(cfg) {
        errors.push(("properties", msg));
    }
    errors
}

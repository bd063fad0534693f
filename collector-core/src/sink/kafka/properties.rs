//! The Kafka settings as librdkafka properties: the only place that knows
//! librdkafka's property names for TLS and SASL.

use std::path::PathBuf;

use crate::config::{KafkaConfig, SecretSource};

/// librdkafka properties that `kafka.tls` / `kafka.sasl` own: setting them
/// in `kafka.properties` as well is a contradiction, reported.
const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// `kafka.properties` entries that repeat what `kafka.tls` / `kafka.sasl`
/// set (a contradiction), as messages naming the key.
pub(crate) fn conflicting_properties(cfg: &KafkaConfig) -> Vec<String> {
    if cfg.tls.is_none() && cfg.sasl.is_none() {
        return Vec::new();
    }
    cfg.properties
        .keys()
        .filter(|key| SECURITY_PROPERTIES.contains(&key.as_str()))
        .map(|key| {
            format!("kafka.properties.{key}: set by kafka.tls/kafka.sasl; remove one of the two")
        })
        .collect()
}

/// The librdkafka properties for `kafka.tls` / `kafka.sasl`, with the
/// secrets read now (values must not be logged).
pub fn kafka_security_properties(cfg: &KafkaConfig) -> Result<Vec<(&'static str, String)>, String> {
    let mut out = Vec::new();
    let protocol = match (&cfg.tls, &cfg.sasl) {
        (None, None) => return Ok(out),
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    out.push(("security.protocol", protocol.to_string()));
    if let Some(tls) = &cfg.tls {
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &tls.ca {
            out.push(("ssl.ca.location", path(ca)));
        }
        if let Some(c) = &tls.certificate {
            out.push(("ssl.certificate.location", path(c)));
        }
        if let Some(k) = &tls.key {
            out.push(("ssl.key.location", path(k)));
        }
        if tls.key_password_env.is_some() || tls.key_password_file.is_some() {
            let pw = SecretSource::from_pair(
                tls.key_password_env.as_deref(),
                tls.key_password_file.as_ref(),
                "key_password",
            )
            .and_then(|s| s.read())
            .map_err(|e| format!("kafka.tls.{e}"))?;
            out.push(("ssl.key.password", pw.expose().to_string()));
        }
        out.push((
            "ssl.endpoint.identification.algorithm",
            if tls.insecure_skip_hostname_verification {
                "none"
            } else {
                "https"
            }
            .to_string(),
        ));
    }
    if let Some(sasl) = &cfg.sasl {
        let pw = SecretSource::from_pair(
            sasl.password_env.as_deref(),
            sasl.password_file.as_ref(),
            "password",
        )
        .and_then(|s| s.read())
        .map_err(|e| format!("kafka.sasl.{e}"))?;
        out.push(("sasl.mechanisms", sasl.mechanism.clone()));
        out.push(("sasl.username", sasl.username.clone()));
        out.push(("sasl.password", pw.expose().to_string()));
    }
    Ok(out)
}

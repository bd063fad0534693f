//! Kafka TLS and SASL settings: validated with file:line errors that name
//! the field, turned into librdkafka properties, and accepted by a real
//! librdkafka producer (built with OpenSSL: a CA that does not load fails
//! at creation, a good one passes). No TLS-capable broker runs here (the
//! mock cluster and tansu speak plaintext only), so delivery over TLS is
//! not exercised end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use base64::Engine;
use collector_core::sink::kafka::kafka_security_properties;
use collector_core::sink::kafka::KafkaSink;
use collector_core::CollectorConfig;

const DEVICES: &str = "devices:
  - id: d
    endpoint: opc.tcp://h:4840
    nodes: [\"ns=2;s=T\"]
";

/// A self-signed certificate in PEM, made by the OPC UA crypto library.
fn pem_certificate(dir: &Path) -> std::path::PathBuf {
    let data = opcua::crypto::X509Data {
        key_size: 2048,
        common_name: "test-ca".into(),
        organization: "test".into(),
        organizational_unit: "test".into(),
        country: "DE".into(),
        state: "Berlin".into(),
        alt_host_names: vec!["urn:test-ca".to_string(), "localhost".to_string()].into(),
        certificate_duration_days: 30,
    };
    let (cert, _key) = opcua::crypto::X509::cert_and_pkey(&data).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.to_der().unwrap());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn load(yaml: &str) -> Result<CollectorConfig, String> {
    CollectorConfig::from_yaml(
        &format!("{yaml}{DEVICES}"),
        Some(Path::new("c.yaml")),
        &collector_opcua::config::OpcUaConfig,
    )
    .map_err(|e| e.to_string())
}

#[test]
fn tls_and_sasl_settings_are_validated_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();

    let e = load(
        "kafka:
  brokers: k:9093
  tls:
    ca: /nonexistent/ca.pem
",
    )
    .unwrap_err();
    assert!(
        e.contains("c.yaml:3:") && e.contains("kafka.tls.ca") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );

    let e = load(&format!(
        "kafka:
  sasl:
    mechanism: GSSAPI
    username: u
    password_file: {}
",
        pw.display()
    ))
    .unwrap_err();
    assert!(
        e.contains("c.yaml:2:") && e.contains("SCRAM-SHA-512"),
        "{e}"
    );

    let e = load(
        "kafka:
  sasl:
    mechanism: PLAIN
    username: u
    password_env: OPC_COLLECTOR_TEST_SURELY_UNSET
",
    )
    .unwrap_err();
    assert!(
        e.contains("OPC_COLLECTOR_TEST_SURELY_UNSET") && e.contains("not set"),
        "{e}"
    );

    let e = load(&format!(
        "kafka:
  sasl:
    mechanism: PLAIN
    username: u
    password_file: {}
  properties:
    sasl.password: inline
",
        pw.display()
    ))
    .unwrap_err();
    assert!(
        e.contains("kafka.properties.sasl.password") && !e.contains("inline"),
        "{e}"
    );

    let e = load(
        "kafka:
  tls:
    certificate: /nonexistent/client.pem
",
    )
    .unwrap_err();
    assert!(e.contains("go together"), "{e}");
}

#[test]
fn settings_become_librdkafka_properties_and_a_real_producer_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let ca = pem_certificate(dir.path());
    let cfg = load(&format!(
        "kafka:
  brokers: 127.0.0.1:1
  tls:
    ca: {ca}
  sasl:
    mechanism: SCRAM-SHA-512
    username: collector
    password_file: {pw}
",
        ca = ca.display(),
        pw = pw.display()
    ))
    .unwrap();
    let props = kafka_security_properties(&cfg.kafka).unwrap();
    let get = |k: &str| {
        props
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(get("sasl.username"), Some("collector"));
    assert_eq!(
        get("sasl.password"),
        Some("s3cret"),
        "one trailing newline dropped"
    );
    assert_eq!(get("ssl.ca.location"), Some(ca.to_str().unwrap()));
    assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));

    // librdkafka builds its TLS context at creation: the CA must load.
    KafkaSink::new(&cfg.kafka, "test").unwrap_or_else(|e| panic!("good CA rejected: {e}"));
    let mut bad = cfg.kafka.clone();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    if let Some(tls) = bad.tls.as_mut() {
        tls.ca = Some(garbage);
    }
    let err = match KafkaSink::new(&bad, "test") {
        Ok(_) => panic!("a CA file that does not parse must fail producer creation"),
        Err(e) => e.to_string(),
    };
    println!("bad CA: {err}");
    assert!(err.to_lowercase().contains("ssl"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // TLS alone is `ssl`; SASL alone `sasl_plaintext`.
    let mut tls_only = cfg.kafka.clone();
    tls_only.sasl = None;
    assert_eq!(
        kafka_security_properties(&tls_only).unwrap()[0],
        ("security.protocol", "ssl".to_string())
    );
    let mut sasl_only = cfg.kafka.clone();
    sasl_only.tls = None;
    assert_eq!(
        kafka_security_properties(&sasl_only).unwrap()[0],
        ("security.protocol", "sasl_plaintext".to_string())
    );
}

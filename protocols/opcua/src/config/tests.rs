//! The adapter's configuration, checked as a user writes it: every
//! problem at its line.

use std::path::Path;
use std::sync::Arc;

use super::*;

/// The three inputs the hostile-input issue found accepted: an unclosed
/// IPv6 literal, a `b=` id that is not base64, a NUL in a device id;
/// each refused at its line, all in one pass.
#[test]
fn malformed_identifiers_are_refused_at_their_lines() {
    let text = "kafka:\n  brokers: k:9092\ndevices:\n  - id: a\n    endpoint: opc.tcp://[::1:4840\n    nodes: [\"ns=2;s=T\"]\n  - id: b\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=1;b=!!!\"]\n  - id: \"c\\0d\"\n    endpoint: opc.tcp://h:4841\n    nodes: [\"ns=2;s=T\"]\n";
    let errs =
        CollectorConfig::from_yaml(text, Some(Path::new("d.yaml")), &OpcUaConfig).unwrap_err();
    let found: Vec<(Option<usize>, String)> =
        errs.iter().map(|e| (e.line, e.message.clone())).collect();
    assert_eq!(errs.0.len(), 3, "{found:?}");
    assert!(
        found
            .iter()
            .any(|(l, m)| *l == Some(4) && m.contains("not a valid URL")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(l, m)| *l == Some(9) && m.contains("not base64")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(l, m)| *l == Some(10) && m.contains("\\0")),
        "NUL shown escaped: {found:?}"
    );
    assert!(!errs.to_string().contains('\0'), "a raw NUL in the report");
}

#[test]
fn loads_a_device_with_its_nodes_and_default_security() {
    let cfg = CollectorConfig::from_yaml(
            "kafka:\n  brokers: k:9092\nsession:\n  read_timeout: 2s\ndevices:\n  - id: a\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T\"]\n    interval: 1s\n",
            None,
            &OpcUaConfig,
        )
        .unwrap();
    let fleet = OpcUaSettings::from_config(&cfg).unwrap();
    assert_eq!(fleet.session.read_timeout, Duration::from_secs(2));
    let d = fleet.device(&cfg.devices[0]).unwrap();
    assert_eq!(d.nodes.len(), 1);
    assert_eq!(d.security, DeviceSecurity::default());
    assert_eq!(node_count(&cfg), 1);
}

/// Devices of one file that list the same node ids hold one allocation
/// per id between them (the file's text, shared by its settings and by
/// every device's parsed node), not one per device; a padded id is still
/// trimmed, in its own allocation.
#[test]
fn node_ids_repeated_across_a_file_share_one_text() {
    let cfg = CollectorConfig::from_yaml(
        "kafka:\n  brokers: k:9092\ndevices:\n  - id: a\n    endpoint: opc.tcp://h:4840\n    nodes: [\"ns=2;s=T1\", ns=2;s=T2]\n  - id: b\n    endpoint: opc.tcp://h:4841\n    nodes: [ns=2;s=T2, \"ns=2;s=T1\", \" ns=2;s=T3 \"]\n",
        None,
        &OpcUaConfig,
    )
    .unwrap();
    let fleet = OpcUaSettings::from_config(&cfg).unwrap();
    let a = fleet.device(&cfg.devices[0]).unwrap().nodes;
    let b = fleet.device(&cfg.devices[1]).unwrap().nodes;
    assert!(Arc::ptr_eq(a[0].text(), b[1].text()));
    assert!(Arc::ptr_eq(a[1].text(), b[0].text()));
    let written = cfg.devices[1].settings.texts("nodes").unwrap();
    assert!(Arc::ptr_eq(&written[0], b[0].text()));
    assert_eq!(&**b[2].text(), "ns=2;s=T3");
    assert!(!Arc::ptr_eq(&written[2], b[2].text()));
}

#[test]
fn devices_built_in_code_are_checked_like_entries() {
    let d = device(
        "a",
        "opc.tcp://h:4840",
        &["ns=2;s=T"],
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(d.settings.to_json()["nodes"][0], "ns=2;s=T");
    let e = device(
        "b",
        "opc.tcp://h:4840",
        &["ns=two;s=T"],
        Duration::from_secs(1),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("device `b`") && e.contains("ns=two"), "{e}");
    assert!(
        !e.contains("line"),
        "code-built settings have no lines: {e}"
    );
    let e = device("c", "http://h", &["ns=2;s=T"], Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an opc.tcp:// URL"), "{e}");
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
    let errs =
        CollectorConfig::from_yaml(text, Some(Path::new("s.yaml")), &OpcUaConfig).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    // Each at the offending key inside the device's `security:`.
    assert!(msgs.iter().all(|m| m.contains("device `c`")), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("s.yaml:19:") && m.contains("server_fingerprint")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("s.yaml:21:") && m.contains("policy None cannot sign")),
        "{msgs:?}"
    );

    let ok = text.split("  - id: c").next().unwrap();
    let cfg = CollectorConfig::from_yaml(ok, None, &OpcUaConfig).unwrap();
    let fleet = OpcUaSettings::from_config(&cfg).unwrap();
    let a = fleet.device(&cfg.devices[0]).unwrap().security;
    let b = fleet.device(&cfg.devices[1]).unwrap().security;
    let (a, b) = (&a, &b);
    assert_eq!(a.policy, SecurityPolicy::Basic256Sha256);
    assert_eq!(a.mode, SecurityMode::Auto);
    assert!(matches!(&a.identity, Identity::UserName { username, .. } if username == "fleet"));
    assert_eq!(b.policy, SecurityPolicy::Basic256Sha256);
    assert_eq!(b.mode, SecurityMode::Sign);
    assert!(matches!(b.identity, Identity::Certificate { .. }));
    assert_eq!(b.server_fingerprint.unwrap().0[1], 0x11);
}

/// The adapter's problems are reported with the core's, each at its
/// own line: a bad node id at its list item, a wrong scheme and missing
/// nodes at the entry, a security contradiction at the offending key,
/// a bad `session:` field at its key.
#[test]
fn reports_every_opc_ua_problem_at_its_line() {
    let text = "\
kafka:
  brokers: k:9092
session:
  read_timeout: 0s
devices:
  - id: b
    endpoint: opc.tcp://h:4841
    nodes:
      - ns=2;s=ok
      - ns=two;s=T
  - id: c
    endpoint: http://h:4842
    nodes: []
  - id: d
    endpoint: opc.tcp://h:4843
    nodes: [\"ns=2;s=T\"]
    security:
      policy: none
      mode: sign
    interval: soon
  - id: e
    endpoint: opc.tcp://h:4844
    nodes: 7
    security:
      policy: none
      mode: sign
";
    let errs =
        CollectorConfig::from_yaml(text, Some(Path::new("c.yaml")), &OpcUaConfig).unwrap_err();
    let lines: Vec<(usize, String)> = errs
        .iter()
        .map(|e| (e.line.unwrap(), e.message.clone()))
        .collect();
    let has = |line: usize, text: &str| lines.iter().any(|(l, m)| *l == line && m.contains(text));
    assert_eq!(errs.0.len(), 8, "{errs}");
    assert!(has(4, "session.read_timeout"), "{lines:?}");
    assert!(has(10, "ns=two"), "{lines:?}");
    assert!(has(11, "not an opc.tcp:// URL"), "{lines:?}");
    assert!(has(11, "no `nodes`"), "{lines:?}");
    assert!(has(19, "policy None cannot sign"), "{lines:?}");
    // The core's own problem in the same file, reported alongside.
    assert!(has(20, "invalid duration"), "{lines:?}");
    // A type error in `nodes` does not hide the `security` problem.
    assert!(has(23, "nodes"), "{lines:?}");
    assert!(has(26, "policy None cannot sign"), "{lines:?}");
}

/// A problem of the fleet's `security:` is reported once, at its key,
/// not again for every device that inherits it; a device's own problem
/// at the key inside its entry that causes it.
#[test]
fn fleet_problems_once_and_device_problems_at_their_key() {
    let text = "\
security:
  policy: none
  mode: sign_and_encrypt
devices:
  - id: a
    endpoint: opc.tcp://h:4840
    nodes: [\"ns=2;s=T\"]
  - id: b
    endpoint: opc.tcp://h:4841
    nodes: [\"ns=2;s=T\"]
  - id: c
    endpoint: opc.tcp://h:4842
    nodes: [\"ns=2;s=T\"]
    security:
      policy: basic256sha256
      user:
        username: op
        password_env: OPC_COLLECTOR_TEST_UNSET_PW
";
    std::env::remove_var("OPC_COLLECTOR_TEST_UNSET_PW");
    let errs =
        CollectorConfig::from_yaml(text, Some(Path::new("f.yaml")), &OpcUaConfig).unwrap_err();
    let lines: Vec<(usize, String)> = errs
        .iter()
        .map(|e| (e.line.unwrap(), e.message.clone()))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].0, 3, "{lines:?}");
    assert!(lines[0].1.contains("policy None cannot sign"), "{lines:?}");
    assert_eq!(lines[1].0, 18, "{lines:?}");
    assert!(
        lines[1].1.contains("device `c`")
            && lines[1].1.contains("OPC_COLLECTOR_TEST_UNSET_PW")
            && lines[1].1.contains("password_env"),
        "{lines:?}"
    );
}

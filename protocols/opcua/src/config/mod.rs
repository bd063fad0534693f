//! The OPC UA adapter's part of the configuration: its sections
//! (`security:`, `session:`) and each device's `nodes:` and `security:`.
//! The core hands them over as written ([`Settings`], with positions); this
//! module parses and checks them, reporting every problem with
//! `file:line`, through [`OpcUaConfig`] (the adapter's
//! [`ProtocolConfig`]).

mod backfill;
mod node_id;
mod security;
mod session;
mod subscription;

use std::time::Duration;

use collector_core::config::{ProtocolConfig, Settings};
use collector_core::error::{ConfigError, ConfigErrors};
use collector_core::{CollectorConfig, Device};

pub use backfill::{BackfillBudget, BackfillSettings, RawBackfill};
pub use node_id::{Identifier, Namespace, NodeAddress};
pub(crate) use security::RawDeviceSecurity;
pub use security::{
    DeviceSecurity, Fingerprint, Identity, SecurityMode, SecurityPolicy, SecuritySection,
    TrustMode, UserCertificate, UserPassword,
};
pub use session::SessionConfig;
pub use subscription::{
    Deadband, DeadbandKind, ItemSettings, Mode, RawItem, RawSubscription, SubscriptionSettings,
    Trigger, DEFAULT_KEEP_ALIVE_COUNT,
};

/// The adapter's sections (`session:` and `security:`), parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpcUaSettings {
    /// How sessions are opened and read.
    pub session: SessionConfig,
    /// Fleet-wide security defaults and the client certificate.
    pub security: SecuritySection,
    /// Fleet-wide subscription defaults (`subscription:`).
    pub subscription: RawSubscription,
    /// Fleet-wide backfill defaults and budget (`backfill:`).
    pub backfill: RawBackfill,
}

/// One device's OPC UA settings, resolved against the fleet defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaDevice {
    /// Nodes read on every tick, in this order.
    pub nodes: Vec<NodeAddress>,
    /// Security policy, mode, trust and identity.
    pub security: DeviceSecurity,
    /// Polled or subscribed.
    pub mode: Mode,
    /// The subscription, resolved (also for a polled device, so a change
    /// of mode needs no new checks).
    pub subscription: SubscriptionSettings,
    /// Gap backfill from the server's history; `None` when off.
    pub backfill: Option<BackfillSettings>,
}

const DOCS_HINT: &str = "see docs/security.md";

impl OpcUaSettings {
    /// Parses the adapter's sections of `cfg`, reporting every problem.
    pub fn from_config(cfg: &CollectorConfig) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let empty = Settings::default();
        let session_settings = cfg.protocol.get("session").unwrap_or(&empty);
        let security_settings = cfg.protocol.get("security").unwrap_or(&empty);
        let session: SessionConfig = session_settings.deserialize("session").unwrap_or_else(|e| {
            errors.push(e);
            SessionConfig::default()
        });
        let subscription_settings = cfg.protocol.get("subscription").unwrap_or(&empty);
        let subscription: RawSubscription = subscription_settings
            .deserialize("subscription")
            .unwrap_or_else(|e| {
                errors.push(e);
                RawSubscription::default()
            });
        if !subscription.nodes.is_empty() {
            errors.push(subscription_settings.error(
                Some("nodes"),
                "subscription.nodes: per-node settings belong in a device entry",
            ));
        }
        if let Err(problems) = subscription::resolve(
            &subscription,
            None,
            &[],
            Duration::from_secs(1),
            Duration::ZERO,
        ) {
            for p in problems {
                let key: Vec<&str> = p.key.iter().map(String::as_str).collect();
                errors.push(subscription_settings.error_at(
                    &key,
                    format!("subscription.{}: {}", p.key.join("."), p.message),
                ));
            }
        }
        let backfill_settings = cfg.protocol.get("backfill").unwrap_or(&empty);
        let backfill: RawBackfill = backfill_settings
            .deserialize("backfill")
            .unwrap_or_else(|e| {
                errors.push(e);
                RawBackfill::default()
            });
        for (key, message) in backfill::check(&backfill, true) {
            errors.push(backfill_settings.error(Some(key), format!("backfill.{key}: {message}")));
        }
        let security: SecuritySection =
            security_settings
                .deserialize("security")
                .unwrap_or_else(|e| {
                    errors.push(e);
                    SecuritySection::default()
                });
        let mut check = |ok: bool, field: &str, msg: &str| {
            if !ok {
                errors.push(session_settings.error(Some(field), format!("session.{field}: {msg}")));
            }
        };
        check(
            !session.connect_timeout.is_zero(),
            "connect_timeout",
            "must be > 0",
        );
        check(
            !session.read_timeout.is_zero(),
            "read_timeout",
            "must be > 0",
        );
        check(
            session.max_connects_per_second >= 1,
            "max_connects_per_second",
            "must be at least 1",
        );
        check(
            session.reconnect_initial <= session.reconnect_max,
            "reconnect_initial",
            "must not exceed reconnect_max",
        );
        check(
            (64 * 1024..=1 << 30).contains(&session.max_message_size),
            "max_message_size",
            "must be between 64KiB and 1GiB",
        );
        check(
            session.session_timeout > session.keep_alive_interval,
            "session_timeout",
            "must exceed keep_alive_interval (an idle session would expire between keep-alives)",
        );
        for p in security.check() {
            errors.push(
                security_settings
                    .error_at(&p.key, p.message)
                    .hint(DOCS_HINT),
            );
        }
        if errors.is_empty() {
            Ok(Self {
                session,
                security,
                subscription,
                backfill,
            })
        } else {
            Err(errors)
        }
    }

    /// A device's OPC UA settings, resolved against these defaults; every
    /// problem, each at its line.
    pub fn device(&self, device: &Device) -> Result<OpcUaDevice, Vec<ConfigError>> {
        let id = &device.id;
        let s = &device.settings;
        let mut errors = Vec::new();
        if let Some((scheme, _)) = device.endpoint.split_once("://") {
            if scheme != "opc.tcp" {
                errors.push(
                    s.error(
                        None,
                        format!(
                            "device `{id}`: endpoint {:?} is not an opc.tcp:// URL",
                            device.endpoint
                        ),
                    )
                    .hint("write e.g. opc.tcp://plc-1.example:4840"),
                );
            }
        }
        // Key by key: a type error in one hides nothing of the other.
        let context = format!("device `{id}`");
        let texts: Option<Vec<String>> = match s.get("nodes", &format!("{context} nodes")) {
            Ok(n) => Some(n),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let raw_security: Option<RawDeviceSecurity> =
            match s.get("security", &format!("{context} security")) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
        let mode: Option<Mode> = match s.get("mode", &format!("{context} mode")) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let raw_subscription: Option<RawSubscription> =
            match s.get("subscription", &format!("{context} subscription")) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
        let raw_backfill: Option<RawBackfill> =
            match s.get("backfill", &format!("{context} backfill")) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
        for (key, message) in raw_backfill.iter().flat_map(|b| backfill::check(b, false)) {
            errors.push(s.error_at(
                &["backfill", key],
                format!("device `{id}`: backfill.{key}: {message}"),
            ));
        }
        if raw_subscription.as_ref().is_some_and(|r| r.mode.is_some()) {
            errors.push(s.error_at(
                &["subscription", "mode"],
                format!("device `{id}`: write `mode:` beside `subscription:`, not in it"),
            ));
        }
        if texts.as_ref().is_some_and(Vec::is_empty) {
            errors.push(
                s.error(None, format!("device `{id}`: no `nodes` to read"))
                    .hint("add `nodes: [\"ns=2;s=Tag1\"]`"),
            );
        }
        let texts = texts.unwrap_or_default();
        let mut nodes = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            match text.parse::<NodeAddress>() {
                Ok(n) => nodes.push(n),
                Err(msg) => errors.push(
                    s.item_error("nodes", i, format!("device `{id}`: {msg}"))
                        .hint("node ids look like `ns=2;s=Name`, `ns=3;i=1001` or `nsu=urn:vendor:ns;s=Name`"),
                ),
            }
        }
        let security = match self.security.resolve(raw_security.as_ref()) {
            Ok(sec) => sec,
            Err(problems) => {
                for p in problems {
                    let key: Vec<&str> = std::iter::once("security").chain(p.key).collect();
                    errors.push(
                        s.error_at(&key, format!("device `{id}`: {}", p.message))
                            .hint(DOCS_HINT),
                    );
                }
                DeviceSecurity::default()
            }
        };
        let written: Vec<&str> = texts.iter().map(String::as_str).collect();
        let subscription = match subscription::resolve(
            &self.subscription,
            raw_subscription.as_ref(),
            &written,
            device.interval,
            self.session.session_timeout + self.session.connect_timeout,
        ) {
            Ok(sub) => sub,
            Err(problems) => {
                for p in problems {
                    let key: Vec<&str> = std::iter::once("subscription")
                        .chain(p.key.iter().map(String::as_str))
                        .collect();
                    errors.push(s.error_at(
                        &key,
                        format!(
                            "device `{id}`: subscription.{}: {}",
                            p.key.join("."),
                            p.message
                        ),
                    ));
                }
                SubscriptionSettings {
                    publishing_interval: device.interval,
                    keep_alive_count: DEFAULT_KEEP_ALIVE_COUNT,
                    lifetime_count: 3 * DEFAULT_KEEP_ALIVE_COUNT,
                    items: Vec::new(),
                }
            }
        };
        let mode = mode.or(self.subscription.mode).unwrap_or_default();
        if errors.is_empty() {
            Ok(OpcUaDevice {
                nodes,
                security,
                mode,
                subscription,
                backfill: backfill::resolve(&self.backfill, raw_backfill.as_ref()),
            })
        } else {
            Err(errors)
        }
    }
}

/// What the OPC UA adapter owns in the configuration (`security:`,
/// `session:`, and each device's `nodes:` and `security:`). Pass it to
/// [`CollectorConfig::load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpcUaConfig;

impl ProtocolConfig for OpcUaConfig {
    fn sections(&self) -> &[&'static str] {
        &["security", "session", "subscription", "backfill"]
    }

    fn device_keys(&self) -> &[&'static str] {
        &["nodes", "security", "mode", "subscription", "backfill"]
    }

    fn validate(&self, cfg: &CollectorConfig) -> Vec<ConfigError> {
        let (fleet, mut errors) = match OpcUaSettings::from_config(cfg) {
            Ok(fleet) => (fleet, Vec::new()),
            Err(errors) => (OpcUaSettings::default(), errors),
        };
        for d in &cfg.devices {
            if let Err(e) = fleet.device(d) {
                errors.extend(e);
            }
        }
        errors
    }
}

/// An OPC UA device built in code: the core's part and `nodes`, with the
/// default security (policy `auto`, anonymous). Checked as the YAML loader
/// checks a device entry.
pub fn device(
    id: &str,
    endpoint: &str,
    nodes: &[&str],
    interval: Duration,
) -> Result<Device, ConfigErrors> {
    let device = Device::new(id, endpoint, interval)?
        .with_settings(Settings::from_json(serde_json::json!({ "nodes": nodes })));
    OpcUaSettings::default()
        .device(&device)
        .map_err(ConfigErrors)?;
    Ok(device)
}

/// Total nodes over `cfg`'s devices (for `opc-collector validate`).
pub fn node_count(cfg: &CollectorConfig) -> usize {
    let fleet = OpcUaSettings::from_config(cfg).unwrap_or_default();
    cfg.devices
        .iter()
        .filter_map(|d| fleet.device(d).ok())
        .map(|d| d.nodes.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        let has =
            |line: usize, text: &str| lines.iter().any(|(l, m)| *l == line && m.contains(text));
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
}

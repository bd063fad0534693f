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
            !session.keep_alive_interval.is_zero(),
            "keep_alive_interval",
            "must be above 0 (a silent session's liveness is checked this often)",
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
        // The texts as the settings hold them, shared by every device of
        // the file that lists the same node id (checked as strings above).
        let shared = s.texts("nodes").filter(|t| t.len() == texts.len());
        let mut nodes = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let parsed = match shared.as_ref().map(|t| &t[i]) {
                Some(t) if **t == **text => NodeAddress::from_shared(t.clone()),
                _ => text.parse::<NodeAddress>(),
            };
            match parsed {
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

/// Sessions `devices` need: one per endpoint URL and security settings,
/// as the session pool shares them (for the daemon's open-files check).
pub fn session_count<'a>(
    cfg: &CollectorConfig,
    devices: impl IntoIterator<Item = &'a Device>,
) -> usize {
    let fleet = OpcUaSettings::from_config(cfg).unwrap_or_default();
    devices
        .into_iter()
        .filter_map(|d| Some((d.endpoint.as_str(), fleet.device(d).ok()?.security)))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[cfg(test)]
mod tests;

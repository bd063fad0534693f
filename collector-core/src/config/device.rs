//! A device as the engine sees it: id, endpoint, interval, and the
//! adapter's settings; and the core's checks of a device entry.

use std::sync::Arc;
use std::time::Duration;

use super::model::RawDevice;
use super::Settings;
use crate::error::{ConfigError, ConfigErrors};

/// The smallest read interval accepted.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

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
pub(crate) fn validate_device(
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

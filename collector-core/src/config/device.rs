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

/// The longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Why `id` is not a valid device id, if it is not. Ids are Kafka keys, log
/// fields, `/devices` entries and file names: 1 to [`MAX_DEVICE_ID_LEN`]
/// characters of `A-Z a-z 0-9 . _ - :`, not starting with `.` or `-`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!(
            "device id must be 1 to {MAX_DEVICE_ID_LEN} characters (has {})",
            id.chars().count()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:".contains(*c)))
    {
        return Err(format!(
            "device id {id:?} contains {bad:?}: use letters, digits, `.`, `_`, `-` and `:`"
        ));
    }
    if id.starts_with(['.', '-']) {
        return Err(format!("device id {id:?} must not start with `.` or `-`"));
    }
    Ok(())
}

/// Why `s` is not a usable endpoint URL, if it is not: it must parse as
/// `scheme://host[:port][/path]` (a DNS name, an IPv4 address or a
/// bracketed IPv6 literal; a port in 1-65535), without whitespace or
/// control characters (the adapter checks the scheme).
pub fn check_endpoint(s: &str) -> Result<(), String> {
    if !s.contains("://") {
        return Err(format!("endpoint {s:?} is not a URL (scheme://host:port)"));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("endpoint {s:?} contains {c:?}"));
    }
    let url = url::Url::parse(s).map_err(|e| format!("endpoint {s:?} is not a valid URL: {e}"))?;
    match url.host_str() {
        None | Some("") => return Err(format!("endpoint {s:?} has no host")),
        Some(_) => {}
    }
    if url.port() == Some(0) {
        return Err(format!(
            "endpoint {s:?}: port 0 is not a port to connect to"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "endpoint {:?} carries credentials: give them in the device's security settings",
            format!("{}://...@{}", url.scheme(), url.host_str().unwrap_or(""))
        ));
    }
    Ok(())
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
        Some(id) if !id.is_empty() => {
            if let Err(e) = check_device_id(id) {
                errors.push(
                    ConfigError::new(e)
                        .at(None, line)
                        .hint("device ids become Kafka keys, log fields and file names"),
                );
            }
            id.to_string()
        }
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
        Some(e) => {
            if let Err(why) = check_endpoint(e) {
                errors.push(
                    ConfigError::new(format!("device {id:?}: {why}"))
                        .at(None, line)
                        .hint(
                            "write e.g. opc.tcp://plc-1.example:4840 or opc.tcp://[fd00::1]:4840",
                        ),
                );
            }
            e.to_string()
        }
        None => {
            errors.push(
                ConfigError::new(format!("device {id:?}: missing `endpoint`"))
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
                "device {id:?}: interval {interval:?} is below the minimum of 10ms"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_a_documented_character_set() {
        for ok in ["plc-1", "dev-00042", "line4.press_2", "site:a:plc9", "A"] {
            assert!(check_device_id(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_DEVICE_ID_LEN + 1);
        for bad in [
            "",
            "plc\u{0}1",
            "plc 1",
            "plc/1",
            "plc\n",
            "-plc",
            ".plc",
            "pl\u{e9}",
            &long,
        ] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
        let e = check_device_id("a\u{0}b").unwrap_err();
        assert!(
            e.contains("\\0") || e.contains("\\u{0}"),
            "the NUL is shown escaped: {e}"
        );
    }

    proptest::proptest! {
        /// Any text gets an answer, never a panic.
        #[test]
        fn any_id_or_endpoint_is_judged(text in proptest::prelude::any::<String>()) {
            let _ = check_device_id(&text);
            let _ = check_endpoint(&text);
        }
    }

    #[test]
    fn endpoints_are_parsed_completely() {
        for ok in [
            "opc.tcp://plc-1.example:4840",
            "opc.tcp://10.0.0.7:4840/path",
            "opc.tcp://[::1]:4840",
            "opc.tcp://[fd00::17]",
            "opc.tcp://plc-1",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}: {:?}", check_endpoint(ok));
        }
        for bad in [
            "opc.tcp://[::1:4840",
            "opc.tcp://plc:70000",
            "opc.tcp://plc:0",
            "opc.tcp://:4840",
            "opc.tcp://",
            "plc-1:4840",
            "opc.tcp://plc\n:4840",
            "opc.tcp://pl c:4840",
            "opc.tcp://user:secret@plc:4840",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?} accepted");
        }
        let e = check_endpoint("opc.tcp://user:secret@plc:4840").unwrap_err();
        assert!(!e.contains("secret"), "a password in an error: {e}");
    }
}

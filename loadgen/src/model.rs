//! The deterministic value model: what every simulated tag returns at any instant,
//! independent of OPC UA types so that tests can compute the expected result of a read.
//!
//! # Naming
//!
//! * device `i` is called [`device_id`]`(i)` = `dev-00042`;
//! * tag `t` of every device is the Variable `ns=2;s=Tag007` ([`node_name`]), in the
//!   namespace [`NAMESPACE_URI`], which every simulated server publishes at index 2.
//!
//! # Kinds and bad tags
//!
//! The data type of tag `t` is [`tag_kind`]`(t)`, cycling through the eight [`TagKind`]s
//! by `t % 8`. Tags with `t % 10 == 7` ([`is_bad`]) are permanently bad: every read
//! returns `BadSensorFailure` and no value.
//!
//! # Values
//!
//! [`value_at`]`(device, tag, at_ms)` is a pure function of the device index, the tag
//! index and the time in milliseconds since the Unix epoch. With `s = at_ms.div_euclid(1000)`
//! (whole seconds) and `w(d, t, ms)` the "wave" below:
//!
//! | kind          | value                                                              |
//! |---------------|--------------------------------------------------------------------|
//! | `Double`      | `w(d, t, ms)`                                                      |
//! | `Float`       | `w(d, t, ms) as f32`                                               |
//! | `Int32`       | `(s + 7d + t) mod 100_000`                                         |
//! | `UInt16`      | `(s + 7d + t) mod 65_536`                                          |
//! | `Boolean`     | `(s + d + t)` is even                                              |
//! | `String`      | `"d{d}-t{t}-{s}"`                                                  |
//! | `DateTime`    | `s + d` seconds after the epoch (UTC, whole seconds)               |
//! | `DoubleArray` | `[w·1, w·2, w·3, w·4]`, each rounded to 6 decimals                |
//!
//! where `w(d, t, ms) = round6(50 + 100 · sin(2π · ms / P(t) + 0.1 · d))`,
//! `P(t) = (10 + 5 · (t mod 7)) · 1000` ms and `round6(x)` rounds to 6 decimals.
//! All values are finite, so they round-trip exactly through JSON.

use chrono::{DateTime, Utc};

/// Namespace URI of the device tags; every simulated server publishes it at index 2.
pub const NAMESPACE_URI: &str = "urn:opc-loadgen:devices";

/// Namespace index of [`NAMESPACE_URI`] on every simulated server.
pub const DEVICE_NAMESPACE_INDEX: u16 = 2;

/// Raw value of the OPC UA status code `BadSensorFailure` returned by bad tags.
pub const BAD_SENSOR_FAILURE: u32 = 0x808C_0000;

/// Identifier of the device with the given index: `dev-00042`.
pub fn device_id(index: u32) -> String {
    format!("dev-{index:05}")
}

/// Inverse of [`device_id`]: `dev-00042` gives `Some(42)`.
pub fn device_index(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("dev-")?;
    if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = digits.parse().ok()?;
    (device_id(index) == id).then_some(index)
}

/// String identifier of tag `tag` in the device namespace: `Tag007`.
pub fn node_name(tag: u32) -> String {
    format!("Tag{tag:03}")
}

/// Inverse of [`node_name`]: `Tag007` gives `Some(7)`.
pub fn tag_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("Tag")?;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tag: u32 = digits.parse().ok()?;
    (node_name(tag) == name).then_some(tag)
}

/// Full node id string of a tag as a client writes it: `ns=2;s=Tag007`.
pub fn node_id_string(tag: u32) -> String {
    format!("ns={DEVICE_NAMESPACE_INDEX};s={}", node_name(tag))
}

/// Data type of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    /// 64-bit float scalar.
    Double,
    /// 32-bit float scalar.
    Float,
    /// Signed 32-bit integer scalar.
    Int32,
    /// Unsigned 16-bit integer scalar.
    UInt16,
    /// Boolean scalar.
    Boolean,
    /// String scalar.
    String,
    /// UTC date and time scalar.
    DateTime,
    /// One-dimensional array of 4 doubles (ValueRank 1).
    DoubleArray,
}

/// Length of the arrays returned by [`TagKind::DoubleArray`] tags.
pub const DOUBLE_ARRAY_LEN: usize = 4;

/// Kind of tag `tag`: the eight [`TagKind`] variants in declaration order, by `tag % 8`.
pub fn tag_kind(tag: u32) -> TagKind {
    match tag % 8 {
        0 => TagKind::Double,
        1 => TagKind::Float,
        2 => TagKind::Int32,
        3 => TagKind::UInt16,
        4 => TagKind::Boolean,
        5 => TagKind::String,
        6 => TagKind::DateTime,
        _ => TagKind::DoubleArray,
    }
}

/// Whether tag `tag` is permanently bad (`tag % 10 == 7`): reads return
/// `BadSensorFailure` ([`BAD_SENSOR_FAILURE`]) and no value, on every device.
pub fn is_bad(tag: u32) -> bool {
    tag % 10 == 7
}

/// A tag value, independent of OPC UA types.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelValue {
    /// See [`TagKind::Double`].
    Double(f64),
    /// See [`TagKind::Float`].
    Float(f32),
    /// See [`TagKind::Int32`].
    Int32(i32),
    /// See [`TagKind::UInt16`].
    UInt16(u16),
    /// See [`TagKind::Boolean`].
    Boolean(bool),
    /// See [`TagKind::String`].
    String(String),
    /// See [`TagKind::DateTime`].
    DateTime(DateTime<Utc>),
    /// See [`TagKind::DoubleArray`].
    DoubleArray(Vec<f64>),
}

impl ModelValue {
    /// The kind of this value.
    pub fn kind(&self) -> TagKind {
        match self {
            ModelValue::Double(_) => TagKind::Double,
            ModelValue::Float(_) => TagKind::Float,
            ModelValue::Int32(_) => TagKind::Int32,
            ModelValue::UInt16(_) => TagKind::UInt16,
            ModelValue::Boolean(_) => TagKind::Boolean,
            ModelValue::String(_) => TagKind::String,
            ModelValue::DateTime(_) => TagKind::DateTime,
            ModelValue::DoubleArray(_) => TagKind::DoubleArray,
        }
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The sine wave shared by the floating point kinds, see the module documentation.
fn wave(device: u32, tag: u32, at_ms: i64) -> f64 {
    let period_ms = f64::from((10 + 5 * (tag % 7)) * 1000);
    // Reduce the time modulo the period first so the argument of sin stays small and
    // the result does not lose precision for present-day timestamps.
    let phase_ms = (at_ms as f64).rem_euclid(period_ms);
    let angle = std::f64::consts::TAU * phase_ms / period_ms + 0.1 * f64::from(device);
    round6(50.0 + 100.0 * angle.sin())
}

/// Value of tag `tag` of device `device` at `at_ms` milliseconds since the Unix epoch.
///
/// Defined for every tag, including bad ones (whose value is never served). See the
/// module documentation for the formulas.
pub fn value_at(device: u32, tag: u32, at_ms: i64) -> ModelValue {
    let secs = at_ms.div_euclid(1000);
    let d = i64::from(device);
    let t = i64::from(tag);
    match tag_kind(tag) {
        TagKind::Double => ModelValue::Double(wave(device, tag, at_ms)),
        TagKind::Float => ModelValue::Float(wave(device, tag, at_ms) as f32),
        TagKind::Int32 => {
            let v = (secs + 7 * d + t).rem_euclid(100_000);
            ModelValue::Int32(i32::try_from(v).unwrap_or_default())
        }
        TagKind::UInt16 => {
            let v = (secs + 7 * d + t).rem_euclid(65_536);
            ModelValue::UInt16(u16::try_from(v).unwrap_or_default())
        }
        TagKind::Boolean => ModelValue::Boolean((secs + d + t).rem_euclid(2) == 0),
        TagKind::String => ModelValue::String(format!("d{device}-t{tag}-{secs}")),
        TagKind::DateTime => ModelValue::DateTime(
            DateTime::<Utc>::from_timestamp(secs.saturating_add(d), 0).unwrap_or_default(),
        ),
        TagKind::DoubleArray => {
            let w = wave(device, tag, at_ms);
            ModelValue::DoubleArray(
                (1..=DOUBLE_ARRAY_LEN)
                    .map(|k| round6(w * k as f64))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z

    #[test]
    fn ids_round_trip() {
        assert_eq!(device_id(42), "dev-00042");
        assert_eq!(device_id(123_456), "dev-123456");
        assert_eq!(device_index("dev-00042"), Some(42));
        assert_eq!(device_index("dev-123456"), Some(123_456));
        assert_eq!(device_index("dev-42"), None);
        assert_eq!(device_index("dev-0004x"), None);
        assert_eq!(device_index("device-00042"), None);
        assert_eq!(node_name(7), "Tag007");
        assert_eq!(node_name(1234), "Tag1234");
        assert_eq!(tag_index("Tag007"), Some(7));
        assert_eq!(tag_index("Tag1234"), Some(1234));
        assert_eq!(tag_index("Tag7"), None);
        assert_eq!(tag_index("Tag0007"), None);
        assert_eq!(node_id_string(7), "ns=2;s=Tag007");
    }

    #[test]
    fn kinds_cycle_and_values_match_kinds() {
        let expected = [
            TagKind::Double,
            TagKind::Float,
            TagKind::Int32,
            TagKind::UInt16,
            TagKind::Boolean,
            TagKind::String,
            TagKind::DateTime,
            TagKind::DoubleArray,
        ];
        for tag in 0..64 {
            assert_eq!(tag_kind(tag), expected[(tag % 8) as usize]);
            assert_eq!(value_at(3, tag, T0).kind(), tag_kind(tag));
        }
    }

    #[test]
    fn bad_rule() {
        let bad: Vec<u32> = (0..40).filter(|t| is_bad(*t)).collect();
        assert_eq!(bad, vec![7, 17, 27, 37]);
    }

    #[test]
    fn deterministic() {
        for device in [0, 1, 999] {
            for tag in 0..16 {
                assert_eq!(value_at(device, tag, T0), value_at(device, tag, T0));
            }
        }
    }

    #[test]
    fn documented_values() {
        let s = T0 / 1000;
        assert_eq!(
            value_at(2, 2, T0),
            ModelValue::Int32(((s + 14 + 2) % 100_000) as i32)
        );
        assert_eq!(
            value_at(2, 3, T0),
            ModelValue::UInt16(((s + 14 + 3) % 65_536) as u16)
        );
        assert_eq!(
            value_at(2, 4, T0),
            ModelValue::Boolean((s + 2 + 4) % 2 == 0)
        );
        assert_eq!(value_at(2, 5, T0), ModelValue::String(format!("d2-t5-{s}")));
        match value_at(2, 6, T0) {
            ModelValue::DateTime(dt) => assert_eq!(dt.timestamp_millis(), (s + 2) * 1000),
            other => panic!("unexpected {other:?}"),
        }
        match value_at(2, 15, T0) {
            ModelValue::DoubleArray(a) => assert_eq!(a.len(), DOUBLE_ARRAY_LEN),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn values_change_over_time_and_stay_finite() {
        for tag in 0..8 {
            let a = value_at(5, tag, T0);
            let b = value_at(5, tag, T0 + 1_000);
            assert_ne!(a, b, "tag {tag} did not change");
        }
        for ms in (0..100_000).step_by(37) {
            match value_at(1, 0, T0 + ms) {
                ModelValue::Double(v) => assert!(v.is_finite() && (-50.0..=150.0).contains(&v)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn devices_differ() {
        assert_ne!(value_at(0, 0, T0), value_at(1, 0, T0));
        assert_ne!(value_at(0, 5, T0), value_at(1, 5, T0));
    }

    #[test]
    fn negative_times_are_defined() {
        assert_eq!(
            value_at(0, 5, -1),
            ModelValue::String("d0-t5--1".to_string())
        );
        assert!(matches!(value_at(0, 2, -1), ModelValue::Int32(v) if v >= 0));
    }
}

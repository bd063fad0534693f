//! The step model of `--change-rate R`: every tag holds a value for a whole period and
//! then steps to the next one, so that a test can compute exactly which data changes a
//! subscription must deliver.
//!
//! With `R` changes per tag and second (`0 < R <= 1000`; `R = 0.1` means a tenth of the
//! tags change every second), the period is `P = max(1, round(1000 / R))` ms
//! ([`period_ms`]). Tag `k` of device `d` has the phase `φ = fnv1a(d, k) mod P`
//! ([`phase_ms`]), so the tags of a device do not all step at the same instant. Step `n`
//! covers `[n·P + φ, (n+1)·P + φ)` in Unix milliseconds; its value is
//! [`model::value_at`]`(d, k, n · 1000)` (consecutive steps are consecutive seconds of the
//! value model, so they differ for every kind) and its source timestamp is the step's
//! start instant.
//!
//! Bad tags ([`model::is_bad`]) have steps too, but their value is never served.

use crate::model::{self, ModelValue};

/// Largest accepted `--change-rate` (one step per millisecond).
pub const MAX_CHANGE_RATE: f64 = 1000.0;

/// Check a change rate: finite, above 0 and at most [`MAX_CHANGE_RATE`].
pub fn check_change_rate(change_rate: f64) -> Result<(), String> {
    if change_rate.is_finite() && change_rate > 0.0 && change_rate <= MAX_CHANGE_RATE {
        Ok(())
    } else {
        Err(format!(
            "change rate {change_rate} is out of range: the changes per tag and second must be \
             above 0 and at most {MAX_CHANGE_RATE} (e.g. 0.1 for one change every 10 s, 2 for \
             one every 500 ms)"
        ))
    }
}

/// The step period in milliseconds for `change_rate` changes per tag and second:
/// `max(1, round(1000 / change_rate))` (1 for a rate that is not positive).
pub fn period_ms(change_rate: f64) -> i64 {
    let p = (1000.0 / change_rate).round();
    if p.is_finite() && p >= 1.0 {
        // Saturates for absurdly small rates; `check_change_rate` rejects them anyway.
        p as i64
    } else {
        1
    }
}

/// 64-bit FNV-1a of the device and tag indexes (little-endian bytes, device first).
fn fnv1a(device: u32, tag: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device.to_le_bytes().into_iter().chain(tag.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The phase of tag `tag` of device `device`: `fnv1a(device, tag) mod period_ms`, in
/// `0 .. period_ms`.
pub fn phase_ms(device: u32, tag: u32, period_ms: i64) -> i64 {
    let period = period_ms.max(1);
    // `period` is positive, so the remainder fits in an i64.
    (fnv1a(device, tag) % period.unsigned_abs()) as i64
}

/// The index `n` of the step covering `at_ms`.
pub fn step_index(device: u32, tag: u32, at_ms: i64, period_ms: i64) -> i64 {
    let period = period_ms.max(1);
    (at_ms - phase_ms(device, tag, period)).div_euclid(period)
}

/// The start of step `n` in Unix milliseconds: `n·P + φ`.
pub fn step_start(device: u32, tag: u32, n: i64, period_ms: i64) -> i64 {
    let period = period_ms.max(1);
    n.saturating_mul(period)
        .saturating_add(phase_ms(device, tag, period))
}

/// The value of step `n`: [`model::value_at`]`(device, tag, n · 1000)`.
pub fn step_value(device: u32, tag: u32, n: i64) -> ModelValue {
    model::value_at(device, tag, n.saturating_mul(1000))
}

/// The step covering `at_ms`: its start (Unix ms, the source timestamp it is served
/// with) and its value.
pub fn step_at(device: u32, tag: u32, at_ms: i64, period_ms: i64) -> (i64, ModelValue) {
    let n = step_index(device, tag, at_ms, period_ms);
    (
        step_start(device, tag, n, period_ms),
        step_value(device, tag, n),
    )
}

/// The data changes of a tag in `(from_ms, to_ms]`: every step starting in that window
/// whose value differs from the previous step's (equal consecutive values are no change:
/// a server's data-change filter does not report them), as (step start, value), in
/// time order. Empty when `to_ms <= from_ms`.
///
/// The result has one entry per step in the window, so keep `(to_ms - from_ms) /
/// period_ms` reasonable.
pub fn changes_between(
    device: u32,
    tag: u32,
    from_ms: i64,
    to_ms: i64,
    period_ms: i64,
) -> Vec<(i64, ModelValue)> {
    if to_ms <= from_ms {
        return Vec::new();
    }
    let first = step_index(device, tag, from_ms, period_ms) + 1;
    let last = step_index(device, tag, to_ms, period_ms);
    if last < first {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut previous = step_value(device, tag, first - 1);
    for n in first..=last {
        let value = step_value(device, tag, n);
        if value != previous {
            out.push((step_start(device, tag, n, period_ms), value.clone()));
        }
        previous = value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z

    #[test]
    fn periods() {
        assert_eq!(period_ms(2.0), 500);
        assert_eq!(period_ms(1.0), 1000);
        assert_eq!(period_ms(0.1), 10_000);
        assert_eq!(period_ms(3.0), 333);
        assert_eq!(period_ms(1000.0), 1);
        assert_eq!(period_ms(999.0), 1);
        assert_eq!(period_ms(0.0), 1);
        assert!(check_change_rate(2.0).is_ok());
        assert!(check_change_rate(1000.0).is_ok());
        assert!(check_change_rate(0.001).is_ok());
        for bad in [0.0, -1.0, 1000.5, f64::NAN, f64::INFINITY] {
            let e = check_change_rate(bad).unwrap_err();
            assert!(e.contains("out of range"), "{e}");
        }
    }

    #[test]
    fn phases_are_stable_spread_and_in_range() {
        let p = 500;
        let phases: Vec<i64> = (0..20).map(|k| phase_ms(3, k, p)).collect();
        assert!(phases.iter().all(|f| (0..p).contains(f)));
        assert_eq!(
            phases,
            (0..20).map(|k| phase_ms(3, k, p)).collect::<Vec<_>>()
        );
        let mut distinct = phases.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 10, "phases not spread: {phases:?}");
        assert_ne!(phase_ms(3, 0, p), phase_ms(4, 0, p));
        assert_eq!(phase_ms(3, 0, 1), 0);
        // FNV-1a of the 8 bytes 0,0,0,0,0,0,0,0.
        assert_eq!(fnv1a(0, 0), 0xa8c7_f832_281a_39c5);
    }

    #[test]
    fn steps_cover_their_period_and_change() {
        let p = 500;
        for tag in 0..16 {
            let (start, value) = step_at(2, tag, T0, p);
            assert!(start <= T0 && T0 < start + p, "tag {tag}");
            assert_eq!((start - phase_ms(2, tag, p)).rem_euclid(p), 0);
            // Every instant of the step has the same value and start.
            assert_eq!(step_at(2, tag, start, p), (start, value.clone()));
            assert_eq!(step_at(2, tag, start + p - 1, p), (start, value.clone()));
            let (next, next_value) = step_at(2, tag, start + p, p);
            assert_eq!(next, start + p);
            assert_ne!(next_value, value, "tag {tag}: consecutive steps equal");
            let n = step_index(2, tag, T0, p);
            assert_eq!(value, model::value_at(2, tag, n * 1000));
            assert_eq!(step_start(2, tag, n, p), start);
        }
    }

    #[test]
    fn changes_between_lists_the_step_starts_in_the_window() {
        let p = 500;
        let tag = 2; // Int32: consecutive steps always differ.
        let (start, _) = step_at(1, tag, T0, p);
        // The window is open at the start and closed at the end.
        let c = changes_between(1, tag, start, start + 3 * p, p);
        let starts: Vec<i64> = c.iter().map(|(s, _)| *s).collect();
        assert_eq!(starts, vec![start + p, start + 2 * p, start + 3 * p]);
        for (s, v) in &c {
            assert_eq!(step_at(1, tag, *s, p), (*s, v.clone()));
        }
        let c = changes_between(1, tag, start - 1, start + p - 1, p);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, start);
        assert!(changes_between(1, tag, start + 1, start + p - 1, p).is_empty());
        assert!(changes_between(1, tag, start + p, start, p).is_empty());
        // Per tag, 2 changes per second at R = 2.
        for tag in 0..16 {
            let n = changes_between(1, tag, T0, T0 + 10_000, p).len();
            assert_eq!(n, 20, "tag {tag}");
        }
    }

    #[test]
    fn changes_between_matches_a_scan_of_every_millisecond() {
        for (tag, p) in [(0, 250), (1, 333), (4, 1000), (5, 7), (6, 250), (7, 100)] {
            let (from, to) = (T0, T0 + 3_000);
            let mut expected = Vec::new();
            let (_, mut previous) = step_at(5, tag, from, p);
            for ms in from + 1..=to {
                let (start, value) = step_at(5, tag, ms, p);
                if start == ms && value != previous {
                    expected.push((start, value.clone()));
                }
                previous = value;
            }
            assert_eq!(changes_between(5, tag, from, to, p), expected, "tag {tag}");
            assert!(!expected.is_empty());
        }
    }
}

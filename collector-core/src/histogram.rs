//! A small fixed-size latency histogram (log-spaced buckets, ~19 % wide,
//! 100 us to ~2 min), cheap enough to keep one per device so `/devices`
//! and tests can see a device's own schedule lateness without per-device
//! Prometheus labels.

use serde::{Serialize, Serializer};

/// Buckets per doubling.
const PER_OCTAVE: f64 = 4.0;
/// Lower edge of the first bucket, in seconds.
const MIN_S: f64 = 1e-4;
/// Number of buckets (the last one is open-ended).
const BUCKETS: usize = 84;

/// Counts of durations in log-spaced buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u32; BUCKETS],
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            total: 0,
        }
    }
}

impl LatencyHistogram {
    /// Adds one observation, in seconds.
    pub fn record(&mut self, seconds: f64) {
        let i = if seconds <= MIN_S {
            0
        } else {
            ((seconds / MIN_S).log2() * PER_OCTAVE)
                .ceil()
                .clamp(0.0, (BUCKETS - 1) as f64) as usize
        };
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// What was recorded after `earlier` (an older copy of this histogram).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = LatencyHistogram::default();
        for (i, (now, then)) in self.counts.iter().zip(earlier.counts.iter()).enumerate() {
            d.counts[i] = now.saturating_sub(*then);
        }
        d.total = self.total.saturating_sub(earlier.total);
        d
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The upper edge (seconds) of the bucket holding quantile `q` (0..=1);
    /// None when empty. Overestimates by at most one bucket (~19 %).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(MIN_S * 2f64.powf(i as f64 / PER_OCTAVE));
            }
        }
        None
    }
}

impl Serialize for LatencyHistogram {
    /// Serialized as a summary: `{"count":n,"p50_ms":..,"p99_ms":..}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("count", &self.total)?;
        m.serialize_entry("p50_ms", &self.quantile(0.5).map(|v| v * 1e3))?;
        m.serialize_entry("p99_ms", &self.quantile(0.99).map(|v| v * 1e3))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_a_bucket() {
        let mut h = LatencyHistogram::default();
        for i in 1..=1000 {
            h.record(i as f64 / 1000.0); // 1 ms .. 1 s
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((0.5..=0.5 * 1.2).contains(&p50), "{p50}");
        assert!((0.99..=0.99 * 1.2).contains(&p99), "{p99}");
        let mut other = LatencyHistogram::default();
        other.record(100.0);
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert!(h.quantile(1.0).unwrap() >= 100.0);
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
        let d = h.since(&other);
        assert_eq!(d.count(), 1000);
    }
}

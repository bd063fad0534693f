//! Prometheus text exposition: parse a `/metrics` scrape, take counter and
//! histogram deltas between two scrapes, and read quantiles off the buckets.

use std::collections::BTreeMap;

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`/`_sum`/`_count` for histograms).
    pub name: String,
    /// Labels, in order of appearance.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses Prometheus text format; comment and malformed lines are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// Sum of every series of `name` whose labels include all of `matching`.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The value of the first series of `name` whose labels include all of
    /// `matching` (`None` when the scrape has none).
    pub fn get(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .find(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Every sample, in the scrape's order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The cumulative buckets of histogram `name` (without `_bucket`),
    /// summed over label sets, sorted by upper bound (`+Inf` last).
    pub fn histogram(&self, name: &str) -> Histogram {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == bucket) {
            let Some(le) = s.labels.get("le").and_then(|v| parse_value(v)) else {
                continue;
            };
            // f64 bits order like the numbers for non-negative values (+Inf last).
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        Histogram {
            buckets: by_le.into_values().collect(),
        }
    }
}

/// Cumulative histogram buckets: (upper bound, count of observations <= it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Sorted by upper bound, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Observations between `earlier` and `self` (bucket by bucket).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l.to_bits() == le.to_bits())
                    .map_or(0.0, |b| b.1);
                (le, (n - before).max(0.0))
            })
            .collect();
        Histogram { buckets }
    }

    /// Number of observations.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// The upper bound of the bucket that holds quantile `q` (0..1): the
    /// true quantile is at most this. `None` without observations;
    /// `f64::INFINITY` when it lies above the largest finite bound.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = (q * total).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(le, _)| *le)
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].find('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y"` (our labels never contain `,` or escaped quotes).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE collector_reads_total counter
collector_reads_total{result="ok"} 120
collector_reads_total{result="timeout"} 3
collector_samples_total{quality="good"} 1000
collector_samples_total{quality="bad"} 100
collector_kafka_delivered_total 118
collector_lat_seconds_bucket{le="0.001"} 50
collector_lat_seconds_bucket{le="0.01"} 90
collector_lat_seconds_bucket{le="0.1"} 99
collector_lat_seconds_bucket{le="+Inf"} 100
collector_lat_seconds_sum 1.5
collector_lat_seconds_count 100
"#;

    #[test]
    fn sums_counters_by_label() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("collector_reads_total", &[("result", "ok")]), 120.0);
        assert_eq!(s.sum("collector_reads_total", &[]), 123.0);
        assert_eq!(s.sum("collector_samples_total", &[]), 1100.0);
        assert_eq!(s.sum("collector_kafka_delivered_total", &[]), 118.0);
        assert_eq!(s.sum("nope", &[]), 0.0);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = Scrape::parse(TEXT).histogram("collector_lat_seconds");
        assert_eq!(h.count(), 100.0);
        assert_eq!(h.quantile_upper_bound(0.5), Some(0.001));
        assert_eq!(h.quantile_upper_bound(0.9), Some(0.01));
        assert_eq!(h.quantile_upper_bound(0.99), Some(0.1));
        assert_eq!(h.quantile_upper_bound(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn deltas_between_scrapes() {
        let before = Scrape::parse(TEXT).histogram("collector_lat_seconds");
        let after = Scrape::parse(
            &TEXT
                .replace("le=\"0.1\"} 99", "le=\"0.1\"} 109")
                .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 110"),
        )
        .histogram("collector_lat_seconds");
        let d = after.since(&before);
        assert_eq!(d.count(), 10.0);
        assert_eq!(d.quantile_upper_bound(0.5), Some(0.1));
        assert_eq!(Histogram::default().quantile_upper_bound(0.5), None);
    }
}

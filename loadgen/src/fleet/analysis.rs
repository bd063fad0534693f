//! What the topic says about a fleet run: who read each device in each
//! phase, the longest time any device went without a record, how many
//! records were lost or repeated, and how many devices a resize moved.
//! Pure functions over the records read back, so they are tested alone.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `device_id`.
    pub device: String,
    /// `collector_id`: the replica that read it.
    pub collector: String,
    /// `seq`.
    pub seq: u64,
    /// `read_time`.
    pub read_time: DateTime<Utc>,
}

/// A time window of the run, `[from, to)`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
}

impl Window {
    fn holds(&self, t: DateTime<Utc>) -> bool {
        t >= self.from && t < self.to
    }

    /// Whether `[a, b]` overlaps this window.
    fn meets(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
        a < self.to && b >= self.from
    }
}

/// Devices read in `w` by another replica than `owner(device)`, or by
/// none: `(device, replicas that read it)`, at most `limit` of them, and
/// how many there were.
pub fn ownership_problems(
    records: &[Seen],
    devices: &[String],
    w: Window,
    owner: impl Fn(&str) -> String,
    limit: usize,
) -> (usize, Vec<(String, BTreeSet<String>)>) {
    let mut readers: BTreeMap<&str, BTreeSet<String>> = devices
        .iter()
        .map(|d| (d.as_str(), BTreeSet::new()))
        .collect();
    for r in records.iter().filter(|r| w.holds(r.read_time)) {
        if let Some(set) = readers.get_mut(r.device.as_str()) {
            set.insert(r.collector.clone());
        }
    }
    let mut bad = Vec::new();
    let mut count = 0;
    for (device, set) in readers {
        let want = owner(device);
        if set.len() != 1 || !set.contains(&want) {
            count += 1;
            if bad.len() < limit {
                bad.push((device.to_string(), set));
            }
        }
    }
    (count, bad)
}

/// The longest time between two consecutive records of one device (any
/// replica) whose span meets `w`, in seconds, and that device. Records
/// from `from` on only (the fleet's start is not a gap).
pub fn longest_gap(records: &[Seen], w: Window, from: DateTime<Utc>) -> Option<(f64, String)> {
    let mut by_device: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.read_time >= from) {
        by_device.entry(&r.device).or_default().push(r.read_time);
    }
    let mut worst: Option<(f64, String)> = None;
    for (device, mut times) in by_device {
        times.sort_unstable();
        for pair in times.windows(2) {
            if !w.meets(pair[0], pair[1]) {
                continue;
            }
            let gap = (pair[1] - pair[0]).num_milliseconds() as f64 / 1000.0;
            if worst.as_ref().is_none_or(|(g, _)| gap > *g) {
                worst = Some((gap, device.to_string()));
            }
        }
    }
    worst
}

/// Devices with records of more than one replica in `w`.
pub fn read_twice(records: &[Seen], w: Window) -> usize {
    let mut readers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in records.iter().filter(|r| w.holds(r.read_time)) {
        readers.entry(&r.device).or_default().insert(&r.collector);
    }
    readers.values().filter(|s| s.len() > 1).count()
}

/// Distinct `(collector, device, seq)` records, and messages that
/// repeated one.
pub fn unique_and_repeated(records: &[Seen]) -> (u64, u64) {
    let mut seen: HashSet<(&str, &str, u64)> = HashSet::with_capacity(records.len());
    let mut repeated = 0;
    for r in records {
        if !seen.insert((&r.collector, &r.device, r.seq)) {
            repeated += 1;
        }
    }
    (seen.len() as u64, repeated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn seen(device: &str, collector: &str, seq: u64, s: i64) -> Seen {
        Seen {
            device: device.into(),
            collector: collector.into(),
            seq,
            read_time: at(s),
        }
    }

    #[test]
    fn a_handover_overlaps_without_a_gap() {
        // d1 moves from r0 to r1 at t=3..4 (both read it at 3 and 4).
        let recs = vec![
            seen("d1", "r0", 1, 0),
            seen("d1", "r0", 2, 1),
            seen("d1", "r0", 3, 2),
            seen("d1", "r0", 4, 3),
            seen("d1", "r1", 1, 3),
            seen("d1", "r0", 5, 4),
            seen("d1", "r1", 2, 4),
            seen("d1", "r1", 3, 5),
            seen("d2", "r0", 1, 0),
            seen("d2", "r0", 2, 5),
        ];
        let devices = vec!["d1".to_string(), "d2".to_string()];
        let all = Window {
            from: at(0),
            to: at(10),
        };
        let before = Window {
            from: at(0),
            to: at(3),
        };
        let after = Window {
            from: at(5),
            to: at(10),
        };
        let (n, bad) = ownership_problems(&recs, &devices, before, |_| "r0".into(), 10);
        assert_eq!((n, bad.len()), (0, 0));
        let (n, bad) = ownership_problems(
            &recs,
            &devices,
            after,
            |d| if d == "d1" { "r1" } else { "r0" }.into(),
            10,
        );
        assert_eq!(n, 0, "{bad:?}");
        // During the handover d1 was read by both.
        let hand = Window {
            from: at(3),
            to: at(5),
        };
        assert_eq!(read_twice(&recs, hand), 1);
        let (n, _) = ownership_problems(&recs, &devices, hand, |_| "r0".into(), 10);
        assert_eq!(n, 2, "d1 read twice, d2 not at all");
        // d1 never waited more than 1 s; d2 waited 5 s.
        assert_eq!(longest_gap(&recs, all, at(0)), Some((5.0, "d2".into())));
        let d1_only: Vec<Seen> = recs.iter().filter(|r| r.device == "d1").cloned().collect();
        assert_eq!(longest_gap(&d1_only, all, at(0)), Some((1.0, "d1".into())));
        // A gap is counted in a window it meets only.
        assert_eq!(
            longest_gap(
                &recs,
                Window {
                    from: at(6),
                    to: at(9)
                },
                at(0)
            ),
            None
        );
    }

    #[test]
    fn repeats_are_per_replica_and_device() {
        let recs = vec![
            seen("d1", "r0", 1, 0),
            seen("d1", "r0", 2, 1),
            seen("d1", "r0", 2, 1),
            seen("d1", "r0", 5, 2),
            seen("d1", "r1", 1, 2),
            seen("d1", "r1", 2, 3),
        ];
        assert_eq!(unique_and_repeated(&recs), (5, 1));
    }
}

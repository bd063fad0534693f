//! Make-before-break on a resize. Replicas read a new `shard.count` at
//! slightly different times (each checks its files every 2 s; a ConfigMap
//! reaches pods within kubelet's sync period), so a device that moves must
//! not wait for the replica that gains it to notice: the replica that loses
//! it keeps reading it for a handover grace after it read the new count,
//! while the gaining replica starts it as soon as it reads the count. For
//! that while both read the device (two collector ids, both records valid);
//! no interval goes unread as long as the grace covers the time between the
//! two replicas reading the count (docs/fleet.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use collector_core::config::Device;
use collector_core::shard::{shard_of, Shard};

use crate::reload::CHECK_EVERY;

/// Two of the device's intervals after this replica read the new count,
/// plus the file check period: replicas read a changed file up to one
/// check period apart, and a device the gaining replica starts is first
/// read within an interval (its own phase).
pub(crate) fn default_grace(d: &Device) -> Duration {
    d.interval.saturating_mul(2).saturating_add(CHECK_EVERY)
}

/// The longest grace honoured (a day), so that deadlines never overflow.
const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A device read here only until its grace ends.
#[derive(Debug, Clone)]
struct Handover {
    /// Its latest definition (a handover also follows edits).
    device: Device,
    /// The shard that reads it now.
    to: u32,
    /// When this replica stops reading it.
    until: Instant,
    /// The same, for people.
    until_wall: SystemTime,
}

/// What `/devices` shows of a device handing over.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct HandoverView {
    /// The shard that reads the device now.
    pub to_shard: u32,
    /// When this replica stops reading it (RFC 3339).
    pub until: String,
}

/// The devices this replica hands over.
#[derive(Debug, Default)]
pub(crate) struct Handovers {
    by_id: BTreeMap<Arc<str>, Handover>,
}

impl Handovers {
    /// Follows a new device list: `before` are the ids scheduled until now,
    /// `listed` the whole new list, `shard` this replica's new shard. A
    /// device scheduled here that is still listed but now another shard's
    /// starts handing over (for `grace`, default [`default_grace`]); a
    /// device handing over that is unlisted or this shard's again stops
    /// handing over. Returns how many started.
    pub(crate) fn follow(
        &mut self,
        before: &HashSet<Arc<str>>,
        listed: &[Device],
        shard: Shard,
        grace: Option<Duration>,
        now: Instant,
    ) -> usize {
        let by_id: HashMap<&str, &Device> = listed.iter().map(|d| (&*d.id, d)).collect();
        self.by_id.retain(|id, h| match by_id.get(&**id) {
            Some(d) if !shard.owns(id) => {
                h.device = (*d).clone();
                h.to = shard_of(id, shard.count);
                true
            }
            _ => false,
        });
        let mut started = 0;
        for id in before {
            if self.by_id.contains_key(id) || shard.owns(id) {
                continue;
            }
            let Some(d) = by_id.get(&**id) else { continue };
            let grace = grace.unwrap_or_else(|| default_grace(d)).min(MAX_GRACE);
            self.by_id.insert(
                id.clone(),
                Handover {
                    device: (*d).clone(),
                    to: shard_of(id, shard.count),
                    until: now + grace,
                    until_wall: SystemTime::now() + grace,
                },
            );
            started += 1;
        }
        started
    }

    /// Ends the handovers whose grace is over at `now`; how many ended.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let before = self.by_id.len();
        self.by_id.retain(|_, h| h.until > now);
        before - self.by_id.len()
    }

    /// When the next grace ends.
    pub(crate) fn next_end(&self) -> Option<Instant> {
        self.by_id.values().map(|h| h.until).min()
    }

    /// Devices handing over.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Their definitions, to keep them scheduled.
    pub(crate) fn devices(&self) -> impl Iterator<Item = &Device> {
        self.by_id.values().map(|h| &h.device)
    }

    /// What `/devices` shows, by device id.
    pub(crate) fn views(&self) -> HashMap<Arc<str>, HandoverView> {
        self.by_id
            .iter()
            .map(|(id, h)| {
                (
                    id.clone(),
                    HandoverView {
                        to_shard: h.to,
                        until: humantime::format_rfc3339_seconds(h.until_wall).to_string(),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;

    fn devices(n: usize) -> Vec<Device> {
        (0..n)
            .map(|i| {
                Device::new(
                    format!("dev-{i:05}"),
                    "opc.tcp://127.0.0.1:4840",
                    Duration::from_secs(1),
                )
                .unwrap()
            })
            .collect()
    }

    fn ids_of(all: &[Device], shard: Shard) -> HashSet<Arc<str>> {
        all.iter()
            .filter(|d| shard.owns(&d.id))
            .map(|d| d.id.clone())
            .collect()
    }

    #[test]
    fn devices_moved_by_a_resize_are_kept_for_the_grace_then_dropped() {
        let all = devices(400);
        let (old, new) = (Shard { index: 1, count: 3 }, Shard { index: 1, count: 4 });
        let before = ids_of(&all, old);
        let kept = ids_of(&all, new);
        let mut h = Handovers::default();
        let t0 = Instant::now();
        let started = h.follow(&before, &all, new, None, t0);
        // Jump hash: what shard 1 loses goes to the new shard 3, nothing
        // comes to it.
        assert!(kept.is_subset(&before));
        assert_eq!(started, before.len() - kept.len());
        assert!(started > 0);
        assert!(h.views().values().all(|v| v.to_shard == 3));
        // Default grace: two intervals (2 s) and the check period (2 s).
        assert_eq!(h.next_end(), Some(t0 + Duration::from_secs(4)));
        assert_eq!(h.expire(t0 + Duration::from_millis(3999)), 0);
        assert_eq!(h.expire(t0 + Duration::from_secs(4)), started);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn a_device_unlisted_or_owned_again_stops_handing_over() {
        let all = devices(200);
        let (old, new) = (Shard { index: 0, count: 2 }, Shard { index: 0, count: 3 });
        let before = ids_of(&all, old);
        let mut h = Handovers::default();
        let t0 = Instant::now();
        let grace = Some(Duration::from_secs(60));
        let started = h.follow(&before, &all, new, grace, t0);
        assert!(started > 1);
        // One moved device is removed from the list.
        let gone = h.by_id.keys().next().unwrap().clone();
        let fewer: Vec<Device> = all.iter().filter(|d| d.id != gone).cloned().collect();
        let scheduled: HashSet<Arc<str>> = ids_of(&all, new)
            .into_iter()
            .chain(h.by_id.keys().cloned())
            .collect();
        h.follow(&scheduled, &fewer, new, grace, t0 + Duration::from_secs(1));
        assert_eq!(h.len(), started - 1);
        assert!(!h.by_id.contains_key(&gone));
        // Its deadline is kept across reloads.
        assert_eq!(h.next_end(), Some(t0 + Duration::from_secs(60)));
        // The count goes back: every device is this shard's again.
        h.follow(&scheduled, &fewer, old, grace, t0 + Duration::from_secs(2));
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn a_handover_follows_an_edit_and_a_second_resize() {
        let all = devices(300);
        let (old, mid, new) = (
            Shard { index: 0, count: 2 },
            Shard { index: 0, count: 3 },
            Shard { index: 0, count: 4 },
        );
        let mut h = Handovers::default();
        let t0 = Instant::now();
        let grace = Some(Duration::from_secs(60));
        assert!(h.follow(&ids_of(&all, old), &all, mid, grace, t0) > 0);
        let first = h.by_id.keys().next().unwrap().clone();
        // Its interval is edited: the handover keeps the new definition.
        let edited: Vec<Device> = all
            .iter()
            .map(|d| {
                let mut d = d.clone();
                if d.id == first {
                    d.interval = Duration::from_secs(5);
                }
                d
            })
            .collect();
        let scheduled: HashSet<Arc<str>> = ids_of(&all, mid)
            .into_iter()
            .chain(h.by_id.keys().cloned())
            .collect();
        h.follow(&scheduled, &edited, new, grace, t0 + Duration::from_secs(1));
        let f = &h.by_id[&first];
        assert_eq!(f.device.interval, Duration::from_secs(5));
        // ... and names the shard that reads it under the latest count, with
        // its first deadline.
        assert_eq!(f.to, shard_of(&first, 4));
        assert_eq!(f.until, t0 + Duration::from_secs(60));
        // Devices shard 0 lost to the second resize hand over from then.
        assert!(h
            .by_id
            .values()
            .any(|x| x.until == t0 + Duration::from_secs(61)));
    }

    #[test]
    fn an_absurd_grace_is_bounded() {
        let all = devices(50);
        let mut h = Handovers::default();
        let before = ids_of(&all, Shard { index: 0, count: 1 });
        let t0 = Instant::now();
        let n = h.follow(
            &before,
            &all,
            Shard { index: 0, count: 2 },
            Some(Duration::MAX),
            t0,
        );
        assert!(n > 0);
        assert_eq!(h.next_end(), Some(t0 + MAX_GRACE));
    }

    #[test]
    fn a_replica_scaled_away_hands_over_everything() {
        let all = devices(100);
        let (old, new) = (Shard { index: 3, count: 4 }, Shard { index: 3, count: 3 });
        let before = ids_of(&all, old);
        let mut h = Handovers::default();
        let started = h.follow(&before, &all, new, None, Instant::now());
        assert_eq!(started, before.len());
        assert!(h.views().values().all(|v| v.to_shard < 3));
    }
}

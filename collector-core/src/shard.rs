//! Which replica of a fleet reads a device: a jump consistent hash
//! (Lamping and Veach, 2014) of the device id over the shard count. Every
//! replica computes it alone from the id and the count, with no
//! coordination; it fills shards 0..count-1 evenly, and when the count
//! grows from N to N+1 about 1/(N+1) of the devices move, each to the new
//! shard, and nothing else moves (docs/fleet.md).
//!
//! The id is hashed with FNV-1a (64 bit) and a splitmix64 finalizer: fixed
//! functions, so every version, platform and replica agrees.

/// This replica's part of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This replica's shard, 0-based.
    pub index: u32,
    /// Shards in the fleet (replicas), at least 1.
    pub count: u32,
}

impl Shard {
    /// The whole fleet in one replica.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether this replica reads `device_id`.
    pub fn owns(&self, device_id: &str) -> bool {
        shard_of(device_id, self.count) == self.index
    }
}

/// The shard of `device_id` among `count` (0 for a count of 0 or 1).
pub fn shard_of(device_id: &str, count: u32) -> u32 {
    jump(key(device_id), count.max(1))
}

/// The jump hash's path for `device_id` up to `limit` shards: each bucket
/// `b` the hash visits, with the next bucket it visits (capped at
/// `limit`). The device is in shard `b` for every count in `b+1..=next`,
/// so a store that indexes these spans finds a shard's devices without
/// hashing every row (the device registry does: docs/registry.md).
pub fn spans(device_id: &str, limit: u32) -> Vec<(u32, u32)> {
    let mut key = key(device_id);
    let mut out = Vec::new();
    let mut j: i64 = 0;
    while j < i64::from(limit) {
        let b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
        let next = j.min(i64::from(limit));
        out.push((
            u32::try_from(b).unwrap_or(0),
            u32::try_from(next).unwrap_or(limit),
        ));
    }
    out
}

/// A stable, well-mixed 64-bit key of an id.
fn key(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone mixes the last bytes poorly.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Jump consistent hash: the bucket of `key` among `buckets` (>= 1).
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    u32::try_from(b).unwrap_or(0)
}

/// Where a replica's shard index comes from when `shard.index` is not
/// configured: `OPC_COLLECTOR_SHARD_INDEX` (e.g. from the
/// `apps.kubernetes.io/pod-index` label through the downward API), else
/// the `-N` suffix of `HOSTNAME` (a StatefulSet pod is `<name>-<ordinal>`).
/// Read once at start; the index is worked out again whenever the count
/// changes ([`IndexSource::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexSource {
    /// `OPC_COLLECTOR_SHARD_INDEX`, if set.
    pub variable: Option<u32>,
    /// The ordinal suffix of `HOSTNAME`, if it has one.
    pub hostname: Option<u32>,
}

impl IndexSource {
    /// Reads the environment. A variable that is not a number is an error.
    pub fn from_env() -> Result<Self, String> {
        let variable = match std::env::var("OPC_COLLECTOR_SHARD_INDEX")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            Some(v) => Some(v.trim().parse().map_err(|_| {
                format!("OPC_COLLECTOR_SHARD_INDEX={v:?} is not a shard index (0, 1, ...)")
            })?),
            None => None,
        };
        let hostname = std::env::var("HOSTNAME")
            .ok()
            .and_then(|host| host.rsplit_once('-').and_then(|(_, n)| n.parse().ok()));
        Ok(Self { variable, hostname })
    }

    /// This replica's index among `count`: `configured` if set, else the
    /// variable (always: it is explicit), else the hostname's ordinal, but
    /// only in a fleet (a count above 1: a lone collector on `ip-10-0-1-23`
    /// is not replica 23), else 0.
    pub fn index(&self, configured: Option<u32>, count: u32) -> u32 {
        configured
            .or(self.variable)
            .or(self.hostname.filter(|_| count > 1))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("plant-{}/plc-{i:07}", i % 97))
    }

    #[test]
    fn small_counts_and_stability() {
        assert_eq!(shard_of("anything", 0), 0);
        assert_eq!(shard_of("anything", 1), 0);
        // Fixed functions: these values must never change between versions.
        // (Computed independently, from the published algorithms.)
        assert_eq!(shard_of("dev-00000", 600), 305);
        assert_eq!(shard_of("dev-00001", 600), 101);
        assert_eq!(shard_of("plant-7/plc-0001234", 601), 303);
        assert_eq!(shard_of("plant-7/plc-0001234", 2), 1);
        let spread: std::collections::HashSet<u32> = ids(1000).map(|id| shard_of(&id, 4)).collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn spans_give_the_shard_of_every_count_up_to_their_limit() {
        for id in ids(2000) {
            let spans = spans(&id, 300);
            assert_eq!(spans[0].0, 0, "{id}");
            assert_eq!(spans.last().map(|s| s.1), Some(300), "{id}");
            for count in 1..=300 {
                let holding: Vec<u32> = spans
                    .iter()
                    .filter(|(b, next)| *b < count && count <= *next)
                    .map(|(b, _)| *b)
                    .collect();
                assert_eq!(holding, vec![shard_of(&id, count)], "{id} among {count}");
            }
        }
    }

    #[test]
    fn the_index_follows_the_count_for_a_hostname_only() {
        let var = IndexSource {
            variable: Some(1),
            hostname: Some(7),
        };
        // The variable holds even while the count is 1 (a pod started
        // before the count grew reads nothing, not shard 0 again).
        assert_eq!(var.index(None, 1), 1);
        assert_eq!(var.index(Some(0), 2), 0);
        let host = IndexSource {
            variable: None,
            hostname: Some(1),
        };
        assert_eq!(host.index(None, 1), 0);
        assert_eq!(host.index(None, 2), 1);
        assert_eq!(IndexSource::default().index(None, 5), 0);
    }

    /// 1.2 M devices over 600 shards: every shard within 10 % of the mean
    /// (random assignment predicts about 7 % at the extremes for 2,000 a
    /// shard). Resize 600 -> 601: between 0.9 and 1.1 of 1/601 move, each to
    /// the new shard.
    #[test]
    fn even_spread_and_minimal_moves_at_fleet_scale() {
        const DEVICES: usize = 1_200_000;
        let mut sizes = vec![0u32; 600];
        let mut moved = 0usize;
        for id in ids(DEVICES) {
            let k = key(&id);
            let before = jump(k, 600);
            let after = jump(k, 601);
            sizes[before as usize] += 1;
            if before != after {
                assert_eq!(after, 600, "{id} moved from {before} to {after}");
                moved += 1;
            }
        }
        let mean = DEVICES as f64 / 600.0;
        let (min, max) = (
            f64::from(*sizes.iter().min().unwrap()),
            f64::from(*sizes.iter().max().unwrap()),
        );
        println!(
            "shard sizes {min}..{max} (mean {mean:.0}: {:+.1} % .. {:+.1} %); resize moved {moved} ({:.3} of 1/601)",
            (min / mean - 1.0) * 100.0,
            (max / mean - 1.0) * 100.0,
            moved as f64 / (DEVICES as f64 / 601.0)
        );
        assert!(min > 0.9 * mean && max < 1.1 * mean, "{min}..{max}");
        let expected = DEVICES as f64 / 601.0;
        assert!(
            (0.9 * expected..1.1 * expected).contains(&(moved as f64)),
            "{moved} moved, {expected:.0} expected"
        );
    }
}

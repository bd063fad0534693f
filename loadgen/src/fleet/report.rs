//! The fleet run's figures and checks, printed and written as JSON.

use std::path::Path;

use anyhow::Context;
use collector_core::shard::shard_of;
use serde::Serialize;

use super::analysis::{self, Seen};
use super::replica::Replica;
use super::{FleetArgs, Phases};

/// What a fleet run measured.
#[derive(Debug, Default, Serialize)]
pub struct FleetReport {
    /// Devices (one device file for every replica).
    pub devices: u32,
    /// Replicas before the resize.
    pub replicas_before: u32,
    /// Replicas after it.
    pub replicas_after: u32,
    /// Read interval (s).
    pub interval_s: f64,
    /// The longest a device may go without a record through the resize, in
    /// intervals (a quarter interval of schedule jitter is added).
    pub max_gap_intervals: f64,
    /// `shard.handover_grace` given (s); absent: the collectors' default.
    pub handover_grace_s: Option<f64>,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Topic.
    pub topic: String,
    /// Devices whose shard the resize changed.
    pub moved_devices: usize,
    /// Their fraction of all devices.
    pub moved_fraction: f64,
    /// What a consistent hash should move: 1 - before/after.
    pub moved_fraction_expected: f64,
    /// Moved devices a consistent hash should not have moved: growing,
    /// one whose new shard is an old one; shrinking, one whose old shard
    /// remains.
    pub moved_wrongly: usize,
    /// Devices not read by exactly their shard's replica before the resize.
    pub owner_problems_before: usize,
    /// ... after the handover.
    pub owner_problems_after: usize,
    /// ... after the rolling restart.
    pub owner_problems_last: usize,
    /// Some of them: device and the replicas that read it.
    pub owner_examples: Vec<String>,
    /// Devices read by two replicas during the resize (the overlap).
    pub read_twice_during_resize: usize,
    /// From the count's publication until every replica read it and its
    /// handovers ended (s).
    pub settle_s: f64,
    /// The most devices handing over at once, over all replicas.
    pub most_handing_over: usize,
    /// Entries of `/devices?handover=true` seen while the fleet settled.
    pub handover_views: usize,
    /// Those that did not name the new shard (some of them).
    pub handover_view_problems: Vec<String>,
    /// The longest a device went without a record through the resize (s).
    pub longest_gap_resize_s: f64,
    /// ... through the rolling restart (s).
    pub longest_gap_restart_s: f64,
    /// ... over the whole run, from the first read of every device (s).
    pub longest_gap_s: f64,
    /// The device of the longest gap.
    pub longest_gap_device: String,
    /// The restarted replica's drain, SIGTERM to exit (s).
    pub restart_drain_s: f64,
    /// SIGTERM to every device read again (s).
    pub restart_s: f64,
    /// Successful reads, over every replica run (one record each).
    pub reads_ok: u64,
    /// Records Kafka acknowledged.
    pub delivered: u64,
    /// Records with nowhere to go.
    pub undelivered: u64,
    /// Messages read back.
    pub records_consumed: u64,
    /// Distinct (collector, device, seq) records.
    pub records_unique: u64,
    /// Messages that repeated one.
    pub records_repeated: u64,
    /// Reads without a record on the topic.
    pub records_lost: u64,
    /// The checks that failed.
    pub failed_checks: Vec<String>,
}

/// The figures the topic gives, cut at the run's phases.
pub(super) fn assess(
    args: &FleetArgs,
    ids: &[String],
    records: &[Seen],
    p: &Phases,
) -> FleetReport {
    let (n, m) = (args.replicas, args.resize_to);
    let owner = |count: u32| move |d: &str| Replica::id(shard_of(d, count));
    let moved: Vec<&String> = ids
        .iter()
        .filter(|d| shard_of(d, n) != shard_of(d, m))
        .collect();
    // Growing, devices move to the new shards only; shrinking, only the
    // removed shards' devices move.
    let wrongly = moved
        .iter()
        .filter(|d| shard_of(d, m).max(shard_of(d, n)) < n.min(m))
        .count();
    let mut examples = Vec::new();
    let mut owners = |w, count| {
        let (k, bad) = analysis::ownership_problems(records, ids, w, owner(count), 5);
        examples.extend(bad.into_iter().map(|(d, set)| format!("{d}: {set:?}")));
        k
    };
    let before = owners(p.before(), n);
    let after = owners(p.after(args.interval), m);
    let last = owners(p.last(args.interval), m);
    let gap = |w| analysis::longest_gap(records, w, p.all_read);
    let whole = analysis::Window {
        from: p.all_read,
        to: p.end,
    };
    let (longest, device) = gap(whole).unwrap_or((0.0, String::new()));
    let (unique, repeated) = analysis::unique_and_repeated(records);
    FleetReport {
        devices: args.devices,
        replicas_before: n,
        replicas_after: m,
        interval_s: args.interval.as_secs_f64(),
        max_gap_intervals: args.max_gap_intervals,
        handover_grace_s: args.handover_grace.map(|g| g.as_secs_f64()),
        moved_devices: moved.len(),
        moved_fraction: moved.len() as f64 / ids.len().max(1) as f64,
        moved_fraction_expected: 1.0 - f64::from(n.min(m)) / f64::from(n.max(m)),
        moved_wrongly: wrongly,
        owner_problems_before: before,
        owner_problems_after: after,
        owner_problems_last: last,
        owner_examples: examples,
        read_twice_during_resize: analysis::read_twice(records, p.resizing(args.interval)),
        longest_gap_resize_s: gap(p.resizing(args.interval)).map_or(0.0, |g| g.0),
        longest_gap_restart_s: gap(p.restarting(args.interval)).map_or(0.0, |g| g.0),
        longest_gap_s: longest,
        longest_gap_device: device,
        records_consumed: records.len() as u64,
        records_unique: unique,
        records_repeated: repeated,
        ..FleetReport::default()
    }
}

impl FleetReport {
    /// Fills `failed_checks`.
    pub fn check(&mut self) {
        let mut failed = Vec::new();
        let mut expect = |ok: bool, what: String| {
            if !ok {
                failed.push(what);
            }
        };
        for (k, when) in [
            (self.owner_problems_before, "before the resize"),
            (self.owner_problems_after, "after the handover"),
            (self.owner_problems_last, "after the rolling restart"),
        ] {
            expect(
                k == 0,
                format!("{k} device(s) not read by exactly their shard's replica {when}"),
            );
        }
        let bound = self.interval_s * (self.max_gap_intervals + 0.25);
        expect(
            self.longest_gap_resize_s <= bound,
            format!(
                "a device went {:.2} s without a record through the resize (bound {bound:.2} s)",
                self.longest_gap_resize_s
            ),
        );
        expect(
            self.handover_view_problems.is_empty(),
            format!(
                "/devices shows handovers wrongly: {:?}",
                self.handover_view_problems
            ),
        );
        expect(
            self.moved_wrongly == 0,
            format!(
                "{} device(s) moved between shards that stayed",
                self.moved_wrongly
            ),
        );
        expect(
            self.records_lost == 0 && self.undelivered == 0,
            format!(
                "{} read(s) without a record on the topic, {} undelivered",
                self.records_lost, self.undelivered
            ),
        );
        expect(
            self.records_repeated == 0,
            format!("{} record(s) repeated", self.records_repeated),
        );
        self.failed_checks = failed;
    }

    /// Prints the figures.
    pub fn print(&self) {
        println!(
            "fleet: {} devices, {} -> {} replicas, interval {:.1} s, handover grace {}",
            self.devices,
            self.replicas_before,
            self.replicas_after,
            self.interval_s,
            self.handover_grace_s
                .map_or("default".to_string(), |g| format!("{g:.1} s"))
        );
        println!(
            "  moved {} devices ({:.1} %, a consistent hash moves {:.1} %), {} wrongly",
            self.moved_devices,
            100.0 * self.moved_fraction,
            100.0 * self.moved_fraction_expected,
            self.moved_wrongly
        );
        println!(
            "  resize settled in {:.1} s; {} devices read by two replicas meanwhile; longest without a record {:.2} s",
            self.settle_s, self.read_twice_during_resize, self.longest_gap_resize_s
        );
        println!(
            "  rolling restart: drained in {:.1} s, all read again after {:.1} s; longest without a record {:.2} s",
            self.restart_drain_s, self.restart_s, self.longest_gap_restart_s
        );
        println!(
            "  owners wrong: {} before, {} after the handover, {} after the restart",
            self.owner_problems_before, self.owner_problems_after, self.owner_problems_last
        );
        println!(
            "  records: {} reads, {} delivered, {} read back ({} unique, {} repeated), {} lost",
            self.reads_ok,
            self.delivered,
            self.records_consumed,
            self.records_unique,
            self.records_repeated,
            self.records_lost
        );
        for f in &self.failed_checks {
            println!("  FAILED: {f}");
        }
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("serializing the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

//! `opc-loadgen fleet`: a fleet of `opc-collector` replicas (shards
//! `0..N-1` of `N`, one shared configuration mounted as a Kubernetes
//! ConfigMap, one state directory each) against one simulated fleet of
//! devices and one Kafka topic. It resizes the fleet from N to N+1 replicas
//! (the new replica starts first, then the count changes by an atomic
//! `..data` swap), restarts one replica with SIGTERM as a rolling update
//! does, stops them all, reads the topic back and checks that every device
//! was read by exactly its shard's replica before the resize and after the
//! handover, that no device went without a record for more than two
//! intervals through the resize, and that no record was lost.

mod analysis;
mod mount;
mod replica;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;

use crate::bench::collector;
use crate::bench::fleet::{Fleet, FleetSpec};
use crate::bench::verify;
use analysis::{Seen, Window};
use mount::{fleet_config, publish};
use replica::Replica;
use report::FleetReport;

/// `opc-loadgen fleet` options.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Simulated devices, listed in one device file for every replica.
    #[arg(long, default_value_t = 120)]
    pub devices: u32,
    /// Tags per device.
    #[arg(long, default_value_t = 5)]
    pub tags: u32,
    /// Read interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Replicas before the resize.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Replicas after the resize (one more, or several).
    #[arg(long, default_value_t = 4)]
    pub resize_to: u32,
    /// The collectors' `shard.handover_grace` (default: theirs).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub handover_grace: Option<Duration>,
    /// How long each phase runs once the fleet settled.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub steady: Duration,
    /// The replica restarted as a rolling update would (SIGTERM, start).
    #[arg(long, default_value_t = 0)]
    pub restart: u32,
    /// The longest a device may go without a record through the resize,
    /// in intervals (schedule jitter aside: a quarter interval is added).
    #[arg(long, default_value_t = 2.0)]
    pub max_gap_intervals: f64,
    /// Real Kafka bootstrap servers instead of the in-process mock cluster
    /// (the topic must exist or be auto-created).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic (default: a fresh `opc-fleet-<pid>-<time>`).
    #[arg(long)]
    pub topic: Option<String>,
    /// The opc-collector binary (default: next to this executable, else PATH).
    #[arg(long)]
    pub collector_bin: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Work directory (configuration, device file, replica logs and
    /// state), kept; default: a temporary one, removed.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

fn note(msg: impl std::fmt::Display) {
    eprintln!("[fleet] {msg}");
}

/// How long a replica may take to start, stop or settle.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs the fleet, prints and writes the report; fails if a check failed.
pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.replicas == 0 || args.resize_to == 0 {
        bail!("--devices, --replicas and --resize-to must be at least 1");
    }
    if args.restart >= args.resize_to {
        bail!(
            "--restart {} is not a replica after the resize",
            args.restart
        );
    }
    let bin = collector::locate(args.collector_bin.as_deref())?;
    let temp;
    let dir = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.as_path()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("opc-fleet-")
                .tempdir()
                .context("creating the work directory")?;
            temp.path()
        }
    };
    note(format_args!("work directory {}", dir.display()));
    let (kafka, bootstrap, topic) = crate::bench::kafka_endpoint(
        args.brokers.as_deref(),
        args.topic.as_deref(),
        "opc-fleet",
        4,
    )?;
    let spec = FleetSpec {
        devices: args.devices,
        tags: args.tags,
        processes: 0,
        port_base: 0,
        change_rate: None,
        subscriptions: false,
    };
    let (sim, files) = Fleet::start(&spec, dir).await?;
    let result = drive(&args, &bin, dir, &files, (&bootstrap, &topic)).await;
    sim.shutdown().await;
    drop(kafka);
    let mut report = result?;
    report.kafka = bootstrap;
    report.topic = topic;
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
        note(format_args!("report written to {}", path.display()));
    }
    if !report.failed_checks.is_empty() {
        bail!(
            "fleet checks failed:\n  {}",
            report.failed_checks.join("\n  ")
        );
    }
    Ok(())
}

/// The moments the checks are cut at.
struct Phases {
    all_read: DateTime<Utc>,
    resize: DateTime<Utc>,
    settled: DateTime<Utc>,
    restart: DateTime<Utc>,
    restarted: DateTime<Utc>,
    end: DateTime<Utc>,
}

async fn drive(
    args: &FleetArgs,
    bin: &Path,
    dir: &Path,
    device_files: &[PathBuf],
    (bootstrap, topic): (&str, &str),
) -> anyhow::Result<FleetReport> {
    // The simulator's ids, as its device file lists them.
    let ids: Vec<String> = (0..args.devices)
        .map(opc_loadgen::model::device_id)
        .collect();
    let mount = dir.join("config");
    let config = mount.join("fleet.yaml");
    let text = |count| fleet_config(args, count, device_files, bootstrap, topic);
    publish(&mount, 1, &text(args.replicas))?;

    // Read the topic while the fleet runs: the mock cluster trims old
    // segments, and nothing may go unread.
    let reader = verify::Reader::start_with(bootstrap, topic, Records::default(), Records::fold)?;
    let mut guard = Guard(Vec::new());
    let all = &mut guard.0;
    for i in 0..args.replicas {
        all.push(Replica::start(bin, &config, i, dir)?);
    }
    for r in all.iter_mut() {
        r.wait_ready(PATIENCE)?;
    }
    wait_all_read(all, ids.len(), "the first replicas").await?;
    tokio::time::sleep(args.interval).await;
    let all_read = Utc::now();
    note(format_args!(
        "{} replicas read all {} devices; steady for {:?}",
        args.replicas,
        ids.len(),
        args.steady
    ));
    steady(all, args.steady).await?;

    // Resize: the new replicas first (they read nothing yet), then the count.
    for i in args.replicas..args.resize_to {
        all.push(Replica::start(bin, &config, i, dir)?);
    }
    for r in all.iter_mut().skip(args.replicas as usize) {
        r.wait_ready(PATIENCE)?;
    }
    let t_resize = Instant::now();
    let resize = Utc::now();
    publish(&mount, 2, &text(args.resize_to))?;
    note(format_args!(
        "shard.count {} -> {} published",
        args.replicas, args.resize_to
    ));
    // PATIENCE covers the collectors' default grace at any sensible
    // interval; a grace given here is waited for on top.
    let handing = settle(
        all,
        args.resize_to,
        PATIENCE + args.handover_grace.unwrap_or_default(),
    )
    .await?;
    let most_handing_over = handing.most;
    wait_all_read(all, ids.len(), "the resized fleet").await?;
    let settled = Utc::now();
    let settle_s = t_resize.elapsed().as_secs_f64();
    note(format_args!(
        "settled {settle_s:.1} s after the swap ({most_handing_over} devices handed over at most at once); steady for {:?}",
        args.steady
    ));
    steady(all, args.steady).await?;

    // A rolling update restarts one replica.
    let restart = Utc::now();
    let t_restart = Instant::now();
    let k = args.restart as usize;
    let drain_s = all[k].stop(PATIENCE)?.as_secs_f64();
    all[k].restart()?;
    all[k].wait_ready(PATIENCE)?;
    wait_all_read(all, ids.len(), "the restarted fleet").await?;
    let restarted = Utc::now();
    let restart_s = t_restart.elapsed().as_secs_f64();
    note(format_args!(
        "replica {k} restarted: drained in {drain_s:.1} s, all devices read again {restart_s:.1} s after SIGTERM"
    ));
    steady(all, args.steady).await?;
    let end = Utc::now();
    for r in all.iter_mut() {
        r.stop(PATIENCE)?;
    }
    let stopped: Vec<_> = all.iter().flat_map(|r| r.stopped.iter().cloned()).collect();
    drop(guard);

    let reads_ok: u64 = stopped.iter().map(|s| s.reads_ok).sum();
    let delivered: u64 = stopped.iter().map(|s| s.delivered).sum();
    let read_back = tokio::task::spawn_blocking(move || reader.finish(delivered))
        .await
        .context("topic reader")??;
    if read_back.malformed > 0 {
        bail!(
            "{} message(s) on the topic are not records",
            read_back.malformed
        );
    }
    let records = read_back.seen;
    note(format_args!("{} records read back", records.len()));
    let phases = Phases {
        all_read,
        resize,
        settled,
        restart,
        restarted,
        end,
    };
    let mut report = report::assess(args, &ids, &records, &phases);
    report.reads_ok = reads_ok;
    report.delivered = delivered;
    report.undelivered = stopped.iter().map(|s| s.undelivered).sum();
    report.records_lost = reads_ok.saturating_sub(report.records_unique);
    report.settle_s = settle_s;
    report.most_handing_over = most_handing_over;
    report.handover_views = handing.views;
    report.handover_view_problems = handing.view_problems;
    report.restart_drain_s = drain_s;
    report.restart_s = restart_s;
    report.check();
    Ok(report)
}

/// The replicas; those still running are stopped if the run ends early.
struct Guard(Vec<Replica>);

impl Drop for Guard {
    fn drop(&mut self) {
        for r in self.0.iter_mut() {
            let _ = r.stop(Duration::from_secs(30));
        }
    }
}

/// Runs for `d`, failing if a replica exits.
async fn steady(all: &mut [Replica], d: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        for r in all.iter_mut() {
            r.ensure_running()?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Waits until the replicas, together, have read each of `devices`
/// devices at least once, each by one replica (handovers aside).
async fn wait_all_read(all: &mut [Replica], devices: usize, what: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let mut read = 0;
        let mut scheduled = 0;
        for r in all.iter_mut() {
            r.ensure_running()?;
            let (ids, n) = r.devices_read()?;
            read += ids.len();
            scheduled += n;
        }
        if read == devices && scheduled == devices {
            return Ok(());
        }
        if t.elapsed() > PATIENCE {
            bail!("{what}: {read} of {devices} devices read ({scheduled} scheduled) after {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the replicas showed while they handed devices over.
#[derive(Debug, Default)]
struct Handing {
    /// The most devices handing over at once, over all replicas.
    most: usize,
    /// Devices `/devices?handover=true` listed, over all looks.
    views: usize,
    /// Entries of those whose `shard` was not their `handover.to_shard`,
    /// or whose new shard is this replica's or outside the new count.
    view_problems: Vec<String>,
}

/// Waits (up to `limit`) until every replica read `count` and handed
/// over what it lost.
async fn settle(all: &mut [Replica], count: u32, limit: Duration) -> anyhow::Result<Handing> {
    let t = Instant::now();
    let mut seen = Handing::default();
    loop {
        let mut done = true;
        let mut handing = 0;
        for r in all.iter_mut() {
            r.ensure_running()?;
            let s = r.status()?;
            let n = s["handovers"].as_u64().unwrap_or(0) as usize;
            if n > 0 {
                check_views(r, count, &mut seen)?;
            }
            handing += n;
            done &= s["shard_count"].as_u64() == Some(u64::from(count)) && n == 0;
        }
        seen.most = seen.most.max(handing);
        if done {
            return Ok(seen);
        }
        if t.elapsed() > limit {
            let tails: Vec<String> = all.iter().map(Replica::log_tail).collect();
            bail!(
                "the fleet did not settle on {count} shards within {limit:?}:\n{}",
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks what `/devices` says of the devices `r` hands over.
fn check_views(r: &Replica, count: u32, seen: &mut Handing) -> anyhow::Result<()> {
    let page = r.handing_over()?;
    for d in page {
        seen.views += 1;
        let to = d["handover"]["to_shard"].as_u64();
        let ok = to.is_some()
            && d["shard"].as_u64() == to
            && to != Some(u64::from(r.index))
            && to < Some(u64::from(count))
            && d["handover"]["until"].is_string();
        if !ok && seen.view_problems.len() < 5 {
            seen.view_problems.push(format!("replica {}: {d}", r.index));
        }
    }
    Ok(())
}

/// The records of the topic, as the reader folds them in.
#[derive(Debug, Default)]
struct Records {
    seen: Vec<Seen>,
    malformed: u64,
}

impl Records {
    fn fold(&mut self, payload: Option<&[u8]>) {
        #[derive(serde::Deserialize)]
        struct Envelope {
            device_id: String,
            collector_id: String,
            seq: u64,
            read_time: DateTime<Utc>,
        }
        match payload.and_then(|p| serde_json::from_slice::<Envelope>(p).ok()) {
            Some(e) => self.seen.push(Seen {
                device: e.device_id,
                collector: e.collector_id,
                seq: e.seq,
                read_time: e.read_time,
            }),
            None => self.malformed += 1,
        }
    }
}

impl Phases {
    /// Before the resize, once every device was read.
    fn before(&self) -> Window {
        Window {
            from: self.all_read,
            to: self.resize,
        }
    }

    /// From the count's publication until an interval after every
    /// replica settled.
    fn resizing(&self, interval: Duration) -> Window {
        Window {
            from: self.resize,
            to: self.settled + interval,
        }
    }

    /// After the handover, before the restart.
    fn after(&self, interval: Duration) -> Window {
        Window {
            from: self.settled + interval,
            to: self.restart,
        }
    }

    /// From SIGTERM until an interval after every device was read again.
    fn restarting(&self, interval: Duration) -> Window {
        Window {
            from: self.restart,
            to: self.restarted + interval,
        }
    }

    /// After the restart, until the replicas were stopped.
    fn last(&self, interval: Duration) -> Window {
        Window {
            from: self.restarted + interval * 2,
            to: self.end,
        }
    }
}

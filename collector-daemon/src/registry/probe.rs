//! `opc-collector registry shard`: one replica's load, measured. It loads
//! a shard through the same code a replica runs ([`Registry::sync`]), so
//! what it reports (rows transferred, devices, rejected rows, time, memory,
//! and the database time of an unchanged poll) is what the fleet sees.

use std::time::{Duration, Instant};

use collector_core::config::LoadLimits;
use collector_core::shard::Shard;
use collector_core::CollectorConfig;

use super::{Registry, RegistryError, RejectedRow};

/// What loading a shard took.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    pub shard_index: u32,
    pub shard_count: u32,
    /// Rows the database sent for the shard.
    pub rows: usize,
    /// Valid, enabled devices among them.
    pub devices: usize,
    pub rejected: usize,
    pub rejected_rows: Vec<RejectedRow>,
    /// Connecting, the query, and checking every row.
    pub load_ms: f64,
    /// Resident memory before and after the load, and its peak (KiB).
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_peak_kib: u64,
    /// Unchanged polls: how many, their median and slowest time.
    pub polls: u32,
    pub poll_median_ms: f64,
    pub poll_max_ms: f64,
    /// CPU time of the database process serving the polls, per poll
    /// (when it runs on this host: `/proc/<pid>/schedstat`).
    pub poll_db_cpu_us: Option<f64>,
}

impl Report {
    pub(crate) fn print(&self) {
        println!(
            "shard {} of {}: {} rows, {} devices, {} rejected",
            self.shard_index, self.shard_count, self.rows, self.devices, self.rejected
        );
        for r in &self.rejected_rows {
            println!("  rejected {}: {}", r.id, r.reason);
        }
        println!(
            "load: {:.0} ms, RSS {} -> {} KiB (peak {} KiB)",
            self.load_ms, self.rss_before_kib, self.rss_after_kib, self.rss_peak_kib
        );
        let cpu = self
            .poll_db_cpu_us
            .map(|c| format!(", database CPU {c:.0} µs a poll"))
            .unwrap_or_default();
        println!(
            "unchanged poll ({}x): median {:.2} ms, max {:.2} ms{cpu}",
            self.polls, self.poll_median_ms, self.poll_max_ms
        );
    }
}

/// Loads `shard` and times `polls` unchanged polls.
pub(crate) async fn probe(
    cfg: &CollectorConfig,
    limits: LoadLimits,
    shard: Shard,
    polls: u32,
) -> Result<Report, RegistryError> {
    let rss_before = status_kib("VmRSS:");
    let mut registry = Registry::new(&cfg.registry, limits)?;
    let started = Instant::now();
    registry.sync(shard, cfg, true).await?;
    let load = started.elapsed();
    let devices = registry.devices(shard).len();
    let rss_after = status_kib("VmRSS:");
    let view = registry.view();
    let pid = registry.backend_pid().await;
    let cpu_before = pid.and_then(on_cpu_ns);
    let mut times = Vec::with_capacity(polls as usize);
    for _ in 0..polls {
        let t = Instant::now();
        registry.sync(shard, cfg, false).await?;
        times.push(t.elapsed());
    }
    let cpu_after = pid.and_then(on_cpu_ns);
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Report {
        shard_index: shard.index,
        shard_count: shard.count,
        rows: view.rows,
        devices,
        rejected: view.rejected,
        rejected_rows: view.rejected_rows,
        load_ms: ms(load),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_peak_kib: status_kib("VmHWM:"),
        polls,
        poll_median_ms: times.get(times.len() / 2).copied().map_or(0.0, ms),
        poll_max_ms: times.last().copied().map_or(0.0, ms),
        poll_db_cpu_us: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if polls > 0 => Some((b - a) as f64 / 1000.0 / f64::from(polls)),
            _ => None,
        },
    })
}

/// A `/proc/self/status` field in KiB (0 where there is none).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Nanoseconds process `pid` has spent on a CPU.
fn on_cpu_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

//! `opc-loadgen registry-bench`: the device registry at fleet scale. A
//! throwaway PostgreSQL (Debian's server, loopback), `opc-collector
//! registry init`, an import of a whole fleet's device files (1.2 M devices
//! by default, ~200 bytes of YAML each, as a 1.2 M-device list is ~250 MB),
//! then one replica's load of its shard through `opc-collector registry
//! shard` (the replica's own code): time, rows transferred against the
//! replica's share, extra RSS, and the time and database CPU of a poll
//! that finds no change. Figures go to BENCHMARKS.md.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use collector_core::shard::shard_of;
use collector_testkit::postgres::Postgres;
use serde_json::Value;

use crate::bench::collector;

#[derive(Debug, Args)]
pub(crate) struct RegistryBenchArgs {
    /// Devices in the registry.
    #[arg(long, default_value_t = 1_200_000)]
    devices: u32,
    /// Node ids per device.
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    /// Devices per imported file.
    #[arg(long, default_value_t = 100_000)]
    per_file: u32,
    /// Shards in the fleet.
    #[arg(long, default_value_t = 600)]
    shards: u32,
    /// The replica whose load is measured.
    #[arg(long, default_value_t = 42)]
    index: u32,
    /// Unchanged polls timed.
    #[arg(long, default_value_t = 50)]
    polls: u32,
    /// The opc-collector binary (default: next to this executable, else PATH).
    #[arg(long)]
    collector_bin: Option<PathBuf>,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A device id of the generated fleet.
fn device_id(i: u32) -> String {
    format!("plant-{:03}.plc-{i:07}", i % 997)
}

/// Writes the fleet's device files into `dir`.
fn write_files(dir: &Path, args: &RegistryBenchArgs) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let mut files = Vec::new();
    let mut bytes = 0;
    let mut i = 0;
    while i < args.devices {
        let path = dir.join(format!("devices-{:03}.yaml", files.len()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(out, "devices:")?;
        let end = (i + args.per_file).min(args.devices);
        while i < end {
            let nodes: Vec<String> = (0..args.nodes)
                .map(|n| format!("\"ns=3;s=L{}.T{n}\"", i % 7))
                .collect();
            writeln!(
                out,
                "  - id: {}\n    endpoint: opc.tcp://10.{}.{}.{}:4840\n    nodes: [{}]",
                device_id(i),
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255,
                nodes.join(", ")
            )?;
            i += 1;
        }
        out.flush()?;
        bytes += std::fs::metadata(&path)?.len();
        files.push(path);
    }
    Ok((files, bytes))
}

fn run_collector(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "opc-collector {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) async fn run(args: RegistryBenchArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(&args)).await?
}

fn run_blocking(args: &RegistryBenchArgs) -> anyhow::Result<()> {
    let bin = collector::locate(args.collector_bin.as_deref())?;
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    pg.create_database("registry")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: 127.0.0.1:9\nsource: postgres\nregistry:\n  url: {}\n  timeout: 60s\n",
            pg.url("registry")
        ),
    )?;
    let cfg = config.to_str().context("temp path")?;
    run_collector(&bin, &["registry", "-c", cfg, "init"])?;

    let started = Instant::now();
    let (files, yaml_bytes) = write_files(dir.path(), args)?;
    eprintln!(
        "registry-bench: {} devices in {} files ({} MiB of YAML) written in {:.1} s",
        args.devices,
        files.len(),
        yaml_bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    let per_file = args.per_file.to_string();
    let mut import: Vec<&str> = vec![
        "--max-devices-per-file",
        &per_file,
        "registry",
        "-c",
        cfg,
        "import",
    ];
    for f in &files {
        import.push(f.to_str().context("temp path")?);
    }
    let started = Instant::now();
    let imported = run_collector(&bin, &import)?;
    let import_s = started.elapsed().as_secs_f64();
    eprintln!("registry-bench: {} in {import_s:.1} s", imported.trim());
    let sql = |q: &str| pg.psql("registry", q).map_err(|e| anyhow::anyhow!("{e}"));
    sql("VACUUM ANALYZE opc_collector.devices")?;
    let db_size = sql("SELECT pg_total_relation_size('opc_collector.devices')")?;

    let share = (0..args.devices)
        .filter(|i| shard_of(&device_id(*i), args.shards) == args.index)
        .count();
    let (index, shards, polls) = (
        args.index.to_string(),
        args.shards.to_string(),
        args.polls.to_string(),
    );
    let probe: Value = serde_json::from_str(&run_collector(
        &bin,
        &[
            "registry", "-c", cfg, "shard", "--index", &index, "--count", &shards, "--polls",
            &polls, "--json",
        ],
    )?)?;
    let rows = probe["rows"].as_u64().unwrap_or(0);
    if rows != share as u64 {
        bail!(
            "shard {index} of {shards}: {rows} rows transferred, the shard function gives {share}"
        );
    }
    let mean_share = f64::from(args.devices) / f64::from(args.shards);
    let extra_rss = probe["rss_after_kib"].as_u64().unwrap_or(0) as f64
        - probe["rss_before_kib"].as_u64().unwrap_or(0) as f64;
    let plan = sql(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON) SELECT id FROM opc_collector.devices \
         WHERE shard_cells && ARRAY(SELECT generate_series({}, {}))",
        args.index * 8192 + args.shards,
        args.index * 8192 + 4096
    ))?;
    let report = serde_json::json!({
        "devices": args.devices,
        "nodes_per_device": args.nodes,
        "yaml_bytes": yaml_bytes,
        "import_s": import_s,
        "import_rows_per_s": f64::from(args.devices) / import_s,
        "table_and_index_bytes": db_size.trim().parse::<u64>().unwrap_or(0),
        "shard_index": args.index,
        "shards": args.shards,
        "shard_rows": rows,
        "rows_over_mean_share": rows as f64 / mean_share,
        "load_ms": probe["load_ms"],
        "extra_rss_mib": extra_rss / 1024.0,
        "peak_rss_mib": probe["rss_peak_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        "poll_median_ms": probe["poll_median_ms"],
        "poll_max_ms": probe["poll_max_ms"],
        "poll_db_cpu_us": probe["poll_db_cpu_us"],
    });
    println!(
        "registry: {} devices ({} MiB YAML) imported in {import_s:.0} s ({:.0} rows/s); table+indexes {} MiB\n\
         shard {index} of {shards}: {rows} rows = {:.3} x the mean share; load {:.0} ms, extra RSS {:.1} MiB\n\
         unchanged poll: median {:.2} ms, max {:.2} ms, database CPU {:.0} µs\n\
         plan of the shard read:\n{}",
        args.devices,
        yaml_bytes >> 20,
        f64::from(args.devices) / import_s,
        report["table_and_index_bytes"].as_u64().unwrap_or(0) >> 20,
        rows as f64 / mean_share,
        probe["load_ms"].as_f64().unwrap_or(0.0),
        extra_rss / 1024.0,
        probe["poll_median_ms"].as_f64().unwrap_or(0.0),
        probe["poll_max_ms"].as_f64().unwrap_or(0.0),
        probe["poll_db_cpu_us"].as_f64().unwrap_or(f64::NAN),
        plan
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

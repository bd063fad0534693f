//! `opc-loadgen` command line: serves a fleet of simulated OPC UA devices until
//! SIGINT/SIGTERM (`serve`), benchmarks the collector against them (`bench`),
//! runs a fleet of collectors through a resize and a rolling restart
//! (`fleet`), or measures the device registry at fleet scale
//! (`registry-bench`).

mod bench;
mod fleet;
mod registry_bench;

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use opc_loadgen::{FaultSpec, SimConfig, Simulator};
use tracing::info;

/// Simulator of many OPC UA devices with deterministic values.
#[derive(Debug, Parser)]
#[command(name = "opc-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the simulated devices and serve them until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Benchmark the `opc-collector` binary: simulator, Kafka (mock or real)
    /// and the collector as a child process; prints a table and writes JSON.
    Bench(bench::BenchArgs),
    /// Run N `opc-collector` replicas (shards of one device list) against
    /// the simulator and Kafka, resize to N+1, restart one as a rolling
    /// update does, and check the topic: every device read by its shard's
    /// replica, no gap through the resize, nothing lost.
    Fleet(fleet::FleetArgs),
    /// Benchmark the PostgreSQL device registry: a throwaway server, a
    /// whole fleet imported (1.2 M devices), one replica's shard loaded and
    /// polled; prints the figures and writes JSON.
    RegistryBench(registry_bench::RegistryBenchArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Number of devices (one OPC UA server and TCP port each).
    #[arg(long, default_value_t = 10)]
    devices: u32,
    /// Tags per device (ns=2;s=Tag000 ...).
    #[arg(long, default_value_t = 20)]
    tags: u32,
    /// IP address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// Port of the first device (device i listens on port-base + i); 0 = OS-chosen ports.
    #[arg(long, default_value_t = 4840)]
    port_base: u16,
    /// MaxNodesPerRead operation limit served and enforced by every device.
    #[arg(long, default_value_t = 1000)]
    max_nodes_per_read: u32,
    /// Index of the first device.
    #[arg(long, default_value_t = 0)]
    first_device: u32,
    /// Maximum sessions per device.
    #[arg(long, default_value_t = 100)]
    max_sessions: u32,
    /// Step model: every tag changes R times per second (0 < R <= 1000; 0.1 = a tenth
    /// of the tags per second), holding each value round(1000/R) ms, served (Read and
    /// subscriptions) with the step's start as source timestamp. Default: values
    /// computed at the instant of each read.
    #[arg(long, value_name = "R", value_parser = parse_change_rate)]
    change_rate: Option<f64>,
    /// Serve subscriptions without a change rate (implied by --change-rate): costs
    /// one timer wake-up per device every 100 ms.
    #[arg(long)]
    subscriptions: bool,
    /// MaxMonitoredItemsPerCall operation limit served (i=11714) and enforced by every device.
    #[arg(long, default_value_t = 1000)]
    max_monitored_items_per_call: u32,
    /// HistoryRead serves the entries of the last D (1h, 30m, 90s): older ones are gone.
    #[arg(long, value_name = "D", default_value = "1h", value_parser = humantime::parse_duration)]
    history_retention: std::time::Duration,
    /// Most values a HistoryRead returns per node and call (MaxReturnDataValues,
    /// i=11273); more come back through continuation points.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_history_values: u32,
    /// MaxNodesPerHistoryReadData operation limit served (i=12165) and enforced by every device.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_nodes_per_history_read: u32,
    /// Write the device file (YAML) for the collector here once all devices listen.
    #[arg(long)]
    write_devices: Option<PathBuf>,
    /// Inject a fault, KIND=SELECTION[:PARAM] (repeatable): dead=0.1, dead=3,7,
    /// slow=0.1:3s, flap=0.1:5s/5s, bad-status=0.05, max-sessions=1, max-sessions=0.1:1,
    /// hostile=3:garbage (huge-array, deep-nesting, huge-string, trickle),
    /// mute=3:10s/5s (from 10 s after start, for 5 s, Publish answers BadTimeout),
    /// no-history=0.1 (HistoryRead answers BadHistoryOperationUnsupported).
    #[arg(long = "fault", value_name = "KIND=SELECTION[:PARAM]")]
    faults: Vec<FaultSpec>,
    /// Serve per-device counters as JSON at GET /stats on this address (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "IP:PORT")]
    stats_addr: Option<SocketAddr>,
    /// Serve a secure endpoint instead of security None, POLICY/MODE: e.g.
    /// basic256sha256/sign_and_encrypt, aes256_sha256_rsapss/sign.
    #[arg(long, value_name = "POLICY/MODE")]
    security: Option<String>,
    /// Accept this user (repeatable), NAME:PASSWORD_FILE (the password is read
    /// from the file); without any, sessions are anonymous.
    #[arg(long = "user", value_name = "NAME:PASSWORD_FILE")]
    users: Vec<String>,
    /// PKI directory of the secure endpoint (server certificate in own/cert.der,
    /// generated once and shared by all devices).
    #[arg(long, default_value = "opc-loadgen-pki")]
    pki_dir: PathBuf,
}

/// `--change-rate`: a number in `(0, 1000]`.
fn parse_change_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number such as 0.1 or 2"))?;
    opc_loadgen::steps::check_change_rate(rate)?;
    Ok(rate)
}

/// The secure endpoint settings from `--security`/`--user`/`--pki-dir`.
fn sim_security(args: &ServeArgs) -> anyhow::Result<Option<opc_loadgen::SimSecurity>> {
    let Some(spec) = &args.security else {
        if !args.users.is_empty() {
            anyhow::bail!("--user needs --security POLICY/MODE");
        }
        return Ok(None);
    };
    let (policy, mode) = spec.split_once('/').with_context(|| {
        format!("--security {spec:?}: write POLICY/MODE, e.g. basic256sha256/sign_and_encrypt")
    })?;
    let mut users = Vec::new();
    for u in &args.users {
        let (name, file) = u
            .split_once(':')
            .with_context(|| format!("--user {u:?}: write NAME:PASSWORD_FILE"))?;
        let pw = std::fs::read_to_string(file)
            .with_context(|| format!("--user {name}: reading the password file {file}"))?;
        users.push((
            name.to_string(),
            pw.trim_end_matches(['\r', '\n']).to_string(),
        ));
    }
    Ok(Some(opc_loadgen::SimSecurity {
        policy: policy.to_string(),
        mode: mode.to_string(),
        users,
        pki_dir: args.pki_dir.clone(),
    }))
}

fn init_tracing() {
    // async-opcua logs several lines per server at info level and complains about the
    // missing certificate (there is none: security None only); keep that quiet by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,opcua_server=error,opcua_crypto=off,opcua_core=error,opcua_core::comms::secure_channel=off,opcua_client=warn",
        )
    });
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Installs the SIGINT/SIGTERM handlers now (before `ready:` is printed:
/// a signal sent right after it must not kill the process by default) and
/// returns the wait for the first of them.
fn shutdown_signal(
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<&'static str>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => Ok("SIGINT"),
                _ = term.recv() => Ok("SIGTERM"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            Ok("Ctrl-C")
        })
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = SimConfig {
        devices: args.devices,
        tags: args.tags,
        listen: args.listen.clone(),
        port_base: args.port_base,
        max_nodes_per_read: args.max_nodes_per_read,
        first_device: args.first_device,
        max_sessions: args.max_sessions,
        faults: args.faults.clone(),
        security: sim_security(&args)?,
        change_rate: args.change_rate,
        subscriptions: args.subscriptions,
        max_monitored_items_per_call: args.max_monitored_items_per_call,
        history_retention: args.history_retention,
        max_history_values_per_call: args.max_history_values,
        max_nodes_per_history_read_data: args.max_nodes_per_history_read,
    };
    let sim = Simulator::start(cfg)
        .await
        .context("starting the simulated devices")?;
    if let Some(path) = &args.write_devices {
        sim.write_device_file(path)
            .with_context(|| format!("writing the device file {}", path.display()))?;
        info!(path = %path.display(), "device file written");
    }
    let mut stats_note = String::new();
    if let Some(addr) = args.stats_addr {
        let bound = sim
            .serve_stats(addr)
            .await
            .context("starting the stats endpoint")?;
        info!("stats at http://{bound}/stats");
        // On the ready line too: with port 0 it is the only way to learn the port.
        stats_note = format!("; stats http://{bound}/stats");
    }
    for d in sim.devices().iter().filter(|d| !d.faults.is_empty()) {
        let faults: Vec<String> = d.faults.iter().map(ToString::to_string).collect();
        tracing::debug!(device = %d.id, endpoint = %d.endpoint_url, faults = %faults.join(","), "faulty device");
    }
    let ports = if args.port_base == 0 {
        "0 (OS-chosen ports, see the device file)".to_string()
    } else {
        let last = u32::from(args.port_base) + sim.devices().len().max(1) as u32 - 1;
        format!("{}..{}", args.port_base, last)
    };
    let signal = shutdown_signal()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready: {} devices on {}:{}{stats_note}",
            sim.devices().len(),
            args.listen,
            ports
        )
        .context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    let signal = signal.await?;
    let stats = sim.stats();
    info!(signal, ?stats, "shutting down");
    sim.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
        Command::RegistryBench(args) => registry_bench::run(args).await,
    }
}

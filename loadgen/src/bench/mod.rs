//! `opc-loadgen bench`: the simulator (in process), a Kafka endpoint (the
//! librdkafka mock cluster in process, or `--brokers`) and the real
//! `opc-collector` binary as a child process; runs a workload, measures the
//! collector over a window after warm-up, checks every record on the topic,
//! and prints a table plus a JSON report. `--mode subscribe` has the
//! collector subscribe to the devices instead of polling them, and
//! `--change-rate` sets how often the simulated tags change; the report
//! counts the samples on the topic either way.

pub(crate) mod collector;
pub(crate) mod fleet;
mod procfs;
mod report;
pub(crate) mod verify;
mod window;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use collector_testkit::EmbeddedKafka;

use collector::{Collector, CollectorConfig};
use fleet::{Fleet, FleetSpec};
use window::{finish, measure};

/// How the collector gets the devices' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A Read of every tag each interval: one record of `--tags` samples per read.
    Poll,
    /// One OPC UA subscription per device: one record per publish response
    /// with changes, holding only the changed tags.
    Subscribe,
}

impl Mode {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Subscribe => "subscribe",
        }
    }
}

/// How the collector writes its records (`kafka.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// The JSON envelope (the collector's default).
    Json,
    /// `docs/record.proto`'s `Record`.
    Protobuf,
}

impl Encoding {
    /// The name used on the command line, in the collector's configuration
    /// and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }
}

/// `opc-loadgen bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Simulated devices (one OPC UA server, and one collector session, each).
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Tags per device.
    #[arg(long, default_value_t = 50)]
    pub tags: u32,
    /// Read interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Measurement window (after the fleet connected and the warm-up).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up after every session connected, before the window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The opc-collector binary (default: next to this executable, else PATH).
    #[arg(long)]
    pub collector_bin: Option<PathBuf>,
    /// Real Kafka bootstrap servers instead of the in-process mock cluster
    /// (the topic must exist or be auto-created).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic (default: a fresh `opc-bench-<pid>-<time>`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the mock cluster's topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The collector's `batch.interval` (default: the collector's default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub batch_interval: Option<Duration>,
    /// The collector's `kafka.encoding` (the topic is read back in it).
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    pub encoding: Encoding,
    /// The collector's `session.max_connects_per_second`.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    /// The collector's `workers.permits` (default: the collector's default).
    #[arg(long)]
    pub permits: Option<u32>,
    /// The collector's `schedule.phase_slots` (default: the collector's
    /// default): phases per interval, devices on one phase read together.
    #[arg(long)]
    pub phase_slots: Option<u32>,
    /// Simulator processes: 0 = in this process; default: in process while
    /// the open-files limit allows (5 fds per device), else split.
    #[arg(long)]
    pub sim_processes: Option<u32>,
    /// First public port of the devices (device i on port-base + i);
    /// 0 = OS-chosen (default up to 5,000 devices, else 10000 to keep the
    /// ephemeral range free).
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Keep the work directory (configuration, device files, collector log).
    #[arg(long)]
    pub keep_dir: bool,
    /// How the collector gets the values: `poll` (a Read of every tag each
    /// --interval, one record of --tags samples per read) or `subscribe` (the
    /// collector's `subscription: {mode: subscribe}`: one subscription per
    /// device, publishing interval = --interval; the devices send only what
    /// changed, one record per publish response with changes). The report
    /// counts the samples on the topic in both modes.
    #[arg(long, value_enum, default_value_t = Mode::Poll)]
    pub mode: Mode,
    /// The simulator's step model (`serve --change-rate`): every tag changes
    /// R times per second (0 < R <= 1000), holding each value round(1000/R)
    /// ms; R x interval is the share of the tags that change per interval:
    /// at --interval 10s, 0.01 = 10 % and 0.1 = 100 %. Default: none, values
    /// computed at each read (a subscribed tag then changes at every sample).
    #[arg(long, value_name = "R", value_parser = crate::parse_change_rate)]
    pub change_rate: Option<f64>,
}

fn note(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// Runs the bench and writes the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.tags == 0 {
        bail!("--devices and --tags must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be positive");
    }
    let bin = collector::locate(args.collector_bin.as_deref())?;
    procfs::raise_open_files_limit();
    let dir = tempfile::Builder::new()
        .prefix("opc-bench-")
        .tempdir()
        .context("creating the work directory")?;
    note(format_args!("work directory {}", dir.path().display()));

    // --- Kafka -------------------------------------------------------------------
    let (kafka, bootstrap, topic) = kafka_endpoint(
        args.brokers.as_deref(),
        args.topic.as_deref(),
        "opc-bench",
        args.partitions,
    )?;
    note(format_args!("kafka {bootstrap}, topic {topic}"));

    // --- devices -----------------------------------------------------------------
    let spec = FleetSpec {
        devices: args.devices,
        tags: args.tags,
        processes: args
            .sim_processes
            .unwrap_or_else(|| fleet::processes_needed(args.devices)),
        port_base: args
            .port_base
            .unwrap_or(if args.devices > 5000 { 10000 } else { 0 }),
        change_rate: args.change_rate,
        subscriptions: args.mode == Mode::Subscribe,
    };
    let t = Instant::now();
    let (fleet, device_files) = Fleet::start(&spec, dir.path()).await?;
    note(format_args!(
        "{} devices x {} tags listening in {:.1?} ({} simulator process(es)); mode {}, {}",
        args.devices,
        args.tags,
        t.elapsed(),
        fleet.process_count(),
        args.mode.name(),
        args.change_rate.map_or_else(
            || "values computed at each read".to_string(),
            |r| format!("every tag changes {r} times per second")
        )
    ));

    // --- collector ---------------------------------------------------------------
    let http = collector::free_local_addr()?;
    let config = collector::write_config(
        dir.path(),
        &CollectorConfig {
            interval: args.interval,
            batch_interval: args.batch_interval,
            encoding: args.encoding.name(),
            connect_rate: args.connect_rate,
            permits: args.permits,
            phase_slots: args.phase_slots,
            brokers: bootstrap.clone(),
            topic: topic.clone(),
            device_files,
            subscribe: args.mode == Mode::Subscribe,
        },
        http,
    )?;
    let started = Instant::now();
    let mut col = Collector::spawn(&bin, &config, http, dir.path())?;
    let result = measure(&args, &mut col, &fleet, started, (&bootstrap, &topic)).await;
    let outcome = match result {
        Ok(m) => finish(col, m).await,
        Err(e) => Err(e.context(format!(
            "collector log: {}",
            collector::log_tail(&col.log, 10)
        ))),
    };
    fleet.shutdown().await;
    drop(kafka);
    if args.keep_dir {
        let kept = dir.keep();
        note(format_args!("kept {}", kept.display()));
    }
    let mut report = outcome?;
    report.topic = topic;
    report.kafka = if args.brokers.is_some() {
        bootstrap
    } else {
        "mock (librdkafka mock cluster in the bench process)".to_string()
    };
    report.simulator_processes = spec_processes(&spec);
    report.print()?;
    if let Some(path) = &args.json {
        report.write_json(path)?;
        note(format_args!("report written to {}", path.display()));
    }
    if report.records_lost > 0 || report.seq_gaps > 0 {
        bail!(
            "{} record(s) lost, {} seq gap(s)",
            report.records_lost,
            report.seq_gaps
        );
    }
    Ok(())
}

/// The topic (`topic`, else a fresh `<prefix>-<pid>-<ms>`) and where it is:
/// `brokers`, else librdkafka's mock cluster started here with the topic
/// (`partitions`), kept alive by the returned handle.
pub(crate) fn kafka_endpoint(
    brokers: Option<&str>,
    topic: Option<&str>,
    prefix: &str,
    partitions: i32,
) -> anyhow::Result<(Option<EmbeddedKafka>, String, String)> {
    let topic = topic.map_or_else(
        || {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("{prefix}-{}-{t}", std::process::id())
        },
        str::to_string,
    );
    Ok(match brokers {
        Some(b) => (None, b.to_string(), topic),
        None => {
            let k = EmbeddedKafka::start(1, &topic, partitions)
                .map_err(|e| anyhow::anyhow!("starting the mock Kafka cluster: {e}"))?;
            let b = k.bootstrap_servers().to_string();
            (Some(k), b, topic)
        }
    })
}

fn spec_processes(spec: &FleetSpec) -> usize {
    usize::try_from(spec.processes.max(1)).unwrap_or(1)
}

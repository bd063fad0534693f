//! The command line: `run`, `validate`, `demo`, and the offline `spill`
//! and `deadletter` tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// OPC UA to Kafka collector.
#[derive(Debug, Parser)]
#[command(name = "opc-collector", version, about)]
pub(crate) struct Cli {
    /// Log format: `text` (readable), `json` (one object per line), or
    /// `auto` (text on a terminal, JSON otherwise).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    /// Default for `run`: info, with async-opcua's per-connection chatter
    /// quieted (our own session events are logged by the collector) and
    /// its complaint that a security-None channel has no certificate off.
    /// Default for `demo`: only our own warnings and errors (the demo
    /// prints its own progress); a real problem still shows.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The log filter of `run` and `validate` (see `--log-level`).
pub(crate) const DEFAULT_LOG_FILTER: &str =
    "info,opcua_server=warn,opcua_client=error,opcua_core=warn,opcua_core::comms::secure_channel=off";

/// The log filter of `demo`: the demo's screen is its own lines. Warnings
/// and errors of the collector and the simulator still show; async-opcua's
/// (a security-None simulator and client have no certificates, on purpose)
/// do not: the collector reports what matters of them itself.
pub(crate) const DEMO_LOG_FILTER: &str =
    "warn,opcua_core=off,opcua_crypto=off,opcua_server=off,opcua_client=off";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the collector with a configuration file.
    Run {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Metrics and health listen address (overrides `http.addr`).
        #[arg(long)]
        http_addr: Option<SocketAddr>,
    },
    /// Check a configuration and report every problem (exit 2 if any).
    Validate {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the real pipeline against simulated devices and an in-process Kafka.
    Demo(DemoArgs),
    /// What the spill holds (offline: stop the collector first).
    Spill {
        /// The YAML configuration (its state dir); required.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: StateAction,
    },
    /// What the dead letters hold, and requeueing them once the cause is
    /// fixed (offline: stop the collector first).
    Deadletter {
        /// The YAML configuration (its state dir); required.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: StateAction,
    },
}

/// What to do with a store.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum StateAction {
    /// Counts: batches, records, oldest, devices, causes.
    Stats,
    /// One line per batch, oldest first.
    Inspect {
        /// Batches shown at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Dead letters only: move them into the spill, where the collector
    /// replays them when it next runs.
    Requeue,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Tags per device.
    #[arg(long, default_value_t = 20)]
    pub tags: u32,
    /// Read interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long to run before draining and printing totals.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Serve /metrics and health on this address too.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
}

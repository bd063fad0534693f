//! The command line: `run`, `validate`, `demo`, the offline `spill` and
//! `deadletter` tools, the device `registry`'s, and the operator tools
//! `endpoints`, `browse` and `read`.

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
    /// quieted (our own session events are logged by the collector).
    /// Default for `demo`: only our own warnings and errors (the demo
    /// prints its own progress); a real problem still shows.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// What loading the configuration and its device files may cost; a file
/// beyond a limit is refused (exit 2), never loaded (docs/security.md).
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Largest configuration or device file read, e.g. `64MiB` (the
    /// default), checked before reading it.
    #[arg(long, global = true, env = "OPC_COLLECTOR_MAX_FILE_BYTES", value_name = "SIZE",
          value_parser = collector_core::config::parse_byte_size)]
    pub max_file_bytes: Option<u64>,
    /// Most entries in one `devices:` list (default 250000).
    #[arg(
        long,
        global = true,
        env = "OPC_COLLECTOR_MAX_DEVICES_PER_FILE",
        value_name = "N"
    )]
    pub max_devices_per_file: Option<usize>,
    /// Most YAML nodes that aliases may add to one file (default 1000000).
    #[arg(
        long,
        global = true,
        env = "OPC_COLLECTOR_MAX_ALIAS_NODES",
        value_name = "N"
    )]
    pub max_alias_nodes: Option<usize>,
}

impl LimitArgs {
    /// The limits, defaults where not given.
    pub(crate) fn limits(&self) -> collector_core::config::LoadLimits {
        let d = collector_core::config::LoadLimits::default();
        collector_core::config::LoadLimits {
            max_file_bytes: self.max_file_bytes.unwrap_or(d.max_file_bytes),
            max_devices_per_file: self.max_devices_per_file.unwrap_or(d.max_devices_per_file),
            max_alias_nodes: self.max_alias_nodes.unwrap_or(d.max_alias_nodes),
        }
    }
}

/// The log filter of `run` and `validate` (see `--log-level`).
pub(crate) const DEFAULT_LOG_FILTER: &str =
    "info,opcua_server=warn,opcua_client=error,opcua_core=warn,tokio_postgres=warn";

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
    /// What a server offers: endpoints, token policy ids, its certificate's
    /// fingerprint, what `auto` picks and why, operation limits, namespaces.
    Endpoints(crate::tools::EndpointsArgs),
    /// The address space as a tree (data types, access, history); with
    /// --emit-device, a device entry for the variables found.
    Browse(crate::tools::BrowseArgs),
    /// One Read, printed as the record's samples would be (exit 1 if it
    /// fails or a node is Bad).
    Read(crate::tools::ReadArgs),
    /// What the spill holds (offline: stop the collector first).
    Spill {
        /// The YAML configuration (its state dir); required.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: StateAction,
    },
    /// The PostgreSQL device registry (`source: postgres`): create its
    /// schema, import device files, export it (docs/registry.md).
    Registry {
        /// The YAML configuration (its `registry:` section); required.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: RegistryAction,
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

/// What to do with the device registry.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum RegistryAction {
    /// Create the registry's schema, or bring it to this version
    /// (idempotent).
    Init,
    /// Insert or update the devices of device files. Every entry of every
    /// file is checked first (exit 2 and nothing written if one is wrong);
    /// devices equal to their row are left alone.
    Import {
        /// Device files (`devices:` lists, as `device_files` takes).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Load one replica's shard as that replica would (read-only), and
    /// say what it holds: rows, devices, rejected rows with their reason,
    /// how long the load and an unchanged poll take, and what they cost.
    Shard {
        /// The replica's shard index.
        #[arg(long)]
        index: u32,
        /// Shards in the fleet.
        #[arg(long)]
        count: u32,
        /// Unchanged polls timed after the load.
        #[arg(long, default_value_t = 20)]
        polls: u32,
        /// One JSON object instead of text (for benchmarks and scripts).
        #[arg(long)]
        json: bool,
    },
    /// Write the enabled devices as a device file.
    Export {
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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
